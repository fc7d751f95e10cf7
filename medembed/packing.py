"""Padding-free ("packed") transformer forward for sentence-transformers models on a GPU.

Why hand-written: sentence-transformers 6.2 only skips padding when the model runs a flash-attention
package (flash-attn / hub kernels), and neither is installable here or on the GPU image (no hub, no
flash-attn wheel for this torch). torch itself ships variable-length flash attention
(`torch.nn.attention.varlen.varlen_attn`, with backward), and transformers lets a model use any
registered attention function. This module joins the two:

- the Transformer module's forward drops the padding of its (batch, length) inputs and runs the
  encoder on one row of all real tokens, with position ids restarting per text and the text
  boundaries (`cu_seq_lens`) handed to every attention layer;
- the registered attention function attends within each text only;
- the output is scattered back to (batch, length, hidden), so Pooling and everything after it, and the
  saved model, are exactly those of the padded model.

Optionally every encoder layer is compiled (`torch.compile`, dynamic shapes: one graph serves all
layers and all packed lengths), which fuses the memory-bound GELU/LayerNorm/dropout work (docs/STACK-NOTES.md §3).

Numerically the packed model computes the same function as the padded one (tests/test_packing.py),
with one exception in training mode: varlen attention has no dropout on attention probabilities, so
`attention_probs_dropout_prob` is not applied (hidden-state dropout is). A warning says so.
"""

from __future__ import annotations

import logging
import types

log = logging.getLogger(__name__)

ATTENTION_NAME = "medembed_packed"
MODES = ("auto", "on", "off")
MAX_LENGTH_BUCKET = 128  # flash attention's block length: larger bounds only add blocks that exit at once
_ORIGINAL_FORWARD = "_medembed_padded_forward"
_PREPACKED = "medembed_prepacked"
LENGTHS_KEY = "medembed_lengths"  # per-text token counts on the CPU (gradcache.LengthsCollator)
_registered = False


def varlen_available() -> bool:
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    except ImportError:
        return False
    return True


def supported(model) -> str | None:
    """None if `model` can run packed, else the reason it cannot."""
    transformer = model[0]
    auto_model = getattr(transformer, "auto_model", None)
    if auto_model is None:
        return f"first module {type(transformer).__name__} has no transformers model"
    if not getattr(type(auto_model), "_supports_attention_backend", False):
        return f"{type(auto_model).__name__} does not use transformers' attention interface"
    if getattr(auto_model.config, "is_decoder", False):
        return "decoder models are not packed"
    return None


def wanted(mode: str, device: str) -> bool:
    """Whether to pack under `mode` on `device`: "auto" packs on CUDA when torch has varlen attention."""
    if mode not in MODES:
        raise ValueError(f"packed_attention must be one of {MODES}, got {mode!r}")
    if mode == "off":
        return False
    if mode == "on":
        return True
    return device.startswith("cuda") and varlen_available()


def apply(model, mode: str, compile_mode: str, device: str, where: str, compile_allowed: bool = True) -> bool:
    """Pack `model` in place if `mode` wants it on `device` and the model allows it; returns whether it
    runs packed. A model that cannot be packed stays padded, unless `mode` is "on" (then ValueError).
    `where` names the caller's setting in messages (e.g. "train.packed_attention")."""
    if is_enabled(model):
        return True
    if not wanted(mode, device):
        return False
    reason = supported(model)
    if reason is not None:
        if mode == "on":
            raise ValueError(f"{where}=on but {reason}")
        log.info("%s: running padded, %s", where, reason)
        return False
    enable(model, compile_layers=compile_allowed and wanted(compile_mode, device))
    return True


