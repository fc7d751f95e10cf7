"""Reading question/passage rows from wherever they live.

Inputs: JSONL(.gz), CSV/TSV(.gz), Parquet, a saved Hugging Face `datasets` folder, MedQuAD's original
XML layout (folders of <Document> files), or a folder of any of those; each from a local path or an
`s3://bucket/key` (a key ending in "/" is a prefix). Several inputs, comma-separated and optionally
tagged (`medquad=s3://b/mq.jsonl,fr=/data/fr.parquet`), are merged; each row keeps its input's tag (counted per source in the data card).

Every row comes out as (file label, row number, record) so later errors can name both.
"""

from __future__ import annotations

import csv
import gzip
import json
import logging
import re
import xml.etree.ElementTree as ET
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..config import BUNDLED_MEDQUAD_SAMPLE

log = logging.getLogger(__name__)

RESOURCES = Path(__file__).resolve().parent.parent / "resources"
BUNDLED_DATA = {BUNDLED_MEDQUAD_SAMPLE: RESOURCES / "medquad_sample.jsonl.gz"}
# A malformed line is a row-level problem, reported with this pseudo-field.
RAW_FIELD = "<row>"
TABLE_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".ndjson", ".csv", ".csv.gz", ".tsv", ".tsv.gz", ".parquet")
HF_DATASET_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
SUPPORTED = ".jsonl(.gz), .json(.gz), .ndjson, .csv(.gz), .tsv(.gz), .parquet, MedQuAD .xml or a saved datasets folder"
# A CSV field may be long (a passage); validation reports absurd lengths per row instead of csv failing.
CSV_FIELD_LIMIT = 64 * 1024 * 1024
# A header cell longer than this, with more words, or shaped like a value is not a column name.
MAX_HEADER_CHARS = 64
MAX_HEADER_WORDS = 6


class DataError(ValueError):
    """Input data the pipeline cannot use; the message says where and why."""


@dataclass(frozen=True)
class Input:
    tag: str
    uri: str


def parse_inputs(data_uri: str) -> list[Input]:
    """`a.jsonl` or `tag=a.jsonl,other=s3://b/k.parquet` -> tagged inputs (tag defaults to the file stem)."""
    inputs = []
    for item in (part.strip() for part in data_uri.split(",")):
        if not item:
            continue
        tag, sep, uri = item.partition("=")
        if not sep or "/" in tag or ":" in tag:
            tag, uri = _default_tag(item), item
        inputs.append(Input(tag.strip(), uri.strip()))
    if not inputs:
        raise DataError("data_uri is empty: give a file, folder or s3:// URI")
    return inputs


