"""LoRA option: adapters trained, merged into a plain exported model; clear errors where it cannot run."""

from __future__ import annotations

import dataclasses

import pytest

from conftest import make_rows, write_jsonl
from medembed.train import lora, recipe
from medembed.config import ConfigError, TrainConfig


def _config(model_dir, **changes) -> TrainConfig:
    base = TrainConfig(
        base_model=str(model_dir), matryoshka_dims=(64, 32), epochs=1, batch_size=8, learning_rate=1e-2,
        warmup_steps=0, eval_steps=0, max_seq_length=32, query_prompt="", passage_prompt="",
    )
    return dataclasses.replace(base, **changes)


def test_lora_trains_adapters_and_exports_a_merged_model(tmp_path, tiny_model_dir):
    import torch
    from safetensors.torch import load_file
    from sentence_transformers import SentenceTransformer

    train_dir = tmp_path / "train"
    train_dir.mkdir()
    write_jsonl(train_dir / "train.jsonl", [{"anchor": r["question"], "positive": r["answer"]} for r in make_rows()[:32]])
    out = tmp_path / "model"
    result = recipe.train(train_dir, out, _config(tiny_model_dir, lora_r=4, lora_alpha=8), tmp_path / "work")
    assert result.lora_r == 4 and result.steps == 4

    weights = {k: v for f in out.rglob("*.safetensors") for k, v in load_file(str(f)).items()}
    assert weights and not any("lora_" in k for k in weights), "the export must be a plain, merged model"
    base = {k: v for f in tiny_model_dir.rglob("*.safetensors") for k, v in load_file(str(f)).items()}
    changed = {k for k in base if k in weights and not torch.equal(base[k], weights[k])}
    # Only the adapted attention projections change; everything else stays frozen.
    assert changed and all(any(p in k for p in ("query", "key", "value")) for k in changed)
    assert SentenceTransformer(str(out), device="cpu").encode(["fever"]).shape == (1, 64)


def test_qlora_needs_cuda_and_adapters():
    with pytest.raises(ConfigError, match="lora_r > 0"):
        TrainConfig(quantize_4bit=True)
    with pytest.raises(lora.LoraUnavailable, match="CUDA"):
        lora.check_available(TrainConfig(lora_r=8, quantize_4bit=True), "cpu")


def test_lora_without_peft_says_what_is_missing(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_peft(name, *args, **kwargs):
        if name == "peft":
            raise ImportError("no peft")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_peft)
    with pytest.raises(lora.LoraUnavailable, match="peft"):
        lora.check_available(TrainConfig(lora_r=8), "cpu")
