"""Hard-negative mining with the base model, guarded against false negatives.

Equivalent to sentence-transformers' `mine_hard_negatives` with an absolute margin and a score
ceiling, plus what it lacks: a false-negative guard. Every pair carries guard keys (its
near-duplicate query and answer clusters (prep.split), and its topic + question type, or its whole connected
group where those are unknown); a candidate passage whose pairs share any key with the pair is never
taken, however it scores, since in templated medical data those are the likeliest unlabelled
positives. Same-topic answers to *other* question types stay eligible: the hardest true negatives.
"""

from __future__ import annotations

import itertools
import logging
import random
from dataclasses import dataclass
from collections import defaultdict
from typing import Callable, Collection, Hashable

from ..config import DataConfig

log = logging.getLogger(__name__)

# Score-matrix rows computed at once: bounds memory on large training sets.
QUERY_CHUNK = 1024


@dataclass
class MiningStats:
    queries: int = 0
    candidates: int = 0
    negatives_mined: int = 0
    skipped_possible_positive: int = 0
    skipped_margin_or_ceiling: int = 0
    random_fill: int = 0
    seconds: float = 0.0


def mine(
    embed: Callable[[list[str], str], "object"],
    queries: list[str],
    positives: list[str],
    guards: list[Collection[Hashable]],
    num_negatives: int,
    margin: float,
    max_score: float,
    seed: int,
) -> tuple[list[list[str]], MiningStats]:
    """`num_negatives` negatives per pair. `embed(texts, kind)` returns L2-normalisable float tensors.

    A candidate is accepted when none of the pairs it answers shares a guard key with this pair and
    it scores below both `positive score - margin` and `max_score`; the highest-scoring accepted
    candidates win. Pairs left short (tiny corpora) are filled with random unguarded passages.
    """
    import time

    import torch

    start = time.perf_counter()
    stats = MiningStats(queries=len(queries))
    pair_keys = [frozenset(keys) for keys in guards]
    passage_index: dict[str, int] = {}
    passage_keys: list[set] = []
    for passage, keys in zip(positives, pair_keys):
        index = passage_index.setdefault(passage, len(passage_index))
        if index == len(passage_keys):
            passage_keys.append(set())
        passage_keys[index] |= keys  # a passage answering several pairs is guarded by all their keys
    passages_by_key: dict[Hashable, list[int]] = defaultdict(list)
    for index, keys in enumerate(passage_keys):
        for key in keys:
            passages_by_key[key].append(index)
    corpus = list(passage_index)
    stats.candidates = len(corpus)
    query_emb = torch.nn.functional.normalize(torch.as_tensor(embed(queries, "query")).float(), dim=-1)
    corpus_emb = torch.nn.functional.normalize(torch.as_tensor(embed(corpus, "document")).float(), dim=-1)
    # On the embeddings' device (CUDA when the encoder ran there): every tensor below meets `scores`.
    positive_ids = torch.tensor([passage_index[p] for p in positives], device=query_emb.device)
    # Enough ranked candidates to survive the guards in all but degenerate cases.
    depth = min(len(corpus), max(4 * num_negatives + 16, 32))
    rng = random.Random(seed)
    negatives: list[list[str]] = []
    for lo in range(0, len(queries), QUERY_CHUNK):
        hi = min(lo + QUERY_CHUNK, len(queries))
        scores = query_emb[lo:hi] @ corpus_emb.T
        positive_scores = scores.gather(1, positive_ids[lo:hi, None]).squeeze(1)
        guarded = _guard_mask(pair_keys[lo:hi], passages_by_key, len(corpus), scores.device)
        too_close = (scores >= (positive_scores[:, None] - margin)) | (scores >= max_score)
        # Counted among the top-ranked candidates only: what a naive miner would have taken.
        top_naive = scores.topk(min(num_negatives, len(corpus)), dim=1).indices
        stats.skipped_possible_positive += int(guarded.gather(1, top_naive).sum())
        stats.skipped_margin_or_ceiling += int((too_close & ~guarded).gather(1, top_naive).sum())
        allowed = scores.masked_fill(guarded | too_close, float("-inf"))
        top_scores, top_ids = allowed.topk(depth, dim=1)
        for row in range(hi - lo):
            chosen = [corpus[i] for s, i in zip(top_scores[row].tolist(), top_ids[row].tolist()) if s != float("-inf")][:num_negatives]
            stats.negatives_mined += len(chosen)
            if len(chosen) < num_negatives:
                chosen += _random_fill(corpus, passage_keys, pair_keys[lo + row], num_negatives - len(chosen), chosen, rng)
            negatives.append(chosen)
    stats.random_fill = len(queries) * num_negatives - stats.negatives_mined
    stats.seconds = time.perf_counter() - start
    return negatives, stats


