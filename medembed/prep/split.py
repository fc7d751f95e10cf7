"""Leakage-safe splitting: near-duplicate clusters, connected groups, a seeded split of whole groups,
and the check that nothing links the splits.

Templated medical data repeats itself: one answer text serves hundreds of questions, and the same
question comes with several answers. Rows sharing a group value (document, focus, concept), a
(near-)duplicate passage or a (near-)duplicate query are connected and always land in one split.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict

import numpy as np

from ..config import DataConfig
from . import dedup
from .ingest import DataError
from .stats import PrepStats


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


def split_pairs(pairs: list[dict], config: DataConfig, stats: PrepStats) -> tuple[list[str], list[int]]:
    """(split name per pair, group id per pair), recorded in `stats`; raises if anything crosses splits."""
    group_list = connected_groups(pairs)
    splits = split_by_group(group_list, config.dev_fraction, config.test_fraction, config.seed)
    group_sizes = Counter(group_list)
    stats.groups, stats.largest_group = len(group_sizes), max(group_sizes.values())
    stats.split_rows = dict(Counter(splits))
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
    return splits, group_list
