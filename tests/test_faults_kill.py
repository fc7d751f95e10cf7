"""kill -9 (issue 13): real processes killed with SIGKILL at random moments. Training killed at random
steps (during a step, a checkpoint save or its upload) resumes from the newest complete checkpoint,
runs only the remaining steps and ends with the weights of an uninterrupted run, leaving no scratch
folder and no partial checkpoint behind; a registration killed mid-upload leaves no visible version."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlparse

import pytest

from faultkit import FaultProxy, case, observe
from medembed.config import load_config
from medembed.register.gate import GateDecision
from medembed.registry import ModelRegistry
from medembed.storage import open_store
from medembed.train import checkpoints, recipe
from test_registry import fake_model
from test_training import _train_dir

HERE = Path(__file__).resolve().parent
TOTAL_STEPS = 10  # 40 pairs / batch 8 x 2 epochs
KILLS = 3


def _env(tmp: Path) -> dict:
    return dict(os.environ, TMPDIR=str(tmp), PYTHONPATH=os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")]))


def _attempt(overrides: dict, train_dir: Path, model_dir: Path, tmp: Path, kill_after: int | None, delay: float) -> dict:
    """One training attempt in its own process; with `kill_after`, SIGKILL `delay` s after it reports that step."""
    argv = [sys.executable, str(HERE / "fault_child.py"), "train-watched", json.dumps(overrides), str(train_dir), str(model_dir)]
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(tmp))
    seen, killed = [], False
    deadline = time.monotonic() + 300
    for line in child.stdout:
        if line.startswith("STEP "):
            seen.append(int(line.split()[1]))
            if kill_after is not None and seen[-1] >= kill_after and not killed:
                time.sleep(delay)
                child.send_signal(signal.SIGKILL)
                killed = True
        elif line.startswith("RESULT "):
            seen.append(json.loads(line[len("RESULT "):]))
        assert time.monotonic() < deadline, "training attempt hung"
    child.wait(timeout=60)
    stderr = child.stderr.read()
    return {"returncode": child.returncode, "steps": [s for s in seen if isinstance(s, int)],
            "result": next((s for s in seen if isinstance(s, dict)), None), "stderr": stderr}


@case(fault="kill -9 of the training process at random steps, {KILLS} times in a row, landing during a step, a "
            "checkpoint save or its upload to S3 (seed in the observation; MEDEMBED_FAULT_SEED replays it)".replace("{KILLS}", str(KILLS)),
      promise="each restart resumes from the newest complete checkpoint (the step reached or the one before), runs only "
              "the remaining steps; the final weights equal an uninterrupted run's; no scratch folder or partial "
              "checkpoint is left")
def test_kill_9_at_random_training_steps(s3_endpoint, tmp_path, tiny_model_dir):
    seed = int(os.environ.get("MEDEMBED_FAULT_SEED") or time.time_ns() % 1_000_000)
    rng = random.Random(seed)
    uri = f"s3://kill-{uuid.uuid4().hex[:10]}/train"
    overrides = {"train.base_model": str(tiny_model_dir), "train.matryoshka_dims": "64,32", "train.epochs": 2,
                 "train.batch_size": 8, "train.learning_rate": 1e-3, "train.warmup_steps": 0, "train.eval_steps": 0,
                 "train.max_seq_length": 32, "train.mini_batch_size": 3, "train.checkpoint_uri": uri,
                 "train.checkpoint_steps": 1, "train.checkpoint_keep": 2,
                 # TOTAL_STEPS counts the pairs alone; augmentation's determinism has its own test (test_quality.py)
                 "train.augment_rate": 0.0}
    train_dir = _train_dir(tmp_path)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    resumed_at, story = 0, []
    for kill in range(KILLS):
        remaining_kills = KILLS - kill
        if resumed_at + 1 > TOTAL_STEPS - 2:
            break  # an earlier kill landed late: too few steps left for another (the story says how many kills ran)
        # Leave room for the kills still to come, and never kill so late that the run could finish first.
        kill_after = rng.randint(resumed_at + 1, max(resumed_at + 1, TOTAL_STEPS - 1 - remaining_kills))
        delay = rng.uniform(0.0, 0.15)
        attempt = _attempt(overrides, train_dir, tmp_path / "model", tmp, kill_after, delay)
        assert attempt["returncode"] == -signal.SIGKILL, f"seed {seed}: not killed: {attempt['stderr'][-2000:]}"
        assert attempt["steps"][0] == resumed_at + 1, f"seed {seed}: attempt started at {attempt['steps'][:1]}, not {resumed_at + 1}"
        reached = attempt["steps"][-1]
        intact = checkpoints.CheckpointStore(f"{uri}/killed-run").steps()
        newest = intact[0] if intact else 0  # 0: killed before the first checkpoint was complete, the retry starts over
        # Checkpoint n is saved after step n is reported: the newest complete one is the step reached or the one before.
        assert newest in (reached - 1, reached), f"seed {seed}: reached {reached}, complete checkpoints {intact}"
        story.append(f"killed {delay * 1000:.0f} ms after step {kill_after} (reached {reached}, newest complete checkpoint "
                     f"{newest or 'none'})")
        resumed_at = newest
        assert len([p for p in tmp.iterdir() if p.name.startswith("medembed-train-")]) == 1, "the killed attempt's scratch folder"

    final = _attempt(overrides, train_dir, tmp_path / "model", tmp, None, 0.0)
    assert final["returncode"] == 0, final["stderr"][-3000:]
    result = final["result"]
    assert result["resumed_from_step"] == resumed_at and result["steps"] == TOTAL_STEPS
    assert result["ran"] == list(range(resumed_at + 1, TOTAL_STEPS + 1)), f"seed {seed}: {result['ran']}"
    assert [p.name for p in tmp.iterdir()] == [], f"seed {seed}: scratch left: {list(tmp.iterdir())}"
    store = checkpoints.CheckpointStore(f"{uri}/killed-run")
    folders = sorted({key.split("/")[0] for key in store.store.list("")})
    assert folders == [checkpoints.checkpoint_name(s) for s in sorted(store.steps())], f"partial checkpoints left: {folders}"

    from safetensors.torch import load_file

    config = load_config("local", overrides).train
    recipe.train(train_dir, tmp_path / "reference", dataclasses.replace(config, checkpoint_uri=""), tmp_path / "ref-work")
    reference = load_file(str(tmp_path / "reference" / "model.safetensors"))
    weights = load_file(str(tmp_path / "model" / "model.safetensors"))
    difference = max(float((reference[k] - weights[k]).abs().max()) for k in reference)
    assert difference < 1e-5, f"seed {seed}: weights differ from an uninterrupted run by {difference}"
    assert len(story) >= 2, f"seed {seed}: only {len(story)} kill(s) landed"
    observe(f"seed {seed}, {len(story)} kills: " + "; ".join(story))
    observe(f"final attempt resumed at step {resumed_at} and ran steps {result['ran'][0]}..{result['ran'][-1]}; largest "
            f"weight difference to an uninterrupted run {difference:.1e}; scratch folders left: 0; checkpoints left: "
            f"{', '.join(folders)} (all complete)")


_REGISTER = """
import sys
from pathlib import Path
from medembed.register.gate import GateDecision
from medembed.registry import ModelRegistry
from medembed.storage import open_store
registry = ModelRegistry(open_store(sys.argv[1]), "medical")
registry.register(Path(sys.argv[2]), {"dims": [64]}, {}, lambda v: f"card v{v}", GateDecision(promote=True))
print("registered", flush=True)
"""


@case(fault="kill -9 of a registration halfway through uploading the model (a throttled link keeps it mid-upload)",
      promise="no version is listed and the champion does not move; the next registration works, takes the next "
              "number and its files verify")
def test_kill_9_during_a_registration_upload(s3_endpoint, tmp_path):
    proxy = FaultProxy(urlparse(s3_endpoint["MINIO_ENDPOINT"]).port).set("slow", rate=128 * 1024)
    try:
        uri = f"s3://kill-{uuid.uuid4().hex[:10]}/models"
        registry = ModelRegistry(open_store(uri), "medical")
        model = fake_model(tmp_path, "m1", os.urandom(1024 * 1024))
        env = dict(_env(tmp_path), MINIO_ENDPOINT=proxy.endpoint, MEDEMBED_S3_READ_TIMEOUT="60")
        child = subprocess.Popen([sys.executable, "-c", _REGISTER, uri, str(model)], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while proxy.throttled_bytes < 256 * 1024 and child.poll() is None:
            assert time.monotonic() < deadline, "the upload never started"
            time.sleep(0.05)
        claimed = registry.store.list("medical/v0001/")
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        proxy.close()
    assert child.returncode == -signal.SIGKILL, child.stderr.read()[-2000:]
    assert "medical/v0001/CLAIM" in claimed
    assert registry.versions() == [] and registry.alias() is None
    second = registry.register(fake_model(tmp_path, "m2"), {"dims": [64]}, {}, lambda v: f"card v{v}", GateDecision(promote=True))
    assert second.version == 2 and registry.versions() == [2] and registry.alias() == 2
    pulled = registry.pull(2, tmp_path / "pulled")
    assert (pulled / "weights.bin").read_bytes() == (tmp_path / "m2" / "weights.bin").read_bytes()
    observe(f"killed after {proxy.throttled_bytes // 1024} KiB had passed; objects of v1 then: {claimed}; versions listed: "
            f"none; next registration: v{second.version}, champion v{registry.alias()}, pull verified")
