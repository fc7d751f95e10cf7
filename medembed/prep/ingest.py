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
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..config import BUNDLED_MEDQUAD_SAMPLE

RESOURCES = Path(__file__).resolve().parent.parent / "resources"
BUNDLED_DATA = {BUNDLED_MEDQUAD_SAMPLE: RESOURCES / "medquad_sample.jsonl.gz"}
# A malformed line is a row-level problem, reported with this pseudo-field.
RAW_FIELD = "<row>"
TABLE_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".ndjson", ".csv", ".csv.gz", ".tsv", ".tsv.gz", ".parquet")
HF_DATASET_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")


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
            raise DataError(f"cannot read {uri}: {exc}") from None
    path = Path(uri).expanduser()
    if not path.exists():
        raise DataError(f"input file not found: {path}")
    return path


def read_records(path: Path) -> Iterator[tuple[str, int, dict]]:
    """Yield (file label, 1-based row number, record) from a file or a folder of supported inputs."""
    if path.is_dir():
        yield from _read_folder(path)
        return
    name = path.name.lower()
    if name.endswith((".jsonl", ".jsonl.gz", ".json", ".json.gz", ".ndjson")):
        yield from _read_jsonl(path)
    elif name.endswith((".csv", ".csv.gz", ".tsv", ".tsv.gz")):
        delimiter = "\t" if ".tsv" in name else ","
        with _open_text(path) as handle:
            # Row 1 is the header, so data rows start at 2, as a spreadsheet shows them.
            for row_no, record in enumerate(csv.DictReader(handle, delimiter=delimiter), start=2):
                yield str(path), row_no, record
    elif name.endswith(".parquet"):
        import pyarrow.parquet as pq

        for row_no, record in enumerate(pq.read_table(path).to_pylist(), start=1):
            yield str(path), row_no, record
    elif name.endswith(".xml"):
        yield from read_medquad_xml(path)
    else:
        raise DataError(f"{path}: unsupported file type; use .jsonl, .csv, .parquet, MedQuAD .xml or a datasets folder")


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
            if not isinstance(record, dict):
                record = {RAW_FIELD: f"a JSON {type(record).__name__}, not an object"}
            yield label, line_no, record


def _read_folder(path: Path) -> Iterator[tuple[str, int, dict]]:
    if any((path / marker).exists() for marker in HF_DATASET_MARKERS):
        yield from read_hf_dataset(path)
        return
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.name.lower().endswith(TABLE_SUFFIXES + (".xml",)))
    hf_dirs = sorted({p.parent for marker in HF_DATASET_MARKERS for p in path.rglob(marker)})
    if hf_dirs:
        for hf_dir in hf_dirs:
            yield from read_hf_dataset(hf_dir)
        files = [f for f in files if not any(d in f.parents for d in hf_dirs)]
    elif not files:
        raise DataError(f"{path}: folder holds no .jsonl, .csv, .parquet, .xml file or saved datasets folder")
    for file in files:
        yield from read_records(file)


def read_hf_dataset(path: Path) -> Iterator[tuple[str, int, dict]]:
    """A folder written by `Dataset.save_to_disk` or `DatasetDict.save_to_disk` (every split is read)."""
    from datasets import DatasetDict, load_from_disk

    try:
        loaded = load_from_disk(str(path))
    except Exception as exc:  # datasets raises several types for a broken folder
        raise DataError(f"{path}: cannot load the saved datasets folder ({exc})") from None
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
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace", newline="")


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
