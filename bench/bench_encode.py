"""Encoding throughput, side by side in one run: sentence-transformers as shipped vs the product's encoder.

- naive: `SentenceTransformer.encode_document` with library defaults (fp32 weights, batch 32);
- competent: the same in bf16 (weights loaded as bf16), at its best batch size out of `--st-batch-size`
  (several tried, the fastest kept), tensors kept on the GPU (`convert_to_tensor=True`);
- product: `medembed.encoding.encode` (the evaluation / mining encoder) with its defaults: on CUDA the
  packed-row graph encoder (graph_encoder.py: whole encoder compiled once, CUDA graphs, bf16 weight copy);
  `--variants` may add `packed` (the previous per-layer compiled path, `graph="off"`).

Random-init e5-large shape on a GPU (tiny on CPU), passages of 64-256 tokens with the "passage: " prompt.
MFU: 2 x non-embedding params x real tokens + attention (4 x layers x hidden x length^2) per passage,
against `--peak-tflops` (790: bf16 dense matmul measured on this H200, docs/STACK-NOTES.md §3). Agreement: cosine of the
product's embeddings with the competent (bf16) and naive (fp32) sentence-transformers embeddings of the
same passages. Prints one JSON object last; `--out` writes it (bench/results/encode-h200.json).
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
if importlib.util.find_spec("medembed") is None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_train import benchmark_model, model_flops, synthetic_pairs, token_lengths, versions  # noqa: E402

PROMPTS = {"query": "query: ", "document": "passage: "}


def _sync():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _measure(fn, n: int, flops: float, tokens: int, peak_tflops: float) -> tuple[dict, object]:
    import torch

    cuda = torch.cuda.is_available()
    _sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    out = fn()
    _sync()
    seconds = time.perf_counter() - start
    return {
        "passages_per_s": round(n / seconds, 1),
        "tokens_per_s": round(tokens / seconds),
        "mfu": round(flops / seconds / (peak_tflops * 1e12), 4),
        "seconds": round(seconds, 3),
        "passages": n,
        "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
    }, out


def _cosine(a, b) -> dict:
    import torch

    cos = torch.nn.functional.cosine_similarity(a.float().cpu(), b.float().cpu(), dim=1)
    return {"min": round(float(cos.min()), 6), "mean": round(float(cos.mean()), 6), "n": int(cos.numel())}


def _st_tokenize_rates(model, texts: list[str], batch: int) -> dict:
    """How fast sentence-transformers' encode can tokenise (its main loop calls model.preprocess per batch),
    with the tokenizers library's parallelism as the process has it, and with it switched off (the first
    H200 run's mistake). A baseline whose encode rate is near the serial rate is tokeniser-bound."""
    prompted = texts

    def rate(subset):
        start = time.perf_counter()
        for i in range(0, len(subset), batch):
            model.preprocess(subset[i : i + batch], prompt=PROMPTS["document"])
        return round(len(subset) / (time.perf_counter() - start), 1)

    env = os.environ.get("TOKENIZERS_PARALLELISM")
    as_run = rate(prompted)
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        serial = rate(prompted[: max(batch, len(prompted) // 8)])
    finally:
        if env is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = env
    return {"TOKENIZERS_PARALLELISM": env, "passages_per_s": as_run, "serial_passages_per_s": serial,
            "batch_size": batch, "passages": len(prompted)}


def _compile_state(model) -> dict:
    """Compiled graphs and CUDA-graph row shapes so far: any change inside a timed pass voids it."""
    from torch._dynamo.utils import counters

    cached = getattr(model, "_medembed_graph_encoder", None)
    return {"graphs": int(counters["stats"].get("unique_graphs", 0)),
            "row_shapes": len(cached.shapes) if cached is not None else 0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default=None)
    parser.add_argument("--passages", type=int, default=None, help="product passes; default 32768 on GPU, 256 on CPU")
    parser.add_argument("--st-passages", type=int, default=None, help="competent ST passes; default 16384 on GPU")
    parser.add_argument("--naive-passages", type=int, default=None, help="naive ST pass; default 4096 on GPU")
    parser.add_argument("--st-batch-size", type=int, action="append", default=None,
                        help="batch sizes tried for the competent baseline (repeatable); default 64,128,256,512")
    parser.add_argument("--variants", default="naive,competent,product", help="any of naive,competent,product,packed")
    parser.add_argument("--repeats", type=int, default=2, help="timed product passes (the best is reported)")
    parser.add_argument("--graph", default="auto", help="product: graph encoder auto/on/off (on: also eager on CPU)")
    parser.add_argument("--graph-compile", default="reduce-overhead", help="product: graph encoder compile mode")
    parser.add_argument("--row-tokens", type=int, default=0, help="product: tokens per packed row (0 = default)")
    parser.add_argument("--workers", type=int, default=-1, help="tokenising processes (-1: the encoder's default)")
    parser.add_argument("--profile", default=None, help="also profile one product pass into this folder")
    parser.add_argument("--st-repeats", type=int, default=2, help="timed passes at the best ST batch size (best kept)")
    parser.add_argument("--extra-workers", type=int, action="append", default=[],
                        help="also time one product pass with this many tokenising processes (repeatable)")
    parser.add_argument("--allow-serial-tokenizers", action="store_true",
                        help="on a GPU, run even with TOKENIZERS_PARALLELISM=false (the ST baselines are then invalid)")
    parser.add_argument("--peak-tflops", type=float, default=790.0)
    parser.add_argument("--model-dir", default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    import torch
    from sentence_transformers import SentenceTransformer

    from medembed.encoding import encode, tokenize_only
    from medembed.models import configure_torch

    cuda = torch.cuda.is_available()
    serial_env = os.environ.get("TOKENIZERS_PARALLELISM", "").lower() in ("0", "false", "off", "no")
    if cuda and serial_env and not args.allow_serial_tokenizers:
        # The first H200 run of issue 14 did this: sentence-transformers' encode then tokenises each batch on
        # one thread, and its baseline measures the tokeniser, not the library.
        sys.exit("TOKENIZERS_PARALLELISM is false: sentence-transformers' encode would tokenise on one thread. "
                 "Unset it (or pass --allow-serial-tokenizers).")
    variants = [v for v in args.variants.split(",") if v]
    shape, tokenizer, model_dir = benchmark_model(args.shape, args.model_dir)
    n = args.passages or (32768 if cuda else 256)
    n_st = min(n, args.st_passages or (16384 if cuda else 128))
    n_naive = min(n, args.naive_passages or (4096 if cuda else 64))
    batch_sizes = args.st_batch_size or ([64, 128, 256, 512] if cuda else [16, 64])
    device = "cuda" if cuda else "cpu"  # the naive baseline runs with torch's defaults: configure_torch() after it
    texts = [r["positive"] for r in synthetic_pairs(tokenizer, n, seed=2)]
    report: dict = {"shape": shape, "peak_tflops": args.peak_tflops, "versions": versions(), "device": device}

    def save():  # after every variant: a run cut short still leaves what it measured
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(report, indent=2))

    def costs(model, subset):
        lengths = token_lengths(model, subset, PROMPTS["document"])
        return model_flops(model, lengths, train=False), sum(lengths)

    embeddings = {}
    if "naive" in variants:
        model = SentenceTransformer(str(model_dir), device=device)
        model.prompts = dict(PROMPTS)
        subset = texts[:n_naive]
        flops, tokens = costs(model, subset)
        model.encode_document(subset[:64], convert_to_tensor=True)  # warm-up (cuBLAS handles)
        result, out = _measure(lambda: model.encode_document(subset, convert_to_tensor=True), len(subset), flops,
                               tokens, args.peak_tflops)
        result["config"] = "SentenceTransformer.encode_document defaults: fp32 weights, batch 32, torch defaults (no TF32)"
        embeddings["naive"] = out.float().cpu()
        report["naive"] = result
        print("naive:", json.dumps(result), flush=True)
        save()
        del model, out
        gc.collect()
        torch.cuda.empty_cache() if cuda else None
    default_threads = torch.get_num_threads()
    configure_torch()  # TF32, cuDNN attention off, one CPU thread: the product's settings, also for (b)

    if "competent" in variants:
        dtype = torch.bfloat16 if cuda else torch.float32
        model = SentenceTransformer(str(model_dir), device=device, model_kwargs={"torch_dtype": dtype})
        model.prompts = dict(PROMPTS)
        subset = texts[:n_st]
        flops, tokens = costs(model, subset)
        by_batch = {}
        for batch in batch_sizes:
            model.encode_document(subset[: 2 * batch], batch_size=batch, convert_to_tensor=True)  # warm-up
            result, out = _measure(lambda: model.encode_document(subset, batch_size=batch, convert_to_tensor=True),
                                   len(subset), flops, tokens, args.peak_tflops)
            by_batch[batch] = result
            print(f"competent batch {batch}:", json.dumps(result), flush=True)
            if result["passages_per_s"] >= max(r["passages_per_s"] for r in by_batch.values()):
                embeddings["competent"] = out.float().cpu()
            del out
        best = max(by_batch, key=lambda b: by_batch[b]["passages_per_s"])
        repeats = [by_batch[best]]
        for _ in range(max(0, args.st_repeats - 1)):
            result, out = _measure(lambda: model.encode_document(subset, batch_size=best, convert_to_tensor=True),
                                   len(subset), flops, tokens, args.peak_tflops)
            print(f"competent batch {best} again:", json.dumps(result), flush=True)
            repeats.append(result)
            del out
        by_batch[best] = max(repeats, key=lambda r: r["passages_per_s"])
        by_batch[best]["repeats_passages_per_s"] = [r["passages_per_s"] for r in repeats]
        if cuda:  # and once with torch's own defaults (cuDNN attention on, all CPU threads): the faster counts
            settings = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cuda.cudnn_sdp_enabled(), torch.get_num_threads())
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cuda.enable_cudnn_sdp(True)
            torch.set_num_threads(default_threads)
            try:
                model.encode_document(subset[: 2 * best], batch_size=best, convert_to_tensor=True)  # new attention plans
                result, out = _measure(lambda: model.encode_document(subset, batch_size=best, convert_to_tensor=True),
                                       len(subset), flops, tokens, args.peak_tflops)
                del out
            finally:
                torch.backends.cuda.matmul.allow_tf32 = settings[0]
                torch.backends.cuda.enable_cudnn_sdp(settings[1])
                torch.set_num_threads(settings[2])
            result["torch_settings"] = f"torch defaults (cuDNN attention on, {default_threads} threads)"
            print(f"competent batch {best}, torch defaults:", json.dumps(result), flush=True)
            by_batch[best]["torch_defaults"] = result
        chosen = by_batch[best]
        if cuda and by_batch[best]["torch_defaults"]["passages_per_s"] > chosen["passages_per_s"]:
            chosen = {**by_batch[best]["torch_defaults"], "repeats_passages_per_s": chosen["repeats_passages_per_s"]}
        tokenizing = _st_tokenize_rates(model, subset, best)
        print("sentence-transformers tokenising (its encode's main loop):", json.dumps(tokenizing), flush=True)
        report["competent"] = {**chosen, "batch_size": best, "by_batch_size": by_batch,
                               "st_tokenize": tokenizing,
                               "config": f"SentenceTransformer.encode_document, weights in {str(dtype)[6:]}, "
                                         "convert_to_tensor=True, best batch size of those tried (TF32 and "
                                         "cuDNN attention off: the product's torch settings), then that batch "
                                         "size again with torch's defaults; the faster of the two is reported"}
        if cuda and serial_env:
            report["competent"]["invalid"] = "TOKENIZERS_PARALLELISM=false: its encode tokenised on one thread"
        save()
        del model
        gc.collect()
        torch.cuda.empty_cache() if cuda else None

    model = SentenceTransformer(str(model_dir), device=device)  # fp32 weights, as every stage loads it
    model.prompts = dict(PROMPTS)
    flops, tokens = costs(model, texts)
    start = time.perf_counter()
    tokenize_only(model, texts, PROMPTS["document"], 256, workers=args.workers)
    report["tokenize_only_passages_per_s"] = round(n / (time.perf_counter() - start), 1)
    print(f"tokenisation alone: {report['tokenize_only_passages_per_s']} passages/s", flush=True)

    product_variants = [("product", dict(graph=args.graph, graph_compile=args.graph_compile, row_tokens=args.row_tokens))]
    if "packed" in variants:
        product_variants.append(("packed", dict(graph="off")))
    for name, opts in product_variants:
        if name not in variants:
            continue
        opts = dict(opts, workers=args.workers, show_progress_bar=False)
        start = time.perf_counter()
        encode(model, texts, "document", 256, **opts)  # warm-up: compiles, records every row shape
        _sync()
        first = round(time.perf_counter() - start, 1)
        before = _compile_state(model)
        runs = []
        for _ in range(max(1, args.repeats)):
            result, out = _measure(lambda: encode(model, texts, "document", 256, **opts), n, flops, tokens,
                                   args.peak_tflops)
            runs.append(result)
        after = _compile_state(model)
        best = max(runs, key=lambda r: r["passages_per_s"])
        result = {**best, "repeats_passages_per_s": [r["passages_per_s"] for r in runs], "first_pass_seconds": first,
                  "compiled_while_timed": {k: after[k] - before[k] for k in before},
                  "options": {k: v for k, v in opts.items() if k != "show_progress_bar"},
                  "precision": "bf16" if cuda else "fp32"}
        cached = getattr(model, "_medembed_graph_encoder", None)
        if name == "product" and cached is not None and getattr(cached, "tokenizer_pool", None) is not None:
            # The timed passes reuse the tokenising processes the warm-up pass started (as every later encode
            # of the same model does). One more pass after stopping them: what a model's first call pays.
            cached.close()
            before_cold = _compile_state(model)
            cold, _ = _measure(lambda: encode(model, texts, "document", 256, **opts), n, flops, tokens, args.peak_tflops)
            cold["compiled_while_timed"] = {k: v - before_cold[k] for k, v in _compile_state(model).items()}
            result["first_call_pass"] = {**cold, "note": "tokenising processes started inside this pass"}
        if name == "product" and cached is not None:
            result["graph_encoder"] = {"compile_mode": cached.compile_mode, "row_tokens": cached.row_tokens,
                                       "row_shapes": sorted(cached.shapes), "bf16_copy": cached.owns_copy,
                                       "tokenizer_processes_kept": getattr(cached, "tokenizer_pool", None) is not None}
            # The GPU side alone: rows tokenised and packed before the clock starts (what the device could
            # do if tokenising kept up), to tell a CPU-bound pass from a GPU-bound one.
            from medembed import graph_encoder

            from medembed.encoding import default_workers

            workers = opts["workers"] if opts["workers"] >= 0 else default_workers(device)
            rows = graph_encoder.prepare_rows(model, texts, PROMPTS["document"], workers=workers,
                                              compile_mode=args.graph_compile, row_tokens=args.row_tokens or graph_encoder.ROW_TOKENS)
            gpu_only, _ = _measure(lambda: graph_encoder.encode_rows(model, rows, n, compile_mode=args.graph_compile,
                                                                     row_tokens=args.row_tokens or graph_encoder.ROW_TOKENS),
                                   n, flops, tokens, args.peak_tflops)
            gpu_only["rows"] = len(rows)
            gpu_only["padding_fraction"] = round(1 - tokens / sum(r["width"] for r in rows), 4)
            result["gpu_side_only"] = gpu_only
            del rows
        if name == "product":
            agreement = {}
            if "competent" in embeddings:
                agreement["vs_competent_bf16"] = _cosine(out[:n_st], embeddings["competent"])
            if "naive" in embeddings:
                agreement["vs_naive_fp32"] = _cosine(out[:n_naive], embeddings["naive"])
            result["cosine"] = agreement
            if "competent" in report and "invalid" not in report["competent"]:
                result["speedup_vs_competent"] = round(result["passages_per_s"] / report["competent"]["passages_per_s"], 3)
            if "naive" in report:
                result["speedup_vs_naive"] = round(result["passages_per_s"] / report["naive"]["passages_per_s"], 3)
        from torch._dynamo.utils import counters

        result["compile_counters"] = {"unique_graphs": counters["stats"].get("unique_graphs", 0),
                                      "graph_breaks": sum(counters["graph_break"].values()),
                                      "cudagraph_skips": counters["inductor"].get("cudagraph_skips", 0)}
        if any(result["compiled_while_timed"].values()):
            result["invalid"] = f"compiled or recorded inside the timed passes: {result['compiled_while_timed']}"
        report[name] = result
        print(f"{name}:", json.dumps(result), flush=True)
        save()
        if name == "product":
            for count in args.extra_workers:  # same texts, same row shapes: no compilation
                before = _compile_state(model)
                extra, _ = _measure(lambda: encode(model, texts, "document", 256, **dict(opts, workers=count)), n,
                                    flops, tokens, args.peak_tflops)
                extra["compiled_while_timed"] = {k: v - before[k] for k, v in _compile_state(model).items()}
                if any(extra["compiled_while_timed"].values()):
                    extra["invalid"] = "compiled or recorded inside the timed pass"
                report.setdefault("product_workers", {})[str(count)] = extra
                print(f"product, {count} tokenising processes:", json.dumps(extra), flush=True)
                save()

    if args.profile and "product" in variants:
        from torch.profiler import ProfilerActivity, profile

        from profile_train import summarise

        opts = dict(graph=args.graph, graph_compile=args.graph_compile, row_tokens=args.row_tokens, workers=args.workers,
                    show_progress_bar=False)
        with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
            start = time.perf_counter()
            encode(model, texts, "document", 256, **opts)
            _sync()
            wall = time.perf_counter() - start
        report["product"]["profile"] = summarise(prof, wall, cuda, Path(args.profile))
        print("profile:", json.dumps({k: v for k, v in report["product"]["profile"].items() if k != "top_kernels_ms"}),
              flush=True)
    save()
    print(json.dumps(report))
    bad = {k: v["invalid"] for k, v in report.items() if isinstance(v, dict) and "invalid" in v}
    bad.update({f"product_workers.{k}": v["invalid"] for k, v in report.get("product_workers", {}).items() if "invalid" in v})
    if bad:
        print(f"BENCH INVALID: {json.dumps(bad)}", file=sys.stderr, flush=True)
        sys.exit(3)


if __name__ == "__main__":
    main()
