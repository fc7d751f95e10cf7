"""Cost of the Matryoshka evaluation grid: all dims x all precisions vs one full-dim float32
evaluation of the same model, both including the encoding (the grid must ride on one encode).

    make bench-eval            # or: .venv/bin/python bench/bench_eval.py [--repeats 2]

Bundled MiniLM on the first rows of the bundled MedQuAD sample (questions as queries, their
answers as relevant passages), on this machine's CPU (or GPU when present). Prints one JSON object on its last line and writes bench/results/eval-cpu.json.
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from medembed import artifacts  # noqa: E402
from medembed.evaluate import evaluator  # noqa: E402
from medembed.prep.ingest import BUNDLED_DATA  # noqa: E402
from medembed.config import BUNDLED_MEDQUAD_SAMPLE, BUNDLED_MINILM, LOCAL, EvalConfig  # noqa: E402
from medembed.encoding import encode  # noqa: E402
from medembed.models import configure_torch, load_model, setup_logging  # noqa: E402

log = logging.getLogger("bench_eval")
RESULTS = Path(__file__).resolve().parent / "results" / "eval-cpu.json"


def write_beir_sample(folder: Path, max_pairs: int) -> Path:
    """queries.jsonl / corpus.jsonl / qrels.tsv from the first `max_pairs` sample rows; identical
    texts share one id, so a query can have several relevant passages."""
    query_ids: dict[str, str] = {}
    passage_ids: dict[str, str] = {}
    qrels: set[tuple[str, str]] = set()
    with gzip.open(BUNDLED_DATA[BUNDLED_MEDQUAD_SAMPLE], "rt", encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            if not row.get("question") or not row.get("answer"):
                continue
            qid = query_ids.setdefault(row["question"], f"q{len(query_ids)}")
            pid = passage_ids.setdefault(row["answer"], f"d{len(passage_ids)}")
            qrels.add((qid, pid))
            if len(qrels) >= max_pairs:
                break
    folder.mkdir(parents=True, exist_ok=True)
    (folder / artifacts.QUERIES_FILE).write_text("".join(json.dumps({"_id": i, "text": t}) + "\n" for t, i in query_ids.items()))
    (folder / artifacts.CORPUS_FILE).write_text("".join(json.dumps({"_id": i, "text": t}) + "\n" for t, i in passage_ids.items()))
    (folder / artifacts.QRELS_FILE).write_text("query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{p}\t1\n" for q, p in sorted(qrels)))
    return folder


def timed_evaluation(model, collection, dims, precisions, config, device) -> dict:
    """One evaluation as the pipeline runs it: encode once, score the requested cells, summarise."""
    start = time.perf_counter()
    queries = encode(model, list(collection.queries.values()), "query", config.batch_size)
    after_queries = time.perf_counter()
    corpus = encode(model, list(collection.corpus.values()), "document", config.batch_size)
    after_corpus = time.perf_counter()
    per_query, latency = evaluator.score_grid(queries, corpus, collection.judgements, dims, precisions,
                                       config.query_chunk_size, config.rescore_multiplier, device)
    summary = evaluator.summarize({"finetuned": per_query}, {"finetuned": latency}, dims, precisions,
                           len(collection.corpus), config)
    end = time.perf_counter()
    return {"total_s": end - start, "encode_queries_s": after_queries - start,
            "encode_corpus_s": after_corpus - after_queries, "search_and_metrics_s": end - after_corpus,
            "summary": summary}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=2, help="rounds of (one, all); the fastest of each counts")
    parser.add_argument("--max-pairs", type=int, default=400, help="sample rows turned into the IR set")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    setup_logging()
    device = configure_torch()
    import torch

    config = EvalConfig(batch_size=LOCAL.eval.batch_size)
    dims = sorted(LOCAL.train.matryoshka_dims, reverse=True)
    with tempfile.TemporaryDirectory() as work:
        collection = evaluator.IRCollection("medquad-sample", write_beir_sample(Path(work) / "eval", args.max_pairs))
    model = load_model(BUNDLED_MINILM, max_seq_length=LOCAL.train.max_seq_length, device=device)
    log.info("%d queries, %d passages; dims %s; precisions %s", len(collection.queries), len(collection.corpus),
             dims, config.precisions)
    # Warm-up outside the timings: first calls pay for lazy imports and allocator growth.
    evaluator.encode_ir_set(model, dict(list(collection.queries.items())[:8]), dict(list(collection.corpus.items())[:8]), 8)
    one, everything = [], []
    for round_ in range(args.repeats):
        log.info("round %d/%d: one full-dim float32 evaluation", round_ + 1, args.repeats)
        one.append(timed_evaluation(model, collection, dims[:1], ("float32",), config, device))
        log.info("round %d/%d: all %d dims x %d precisions", round_ + 1, args.repeats, len(dims), len(config.precisions))
        everything.append(timed_evaluation(model, collection, dims, config.precisions, config, device))
    best_one = min(one, key=lambda r: r["total_s"])
    best_all = min(everything, key=lambda r: r["total_s"])
    fastest_corpus_encode = min(r["encode_corpus_s"] for r in one + everything)
    # Both arms run the identical encode; on a shared CPU its time swings more than the whole grid
    # costs, so the ratio charges both arms the fastest encode seen plus their own fastest scoring.
    encode_s = min(r["encode_queries_s"] + r["encode_corpus_s"] for r in one + everything)
    one_s = encode_s + min(r["search_and_metrics_s"] for r in one)
    all_s = encode_s + min(r["search_and_metrics_s"] for r in everything)
    grid = best_all["summary"]["grid"]["finetuned"]
    result = {
        "bench": "eval-grid",
        "model": BUNDLED_MINILM,
        "data": f"{BUNDLED_MEDQUAD_SAMPLE}, first {args.max_pairs} pairs",
        "device": device,
        "torch_threads": torch.get_num_threads(),
        "n_queries": len(collection.queries),
        "n_corpus": len(collection.corpus),
        "dims": dims,
        "precisions": list(config.precisions),
        "cells": len(dims) * len(config.precisions),
        "one_full_dim_float32_s": round(one_s, 3),
        "all_dims_all_precisions_s": round(all_s, 3),
        "all_vs_one_ratio": round(all_s / one_s, 3),
        "all_vs_one_ratio_wall": round(best_all["total_s"] / best_one["total_s"], 3),
        "ratio_method": "fastest encode seen (identical in both arms) + each arm's fastest scoring; _wall: fastest whole runs",
        "encode_s": round(encode_s, 3),
        "grid_search_and_metrics_s": round(min(r["search_and_metrics_s"] for r in everything), 3),
        "one_search_and_metrics_s": round(min(r["search_and_metrics_s"] for r in one), 3),
        "passages_per_s_cpu" if device == "cpu" else f"passages_per_s_{device}": round(len(collection.corpus) / fastest_corpus_encode, 1),
        "ndcg_at_10": {d: {p: round(cells[p]["ndcg@10"], 4) for p in cells} for d, cells in grid.items()},
        "latency_ms_per_query": {d: {p: round(cells[p]["latency_ms_per_query"], 3) for p in cells} for d, cells in grid.items()},
        "recommendation": {k: best_all["summary"]["recommendation"][k] for k in ("dim", "precision", "bytes_per_vector", "score", "reference_score")},
        "repeats": args.repeats,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
