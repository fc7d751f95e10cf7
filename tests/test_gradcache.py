"""gradcache.py (GradCache without host syncs, one kept graph) and mixed.py (bf16 compute copy with fp32
master weights) on the tiny model, CPU: same losses and gradients as sentence-transformers' own
CachedMultipleNegativesRankingLoss and as fp32 training."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from conftest import make_rows
from medembed import artifacts, mixed, packing
from medembed.train import gradcache
from medembed.train import losses, recipe
from medembed.config import TrainConfig


@pytest.fixture
def model(tiny_model_dir):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(tiny_model_dir), device="cpu")
    model.eval()  # no dropout: every path sees identical embeddings
    return model


def _features(model, with_lengths: bool):
    rows = make_rows()[:12]
    features = [model.tokenize([r["question"] for r in rows]), model.tokenize([r["answer"] for r in rows])]
    if with_lengths:
        for f in features:
            f[packing.LENGTHS_KEY] = f["attention_mask"].sum(dim=1).numpy()
    return features, torch.zeros(len(rows))


def _loss_and_grads(model, loss_fn, features, labels):
    model.zero_grad()
    value = loss_fn([dict(f) for f in features], labels)
    value.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return float(value), grads


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("keep,tokens", [(True, 0), (False, 0), (True, 40)])
def test_fast_cached_loss_matches_sentence_transformers(model, packed, keep, tokens):
    from sentence_transformers.sentence_transformer.losses import CachedMultipleNegativesRankingLoss, MatryoshkaLoss

    reference_fn = MatryoshkaLoss(model, CachedMultipleNegativesRankingLoss(model, mini_batch_size=5,
                                  mini_batch_num_tokens=tokens or None), [64, 32])
    features, labels = _features(model, with_lengths=False)
    ref_value, ref_grads = _loss_and_grads(model, reference_fn, features, labels)
    if packed:
        packing.enable(model)
    fast = losses.build_loss(model, TrainConfig(loss="cached_mnrl", mini_batch_size=5, mini_batch_tokens=tokens,
                                                gradcache_keep_graph=keep, matryoshka_dims=(64, 32)))
    features, labels = _features(model, with_lengths=True)
    value, grads = _loss_and_grads(model, fast, features, labels)
    assert value == pytest.approx(ref_value, rel=1e-5)
    assert grads.keys() == ref_grads.keys()
    for name, grad in grads.items():
        assert torch.allclose(grad, ref_grads[name], atol=1e-5, rtol=1e-4), name


def test_minibatch_ranges_and_slices_follow_cpu_lengths(model):
    lengths = np.array([9, 7, 7, 5, 2, 2])
    assert gradcache.minibatch_ranges(lengths, 6, 4, None) == [(0, 4), (4, 6)]
    assert gradcache.minibatch_ranges(lengths, 6, 4, 16) == [(0, 2), (2, 6)]
    assert gradcache.minibatch_ranges(lengths, 6, 4, 3) == [(i, i + 1) for i in range(6)]  # one text over budget
    features, _ = _features(model, with_lengths=True)
    sliced = gradcache.slice_features(features[1], 3, 6)
    width = int(features[1][packing.LENGTHS_KEY][3:6].max())
    assert sliced["input_ids"].shape == (3, width) and list(sliced[packing.LENGTHS_KEY]) == list(features[1][packing.LENGTHS_KEY][3:6])


def test_lengths_collator_adds_cpu_lengths_for_right_padding():
    batch = {"anchor_input_ids": torch.ones(2, 3), "anchor_attention_mask": torch.tensor([[1, 1, 0], [1, 1, 1]])}
    out = gradcache.LengthsCollator(lambda rows: dict(batch))([])
    assert list(out["anchor_" + packing.LENGTHS_KEY]) == [2, 3]
    left = {"anchor_attention_mask": torch.tensor([[0, 1, 1], [1, 1, 1]])}
    assert "anchor_" + packing.LENGTHS_KEY not in gradcache.LengthsCollator(lambda rows: dict(left))([])


def test_packed_forward_with_cpu_lengths_never_calls_nonzero(model, monkeypatch):
    packing.enable(model)
    features, _ = _features(model, with_lengths=True)
    reference = model(dict(features[1], **{packing.LENGTHS_KEY: None}))["sentence_embedding"]
    monkeypatch.setattr(packing, "pack", lambda *a, **k: pytest.fail("pack (GPU nonzero) used"))
    ours = model(dict(features[1]))["sentence_embedding"]
    assert torch.allclose(ours, reference, atol=1e-6)


def test_compute_copy_gradients_accumulate_in_fp32_masters(model):
    """bf16 compute copy: gradients land in the fp32 masters (accumulating over backward passes), close
    to fp32's; the copy is refreshed once after an optimizer step, and disable() drops it."""
    packing.enable(model)
    features, _ = _features(model, with_lengths=True)

    def backward_twice():
        model.zero_grad()
        for f in features:
            model(dict(f))["sentence_embedding"].float().pow(2).sum().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    reference = backward_twice()
    compute = mixed.enable(model)
    grads = backward_twice()
    assert compute.refreshes == 1 and grads.keys() == reference.keys()
    for name, grad in grads.items():
        assert grad.dtype == torch.float32
        if name.endswith("key.bias"):
            continue  # mathematically zero (softmax ignores it): both are rounding noise
        cos = torch.nn.functional.cosine_similarity(grad.flatten(), reference[name].flatten(), dim=0)
        assert cos > 0.98, (name, float(cos))
    assert all(p.grad is None for p in compute.model.parameters())  # moved into the masters
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    optimizer.step()
    assert compute.dirty
    first = next(model[0].auto_model.parameters())
    model(dict(features[0]))
    assert compute.refreshes == 2 and torch.allclose(next(compute.model.parameters()).float(), first, rtol=1e-2, atol=1e-2)
    packing.disable(model)
    assert not hasattr(model[0], "_medembed_compute")


