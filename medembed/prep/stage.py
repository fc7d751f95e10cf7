"""Data prep: question/passage pairs in, leakage-safe training and IR evaluation sets out.

Phases (each timed in PrepStats and shown in the data card): read and clean (cleaning.py: ingest,
validate, normalise, personal data, exact duplicates) -> near-duplicates and a group split with a
leakage check (split.py) -> language tags -> token lengths against the training model -> the
training pairs and the IR evaluation set with distractors (ir_set.py) -> hard negatives mined with
the training base model (negatives.py) -> write, with the built-in shifted probes built from the
test split under eval_data/probes/ (probes.py, data.shift_probes) -> data card, content fingerprint.

Errors are `DataError`s whose message names the file, row and field: prep fails on them before any
GPU time is spent, and outputs are staged and moved in only when everything passed.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import tempfile
from collections import Counter, defaultdict
from dataclasses import asdict
from pathlib import Path

from .. import artifacts, diskspace, scratch
from ..config import ConfigError, DataConfig, PipelineConfig
from ..models import embedding_dimension
from . import card, lengths, probes
from .cleaning import load_pairs
from .ingest import DataError
from .ir_set import build_ir_set, pick_distractors
from .language import tag_languages
from .negatives import mine_for_pairs, model_embedder
from .split import mark_near_duplicates, split_pairs
from .stats import PrepStats, StepTimer

log = logging.getLogger(__name__)


def run(config: PipelineConfig, train_dir: Path, eval_dir: Path) -> PrepStats:
    """The prep stage: the training base model tokenises (truncation figures) and mines negatives."""
    check_model_dims(config)
    with scratch.work_dir("prep") as work, diskspace.explained(
            "data prep", {"the training-data output": train_dir, "the evaluation-data output": eval_dir,
                          "scratch space (TMPDIR)": work},
            "Nothing was written to the outputs (they appear only once complete); free space there or give the "
            "task a larger disk, then run again"):
        stats = prepare(config.data, Path(train_dir), Path(eval_dir), model=config.train.base_model,
                        max_seq_length=config.train.max_seq_length, work_dir=Path(work))
    log.info("prep done: %d training pairs, %d evaluation queries over %d passages, fingerprint %s",
             stats.train_pairs, stats.eval_queries, stats.eval_corpus, stats.fingerprint[:12])
    return stats


def check_model_dims(config: PipelineConfig) -> None:
    """Matryoshka dims beyond the base model's embedding would fail only once training starts: refuse them now."""
    size = embedding_dimension(config.train.base_model)
    if size is not None and config.train.matryoshka_dims[0] > size:
        raise ConfigError(f"train.matryoshka_dims={list(config.train.matryoshka_dims)}: {config.train.base_model} "
                          f"embeds in {size} dims; use dims of at most {size}")


def prepare(config: DataConfig, train_dir: Path, eval_dir: Path, *, model: str, max_seq_length: int,
            work_dir: Path | None = None, embed=None) -> PrepStats:
    """Run data prep end to end and write the training and evaluation sets.

    `model` and `max_seq_length` are the training stage's: prep counts truncation with its tokenizer
    and mines negatives with it. `embed(texts, kind)` replaces the model for mining (tests).
    """
    if work_dir is not None:
        Path(work_dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work_dir) as scratch:
        scratch = Path(scratch)
        stats = PrepStats(source=config.data_uri, num_negatives=config.num_negatives)
        timer = StepTimer(stats)

        pairs = load_pairs(config, stats, scratch / "download")
        timer.done("read", "%d rows read, %d bad, %d exact duplicates, %d pairs", stats.rows_read, stats.dropped_bad,
                   stats.dropped_duplicate, len(pairs))

        pairs = mark_near_duplicates(pairs, config, stats)
        timer.done("dedup", "%d near-duplicate pairs dropped, %d pairs kept", stats.dropped_near_duplicate, stats.rows_kept)

        splits, groups = split_pairs(pairs, config, stats)
        for pair, group in zip(pairs, groups):
            pair["group"] = group
        timer.done("split", "%d groups (largest %d pairs), rows per split %s, zero leakage", stats.groups,
                   stats.largest_group, stats.split_rows)

        tag_languages(pairs, config.language_passage_chars)
        stats.languages = dict(Counter(p["language"] for p in pairs).most_common())
        timer.done("language", "%s", stats.languages)

        query_lengths, passage_lengths = _measure_lengths(pairs, config, model, max_seq_length, stats)
        timer.done("lengths", "%d of %d distinct passages measured are longer than max_seq_length %d (%.1f%%)",
                   stats.token_lengths["passages"]["truncated"], len(passage_lengths), max_seq_length,
                   stats.token_lengths["passages"]["truncated_pct"])

        train, dev, test, (queries, corpus, qrels) = _build_sets(pairs, splits, config, stats)

        negatives: list[list[str]] = [[] for _ in train]
        if config.num_negatives > 0:
            if embed is None:
                embed = model_embedder(model, config.mining_max_seq_length or max_seq_length, config.mining_batch_size)
                stats.mining_model = model
            else:
                stats.mining_model = "custom"
            negatives, mining = mine_for_pairs(embed, train, [p["group"] for p in train], config)
            stats.mining = asdict(mining)
            timer.done("negatives", "%d negatives per pair mined for %d pairs: %s", config.num_negatives, len(train),
                       json.dumps(stats.mining))

        staged_train, staged_eval = scratch / "train", scratch / "eval"
        staged_eval.mkdir()
        stats.shift_probes = probes.build_shift_probes(test, corpus, config.shift_probes, staged_eval / probes.PROBES_DIR,
                                                       config.shift_probe_max_queries, config.seed)
        timer.done("probes", "%s", ", ".join(f"{name}: {p['queries']} queries over {p['corpus']} passages"
                                             for name, p in stats.shift_probes.items()) or "none")
        _write_outputs(staged_train, staged_eval, train, negatives, dev, (queries, corpus, qrels), stats,
                       query_lengths, passage_lengths, max_seq_length)
        timer.done("write", "fingerprint %s", stats.fingerprint[:12])
        moved: list[Path] = []
        created = [d for d in (Path(train_dir), Path(eval_dir)) if not d.exists()]
        try:
            artifacts.move_into(staged_train, Path(train_dir), moved)
            artifacts.move_into(staged_eval, Path(eval_dir), moved)
        except BaseException:
            # A move across filesystems copies: one that failed midway (a full disk) is taken back.
            for path in moved + created:
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
            raise
    return stats