def _guard_mask(pair_keys: list[frozenset], passages_by_key: dict, n_passages: int, device=None):
    """(pairs, passages) bool: True where the passage answers a pair sharing a guard key. Built from
    the key -> passages lists, so its cost follows the guarded entries, not pairs x passages."""
    import torch

    rows: list[int] = []
    cols: list[int] = []
    for row, keys in enumerate(pair_keys):
        excluded = set().union(*(passages_by_key.get(key, ()) for key in keys))
        rows += [row] * len(excluded)
        cols += excluded
    mask = torch.zeros(len(pair_keys), n_passages, dtype=torch.bool, device=device)
    mask[torch.tensor(rows, dtype=torch.long, device=device), torch.tensor(cols, dtype=torch.long, device=device)] = True
    return mask


def _random_fill(corpus: list[str], passage_keys: list[set], keys: frozenset, count: int, taken: list[str], rng: random.Random) -> list[str]:
    unguarded = [p for p, k in zip(corpus, passage_keys) if not k & keys]
    pool = [p for p in unguarded if p not in taken]
    if len(pool) < count:
        # (Nearly) every passage is guarded for this pair: no safe negative; repeat what there is.
        pool = pool or unguarded or [""]
        return [pool[i % len(pool)] for i in range(count)]
    return rng.sample(pool, count)


# ---------------------------------------------------------------- prep's use of it


def negative_guard_keys(pair: dict, group: int, fields: tuple[str, ...]) -> set[tuple]:
    """What makes another pair's answer a possible positive for this pair."""
    keys: set[tuple] = {("query", pair["query_cluster"]), ("passage", pair["passage_cluster"])}
    values = [pair.get("guard", {}).get(name) for name in fields]
    if fields and all(values):
        # One key per value combination: multi-valued fields match on any shared value.
        keys.update(("fields", *combination) for combination in itertools.product(*values))
    else:
        keys.add(("group", group))
    return keys


def model_embedder(model_ref: str, max_seq_length: int, batch_size: int) -> Callable[[list[str], str], "object"]:
    """`embed(texts, kind)` with the training base model (its prompts, on the best device)."""
    from ..encoding import encode
    from ..models import configure_torch, load_model

    model = load_model(model_ref, max_seq_length=max_seq_length, device=configure_torch())

    def embed(texts: list[str], kind: str):
        return encode(model, texts, kind, batch_size, show_progress_bar=True)

    return embed


def mine_for_pairs(embed, train: list[dict], group_ids: list[int], config: DataConfig) -> tuple[list[list[str]], MiningStats]:
    """Negatives for prep's training pairs (`group_ids[i]` is pair i's connected group)."""
    return mine(
        embed,
        [p["query"] for p in train],
        [p["passage"] for p in train],
        [negative_guard_keys(p, group, tuple(config.negative_guard_fields)) for p, group in zip(train, group_ids)],
        config.num_negatives,
        config.negative_margin,
        config.negative_max_score,
        config.seed,
    )
