"""Embedding large text collections with a sentence-transformers model.

One entry point for every stage that encodes (evaluation, hard-negative mining, dev evaluation during
training, benchmarks), so speed work lands in one place:

- texts sorted by length, so batches carry little padding;
- on a GPU: bf16 autocast, the padding-free forward with compiled layers (packing.py), and tokenising
  in DataLoader worker processes so the CPU prepares the next batches while the GPU runs (one core
  tokenises ~1,100 passages/s: far below what the H200 encodes, bench/bench_encode.py).
"""

from __future__ import annotations

import logging
import os
from contextlib import nullcontext
from typing import Literal

Kind = Literal["query", "document"]
log = logging.getLogger(__name__)


def encode(model, texts: list[str], kind: Kind, batch_size: int, show_progress_bar: bool = True,
           packed_attention: str = "auto", compile_layers: str = "auto", workers: int = -1,
           graph: str = "auto", graph_compile: str = "reduce-overhead", row_tokens: int = 0):
    """Full-dimension embeddings (float32 torch tensor, rows in input order) with the model's prompt
    for `kind` ("query" or "document").

    `graph` ("auto" = on CUDA): the packed-row path of graph_encoder.py (whole encoder compiled once,
    `graph_compile` mode, CUDA graphs, rows of `row_tokens` real tokens, 0 = its default); `batch_size`
    does not apply there. Otherwise, on CUDA the model is switched to the packed forward in place
    (packing.enable; "auto" modes) and stays so. `workers`: tokenising processes, -1 = up to 8 on
    CUDA, 0 on CPU."""
    import torch

    from . import graph_encoder, packing

    device = getattr(model, "device", torch.device("cpu"))
    cuda = device.type == "cuda"
    if workers < 0:
        workers = default_workers(device.type)
    prompt = (model.prompts or {}).get(kind, "")
    if graph_encoder.wanted(graph, device.type) and packed_attention != "off":
        reason = graph_encoder.supported(model)
        if reason is None:
            return graph_encoder.encode(model, texts, prompt, workers, show_progress_bar, compile_mode=graph_compile,
                                        row_tokens=row_tokens or graph_encoder.ROW_TOKENS)
        if graph == "on":
            raise ValueError(f"graph encoder requested but {reason}")
        log.info("graph encoder not used: %s", reason)
    packing.apply(model, packed_attention, compile_layers, device.type, where="packed_attention")
    # Only an fp32 model needs autocast; a bf16/fp16 one already runs on the matrix units' fast path.
    fast = cuda and next(model.parameters()).dtype == torch.float32
    with torch.autocast("cuda", dtype=torch.bfloat16) if fast else nullcontext():
        return encode_batches(model, texts, prompt, batch_size, workers, show_progress_bar)


def encode_batches(model, texts: list[str], prompt: str, batch_size: int, workers: int, show_progress_bar: bool):
    """Length-sorted batches, tokenised by `workers` DataLoader processes (0 = in this process),
    embedded by the model's forward and written back in input order."""
    import torch
    from sentence_transformers.util import batch_to_device
    from tqdm.auto import tqdm

    device = model.device
    if not texts:
        return torch.empty(0, model.get_embedding_dimension())
    loader = _batch_loader(model, texts, prompt, batch_size, workers, pin_memory=device.type == "cuda")
    out = None
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for indices, features in tqdm(loader, total=len(loader), desc="encode", disable=not show_progress_bar):
                features = batch_to_device(features, device)
                embeddings = model(features)["sentence_embedding"]
                if out is None:
                    out = torch.empty(len(texts), embeddings.shape[-1], dtype=torch.float32, device=device)
                out[indices.to(device, non_blocking=True)] = embeddings.float()
    finally:
        model.train(was_training)
    return out


def tokenize_only(model, texts: list[str], prompt: str, batch_size: int, workers: int = -1) -> int:
    """Run just the tokenising side of `encode_batches` (benchmarks: what the CPU alone can feed)."""
    if workers < 0:
        workers = default_workers(model.device.type)
    return sum(len(indices) for indices, _ in _batch_loader(model, texts, prompt, batch_size, workers, pin_memory=False))


def _batch_loader(model, texts, prompt, batch_size, workers, pin_memory):
    from torch.utils.data import DataLoader

    order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    return DataLoader(
        batches,
        batch_size=None,  # each item already is one batch of indices
        collate_fn=_Tokenize(model, texts, prompt),
        num_workers=workers,
        pin_memory=pin_memory,
        prefetch_factor=4 if workers else None,
        # fork: workers share the (already loaded) tokenizer instead of pickling the whole model.
        multiprocessing_context="fork" if workers else None,
    )


def default_workers(device_type: str) -> int:
    # The GPU machine has 16 cores; leave two for the main process and the CUDA driver.
    return min(8, max(1, (os.cpu_count() or 2) - 2)) if device_type == "cuda" else 0


class _Tokenize:
    """DataLoader collate_fn: a batch of text indices -> (indices, tokenizer features [+ packed layout])."""

    def __init__(self, model, texts: list[str], prompt: str):
        self.model, self.texts, self.prompt = model, texts, prompt

    def __call__(self, indices):
        import torch

        from .packing import prepack

        features = self.model.preprocess([self.texts[i] for i in indices], prompt=self.prompt or None)
        # Indices as a tensor: pinned by the DataLoader, so the write-back copies without a host sync.
        return torch.tensor(indices), prepack(self.model, features)
