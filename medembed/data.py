"""Data prep: question/passage pairs in, leakage-safe training and IR evaluation sets out.

Everything here is plain Python over lists of dicts so it can be tested without KFP or a model.
Errors are `DataError`s whose message names the file, row and field: the prep stage fails on them
before any GPU time is spent.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import logging
import random
import re
import unicodedata
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from .config import BUNDLED_MEDQUAD_SAMPLE, DataConfig

log = logging.getLogger(__name__)

RESOURCES = Path(__file__).resolve().parent / "resources"
BUNDLED_DATA = {BUNDLED_MEDQUAD_SAMPLE: RESOURCES / "medquad_sample.jsonl.gz"}

TRAIN_FILE = "train.jsonl"
DEV_FILE = "dev.jsonl"
QUERIES_FILE = "queries.jsonl"
CORPUS_FILE = "corpus.jsonl"
QRELS_FILE = "qrels.tsv"
STATS_FILE = "prep_stats.json"


class DataError(ValueError):
    """Input data the pipeline cannot use; the message says where and why."""


@dataclass
class PrepStats:
    source: str
    rows_read: int = 0
    dropped_empty: int = 0
    dropped_duplicate: int = 0
    rows_kept: int = 0
    groups: int = 0
    split_rows: dict[str, int] = field(default_factory=dict)
    split_groups: dict[str, int] = field(default_factory=dict)
    train_pairs: int = 0
    dev_pairs: int = 0
    eval_queries: int = 0
    eval_corpus: int = 0
    eval_qrels: int = 0
    groups_crossing_splits: int = 0
    fingerprint: str = ""


# ---------------------------------------------------------------- reading


def resolve_local_path(uri: str, download_dir: Path | None = None) -> Path:
    """Map a data URI (bundled:NAME, s3://bucket/key, or a path) to a readable local file."""
    if uri in BUNDLED_DATA:
        return BUNDLED_DATA[uri]
    if uri.startswith("bundled:"):
        raise DataError(f"unknown bundled dataset {uri!r}; known: {sorted(BUNDLED_DATA)}")
    if uri.startswith("s3://"):
        from .storage import ObjectStore

        store, key = ObjectStore.from_uri(uri)
        target = (download_dir or Path.cwd()) / Path(key).name
        store.download_file(key, target)
        return target
    path = Path(uri).expanduser()
    if not path.exists():
        raise DataError(f"input file not found: {path}")
    if path.is_dir():
        raise DataError(f"input {path} is a directory; give a .jsonl, .jsonl.gz, .csv or .parquet file")
    return path


def read_records(path: Path) -> Iterator[tuple[int, dict]]:
    """Yield (row number, record) from JSONL(.gz), CSV(.gz) or Parquet; row numbers are 1-based."""
    name = path.name.lower()
    if name.endswith((".jsonl", ".jsonl.gz", ".json", ".json.gz", ".ndjson")):
        with _open_text(path) as handle:
            for line_no, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}: line {line_no} is not valid JSON ({exc.msg})") from None
                if not isinstance(record, dict):
                    raise DataError(f"{path}: line {line_no} is a JSON {type(record).__name__}, not an object")
                yield line_no, record
    elif name.endswith((".csv", ".csv.gz", ".tsv", ".tsv.gz")):
        delimiter = "\t" if ".tsv" in name else ","
        with _open_text(path) as handle:
            # Row 1 is the header, so data rows start at 2, as a spreadsheet shows them.
            for row_no, record in enumerate(csv.DictReader(handle, delimiter=delimiter), start=2):
                yield row_no, record
    elif name.endswith(".parquet"):
        import pyarrow.parquet as pq

        for row_no, record in enumerate(pq.read_table(path).to_pylist(), start=1):
            yield row_no, record
    else:
        raise DataError(f"{path}: unsupported file type; use .jsonl, .jsonl.gz, .csv or .parquet")


def _open_text(path: Path):
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8", newline="")


# ---------------------------------------------------------------- cleaning

_WHITESPACE = re.compile(r"\s+")


def normalize_text(value: object) -> str:
    if value is None:
        return ""
    text = unicodedata.normalize("NFKC", str(value))
    return _WHITESPACE.sub(" ", text).strip()


