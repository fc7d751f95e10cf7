"""Matryoshka retrieval evaluation: which dimension and which storage precision to index.

Each model encodes each collection once at full dimension; every (dim, precision) cell is then
scored from those embeddings: truncate and re-normalise, quantise (float32 / int8 / binary, binary
with float rescoring), exact top-k search in chunks, IR metrics per query. Encoding once gives the
same metrics as one `InformationRetrievalEvaluator` per truncate_dim at a fraction of the cost
(docs/STACK-NOTES.md §2); the metric definitions follow that evaluator (MAP@k is normalised by min(k, #relevant)).

Fine-tuned-minus-base deltas get paired bootstrap intervals over queries, and the recommendation
is the cheapest cell (bytes per vector) whose NDCG@10 stays within a tolerance of the fine-tuned
full-dim float32 score.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..artifacts import (CORPUS_FILE, PROBES_DIR, QRELS_FILE, QUERIES_FILE, fingerprint, ir_files, read_ir_set,
                         read_jsonl, read_probe_manifest)
from ..config import EvalConfig
from .metrics import ALL_METRICS, GATE_METRIC, HEADLINE_METRICS, MAX_K, Judgements, bootstrap_means, paired_deltas
from .search import (BINARY, BINARY_RESCORE, FLOAT32, INT8, PRECISIONS, binary_quantize, bytes_per_vector,
                     hamming_top_k, int8_quantize, int8_ranges, int8_top_k, rescore_binary, top_k, truncate_normalize)
from .tables import MODELS

log = logging.getLogger(__name__)
# results["collections"] keys of the built-in shifted probes (eval_data/probes/<name>/): "probe:keyword".
PROBE_PREFIX = "probe:"

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
    collection, from per-query metrics {model: {dim: {precision: {metric: array}}}}. A "champion"
    entry (float32 only, at the dims it supports) becomes `champion` with candidate-minus-champion
    deltas."""
    samples, seed, confidence = config.bootstrap_samples, config.bootstrap_seed, config.confidence
    per_query = dict(per_query)
    champion = per_query.pop("champion", None)
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
    if champion is not None and "finetuned" in per_query:
        compared = [d for d in dims if str(d) in champion]
        pairs = {(str(d), m): (champion[str(d)][FLOAT32][m], per_query["finetuned"][str(d)][FLOAT32][m])
                 for d in compared for m in ALL_METRICS}
        deltas = paired_deltas(pairs, samples, seed, confidence) if pairs else {}
        out["champion"] = {
            **{str(d): _means(champion[str(d)][FLOAT32]) for d in compared},
            "deltas": {str(d): {m: deltas[(str(d), m)] for m in ALL_METRICS} for d in compared},
        }
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
    from ..storage import open_store

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
    packed_attention / compile_layers / graph / graph_compile / row_tokens)."""
    from ..encoding import encode

    return (encode(model, list(queries.values()), "query", batch_size, **speed_options),
            encode(model, list(corpus.values()), "document", batch_size, **speed_options))


def texts_digest(texts) -> str:
    """Identity of an ordered list of texts: equal digests, equal embeddings for one model."""
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()


class SharedEncoder:
    """Encodes text lists for one model, once per distinct list: a list that several collections
    share (the built-in query-style probes carry the evaluation corpus unchanged) is encoded the
    first time and reused; lists used once are not kept. `encoded` counts the texts actually encoded."""

    def __init__(self, model, batch_size: int, shared: set[tuple[str, str]], **speed_options):
        self.model, self.batch_size, self.shared, self.speed = model, batch_size, shared, speed_options
        self.cache: dict[tuple[str, str], object] = {}
        self.encoded = 0

    def __call__(self, texts: list[str], kind: str):
        from ..encoding import encode

        key = (kind, texts_digest(texts))
        if key in self.cache:
            return self.cache[key]
        embeddings = encode(self.model, texts, kind, self.batch_size, **self.speed)
        self.encoded += len(texts)
        if key in self.shared:
            self.cache[key] = embeddings
        return embeddings

    def collection(self, collection: "IRCollection"):
        return self(list(collection.queries.values()), "query"), self(list(collection.corpus.values()), "document")


def shared_text_lists(collections) -> set[tuple[str, str]]:
    """(kind, digest) of the text lists that more than one collection holds."""
    seen: dict[tuple[str, str], int] = {}
    for collection in collections:
        for kind, texts in (("query", collection.queries.values()), ("document", collection.corpus.values())):
            key = (kind, texts_digest(texts))
            seen[key] = seen.get(key, 0) + 1
    return {key for key, n in seen.items() if n > 1}


@dataclass
class Scored:
    """One collection as the evaluation scores it: the main set (every precision), a built-in probe
    (float32: the gate and the side-by-side table read float32; the index recommendation comes
    from the main set) or an extra collection (every precision). All but the main set are guards."""

    key: str
    collection: IRCollection
    precisions: tuple[str, ...]
    kind: str
    description: str = ""


def collections_to_score(eval_dir: Path, config: EvalConfig, work_dir: Path) -> list[Scored]:
    precisions = tuple(config.precisions)
    out = [Scored("main", IRCollection("main", Path(eval_dir)), precisions, "main")]
    for name, entry in read_probe_manifest(Path(eval_dir)).items():
        out.append(Scored(f"{PROBE_PREFIX}{name}", IRCollection(name, Path(eval_dir) / PROBES_DIR / name), (FLOAT32,),
                          f"built-in probe, {entry['kind']}", entry.get("description", "")))
    for uri in config.extra_collections:
        name = collection_name(uri)
        if name == "main" or any(s.key == name for s in out):
            raise ValueError(f"eval.extra_collections: two collections are named {name!r} (the last part of {uri})")
        out.append(Scored(name, IRCollection(name, fetch_collection(uri, work_dir)), precisions, "extra collection", uri))
    return out


@dataclass
class Champion:
    """The registry's current champion, pulled to `path`, to be scored beside the candidate."""

    version: int
    path: str
    dims: list[int]
    max_seq_length: int | None = None
    error: str = ""


