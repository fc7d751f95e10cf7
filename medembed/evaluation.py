"""Matryoshka retrieval evaluation: encode once at full dimension, truncate and re-normalise
for every dim, exact top-k search in chunks, IR metrics per dim for base vs fine-tuned.

Encoding once and truncating gives the same metrics as one `InformationRetrievalEvaluator` per
truncate_dim at a fraction of the cost (GUIDE §4); the metric definitions follow that evaluator.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

from .data import fingerprint, ir_files, read_ir_set

log = logging.getLogger(__name__)

RECALL_PRECISION_KS = (1, 3, 5, 10, 100)
HEADLINE_METRICS = ("ndcg@10", "mrr@10", "map@100", "recall@1", "recall@5", "recall@10",
                    "precision@1", "precision@5", "precision@10", "f1@10")
MAX_K = 100


def truncate_normalize(embeddings, dim: int):
    """First `dim` coordinates, scaled back to unit length (truncation breaks normalisation)."""
    import torch

    cut = embeddings[:, :dim].float()
    return torch.nn.functional.normalize(cut, p=2, dim=1)


def top_k(query_emb, corpus_emb, k: int, query_chunk: int = 1024, corpus_chunk: int = 65536):
    """Exact cosine top-k (inputs unit-normalised) without materialising the full score matrix."""
    import torch

    k = min(k, corpus_emb.shape[0])
    all_scores, all_indices = [], []
    for q_start in range(0, query_emb.shape[0], query_chunk):
        q = query_emb[q_start : q_start + query_chunk]
        best_scores = best_indices = None
        for c_start in range(0, corpus_emb.shape[0], corpus_chunk):
            scores = q @ corpus_emb[c_start : c_start + corpus_chunk].T
            s, i = scores.topk(min(k, scores.shape[1]), dim=1)
            i = i + c_start
            if best_scores is not None:
                s, order = torch.cat([best_scores, s], 1).topk(k, dim=1)
                i = torch.cat([best_indices, i], 1).gather(1, order)
            best_scores, best_indices = s, i
        all_scores.append(best_scores.cpu())
        all_indices.append(best_indices.cpu())
    return torch.cat(all_scores), torch.cat(all_indices)


def per_query_metrics(ranked: list[list[str]], qrels: list[dict[str, int]]) -> dict[str, np.ndarray]:
    """Per-query metric values. `ranked[i]` is query i's ranked passage ids, `qrels[i]` its
    relevance grades (> 0 is relevant). NDCG uses the grade as gain (linear, as trec_eval)."""
    n = len(ranked)
    out: dict[str, np.ndarray] = {}
    names = [f"{m}@{k}" for k in RECALL_PRECISION_KS for m in ("recall", "precision", "f1", "accuracy", "mrr", "ndcg", "map")]
    for name in names:
        out[name] = np.zeros(n)
    discounts = 1.0 / np.log2(np.arange(2, MAX_K + 2))
    for qi, (ranking, grades) in enumerate(zip(ranked, qrels)):
        relevant = {pid for pid, g in grades.items() if g > 0}
        if not relevant:
            continue
        gains = np.array([grades.get(pid, 0) if pid in relevant else 0 for pid in ranking[:MAX_K]], dtype=float)
        hits = gains > 0
        ideal = np.sort(np.array([grades[p] for p in relevant], dtype=float))[::-1]
        for k in RECALL_PRECISION_KS:
            hit_k = hits[:k]
            n_hits = int(hit_k.sum())
            recall = n_hits / len(relevant)
            precision = n_hits / k
            out[f"recall@{k}"][qi] = recall
            out[f"precision@{k}"][qi] = precision
            out[f"f1@{k}"][qi] = 2 * recall * precision / (recall + precision) if n_hits else 0.0
            out[f"accuracy@{k}"][qi] = float(n_hits > 0)
            first = np.flatnonzero(hit_k)
            out[f"mrr@{k}"][qi] = 1.0 / (first[0] + 1) if first.size else 0.0
            dcg = float((gains[:k] * discounts[: min(k, gains.size)]).sum())
            idcg = float((ideal[:k] * discounts[: min(k, ideal.size)]).sum())
            out[f"ndcg@{k}"][qi] = dcg / idcg if idcg else 0.0
            # MAP@k as sentence-transformers defines it: normalised by min(k, #relevant).
            precisions_at_hits = np.cumsum(hit_k)[hit_k] / (np.flatnonzero(hit_k) + 1)
            out[f"map@{k}"][qi] = float(precisions_at_hits.sum()) / min(k, len(relevant))
    return out


def encode_ir_set(model, queries: dict[str, str], corpus: dict[str, str], batch_size: int):
    """Full-dim embeddings with the model's query and document prompts."""
    from .encoding import encode

    return (encode(model, list(queries.values()), "query", batch_size),
            encode(model, list(corpus.values()), "document", batch_size))