def _default_tag(uri: str) -> str:
    if uri.startswith("bundled:"):
        return uri.split(":", 1)[1]
    name = uri.rstrip("/").rsplit("/", 1)[-1]
    for suffix in sorted(TABLE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def resolve_local_path(uri: str, download_dir: Path | None = None) -> Path:
    """Map a data URI (bundled:NAME, s3://bucket/key or prefix/, or a path) to a local file or folder."""
    if uri in BUNDLED_DATA:
        return BUNDLED_DATA[uri]
    if uri.startswith("bundled:"):
        raise DataError(f"unknown bundled dataset {uri!r}; known: {sorted(BUNDLED_DATA)}")
    if uri.startswith("s3://"):
        from ..storage import ObjectStore, StorageError

        store, key = ObjectStore.from_uri(uri)
        base = Path(download_dir or Path.cwd()) / "inputs" / store.bucket
        try:
            if key.endswith("/") or not store.exists(key):
                count = store.download_dir(key, base / key.rstrip("/"))
                if not count:
                    raise DataError(f"input not found: {uri} (no object and no objects under that prefix)")
                return base / key.rstrip("/")
            return store.download_file(key, base / key)
        except StorageError as exc:
            raise DataError(f"data input {uri}: {exc}") from None
    path = Path(uri).expanduser()
    if not path.exists():
        raise DataError(f"input file not found: {path}")
    return path


def read_records(path: Path, required: tuple[tuple[str, ...], ...] = (), skipped: list[Path] | None = None) -> Iterator[tuple[str, int, dict]]:
    """Yield (file label, 1-based row number, record) from a file or a folder of supported inputs.

    `required`: columns a CSV header must have, each as its acceptable names (checked once per file).
    `skipped`: receives the files of a folder that are not of a supported type (also logged)."""
    if path.is_dir():
        yield from _read_folder(path, required, skipped)
        return
    name = path.name.lower()
    if name.endswith((".jsonl", ".jsonl.gz", ".json", ".json.gz", ".ndjson", ".csv", ".csv.gz", ".tsv", ".tsv.gz")):
        _check_text_encoding(path)
    if name.endswith((".jsonl", ".jsonl.gz", ".json", ".json.gz", ".ndjson")):
        yield from _guard_compressed(path, _read_jsonl(path))
    elif name.endswith((".csv", ".csv.gz", ".tsv", ".tsv.gz")):
        yield from _guard_compressed(path, _read_csv(path, "\t" if ".tsv" in name else ",", required))
    elif name.endswith(".parquet"):
        yield from _read_parquet(path)
    elif name.endswith(".xml"):
        yield from read_medquad_xml(path)
    else:
        raise DataError(f"{path}: unsupported file type; use {SUPPORTED}")


_WIDE_BOMS = {b"\xff\xfe\x00\x00": "UTF-32", b"\x00\x00\xfe\xff": "UTF-32", b"\xff\xfe": "UTF-16", b"\xfe\xff": "UTF-16"}


def _check_text_encoding(path: Path) -> None:
    """A text input must be UTF-8: a UTF-16/32 file (Windows tools write them) would otherwise read as rows
    of garbage, each reported as bad without saying why."""
    try:
        with (gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")) as handle:
            start = handle.read(4)
    except (OSError, EOFError, zlib.error):
        return  # read errors are reported with their row by the reader
    for bom, encoding in _WIDE_BOMS.items():
        if start.startswith(bom):
            raise DataError(f"{path}: encoded as {encoding}, not UTF-8; convert it (e.g. `iconv -f {encoding} -t UTF-8 "
                            f"{path.name} > utf8-{path.name}`) and use the converted file")


def _guard_compressed(path: Path, rows: Iterator[tuple[str, int, dict]]) -> Iterator[tuple[str, int, dict]]:
    """A truncated or corrupt .gz raises EOFError/zlib.error/BadGzipFile mid-read, naming no file."""
    last = 0
    try:
        for item in rows:
            last = item[1]
            yield item
    except gzip.BadGzipFile:
        raise DataError(f"{path}: not gzip-compressed although its name ends in .gz; rename it to its real type "
                        "(e.g. .jsonl) or compress it with gzip") from None
    except (EOFError, zlib.error) as exc:
        where = f"after row {last}" if last else "before the first row"
        raise DataError(f"{path}: the compressed file ends early or is corrupt {where} ({type(exc).__name__}); "
                        f"it is incomplete (an interrupted upload or copy?): upload it again and check it with "
                        f"`gzip -t {path.name}`") from None


def _read_csv(path: Path, delimiter: str, required: tuple[tuple[str, ...], ...]) -> Iterator[tuple[str, int, dict]]:
    csv.field_size_limit(max(csv.field_size_limit(), CSV_FIELD_LIMIT))
    with _open_text(path) as handle:
        # strict: a stray quote is an error naming its row, not a field that silently swallows the next rows.
        reader = csv.reader(handle, delimiter=delimiter, strict=True)
        try:
            header = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise DataError(f"{path} row 1: not readable as CSV ({exc}); check the delimiter and quoting") from None
        check_csv_header(path, header, required)
        width = len(header)
        row_no = 1
        try:
            # Row 1 is the header, so data rows start at 2, as a spreadsheet shows them.
            for row_no, cells in enumerate(reader, start=2):
                if not cells:
                    continue
                record = dict(zip(header, cells))
                if len(cells) > width and any(cell.strip() for cell in cells[width:]):
                    # Not fatal here: validation counts it against the bad-row tolerance.
                    record = {RAW_FIELD: f"{len(cells)} cells but the header has {width} columns (a delimiter inside an unquoted field?)"}
                elif len(cells) < width:
                    record.update({column: None for column in header[len(cells):]})
                yield str(path), row_no, record
        except csv.Error as exc:
            raise DataError(f"{path} row {row_no + 1}: not readable as CSV ({exc}); check quoting around that row") from None


def _header_problem(cell: str) -> str | None:
    """Why a header cell does not look like a column name (never quoting it: it may be a value)."""
    from . import privacy

    text = cell.strip()
    if len(text) > MAX_HEADER_CHARS:
        return f"{len(text)} characters"
    if len(text.split()) > MAX_HEADER_WORDS:
        return f"{len(text.split())} words"
    if "@" in text:
        return "an @ (an e-mail address?)"
    if text and not any(ch.isalpha() for ch in text):
        return "no letters (a number or date?)"
    if text.endswith(("?", ".", "!")):
        return "sentence punctuation (a question or answer text?)"
    if re.search(r"\d{5}", text) or (" " in text and re.search(r"\d{3}", text)):
        return "a run of digits (a phone, record number, address or date?)"
    kinds = privacy.scan(text)
    if kinds:
        return f"something shaped like personal data ({', '.join(sorted(kinds))})"
    return None


def check_csv_header(path: Path, header: list[str], required: tuple[tuple[str, ...], ...] = ()) -> None:
    """Fail when row 1 of a CSV is data rather than column names, or lacks the required columns.
    Messages name columns by position: a headerless file's row 1 may hold names, addresses, SSNs."""
    problems = [(i, why) for i, cell in enumerate(header, start=1) if (why := _header_problem(cell))]
    if problems:
        listed = "; ".join(f"column {i} has {why}" for i, why in problems[:5])
        raise DataError(
            f"{path} row 1: does not look like a header row ({listed}); a CSV input needs a first row naming its "
            f"columns (e.g. question,answer): add one, or convert the file to JSONL. Values are not shown here "
            f"because they may be personal data"
        )
    repeated = sorted({name for name in header if name.strip() and header.count(name) > 1})
    if repeated:
        where = "; ".join(f"{name!r} in columns {', '.join(str(i) for i, n in enumerate(header, start=1) if n == name)}"
                          for name in repeated)
        raise DataError(f"{path} row 1 (the header): a column name appears more than once ({where}); only one of them "
                        f"could be read: rename the header cells so that each is unique")
    missing = [" or ".join(map(repr, names)) for names in required if not any(n in header for n in names)]
    if missing and len(header) == 1:
        other = next((name for sign, name in (("\t", "tabs"), (";", "semicolons"), ("|", "pipes")) if sign in header[0]), None)
        if other:
            raise DataError(f"{path} row 1 (the header): one column only, and it holds {other}: the file is not "
                            f"comma-separated; name a tab-separated file .tsv, or write it again with commas")
    if missing:
        known = [f"{n!r} (column {header.index(n) + 1})" for names in required for n in names if n in header]
        raise DataError(
            f"{path} row 1 (the header): no column named {', '.join(missing)} among its {len(header)} columns"
            + (f"; found {', '.join(known)}" if known else "")
            + "; rename the header cells, or map yours with data.column_map (e.g. question=<your column>) or "
              "data.question_field / data.passage_field"
        )


def _read_parquet(path: Path) -> Iterator[tuple[str, int, dict]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    row_no = 0
    try:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=4096):
            for record in batch.to_pylist():
                row_no += 1
                yield str(path), row_no, record
    except (pa.ArrowException, OSError) as exc:
        reason = "no Parquet footer: not a Parquet file" if "magic bytes" in str(exc) else f"{type(exc).__name__}"
        where = f"after row {row_no}" if row_no else "before the first row"
        raise DataError(f"{path}: not a readable Parquet file, {where} ({reason}); write it again as Parquet, or "
                        f"give it the extension of its real type (.jsonl, .csv)") from None


def _read_jsonl(path: Path) -> Iterator[tuple[str, int, dict]]:
    label = str(path)
    with _open_text(path) as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                # Not fatal here: validation counts it against the bad-row tolerance.
                record = {RAW_FIELD: f"not valid JSON ({exc.msg})"}
            except RecursionError:  # "[[[[…" thousands deep: Python's parser gives up
                record = {RAW_FIELD: "JSON nested too deeply to read"}
            if not isinstance(record, dict):
                record = {RAW_FIELD: f"a JSON {type(record).__name__}, not an object (JSON lines: one object per line)"}
            yield label, line_no, record


def _read_folder(path: Path, required: tuple[tuple[str, ...], ...] = (), skipped: list[Path] | None = None) -> Iterator[tuple[str, int, dict]]:
    if any((path / marker).exists() for marker in HF_DATASET_MARKERS):
        yield from read_hf_dataset(path)
        return
    everything = sorted(p for p in path.rglob("*") if p.is_file())
    hf_dirs = sorted({p.parent for marker in HF_DATASET_MARKERS for p in path.rglob(marker)})
    everything = [f for f in everything if not any(d in f.parents for d in hf_dirs)]
    files = [p for p in everything if p.name.lower().endswith(TABLE_SUFFIXES + (".xml",))]
    unknown = [p for p in everything if p not in files]
    if unknown:
        names = ", ".join(str(p.relative_to(path)) for p in unknown[:20]) + (f" and {len(unknown) - 20} more" if len(unknown) > 20 else "")
        log.warning("%s: skipping %d file(s) of unknown type: %s (supported: %s); convert or remove them if they hold data",
                    path, len(unknown), names, SUPPORTED)
        if skipped is not None:
            skipped.extend(unknown)
    if hf_dirs:
        for hf_dir in hf_dirs:
            yield from read_hf_dataset(hf_dir)
    elif not files:
        found = f" (it holds {len(unknown)} file(s) of other types, e.g. {unknown[0].name})" if unknown else ""
        raise DataError(f"{path}: folder holds no input file{found}; supported: {SUPPORTED}")
    for file in files:
        yield from read_records(file, required)


def read_hf_dataset(path: Path) -> Iterator[tuple[str, int, dict]]:
    """A folder written by `Dataset.save_to_disk` or `DatasetDict.save_to_disk` (every split is read)."""
    from datasets import DatasetDict, load_from_disk

    try:
        loaded = load_from_disk(str(path))
    except Exception as exc:  # datasets raises several types for a broken folder
        raise DataError(f"{path}: cannot load the saved datasets folder ({exc}); save it again with "
                        f"Dataset.save_to_disk, or give the data as JSONL, CSV or Parquet") from None
    splits = loaded.items() if isinstance(loaded, DatasetDict) else [("", loaded)]
    for split, dataset in splits:
        label = f"{path}[{split}]" if split else str(path)
        for row_no, record in enumerate(dataset, start=1):
            yield label, row_no, record


def read_medquad_xml(path: Path) -> Iterator[tuple[str, int, dict]]:
    """One MedQuAD <Document> file: one record per <QAPair>, with the document's focus and UMLS CUIs.
    Field names follow the JSONL release (doc_id is `<folder>/<document id>`)."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        yield str(path), 1, {RAW_FIELD: f"not valid XML ({exc})"}
        return
    doc_id = f"{path.parent.name}/{root.get('id', path.stem)}"
    focus = (root.findtext("Focus") or "").strip()
    cuis = [c.text.strip() for c in root.iter("CUI") if c.text]
    for row_no, pair in enumerate(root.iter("QAPair"), start=1):
        question = pair.find("Question")
        yield str(path), row_no, {
            "uid": f"{doc_id}-{pair.get('pid', row_no)}",
            "source": root.get("source", ""),
            "doc_id": doc_id,
            "url": root.get("url", ""),
            "focus": focus,
            "cuis": cuis,
            "qtype": question.get("qtype", "") if question is not None else "",
            "question": question.text if question is not None else None,
            "answer": pair.findtext("Answer"),
        }


def _open_text(path: Path):
    # errors="replace": undecodable bytes become U+FFFD, which validation reports per row.
    # utf-8-sig: a byte-order mark (spreadsheet exports) would otherwise become part of the first column name.
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8-sig", errors="replace", newline="")
    return open(path, encoding="utf-8-sig", errors="replace", newline="")


def apply_column_map(record: dict, column_map: dict[str, str]) -> dict:
    if not column_map:
        return record
    mapped = dict(record)
    for target, source in column_map.items():
        if source in record:
            mapped[target] = record[source]
    return mapped


def parse_column_map(items: tuple[str, ...]) -> dict[str, str]:
    mapping = {}
    for item in items:
        target, sep, source = item.partition("=")
        if not sep or not target.strip() or not source.strip():
            raise DataError(f"data.column_map entry {item!r} is not of the form target=source")
        mapping[target.strip()] = source.strip()
    return mapping
