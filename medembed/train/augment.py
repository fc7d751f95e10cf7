"""Query augmentation from the training data itself, so the model also learns queries that are not
the data's question template (issue 10; docs/QUALITY.md has the measurements).

Kinds (config.AUGMENT_KINDS; each an extra training row whose positive, and hard negatives, are those of
its source row; the no-duplicates batch sampler therefore never puts it in a batch with its source row):

- `stripped`: the question without its template words. Template words are learnt from the data: words
  found in at least `template_df` of all training questions ("what", "are", "the", "symptoms", "of", ...).
  "What are the symptoms of Ewing sarcoma ?" -> "Ewing sarcoma".
- `keywords`: the stripped question plus the template's content words (template words that are not
  English function words), shuffled: -> "symptoms Ewing sarcoma" or "Ewing sarcoma symptoms".
- `sentence`: one sentence of the passage's opening (5-40 words) as the query (inverse-cloze style),
  so the model keeps matching plain statements, not only questions.

Nothing here uses metadata columns or the probe lexicons (medembed/prep/probes.py), so it works on any
question/passage data and is not trained on the probes' own wording. Deterministic under a seed.
"""

from __future__ import annotations

import random
import re
from collections import Counter

from ..config import AUGMENT_KINDS

_WORD = re.compile(r"[\w'-]+")
# English function words: never kept as "content" template words.
FUNCTION_WORDS = frozenset(
    "a an the of for to in on at by with about from and or is are was were be been being do does did have has "
    "had what which who whom whose how why when where can could should would will may might must there their "
    "this that these those it its i you your my me we our they them he she his her as if not no any some many "
    "much more most other such than then so very just also into out up down over under again further once".split()
)


def template_words(questions: list[str], min_df: float) -> set[str]:
    """Lower-cased words found in at least `min_df` of the questions (their document frequency)."""
    counts: Counter = Counter()
    for question in questions:
        counts.update({w.lower() for w in _WORD.findall(question)})
    threshold = max(2, min_df * len(questions))
    return {word for word, n in counts.items() if n >= threshold}


def stripped(question: str, template: set[str]) -> str:
    return " ".join(w for w in _WORD.findall(question) if w.lower() not in template)


def keywords(question: str, template: set[str], rng: random.Random) -> str:
    topic = stripped(question, template)
    content = [w.lower() for w in _WORD.findall(question) if w.lower() in template and w.lower() not in FUNCTION_WORDS]
    if not topic or not content:
        return ""
    parts = [topic, " ".join(content)]
    rng.shuffle(parts)
    return " ".join(parts)


def passage_sentence(passage: str, rng: random.Random, min_words: int = 5, max_words: int = 40, first: int = 3) -> str:
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", passage)[:first]]
    usable = [s for s in sentences if min_words <= len(s.split()) <= max_words]
    return rng.choice(usable) if usable else ""


def augment_rows(rows: list[dict], kinds: tuple[str, ...], rate: float, seed: int, template_df: float = 0.02,
                 anchor: str = "anchor", positive: str = "positive") -> list[dict]:
    """`rows` plus, for a seeded `rate` share of them, one extra row whose anchor is an augmented query
    (kind drawn uniformly from `kinds`). Rows whose augmented query is empty, equals the question, or
    repeats an earlier (query, positive) pair are skipped. The originals come first, unchanged."""
    unknown = set(kinds) - set(AUGMENT_KINDS)
    if unknown:
        raise ValueError(f"unknown augmentation kinds {sorted(unknown)}; choose from {AUGMENT_KINDS}")
    if not kinds or rate <= 0 or not rows:
        return list(rows)
    rng = random.Random(seed)
    template = template_words([str(r[anchor]) for r in rows], template_df)
    seen = {(str(r[anchor]).casefold(), str(r[positive])) for r in rows}
    extra = []
    for row in rows:
        if rng.random() >= rate:
            continue
        kind = rng.choice(kinds)
        if kind == "stripped":
            query = stripped(row[anchor], template)
        elif kind == "keywords":
            query = keywords(row[anchor], template, rng)
        else:
            query = passage_sentence(row[positive], rng)
        key = (query.casefold(), str(row[positive]))
        if not query or query.casefold() == str(row[anchor]).casefold() or key in seen:
            continue
        seen.add(key)
        extra.append({**row, anchor: query})
    return list(rows) + extra