def load_pairs(path: Path, config: DataConfig, stats: PrepStats) -> list[dict]:
    """Read, check columns, normalise, drop empty and exact-duplicate pairs."""
    needed = (config.question_field, config.passage_field)
    seen: set[tuple[str, str]] = set()
    pairs: list[dict] = []
    for row_no, record in read_records(path):
        stats.rows_read += 1
        missing = [name for name in needed if name not in record]
        if missing:
            raise DataError(
                f"{path}: row {row_no} has no field {', '.join(map(repr, missing))} "
                f"(fields present: {', '.join(sorted(map(str, record))) or 'none'}); "
                f"set data.question_field / data.passage_field to the right column names"
            )
        query = normalize_text(record[config.question_field])
        passage = normalize_text(record[config.passage_field])
        if not query or not passage:
            stats.dropped_empty += 1
            continue
        key = (query, passage)
        if key in seen:
            stats.dropped_duplicate += 1
            continue
        seen.add(key)
        groups = {name: normalize_text(record.get(name)).lower() for name in config.group_fields}
        pairs.append({"row": row_no, "query": query, "passage": passage, "groups": groups})
    if stats.rows_read == 0:
        raise DataError(f"{path}: the dataset is empty (no rows)")
    if not pairs:
        raise DataError(
            f"{path}: no usable pairs among {stats.rows_read} rows "
            f"({stats.dropped_empty} empty, {stats.dropped_duplicate} duplicates)"
        )
    stats.rows_kept = len(pairs)
    return pairs


# ---------------------------------------------------------------- leakage-safe split


