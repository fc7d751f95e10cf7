"""Near-duplicate detection with MinHash LSH (datasketch) and a small union-find.

Exact duplicates (same case-folded words) share one signature; near-duplicates are LSH candidates
whose estimated Jaccard similarity over word shingles reaches the threshold.
"""

from __future__ import annotations

import itertools
import logging
import re
from collections import defaultdict

import numpy as np

log = logging.getLogger(__name__)

_WORD = re.compile(r"\w+")
# Documents per vectorised signature block: bounds the (shingles x permutations) matrix.
SIGNATURE_BLOCK = 2048
# LSH buckets larger than this are verified as a star (member vs first) instead of all pairs.
BUCKET_PAIR_LIMIT = 64


class UnionFind:
    def __init__(self, size: int):
        self.parent = list(range(size))

    def find(self, i: int) -> int:
        parent = self.parent
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        root_a, root_b = self.find(a), self.find(b)
        if root_a != root_b:
            self.parent[root_a] = root_b

    def labels(self) -> list[int]:
        """Dense component ids in order of first appearance."""
        roots: dict[int, int] = {}
        return [roots.setdefault(self.find(i), len(roots)) for i in range(len(self.parent))]


def exact_key(text: str) -> str:
    return " ".join(_WORD.findall(text.casefold()))


