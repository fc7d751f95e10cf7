"""Per-row language identification, offline.

py3langid (a maintained fork of langid.py, ~5 MB, numpy only) rather than lingua (a ~96 MB wheel):
prep labels every row, and at 100k rows both speed and install size matter more than lingua's edge
on very short texts. Its per-text Python DFA walk (~0.5 ms a row) would dominate prep, so the walk
runs here for all texts at once in numpy over the same model tables; `detect_languages_reference`
is the library's own per-text call, kept for tests that check the two agree.
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)

UNDETERMINED = "und"
# Bytes of each text fed to the classifier: a query plus the start of its passage is plenty.
MAX_BYTES = 160
# Texts per numpy walk: bounds the (texts x bytes) matrix.
CHUNK = 20_000


class _Tables:
    def __init__(self):
        from py3langid.langid import _get_identifier

        identifier = _get_identifier()
        self.identifier = identifier
        self.nextmove = np.frombuffer(identifier.tk_nextmove, dtype=np.uint32).astype(np.int64)
        self.rowbase = np.asarray(identifier._rowbase, dtype=np.int64)
        self.output = np.asarray(identifier.tk_output, dtype=np.int64)
        self.ptc = np.asarray(identifier.nb_ptc, dtype=np.float32)
        self.pc = np.asarray(identifier.nb_pc, dtype=np.float32)
        self.classes = list(identifier.nb_classes)
        self.alias_pairs = list(identifier._alias_pairs)


_TABLES: _Tables | None = None


def _tables() -> _Tables:
    global _TABLES
    if _TABLES is None:
        _TABLES = _Tables()
    return _TABLES


def detect_languages(texts: list[str]) -> list[str]:
    """ISO 639-1 code per text ("und" when there is nothing to classify)."""
    codes: list[str] = []
    for lo in range(0, len(texts), CHUNK):
        codes += _detect_chunk(texts[lo : lo + CHUNK])
    return codes


def _detect_chunk(texts: list[str]) -> list[str]:
    from py3langid.langid import LanguageIdentifier
    from scipy import sparse

    tables = _tables()
    encoded = [LanguageIdentifier._encode(t)[:MAX_BYTES] for t in texts]
    lengths = np.fromiter((len(b) for b in encoded), dtype=np.int64, count=len(encoded))
    width = int(lengths.max()) if len(encoded) else 0
    data = np.zeros((len(encoded), width), dtype=np.int64)
    for row, raw in enumerate(encoded):
        data[row, : len(raw)] = np.frombuffer(raw, dtype=np.uint8)
    # Walk the tokenizer DFA for every text at once; each visited state may emit one feature.
    states = np.zeros(len(encoded), dtype=np.int64)
    rows_hit, features_hit = [], []
    for position in range(width):
        active = np.nonzero(lengths > position)[0]
        states[active] = tables.nextmove[tables.rowbase[states[active]] + data[active, position]]
        emitted = tables.output[states[active]]
        keep = emitted >= 0
        rows_hit.append(active[keep])
        features_hit.append(emitted[keep])
    rows = np.concatenate(rows_hit) if rows_hit else np.zeros(0, dtype=np.int64)
    feats = np.concatenate(features_hit) if features_hit else np.zeros(0, dtype=np.int64)
    counts = sparse.coo_matrix((np.ones(len(rows), dtype=np.float32), (rows, feats)), shape=(len(encoded), tables.ptc.shape[0])).tocsr()
    counts.data = np.log1p(counts.data)
    scores = np.asarray(counts @ tables.ptc) + tables.pc
    for keep_col, drop_col in tables.alias_pairs:
        scores[:, keep_col] = np.maximum(scores[:, keep_col], scores[:, drop_col])
        scores[:, drop_col] = -np.inf
    best = scores.argmax(axis=1)
    has_features = np.diff(counts.indptr) > 0
    return [tables.classes[b] if ok else UNDETERMINED for b, ok in zip(best.tolist(), has_features.tolist())]


def detect_languages_reference(texts: list[str]) -> list[str]:
    """The library's own per-text classifier (slow; for agreement tests)."""
    from py3langid import classify

    return [classify(t)[0] if t.strip() else UNDETERMINED for t in texts]


def tag_languages(pairs: list[dict], passage_chars: int) -> None:
    """Set pair["language"] from the query plus the start of its passage (short queries are ambiguous)."""
    texts = [f"{p['query']} {p['passage'][:passage_chars]}" for p in pairs]
    for pair, code in zip(pairs, detect_languages(texts)):
        pair["language"] = code