def enable(model, compile_layers: bool = False):
    """Switch `model` (a SentenceTransformer) to the packed forward in place; returns it.

    Idempotent. `disable` restores the padded forward (the saved model never depends on this)."""
    reason = supported(model)
    if reason:
        raise ValueError(f"packed attention is not available for this model: {reason}")
    _register()
    transformer = model[0]
    auto_model = transformer.auto_model
    if not hasattr(transformer, _ORIGINAL_FORWARD):
        setattr(transformer, _ORIGINAL_FORWARD, transformer.forward)
        setattr(transformer, "_medembed_previous_attention", auto_model.config._attn_implementation)
        transformer._medembed_position_offset = position_offset(auto_model)
        transformer.forward = types.MethodType(_packed_forward, transformer)
        auto_model.set_attn_implementation(ATTENTION_NAME)
        dropout = getattr(auto_model.config, "attention_probs_dropout_prob", 0.0) or 0.0
        if dropout:
            log.warning(
                "packed attention: attention-probability dropout (%.2f) is not applied in training "
                "(torch varlen attention has none); hidden dropout still is", dropout,
            )
    if compile_layers:
        _compile_layers(auto_model)
    return model


def disable(model):
    transformer = model[0]
    original = transformer.__dict__.pop(_ORIGINAL_FORWARD, None)
    if original is None:
        return model
    del transformer.forward  # the instance attribute; the class's padded forward shows again
    compute = transformer.__dict__.pop("_medembed_compute", None)  # mixed.py's bf16 compute copy
    if compute is not None:
        compute.close()
    transformer.auto_model.set_attn_implementation(transformer.__dict__.pop("_medembed_previous_attention") or "sdpa")
    return model


def is_enabled(model) -> bool:
    return hasattr(model[0], _ORIGINAL_FORWARD)


def position_offset(auto_model) -> int:
    """RoBERTa-family embeddings (XLM-R, e5) number positions from padding_idx + 1, BERT from 0."""
    import torch

    for module in auto_model.modules():
        padding_idx = getattr(module, "padding_idx", None)
        if isinstance(padding_idx, int) and isinstance(getattr(module, "position_embeddings", None), torch.nn.Embedding):
            return padding_idx + 1
    return 0


