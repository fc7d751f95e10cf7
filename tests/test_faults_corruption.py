"""Corrupted files (issue 13): a damaged model, checkpoint or registry file is named, with a way out,
and never used as if it were whole."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from faultkit import case, observe
from medembed.artifacts import TrainingInfo
from medembed.evaluate import stage as evaluate_stage
from medembed.models import DamagedModelError
from medembed.register.gate import decide_promotion
from medembed.registry import ModelRegistry
from medembed.storage import LocalStore
from medembed.train import checkpoints, recipe
from test_registry import WIN, card, promote, results
from test_training import _config, _PreemptAt, _train_dir


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 3])
    elif how == "overwritten":
        path.write_bytes(b"\0" * len(data))
    else:
        raise ValueError(how)


@case(fault="the fine-tuned model's {id} before evaluation",
      promise="evaluation fails with one DamagedModelError naming the file and what to do; no results written")
@pytest.mark.parametrize("damage", [("model.safetensors", "truncated"), ("model.safetensors", "overwritten"),
                                    ("tokenizer.json", "truncated"), ("config.json", "truncated")],
                         ids=lambda d: f"{d[0]} {d[1]}")
def test_a_damaged_fine_tuned_model_is_named_by_evaluation(stage_outputs, tmp_path, damage):
    name, how = damage
    model = tmp_path / "model"
    shutil.copytree(stage_outputs["model"], model)
    _damage(model / name, how)
    with pytest.raises(DamagedModelError, match=rf"^cannot load the model .*: {model / name} is damaged \(") as error:
        evaluate_stage.run(stage_outputs["config"], stage_outputs["eval"], model, tmp_path / "results")
    assert "run the stage that wrote it again, or copy the model anew" in str(error.value)
    assert not (tmp_path / "results").exists()
    observe(f"{type(error.value).__name__}: {error.value}")


@case(fault="the base model's {id} (a damaged download or copy)",
      promise="training fails before any step with one DamagedModelError naming the file; nothing exported")
@pytest.mark.parametrize("name", ["config.json", "model.safetensors"])
def test_a_damaged_base_model_is_named_by_training(tiny_model_dir, tmp_path, name):
    base = tmp_path / "base"
    shutil.copytree(tiny_model_dir, base)
    _damage(base / name, "truncated")
    with pytest.raises(DamagedModelError, match=rf"^cannot load the model {base}: {base / name} is damaged") as error:
        recipe.train(_train_dir(tmp_path), tmp_path / "out", _config(base), tmp_path / "work")
    assert not (tmp_path / "out").exists()
    observe(f"{type(error.value).__name__}: {error.value}")


@case(fault="training_info.json of the model is not valid JSON",
      promise="evaluation and registration name the file and say to export the model again")
def test_a_damaged_training_record_is_named(stage_outputs, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(stage_outputs["model"], model)
    (model / "training_info.json").write_text('{"model_dir": "x", "steps": ')
    with pytest.raises(ValueError, match=rf"^{model / 'training_info.json'}: damaged, not valid JSON .*; run the training "
                                         r"stage again to export the model anew") as error:
        TrainingInfo.read(model)
    observe(str(error.value))


@case(fault="a checkpoint's COMPLETE marker is {id}",
      promise="that checkpoint is skipped with a warning naming it; training resumes from the newest intact one")
@pytest.mark.parametrize("how", ["truncated", "overwritten"])
def test_a_damaged_checkpoint_marker_is_skipped(tmp_path, tiny_model_dir, caplog, how):
    uri = tmp_path / "store"
    train_dir = _train_dir(tmp_path)
    config = _config(tiny_model_dir, checkpoint_uri=str(uri), checkpoint_steps=2, checkpoint_keep=5)
    with pytest.raises(KeyboardInterrupt, match="pre-empted"):
        recipe.train(train_dir, tmp_path / "m1", config, tmp_path / "w1", callbacks=[_PreemptAt(7)()])
    _damage(uri / checkpoints.checkpoint_name(6) / checkpoints.MARKER, how)
    caplog.set_level(logging.WARNING)
    resumed = recipe.train(train_dir, tmp_path / "m2", config, tmp_path / "w2")
    assert (resumed.resumed_from_step, resumed.steps) == (4, 10)
    warning = next(r.getMessage() for r in caplog.records if "checkpoint-00000006" in r.getMessage())
    assert "marker unreadable" in warning
    observe(f"warning: {warning}; resumed from step {resumed.resumed_from_step}")


@case(fault="the champion's weights in the registry are corrupted (overwritten after registration)",
      promise="evaluation reports the champion as not scorable naming the file and its checksum mismatch; the gate "
              "then never promotes over it")
def test_a_corrupted_champion_is_named_and_never_promoted_over(stage_outputs, tmp_path, caplog):
    registry_root = tmp_path / "registry"
    registry = ModelRegistry(LocalStore(registry_root), "medical-embeddings")
    registry.register(stage_outputs["model"], results(WIN), {}, card, promote(None))
    weights = registry_root / "medical-embeddings/v0001/model/model.safetensors"
    _damage(weights, "overwritten")
    settings = stage_outputs["config"].registry.__class__(registry_uri=str(registry_root))
    caplog.set_level(logging.WARNING)
    champion = evaluate_stage.pull_champion(settings, tmp_path / "work")
    assert champion.version == 1 and champion.error.startswith(f"{weights}: checksum mismatch")
    assert "the stored file is corrupt; pull another version or re-register this one" in champion.error
    candidate = results(WIN)
    candidate["champion"] = {"version": 1, "error": champion.error, "deltas": {}}
    decision = decide_promotion(candidate, settings)
    assert not decision.promote and decision.reasons == [
        f"the champion v1 could not be scored ({champion.error}); a candidate is never promoted over a champion it was "
        "not compared with"]
    observe(f"champion error: {champion.error}")
    observe(f"gate: {decision.reasons[0][:200]}")


@case(fault="a checkpoint's file changed after its COMPLETE marker was written (trainer_state.json edited)",
      promise="the checkpoint fails its manifest check and is skipped; nothing is left half-restored")
def test_a_checkpoint_file_changed_after_its_marker_is_skipped(tmp_path, tiny_model_dir, caplog):
    uri = tmp_path / "store"
    train_dir = _train_dir(tmp_path)
    config = _config(tiny_model_dir, checkpoint_uri=str(uri), checkpoint_steps=3, checkpoint_keep=3)
    with pytest.raises(KeyboardInterrupt, match="pre-empted"):
        recipe.train(train_dir, tmp_path / "m1", config, tmp_path / "w1", callbacks=[_PreemptAt(7)()])
    state = uri / checkpoints.checkpoint_name(6) / "trainer_state.json"
    state.write_text(json.dumps({**json.loads(state.read_text()), "global_step": 60}))
    caplog.set_level(logging.WARNING)
    store = checkpoints.CheckpointStore(str(uri))
    assert store.download(6, tmp_path / "restore") is False and not (tmp_path / "restore").exists()
    warning = next(r.getMessage() for r in caplog.records if "does not match its manifest" in r.getMessage())
    assert "trainer_state.json" in warning
    resumed = recipe.train(train_dir, tmp_path / "m2", config, tmp_path / "w2")
    assert resumed.resumed_from_step == 3
    observe(f"warning: {warning}; resumed from step {resumed.resumed_from_step}")
