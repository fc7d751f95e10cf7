"""Checkpoints bound to their run (issue 13): a rerun at the same checkpoint location with other data or
another training configuration starts fresh and says why, never exporting the old run's model; the same
run still resumes; a killed run's scratch folder is removed at the next start."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import make_rows, write_jsonl
from faultkit import case, observe
from medembed import artifacts, scratch
from medembed.config import LOCAL, TrainConfig
from medembed.train import checkpoints, recipe
from medembed.train import stage as train_stage
from test_training import _config, _PreemptAt, _train_dir

pytestmark = pytest.mark.faults


class _CountSteps:
    """Counts the optimizer steps that actually ran in this attempt (not the step number reached)."""

    def __init__(self):
        from transformers import TrainerCallback

        counter = self

        class Count(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                counter.ran += 1

        self.ran = 0
        self.callback = Count()


def _other_train_dir(tmp_path: Path) -> Path:
    """The same shape of data with other answers: what a rerun on a new data version looks like."""
    rows = make_rows()
    train_dir = tmp_path / "train-b"
    train_dir.mkdir()
    write_jsonl(train_dir / "train.jsonl", [{"anchor": r["question"], "positive": r["answer"] + " Revised."} for r in rows[:40]])
    write_jsonl(train_dir / "dev.jsonl", [{"anchor": r["question"], "positive": r["answer"]} for r in rows[40:]])
    return train_dir


def _killed_run(tmp_path, model_dir, uri, work="w1"):
    config = _config(model_dir, checkpoint_uri=uri, checkpoint_steps=3, checkpoint_keep=2)
    train_dir = _train_dir(tmp_path)
    with pytest.raises(KeyboardInterrupt, match="pre-empted"):
        recipe.train(train_dir, tmp_path / "m1", config, tmp_path / work, callbacks=[_PreemptAt(7)()])
    assert checkpoints.CheckpointStore(uri).steps() == [6, 3]
    return train_dir, config


@case(fault='a rerun on other data at the same train.checkpoint_uri (the issue: it resumed and exported the old model)',
      promise='starts from step 0, says why, trains every step on the new data, then owns the location')
def test_other_data_at_the_same_location_starts_fresh_and_says_why(tmp_path, tiny_model_dir, caplog):
    uri = str(tmp_path / "store")
    _, config = _killed_run(tmp_path, tiny_model_dir, uri)
    other = _other_train_dir(tmp_path)
    count = _CountSteps()
    caplog.set_level(logging.INFO)
    result = recipe.train(other, tmp_path / "m2", config, tmp_path / "w2", callbacks=[count.callback])
    assert result.resumed_from_step == 0 and result.steps == 10
    assert count.ran == 10  # every step ran on the new data: nothing was taken from the old run
    assert f"not resuming from {uri}: its 2 checkpoint(s) (newest step 6) were written by another run: other training data" in caplog.text
    # The new run owns the location now: every checkpoint left there is bound to it.
    binding = checkpoints.run_binding(other, config, 1)
    store = checkpoints.CheckpointStore(uri, binding=binding)
    assert store.steps() == store.bound_steps() == [10, 9]
    observe(f"{count.ran} steps run from step {result.resumed_from_step}; " + next(r.getMessage() for r in caplog.records if "not resuming" in r.getMessage()))


@case(fault='a rerun with another learning rate at the same checkpoint location',
      promise='starts from step 0 and names the other training configuration')
def test_another_training_configuration_starts_fresh(tmp_path, tiny_model_dir, caplog):
    uri = str(tmp_path / "store")
    train_dir, config = _killed_run(tmp_path, tiny_model_dir, uri)
    caplog.set_level(logging.WARNING)
    result = recipe.train(train_dir, tmp_path / "m2", dataclasses.replace(config, learning_rate=5e-4), tmp_path / "w2")
    assert result.resumed_from_step == 0
    assert "other training configuration" in caplog.text and "other training data" not in caplog.text
    observe(f"resumed from step {result.resumed_from_step}; " + next(r.getMessage() for r in caplog.records if "not resuming" in r.getMessage()))


@case(fault='a retry of the same run with operational settings changed (checkpoint_keep, workers, mini-batch size)',
      promise='resumes from its checkpoint and runs only the remaining steps')
def test_the_same_run_resumes_and_runs_only_the_remaining_steps(tmp_path, tiny_model_dir):
    uri = str(tmp_path / "store")
    train_dir, config = _killed_run(tmp_path, tiny_model_dir, uri)
    count = _CountSteps()
    # Operational settings may change between attempts without losing the checkpoints.
    retry = dataclasses.replace(config, checkpoint_keep=3, dataloader_workers=0, mini_batch_size=2)
    result = recipe.train(train_dir, tmp_path / "m2", retry, tmp_path / "w2", callbacks=[count.callback])
    assert result.resumed_from_step == 6 and result.steps == 10 and count.ran == 4
    observe(f"resumed from step {result.resumed_from_step}, ran {count.ran} steps to step {result.steps}")


@case(fault='another run reusing the work folder where a killed attempt left its local checkpoint',
      promise='the unverified local checkpoint is not resumed: all steps run')
def test_a_checkpoint_left_in_a_reused_work_dir_is_not_resumed(tmp_path, tiny_model_dir):
    """The killed attempt's local checkpoint-6 stays in w1; a different run reusing w1 must not pick it up."""
    uri = str(tmp_path / "store")
    _, config = _killed_run(tmp_path, tiny_model_dir, uri, work="w1")
    assert (tmp_path / "w1" / "checkpoints" / "checkpoint-6").is_dir()
    count = _CountSteps()
    result = recipe.train(_other_train_dir(tmp_path), tmp_path / "m2", config, tmp_path / "w1", callbacks=[count.callback])
    assert result.resumed_from_step == 0 and count.ran == 10
    observe(f"resumed from step {result.resumed_from_step}, ran {count.ran} steps")


