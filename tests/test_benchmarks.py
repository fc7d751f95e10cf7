"""The GPU benchmarks' CPU variants (tiny model): they run end to end through the product's own code
and write the JSON shape the issue asks for, so they cannot rot between GPU sessions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_bench(script: str, *args: str) -> None:
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args], capture_output=True, text=True,
                          env=env, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_bench_train_reports_naive_and_product(tmp_path):
    out = tmp_path / "train.json"
    run_bench("bench_train.py", "--warmup", "1", "--steps", "1", "--model-dir", str(tmp_path / "model"), "--out", str(out))
    report = json.loads(out.read_text())
    for variant in ("naive", "competent", "product"):
        assert "error" not in report[variant], report[variant]
        assert {"pairs_per_s", "tokens_per_s", "mfu", "peak_gib"} <= set(report[variant])
        assert report[variant]["pairs_per_s"] > 0 and report[variant]["measured_steps"] >= 1
    assert report["product"]["config"]["loss"] == "cached_mnrl"
    assert report["competent"]["config"]["loss"] == "MatryoshkaLoss(CachedMultipleNegativesRankingLoss)"
    assert report["product"]["speedup_vs_competent"] > 0
    assert report["versions"]["torch"]


def test_bench_encode_and_profile_run_on_cpu(tmp_path):
    out = tmp_path / "encode.json"
    run_bench("bench_encode.py", "--passages", "64", "--graph", "on", "--model-dir", str(tmp_path / "model"), "--profile",
              str(tmp_path / "encode-profile"), "--out", str(out))
    report = json.loads(out.read_text())
    for variant in ("naive", "competent", "product"):
        assert report[variant]["passages_per_s"] > 0 and "mfu" in report[variant]
    assert report["tokenize_only_passages_per_s"] > 0 and report["competent"]["batch_size"] in (16, 64)
    assert report["product"]["cosine"]["vs_competent_bf16"]["min"] > 0.999  # fp32 on CPU: the same function
    assert report["product"]["gpu_side_only"]["passages_per_s"] > 0 and report["product"]["graph_encoder"]["row_shapes"]
    assert (tmp_path / "encode-profile" / "profile-cpu-table.txt").read_text().count("aten::") > 3

    run_bench("profile_train.py", "--warmup", "1", "--steps", "1", "--model-dir", str(tmp_path / "model"),
              "--out", str(tmp_path / "train-profile"))
    profile = json.loads((tmp_path / "train-profile" / "profile.json").read_text())
    assert profile["profiled_steps"] == 1 and profile["wall_s"] > 0 and profile["cpu_self_s"] > 0


def test_pipeline_stage_timings_parse_kfp_local_logs():
    import sys

    sys.path.insert(0, str(ROOT / "bench"))
    from pipeline_gpu import stage_timings

    log = ("22:32:31.100 - INFO - Executing task \x1b[95m'prep-data'\x1b[0m\n"
           "    [KFP Executor] prep done\n"
           "22:32:41.400 - INFO - Task \x1b[95m'prep-data'\x1b[0m finished with status \x1b[92mSUCCESS\x1b[0m\n"
           "23:59:59.000 - INFO - Executing task 'train-model'\n"
           "00:00:09.500 - INFO - Task 'train-model' finished with status SUCCESS\n")
    assert stage_timings(log) == {"prep-data": {"seconds": 10.3, "status": "SUCCESS"},
                                  "train-model": {"seconds": 10.5, "status": "SUCCESS"}}


def _drive_timer(monkeypatch, graphs_after_step: list[int], **kwargs):
    """Run bench_train's StepTimer over fake steps; graphs_after_step[i] = graphs compiled after step i+1."""
    import sys
    from types import SimpleNamespace

    sys.path.insert(0, str(ROOT / "bench"))
    import bench_train

    count = {"now": 0}
    monkeypatch.setattr(bench_train, "_compiled_graphs", lambda: count["now"])
    timer = bench_train.StepTimer(**kwargs)
    control = SimpleNamespace(should_training_stop=False)
    for step, graphs in enumerate(graphs_after_step, start=1):
        state = SimpleNamespace(global_step=step - 1)
        timer.on_step_begin(None, state, control)
        count["now"] = graphs
        state.global_step = step
        timer.on_step_end(None, state, control)
        if control.should_training_stop:
            break
    return timer, control


def test_step_timer_warms_up_until_nothing_compiles(monkeypatch):
    # Graphs compiled in steps 1, 2 and 4: timing starts once two steps in a row compiled nothing (step 6).
    timer, control = _drive_timer(monkeypatch, [2, 3, 3, 4, 4, 4, 4, 4, 4, 4, 4, 4], warmup=2, timed=3,
                                  max_warmup=10, settle=2)
    assert timer.start_step == 6 and timer.steps == 3 and timer.graphs_while_timed == 0
    assert control.should_training_stop


def test_step_timer_counts_graphs_compiled_while_timed(monkeypatch):
    # Warm-up capped at 3 steps while still compiling: the timed window holds a compile and says so.
    timer, _ = _drive_timer(monkeypatch, [1, 2, 3, 4, 4, 4, 4], warmup=1, timed=3, max_warmup=3, settle=2)
    assert timer.start_step == 3 and timer.steps == 3 and timer.graphs_while_timed == 1
    assert [g for _, g in timer.step_log] == [1, 0, 0]  # the step that compiled is named


def test_step_timer_restarts_a_window_that_compiled(monkeypatch):
    # The same compile at step 4, with one restart allowed: that window is dropped and steps 5-7 are timed.
    timer, control = _drive_timer(monkeypatch, [1, 2, 3, 4, 4, 4, 4, 4, 4], warmup=1, timed=3, max_warmup=3,
                                  settle=2, restarts=1)
    assert timer.start_step == 4 and timer.steps == 3 and timer.graphs_while_timed == 0
    assert [g for _, g in timer.step_log] == [0, 0, 0]
    assert [w["restarted_after_step"] for w in timer.discarded] == [4]
    assert control.should_training_stop
    # Restarts used up: a later compile is counted, as without restarts.
    timer, _ = _drive_timer(monkeypatch, [1, 2, 3, 4, 4, 5, 5, 5, 5], warmup=1, timed=3, max_warmup=3, settle=2,
                            restarts=1)
    assert timer.start_step == 4 and timer.graphs_while_timed == 1 and len(timer.discarded) == 1
