"""bf16 compute copies of an fp32 transformers model: weights cast once per optimizer step, not per forward.

Under autocast every forward casts each fp32 weight to bf16 again and LayerNorm runs in fp32, so the
residual stream between layers is fp32 and is cast back to bf16 before every matmul (the casts/copies
share of the training profile, bench/results/profile-train-h200). Here the forward and backward run on
a bf16 copy of the encoder (no autocast inside it: activations stay bf16 end to end), and the optimizer
keeps the fp32 master weights:

- the copy is refreshed from the masters lazily, at the first forward after each optimizer step
  (one cast of every weight per step, however many GradCache mini-batches the step has);
- each copy parameter's bf16 gradient is added into its master's fp32 `.grad` as soon as one backward
  has produced it (a post-accumulate-grad hook), so gradients still accumulate in fp32 across
  mini-batches, as autocast's do;
- the copy is not a submodule: nothing about it is saved, and the exported model is the fp32 master.

Used by training (TrainConfig.compute_copy) and, weights only, by graph_encoder.py for inference.
One process only: DDP reduces the masters' gradients through autograd hooks this bypasses.
"""

from __future__ import annotations

import copy
import logging
import weakref

log = logging.getLogger(__name__)

from .config import SWITCHES as MODES
_ATTR = "_medembed_compute"


def bf16_copy(source, attn_implementation: str | None = None):
    """A bf16 copy of transformers model `source` (same device, eval mode, no gradients)."""
    import torch
    from transformers import AutoModel

    config = copy.deepcopy(source.config)
    with torch.device("meta"):
        target = AutoModel.from_config(config)
    target = target.to_empty(device=next(source.parameters()).device).to(torch.bfloat16).eval()
    source_params = dict(source.named_parameters())
    target_params = dict(target.named_parameters())
    if set(source_params) != set(target_params):
        raise ValueError("bf16 copy does not have the source model's parameters")
    source_buffers = dict(source.named_buffers())
    with torch.no_grad():
        for name, param in target_params.items():
            param.copy_(source_params[name])
        for name, buffer in target.named_buffers():
            if name in source_buffers:
                buffer.copy_(source_buffers[name])
    target.requires_grad_(False)
    if attn_implementation:
        target.set_attn_implementation(attn_implementation)
    return target


def wanted(mode: str, device: str, world: int, lora_r: int, quantize_4bit: bool, packed: bool) -> bool:
    if mode not in MODES:
        raise ValueError(f"compute_copy must be one of {MODES}, got {mode!r}")
    if mode == "off":
        return False
    problems = [why for bad, why in ((world > 1, "several processes (DDP)"), (lora_r > 0, "LoRA"),
                                      (quantize_4bit, "4-bit weights"), (not packed, "padded forward"))
                if bad]
    if problems:
        if mode == "on":
            raise ValueError(f"compute_copy=on is not supported with {', '.join(problems)}")
        return False
    return mode == "on" or device.startswith("cuda")


class ComputeCopy:
    """The bf16 copy of `master` plus the bookkeeping that keeps the two in step."""

    def __init__(self, master, attn_implementation: str | None = None):
        import torch

        self.master = master
        self.model = bf16_copy(master, attn_implementation)
        names = dict(self.model.named_parameters())
        self.pairs = []
        for name, param in master.named_parameters():
            twin = names[name]
            if param.requires_grad:
                twin.requires_grad_(True)
                twin.register_post_accumulate_grad_hook(_GradToMaster(param))
            self.pairs.append((param, twin))
        self.buffers = list(zip(master.buffers(), self.model.buffers()))
        self.dirty = True
        self.refreshes = 0
        this = weakref.ref(self)

        def mark_dirty(optimizer, args, kwargs):
            target = this()
            if target is not None:
                target.dirty = True

        from torch.optim.optimizer import register_optimizer_step_post_hook

        self._hook = register_optimizer_step_post_hook(mark_dirty)

    def refresh(self) -> None:
        import torch

        with torch.no_grad():
            for param, twin in self.pairs:
                twin.copy_(param)
            for buffer, twin in self.buffers:
                twin.copy_(buffer)
        self.dirty = False
        self.refreshes += 1

    def train(self, mode: bool = True) -> None:
        self.model.train(mode)

    def run(self, packed: dict):
        if self.dirty:
            self.refresh()
        return self.model(**packed, return_dict=True).last_hidden_state[0]

    def close(self) -> None:
        self._hook.remove()


class _GradToMaster:
    """Post-accumulate-grad hook: move a bf16 gradient into the fp32 master's .grad (fp32 accumulation)."""

    def __init__(self, master):
        self.master = master

    def __call__(self, twin) -> None:
        grad = twin.grad
        if grad is None:
            return
        if self.master.grad is None:
            self.master.grad = grad.float()
        else:
            self.master.grad.add_(grad)
        twin.grad = None


def enable(model, compile_layers: bool = False) -> ComputeCopy:
    """Run the packed forward of SentenceTransformer `model` on a bf16 compute copy (packing.enable first)."""
    from . import packing

    if not packing.is_enabled(model):
        raise ValueError("the bf16 compute copy runs on the packed forward: call packing.enable first")
    transformer = model[0]
    existing = getattr(transformer, _ATTR, None)
    if existing is not None:
        return existing
    compute = ComputeCopy(transformer.auto_model, packing.ATTENTION_NAME)
    if compile_layers:
        packing._compile_layers(compute.model)
    object.__setattr__(transformer, _ATTR, compute)  # not a submodule: never saved, never optimised
    log.info("bf16 compute copy of the encoder: weights cast once per optimizer step, fp32 master weights")
    return compute


def disable(model) -> None:
    transformer = model[0]
    compute = transformer.__dict__.pop(_ATTR, None)
    if compute is not None:
        compute.close()