@case(fault='training settings that change the optimisation vs operational ones',
      promise='the former change the checkpoint binding, the latter do not')
def test_binding_fingerprints():
    config = TrainConfig(base_model="m", matryoshka_dims=(8, 4))
    same = dataclasses.replace(config, checkpoint_keep=7, dataloader_workers=3, packed_attention="on", mini_batch_tokens=512)
    assert config.signature() == same.signature()
    for change in ({"learning_rate": 1e-3}, {"epochs": 2}, {"batch_size": 64}, {"seed": 1}, {"base_model": "other"},
                   {"matryoshka_dims": (8,)}, {"lora_r": 8}):
        assert dataclasses.replace(config, **change).signature() != config.signature()
    assert config.signature(world_size=2) != config.signature()
    wanted = {"data": "a" * 64, "config": "b" * 64}
    assert checkpoints.binding_mismatch(dict(wanted), wanted) is None
    assert "no data or configuration fingerprint" in checkpoints.binding_mismatch(None, wanted)
    assert checkpoints.binding_mismatch({"data": "c" * 64, "config": "b" * 64}, wanted).startswith("other training data (cccccccccccc, this run aaaaaaaaaaaa)")
    observe("7 optimisation settings and the process count change the signature; 4 operational ones do not")


@case(fault='prep statistics that differ per run vs a changed training pair',
      promise='only the pairs change the data fingerprint')
def test_data_fingerprint_follows_the_training_pairs_only(tmp_path):
    first = _train_dir(tmp_path)
    before = checkpoints.data_fingerprint(first)
    (first / "prep_stats.json").write_text(json.dumps({"step_seconds": {"read": 1.5}}))  # differs per run
    assert checkpoints.data_fingerprint(first) == before
    with open(first / "train.jsonl", "a") as handle:
        handle.write(json.dumps({"anchor": "q", "positive": "p"}) + "\n")
    assert checkpoints.data_fingerprint(first) != before
    observe("prep_stats.json changed: same fingerprint; one pair added: another fingerprint")


_KILLED_CHILD = """
import os, sys
from medembed import scratch
with scratch.work_dir("train", sys.argv[1]) as work:
    (work / "checkpoints").mkdir()
    (work / "checkpoints" / "model.safetensors").write_bytes(b"0" * 5_000_000)
    print(work, flush=True)
    os.kill(os.getpid(), 9)
"""


def _run_killed_child(parent: Path) -> Path:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]))
    child = subprocess.run([sys.executable, "-c", _KILLED_CHILD, str(parent)], capture_output=True, text=True, env=env, timeout=120)
    assert child.returncode == -signal.SIGKILL, child.stderr
    left = Path(child.stdout.strip())
    assert left.is_dir() and (left / "checkpoints" / "model.safetensors").exists()  # what a killed run leaves today
    return left


@case(fault='a process killed with SIGKILL holding a 5 MB scratch folder (the issue: 520 MB left)',
      promise="the next start removes it; a live run's folder is kept")
def test_a_killed_runs_scratch_folder_is_removed_at_the_next_start_and_a_live_one_kept(tmp_path):
    parent = tmp_path / "tmp"
    parent.mkdir()
    left = _run_killed_child(parent)
    with scratch.work_dir("train", parent) as live:
        assert not left.exists()
        assert scratch.clean_stale("train", parent) == []  # the live folder's owner holds its lock
        assert live.exists()
        other_kind = scratch.work_dir("prep", parent)
        with other_kind as prep_dir:
            assert prep_dir.exists() and live.exists()
    assert not live.exists() and list(parent.iterdir()) == []
    observe(f"the killed process's {left.name} was removed at the next start; the live folder kept until its owner ended")


@case(fault='the training stage starting where a killed attempt left its scratch folder',
      promise='removed before training; nothing left after')
def test_the_training_stage_cleans_a_killed_attempt_before_it_starts(tmp_path, tiny_model_dir, monkeypatch):
    parent = tmp_path / "tmp"
    parent.mkdir()
    left = _run_killed_child(parent)
    monkeypatch.setattr(tempfile, "tempdir", str(parent))
    train_dir = _train_dir(tmp_path)
    train_stage.run(dataclasses.replace(LOCAL, train=_config(tiny_model_dir, epochs=1)), train_dir, tmp_path / "model")
    assert not left.exists() and list(parent.iterdir()) == []
    assert (tmp_path / "model" / artifacts.TRAINING_INFO).exists()
    observe(f"{left.name} removed; scratch parent empty after the stage")
