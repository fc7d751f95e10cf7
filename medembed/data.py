"""Data prep: question/passage pairs in, leakage-safe training and IR evaluation sets out.

Steps (each counted in PrepStats and the data card): ingest (ingest.py) -> validate and normalise
(validation.py) -> personal data (privacy.py) -> exact and near-duplicate dedup (dedup.py) ->
connected groups and a seeded group split, checked for leakage -> language tags (language.py) ->
token lengths against the model -> IR evaluation set with distractors -> hard negatives
(negatives.py) -> data card (data_card.py) and a content fingerprint.

Errors are `DataError`s whose message names the file, row and field: the prep stage fails on them
before any GPU time is spent, and outputs are staged and moved in only when everything passed.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import random
import shutil
import statistics
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from . import data_card, dedup, privacy, validation
from .config import ConfigError, DataConfig, section_from_dict
from .ingest import BUNDLED_DATA, SOURCE_TAG, DataError, parse_column_map, parse_inputs, read_records, resolve_local_path  # noqa: F401
from .validation import RowIssue, ValidationReport, normalize_text  # noqa: F401

log = logging.getLogger(__name__)

TRAIN_FILE = "train.jsonl"
DEV_FILE = "dev.jsonl"
QUERIES_FILE = "queries.jsonl"
CORPUS_FILE = "corpus.jsonl"
QRELS_FILE = "qrels.tsv"
STATS_FILE = "prep_stats.json"
VALIDATION_FILE = "validation_report.json"
CARD_MARKDOWN_FILE = "data_card.md"
CARD_HTML_FILE = "data_card.html"
NEGATIVE_COLUMN = "negative_{}"


@dataclass
class PrepStats:
    source: str
    rows_read: int = 0
    dropped_bad: int = 0
    dropped_empty: int = 0
    dropped_duplicate: int = 0
    dropped_near_duplicate: int = 0
    rows_kept: int = 0
    rows_by_source: dict[str, int] = field(default_factory=dict)
    headings_removed: int = 0
    pii_action: str = "redact"
    pii_found: dict[str, int] = field(default_factory=dict)
    queries_with_several_answers: int = 0
    near_duplicate_query_clusters: int = 0
    near_duplicate_passage_clusters: int = 0
    groups: int = 0
    largest_group: int = 0
    split_rows: dict[str, int] = field(default_factory=dict)
    split_groups: dict[str, int] = field(default_factory=dict)
    languages: dict[str, int] = field(default_factory=dict)
    token_lengths: dict = field(default_factory=dict)
    train_pairs: int = 0
    dev_pairs: int = 0
    num_negatives: int = 0
    mining_model: str = ""
    mining: dict = field(default_factory=dict)
    eval_queries: int = 0
    eval_corpus: int = 0
    eval_distractors: int = 0
    eval_qrels: int = 0
    groups_crossing_splits: int = 0
    near_duplicate_queries_crossing_splits: int = 0
    validation: dict = field(default_factory=dict)
    step_seconds: dict[str, float] = field(default_factory=dict)
    fingerprint: str = ""


class _Timer:
    """Logs and records how long each prep step took."""

    def __init__(self, stats: PrepStats):
        self.stats, self.last = stats, time.perf_counter()

    def done(self, step: str, message: str = "", *args) -> None:
        now = time.perf_counter()
        self.stats.step_seconds[step] = round(now - self.last, 3)
        self.last = now
        log.info("prep %-12s %6.2fs  " + message, step, self.stats.step_seconds[step], *args)


def config_from_options(options: dict) -> DataConfig:
    """A DataConfig from a KFP dict parameter (ints arrive as floats, tuples as lists)."""
    try:
        return section_from_dict(DataConfig, options)
    except ConfigError as exc:
        raise DataError(str(exc)) from None


# ---------------------------------------------------------------- ingest + validate + normalise


def load_pairs(config: DataConfig, stats: PrepStats, download_dir: Path) -> list[dict]:
    """Read every input, validate each row, normalise and redact; bad rows are dropped and counted
    (failing past the tolerance); exact-duplicate pairs are dropped."""
    if config.pii_action not in privacy.PII_ACTIONS:
        raise DataError(f"data.pii_action={config.pii_action!r}; choose one of {privacy.PII_ACTIONS}")
    column_map = parse_column_map(config.column_map)
    report = ValidationReport()
    pii_issues: list[RowIssue] = []
    pii_found: Counter = Counter()
    seen: set[tuple[str, str]] = set()
    pairs: list[dict] = []
    sources = parse_inputs(config.data_uri)
    labels = []
    for source in sources:
        path = resolve_local_path(source.uri, download_dir)
        labels.append(str(path))
        required = tuple((name, column_map[name]) if name in column_map else (name,) for name in (config.question_field, config.passage_field))
        for file, row_no, record in read_records(path, required, report.skipped_files):
            report.rows_read += 1
            raw_problem = validation.raw_row_issue(record)
            if raw_problem:
                report.bad_rows += 1
                report.add(RowIssue(file, row_no, validation.RAW_FIELD, raw_problem), fatal=True)
                continue
            record = _apply_map(record, column_map)
            texts, bad = {}, False
            for name, max_chars in ((config.question_field, config.max_query_chars), (config.passage_field, config.max_passage_chars)):
                text, reason, had_html = validation.check_text(record, name, max_chars)
                if had_html:
                    report.add(RowIssue(file, row_no, name, "html remnants removed"), fatal=False)
                if reason:
                    report.add(RowIssue(file, row_no, name, reason), fatal=True)
                    bad = True
                    if reason == "empty":
                        stats.dropped_empty += 1
                texts[name] = text
            if bad:
                report.bad_rows += 1
                continue
            query, passage = texts[config.question_field], texts[config.passage_field]
            if reason := validation.pair_issue(query, passage):
                report.bad_rows += 1
                report.add(RowIssue(file, row_no, config.passage_field, reason), fatal=True)
                continue
            passage, stripped = validation.strip_question_heading(query, passage, config.heading_overlap)
            stats.headings_removed += stripped
            if config.pii_action != "off":
                redacted = {}
                for name, text in ((config.question_field, query), (config.passage_field, passage)):
                    redacted[name], found = privacy.redact(text)
                    pii_found.update(found)
                    if len(pii_issues) < validation.MESSAGE_EXAMPLES:
                        pii_issues += [RowIssue(file, row_no, name, f"likely {kind}") for kind in found]
                if config.pii_action == "redact":
                    query, passage = redacted[config.question_field], redacted[config.passage_field]
            key = (query.casefold(), passage.casefold())
            if key in seen:
                stats.dropped_duplicate += 1
                continue
            seen.add(key)
            groups = {name: _group_values(record.get(name)) for name in config.group_fields}
            guard = {name: _group_values(record.get(name)) for name in config.negative_guard_fields}
            pairs.append({"file": file, "row": row_no, "query": query, "passage": passage, "groups": groups,
                          "guard": guard, "source": source.tag})
    label = ", ".join(labels)
    stats.rows_read = report.rows_read
    stats.dropped_bad = report.bad_rows
    stats.validation = report.to_dict()
    stats.pii_action = config.pii_action
    stats.pii_found = dict(pii_found)
    if stats.rows_read == 0:
        raise DataError(f"{label}: the dataset is empty (no rows)")
    if not pairs:
        examples = "; ".join(issue.describe() for issue in report.issues[: validation.MESSAGE_EXAMPLES])
        raise DataError(
            f"{label}: no usable pairs among {stats.rows_read} rows ({report.bad_rows} bad, "
            f"{stats.dropped_empty} empty fields, {stats.dropped_duplicate} duplicates)" + (f"; first: {examples}" if examples else "")
        )
    validation.enforce_tolerance(report, config.max_bad_row_fraction, label)
    if config.pii_action == "fail" and pii_found:
        kinds = ", ".join(f"{kind}: {count}" for kind, count in pii_found.most_common())
        where = "; ".join(issue.describe() for issue in pii_issues[: validation.MESSAGE_EXAMPLES])
        raise DataError(f"{label}: likely personal data found [{kinds}] and data.pii_action=fail; first: {where}; "
                        "remove it at the source, or set data.pii_action=redact to replace it with placeholders")
    stats.rows_by_source = dict(Counter(p["source"] for p in pairs))
    return pairs


def _apply_map(record: dict, column_map: dict[str, str]) -> dict:
    if not column_map:
        return record
    mapped = dict(record)
    mapped.update({target: record[source] for target, source in column_map.items() if source in record})
    return mapped


def _group_values(value: object) -> tuple[str, ...]:
    """Group keys of one field: list values (e.g. several UMLS CUIs) give one key each."""
    values = value if isinstance(value, (list, tuple)) else [value]
    return tuple(v for v in (normalize_text(x).lower() for x in values if x is not None) if v)


# ---------------------------------------------------------------- dedup + leakage-safe split


def mark_near_duplicates(pairs: list[dict], config: DataConfig, stats: PrepStats) -> list[dict]:
    """Attach query/passage near-duplicate cluster ids; drop pairs whose query *and* passage
    near-duplicate an earlier pair. Same query with other answers stays, grouped by cluster."""
    knobs = (config.near_dup_threshold, config.minhash_perms, config.shingle_words, config.shingle_max_words,
             config.boilerplate_shingle_fraction)
    query_clusters, query_signatures = dedup.near_duplicate_clusters([p["query"] for p in pairs], *knobs)
    passage_clusters, _ = dedup.near_duplicate_clusters([p["passage"] for p in pairs], *knobs)
    kept, seen = [], set()
    for pair, qc, pc, signature in zip(pairs, query_clusters, passage_clusters, list(query_signatures)):
        if (qc, pc) in seen:
            stats.dropped_near_duplicate += 1
            continue
        seen.add((qc, pc))
        pair["query_cluster"], pair["passage_cluster"], pair["query_signature"] = qc, pc, signature
        kept.append(pair)
    stats.near_duplicate_query_clusters = _multi_text_clusters(kept, "query_cluster", "query")
    stats.near_duplicate_passage_clusters = _multi_text_clusters(kept, "passage_cluster", "passage")
    answers_per_query = defaultdict(set)
    for pair in kept:
        answers_per_query[pair["query_cluster"]].add(pair["passage_cluster"])
    stats.queries_with_several_answers = sum(1 for answers in answers_per_query.values() if len(answers) > 1)
    stats.rows_kept = len(kept)
    return kept


def _multi_text_clusters(pairs: list[dict], cluster_key: str, text_key: str) -> int:
    texts = defaultdict(set)
    for pair in pairs:
        texts[pair[cluster_key]].add(pair[text_key])
    return sum(1 for members in texts.values() if len(members) > 1)


def _link_keys(pair: dict) -> list[tuple[str, str]]:
    keys = [(name, value) for name, values in pair["groups"].items() for value in values]
    keys += [("passage", pair["passage_cluster"]), ("query", pair["query_cluster"])]
    return keys


def connected_groups(pairs: list[dict]) -> list[int]:
    """Group id per pair: pairs sharing any group value (document, focus, concept ids), a
    (near-)duplicate passage or a (near-)duplicate query are connected, so a split by these ids
    never puts related rows on both sides."""
    finder = dedup.UnionFind(len(pairs))
    first_holder: dict[tuple[str, str], int] = {}
    for index, pair in enumerate(pairs):
        for key in _link_keys(pair):
            finder.union(index, first_holder.setdefault(key, index))
    return finder.labels()


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
    """How many link keys (field=value, passage cluster, query cluster) occur in more than one split."""
    seen: dict[tuple[str, str], set[str]] = defaultdict(set)
    for pair, split in zip(pairs, splits):
        for key in _link_keys(pair):
            seen[key].add(split)
    return sum(1 for splits_of_key in seen.values() if len(splits_of_key) > 1)


# ---------------------------------------------------------------- language + lengths


def tag_languages(pairs: list[dict], config: DataConfig) -> None:
    from .language import detect_languages

    texts = [f"{p['query']} {p['passage'][: config.language_passage_chars]}" for p in pairs]
    for pair, code in zip(pairs, detect_languages(texts)):
        pair["language"] = code


def load_tokenizer(model_ref: str):
    """The model's tokenizer (no weights), or None when it cannot be loaded offline."""
    from transformers import AutoTokenizer

    from .models import resolve_model_path

    root = Path(resolve_model_path(model_ref))
    candidates = [root] + sorted(p.parent for p in root.glob("*/tokenizer_config.json")) if root.exists() else [model_ref]
    for candidate in candidates:
        try:
            return AutoTokenizer.from_pretrained(str(candidate))
        except Exception:  # noqa: BLE001 - any loading failure falls back to an estimate
            continue
    return None


