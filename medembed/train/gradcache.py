"""GradCache (CachedMultipleNegativesRankingLoss) without per-mini-batch host syncs, keeping one graph.

sentence-transformers 6.2's cached losses read the attention mask on the GPU to split a batch into
token-budget mini-batches (`.tolist()`) and to trim each mini-batch's trailing padding (`.any()`,
`.item()`), and the packed forward then finds the real tokens with `nonzero`: ~50 host syncs a step at
batch 1024 (bench/results/profile-train-h200: 0.41 s of cudaStreamSynchronize in a 1.7 s step), each
draining the GPU's queue while the CPU is the bottleneck. Here the collator also hands over each column's
text lengths as a CPU array (LENGTHS_KEY), so mini-batch ranges, trimming and the packing layout are
computed on the CPU and nothing waits on the GPU.

GradCache's second forward ("re-forward") costs ~25% of a step's compute. Without changing memory, one
of them can be skipped: the largest mini-batch is embedded last in step (1), *with* its graph, and
back-propagated first in step (3), before any other mini-batch is re-embedded, so at most one
mini-batch's activations are alive at any time, as before (`keep_one_graph`).

Same losses and gradients as sentence-transformers' CachedMultipleNegativesRankingLoss
(tests/test_gradcache.py, CPU, dropout off).
"""

from __future__ import annotations

import bisect
from functools import partial

import numpy as np

from ..packing import LENGTHS_KEY


class LengthsCollator:
    """Wraps a sentence-transformers collator: for each `<column>_attention_mask` (right-padded) adds
    `<column>_medembed_lengths`, the per-text token counts as a numpy array (stays on the CPU: the
    trainer only moves tensors)."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, features):
        batch = self.inner(features)
        for key in [k for k in batch if k.endswith("_attention_mask")]:
            mask = batch[key]
            if getattr(mask, "ndim", 0) == 2 and bool(mask[:, 0].all()):  # right padding: every text starts at 0
                batch[key[: -len("attention_mask")] + LENGTHS_KEY] = mask.sum(dim=1).numpy().astype(np.int64)
        return batch

    def __getattr__(self, name):
        return getattr(self.inner, name)


def minibatch_ranges(lengths, batch_size: int, mini_batch_size: int, mini_batch_num_tokens: int | None):
    """sentence-transformers' `_minibatch_ranges`, from CPU lengths."""
    if mini_batch_num_tokens is None:
        return [(b, min(b + mini_batch_size, batch_size)) for b in range(0, batch_size, mini_batch_size)]
    cumulative = np.cumsum(lengths).tolist()
    ranges, begin = [], 0
    while begin < batch_size:
        previous = cumulative[begin - 1] if begin > 0 else 0
        end = max(bisect.bisect_right(cumulative, previous + mini_batch_num_tokens), begin + 1)
        ranges.append((begin, end))
        begin = end
    return ranges


def slice_features(feature: dict, begin: int, end: int) -> dict:
    """Rows begin:end, trailing padding shared by those rows dropped (width from the CPU lengths)."""
    import torch

    lengths = feature[LENGTHS_KEY]
    mask = feature.get("attention_mask")
    seq_width = mask.shape[1] if isinstance(mask, torch.Tensor) and mask.ndim == 2 else None
    width = int(lengths[begin:end].max()) if end > begin else 0
    out = {}
    for key, value in feature.items():
        if key == LENGTHS_KEY:
            out[key] = value[begin:end]
        elif not isinstance(value, torch.Tensor):
            out[key] = value
        elif seq_width is not None and value.ndim >= 2 and value.shape[1] == seq_width and width > 0:
            out[key] = value[begin:end, :width]
        else:
            out[key] = value[begin:end]
    return out