def test_training_with_compute_copy_and_fast_gradcache(tmp_path, tiny_model_dir):
    """The whole training stage on the packed path with both options on (CPU): trains, exports a plain
    fp32 model, and never computes a packing layout on the device."""
    import json

    from sentence_transformers import SentenceTransformer

    from test_training import _config, _train_dir

    calls = []
    original = packing.pack
    packing.pack = lambda *a, **k: calls.append(1) or original(*a, **k)
    try:
        config = dataclasses.replace(_config(tiny_model_dir, loss="cached_mnrl", packed_attention="on",
                                             compute_copy="on", mini_batch_tokens=60))
        result = recipe.train(_train_dir(tmp_path), tmp_path / "model", config, tmp_path / "work")
    finally:
        packing.pack = original
    assert result.packed_attention and np.isfinite(result.train_loss) and result.steps == 10
    assert not calls
    exported = SentenceTransformer(str(tmp_path / "model"), device="cpu")
    assert next(exported.parameters()).dtype == torch.float32
    assert "medembed" not in (tmp_path / "model" / "config.json").read_text()
    assert json.loads((tmp_path / "model" / artifacts.TRAINING_INFO).read_text())["loss"] == "cached_mnrl"


def test_plain_mnrl_on_the_packed_path_uses_cpu_lengths(tmp_path, tiny_model_dir):
    """The lengths collator is installed for any loss on the packed path: plain MNRL (the cluster profile's
    default loss) embeds whole columns from them too."""
    from test_training import _config, _train_dir

    calls = []
    original = packing.pack
    packing.pack = lambda *a, **k: calls.append(1) or original(*a, **k)
    try:
        config = _config(tiny_model_dir, loss="mnrl", packed_attention="on", compute_copy="on", epochs=1)
        result = recipe.train(_train_dir(tmp_path), tmp_path / "model", config, tmp_path / "work")
    finally:
        packing.pack = original
    assert result.packed_attention and np.isfinite(result.train_loss) and not calls
