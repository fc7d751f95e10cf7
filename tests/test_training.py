"""Training stage behaviour on the tiny random model (CPU, seconds): losses, length sorting, evaluation
during training with the best checkpoint kept, curves, object-store checkpoints and resume."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from conftest import make_rows, write_jsonl
from faultkit import case, observe
from medembed import artifacts
from medembed.train import checkpoints, curves, losses, recipe
from medembed.config import ConfigError, TrainConfig


def _train_dir(tmp_path: Path) -> Path:
    rows = make_rows()
    train_dir = tmp_path / "train"
    train_dir.mkdir()
    write_jsonl(train_dir / "train.jsonl", [{"anchor": r["question"], "positive": r["answer"]} for r in rows[:40]])
    write_jsonl(train_dir / "dev.jsonl", [{"anchor": r["question"], "positive": r["answer"]} for r in rows[40:]])
    return train_dir


def _config(model_dir: Path, **changes) -> TrainConfig:
    base = TrainConfig(
        base_model=str(model_dir), matryoshka_dims=(64, 32), epochs=2, batch_size=8, learning_rate=1e-3,
        warmup_steps=0, eval_steps=0, max_seq_length=32, query_prompt="", passage_prompt="", mini_batch_size=3,
    )
    return dataclasses.replace(base, **changes)


def test_cached_loss_with_sorted_batches_trains_and_exports(tmp_path, tiny_model_dir):
    from sentence_transformers import SentenceTransformer

    out = tmp_path / "model"
    result = recipe.train(_train_dir(tmp_path), out, _config(tiny_model_dir, loss="cached_mnrl"), tmp_path / "work")
    info = json.loads((out / artifacts.TRAINING_INFO).read_text())
    assert info["steps"] == result.steps == 10  # 40 pairs / 8 per batch x 2 epochs
    assert info["loss"] == "cached_mnrl" and info["bf16"] is False
    assert SentenceTransformer(str(out), device="cpu").encode(["fever"]).shape == (1, 64)


def test_length_sorted_collator_keeps_pairs_together():
    seen = []
    collator = losses.LengthSortedCollator(lambda rows: seen.extend(rows) or "batch")
    rows = [{"anchor": "q1", "positive": "a"}, {"anchor": "q2", "positive": "aaa"}, {"anchor": "q3", "positive": "aa"}]
    assert collator(rows) == "batch"
    assert [r["anchor"] for r in seen] == ["q2", "q3", "q1"]


def test_cached_loss_equals_plain_loss(tiny_model_dir):
    """GradCache splits the batch into mini-batches but must compute the same loss value."""
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(tiny_model_dir), device="cpu")
    model.eval()  # no dropout, so both losses see identical embeddings
    rows = make_rows()[:12]
    features = [model.tokenize([r["question"] for r in rows]), model.tokenize([r["answer"] for r in rows])]
    labels = torch.zeros(len(rows))
    values = {}
    for name, tokens in (("mnrl", 0), ("cached_mnrl", 0), ("cached_mnrl", 40)):
        loss = losses.build_loss(model, TrainConfig(loss=name, mini_batch_size=5, mini_batch_tokens=tokens, matryoshka_dims=(64, 32)))
        values[name, tokens] = float(loss(features, labels))
    assert values["mnrl", 0] == pytest.approx(values["cached_mnrl", 0], rel=1e-4)
    assert values["mnrl", 0] == pytest.approx(values["cached_mnrl", 40], rel=1e-4)  # mini-batches by tokens


def test_invalid_options_are_rejected(tiny_model_dir):
    with pytest.raises(ConfigError, match="choose one of mnrl"):
        TrainConfig(loss="triplet", matryoshka_dims=(64,))
    with pytest.raises(ConfigError, match="eval_dims"):
        TrainConfig(matryoshka_dims=(64, 32), eval_dims=(16,))
    with pytest.raises(ValueError, match="exceeds the embedding size 64"):
        recipe.check_dims(TrainConfig(matryoshka_dims=(128, 64)), 64)


def test_evaluation_during_training_keeps_best_and_writes_curves(tmp_path, tiny_model_dir):
    from sentence_transformers import SentenceTransformer

    from medembed.artifacts import read_jsonl

    out, curves_dir = tmp_path / "model", tmp_path / "curves"
    # A learning rate high enough that the dev score peaks early: the best checkpoint is not the last one.
    config = _config(tiny_model_dir, eval_steps=2, eval_dims=(64, 32), best_metric="dim32_ndcg@10", learning_rate=2e-2)
    train_dir = _train_dir(tmp_path)
    result = recipe.train(train_dir, out, config, tmp_path / "work", curves_dir=curves_dir)
    data = json.loads((curves_dir / curves.CURVES_JSON).read_text())
    assert set(data["eval"]) == {"dim64_ndcg@10", "dim32_ndcg@10", "mean_ndcg@10"}
    scores = data["eval"]["dim32_ndcg@10"]
    assert [step for step, _ in scores] == [2, 4, 6, 8, 10]
    assert data["loss"]
    best_step, best_value = max(scores, key=lambda sv: sv[1])
    assert result.best_metric == pytest.approx(best_value)
    assert result.best_checkpoint_step == best_step
    last_step, last_value = scores[-1]
    assert best_step < last_step and abs(best_value - last_value) > 1e-3, "the test needs a best checkpoint that is not the last"
    # The exported model is the best checkpoint's: scored again on the dev pairs it gets the best score, not the last.
    evaluator = curves.RetrievalEvaluator(read_jsonl(train_dir / "dev.jsonl"), [64, 32], name="dev")
    exported = evaluator(SentenceTransformer(str(out), device="cpu"))["dev_dim32_ndcg@10"]
    assert exported == pytest.approx(best_value, abs=1e-4)
    assert (curves_dir / curves.CURVES_HTML).read_text().startswith("<html>")


def test_retrieval_evaluator_scores_a_perfect_model(monkeypatch):
    """An identity 'model' that embeds each text as its one-hot row ranks every positive first."""
    import torch

    from medembed import encoding

    rows = [{"anchor": f"q{i}", "positive": f"p{i}"} for i in range(4)]
    evaluator = curves.RetrievalEvaluator(rows, [4, 2])
    seen_kinds = []

    def one_hot(model, texts, kind, batch_size, **options):
        seen_kinds.append(kind)
        return torch.eye(4)[[int(t[1:]) for t in texts]]

    monkeypatch.setattr(encoding, "encode", one_hot)
    metrics = evaluator(object())
    assert metrics["dev_dim4_ndcg@10"] == pytest.approx(1.0)
    assert metrics["dev_dim2_ndcg@10"] < 1.0  # two dims cannot separate four one-hot texts
    assert seen_kinds == ["query", "document"]


class _PreemptAt:
    """Raises inside training after `step` steps, as a pre-empted pod would die."""

    def __init__(self, step: int):
        self.step = step

    def __call__(self):
        from transformers import TrainerCallback

        stop_step = self.step

        class Preempt(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step == stop_step:
                    raise KeyboardInterrupt("pre-empted")

        return Preempt()


class _StepsRun:
    """Records the step number of every optimizer step that actually runs in this attempt."""

    def __init__(self):
        from transformers import TrainerCallback

        ran = self.ran = []

        class Record(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                ran.append(state.global_step)

        self.callback = Record()


def _weights(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(Path(model_dir) / "model.safetensors"))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_model_dir) -> dict:
    """The weights of the tests' training run done in one go (no checkpoints, no interruption)."""
    root = tmp_path_factory.mktemp("uninterrupted")
    recipe.train(_train_dir(root), root / "model", _config(tiny_model_dir), root / "work")
    return _weights(root / "model")


