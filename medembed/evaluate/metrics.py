"""IR metrics per query (the definitions of sentence-transformers' InformationRetrievalEvaluator;
NDCG with graded gains as trec_eval) and paired bootstrap statistics over queries."""

from __future__ import annotations

import numpy as np

CUTOFFS = (1, 3, 5, 10, 100)
METRIC_FAMILIES = ("ndcg", "mrr", "map", "recall", "precision", "f1", "accuracy")
ALL_METRICS = tuple(f"{m}@{k}" for m in METRIC_FAMILIES for k in CUTOFFS)
HEADLINE_METRICS = ("ndcg@10", "mrr@10", "map@100", "recall@1", "recall@5", "recall@10",
                    "precision@1", "precision@5", "precision@10", "f1@10")
MAX_K = max(CUTOFFS)
GATE_METRIC = "ndcg@10"
# Working-set bounds (elements) for the bootstrap's resample counts and binary rescoring lookups.
BOOTSTRAP_BATCH_ELEMENTS = 20_000_000


def _metrics_from_gains(gains: np.ndarray, ideal: np.ndarray, n_relevant: np.ndarray) -> dict[str, np.ndarray]:
    """Per-query metrics from the gains of the top MAX_K results (n, MAX_K), the ideal gains
    (grades of the relevant passages, descending, same shape) and the count of relevant passages."""
    ranks = np.arange(1, MAX_K + 1)
    discounts = 1.0 / np.log2(ranks + 1)
    hits = gains > 0
    cum_hits = np.cumsum(hits, axis=1)
    dcg = np.cumsum(gains * discounts, axis=1)
    idcg = np.cumsum(ideal * discounts, axis=1)
    sum_precision_at_hits = np.cumsum(hits * cum_hits / ranks, axis=1)
    first_hit = np.where(hits.any(axis=1), hits.argmax(axis=1) + 1, MAX_K + 1)
    has_relevant = n_relevant > 0
    safe_relevant = np.maximum(n_relevant, 1)
    out: dict[str, np.ndarray] = {}
    for k in CUTOFFS:
        n_hits = cum_hits[:, k - 1]
        recall = n_hits / safe_relevant
        precision = n_hits / k
        with np.errstate(invalid="ignore", divide="ignore"):
            out[f"ndcg@{k}"] = np.where(idcg[:, k - 1] > 0, dcg[:, k - 1] / np.where(idcg[:, k - 1] > 0, idcg[:, k - 1], 1), 0.0)
            out[f"f1@{k}"] = np.where(n_hits > 0, 2 * recall * precision / (recall + precision), 0.0)
        out[f"mrr@{k}"] = np.where(first_hit <= k, 1.0 / first_hit, 0.0)
        out[f"map@{k}"] = sum_precision_at_hits[:, k - 1] / np.minimum(k, safe_relevant)
        out[f"recall@{k}"] = recall
        out[f"precision@{k}"] = precision
        out[f"accuracy@{k}"] = (n_hits > 0).astype(float)
    # Queries without a relevant passage score 0 everywhere (they are normally filtered out).
    return {name: np.where(has_relevant, values, 0.0) for name, values in out.items()}


def _ideal_gains(qrels: list[dict[str, int]]) -> tuple[np.ndarray, np.ndarray]:
    ideal = np.zeros((len(qrels), MAX_K))
    n_relevant = np.zeros(len(qrels), dtype=int)
    for qi, grades in enumerate(qrels):
        positive = sorted((g for g in grades.values() if g > 0), reverse=True)[:MAX_K]
        ideal[qi, : len(positive)] = positive
        n_relevant[qi] = sum(1 for g in grades.values() if g > 0)
    return ideal, n_relevant


