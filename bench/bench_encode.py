"""Encoding throughput of `medembed.encoding.encode` (the evaluation / mining encoder).

Random-init e5-large shape on a GPU (tiny on CPU), passages of 64-256 tokens, `kind="document"`.
MFU: 2 x non-embedding params x real tokens + attention (4 x layers x hidden x length^2) per passage,
against `--peak-tflops` (790: bf16 dense matmul measured on this H200, docs/STACK-NOTES.md §3).
Prints one JSON object last; `--out` writes it (bench/results/encode-h200.json).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
if importlib.util.find_spec("medembed") is None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_train import benchmark_model, model_flops, synthetic_pairs, token_lengths, versions  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default=None)
    parser.add_argument("--passages", type=int, default=None, help="default: 32768 on GPU, 512 on CPU")
    parser.add_argument("--batch-size", type=int, action="append", default=None, help="repeatable; default 256")
    parser.add_argument("--workers", type=int, default=-1, help="tokenising processes (-1: the encoder's default)")
    parser.add_argument("--packed", default="auto", help="packed_attention: auto/on/off")
    parser.add_argument("--compile", default="auto", help="compile_layers: auto/on/off")
    parser.add_argument("--profile", default=None, help="also profile one pass at the best batch size into this folder")
    parser.add_argument("--peak-tflops", type=float, default=790.0)
    parser.add_argument("--model-dir", default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    import torch
    from sentence_transformers import SentenceTransformer

    from medembed import packing
    from medembed.encoding import encode
    from medembed.models import configure_torch

    cuda = torch.cuda.is_available()
    shape, tokenizer, model_dir = benchmark_model(args.shape, args.model_dir)
    n = args.passages or (32768 if cuda else 512)
    device = configure_torch()
    model = SentenceTransformer(str(model_dir), device=device)
    model.prompts = {"query": "query: ", "document": "passage: "}
    texts = [r["positive"] for r in synthetic_pairs(tokenizer, n, seed=2)]
    lengths = token_lengths(model, texts, "passage: ")
    flops = model_flops(model, lengths, train=False)
    # What the CPU alone can feed: the encoder's own tokenising DataLoader, without the GPU.
    from medembed.encoding import tokenize_only

    start = time.perf_counter()
    tokenize_only(model, texts, "passage: ", 256, workers=args.workers)
    tokenize_per_s = round(n / (time.perf_counter() - start), 1)
    print(f"tokenisation alone: {tokenize_per_s} passages/s", flush=True)
    opts = dict(packed_attention=args.packed, compile_layers=args.compile, workers=args.workers)
    runs = {}
    for batch in args.batch_size or [256]:
        encode(model, texts[: min(len(texts), 4 * batch)], "document", batch, show_progress_bar=False, **opts)  # warm-up (compiles)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        out = encode(model, texts, "document", batch, show_progress_bar=False, **opts)
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        assert out.shape[0] == n and out.dtype == torch.float32
        runs[batch] = {
            "passages_per_s": round(n / seconds, 1),
            "tokens_per_s": round(sum(lengths) / seconds),
            "mfu": round(flops / seconds / (args.peak_tflops * 1e12), 4),
            "seconds": round(seconds, 2),
            "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
        }
        print(f"batch {batch}: {runs[batch]}", flush=True)
    best_batch = max(runs, key=lambda b: runs[b]["passages_per_s"])
    report = {**runs[best_batch], "batch_size": best_batch, "passages": n, "shape": shape,
              "mean_tokens": round(sum(lengths) / n, 1), "by_batch_size": runs, "peak_tflops": args.peak_tflops,
              "precision": "bf16 autocast" if cuda else "fp32", "options": opts,
              "packed": packing.is_enabled(model), "tokenize_only_passages_per_s": tokenize_per_s, "versions": versions()}
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        from profile_train import summarise

        with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
            start = time.perf_counter()
            encode(model, texts, "document", best_batch, show_progress_bar=False, **opts)
            if cuda:
                torch.cuda.synchronize()
            wall = time.perf_counter() - start
        report["profile"] = summarise(prof, wall, cuda, Path(args.profile))
        print("profile:", json.dumps({k: v for k, v in report["profile"].items() if k != "top_kernels_ms"}), flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
