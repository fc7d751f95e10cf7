"""Embedding large text collections with a sentence-transformers model.

One entry point for every stage that encodes (evaluation, hard-negative mining, benchmarks), so
speed work (length-sorted batches, bf16, compiled kernels) lands in one place.
"""

from __future__ import annotations

import os
from contextlib import contextmanager, nullcontext
from typing import Literal

Kind = Literal["query", "document"]


def encode(model, texts: list[str], kind: Kind, batch_size: int, show_progress_bar: bool = True):
    """Full-dimension embeddings (float32 torch tensor, rows in input order) with the model's prompt
    for `kind` ("query" or "document").

    sentence-transformers already sorts the texts by length so batches carry little padding. On a GPU
    an fp32 model runs under bf16 autocast: the matrix units' fast path (bench/bench_encode.py), with
    embeddings returned in float32."""
    import torch

    method = model.encode_query if kind == "query" else model.encode_document
    device = getattr(model, "device", torch.device("cpu"))
    fast = device.type == "cuda" and next(model.parameters()).dtype == torch.float32
    with torch.autocast("cuda", dtype=torch.bfloat16) if fast else nullcontext(), _parallel_tokenizer(fast):
        embeddings = method(texts, batch_size=batch_size, convert_to_tensor=True, show_progress_bar=show_progress_bar)
    return embeddings.float()


@contextmanager
def _parallel_tokenizer(enabled: bool):
    """Tokenising on one core feeds an H200 only ~1,100 passages/s (bench-encode: 14% MFU): let the
    Rust tokenizer use all cores while encoding. (The Makefile and dataloader workers turn its
    parallelism off to stay fork-safe; it is restored afterwards.)"""
    if not enabled:
        yield
        return
    saved = os.environ.get(_TOKENIZERS_PARALLELISM)
    os.environ[_TOKENIZERS_PARALLELISM] = "true"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(_TOKENIZERS_PARALLELISM, None)
        else:
            os.environ[_TOKENIZERS_PARALLELISM] = saved


_TOKENIZERS_PARALLELISM = "TOKENIZERS_PARALLELISM"
