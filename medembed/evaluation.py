"""Matryoshka retrieval evaluation: which dimension and which storage precision to index.

Each model encodes each collection once at full dimension; every (dim, precision) cell is then
scored from those embeddings: truncate and re-normalise, quantise (float32 / int8 / binary, binary
with float rescoring), exact top-k search in chunks, IR metrics per query. Encoding once gives the
same metrics as one `InformationRetrievalEvaluator` per truncate_dim at a fraction of the cost
(GUIDE §4); the metric definitions follow that evaluator (MAP@k is normalised by min(k, #relevant)).

Fine-tuned-minus-base deltas get paired bootstrap intervals over queries, and the recommendation
is the cheapest cell (bytes per vector) whose NDCG@10 stays within a tolerance of the fine-tuned
full-dim float32 score.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from .config import EvalConfig
from .data import QUERIES_FILE, fingerprint, ir_files, read_ir_set, read_jsonl

log = logging.getLogger(__name__)

CUTOFFS = (1, 3, 5, 10, 100)
METRIC_FAMILIES = ("ndcg", "mrr", "map", "recall", "precision", "f1", "accuracy")
ALL_METRICS = tuple(f"{m}@{k}" for m in METRIC_FAMILIES for k in CUTOFFS)
HEADLINE_METRICS = ("ndcg@10", "mrr@10", "map@100", "recall@1", "recall@5", "recall@10",
                    "precision@1", "precision@5", "precision@10", "f1@10")
MAX_K = max(CUTOFFS)
GATE_METRIC = "ndcg@10"
MODELS = ("base", "finetuned")

FLOAT32, INT8, BINARY, BINARY_RESCORE = "float32", "int8", "binary", "binary_rescore"
PRECISIONS = (FLOAT32, INT8, BINARY, BINARY_RESCORE)
# Stored bits per coordinate. Rescoring reuses the binary index's own bits: no extra storage.
PRECISION_BITS = {FLOAT32: 32, INT8: 8, BINARY: 1, BINARY_RESCORE: 1}
# A float32 score holds integers exactly up to 2**24: int8 dot products of this many dims fit.
INT8_EXACT_FLOAT32_DIMS = 2**24 // 128**2
CORPUS_CHUNK = 65536
# Working-set bounds (elements) for the bootstrap's resample counts and binary rescoring lookups.
BOOTSTRAP_BATCH_ELEMENTS = 20_000_000
RESCORE_BATCH_ELEMENTS = 2**24


# ------------------------------------------------------------------ embeddings and search


def truncate_normalize(embeddings, dim: int):
    """First `dim` coordinates, scaled back to unit length (truncation breaks normalisation)."""
    import torch

    cut = embeddings[:, :dim].float()
    return torch.nn.functional.normalize(cut, p=2, dim=1)


def bytes_per_vector(dim: int, precision: str) -> int:
    return math.ceil(dim * PRECISION_BITS[precision] / 8)


def _chunked_top_k(score_chunk, n_queries: int, n_corpus: int, k: int, query_chunk: int,
                   corpus_chunk: int = CORPUS_CHUNK, integer_scores: bool = False):
    """Exact top-k of `score_chunk(q_slice, c_slice) -> scores` without the full score matrix.

    Integer scores (int8 dot products, Hamming distances) tie often: ties then rank by corpus
    order, through a float64 key that is exact for them, so results do not depend on topk's
    internal order."""
    import torch

    k = min(k, n_corpus)
    all_scores, all_indices = [], []
    for q_start in range(0, n_queries, query_chunk):
        q_slice = slice(q_start, min(q_start + query_chunk, n_queries))
        best_keys = best_indices = None
        for c_start in range(0, n_corpus, corpus_chunk):
            scores = score_chunk(q_slice, slice(c_start, c_start + corpus_chunk))
            if integer_scores:
                position = torch.arange(c_start, c_start + scores.shape[1], device=scores.device, dtype=torch.float64)
                scores = scores.double() * n_corpus + (n_corpus - 1 - position)
            s, i = scores.topk(min(k, scores.shape[1]), dim=1)
            i = i + c_start
            if best_keys is not None:
                s, order = torch.cat([best_keys, s], 1).topk(k, dim=1)
                i = torch.cat([best_indices, i], 1).gather(1, order)
            best_keys, best_indices = s, i
        if integer_scores:
            best_keys = torch.floor(best_keys / n_corpus)
        all_scores.append(best_keys.float().cpu())
        all_indices.append(best_indices.cpu())
    return torch.cat(all_scores), torch.cat(all_indices)


def top_k(query_emb, corpus_emb, k: int, query_chunk: int = 1024, corpus_chunk: int = CORPUS_CHUNK):
    """Exact cosine top-k (inputs unit-normalised) without materialising the full score matrix."""
    return _chunked_top_k(lambda qs, cs: query_emb[qs] @ corpus_emb[cs].T,
                          query_emb.shape[0], corpus_emb.shape[0], k, query_chunk, corpus_chunk)


def int8_ranges(corpus_emb) -> np.ndarray:
    """Per-coordinate (min, max) of the corpus: the index is built from the corpus, so its
    buckets are calibrated there, and queries must land in the same buckets."""
    corpus = corpus_emb.float().cpu().numpy()
    return np.vstack([corpus.min(axis=0), corpus.max(axis=0)])


def int8_quantize(embeddings, ranges: np.ndarray):
    """int8 codes (sentence-transformers' quantize_embeddings) with the given ranges."""
    import torch
    from sentence_transformers.util.quantization import quantize_embeddings

    return torch.from_numpy(quantize_embeddings(embeddings.float().cpu().numpy(), "int8", ranges=ranges))


def int8_top_k(query_codes, corpus_codes, k: int, query_chunk: int, device: str = "cpu"):
    """Inner product of int8 codes (what an int8 index computes), exact in float32 up to 1024 dims."""
    import torch

    dtype = torch.float32 if query_codes.shape[1] <= INT8_EXACT_FLOAT32_DIMS else torch.float64
    q, c = query_codes.to(device, dtype), corpus_codes.to(device, dtype)
    return _chunked_top_k(lambda qs, cs: q[qs] @ c[cs].T, q.shape[0], c.shape[0], k, query_chunk, integer_scores=True)


def binary_quantize(embeddings):
    """Packed sign bits (sentence-transformers 'ubinary'): dim/8 bytes per vector."""
    import torch
    from sentence_transformers.util.quantization import quantize_embeddings

    return torch.from_numpy(quantize_embeddings(embeddings.cpu().numpy(), "ubinary"))


def unpack_bits(packed, dtype=None):
    """(n, bytes) uint8 -> (n, 8*bytes) 0/1, most significant bit first (np.packbits order)."""
    import torch

    shifts = torch.arange(7, -1, -1, device=packed.device, dtype=torch.uint8)
    bits = (packed.unsqueeze(-1) >> shifts) & 1
    return bits.reshape(packed.shape[0], -1).to(dtype or torch.float32)


def hamming_top_k(query_packed, corpus_packed, k: int, query_chunk: int, device: str = "cpu"):
    """Nearest packed binary codes by Hamming distance (cosine on packed bytes is meaningless,
    GUIDE §4). Returns (-distance, index). Distance = (bits - s) / 2 with s the dot product of
    the ±1 codes: exact, and it runs on the matmul units; corpus chunks are unpacked on the fly."""
    q = unpack_bits(query_packed.to(device)) * 2 - 1
    n_bits = q.shape[1]

    def score(qs, cs):
        c = unpack_bits(corpus_packed[cs].to(device)) * 2 - 1
        return -(n_bits - q[qs] @ c.T) / 2

    return _chunked_top_k(score, q.shape[0], corpus_packed.shape[0], k, query_chunk, integer_scores=True)


def rescore_binary(query_emb, corpus_packed, candidates, k: int, device: str = "cpu",
                   max_elements: int = RESCORE_BATCH_ELEMENTS):
    """Re-rank Hamming candidates by the float32 query against the candidates' stored bits
    (sentence-transformers' rescoring: better order, same index size).

    Per query, a (bytes x 256) table holds the float score of every possible byte at every byte
    position, so a candidate costs one lookup per stored byte instead of unpacking its bits.
    Queries go in slices so the lookups stay under `max_elements`."""
    import torch

    q = query_emb.to(device).float()
    n_queries, dim = q.shape
    n_bytes = corpus_packed.shape[1]
    q = torch.nn.functional.pad(q, (0, 8 * n_bytes - dim))
    byte_bits = unpack_bits(torch.arange(256, dtype=torch.uint8, device=device)[:, None])  # (256, 8)
    corpus_packed = corpus_packed.to(device)
    step = max(1, max_elements // max(candidates.shape[1] * n_bytes, 1))
    all_scores, all_indices = [], []
    for start in range(0, n_queries, step):
        cand = candidates[start : start + step].to(device)
        table = q[start : start + step].reshape(-1, n_bytes, 8) @ byte_bits.T  # (queries, bytes, 256)
        codes = corpus_packed[cand].long().transpose(1, 2)  # (queries, bytes, candidates)
        scores = table.gather(2, codes).sum(1)
        # Stable sort keeps Hamming order among equal rescored values.
        order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
        all_scores.append(scores.gather(1, order).cpu())
        all_indices.append(cand.gather(1, order).cpu())
    return torch.cat(all_scores), torch.cat(all_indices)


# ---------------------------------------------------------------------------- metrics


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


# ----------------------------------------------------------------------------- the grid


def score_grid(query_emb, corpus_emb, judgements: Judgements, dims, precisions=PRECISIONS,
               query_chunk: int = 1024, rescore_multiplier: int = 4, device: str = "cpu"):
    """Per-query metrics and search latency for every (dim, precision) from full-dim embeddings.

    Returns ({dim: {precision: {metric: per-query array}}}, {dim: {precision: ms per query}})."""
    import torch

    per_query: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    latency: dict[str, dict[str, float]] = {}
    n_queries = query_emb.shape[0]
    for dim in dims:
        q = truncate_normalize(query_emb, dim).to(device)
        c = truncate_normalize(corpus_emb, dim).to(device)
        per_query[str(dim)], latency[str(dim)] = {}, {}
        corpus_packed = binary_quantize(c) if {BINARY, BINARY_RESCORE} & set(precisions) else None
        if INT8 in precisions:
            # Calibrating and quantising the corpus is index-build work, not query time.
            ranges = int8_ranges(c)
            corpus_int8 = int8_quantize(c, ranges)
        for precision in precisions:
            start = time.perf_counter()
            if precision == FLOAT32:
                _, indices = top_k(q, c, MAX_K, query_chunk)
            elif precision == INT8:
                _, indices = int8_top_k(int8_quantize(q, ranges), corpus_int8, MAX_K, query_chunk, device)
            elif precision == BINARY:
                _, indices = hamming_top_k(binary_quantize(q), corpus_packed, MAX_K, query_chunk, device)
            elif precision == BINARY_RESCORE:
                _, candidates = hamming_top_k(binary_quantize(q), corpus_packed, MAX_K * rescore_multiplier,
                                              query_chunk, device)
                _, indices = rescore_binary(q, corpus_packed, candidates, MAX_K, device)
            else:
                raise ValueError(f"unknown precision {precision!r}; known: {', '.join(PRECISIONS)}")
            if device != "cpu":
                torch.cuda.synchronize()
            latency[str(dim)][precision] = (time.perf_counter() - start) * 1000 / max(n_queries, 1)
            per_query[str(dim)][precision] = judgements.metrics(indices)
    return per_query, latency


def recommend(grid: dict, index: dict, dims, precisions, tolerance: float, metric: str = GATE_METRIC) -> dict:
    """Cheapest (dim, precision) by bytes per vector whose `metric` stays within `tolerance`
    (relative) of the full-dim float32 score; ties go to the better score."""
    full = str(max(dims))
    reference = grid[full][FLOAT32][metric]
    threshold = reference * (1 - tolerance)
    cells = [(index[str(d)][p]["bytes_per_vector"], -grid[str(d)][p][metric], str(d), p)
             for d in dims for p in precisions if grid[str(d)][p][metric] >= threshold]
    size, neg_score, dim, precision = min(cells)
    full_size = index[full][FLOAT32]["bytes_per_vector"]
    return {
        "dim": int(dim), "precision": precision, "metric": metric, "score": -neg_score,
        "reference_score": reference, "reference": f"dim {full} {FLOAT32}", "tolerance": tolerance,
        "relative_change": (-neg_score - reference) / reference if reference else 0.0,
        "bytes_per_vector": size, "compression": full_size / size,
        "index_bytes": index[dim][precision]["index_bytes"], "index_bytes_at_scale": index[dim][precision]["index_bytes_at_scale"],
    }


def _means(values: dict[str, np.ndarray]) -> dict[str, float]:
    return {name: float(v.mean()) if v.size else 0.0 for name, v in values.items()}


def summarize(per_query: dict, latency: dict, dims, precisions, n_corpus: int, config: EvalConfig,
              query_languages: list[str] | None = None) -> dict:
    """Means, index sizes, bootstrap deltas, intervals, recommendation and language slices for one
    collection, from per-query metrics {model: {dim: {precision: {metric: array}}}}."""
    dims = [int(d) for d in dims]
    samples, seed, confidence = config.bootstrap_samples, config.bootstrap_seed, config.confidence
    grid = {label: {str(d): {p: {**_means(per_query[label][str(d)][p]), "latency_ms_per_query": latency[label][str(d)][p]}
                             for p in precisions} for d in dims} for label in per_query}
    index = {str(d): {p: {"bytes_per_vector": bytes_per_vector(d, p),
                          "index_bytes": bytes_per_vector(d, p) * n_corpus,
                          "index_bytes_at_scale": bytes_per_vector(d, p) * config.index_passages}
                      for p in precisions} for d in dims}
    out: dict = {
        "precisions": list(precisions),
        "grid": grid,
        "index": index,
        # The float32 cells, flat: what registration and the model card read.
        **{label: {str(d): {m: v for m, v in grid[label][str(d)][FLOAT32].items() if m != "latency_ms_per_query"}
                   for d in dims} for label in grid},
    }
    if set(MODELS) <= set(per_query):
        pairs = {(str(d), p, m): (per_query["base"][str(d)][p][m], per_query["finetuned"][str(d)][p][m])
                 for d in dims for p in precisions for m in ALL_METRICS}
        deltas = paired_deltas(pairs, samples, seed, confidence)
        out["deltas"] = {str(d): {p: {m: deltas[(str(d), p, m)] for m in ALL_METRICS} for p in precisions} for d in dims}
        out["intervals"] = {}
        for label in MODELS:
            values = np.column_stack([per_query[label][str(d)][FLOAT32][GATE_METRIC] for d in dims])
            low, high = bootstrap_means(values, samples, seed, confidence)
            out["intervals"][label] = {str(d): [float(low[j]), float(high[j])] for j, d in enumerate(dims)}
    reference_model = "finetuned" if "finetuned" in grid else next(iter(grid))
    out["recommendation"] = {"model": reference_model,
                             **recommend(grid[reference_model], index, dims, precisions, config.tolerance)}
    if query_languages and any(query_languages):
        out["languages"] = language_slices(per_query, dims, query_languages, config)
    return out


def language_slices(per_query: dict, dims, query_languages: list[str], config: EvalConfig) -> dict:
    """float32 metrics per query language; deltas with bootstrap intervals when both models ran."""
    languages = np.array([lang or "unknown" for lang in query_languages])
    slices = {}
    for language in sorted(set(languages)):
        mask = languages == language
        entry: dict = {"n_queries": int(mask.sum())}
        for label in per_query:
            entry[label] = {str(d): _means({m: v[mask] for m, v in per_query[label][str(d)][FLOAT32].items()}) for d in dims}
        if set(MODELS) <= set(per_query):
            pairs = {(str(d), m): (per_query["base"][str(d)][FLOAT32][m][mask], per_query["finetuned"][str(d)][FLOAT32][m][mask])
                     for d in dims for m in HEADLINE_METRICS}
            deltas = paired_deltas(pairs, config.bootstrap_samples, config.bootstrap_seed, config.confidence)
            entry["deltas"] = {str(d): {m: deltas[(str(d), m)] for m in HEADLINE_METRICS} for d in dims}
        slices[language] = entry
    return slices


# ------------------------------------------------------------------------ collections


class IRCollection:
    """A BEIR-layout evaluation set with the languages of its queries (optional field)."""

    def __init__(self, name: str, folder: Path):
        self.name, self.folder = name, Path(folder)
        queries, corpus, self.qrels = read_ir_set(self.folder)
        # Only judged queries count: an unjudged query would score 0 and dilute every mean.
        self.queries = {qid: text for qid, text in queries.items() if qid in self.qrels}
        self.corpus = corpus
        language = {row["_id"]: row.get("language") or "" for row in read_jsonl(self.folder / QUERIES_FILE)}
        self.languages = [language.get(qid, "") for qid in self.queries]
        self.judgements = Judgements(list(self.queries), list(self.corpus), self.qrels)
        self.fingerprint = fingerprint(ir_files(self.folder))


def fetch_collection(uri: str, work_dir: Path) -> Path:
    """A collection folder given by local path or s3:// URI (downloaded through medembed.storage)."""
    from .data import CORPUS_FILE, QRELS_FILE
    from .storage import open_store

    if not uri.startswith("s3://"):
        return Path(uri).expanduser()
    store = open_store(uri, create=False)
    target = Path(work_dir) / collection_name(uri)
    target.mkdir(parents=True, exist_ok=True)
    for name in (QUERIES_FILE, CORPUS_FILE, QRELS_FILE):
        (target / name).write_bytes(store.get_bytes(name))
    return target


def collection_name(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[-1] or uri


def encode_ir_set(model, queries: dict[str, str], corpus: dict[str, str], batch_size: int, **speed_options):
    """Full-dim embeddings with the model's query and document prompts (`speed_options`: encoding.encode's
    packed_attention / compile_layers)."""
    from .encoding import encode

    return (encode(model, list(queries.values()), "query", batch_size, **speed_options),
            encode(model, list(corpus.values()), "document", batch_size, **speed_options))


def evaluate(eval_dir: Path, finetuned_ref: str, base_ref: str, dims: list[int], query_prompt: str,
             passage_prompt: str, batch_size: int, query_chunk: int = 1024, config: EvalConfig | None = None,
             max_seq_length: int | None = None) -> dict:
    """Base vs fine-tuned at every (dim, precision) on the prepared IR set and on every extra
    collection. Each model is loaded once and encodes each collection once."""
    from .models import configure_torch, load_model

    config = replace(config or EvalConfig(), batch_size=batch_size, query_chunk_size=query_chunk)
    device = configure_torch()
    dims = sorted({int(d) for d in dims}, reverse=True)
    precisions = tuple(config.precisions)
    unknown = set(precisions) - set(PRECISIONS)
    if unknown or FLOAT32 not in precisions:
        # float32 is the reference every other cell and the recommendation are measured against.
        raise ValueError(f"eval.precisions must include {FLOAT32} and only {', '.join(PRECISIONS)}; got {precisions}")
    with tempfile.TemporaryDirectory() as work:
        collections = [IRCollection("main", Path(eval_dir))]
        collections += [IRCollection(collection_name(uri), fetch_collection(uri, Path(work))) for uri in config.extra_collections]
    per_query = {c.name: {} for c in collections}
    latency = {c.name: {} for c in collections}
    encode_seconds: dict[str, float] = {}
    for label, ref in (("base", base_ref), ("finetuned", finetuned_ref)):
        model = load_model(ref, query_prompt, passage_prompt, max_seq_length or None, device=device)
        if model.get_embedding_dimension() < dims[0]:
            raise ValueError(f"{label} model has {model.get_embedding_dimension()} dims, fewer than {dims[0]}")
        for collection in collections:
            log.info("%s model: encoding %d queries and %d passages of %s", label, len(collection.queries),
                     len(collection.corpus), collection.name)
            start = time.perf_counter()
            q, c = encode_ir_set(model, collection.queries, collection.corpus, batch_size,
                                 packed_attention=config.packed_attention, compile_layers=config.compile_layers)
            encode_seconds[f"{collection.name}.{label}"] = time.perf_counter() - start
            log.info("%s model: scoring %d dims x %d precisions on %s", label, len(dims), len(precisions), collection.name)
            per_query[collection.name][label], latency[collection.name][label] = score_grid(
                q, c, collection.judgements, dims, precisions, query_chunk, config.rescore_multiplier, device)
        del model
    results: dict = {}
    for collection in collections:
        summary = {
            "dims": dims,
            "base_model": base_ref,
            "n_queries": len(collection.queries),
            "n_corpus": len(collection.corpus),
            "eval_fingerprint": collection.fingerprint,
            **summarize(per_query[collection.name], latency[collection.name], dims, precisions,
                        len(collection.corpus), config, collection.languages),
        }
        if collection.name == "main":
            results = summary
        else:
            results.setdefault("collections", {})[collection.name] = summary
    # Through JSON so the returned dict equals what results.json holds (tuples become lists).
    results["settings"] = json.loads(json.dumps({**asdict(config), "device": device, "encode_seconds": encode_seconds}))
    return results


# ---------------------------------------------------------------------------- tables


def comparison_markdown(results: dict, metrics: tuple[str, ...] = HEADLINE_METRICS) -> str:
    """Per-dim table: base -> fine-tuned (delta, with its bootstrap interval when known)."""
    metrics = tuple(m for m in metrics if m in results["base"][str(results["dims"][0])])
    header = "| dim | " + " | ".join(metrics) + " |"
    lines = [
        f"Base model `{results.get('base_model', '?')}`, {results.get('n_queries', '?')} queries, "
        f"{results.get('n_corpus', '?')} passages, float32. Cells: base → fine-tuned (Δ [95% interval]; "
        "* = interval excludes 0).",
        "",
        header,
        "|" + " --- |" * (len(metrics) + 1),
    ]
    for dim in results["dims"]:
        base, tuned = results["base"][str(dim)], results["finetuned"][str(dim)]
        deltas = results.get("deltas", {}).get(str(dim), {}).get(FLOAT32, {})
        cells = []
        for m in metrics:
            cell = f"{base[m]:.4f} → {tuned[m]:.4f} ({tuned[m] - base[m]:+.4f}"
            if m in deltas:
                d = deltas[m]
                cell += f" [{d['low']:+.4f}, {d['high']:+.4f}]{'*' if d['excludes_zero'] else ''}"
            cells.append(cell + ")")
        lines.append(f"| {dim} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def comparison_text(results: dict, metrics: tuple[str, ...] = ("ndcg@10", "mrr@10", "map@100", "recall@10")) -> str:
    """Compact fixed-width table for terminals."""
    head = f"{'dim':>5} " + " ".join(f"{m + ' base':>14} {m + ' ft':>12} {'Δ':>7}" for m in metrics)
    rows = [head]
    for dim in results["dims"]:
        base, tuned = results["base"][str(dim)], results["finetuned"][str(dim)]
        rows.append(f"{dim:>5} " + " ".join(f"{base[m]:>14.4f} {tuned[m]:>12.4f} {tuned[m] - base[m]:>+7.4f}" for m in metrics))
    rec = results.get("recommendation")
    if rec:
        rows.append(f"recommended index: dim {rec['dim']} {rec['precision']} ({rec['bytes_per_vector']} B/vector, "
                    f"{rec['metric']} {rec['score']:.4f} vs {rec['reference_score']:.4f} at {rec['reference']})")
    return "\n".join(rows)


def kfp_metric_name(metric: str, dim: int | str, precision: str = FLOAT32, model: str = "finetuned") -> str:
    """Names that line up in KFP's run-compare view: metric first, then dim, then precision, e.g.
    `ndcg_at_10.dim_256.int8` for the fine-tuned model and `ndcg_at_10.dim_256.int8.base` for the base."""
    name = f"{metric.replace('@', '_at_')}.dim_{dim}.{precision}"
    return name if model == "finetuned" else f"{name}.{model}"


def kfp_metrics(results: dict) -> dict[str, float]:
    """The scalars shown in the Kubeflow UI: NDCG@10 in every cell for both models, the headline
    metrics at float32, the float32 NDCG@10 delta with its interval, and the recommendation."""
    out: dict[str, float] = {}
    for label in MODELS:
        for dim in results["dims"]:
            for precision in results.get("precisions", [FLOAT32]):
                cell = results.get("grid", {}).get(label, {}).get(str(dim), {}).get(precision) or results[label][str(dim)]
                out[kfp_metric_name(GATE_METRIC, dim, precision, label)] = cell[GATE_METRIC]
            for metric in HEADLINE_METRICS:
                out[kfp_metric_name(metric, dim, FLOAT32, label)] = results[label][str(dim)][metric]
    for dim in results["dims"]:
        delta = results.get("deltas", {}).get(str(dim), {}).get(FLOAT32, {}).get(GATE_METRIC)
        if delta:
            for key, suffix in (("delta", "delta"), ("low", "delta_low"), ("high", "delta_high")):
                out[kfp_metric_name(GATE_METRIC, dim, FLOAT32, suffix)] = delta[key]
    rec = results.get("recommendation")
    if rec:
        out["recommended.dim"] = rec["dim"]
        out["recommended.bits_per_coordinate"] = PRECISION_BITS[rec["precision"]]
        out["recommended.bytes_per_vector"] = rec["bytes_per_vector"]
        out[f"recommended.{GATE_METRIC.replace('@', '_at_')}"] = rec["score"]
    return out


def isfinite_results(results: dict) -> bool:
    return all(math.isfinite(v) for label in MODELS for d in results[label].values() for v in d.values())