def evaluate(eval_dir: Path, finetuned_ref: str, base_ref: str, dims: list[int], query_prompt: str,
             passage_prompt: str, config: EvalConfig, max_seq_length: int | None = None,
             champion: Champion | None = None) -> dict:
    """Base vs fine-tuned at every (dim, precision) on the prepared IR set, and at float32 on the
    built-in shifted probes prep wrote under eval_dir/probes/ and at every (dim, precision) on each
    extra collection (both guard collections); the champion (float32, with its own prompts and
    length) at the dims both share. Each model is loaded once and encodes each distinct text list
    once: the query-style probes share the evaluation corpus, which is encoded one time per model.
    `dims` are the model's Matryoshka dims (descending, as the training record holds them)."""
    from ..config import AUTO
    from ..models import configure_torch, load_model

    device = configure_torch()
    batch_size, query_chunk = config.batch_size, config.query_chunk_size
    speed = dict(packed_attention=config.packed_attention, compile_layers=config.compile_layers,
                 graph=config.graph_encoder, graph_compile=config.graph_compile, row_tokens=config.row_tokens)
    with tempfile.TemporaryDirectory() as work:
        scored = collections_to_score(Path(eval_dir), config, Path(work))
    shared = shared_text_lists([s.collection for s in scored])
    per_query = {s.key: {} for s in scored}
    latency = {s.key: {} for s in scored}
    encode_seconds: dict[str, float] = {}
    encoded_texts: dict[str, int] = {}
    for label, ref in (("base", base_ref), ("finetuned", finetuned_ref)):
        model = load_model(ref, query_prompt, passage_prompt, max_seq_length or None, device=device)
        if model.get_embedding_dimension() < dims[0]:
            raise ValueError(f"{label} model has {model.get_embedding_dimension()} dims, fewer than {dims[0]}")
        encoder = SharedEncoder(model, batch_size, shared, **speed)
        start_model = time.perf_counter()
        for item in scored:
            collection = item.collection
            log.info("%s model: encoding %d queries and %d passages of %s", label, len(collection.queries),
                     len(collection.corpus), item.key)
            start = time.perf_counter()
            q, c = encoder.collection(collection)
            encode_seconds[f"{item.key}.{label}"] = time.perf_counter() - start
            per_query[item.key][label], latency[item.key][label] = score_grid(
                q, c, collection.judgements, dims, item.precisions, query_chunk, config.rescore_multiplier, device)
        encode_seconds[f"all.{label}"] = time.perf_counter() - start_model
        encoded_texts[label] = encoder.encoded
        del model, encoder
    if champion is not None and not champion.error:
        model = load_model(champion.path, AUTO, AUTO, champion.max_seq_length, device=device)
        shared_dims = [d for d in dims if d in champion.dims and d <= model.get_embedding_dimension()]
        encoder = SharedEncoder(model, batch_size, shared, **speed)
        start_model = time.perf_counter()
        for item in scored:
            log.info("champion v%d: encoding %s (dims %s)", champion.version, item.key, shared_dims)
            q, c = encoder.collection(item.collection)
            per_query[item.key]["champion"], _ = score_grid(q, c, item.collection.judgements, shared_dims, (FLOAT32,),
                                                           query_chunk, config.rescore_multiplier, device)
        encode_seconds["all.champion"] = time.perf_counter() - start_model
        encoded_texts["champion"] = encoder.encoded
        del model, encoder
    results: dict = {}
    for item in scored:
        collection = item.collection
        summary = {
            "dims": dims,
            "base_model": base_ref,
            "n_queries": len(collection.queries),
            "n_corpus": len(collection.corpus),
            "eval_fingerprint": collection.fingerprint,
            **summarize(per_query[item.key], latency[item.key], dims, item.precisions,
                        len(collection.corpus), config, collection.languages),
        }
        if champion is not None:
            summary["champion"] = {"version": champion.version, "error": champion.error, "deltas": {},
                                   **summary.get("champion", {})}
        if item.key == "main":
            results = summary
        else:
            # Every collection but the main set is a guard: the gate refuses a candidate significantly
            # worse than the base on any of them.
            summary.update(guard=True, kind=item.kind, description=item.description)
            results.setdefault("collections", {})[item.key] = summary
    # Through JSON so the returned dict equals what results.json holds (tuples become lists).
    results["settings"] = json.loads(json.dumps({**asdict(config), "device": device, "encode_seconds": encode_seconds,
                                                 "encoded_texts": encoded_texts}))
    return results
