"""Embedding large text collections with a sentence-transformers model.

One entry point for every stage that encodes (evaluation, hard-negative mining, benchmarks), so
speed work (length-sorted batches, bf16, compiled kernels) lands in one place.
"""

from __future__ import annotations

from typing import Literal

Kind = Literal["query", "document"]


def encode(model, texts: list[str], kind: Kind, batch_size: int, show_progress_bar: bool = True):
    """Full-dimension embeddings (torch tensor, rows in input order) with the model's prompt for
    `kind` ("query" or "document")."""
    method = model.encode_query if kind == "query" else model.encode_document
    return method(texts, batch_size=batch_size, convert_to_tensor=True, show_progress_bar=show_progress_bar)
