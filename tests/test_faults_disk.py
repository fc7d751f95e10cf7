"""A full disk in every stage (issue 13), on a real filesystem: a small tmpfs mounted in a private mount
namespace (`unshare --user --map-root-user --mount`, no root needed), filled but a few bytes before the
stage runs. Each stage runs in its own process as a KFP task would run it (tests/fault_child.py); the
promise: one DiskFullError naming the folder that is full, its free space and what to do, nothing
half-written left behind, and the same stage succeeding once space is freed."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from conftest import make_rows, tiny_overrides as _overrides, write_jsonl
from faultkit import case, observe, run_on_small_disk

HERE = Path(__file__).resolve().parent
KIB = 1024




def _env() -> dict:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")]))


# name, stage, what is on the small disk, bytes left free, what is watched for leftovers
SCENARIOS = {
    "prep-scratch": "data prep with its scratch space (TMPDIR) and outputs on a full disk",
    "prep-outputs": "data prep whose output volume fills while the finished outputs are moved in",
    "train-checkpoints": "training whose checkpoint location (train.checkpoint_uri, a folder) fills at the 2nd checkpoint",
    "train-scratch": "training whose scratch space (TMPDIR, the trainer's local checkpoints) fills",
    "train-export": "training whose model output fills during the export",
    "evaluate-results": "evaluation whose results output fills while the report is written",
    "register": "registration into a folder registry on a full disk",
    "evaluate-champion": "evaluation pulling the champion into a full scratch space (TMPDIR)",
}


@pytest.fixture(scope="module")
def disk_runs(tmp_path_factory, tiny_model_dir):
    """All scenarios in one child process on one 128 MiB tmpfs (the child fills it before each stage)."""
    root = tmp_path_factory.mktemp("disk-full")
    small, normal = root / "small", root / "normal"
    normal.mkdir()
    data = write_jsonl(normal / "pairs.jsonl", make_rows())
    # the checkpoint arithmetic below (a checkpoint per step, 4 steps) counts the pairs alone, without augmented rows
    base = _overrides(tiny_model_dir, data, **{"train.augment_rate": 0.0})
    registry = {"registry.registry_uri": str(small / "registry")}
    scenarios = [
        {"name": "prep-scratch", "stage": "prep", "overrides": base, "tmpdir": str(small / "tmp"), "leave": 16 * KIB,
         "paths": [str(small / "p1/train"), str(small / "p1/eval")], "watch": {"outputs": str(small / "p1")}},
        {"name": "prep-outputs", "stage": "prep", "overrides": base, "leave": 16 * KIB,
         "paths": [str(small / "p2/train"), str(small / "p2/eval")], "watch": {"outputs": str(small / "p2")}},
        {"name": "train-checkpoints", "stage": "train", "leave": 1300 * KIB,
         "overrides": {**base, "train.checkpoint_uri": str(small / "ckpt"), "train.checkpoint_steps": 1},
         "paths": [str(small / "p1/train"), str(normal / "m3")],
         "watch": {"checkpoints": str(small / "ckpt"), "model": str(normal / "m3")}},
        {"name": "train-scratch", "stage": "train", "tmpdir": str(small / "tmp"), "leave": 500 * KIB,
         "overrides": {**base, "train.checkpoint_uri": str(normal / "ckpt4"), "train.checkpoint_steps": 1},
         "paths": [str(small / "p1/train"), str(normal / "m4")], "watch": {"model": str(normal / "m4")}},
        {"name": "train-export", "stage": "train", "overrides": base, "leave": 100 * KIB,
         "paths": [str(small / "p1/train"), str(small / "m5")], "watch": {"model": str(small / "m5")}},
        {"name": "evaluate-results", "stage": "evaluate", "overrides": base, "leave": 8 * KIB,
         "paths": [str(small / "p1/eval"), str(small / "m5"), str(small / "r6")], "watch": {"results": str(small / "r6")}},
        {"name": "register", "stage": "register", "overrides": {**base, **registry}, "leave": 100 * KIB,
         "paths": [str(small / "m5"), str(small / "r6"), str(small / "p1/train")],
         "watch": {"registry": str(small / "registry")}, "promote_after": True},
        {"name": "evaluate-champion", "stage": "evaluate", "overrides": {**base, **registry}, "tmpdir": str(small / "tmp"),
         "leave": 100 * KIB, "paths": [str(small / "p1/eval"), str(small / "m5"), str(normal / "r8")],
         "watch": {"results": str(normal / "r8")}},
    ]
    assert [s["name"] for s in scenarios] == list(SCENARIOS)
    spec = normal / "spec.json"
    spec.write_text(json.dumps({"mount": str(small), "default_tmpdir": str(normal / "tmp"), "scenarios": scenarios}))
    out = normal / "outcomes.json"
    run = run_on_small_disk([sys.executable, str(HERE / "fault_child.py"), "scenarios", str(spec), str(out)], small, "128m",
                            env=_env())
    assert out.exists(), run.stderr[-3000:]
    outcomes = json.loads(out.read_text())
    assert set(outcomes) == set(SCENARIOS), run.stderr[-3000:]
    return {"outcomes": outcomes, "small": small, "normal": normal, "isolation": run.isolation}


EXPECTED = {
    # scenario: (stage's words, the place the message must name, what may stay: {watched: file predicate})
    "prep-scratch": ("data prep", "small/tmp", {}),
    "prep-outputs": ("data prep", "the training-data output", {}),
    "train-checkpoints": ("training", "train.checkpoint_uri", {"checkpoints": "fault-run/checkpoint-00000001/"}),
    "train-scratch": ("training", "scratch space (TMPDIR)", {}),
    "train-export": ("training", "the model output", {}),
    "evaluate-results": ("evaluation", "the results output", {}),
    "register": ("model registration", "registry.registry_uri", {"registry": "medical-embeddings/v0001/CLAIM"}),
    "evaluate-champion": ("evaluation", "scratch space (TMPDIR)", {}),
}


@case(fault="a full disk: {id}", promise="one DiskFullError naming the full folder, its free space and what to do; nothing "
      "half-written left (outputs, scratch, checkpoint, version); the same stage succeeds once space is freed")
@pytest.mark.parametrize("name", list(SCENARIOS), ids=list(SCENARIOS.values()))
def test_a_full_disk_in_each_stage_is_one_message_and_leaves_nothing_half_written(disk_runs, name):
    full, retry = disk_runs["outcomes"][name]["full"], disk_runs["outcomes"][name]["retry"]
    stage, place, may_stay = EXPECTED[name]
    error = full["error"]
    assert error is not None, f"{name}: the stage did not fail on the full disk ({full['free_before']} bytes free)"
    message = error["message"]
    assert error["type"] == "DiskFullError" and not error["chained"], error["traceback"]
    assert message.startswith(f"{stage}: no space left on device"), message
    assert place in message and " free of 128.0 MiB" in message and "then run again" in message, message
    for watched, files in full["files"].items():
        allowed = may_stay.get(watched)
        left = [f for f in files if not (allowed and f.startswith(allowed))]
        assert left == [], f"{name}: half-written files left in {watched}: {left}"
    assert full["tmp_files"] == {}, f"{name}: scratch files left: {sorted(full['tmp_files'])[:5]}"
    assert retry["error"] is None, retry["error"] and retry["error"]["traceback"]
    observe(f"{full['free_before'] // KIB} KiB free: {error['type']}: {message}")
    observe(f"left behind: {sum(len(f) for f in full['files'].values())} file(s)"
            + (f" (only {', '.join(may_stay.values())})" if may_stay else "") + f"; with space again: {retry['result']}")
    if name == "train-checkpoints":
        # The intact checkpoint 1 stayed complete; the half-copied checkpoint 2 was removed; the retry resumed at 1.
        checkpoints = full["files"]["checkpoints"]
        assert "fault-run/checkpoint-00000001/COMPLETE" in checkpoints
        assert not [f for f in checkpoints if "checkpoint-00000002" in f]
        assert retry["result"]["resumed_from_step"] == 1 and retry["result"]["steps"] == 4
    if name == "register":
        assert retry["result"]["version"] == 2, "the failed registration's number is never reused"
        assert "medical-embeddings/v0001/manifest.json" not in retry["files"]["registry"]


@case(fault="disk full during registration, through `medembed run-local` (the registry folder on a 256 KiB disk)",
      promise="exit code 1, the last line names the stage, the full folder and what to do; no version is listed")
def test_run_local_on_a_full_registry_disk_exits_1_with_one_line(tmp_path, tiny_model_dir):
    small, normal = tmp_path / "small", tmp_path / "normal"
    normal.mkdir()
    data = write_jsonl(normal / "pairs.jsonl", make_rows())
    sets = {**_overrides(tiny_model_dir, data), "registry.registry_uri": str(small / "registry")}
    argv = [sys.executable, "-m", "medembed", "run-local", "--runs-dir", str(normal / "runs")]
    for key, value in sets.items():
        argv += ["--set", f"{key}={value}"]
    run = run_on_small_disk(argv, small, "256k", env=_env(), timeout=600)
    assert run.returncode == 1, run.stderr[-3000:]
    assert run.last_line.startswith("error: model registration failed: DiskFullError: model registration: no space left "
                                    f"on device writing {small}/registry/medical-embeddings/v0001/model/"), run.last_line
    assert "then run again: it takes the next version number (full log: " in run.last_line
    records = [name for name in run.files if name.startswith("registry/medical-embeddings/runs/")]
    assert sorted(set(run.files) - set(records)) == ["registry/medical-embeddings/v0001/CLAIM"], run.files
    # The run's record (written by the pipeline's exit handler once the cleanup freed space) says it failed.
    assert len(records) == 1 and json.loads(run.texts[records[0]])["state"] != "SUCCEEDED", run.texts
    observe(f"exit code {run.returncode}; last line: {run.last_line}")
    observe(f"left on the disk: {sorted(run.files)}; the run record: {run.texts[records[0]]}; isolation: {run.isolation}")
