"""Hold-out probes for the quality benchmark (bench/bench_quality.py, `make bench-quality`, `make train-best`).

Prep's built-in probes (probes.py) query the test split that the product's own evaluation holds out.
The benchmark goes further: it sets whole connected groups aside *before* prep (rows sharing a
document, focus, UMLS concept, or an equal / near-duplicate question or answer, linked as prep links
them), including every row of some sources (leave-source-out), writes the rest as the training side,
and builds from the held-out groups:

| probe | queries | relevant | measures |
| --- | --- | --- | --- |
| `template` | the held-out rows' own questions | their answers | the in-template gain, same corpus |
| `lso` | questions of held-out *sources* | their answers | other writers and pages |
| `keyword`, `topic`, `lay`, `misspell`, `para`, `halves` | as in probes.py, over the held-out rows | | query-style shift and forgetting |

`template`..`misspell` share one corpus (all held-out answers), so each model encodes it once. A
`dev_*` copy (template, keyword, lay, misspell, para, halves) is built from a second, disjoint set of
groups: it is what model selection (WiSE-FT mixing weight, early stopping) looks at, never the
reported probes. `french_probe` turns FrenchMedMCQA (passed by path) into a collection for a
multilingual base. Nothing here reads paths outside its arguments.
"""

from __future__ import annotations

import json
import random
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..artifacts import QUERIES_FILE, read_jsonl, write_jsonl
from . import dedup
from .probes import Collection, keyword_query, lay_query, misspell, split_halves
from .split import split_by_group
from .validation import normalize_text, strip_question_heading

TRAIN_SIDE_FILE = "train_side.jsonl"
MANIFEST_FILE = "holdout.json"
# Consumer-facing MedQuAD sources: their pages and question wording differ most from GARD/GHR.
DEFAULT_HOLDOUT_SOURCES = ("MPlusHealthTopics", "NIHSeniorHealth")
REPORTED = ("template", "keyword", "topic", "lay", "misspell", "para", "halves")
SHIFTED = ("lso", "keyword", "topic", "lay", "misspell", "para", "halves")
# Selection sees every family: in-template, query-style shift and forgetting (a dev set without the
# forgetting family chose the pure fine-tune in every arm of the phase-1 H200 sweep while `halves` lost 8%).
DEV_PROBES = ("template", "keyword", "lay", "misspell", "para", "halves")


@dataclass(frozen=True)
class HoldoutConfig:
    question_field: str = "question"
    answer_field: str = "answer"
    # Rows from these sources (field `source`) form the leave-source-out probe; () = no such probe.
    holdout_sources: tuple[str, ...] = DEFAULT_HOLDOUT_SOURCES
    # Groups linked by these fields (plus equal / near-duplicate questions and answers) never straddle sides.
    group_fields: tuple[str, ...] = ("doc_id", "focus", "cuis")
    probe_fraction: float = 0.12
    dev_fraction: float = 0.06
    # A holdout-source group larger than this share of all rows (a giant connected component) is dropped
    # from every side instead of taking its non-holdout rows away from training.
    max_lso_group_fraction: float = 0.05
    # Queries per probe (seeded sample); the corpus always holds every held-out answer kept.
    max_queries: int = 300
    max_dev_queries: int = 120
    # Held-out rows behind the shared corpus (seeded sample; 0 = all): bounds the encoding cost on a CPU.
    # Rows left out are still never trained on.
    max_probe_rows: int = 0
    max_lso_rows: int = 0
    max_dev_rows: int = 0
    typo_rate: float = 0.35
    seed: int = 13
    near_dup_threshold: float = 0.8
    heading_overlap: float = 0.6


@dataclass
class HoldoutSet:
    root: str
    collections: dict[str, str] = field(default_factory=dict)
    dev_collections: dict[str, str] = field(default_factory=dict)
    train_side: str = ""
    counts: dict = field(default_factory=dict)


# ------------------------------------------------------------------ rows and sides


def read_rows(path: Path) -> list[dict]:
    import gzip

    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def normalise_rows(rows: list[dict], config: HoldoutConfig) -> list[dict]:
    """Rows with a non-empty question and answer, texts normalised as prep does (NFKC, whitespace,
    leading answer heading that repeats the question removed)."""
    out = []
    for row in rows:
        question = normalize_text(row.get(config.question_field))
        answer = normalize_text(row.get(config.answer_field))
        if not question or not answer:
            continue
        answer, _ = strip_question_heading(question, answer, config.heading_overlap)
        out.append({**row, "question": question, "answer": answer})
    return out


def _values(value) -> list[str]:
    values = value if isinstance(value, (list, tuple)) else [value]
    return [v for v in (normalize_text(x).lower() for x in values if x is not None) if v]


