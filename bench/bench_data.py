"""Data prep benchmark: `make bench-data`.

Prep of 100k synthetic templated pairs (mining excluded) and hard-negative mining throughput with
the bundled MiniLM on CPU. Prints one JSON object on its last line and writes
bench/results/data-cpu.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from medembed.prep import stage  # noqa: E402
from medembed.config import CLUSTER, LOCAL  # noqa: E402

QTYPES = {
    "symptoms": "What are the symptoms of {} ?",
    "treatment": "What are the treatments for {} ?",
    "causes": "What causes {} ?",
    "inheritance": "Is {} inherited ?",
    "outlook": "What is the outlook for {} ?",
}
WORDS = ("cell protein muscle nerve blood heart lung liver kidney bone skin immune gene enzyme hormone "
         "infection fever pain swelling rash fatigue weakness therapy surgery drug dose risk child adult "
         "chronic acute rare common severe mild onset diagnosis test scan screening family mutation").split()


def synthetic_rows(n: int, seed: int = 0) -> list[dict]:
    """Templated pairs like MedQuAD: one document per topic, one row per question type, passages of
    40-160 words, a few exact duplicates and shared answers."""
    rng = random.Random(seed)
    rows = []
    topic = 0
    while len(rows) < n:
        name = f"{rng.choice(WORDS)}{topic} {rng.choice(WORDS)} syndrome"
        for qtype, template in QTYPES.items():
            words = [rng.choice(WORDS) for _ in range(rng.randint(40, 160))]
            rows.append({
                "doc_id": f"doc{topic}", "focus": name, "cuis": [f"C{topic:07d}"], "qtype": qtype,
                "question": template.format(name),
                "answer": f"{name} {qtype}: " + " ".join(words) + ".",
            })
        topic += 1
    return rows[:n]


def bench_prep(n: int, work: Path) -> tuple[float, dict]:
    source = work / "synthetic.jsonl"
    with open(source, "w") as handle:
        for row in synthetic_rows(n):
            handle.write(json.dumps(row) + "\n")
    config = dataclasses.replace(LOCAL.data, data_uri=str(source), num_negatives=0, max_train_pairs=0,
                                 group_fields=("doc_id", "focus", "cuis"))
    start = time.perf_counter()
    stats = stage.prepare(config, work / "train", work / "eval", model=LOCAL.train.base_model,
                          max_seq_length=LOCAL.train.max_seq_length, work_dir=work / "tmp")
    return time.perf_counter() - start, stats


def bench_mining(n_queries: int) -> dict:
    """Queries mined per second: encode queries and their training passages with the base model,
    score, guard and pick (what prep's mining step does per training pair)."""
    from medembed.encoding import encode
    from medembed.models import configure_torch, load_model
    from medembed.prep.negatives import mine

    config, model_ref = LOCAL.data, LOCAL.train.base_model
    max_seq_length = config.mining_max_seq_length or LOCAL.train.max_seq_length
    configure_torch()
    import torch

    threads = torch.get_num_threads()
    model = load_model(model_ref, max_seq_length=max_seq_length, device="cpu")
    rows = synthetic_rows(n_queries, seed=1)
    # The product's guard on these rows: same topic and question type (near-duplicate clusters are singletons here).
    guards = [{("fields", r["focus"], r["qtype"])} for r in rows]
    # The local profile mines none (CPU budget); time what the cluster profile asks for, on the local model.
    num_negatives = CLUSTER.data.num_negatives
    start = time.perf_counter()
    _, stats = mine(lambda texts, kind: encode(model, texts, kind, config.mining_batch_size, show_progress_bar=False),
                    [r["question"] for r in rows], [r["answer"] for r in rows], guards,
                    num_negatives, config.negative_margin, config.negative_max_score, config.seed)
    seconds = time.perf_counter() - start
    return {"mining_queries_per_s": round(n_queries / seconds, 2), "mining_queries": n_queries,
            "mining_model": model_ref, "mining_max_seq_length": max_seq_length,
            "mining_torch_threads": threads, "mining_negatives_per_query": num_negatives,
            "mining_negatives_mined": stats.negatives_mined, "mining_skipped_possible_positive": stats.skipped_possible_positive}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pairs", type=int, default=100_000)
    parser.add_argument("--mining-queries", type=int, default=512)
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "data-cpu.json")
    args = parser.parse_args()
    logging.basicConfig(level=os.environ.get("MEDEMBED_LOG_LEVEL", "INFO"), format="%(asctime)s %(name)s: %(message)s")
    with tempfile.TemporaryDirectory() as work:
        seconds, stats = bench_prep(args.pairs, Path(work))
    result = {
        f"prep_seconds_{args.pairs // 1000}k": round(seconds, 2),
        "prep_pairs": args.pairs,
        "prep_pairs_kept": stats.rows_kept,
        "prep_step_seconds": stats.step_seconds,
        "prep_groups_crossing_splits": stats.groups_crossing_splits,
        "prep_near_duplicate_queries_crossing_splits": stats.near_duplicate_queries_crossing_splits,
        **bench_mining(args.mining_queries),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
