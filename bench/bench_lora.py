"""Full fine-tuning vs LoRA vs QLoRA (4-bit base): pairs/s, peak GPU memory and per-dim quality of a short run.

Each variant trains `medembed.train.recipe.train` (the training stage's code) on the same prepared split
(`--train-dir` / `--eval-dir`, e.g. the artifacts of bench/pipeline_gpu.py's kfp.local run, or prepared
here with `--prep`) with the pipeline's product settings (bench/pipeline_gpu.py PRODUCT_SETTINGS on the
local profile: bundled all-MiniLM-L6-v2, GradCache batch 256, 3 epochs), then scores it with the
evaluation stage (`stages.evaluate`: NDCG@10 per Matryoshka dim, float32, against the base model).
LoRA: rank 16 on the attention projections, alpha 32, learning rate 2e-4 (adapters need a larger step
than full fine-tuning's 5e-5); QLoRA: the same on a 4-bit NF4 base (bitsandbytes, CUDA only).
Each variant runs in its own process (clean peak memory). Prints one JSON object; `--out` writes it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

VARIANTS = {
    "full": [],
    "lora": ["train.lora_r=16", "train.learning_rate=2e-4"],
    "qlora": ["train.lora_r=16", "train.learning_rate=2e-4", "train.quantize_4bit=true"],
}


def run_variant(name: str, spec: dict) -> dict:
    import torch

    from bench_train import StepTimer
    from pipeline_gpu import PRODUCT_SETTINGS
    from medembed.artifacts import TrainingInfo
    from medembed.config import load_config
    from medembed.evaluate.evaluator import evaluate
    from medembed.train import recipe

    config = load_config("local", PRODUCT_SETTINGS + VARIANTS[name] + spec["sets"])
    cuda = torch.cuda.is_available()
    timer = StepTimer(spec["warmup"], timed=10**9, max_warmup=spec["warmup"])  # every step after warm-up
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        start = time.perf_counter()
        result = recipe.train(Path(spec["train_dir"]), work / "model", config.train, work / "work", callbacks=[timer])
        train_wall = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
        info = TrainingInfo.read(work / "model")
        results = evaluate(Path(spec["eval_dir"]), str(work / "model"), info.base_model, info.matryoshka_dims,
                           info.query_prompt, info.passage_prompt, config.eval, max_seq_length=info.max_seq_length or None)
    batch = config.train.batch_size
    out = {
        "pairs_per_s": round(timer.steps * batch / timer.seconds, 1) if timer.seconds else None,
        "measured_steps": timer.steps, "steps": result.steps, "train_seconds": round(train_wall, 1),
        "peak_gib": round(peak, 2) if peak is not None else None, "train_loss": round(result.train_loss, 4),
        "packed": result.packed_attention, "bf16": result.bf16,
        # Graphs compiled after warm-up count inside pairs_per_s (a lower bound then; the first GPU run had no such field).
        "warmup_steps": spec["warmup"], "graphs_compiled_while_timed": timer.graphs_while_timed,
        "settings": {k: getattr(config.train, k) for k in ("lora_r", "lora_alpha", "quantize_4bit", "learning_rate",
                                                           "batch_size", "epochs", "loss", "mini_batch_tokens")},
        "ndcg_at_10": {str(d): {"base": round(results["base"][str(d)]["ndcg@10"], 4),
                                "finetuned": round(results["finetuned"][str(d)]["ndcg@10"], 4)} for d in results["dims"]},
    }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-dir", default=None)
    parser.add_argument("--eval-dir", default=None)
    parser.add_argument("--run-root", default=None, help="a kfp.local run folder: its prep artifacts are used")
    parser.add_argument("--variants", default="full,lora,qlora")
    parser.add_argument("--set", action="append", default=[], help="extra config override for every variant")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--timeout", type=int, default=0)
    parser.add_argument("--out", default=None)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--spec", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        print("RESULT " + json.dumps(run_variant(args.worker, json.loads(args.spec))), flush=True)
        return

    from bench_train import versions

    train_dir, eval_dir = args.train_dir, args.eval_dir
    if args.run_root:
        root = Path(args.run_root)
        train_dir = str(next(root.glob("**/train.jsonl")).parent)
        eval_dir = str(next(root.glob("**/corpus.jsonl")).parent)
    if not (train_dir and eval_dir):
        parser.error("give --train-dir and --eval-dir, or --run-root")
    report = {"train_dir": train_dir, "eval_dir": eval_dir, "versions": versions()}
    for name in [v for v in args.variants.split(",") if v]:
        spec = {"train_dir": train_dir, "eval_dir": eval_dir, "sets": args.set, "warmup": args.warmup}
        t0 = time.perf_counter()
        try:
            proc = subprocess.run([sys.executable, __file__, "--worker", name, "--spec", json.dumps(spec)],
                                  env=dict(os.environ, PYTHONUNBUFFERED="1"), capture_output=True, text=True,
                                  timeout=args.timeout or None)
            lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
            report[name] = json.loads(lines[-1][7:]) if lines and not proc.returncode else {
                "error": (proc.stderr or proc.stdout)[-3000:]}
        except subprocess.TimeoutExpired:
            report[name] = {"error": f"timed out after {args.timeout} s"}
        print(f"{name}: {json.dumps(report[name])[:800]} ({time.perf_counter() - t0:.0f} s)", flush=True)
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
