"""Hard-negative mining with the base model, guarded against false negatives.

Equivalent to sentence-transformers' `mine_hard_negatives` with an absolute margin and a score
ceiling, plus what it lacks: a group guard. A candidate from the pair's own connected group (same
document, focus, concept, shared or near-duplicate answer) is never taken, however it scores, since
in templated medical data those are the likeliest unlabelled positives.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Callable

log = logging.getLogger(__name__)

# Score-matrix rows computed at once: bounds memory on large training sets.
QUERY_CHUNK = 1024


@dataclass
class MiningStats:
    queries: int = 0
    candidates: int = 0
    negatives_mined: int = 0
    skipped_same_group: int = 0
    skipped_margin_or_ceiling: int = 0
    random_fill: int = 0
    seconds: float = 0.0


def mine(
    embed: Callable[[list[str], str], "object"],
    queries: list[str],
    positives: list[str],
    groups: list[int],
    num_negatives: int,
    margin: float,
    max_score: float,
    seed: int,
) -> tuple[list[list[str]], MiningStats]:
    """`num_negatives` negatives per pair. `embed(texts, kind)` returns L2-normalisable float tensors.

    A candidate is accepted when it is not in the pair's group and scores below both
    `positive score - margin` and `max_score`; the highest-scoring accepted candidates win.
    Pairs left short (tiny or one-group corpora) are filled with random other-group passages.
    """
    import time

    import torch

    start = time.perf_counter()
    stats = MiningStats(queries=len(queries))
    passage_index: dict[str, int] = {}
    passage_group: list[int] = []
    for passage, group in zip(positives, groups):
        if passage not in passage_index:
            passage_index[passage] = len(passage_index)
            passage_group.append(group)
    corpus = list(passage_index)
    stats.candidates = len(corpus)
    query_emb = torch.nn.functional.normalize(torch.as_tensor(embed(queries, "query")).float(), dim=-1)
    corpus_emb = torch.nn.functional.normalize(torch.as_tensor(embed(corpus, "document")).float(), dim=-1)
    corpus_groups = torch.tensor(passage_group)
    pair_groups = torch.tensor(groups)
    positive_ids = torch.tensor([passage_index[p] for p in positives])
    # Enough ranked candidates to survive the guards in all but degenerate cases.
    depth = min(len(corpus), max(4 * num_negatives + 16, 32))
    rng = random.Random(seed)
    negatives: list[list[str]] = []
    for lo in range(0, len(queries), QUERY_CHUNK):
        hi = min(lo + QUERY_CHUNK, len(queries))
        scores = query_emb[lo:hi] @ corpus_emb.T
        positive_scores = scores.gather(1, positive_ids[lo:hi, None]).squeeze(1)
        same_group = corpus_groups[None, :] == pair_groups[lo:hi, None]
        too_close = (scores >= (positive_scores[:, None] - margin)) | (scores >= max_score)
        # Counted among the top-ranked candidates only: what a naive miner would have taken.
        top_naive = scores.topk(min(num_negatives, len(corpus)), dim=1).indices
        stats.skipped_same_group += int(same_group.gather(1, top_naive).sum())
        stats.skipped_margin_or_ceiling += int((too_close & ~same_group).gather(1, top_naive).sum())
        allowed = scores.masked_fill(same_group | too_close, float("-inf"))
        top_scores, top_ids = allowed.topk(depth, dim=1)
        for row in range(hi - lo):
            chosen = [corpus[i] for s, i in zip(top_scores[row].tolist(), top_ids[row].tolist()) if s != float("-inf")][:num_negatives]
            stats.negatives_mined += len(chosen)
            if len(chosen) < num_negatives:
                chosen += _random_fill(corpus, passage_group, groups[lo + row], num_negatives - len(chosen), chosen, rng)
            negatives.append(chosen)
    stats.random_fill = len(queries) * num_negatives - stats.negatives_mined
    stats.seconds = time.perf_counter() - start
    return negatives, stats


def _random_fill(corpus: list[str], corpus_groups: list[int], group: int, count: int, taken: list[str], rng: random.Random) -> list[str]:
    pool = [p for p, g in zip(corpus, corpus_groups) if g != group and p not in taken]
    if len(pool) < count:
        # Only one group exists: no passage is a safe negative; repeat what there is.
        pool = pool or [p for p, g in zip(corpus, corpus_groups) if g != group] or [""]
        return [pool[i % len(pool)] for i in range(count)]
    return rng.sample(pool, count)
