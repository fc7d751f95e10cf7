"""Embeddings to ranked results at every dim and storage precision: truncate and re-normalise,
quantise (float32 / int8 calibrated on the corpus / packed binary, binary with float rescoring),
and exact top-k search in chunks that never materialise the full score matrix."""

from __future__ import annotations

import math

import numpy as np

from ..config import PRECISIONS

# The accepted eval.precisions, named once in the configuration.
FLOAT32, INT8, BINARY, BINARY_RESCORE = PRECISIONS
# Stored bits per coordinate. Rescoring reuses the binary index's own bits: no extra storage.
PRECISION_BITS = {FLOAT32: 32, INT8: 8, BINARY: 1, BINARY_RESCORE: 1}
# A float32 score holds integers exactly up to 2**24: int8 dot products of this many dims fit.
INT8_EXACT_FLOAT32_DIMS = 2**24 // 128**2
CORPUS_CHUNK = 65536
RESCORE_BATCH_ELEMENTS = 2**24


def truncate_normalize(embeddings, dim: int):
    """First `dim` coordinates, scaled back to unit length (truncation breaks normalisation)."""
    import torch

    cut = embeddings[:, :dim].float()
    return torch.nn.functional.normalize(cut, p=2, dim=1)


def bytes_per_vector(dim: int, precision: str) -> int:
    return math.ceil(dim * PRECISION_BITS[precision] / 8)


def _chunked_top_k(score_chunk, n_queries: int, n_corpus: int, k: int, query_chunk: int,
                   corpus_chunk: int | None = None, integer_scores: bool = False):
    """Exact top-k of `score_chunk(q_slice, c_slice) -> scores` without the full score matrix.

    Integer scores (int8 dot products, Hamming distances) tie often: ties then rank by corpus
    order, through a float64 key that is exact for them, so results do not depend on topk's
    internal order."""
    import torch

    # Read at call time, so the chunking can be exercised on small inputs.
    corpus_chunk = corpus_chunk or CORPUS_CHUNK

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


def top_k(query_emb, corpus_emb, k: int, query_chunk: int = 1024, corpus_chunk: int | None = None):
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
    docs/STACK-NOTES.md §2). Returns (-distance, index). Distance = (bits - s) / 2 with s the dot product of
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