def _measure_lengths(pairs: list[dict], config: DataConfig, model: str, max_seq_length: int,
                     stats: PrepStats) -> tuple[list[int], list[int]]:
    tokenizer = lengths.load_tokenizer(model)
    queries, n_queries = lengths.length_sample(list({p["query"]: 0 for p in pairs}), config.length_sample, config.seed)
    passages, n_passages = lengths.length_sample(list({p["passage"]: 0 for p in pairs}), config.length_sample, config.seed)
    query_lengths = lengths.token_lengths(queries, tokenizer, max_seq_length)
    passage_lengths = lengths.token_lengths(passages, tokenizer, max_seq_length)
    stats.token_lengths = {
        "tokenizer": model if tokenizer is not None else "whitespace estimate",
        "max_seq_length": max_seq_length,
        "queries": {**lengths.length_summary(query_lengths, max_seq_length), "distinct": n_queries},
        "passages": {**lengths.length_summary(passage_lengths, max_seq_length), "distinct": n_passages},
    }
    return query_lengths, passage_lengths


def _build_sets(pairs: list[dict], splits: list[str], config: DataConfig, stats: PrepStats):
    """(training pairs, dev pairs, test pairs, (queries, corpus, qrels) of the test split with distractors)."""
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
    distractors = pick_distractors(by_split["train"] + by_split["dev"], config.eval_distractors, config.seed)
    queries, corpus, qrels = build_ir_set(by_split["test"], distractors)
    stats.train_pairs, stats.dev_pairs = len(train), len(by_split["dev"])
    stats.eval_queries, stats.eval_corpus, stats.eval_qrels = len(queries), len(corpus), len(qrels)
    stats.eval_distractors = len(distractors)
    return train, by_split["dev"], by_split["test"], (queries, corpus, qrels)


def _write_outputs(train_dir: Path, eval_dir: Path, train: list[dict], negatives: list[list[str]], dev: list[dict],
                   ir_set: tuple, stats: PrepStats, query_lengths: list[int], passage_lengths: list[int],
                   max_seq_length: int) -> None:
    train_dir.mkdir()
    eval_dir.mkdir(exist_ok=True)
    artifacts.write_jsonl(train_dir / artifacts.TRAIN_FILE, (_train_row(p, n) for p, n in zip(train, negatives)))
    artifacts.write_jsonl(train_dir / artifacts.DEV_FILE, ({"anchor": p["query"], "positive": p["passage"]} for p in dev))
    artifacts.write_ir_set(eval_dir, *ir_set)
    stats.fingerprint = artifacts.fingerprint(
        [train_dir / artifacts.TRAIN_FILE, train_dir / artifacts.DEV_FILE] + artifacts.ir_files(eval_dir))
    stats_json = json.dumps(asdict(stats), indent=2)
    for directory in (train_dir, eval_dir):
        (directory / artifacts.STATS_FILE).write_text(stats_json)
    (train_dir / artifacts.VALIDATION_FILE).write_text(json.dumps(stats.validation, indent=2))
    histogram = card.length_histograms_png(query_lengths, passage_lengths, max_seq_length)
    (train_dir / artifacts.CARD_MARKDOWN_FILE).write_text(card.markdown(asdict(stats)))
    (train_dir / artifacts.CARD_HTML_FILE).write_text(card.html_page(asdict(stats), histogram))


def _train_row(pair: dict, negatives: list[str]) -> dict:
    row = {"anchor": pair["query"], "positive": pair["passage"]}
    row.update({artifacts.NEGATIVE_COLUMN.format(i + 1): text for i, text in enumerate(negatives)})
    return row