def per_query_metrics(ranked: list[list[str]], qrels: list[dict[str, int]]) -> dict[str, np.ndarray]:
    """Per-query metric values. `ranked[i]` is query i's ranked passage ids, `qrels[i]` its
    relevance grades (> 0 is relevant). NDCG uses the grade as gain (linear, as trec_eval)."""
    gains = np.zeros((len(ranked), MAX_K))
    for qi, (ranking, grades) in enumerate(zip(ranked, qrels)):
        row = [max(grades.get(pid, 0), 0) for pid in ranking[:MAX_K]]
        gains[qi, : len(row)] = row
    return _metrics_from_gains(gains, *_ideal_gains(qrels))


class Judgements:
    """Relevance grades as sorted (query row * n_corpus + corpus row) keys: the gains of a whole
    (queries x top-k) index matrix come from one vectorised lookup."""

    def __init__(self, query_ids: list[str], corpus_ids: list[str], qrels: dict[str, dict[str, int]]):
        corpus_row = {pid: i for i, pid in enumerate(corpus_ids)}
        self.n_corpus = len(corpus_ids)
        per_query = [qrels.get(qid, {}) for qid in query_ids]
        keys, grades = [], []
        for qi, judged in enumerate(per_query):
            for pid, grade in judged.items():
                if grade > 0 and pid in corpus_row:
                    keys.append(qi * self.n_corpus + corpus_row[pid])
                    grades.append(grade)
        order = np.argsort(keys)
        self.keys = np.asarray(keys, dtype=np.int64)[order]
        self.grades = np.asarray(grades, dtype=float)[order]
        # Relevant passages missing from the corpus still count against recall, as in trec_eval.
        self.ideal, self.n_relevant = _ideal_gains(per_query)

    def metrics(self, indices) -> dict[str, np.ndarray]:
        indices = np.asarray(indices, dtype=np.int64)
        gains = np.zeros((indices.shape[0], MAX_K))
        if self.keys.size:
            lookup = np.arange(indices.shape[0])[:, None] * self.n_corpus + indices
            position = np.clip(np.searchsorted(self.keys, lookup), 0, self.keys.size - 1)
            found = self.keys[position] == lookup
            gains[:, : indices.shape[1]] = np.where(found, self.grades[position], 0.0)
        return _metrics_from_gains(gains, self.ideal, self.n_relevant)


# -------------------------------------------------------------------------- statistics


def bootstrap_means(values: np.ndarray, samples: int, seed: int, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval of the mean of each column of `values` (n, m) over `samples` resamples
    of the n rows (queries). All columns share the resamples, so paired quantities stay paired."""
    values = np.asarray(values, dtype=float)
    if values.ndim == 1:
        values = values[:, None]
    n = values.shape[0]
    rng = np.random.default_rng(seed)
    means = np.empty((samples, values.shape[1]))
    # Resample as counts per row: one matmul per batch of resamples, memory bounded.
    batch = max(1, min(samples, BOOTSTRAP_BATCH_ELEMENTS // max(n, 1)))
    for start in range(0, samples, batch):
        size = min(batch, samples - start)
        drawn = rng.integers(0, n, size=(size, n)) + np.arange(size)[:, None] * n
        counts = np.bincount(drawn.ravel(), minlength=size * n).reshape(size, n)
        means[start : start + size] = counts @ values / n
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail], axis=0)
    return low, high


def paired_deltas(pairs: dict, samples: int, seed: int, confidence: float) -> dict:
    """Fine-tuned minus base for each key of `pairs` {key: (base per-query, tuned per-query)}, with a
    paired bootstrap interval over queries and whether it excludes zero."""
    keys = list(pairs)
    deltas = np.column_stack([np.asarray(tuned, float) - np.asarray(base, float) for base, tuned in pairs.values()])
    low, high = bootstrap_means(deltas, samples, seed, confidence)
    return {key: {"delta": float(deltas[:, j].mean()), "low": float(low[j]), "high": float(high[j]),
                  "excludes_zero": bool(low[j] > 0 or high[j] < 0)} for j, key in enumerate(keys)}
