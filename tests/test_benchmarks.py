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
    for variant in ("naive", "product"):
        assert "error" not in report[variant], report[variant]
        assert {"pairs_per_s", "tokens_per_s", "mfu", "peak_gib"} <= set(report[variant])
        assert report[variant]["pairs_per_s"] > 0 and report[variant]["measured_steps"] >= 1
    assert report["product"]["config"]["loss"] == "cached_mnrl"
    assert report["versions"]["torch"]


def test_bench_encode_and_profile_run_on_cpu(tmp_path):
    out = tmp_path / "encode.json"
    run_bench("bench_encode.py", "--passages", "64", "--model-dir", str(tmp_path / "model"), "--profile",
              str(tmp_path / "encode-profile"), "--out", str(out))
    report = json.loads(out.read_text())
    assert report["passages_per_s"] > 0 and "mfu" in report and report["tokenize_only_passages_per_s"] > 0
    assert (tmp_path / "encode-profile" / "profile-cpu-table.txt").read_text().count("aten::") > 3

    run_bench("profile_train.py", "--warmup", "1", "--steps", "1", "--model-dir", str(tmp_path / "model"),
              "--out", str(tmp_path / "train-profile"))
    profile = json.loads((tmp_path / "train-profile" / "profile.json").read_text())
    assert profile["profiled_steps"] == 1 and profile["wall_s"] > 0 and profile["cpu_self_s"] > 0
