"""The IR evaluation set (BEIR layout) built from the test split, with distractor passages."""

from __future__ import annotations

import random
from typing import Iterable

from . import dedup


def build_ir_set(
    test_pairs: Iterable[dict], distractors: Iterable[str] = ()
) -> tuple[list[dict], list[dict], list[tuple[str, str, int]]]:
    """BEIR-style queries, corpus and qrels. Identical query texts become one query with every one
    of their passages relevant; (near-)duplicate passages become one corpus entry, so a duplicate
    of the answer is never counted as a miss. Distractors are passages of other groups. Each test
    pair gets its "qid" and "pid" in the set (the built-in probes refer to them)."""
    query_ids: dict[str, str] = {}
    query_rows: list[dict] = []
    passage_ids: dict[object, str] = {}
    corpus: list[dict] = []
    qrels: set[tuple[str, str]] = set()
    for pair in test_pairs:
        query_key = dedup.exact_key(pair["query"])
        if query_key not in query_ids:
            query_ids[query_key] = f"q{len(query_ids)}"
            query_rows.append({"_id": query_ids[query_key], "text": pair["query"], "language": pair.get("language", "und")})
        passage_key = pair.get("passage_cluster", pair["passage"])
        if passage_key not in passage_ids:
            passage_ids[passage_key] = f"d{len(passage_ids)}"
            corpus.append({"_id": passage_ids[passage_key], "text": pair["passage"]})
        qrels.add((query_ids[query_key], passage_ids[passage_key]))
        pair["qid"], pair["pid"] = query_ids[query_key], passage_ids[passage_key]
    for text in distractors:
        corpus.append({"_id": f"x{len(corpus)}", "text": text})
    return query_rows, corpus, sorted((q, p, 1) for q, p in qrels)


def pick_distractors(pairs: list[dict], count: int, seed: int) -> list[str]:
    by_cluster: dict[int, str] = {}
    for pair in pairs:
        by_cluster.setdefault(pair["passage_cluster"], pair["passage"])
    texts = list(by_cluster.values())
    return random.Random(seed).sample(texts, min(count, len(texts)))