def connected_groups(rows: list[dict], config: HoldoutConfig) -> list[int]:
    """Group id per row: rows sharing a group-field value, an equal / near-duplicate question or an
    equal / near-duplicate answer are connected (the MinHash test of prep's dedup)."""
    knobs = (config.near_dup_threshold, 64, 3, 120, 0.01)
    q_clusters, _ = dedup.near_duplicate_clusters([r["question"] for r in rows], *knobs)
    a_clusters, _ = dedup.near_duplicate_clusters([r["answer"] for r in rows], *knobs)
    finder = dedup.UnionFind(len(rows))
    first: dict[tuple, int] = {}
    for i, row in enumerate(rows):
        keys = [(name, v) for name in config.group_fields for v in _values(row.get(name))]
        keys += [("question", q_clusters[i]), ("answer", a_clusters[i])]
        for key in keys:
            finder.union(i, first.setdefault(key, i))
    return finder.labels()


def assign_sides(rows: list[dict], config: HoldoutConfig) -> list[str]:
    """'train', 'probe', 'dev', 'lso' or 'drop' per row. Whole groups go to one side: groups holding a
    holdout-source row are 'lso' (or 'drop' when giant), the rest are split by prep's seeded
    group split into probe / dev / train."""
    groups = connected_groups(rows, config)
    sizes = Counter(groups)
    holdout = set(config.holdout_sources)
    lso_groups = {g for g, row in zip(groups, rows) if row.get("source") in holdout}
    limit = max(1, int(config.max_lso_group_fraction * len(rows)))
    giant = {g for g in lso_groups if sizes[g] > limit}
    sides = ["lso" if g in lso_groups else "" for g in groups]
    for i, g in enumerate(groups):
        if g in giant:
            # Holdout rows of a giant group are dropped; its other rows stay in the normal split.
            sides[i] = "drop" if rows[i].get("source") in holdout else ""
    rest = [i for i, s in enumerate(sides) if s == ""]
    if rest:
        split = split_by_group([groups[i] for i in rest], config.dev_fraction, config.probe_fraction, config.seed)
        for i, s in zip(rest, split):
            sides[i] = {"test": "probe", "dev": "dev", "train": "train"}[s]
    return sides


def qtype_of(row: dict) -> str:
    return normalize_text(row.get("qtype")).lower()


def focus_of(row: dict) -> str:
    return normalize_text(row.get("focus"))


# ------------------------------------------------------------------ collections


def _answer_corpus(rows: list[dict]) -> tuple[list[dict], list[str]]:
    """Corpus rows of distinct answers (by exact key) and the passage id of each row."""
    ids: dict[str, str] = {}
    corpus: list[dict] = []
    row_pid = []
    for row in rows:
        key = dedup.exact_key(row["answer"])
        if key not in ids:
            ids[key] = f"d{len(ids)}"
            corpus.append({"_id": ids[key], "text": row["answer"]})
        row_pid.append(ids[key])
    return corpus, row_pid


def build_style_probes(rows: list[dict], lso_rows: list[dict], folder: Path, names: tuple[str, ...],
                       config: HoldoutConfig, seed: int, max_queries: int, prefix: str = "") -> dict[str, tuple[str, int]]:
    """The shared-corpus probes over `rows` (+ `lso_rows`) plus `para` / `halves`; {name: (path, queries)}."""
    everything = rows + lso_rows
    corpus, pids = _answer_corpus(everything)
    row_pid = dict(zip(map(id, everything), pids))
    has_meta = bool(rows) and all(focus_of(r) and qtype_of(r) for r in rows)
    by_topic: dict[str, set[str]] = defaultdict(set)
    by_topic_type: dict[tuple[str, str], set[str]] = defaultdict(set)
    for row in everything:
        by_topic[focus_of(row).lower()].add(row_pid[id(row)])
        by_topic_type[(focus_of(row).lower(), qtype_of(row))].add(row_pid[id(row)])
    built: dict[str, tuple[str, int]] = {}
    for name in names:
        if name in ("keyword", "topic", "lay", "para") and not has_meta:
            continue
        rng = random.Random(f"{seed}-{name}")
        collection = Collection()
        probe_corpus = corpus
        source_rows = lso_rows if name == "lso" else rows
        if name == "para":
            # Question paraphrase: the lay query against the held-out questions (forgetting probe).
            q_ids: dict[str, str] = {}
            probe_corpus = []
            by_tt_q: dict[tuple[str, str], set[str]] = defaultdict(set)
            for row in rows:
                key = dedup.exact_key(row["question"])
                if key not in q_ids:
                    q_ids[key] = f"d{len(q_ids)}"
                    probe_corpus.append({"_id": q_ids[key], "text": row["question"]})
                by_tt_q[(focus_of(row).lower(), qtype_of(row))].add(q_ids[key])
        elif name == "halves":
            probe_corpus, first_halves = [], set()
        for row in source_rows:
            focus, qtype = focus_of(row), qtype_of(row)
            tt = (focus.lower(), qtype)
            if name in ("template", "lso"):
                collection.add(row["question"], {row_pid[id(row)]})
            elif name == "keyword":
                collection.add(keyword_query(focus, qtype, rng), by_topic_type[tt])
            elif name == "topic":
                collection.add(focus.lower(), by_topic[tt[0]])
            elif name == "lay":
                collection.add(lay_query(focus, qtype, rng), by_topic_type[tt])
            elif name == "misspell":
                collection.add(misspell(row["question"], rng, config.typo_rate), {row_pid[id(row)]})
            elif name == "para":
                collection.add(lay_query(focus, qtype, rng), by_tt_q[tt])
            elif name == "halves":
                halves = split_halves(row["answer"])
                if halves is None or halves[0] in first_halves:
                    continue
                first_halves.add(halves[0])
                pid = f"h{len(probe_corpus)}"
                probe_corpus.append({"_id": pid, "text": halves[0]})
                collection.add(halves[1], {pid})
            else:
                raise ValueError(f"unknown probe {name!r}")
        if not collection.ids:
            continue
        out = folder / f"{prefix}{name}"
        n = collection.write(out, probe_corpus, max_queries, seed)
        if n:
            built[f"{prefix}{name}"] = (str(out), n)
    return built


