"""Token lengths of queries and passages against the model's max_seq_length: how much text the
model will never see (the data card's truncation figures)."""

from __future__ import annotations

import random
import statistics
from pathlib import Path


def load_tokenizer(model_ref: str):
    """The model's tokenizer (no weights), or None when it cannot be loaded offline."""
    from transformers import AutoTokenizer

    from ..models import resolve_model_path

    root = Path(resolve_model_path(model_ref))
    candidates = [root] + sorted(p.parent for p in root.glob("*/tokenizer_config.json")) if root.exists() else [model_ref]
    for candidate in candidates:
        try:
            return AutoTokenizer.from_pretrained(str(candidate))
        except Exception:  # noqa: BLE001 - any loading failure falls back to an estimate
            continue
    return None


def token_lengths(texts: list[str], tokenizer, max_seq_length: int) -> list[int]:
    """Token counts (with special tokens), exact up to max_seq_length and capped at max_seq_length + 1.
    A text with at least max_seq_length words is surely cut (every word is at least one token), so
    only shorter texts are tokenised: on long medical answers that skips most of the work."""
    lengths = [max_seq_length + 1] * len(texts)
    short = [i for i, t in enumerate(texts) if len(t.split()) + 2 <= max_seq_length]
    if tokenizer is None:
        # Offline without the tokenizer: ~1.3 word pieces per word is typical for English WordPiece.
        for i in short:
            lengths[i] = min(int(len(texts[i].split()) * 1.3) + 2, max_seq_length + 1)
        return lengths
    for lo in range(0, len(short), 8192):
        chunk = short[lo : lo + 8192]
        ids = tokenizer([texts[i] for i in chunk], add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
        for i, tokens in zip(chunk, ids):
            lengths[i] = min(len(tokens), max_seq_length + 1)
    return lengths


def length_sample(texts: list[str], limit: int, seed: int) -> tuple[list[str], int]:
    """(texts to measure, how many distinct texts there are): a seeded sample past length_sample."""
    if limit and len(texts) > limit:
        return random.Random(seed).sample(texts, limit), len(texts)
    return texts, len(texts)


def length_summary(lengths: list[int], max_seq_length: int) -> dict:
    ordered = sorted(lengths)
    truncated = sum(1 for n in lengths if n > max_seq_length)
    return {
        "count": len(lengths),
        "median": int(statistics.median(ordered)) if ordered else 0,
        "p95": ordered[int(0.95 * (len(ordered) - 1))] if ordered else 0,
        "truncated": truncated,
        "truncated_pct": 100.0 * truncated / max(1, len(lengths)),
    }
