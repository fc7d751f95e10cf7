"""The training objective and how a batch is laid out for it.

MatryoshkaLoss wraps (Cached)MultipleNegativesRankingLoss so the loss is taken at every configured
dim of one embedding; the GradCache form bounds memory by mini-batch, however large the batch (the
in-batch negatives) is.
"""

from __future__ import annotations

from ..config import TrainConfig


def build_loss(model, config: TrainConfig, processes: int = 1):
    """MatryoshkaLoss around (Cached)MultipleNegativesRankingLoss. With several processes the
    in-batch negatives are gathered from all of them (train.gather_across_devices)."""
    gather = config.gather_across_devices and processes > 1
    from sentence_transformers.sentence_transformer.losses import MatryoshkaLoss, MultipleNegativesRankingLoss

    from . import gradcache

    if config.loss == "cached_mnrl":
        # sentence-transformers' CachedMultipleNegativesRankingLoss, mini-batched from CPU-side lengths on
        # the packed path (medembed.train.gradcache; the same losses and gradients, tests/test_gradcache.py).
        inner = gradcache.make_loss(
            model, mini_batch_size=config.mini_batch_size, mini_batch_num_tokens=config.mini_batch_tokens or None,
            gather_across_devices=gather, keep_one_graph=config.gradcache_keep_graph,
        )
    else:
        inner = MultipleNegativesRankingLoss(model, gather_across_devices=gather)
    # train.matryoshka_weights: one per dim in descending order (config checks the count); () = all 1.
    weights = [float(w) for w in config.matryoshka_weights] or None
    return MatryoshkaLoss(model, inner, matryoshka_dims=list(config.matryoshka_dims), matryoshka_weights=weights)


def column_prompts(columns: list[str], query_prompt: str, passage_prompt: str) -> dict[str, str] | None:
    """The anchor is a query; the positive and every hard-negative column are passages, and with
    e5 a passage encoded without its "passage: " prompt is out of distribution."""
    if not (query_prompt or passage_prompt):
        return None
    return {column: query_prompt if column == "anchor" else passage_prompt for column in columns}


class LengthSortedCollator:
    """Orders the rows of each batch by passage length (longest first) before tokenising.

    The ranking loss is invariant to the order of pairs inside a batch, and GradCache slices the batch
    into consecutive mini-batches whose shared trailing padding sentence-transformers trims: sorted,
    each mini-batch is nearly padding-free. Longest first makes the first step the memory peak, so an
    out-of-memory shows at once."""

    def __init__(self, inner, key: str = "positive"):
        self.inner = inner
        self.key = key

    def __call__(self, features):
        features = sorted(features, key=lambda row: len(str(row.get(self.key) or "")), reverse=True)
        return self.inner(features)

    def __getattr__(self, name):
        return getattr(self.inner, name)