def pack(features: dict, offset: int):
    """Padded (batch, length) tokenizer output -> one row of real tokens plus what attention needs.

    Works for either padding side: a token's position is its rank among the real tokens of its row."""
    import torch

    mask = features["attention_mask"].bool()
    index = mask.reshape(-1).nonzero().squeeze(1)  # the one host sync: its size is the token count
    lengths = mask.sum(dim=1, dtype=torch.int32)
    cu_seq_lens = torch.nn.functional.pad(lengths.cumsum(0, dtype=torch.int32), (1, 0))
    # varlen attention needs only an upper bound of the longest text. The padded width is one without
    # a second host sync; rounded up to the kernel's block size it takes few distinct values, and each
    # new value of this int recompiles the compiled layers.
    max_length = -(-mask.shape[1] // MAX_LENGTH_BUCKET) * MAX_LENGTH_BUCKET
    positions = (mask.cumsum(dim=1) - 1).reshape(-1)[index] + offset
    packed = {
        "input_ids": features["input_ids"].reshape(-1)[index].unsqueeze(0),
        "position_ids": positions.unsqueeze(0),
        "cu_seq_lens_q": cu_seq_lens,
        "cu_seq_lens_k": cu_seq_lens,
        "max_length_q": max_length,
        "max_length_k": max_length,
    }
    if features.get("token_type_ids") is not None:
        packed["token_type_ids"] = features["token_type_ids"].reshape(-1)[index].unsqueeze(0)
    return packed, index


def pack_lengths(features: dict, lengths, offset: int):
    """`pack` for right-padded texts whose lengths are known on the CPU (numpy): positions, boundaries
    and the token index computed there, so the forward never waits for the GPU. The ids themselves are
    gathered on the device by the caller."""
    import numpy as np
    import torch

    lengths = np.asarray(lengths, dtype=np.int64)
    width = features["attention_mask"].shape[1]
    starts = np.zeros(len(lengths), dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    total = int(lengths.sum())
    within = np.arange(total, dtype=np.int64) - np.repeat(starts, lengths)
    index = np.repeat(np.arange(len(lengths), dtype=np.int64) * width, lengths) + within
    cu_seq_lens = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=cu_seq_lens[1:])
    max_length = -(-width // MAX_LENGTH_BUCKET) * MAX_LENGTH_BUCKET
    packed = {
        "position_ids": torch.from_numpy(within + offset).unsqueeze(0),
        "cu_seq_lens_q": torch.from_numpy(cu_seq_lens),
        "cu_seq_lens_k": torch.from_numpy(cu_seq_lens),
        "max_length_q": max_length,
        "max_length_k": max_length,
    }
    return packed, torch.from_numpy(index)


def _to_device(value, device, pin: bool):
    if not hasattr(value, "to"):
        return value
    if pin and value.device.type == "cpu":
        value = value.pin_memory()
    return value.to(device, non_blocking=True)


def prepack(model, features: dict) -> dict:
    """Add the packed layout to CPU tokenizer features (for a packed `model`), so a DataLoader worker
    computes it instead of the forward, whose `nonzero` on the GPU would stall it once per batch.
    Only for whole batches: GradCache slices features by rows, which would invalidate it."""
    if is_enabled(model) and "attention_mask" in features:
        packed, index = pack(features, model[0]._medembed_position_offset)
        features[_PREPACKED] = (packed, index)
    return features


def _packed_forward(self, features: dict, **kwargs) -> dict:
    """Replacement for sentence-transformers' Transformer.forward (bound to the module instance)."""
    padded_forward = getattr(self, _ORIGINAL_FORWARD)
    prepacked = features.pop(_PREPACKED, None)
    lengths = features.pop(LENGTHS_KEY, None)
    if features.get("modality", "text") != "text" or "attention_mask" not in features or kwargs:
        return padded_forward(features, **kwargs)
    mask = features["attention_mask"]
    batch, length = mask.shape
    if prepacked is None and lengths is not None and len(lengths) == batch:
        # Right-padded texts of known lengths (gradcache.LengthsCollator): the layout from the CPU, no sync.
        prepacked = pack_lengths(features, lengths, self._medembed_position_offset)
    if prepacked is not None:
        packed, index = prepacked
        pin = mask.device.type == "cuda"
        packed = {k: _to_device(v, mask.device, pin) for k, v in packed.items()}
        index = _to_device(index, mask.device, pin)
        if "input_ids" not in packed:  # pack_lengths gathers the ids on the device
            flat = features["input_ids"].reshape(-1)
            packed["input_ids"] = flat.index_select(0, index).unsqueeze(0)
            if features.get("token_type_ids") is not None:
                packed["token_type_ids"] = features["token_type_ids"].reshape(-1).index_select(0, index).unsqueeze(0)
    else:
        packed, index = pack(features, self._medembed_position_offset)
    encoder = getattr(self, "_medembed_compute", None)
    if encoder is not None:  # bf16 compute copy (mixed.py): autocast would cast LayerNorm back to fp32
        import torch

        encoder.train(self.training)
        with torch.autocast(mask.device.type, enabled=False):
            # fp32 out, as under autocast (whose last LayerNorm returns fp32): pooling, normalisation and
            # the contrastive loss keep their fp32 precision.
            hidden = encoder.run(packed).float()
    else:
        hidden = self.auto_model(**packed, return_dict=True).last_hidden_state[0]
    # index_copy is differentiable: gradients flow back to the real tokens only.
    token_embeddings = hidden.new_zeros(batch * length, hidden.shape[-1]).index_copy(0, index, hidden)
    features[self.module_output_name] = token_embeddings.view(batch, length, -1)
    return features


def packed_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                     cu_seq_lens_q=None, cu_seq_lens_k=None, max_length_q=None, max_length_k=None, **kwargs):
    """transformers attention function: (1, heads, tokens, head_dim) packed q/k/v -> (1, tokens, heads,
    head_dim), each token attending only within its own text (bounded by `cu_seq_lens`)."""
    import torch

    if cu_seq_lens_q is None:
        raise ValueError(
            f"{ATTENTION_NAME} attention needs cu_seq_lens (the packed forward supplies them); "
            "call packing.disable(model) to run padded inputs"
        )
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # (tokens, heads, head_dim)
    if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
        from torch.nn.attention.varlen import varlen_attn

        default_scale = q.shape[-1] ** -0.5
        if scaling is None or abs(scaling - default_scale) < 1e-12:
            out = varlen_attn(q, k, v, cu_seq_lens_q, cu_seq_lens_k, max_length_q, max_length_k)
        else:
            out = varlen_attn(q, k, v, cu_seq_lens_q, cu_seq_lens_k, max_length_q, max_length_k, scale=scaling)
    elif _compiling():
        out = _attention_masked(q, k, v, cu_seq_lens_q, scaling)
    else:
        out = _attention_per_text(q, k, v, cu_seq_lens_q, scaling)
    return out.unsqueeze(0), None


def _compiling() -> bool:
    import torch

    return bool(getattr(torch.compiler, "is_compiling", lambda: False)())


def _attention_masked(q, k, v, cu_seq_lens, scaling):
    """Traceable reference (CPU under torch.compile): one SDPA over all tokens with a block-diagonal
    mask built from cu_seq_lens, so no host sync breaks the graph. O(tokens^2) memory: tests only."""
    import torch

    positions = torch.arange(q.shape[0], device=q.device, dtype=cu_seq_lens.dtype)
    doc = torch.searchsorted(cu_seq_lens, positions, right=True)
    mask = doc.unsqueeze(0) == doc.unsqueeze(1)
    out = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), attn_mask=mask, scale=scaling)
    return out.transpose(0, 1)