@case(fault="training interrupted at step 7 (checkpoints every 3 steps to a {id} store), retried in a fresh work folder",
      promise="the retry resumes from checkpoint 6, runs only steps 7-10 and ends with the weights of an uninterrupted run")
@pytest.mark.parametrize("store", ["local", "s3"])
def test_killed_training_resumes_from_last_checkpoint(tmp_path, tiny_model_dir, store, request, uninterrupted):
    if store == "s3":
        request.getfixturevalue("s3_endpoint")
        uri = "s3://checkpoints/run-1"
    else:
        uri = str(tmp_path / "store")
    train_dir = _train_dir(tmp_path)
    config = _config(tiny_model_dir, checkpoint_uri=uri, checkpoint_steps=3, checkpoint_keep=2)

    with pytest.raises(KeyboardInterrupt, match="pre-empted"):
        recipe.train(train_dir, tmp_path / "m1", config, tmp_path / "w1", callbacks=[_PreemptAt(7)()])
    assert checkpoints.CheckpointStore(uri).steps() == [6, 3]
    assert not (tmp_path / "m1" / artifacts.TRAINING_INFO).exists()

    # The retry runs in a fresh pod: new work dir, nothing local survives.
    steps = _StepsRun()
    resumed = recipe.train(train_dir, tmp_path / "m2", config, tmp_path / "w2", callbacks=[steps.callback])
    # What ran proves the resume (the reported step alone would not): only the remaining steps ...
    assert steps.ran == [7, 8, 9, 10]
    assert resumed.resumed_from_step == 6 and resumed.steps == 10
    # ... and they continued the interrupted optimisation exactly (weights, optimizer and scheduler state, data order).
    final = _weights(tmp_path / "m2")
    difference = max(float((final[name] - uninterrupted[name]).abs().max()) for name in uninterrupted)
    assert difference < 1e-6
    assert json.loads((tmp_path / "m2" / artifacts.TRAINING_INFO).read_text())["steps"] == 10
    # The trainer also saves at the last step; older checkpoints are pruned to checkpoint_keep.
    assert checkpoints.CheckpointStore(uri).steps() == [10, 9]
    observe(f"the retry ran steps {steps.ran}; largest weight difference to an uninterrupted run {difference:.1e}")