def score_dims(query_emb, corpus_emb, query_ids, corpus_ids, qrels, dims, query_chunk: int = 1024):
    """Metrics per dim from full-dim embeddings: {dim: {metric: mean}}, plus per-query values."""
    means: dict[str, dict[str, float]] = {}
    per_query: dict[str, dict[str, np.ndarray]] = {}
    judged = [qrels.get(qid, {}) for qid in query_ids]
    for dim in dims:
        _, indices = top_k(truncate_normalize(query_emb, dim), truncate_normalize(corpus_emb, dim), MAX_K, query_chunk)
        ranked = [[corpus_ids[i] for i in row] for row in indices.tolist()]
        values = per_query_metrics(ranked, judged)
        per_query[str(dim)] = values
        means[str(dim)] = {name: float(v.mean()) for name, v in values.items()}
    return means, per_query


def evaluate(eval_dir: Path, finetuned_ref: str, base_ref: str, dims: list[int], query_prompt: str,
             passage_prompt: str, batch_size: int, query_chunk: int = 1024) -> dict:
    """Base vs fine-tuned at every dim on the prepared IR set."""
    from .models import configure_torch, load_model

    device = configure_torch()
    queries, corpus, qrels = read_ir_set(Path(eval_dir))
    queries = {qid: text for qid, text in queries.items() if qid in qrels}
    query_ids, corpus_ids = list(queries), list(corpus)
    dims = sorted({int(d) for d in dims}, reverse=True)
    results: dict = {
        "dims": dims,
        "base_model": base_ref,
        "n_queries": len(queries),
        "n_corpus": len(corpus),
        "eval_fingerprint": fingerprint(ir_files(Path(eval_dir))),
    }
    for label, ref in (("base", base_ref), ("finetuned", finetuned_ref)):
        log.info("encoding %d queries and %d passages with the %s model", len(queries), len(corpus), label)
        model = load_model(ref, query_prompt, passage_prompt, device=device)
        if model.get_embedding_dimension() < dims[0]:
            raise ValueError(f"{label} model has {model.get_embedding_dimension()} dims, fewer than {dims[0]}")
        q, c = encode_ir_set(model, queries, corpus, batch_size)
        results[label], _ = score_dims(q, c, query_ids, corpus_ids, qrels, dims, query_chunk)
        del model
    return results


def comparison_markdown(results: dict, metrics: tuple[str, ...] = HEADLINE_METRICS) -> str:
    """Per-dim table: base -> fine-tuned (delta) for each headline metric."""
    header = "| dim | " + " | ".join(metrics) + " |"
    lines = [
        f"Base model `{results['base_model']}`, {results['n_queries']} queries, {results['n_corpus']} passages. "
        "Cells: base → fine-tuned (Δ).",
        "",
        header,
        "|" + " --- |" * (len(metrics) + 1),
    ]
    for dim in results["dims"]:
        base, tuned = results["base"][str(dim)], results["finetuned"][str(dim)]
        cells = [f"{base[m]:.4f} → {tuned[m]:.4f} ({tuned[m] - base[m]:+.4f})" for m in metrics]
        lines.append(f"| {dim} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def comparison_text(results: dict, metrics: tuple[str, ...] = ("ndcg@10", "mrr@10", "map@100", "recall@10")) -> str:
    """Compact fixed-width table for terminals."""
    head = f"{'dim':>5} " + " ".join(f"{m + ' base':>14} {m + ' ft':>12} {'Δ':>7}" for m in metrics)
    rows = [head]
    for dim in results["dims"]:
        base, tuned = results["base"][str(dim)], results["finetuned"][str(dim)]
        rows.append(f"{dim:>5} " + " ".join(f"{base[m]:>14.4f} {tuned[m]:>12.4f} {tuned[m] - base[m]:>+7.4f}" for m in metrics))
    return "\n".join(rows)


def kfp_metric_name(metric: str, dim: int | str, model: str) -> str:
    """Names that line up in KFP's run-compare view, e.g. `finetuned.dim_256.ndcg_at_10`."""
    return f"{model}.dim_{dim}.{metric.replace('@', '_at_')}"


def isfinite_results(results: dict) -> bool:
    return all(math.isfinite(v) for label in ("base", "finetuned") for d in results[label].values() for v in d.values())