def _attention_per_text(q, k, v, cu_seq_lens, scaling):
    """Reference path (CPU, fp32): plain SDPA on each text. Slow, exact; used by the tests and as the
    fallback where flash varlen kernels do not run."""
    import torch

    bounds = cu_seq_lens.tolist()
    outs = []
    for start, end in zip(bounds[:-1], bounds[1:]):
        qs, ks, vs = (t[start:end].transpose(0, 1) for t in (q, k, v))  # (heads, len, head_dim)
        outs.append(torch.nn.functional.scaled_dot_product_attention(qs, ks, vs, scale=scaling).transpose(0, 1))
    return torch.cat(outs, dim=0)


def _register() -> None:
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface

    # No mask function is registered on purpose: transformers then builds no mask tensor for this
    # implementation, and text boundaries travel as cu_seq_lens instead.
    AttentionInterface.register(ATTENTION_NAME, packed_attention)
    _registered = True


def _compile_layers(auto_model) -> None:
    """Compile each encoder layer's forward once (dynamic shapes): dynamo inlines nn.Modules with their
    parameters as inputs, so all layers share one graph and packed lengths do not recompile."""
    import torch

    layers = _encoder_layers(auto_model)
    if layers is None:
        log.warning("packed attention: no encoder layer list found, layers not compiled")
        return
    # Each grad mode (GradCache's no-grad pass, the grad pass, evaluation) is its own graph; the default
    # limit of 8 must not push layers back to eager.
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, max(getattr(torch._dynamo.config, name), 64))
    for layer in layers:
        if not getattr(layer, "_medembed_compiled", False):
            layer.compile(dynamic=True)
            layer._medembed_compiled = True
    log.info("compiled %d encoder layers (torch.compile, dynamic shapes)", len(layers))


def _encoder_layers(auto_model):
    encoder = getattr(auto_model, "encoder", None)
    layers = getattr(encoder, "layer", None) if encoder is not None else None
    return layers if layers is not None and len(layers) else None
