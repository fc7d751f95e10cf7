"""The contract between stages: what each stage writes into its output folders and how the next
one reads it. A stage may rely on nothing else another stage produced.

    prep      train_data/  train.jsonl (anchor, positive, negative_1..k), dev.jsonl, prep_stats.json,
                           validation_report.json, data_card.{md,html}
              eval_data/   queries.jsonl, corpus.jsonl, qrels.tsv (BEIR layout), prep_stats.json,
                           probes/<name>/ (built-in shifted probes, each a BEIR collection) + probes/probes.json
    train     model/       a sentence-transformers folder + training_info.json (TrainingInfo)
    evaluate  results/     results.json, report.{html,md}
    register  (the registry itself, see medembed.register)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

# prep -> train
TRAIN_FILE = "train.jsonl"
DEV_FILE = "dev.jsonl"
NEGATIVE_COLUMN = "negative_{}"
STATS_FILE = "prep_stats.json"
VALIDATION_FILE = "validation_report.json"
CARD_MARKDOWN_FILE = "data_card.md"
CARD_HTML_FILE = "data_card.html"
# prep -> evaluate: a BEIR-layout collection; extra collections use the same layout.
QUERIES_FILE = "queries.jsonl"
CORPUS_FILE = "corpus.jsonl"
QRELS_FILE = "qrels.tsv"
# prep -> evaluate: the built-in shifted probes (guard collections) and their manifest
# ({"probes": {name: {"kind", "queries", "corpus", "shares_main_corpus", "description"}}, "skipped": {...}}).
PROBES_DIR = "probes"
PROBES_MANIFEST_FILE = "probes.json"
# train -> evaluate, register
TRAINING_INFO = "training_info.json"
# evaluate -> register, run-local
RESULTS_FILE = "results.json"
REPORT_HTML_FILE = "report.html"
REPORT_MARKDOWN_FILE = "report.md"


@dataclass
class TrainingInfo:
    """What the training stage records next to the model it exports (training_info.json): how
    to use the model (prompts, dims, sequence length) and how it was made."""

    model_dir: str
    base_model: str
    matryoshka_dims: list[int]
    query_prompt: str
    passage_prompt: str
    train_pairs: int
    steps: int
    epochs: int
    train_loss: float
    train_seconds: float
    device: str
    bf16: bool
    loss: str = "mnrl"
    batch_size: int = 0
    num_processes: int = 1
    resumed_from_step: int = 0
    best_checkpoint_step: int = 0
    best_metric: float | None = None
    lora_r: int = 0
    packed_attention: bool = False
    # Evaluation encodes base and fine-tuned models at this length, so neither sees more text.
    max_seq_length: int = 0
    # Rows added by query augmentation (train.augment), beyond the train_pairs prepared pairs.
    augmented_rows: int = 0
    # WiSE-FT weight of the fine-tuned model in the exported weights (1 = not mixed with the base).
    wise_alpha: float = 1.0

    def write(self, model_dir: Path) -> None:
        (Path(model_dir) / TRAINING_INFO).write_text(json.dumps(dataclasses.asdict(self), indent=2))

    @classmethod
    def read(cls, model_dir: Path) -> "TrainingInfo":
        path = Path(model_dir) / TRAINING_INFO
        try:
            values = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: not a model exported by the training stage (no {TRAINING_INFO})") from None
        except ValueError as exc:
            raise ValueError(f"{path}: damaged, not valid JSON ({exc}); run the training stage again to export the "
                             f"model anew") from None
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def write_jsonl(path: Path, records: Iterable[dict]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def write_ir_set(folder: Path, queries: list[dict], corpus: list[dict], qrels: Iterable[tuple[str, str, int]]) -> None:
    """A BEIR-layout collection: queries.jsonl and corpus.jsonl rows {"_id", "text", ...}, qrels.tsv."""
    folder = Path(folder)
    write_jsonl(folder / QUERIES_FILE, queries)
    write_jsonl(folder / CORPUS_FILE, corpus)
    with open(folder / QRELS_FILE, "w", encoding="utf-8") as handle:
        handle.write("query-id\tcorpus-id\tscore\n")
        handle.writelines(f"{q}\t{p}\t{s}\n" for q, p, s in qrels)


def read_ir_set(folder: Path) -> tuple[dict[str, str], dict[str, str], dict[str, dict[str, int]]]:
    """Queries and corpus as id -> text, qrels as qid -> {pid: grade}."""
    folder = Path(folder)
    queries = {row["_id"]: row["text"] for row in read_jsonl(folder / QUERIES_FILE)}
    corpus = {row["_id"]: row["text"] for row in read_jsonl(folder / CORPUS_FILE)}
    qrels: dict[str, dict[str, int]] = defaultdict(dict)
    with open(folder / QRELS_FILE, encoding="utf-8") as handle:
        next(handle, None)
        for line in handle:
            qid, pid, grade = line.rstrip("\n").split("\t")
            qrels[qid][pid] = int(grade)
    return queries, corpus, dict(qrels)


def read_probe_manifest(eval_dir: Path) -> dict[str, dict]:
    """{name: entry} of the built-in probes under eval_dir/probes/, in the order prep wrote them
    (empty when there are none: data.shift_probes=() or an evaluation set from before them)."""
    path = Path(eval_dir) / PROBES_DIR / PROBES_MANIFEST_FILE
    if not path.exists():
        return {}
    return json.loads(path.read_text())["probes"]


def ir_files(folder: Path) -> list[Path]:
    return [Path(folder) / QUERIES_FILE, Path(folder) / CORPUS_FILE, Path(folder) / QRELS_FILE]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def folder_checksums(folder: Path) -> dict[str, dict]:
    """{relative path: {"size", "sha256"}} of every file under `folder`: what a copy must match."""
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": file_sha256(p)}
            for p in sorted(folder.rglob("*")) if p.is_file()}


def fingerprint(paths: list[Path]) -> str:
    """SHA-256 over file names and contents: the identity of a dataset as stages see it."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode())
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def move_into(staged: Path, target: Path, moved: list[Path] | None = None) -> None:
    """Move a fully written staging folder's files into `target`: a failed stage leaves no partial output.
    `moved` receives each target path before its move starts (to take a failed move back)."""
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    for item in Path(staged).iterdir():
        if moved is not None:
            moved.append(target / item.name)
        shutil.move(str(item), target / item.name)