def token_lengths(texts: list[str], tokenizer, max_seq_length: int) -> list[int]:
    """Token counts (with special tokens), exact up to max_seq_length and capped at max_seq_length + 1.
    A text with at least max_seq_length words is surely cut (every word is at least one token), so
    only shorter texts are tokenised: on long medical answers that skips most of the work."""
    lengths = [max_seq_length + 1] * len(texts)
    short = [i for i, t in enumerate(texts) if len(t.split()) + 2 <= max_seq_length]
    if tokenizer is None:
        # Offline without the tokenizer: ~1.3 word pieces per word is typical for English WordPiece.
        for i in short:
            lengths[i] = min(int(len(texts[i].split()) * 1.3) + 2, max_seq_length + 1)
        return lengths
    for lo in range(0, len(short), 8192):
        chunk = short[lo : lo + 8192]
        ids = tokenizer([texts[i] for i in chunk], add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
        for i, tokens in zip(chunk, ids):
            lengths[i] = min(len(tokens), max_seq_length + 1)
    return lengths


def _length_sample(texts: list[str], config: DataConfig) -> tuple[list[str], int]:
    """(texts to measure, how many distinct texts there are): a seeded sample past length_sample."""
    if config.length_sample and len(texts) > config.length_sample:
        return random.Random(config.seed).sample(texts, config.length_sample), len(texts)
    return texts, len(texts)


def _length_summary(lengths: list[int], max_seq_length: int) -> dict:
    ordered = sorted(lengths)
    truncated = sum(1 for n in lengths if n > max_seq_length)
    return {
        "count": len(lengths),
        "median": int(statistics.median(ordered)) if ordered else 0,
        "p95": ordered[int(0.95 * (len(ordered) - 1))] if ordered else 0,
        "truncated": truncated,
        "truncated_pct": 100.0 * truncated / max(1, len(lengths)),
    }


# ---------------------------------------------------------------- IR evaluation set


def build_ir_set(
    test_pairs: Iterable[dict], distractors: Iterable[str] = ()
) -> tuple[list[dict], list[dict], list[tuple[str, str, int]]]:
    """BEIR-style queries, corpus and qrels. Identical query texts become one query with every one
    of their passages relevant; (near-)duplicate passages become one corpus entry, so a duplicate
    of the answer is never counted as a miss. Distractors are passages of other groups."""
    query_ids: dict[str, str] = {}
    query_rows: list[dict] = []
    passage_ids: dict[object, str] = {}
    corpus: list[dict] = []
    qrels: set[tuple[str, str]] = set()
    for pair in test_pairs:
        query_key = dedup.exact_key(pair["query"])
        if query_key not in query_ids:
            query_ids[query_key] = f"q{len(query_ids)}"
            query_rows.append({"_id": query_ids[query_key], "text": pair["query"], "language": pair.get("language", "und")})
        passage_key = pair.get("passage_cluster", pair["passage"])
        if passage_key not in passage_ids:
            passage_ids[passage_key] = f"d{len(passage_ids)}"
            corpus.append({"_id": passage_ids[passage_key], "text": pair["passage"]})
        qrels.add((query_ids[query_key], passage_ids[passage_key]))
    for text in distractors:
        corpus.append({"_id": f"x{len(corpus)}", "text": text})
    return query_rows, corpus, sorted((q, p, 1) for q, p in qrels)


def _pick_distractors(pairs: list[dict], count: int, seed: int) -> list[str]:
    by_cluster: dict[int, str] = {}
    for pair in pairs:
        by_cluster.setdefault(pair["passage_cluster"], pair["passage"])
    texts = list(by_cluster.values())
    return random.Random(seed).sample(texts, min(count, len(texts)))


# ---------------------------------------------------------------- hard negatives


def mine_negatives(train: list[dict], group_ids: dict[int, int], config: DataConfig, stats: PrepStats) -> list[list[str]]:
    from .encoding import encode
    from .models import configure_torch, load_model

    device = configure_torch()
    model = load_model(config.model, max_seq_length=config.mining_max_seq_length or config.max_seq_length, device=device)

    def embed(texts: list[str], kind: str):
        return encode(model, texts, kind, config.mining_batch_size, show_progress_bar=True)

    negatives, mining = _mine(embed, train, group_ids, config)
    stats.mining_model = config.model
    stats.mining = asdict(mining)
    log.info("hard negatives: %s", json.dumps(stats.mining))
    return negatives


def negative_guard_keys(pair: dict, group: int, fields: tuple[str, ...]) -> set[tuple]:
    """What makes another pair's answer a possible positive for this pair (negatives.mine)."""
    keys: set[tuple] = {("query", pair["query_cluster"]), ("passage", pair["passage_cluster"])}
    values = [pair.get("guard", {}).get(name) for name in fields]
    if fields and all(values):
        # One key per value combination: multi-valued fields match on any shared value.
        keys.update(("fields", *combination) for combination in itertools.product(*values))
    else:
        keys.add(("group", group))
    return keys


def _mine(embed, train: list[dict], group_ids: dict[int, int], config: DataConfig):
    from .negatives import mine

    return mine(
        embed,
        [p["query"] for p in train],
        [p["passage"] for p in train],
        [negative_guard_keys(p, group_ids[id(p)], tuple(config.negative_guard_fields)) for p in train],
        config.num_negatives,
        config.negative_margin,
        config.negative_max_score,
        config.seed,
    )


# ---------------------------------------------------------------- the stage


def prepare(config: DataConfig, train_dir: Path, eval_dir: Path, work_dir: Path | None = None, embed=None) -> PrepStats:
    """Run data prep end to end and write the training and evaluation sets.

    Outputs are staged in `work_dir` and moved into place only after every check passed, so a
    failed prep leaves nothing behind that a later stage could pick up. `embed(texts, kind)`
    replaces the base model for mining (tests).
    """
    if work_dir is not None:
        Path(work_dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work_dir) as scratch:
        scratch = Path(scratch)
        stats = PrepStats(source=config.data_uri, num_negatives=config.num_negatives)
        timer = _Timer(stats)
        pairs = load_pairs(config, stats, scratch / "download")
        timer.done("read", "%d rows read, %d bad, %d exact duplicates, %d pairs", stats.rows_read, stats.dropped_bad, stats.dropped_duplicate, len(pairs))

        pairs = mark_near_duplicates(pairs, config, stats)
        timer.done("dedup", "%d near-duplicate pairs dropped, %d pairs kept", stats.dropped_near_duplicate, stats.rows_kept)

        group_list = connected_groups(pairs)
        splits = split_by_group(group_list, config.dev_fraction, config.test_fraction, config.seed)
        group_ids = {id(p): g for p, g in zip(pairs, group_list)}
        group_sizes = Counter(group_list)
        stats.groups, stats.largest_group = len(group_sizes), max(group_sizes.values())
        stats.split_rows = {s: n for s, n in Counter(splits).items()}
        stats.split_groups = {name: len({g for g, s in zip(group_list, splits) if s == name}) for name in ("train", "dev", "test")}
        stats.groups_crossing_splits = groups_crossing(pairs, splits)
        stats.near_duplicate_queries_crossing_splits = dedup.crossing_near_duplicates(
            [p["query"] for p in pairs], np.stack([p.pop("query_signature") for p in pairs]), splits, config.near_dup_threshold
        )
        if stats.groups_crossing_splits or stats.near_duplicate_queries_crossing_splits:
            raise AssertionError(
                f"leakage: {stats.groups_crossing_splits} groups and {stats.near_duplicate_queries_crossing_splits} "
                "near-duplicate queries cross splits: split logic is broken"
            )
        timer.done("split", "%d groups (largest %d pairs), rows per split %s, zero leakage", stats.groups, stats.largest_group, stats.split_rows)

        tag_languages(pairs, config)
        stats.languages = dict(Counter(p["language"] for p in pairs).most_common())
        timer.done("language", "%s", stats.languages)

        tokenizer = load_tokenizer(config.model)
        distinct_queries = _length_sample(list({p["query"]: 0 for p in pairs}), config)
        distinct_passages = _length_sample(list({p["passage"]: 0 for p in pairs}), config)
        query_lengths = token_lengths(distinct_queries[0], tokenizer, config.max_seq_length)
        passage_lengths = token_lengths(distinct_passages[0], tokenizer, config.max_seq_length)
        stats.token_lengths = {
            "tokenizer": config.model if tokenizer is not None else "whitespace estimate",
            "max_seq_length": config.max_seq_length,
            "queries": {**_length_summary(query_lengths, config.max_seq_length), "distinct": distinct_queries[1]},
            "passages": {**_length_summary(passage_lengths, config.max_seq_length), "distinct": distinct_passages[1]},
        }
        timer.done("lengths", "%d of %d distinct passages measured are longer than max_seq_length %d (%.1f%%)",
                   stats.token_lengths["passages"]["truncated"], len(passage_lengths), config.max_seq_length,
                   stats.token_lengths["passages"]["truncated_pct"])

        by_split: dict[str, list[dict]] = defaultdict(list)
        for pair, split in zip(pairs, splits):
            by_split[split].append(pair)
        train = by_split["train"]
        if config.max_train_pairs and len(train) > config.max_train_pairs:
            train = random.Random(config.seed).sample(train, config.max_train_pairs)
        if len(train) < config.min_train_pairs:
            raise DataError(
                f"{config.data_uri}: only {len(train)} training pairs after cleaning and splitting "
                f"(need at least {config.min_train_pairs}; {stats.rows_read} rows read, {stats.dropped_bad} bad, "
                f"{stats.dropped_duplicate} exact duplicate and {stats.dropped_near_duplicate} near-duplicate pairs dropped)"
            )
        if not by_split["test"]:
            raise DataError(f"{config.data_uri}: no pairs left for the evaluation split; add data or raise data.test_fraction")

        distractors = _pick_distractors(by_split["train"] + by_split["dev"], config.eval_distractors, config.seed)
        queries, corpus, qrels = build_ir_set(by_split["test"], distractors)
        stats.train_pairs, stats.dev_pairs = len(train), len(by_split["dev"])
        stats.eval_queries, stats.eval_corpus, stats.eval_qrels = len(queries), len(corpus), len(qrels)
        stats.eval_distractors = len(distractors)

        negatives: list[list[str]] = [[] for _ in train]
        if config.num_negatives > 0:
            if embed is None:
                negatives = mine_negatives(train, group_ids, config, stats)
            else:
                negatives, mining = _mine(embed, train, group_ids, config)
                stats.mining_model, stats.mining = "custom", asdict(mining)
            timer.done("negatives", "%d negatives per pair mined for %d pairs", config.num_negatives, len(train))

        staged_train, staged_eval = scratch / "train", scratch / "eval"
        staged_train.mkdir()
        staged_eval.mkdir()
        _write_jsonl(staged_train / TRAIN_FILE, (_train_row(p, n) for p, n in zip(train, negatives)))
        _write_jsonl(staged_train / DEV_FILE, ({"anchor": p["query"], "positive": p["passage"]} for p in by_split["dev"]))
        _write_jsonl(staged_eval / QUERIES_FILE, queries)
        _write_jsonl(staged_eval / CORPUS_FILE, corpus)
        with open(staged_eval / QRELS_FILE, "w", encoding="utf-8") as handle:
            handle.write("query-id\tcorpus-id\tscore\n")
            handle.writelines(f"{q}\t{p}\t{s}\n" for q, p, s in qrels)
        stats.fingerprint = fingerprint([staged_train / TRAIN_FILE, staged_train / DEV_FILE] + ir_files(staged_eval))
        timer.done("write", "fingerprint %s", stats.fingerprint[:12])

        report = json.dumps(stats.validation, indent=2)
        stats_json = json.dumps(asdict(stats), indent=2)
        histogram = data_card.length_histograms_png(query_lengths, passage_lengths, config.max_seq_length)
        for directory in (staged_train, staged_eval):
            (directory / STATS_FILE).write_text(stats_json)
        (staged_train / VALIDATION_FILE).write_text(report)
        (staged_train / CARD_MARKDOWN_FILE).write_text(data_card.markdown(asdict(stats)))
        (staged_train / CARD_HTML_FILE).write_text(data_card.html_page(asdict(stats), histogram))
        for staged, target in ((staged_train, Path(train_dir)), (staged_eval, Path(eval_dir))):
            target.mkdir(parents=True, exist_ok=True)
            for item in staged.iterdir():
                shutil.move(str(item), target / item.name)
    return stats


def _train_row(pair: dict, negatives: list[str]) -> dict:
    row = {"anchor": pair["query"], "positive": pair["passage"]}
    row.update({NEGATIVE_COLUMN.format(i + 1): text for i, text in enumerate(negatives)})
    return row


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
    return data_card.markdown(asdict(stats))