def build(rows: list[dict], out_dir: Path, config: HoldoutConfig = HoldoutConfig()) -> HoldoutSet:
    """Sides, the training side as JSONL (prep's input), the reported probes and the dev probes.

    No probe text comes from a row of the training side, and no group (document, focus, concept,
    equal / near-duplicate question or answer) has rows on both sides."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = normalise_rows(rows, config)
    sides = assign_sides(rows, config)
    by_side: dict[str, list[dict]] = defaultdict(list)
    for row, side in zip(rows, sides):
        by_side[side].append(row)
    train_path = out_dir / TRAIN_SIDE_FILE
    write_jsonl(train_path, by_side["train"])
    holdout = set(config.holdout_sources)
    lso_rows = [r for r in by_side["lso"] if r.get("source") in holdout]
    # Non-holdout rows of holdout groups join the held-out style probes (they are out of training too).
    probe_rows = by_side["probe"] + [r for r in by_side["lso"] if r.get("source") not in holdout]
    probe_rows = _sample_rows(probe_rows, config.max_probe_rows, config.seed)
    lso_rows = _sample_rows(lso_rows, config.max_lso_rows, config.seed)
    names = REPORTED + (("lso",) if lso_rows else ())
    built = build_style_probes(probe_rows, lso_rows, out_dir / "probes", names, config, config.seed, config.max_queries)
    dev = build_style_probes(_sample_rows(by_side["dev"], config.max_dev_rows, config.seed), [], out_dir / "dev",
                             DEV_PROBES, config, config.seed + 1, config.max_dev_queries, prefix="dev_")
    holdout_set = HoldoutSet(
        root=str(out_dir),
        collections={name: path for name, (path, _) in built.items()},
        dev_collections={name: path for name, (path, _) in dev.items()},
        train_side=str(train_path),
        counts={"rows": len(rows), "sides": dict(Counter(sides)),
                "queries": {name: n for name, (_, n) in {**built, **dev}.items()},
                "holdout_sources": list(config.holdout_sources)},
    )
    (out_dir / MANIFEST_FILE).write_text(json.dumps({**asdict(holdout_set), "config": asdict(config)}, indent=2))
    return holdout_set


def _sample_rows(rows: list[dict], limit: int, seed: int) -> list[dict]:
    if not limit or len(rows) <= limit:
        return rows
    keep = set(random.Random(seed).sample(range(len(rows)), limit))
    return [row for i, row in enumerate(rows) if i in keep]


def french_probe(path: Path, out_dir: Path, max_queries: int = 0, seed: int = 13) -> str:
    """FrenchMedMCQA as retrieval: each question is a query, its correct options the relevant texts,
    every option of every question the corpus. Returns the collection folder."""
    collection = Collection()
    corpus: list[dict] = []
    for row in read_rows(Path(path)):
        question = normalize_text(row.get("question"))
        options = row.get("options") or {}
        if not question or not options:
            continue
        relevant = set()
        for letter, option in sorted(options.items()):
            pid = f"{row['id']}-{letter}"
            corpus.append({"_id": pid, "text": normalize_text(option)})
            if letter in (row.get("correct") or []):
                relevant.add(pid)
        collection.add(question, relevant)
    folder = Path(out_dir)
    n = collection.write(folder, corpus, max_queries, seed)
    if not n:
        raise ValueError(f"{path}: no question with a correct option")
    write_jsonl(folder / QUERIES_FILE, [dict(r, language="fr") for r in read_jsonl(folder / QUERIES_FILE)])
    return str(folder)