def make_loss(model, mini_batch_size: int, mini_batch_num_tokens: int | None, gather_across_devices: bool,
              keep_one_graph: bool = True):
    from sentence_transformers.sentence_transformer.losses import CachedMultipleNegativesRankingLoss

    class FastCachedMultipleNegativesRankingLoss(CachedMultipleNegativesRankingLoss):
        """CachedMultipleNegativesRankingLoss with CPU-side mini-batching and one kept graph."""

        def embed_minibatch(self, sentence_feature, begin, end, with_grad, copy_random_state, random_state=None):
            if LENGTHS_KEY not in sentence_feature:
                return super().embed_minibatch(sentence_feature, begin, end, with_grad, copy_random_state, random_state)
            import torch
            from contextlib import nullcontext

            from sentence_transformers.base.losses.gradcache import RandContext

            minibatch = slice_features(sentence_feature, begin, end)
            if not _packed(self.model):
                minibatch.pop(LENGTHS_KEY)  # only the packed forward reads it
            with random_state if random_state is not None else nullcontext():
                with nullcontext() if with_grad else torch.no_grad():
                    tensors = [v for v in minibatch.values() if isinstance(v, torch.Tensor)]
                    state = RandContext(*tensors) if copy_random_state else None
                    reps = self.model(minibatch)["sentence_embedding"]
            return reps, state

        def forward_cached(self, sentence_features, labels=None):
            import torch

            features = list(sentence_features)
            if not all(LENGTHS_KEY in f for f in features):
                return super().forward_cached(features, labels)
            grad_enabled = torch.is_grad_enabled()
            ranges = [minibatch_ranges(f[LENGTHS_KEY], len(f[LENGTHS_KEY]), self.mini_batch_size,
                                       self.mini_batch_num_tokens) for f in features]
            order = [(c, i) for c, column in enumerate(ranges) for i in range(len(column))]
            kept = None
            if grad_enabled and keep_one_graph and order:
                # The mini-batch with the most real tokens: its re-forward would cost the most.
                kept = max(order, key=lambda ci: int(features[ci[0]][LENGTHS_KEY][slice(*ranges[ci[0]][ci[1]])].sum()))
                order = [ci for ci in order if ci != kept] + [kept]
            reps = [[None] * len(column) for column in ranges]
            states = [[None] * len(column) for column in ranges]
            kept_reps = None
            for c, i in order:
                begin, end = ranges[c][i]
                if (c, i) == kept:
                    kept_reps, _ = self.embed_minibatch(features[c], begin, end, with_grad=True, copy_random_state=False)
                    reps[c][i] = kept_reps.detach().requires_grad_()
                else:
                    out, states[c][i] = self.embed_minibatch(features[c], begin, end, with_grad=False,
                                                             copy_random_state=grad_enabled)
                    reps[c][i] = out.detach().requires_grad_()
            if not grad_enabled:
                return self.calculate_loss(reps, labels)
            loss = self.calculate_loss(reps, labels, with_backward=True)
            loss = loss.detach().requires_grad_()
            cache = [[r.grad for r in column] for column in reps]
            if any(g is None for column in cache for g in column):
                raise ValueError("the loss did not use every input column (no gradient for some embeddings)")
            loss.register_hook(partial(_backward_hook, features=features, loss_obj=self, cache=cache, states=states,
                                       ranges=ranges, kept=kept, kept_reps=kept_reps))
            return loss

    return FastCachedMultipleNegativesRankingLoss(
        model, mini_batch_size=mini_batch_size, mini_batch_num_tokens=mini_batch_num_tokens,
        gather_across_devices=gather_across_devices,
    )


def _packed(model) -> bool:
    from .. import packing

    model = getattr(model, "_orig_mod", model)
    model = getattr(model, "module", model)  # DDP
    return packing.is_enabled(model)


def _surrogate_backward(reps, grad, grad_output):
    import torch

    dtype = torch.promote_types(reps.dtype, grad.dtype)
    if dtype in (torch.float16, torch.bfloat16):
        dtype = torch.float32
    (torch.dot(reps.flatten().to(dtype), grad.flatten().to(dtype)) * grad_output).backward()


def _backward_hook(grad_output, features, loss_obj, cache, states, ranges, kept, kept_reps):
    """Step (3): the kept mini-batch first (its graph is still there), then re-embed the others."""
    import torch
    from sentence_transformers.base.losses.gradcache import _ddp_replay_context

    model = getattr(loss_obj.model, "_orig_mod", loss_obj.model)
    remaining = sum(len(column) for column in cache)
    with torch.enable_grad():
        if kept is not None:
            remaining -= 1
            with _ddp_replay_context(model, synchronize=remaining == 0):
                _surrogate_backward(kept_reps, cache[kept[0]][kept[1]], grad_output)
        for c, column in enumerate(ranges):
            for i, (begin, end) in enumerate(column):
                if (c, i) == kept:
                    continue
                remaining -= 1
                with _ddp_replay_context(model, synchronize=remaining == 0):
                    reps, _ = loss_obj.embed_minibatch(features[c], begin, end, with_grad=True,
                                                       copy_random_state=False, random_state=states[c][i])
                    if reps.requires_grad:
                        _surrogate_backward(reps, cache[c][i], grad_output)
