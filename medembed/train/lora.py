"""LoRA / QLoRA fine-tuning through peft, exported with the adapters merged in (a plain model to serve).

LoRA trains small rank-`lora_r` adapters on the attention projections and freezes the rest: far less
optimizer memory on large models. QLoRA (`quantize_4bit`) also stores the frozen base in 4-bit via
bitsandbytes, which needs CUDA. Version notes (docs/STACK-NOTES.md §5): peft 0.21.2 works with transformers 5.23.0.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..config import TrainConfig

log = logging.getLogger(__name__)


class LoraUnavailable(RuntimeError):
    """The requested LoRA/QLoRA option cannot run with the installed packages or hardware."""


def check_available(config: TrainConfig, device: str) -> None:
    """Fail before any work when the option cannot run, saying what is missing."""
    if config.lora_r <= 0:
        return
    try:
        import peft  # noqa: F401
    except ImportError:
        raise LoraUnavailable("lora_r > 0 needs the peft package (pin peft==0.21.2 with transformers 5.23.0)") from None
    if config.quantize_4bit:
        if not device.startswith("cuda"):
            raise LoraUnavailable("quantize_4bit (QLoRA) needs a CUDA GPU; use lora_r alone on CPU")
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise LoraUnavailable("quantize_4bit (QLoRA) needs the bitsandbytes package on a CUDA machine") from None


def apply(model, config: TrainConfig) -> None:
    """Wrap the transformer of a SentenceTransformer with LoRA adapters (in place)."""
    if config.lora_r <= 0:
        return
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    module = model[0]
    inner = module.auto_model
    if config.quantize_4bit:
        inner = _reload_4bit(inner)
        inner = prepare_model_for_kbit_training(inner)
    lora_config = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        # Attention projections of BERT / XLM-R (the shapes this product trains).
        target_modules=["query", "key", "value"],
        bias="none",
    )
    # `auto_model` is a read-only view of the module's `model` attribute in sentence-transformers 6.
    module.model = get_peft_model(inner, lora_config)
    trainable, total = module.model.get_nb_trainable_parameters()
    log.info("LoRA r=%d: %d of %d parameters trainable (%.2f%%)", config.lora_r, trainable, total, 100 * trainable / total)


def _reload_4bit(inner):
    import torch
    from transformers import AutoModel, BitsAndBytesConfig

    # A freshly loaded 4-bit model: one that has already run a forward pass loses its backward (docs/STACK-NOTES.md §5).
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
    return AutoModel.from_pretrained(inner.config._name_or_path, quantization_config=quant, device_map={"": inner.device})


def export(model, config: TrainConfig, output_dir: Path) -> None:
    """Save the model; with LoRA, merge the adapters first so the export is a plain model."""
    if config.lora_r > 0:
        module = model[0]
        if config.quantize_4bit:
            module.model = _merge_into_full_precision(module.model)
        else:
            module.model = module.model.merge_and_unload()
    model.save(str(output_dir))


def _merge_into_full_precision(peft_model):
    """Merging into 4-bit weights would round them: reload the base in full precision, then merge."""
    import tempfile

    from peft import PeftModel
    from transformers import AutoModel

    with tempfile.TemporaryDirectory() as adapter_dir:
        peft_model.save_pretrained(adapter_dir)
        base = AutoModel.from_pretrained(peft_model.peft_config["default"].base_model_name_or_path)
        merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    return merged.to(peft_model.device if hasattr(peft_model, "device") else "cpu")