def _mix64(values: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: spreads small word ids over 64 bits."""
    values = values + np.uint64(0x9E3779B97F4A7C15)
    values = (values ^ (values >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    values = (values ^ (values >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return values ^ (values >> np.uint64(31))


def corpus_shingle_hashes(texts: list[str], width: int, max_words: int, pretokenized: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(32-bit shingle hashes, text index per shingle) for all texts at once. A shingle is `width`
    consecutive words among a text's first `max_words`; a shorter text is one shingle. Words become
    ids through one dict and n-grams are combined in numpy: building n-gram strings in Python was
    the slowest part of prep. `pretokenized`: texts are already `exact_key`s (words joined by spaces)."""
    all_words: list[str] = []
    lengths = np.zeros(len(texts), dtype=np.int64)
    for index, text in enumerate(texts):
        words = (text.split() if pretokenized else _WORD.findall(text.casefold()))[:max_words] or [""]
        all_words.extend(words)
        lengths[index] = len(words)
    # Word -> dense id with the loop in C (map over a defaultdict), not a Python comprehension.
    vocabulary = defaultdict(itertools.count().__next__)
    hashed = _mix64(np.fromiter(map(vocabulary.__getitem__, all_words), dtype=np.uint64, count=len(all_words)))
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    doc_of_word = np.repeat(np.arange(len(texts)), lengths)
    ends = (starts + lengths)[doc_of_word]
    positions = np.arange(len(hashed))
    padded = np.concatenate([hashed, np.zeros(width, dtype=np.uint64)])
    combined = np.zeros(len(hashed), dtype=np.uint64)
    for offset in range(width):
        inside = (positions + offset) < ends
        combined = combined * np.uint64(0x100000001B3) + np.where(inside, padded[offset : offset + len(hashed)], np.uint64(0))
    # A shingle starts wherever a full window fits, or at the first word of a short text.
    valid = (positions + width <= ends) | ((positions == starts[doc_of_word]) & (lengths[doc_of_word] < width))
    folded = _mix64(combined[valid])
    return (folded ^ (folded >> np.uint64(32))).astype(np.uint32), doc_of_word[valid]


def _sorted_unique_counts(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """np.unique(..., return_counts=True) by sorting: numpy's hash-based unique was 5x slower here."""
    values = np.sort(values)
    if not len(values):
        return values, np.zeros(0, dtype=np.int64)
    starts = np.flatnonzero(np.concatenate([[True], values[1:] != values[:-1]]))
    return values[starts], np.diff(np.append(starts, len(values)))


def signatures(
    texts: list[str], num_perm: int, shingle_words: int, max_words: int, seed: int = 1,
    boilerplate_fraction: float = 0.0, pretokenized: bool = False,
) -> np.ndarray:
    """MinHash signature matrix (text x permutation), each row equal to datasketch's own
    `MinHash.update_batch` (a test checks it) but computed for many texts at once in numpy: the
    per-document call costs ~100 us, which dominated prep at 100k pairs.

    Shingles found in more than `boilerplate_fraction` of the texts are left out (unless that
    leaves a text none): templated answers ("The Human Phenotype Ontology provides the following
    list of signs and symptoms for ...") would otherwise make different diseases near-duplicates."""
    from datasketch import MinHash
    from datasketch.minhash import _fmix

    template = MinHash(num_perm=num_perm, seed=seed, hashfunc=int)
    a, b = (np.asarray(p, dtype=np.uint32) for p in template.permutations)
    hashes, docs = corpus_shingle_hashes(texts, shingle_words, max_words, pretokenized)
    if boilerplate_fraction and len(texts) > 1:
        pairs = _sorted_unique_counts((docs.astype(np.uint64) << np.uint64(32)) | hashes.astype(np.uint64))[0]
        values, counts = _sorted_unique_counts((pairs & np.uint64(0xFFFFFFFF)).astype(np.uint32))
        common = values[counts > max(2, boilerplate_fraction * len(texts))]
        if len(common):
            keep = ~np.isin(hashes, common)
            # A text made only of boilerplate keeps its shingles.
            emptied = np.bincount(docs[keep], minlength=len(texts)) == 0
            keep |= emptied[docs]
            hashes, docs = hashes[keep], docs[keep]
    result = np.empty((len(texts), num_perm), dtype=np.uint32)
    doc_starts = np.searchsorted(docs, np.arange(len(texts) + 1))
    for lo in range(0, len(texts), SIGNATURE_BLOCK):
        hi = min(lo + SIGNATURE_BLOCK, len(texts))
        block = slice(doc_starts[lo], doc_starts[hi])
        permuted = _fmix(hashes[block], 32)[:, None] * a[None, :] + b[None, :]
        result[lo:hi] = np.minimum.reduceat(permuted, doc_starts[lo:hi] - doc_starts[lo], axis=0)
    return result


def similar_pairs(matrix: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i, j) whose estimated Jaccard similarity reaches the threshold, found by LSH
    banding with datasketch's own choice of bands and rows for that threshold (`MinHashLSH` does the
    same per text in Python; here all texts are bucketed at once by sorting). Inside a bucket every
    pair is verified, except in buckets past BUCKET_PAIR_LIMIT members, where each member is
    verified against the first (enough for connected components)."""
    from datasketch.lsh import _optimal_param

    bands, rows = _optimal_param(threshold, matrix.shape[1], 0.5, 0.5)
    left, right = [], []
    for band in range(bands):
        keys = np.ascontiguousarray(matrix[:, band * rows : (band + 1) * rows]).view(np.dtype((np.void, 4 * rows))).ravel()
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        starts = np.flatnonzero(np.concatenate([[True], sorted_keys[1:] != sorted_keys[:-1]]))
        sizes = np.diff(np.append(starts, len(keys)))
        for start, size in zip(starts[sizes > 1].tolist(), sizes[sizes > 1].tolist()):
            members = order[start : start + size]
            if size <= BUCKET_PAIR_LIMIT:
                i, j = np.triu_indices(size, k=1)
                left.append(members[i])
                right.append(members[j])
            else:
                left.append(np.full(size - 1, members[0]))
                right.append(members[1:])
    if not left:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    pairs = np.unique(np.stack([np.concatenate(left), np.concatenate(right)], axis=1), axis=0)
    left, right = pairs[:, 0], pairs[:, 1]
    similarity = (matrix[left] == matrix[right]).mean(axis=1)
    keep = similarity >= threshold
    return left[keep], right[keep]


def near_duplicate_clusters(
    texts: list[str], threshold: float, num_perm: int, shingle_words: int, max_words: int,
    boilerplate_fraction: float = 0.0, seed: int = 1,
) -> tuple[list[int], np.ndarray]:
    """(cluster id per text, signature row per text): texts are in one cluster when they are equal
    after case-folding and punctuation removal, or linked by a chain of near-duplicates
    (MinHash Jaccard >= threshold)."""
    key_index: dict[str, int] = {}
    text_to_unique = np.array([key_index.setdefault(exact_key(t), len(key_index)) for t in texts], dtype=np.int64)
    unique_keys = list(key_index)
    finder = UnionFind(len(unique_keys))
    unique_signatures = signatures(unique_keys, num_perm, shingle_words, max_words, seed, boilerplate_fraction, pretokenized=True)
    for a, b in zip(*(side.tolist() for side in similar_pairs(unique_signatures, threshold))):
        finder.union(a, b)
    unique_labels = np.array(finder.labels(), dtype=np.int64)
    return unique_labels[text_to_unique].tolist(), unique_signatures[text_to_unique]


def crossing_near_duplicates(texts: list[str], signature_rows: np.ndarray, splits: list[str], threshold: float) -> int:
    """Leakage check on the final split, independent of how groups were built: how many texts have
    an equal or near-duplicate text (same MinHash test as the grouping) in another split."""
    split_codes = np.unique(np.asarray(splits), return_inverse=True)[1]
    crossing = np.zeros(len(texts), dtype=bool)
    left, right = similar_pairs(signature_rows, threshold)
    differ = split_codes[left] != split_codes[right]
    crossing[left[differ]] = True
    crossing[right[differ]] = True
    splits_of_key: dict[str, set[str]] = {}
    keys = [exact_key(t) for t in texts]
    for key, split in zip(keys, splits):
        splits_of_key.setdefault(key, set()).add(split)
    crossing |= np.array([len(splits_of_key[k]) > 1 for k in keys], dtype=bool)
    return int(crossing.sum())