def connected_groups(pairs: list[dict]) -> list[int]:
    """Group id per pair: pairs sharing any group value, the passage text or the query text
    are connected, so a split by these ids never puts related rows on both sides."""
    parent = list(range(len(pairs)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first_holder: dict[tuple[str, str], int] = {}
    for index, pair in enumerate(pairs):
        keys = [(name, value) for name, value in pair["groups"].items() if value]
        keys += [("passage", pair["passage"]), ("query", pair["query"].lower())]
        for key in keys:
            holder = first_holder.setdefault(key, index)
            root_a, root_b = find(index), find(holder)
            if root_a != root_b:
                parent[root_a] = root_b
    roots: dict[int, int] = {}
    return [roots.setdefault(find(i), len(roots)) for i in range(len(pairs))]


def split_by_group(
    group_ids: list[int], dev_fraction: float, test_fraction: float, seed: int
) -> list[str]:
    """Assign whole groups to test, dev, then train, in a seeded random order. A group larger
    than what is left of a split's budget goes to train, so test/dev stay near their fractions."""
    if not 0 <= dev_fraction < 1 or not 0 < test_fraction < 1 or dev_fraction + test_fraction >= 1:
        raise DataError(f"bad split fractions: dev={dev_fraction}, test={test_fraction}")
    sizes = Counter(group_ids)
    order = sorted(sizes)
    random.Random(seed).shuffle(order)
    total = len(group_ids)
    budget = {"test": round(total * test_fraction), "dev": round(total * dev_fraction)}
    filled = {"test": 0, "dev": 0}
    split_of_group: dict[int, str] = {}
    for group in order:
        split = "train"
        for candidate in ("test", "dev"):
            if filled[candidate] + sizes[group] <= budget[candidate]:
                split = candidate
                filled[candidate] += sizes[group]
                break
        split_of_group[group] = split
    return [split_of_group[g] for g in group_ids]


def groups_crossing(pairs: list[dict], splits: list[str]) -> int:
    """How many group values (field=value, passage, query) occur in more than one split."""
    seen: dict[tuple[str, str], set[str]] = defaultdict(set)
    for pair, split in zip(pairs, splits):
        for name, value in pair["groups"].items():
            if value:
                seen[(name, value)].add(split)
        seen[("passage", pair["passage"])].add(split)
        seen[("query", pair["query"].lower())].add(split)
    return sum(1 for splits_of_key in seen.values() if len(splits_of_key) > 1)


# ---------------------------------------------------------------- IR evaluation set


def build_ir_set(pairs: Iterable[dict]) -> tuple[list[dict], list[dict], list[tuple[str, str, int]]]:
    """BEIR-style queries, corpus and qrels. Identical query texts become one query with every
    one of their passages relevant; identical passages become one corpus entry."""
    query_ids: dict[str, str] = {}
    passage_ids: dict[str, str] = {}
    qrels: set[tuple[str, str]] = set()
    for pair in pairs:
        qid = query_ids.setdefault(pair["query"], f"q{len(query_ids)}")
        pid = passage_ids.setdefault(pair["passage"], f"d{len(passage_ids)}")
        qrels.add((qid, pid))
    queries = [{"_id": qid, "text": text} for text, qid in query_ids.items()]
    corpus = [{"_id": pid, "text": text} for text, pid in passage_ids.items()]
    return queries, corpus, sorted((q, p, 1) for q, p in qrels)


# ---------------------------------------------------------------- the stage


def prepare(config: DataConfig, train_dir: Path, eval_dir: Path, work_dir: Path | None = None) -> PrepStats:
    """Run data prep end to end and write the training and evaluation sets.

    Outputs are written only after every check passed, so a failed prep leaves nothing behind
    that a later stage could pick up.
    """
    path = resolve_local_path(config.data_uri, work_dir)
    stats = PrepStats(source=config.data_uri)
    pairs = load_pairs(path, config, stats)
    log.info("read %d rows from %s, kept %d pairs", stats.rows_read, path, stats.rows_kept)

    group_ids = connected_groups(pairs)
    splits = split_by_group(group_ids, config.dev_fraction, config.test_fraction, config.seed)
    stats.groups = len(set(group_ids))
    stats.split_rows = dict(Counter(splits))
    stats.split_groups = {
        name: len({g for g, s in zip(group_ids, splits) if s == name}) for name in ("train", "dev", "test")
    }
    stats.groups_crossing_splits = groups_crossing(pairs, splits)
    if stats.groups_crossing_splits:
        raise AssertionError(f"{stats.groups_crossing_splits} groups cross splits: split logic is broken")

    by_split: dict[str, list[dict]] = defaultdict(list)
    for pair, split in zip(pairs, splits):
        by_split[split].append(pair)
    train = by_split["train"]
    if config.max_train_pairs and len(train) > config.max_train_pairs:
        train = random.Random(config.seed).sample(train, config.max_train_pairs)
    if len(train) < config.min_train_pairs:
        raise DataError(
            f"{path}: only {len(train)} training pairs after cleaning and splitting "
            f"(need at least {config.min_train_pairs}; {stats.rows_read} rows read, "
            f"{stats.dropped_empty} empty and {stats.dropped_duplicate} duplicate pairs dropped)"
        )
    if not by_split["test"]:
        raise DataError(f"{path}: no pairs left for the evaluation split; add data or raise data.test_fraction")

    queries, corpus, qrels = build_ir_set(by_split["test"])
    stats.train_pairs, stats.dev_pairs = len(train), len(by_split["dev"])
    stats.eval_queries, stats.eval_corpus, stats.eval_qrels = len(queries), len(corpus), len(qrels)

    train_dir.mkdir(parents=True, exist_ok=True)
    eval_dir.mkdir(parents=True, exist_ok=True)
    _write_jsonl(train_dir / TRAIN_FILE, ({"anchor": p["query"], "positive": p["passage"]} for p in train))
    _write_jsonl(train_dir / DEV_FILE, ({"anchor": p["query"], "positive": p["passage"]} for p in by_split["dev"]))
    _write_jsonl(eval_dir / QUERIES_FILE, queries)
    _write_jsonl(eval_dir / CORPUS_FILE, corpus)
    with open(eval_dir / QRELS_FILE, "w", encoding="utf-8") as handle:
        handle.write("query-id\tcorpus-id\tscore\n")
        handle.writelines(f"{q}\t{p}\t{s}\n" for q, p, s in qrels)
    stats.fingerprint = fingerprint([train_dir / TRAIN_FILE, train_dir / DEV_FILE] + ir_files(eval_dir))
    for directory in (train_dir, eval_dir):
        (directory / STATS_FILE).write_text(json.dumps(asdict(stats), indent=2))
    return stats


def ir_files(eval_dir: Path) -> list[Path]:
    return [eval_dir / QUERIES_FILE, eval_dir / CORPUS_FILE, eval_dir / QRELS_FILE]


def fingerprint(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _write_jsonl(path: Path, records: Iterable[dict]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def read_ir_set(eval_dir: Path) -> tuple[dict[str, str], dict[str, str], dict[str, dict[str, int]]]:
    """Queries and corpus as id -> text, qrels as qid -> {pid: grade}."""
    queries = {row["_id"]: row["text"] for row in read_jsonl(eval_dir / QUERIES_FILE)}
    corpus = {row["_id"]: row["text"] for row in read_jsonl(eval_dir / CORPUS_FILE)}
    qrels: dict[str, dict[str, int]] = defaultdict(dict)
    with open(eval_dir / QRELS_FILE, encoding="utf-8") as handle:
        next(handle, None)
        for line in handle:
            qid, pid, grade = line.rstrip("\n").split("\t")
            qrels[qid][pid] = int(grade)
    return queries, corpus, dict(qrels)


def data_card_markdown(stats: PrepStats) -> str:
    rows = [
        ("rows read", stats.rows_read),
        ("dropped: empty question or passage", stats.dropped_empty),
        ("dropped: exact duplicate pair", stats.dropped_duplicate),
        ("pairs kept", stats.rows_kept),
        ("connected groups", stats.groups),
        ("train pairs (after cap)", stats.train_pairs),
        ("dev pairs", stats.dev_pairs),
        ("eval queries / corpus / qrels", f"{stats.eval_queries} / {stats.eval_corpus} / {stats.eval_qrels}"),
        ("groups crossing splits", stats.groups_crossing_splits),
    ]
    lines = [f"# Data card\n\nSource: `{stats.source}`  \nFingerprint: `{stats.fingerprint}`\n",
             "| step | count |", "| --- | ---: |"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    lines += ["", "| split | rows | groups |", "| --- | ---: | ---: |"]
    lines += [f"| {s} | {stats.split_rows.get(s, 0)} | {stats.split_groups.get(s, 0)} |" for s in ("train", "dev", "test")]
    return "\n".join(lines) + "\n"
