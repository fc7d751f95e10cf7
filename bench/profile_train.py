"""Where the GPU time of the product's training step goes: torch.profiler over `medembed.train.recipe.train`.

Same model, data and TrainConfig as bench_train.py's product variant. Profiles `--steps` optimizer steps
after `--warmup` (compilation happens there), then groups CUDA kernel time into matmul / attention /
elementwise+norm / copies / other and compares it with the wall time (the rest is GPU idle: waiting on
the CPU, the data loader or synchronisation). Writes JSON (+ the profiler's top-kernel table) to --out.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import ROOT, SHAPES, benchmark_model, parse_overrides, product_path, synthetic_pairs  # noqa: E402

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CATEGORIES = [
    ("attention", re.compile(r"flash|fmha|attn|attention|softmax", re.I)),
    ("matmul", re.compile(r"gemm|nvjet|cutlass|sm90_|sm100_|matmul|cublas|xmma|wgmma", re.I)),
    ("copy_cast_scatter", re.compile(r"copy|cast|index|scatter|gather|cat_|fill|memset|memcpy", re.I)),
    ("elementwise_norm_fused", re.compile(r"triton|elementwise|layer_norm|norm|gelu|dropout|reduce|vectorized|add|mul|tanh|exp", re.I)),
]


# Inductor names a fused kernel after every op it fused ("triton_per_fused__to_copy_add_native_dropout_native_
# layer_norm_..."): one that also normalises / activates / adds is compute, not a copy. (The profiles of
# the previous session counted such kernels as "copy_cast_scatter" because "copy" matched first.)
_TRITON_COMPUTE = re.compile(r"layer_norm|gelu|dropout|_add|_mul|_sum|_mean|tanh|_exp|_div|_sub|softmax|_rsqrt|_pow", re.I)


def categorise(name: str) -> str:
    if name.startswith("triton_"):
        return "elementwise_norm_fused" if _TRITON_COMPUTE.search(name) else "copy_cast_scatter"
    for category, pattern in CATEGORIES:
        if pattern.search(name):
            return category
    return "other"


def summarise(prof, wall_s: float, cuda: bool, out: Path) -> dict:
    """Kernel time by category against the wall time; writes the profiler's tables (by GPU and by CPU
    self time) to `out`."""
    from torch.autograd import DeviceType

    events = prof.key_averages()
    kernel_us: dict[str, float] = {}
    by_category: dict[str, float] = {}
    for event in events:
        # Kernels only: aten ops carry their kernels' device time too, and would count it twice.
        if event.device_type != DeviceType.CUDA or event.self_device_time_total <= 0:
            continue
        kernel_us[event.key] = kernel_us.get(event.key, 0.0) + event.self_device_time_total
        category = categorise(event.key)
        by_category[category] = by_category.get(category, 0.0) + event.self_device_time_total
    wall_us = wall_s * 1e6
    busy_us = sum(by_category.values())
    top = sorted(kernel_us.items(), key=lambda kv: -kv[1])[:25]
    sort_key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    out.mkdir(parents=True, exist_ok=True)
    (out / "profile-table.txt").write_text(events.table(sort_by=sort_key, row_limit=40, max_name_column_width=90))
    (out / "profile-cpu-table.txt").write_text(events.table(sort_by="self_cpu_time_total", row_limit=40, max_name_column_width=90))
    return {
        "wall_s": round(wall_s, 3),
        "gpu_kernel_s": round(busy_us / 1e6, 3),
        # Under the profiler: its own host overhead makes this a lower bound of the unprofiled figure.
        "gpu_busy_fraction": round(busy_us / wall_us, 3) if wall_us else None,
        "share_of_kernel_time": {k: round(v / busy_us, 3) for k, v in sorted(by_category.items(), key=lambda kv: -kv[1])} if busy_us else {},
        "top_kernels_ms": [{"kernel": k[:120], "ms": round(v / 1e3, 1), "category": categorise(k)} for k, v in top],
        "cpu_self_s": round(sum(e.self_cpu_time_total for e in events) / 1e6, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default=None)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--product", action="append", default=[], help="TrainConfig override key=value")
    parser.add_argument("--model-dir", default=None)
    parser.add_argument("--out", default="profile")
    args = parser.parse_args()

    import torch
    from torch.profiler import ProfilerActivity, profile
    from transformers import TrainerCallback

    from medembed.artifacts import TRAIN_FILE
    from medembed.config import CLUSTER
    from medembed.train import recipe

    cuda = torch.cuda.is_available()
    shape, tokenizer, model_dir = benchmark_model(args.shape, args.model_dir)
    overrides = product_path(shape)
    overrides.update(parse_overrides(args.product))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    state = {}

    class Profiler(TrainerCallback):
        def on_step_begin(self, a, s, c, **kw):
            if s.global_step == args.warmup and "prof" not in state:
                if cuda:
                    torch.cuda.synchronize()
                state["prof"] = profile(activities=activities)
                state["prof"].__enter__()
                state["start"] = time.perf_counter()
                print(f"profiling steps {args.warmup + 1}-{args.warmup + args.steps}", flush=True)

        def on_step_end(self, a, s, c, **kw):
            if "prof" in state and "wall" not in state and s.global_step == args.warmup + args.steps:
                if cuda:
                    torch.cuda.synchronize()
                state["wall"] = time.perf_counter() - state["start"]
                state["prof"].__exit__(None, None, None)
                c.should_training_stop = True

    rows = synthetic_pairs(tokenizer, overrides["batch_size"] * (args.warmup + args.steps + 1), seed=1)
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        (work / "train").mkdir()
        (work / "train" / TRAIN_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))
        dims = tuple(d for d in CLUSTER.train.matryoshka_dims if d <= SHAPES[shape]["hidden_size"])
        config = dataclasses.replace(CLUSTER.train, base_model=str(model_dir), epochs=1, warmup_steps=0, eval_steps=0,
                                     checkpoint_uri="", matryoshka_dims=dims, **overrides)
        t0 = time.perf_counter()
        result = recipe.train(work / "train", work / "model", config, work / "work", callbacks=[Profiler()])
        print(f"trained {result.steps} steps in {time.perf_counter() - t0:.0f} s (packed={result.packed_attention})", flush=True)

    report = {"shape": shape, "config": overrides, "packed_attention": result.packed_attention,
              "profiled_steps": args.steps, **summarise(state["prof"], state["wall"], cuda, out)}
    (out / "profile.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