@case(fault="the newest checkpoint truncated after its marker was written, the one before it without a marker",
      promise="both skipped; training resumes from the newest intact checkpoint")
def test_corrupt_or_partial_checkpoints_are_skipped(tmp_path, tiny_model_dir):
    uri = tmp_path / "store"
    train_dir = _train_dir(tmp_path)
    config = _config(tiny_model_dir, checkpoint_uri=str(uri), checkpoint_steps=2, checkpoint_keep=5)
    with pytest.raises(KeyboardInterrupt, match="pre-empted"):
        recipe.train(train_dir, tmp_path / "m1", config, tmp_path / "w1", callbacks=[_PreemptAt(7)()])
    assert checkpoints.CheckpointStore(str(uri)).steps() == [6, 4, 2]
    # Step 6: a file truncated after its marker was written; step 4 never got its marker (partial upload).
    weights = next((uri / checkpoints.checkpoint_name(6)).rglob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])
    (uri / checkpoints.checkpoint_name(4) / checkpoints.MARKER).unlink()

    steps = _StepsRun()
    resumed = recipe.train(train_dir, tmp_path / "m2", config, tmp_path / "w2", callbacks=[steps.callback])
    assert resumed.resumed_from_step == 2 and steps.ran == list(range(3, 11))
    assert resumed.steps == 10
    observe(f"steps 6 (truncated) and 4 (no marker) skipped; resumed from step 2, ran steps {steps.ran[0]}-{steps.ran[-1]}")


def test_hard_negative_columns_get_the_passage_prompt():
    from medembed.train.losses import column_prompts

    prompts = column_prompts(["anchor", "positive", "negative_1", "negative_2"], "query: ", "passage: ")
    assert prompts == {"anchor": "query: ", "positive": "passage: ", "negative_1": "passage: ", "negative_2": "passage: "}
    assert column_prompts(["anchor", "positive"], "", "") is None


def test_packed_training_matches_padded_and_exports_a_plain_model(tmp_path, tiny_model_dir):
    """Without dropout (the one deliberate difference) packed and padded training are the same
    optimisation: same losses, same final weights. The export carries no trace of packing."""
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(tiny_model_dir), device="cpu")
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    model[0].auto_model.config.hidden_dropout_prob = model[0].auto_model.config.attention_probs_dropout_prob = 0.0
    no_dropout = tmp_path / "no-dropout"
    model.save(str(no_dropout))

    results, weights = {}, {}
    for mode in ("off", "on"):
        out = tmp_path / f"model-{mode}"
        config = _config(no_dropout, loss="cached_mnrl", packed_attention=mode, eval_steps=5)
        (tmp_path / mode).mkdir()
        results[mode] = recipe.train(_train_dir(tmp_path / mode), out, config, tmp_path / f"work-{mode}")
        weights[mode] = SentenceTransformer(str(out), device="cpu").state_dict()
        assert "medembed" not in (out / "config.json").read_text()
    assert results["on"].packed_attention is True and results["off"].packed_attention is False
    assert results["on"].train_loss == pytest.approx(results["off"].train_loss, rel=1e-4)
    assert results["on"].best_metric == pytest.approx(results["off"].best_metric, abs=1e-4)
    for name, tensor in weights["off"].items():
        assert torch.allclose(weights["on"][name], tensor, atol=1e-4), name
    base = SentenceTransformer(str(no_dropout), device="cpu").state_dict()
    assert any(not torch.allclose(base[n], weights["on"][n]) for n in base)  # it did train
