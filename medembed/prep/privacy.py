"""Likely personal identifiers in free text: detect, then redact or fail.

Hand-written patterns rather than presidio-analyzer: presidio pulls spaCy (hundreds of MB) and its
name recogniser needs a spaCy language model that no package registry reachable here ships, so it
would add weight without adding name detection. Names are caught only after an honorific or a
"patient/name:" label, where medical text gives few false positives. Only counts leave this module.
"""

from __future__ import annotations

import re
from collections import Counter

from ..config import PII_ACTIONS  # noqa: F401  (the accepted data.pii_action values)

_MONTH = r"(?:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\.?"
_DATE = rf"(?:\d{{1,4}}[/.-]\d{{1,2}}[/.-]\d{{1,4}}|\d{{1,2}}\s+{_MONTH}\s+\d{{4}}|{_MONTH}\s+\d{{1,2}},?\s+\d{{4}})"
PATTERNS: dict[str, str] = {
    "email": r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)*\.[a-zA-Z]{2,}\b",
    # Labelled record numbers first, so "MRN 12345678" is not counted as a phone number.
    "record_number": r"\b(?:MRN|medical record (?:number|no\.?|#)|patient (?:id|number|no\.?)|NHS (?:number|no\.?)|SSN)\s*[:#]?\s*[A-Z0-9][A-Z0-9-]{3,}\b"
    r"|\b\d{3}-\d{2}-\d{4}\b",
    "date_of_birth": rf"\b(?:DOB|D\.O\.B\.|date of birth|born(?: on)?|né(?:e)? le)\s*[:#]?\s*{_DATE}",
    "phone": r"(?<![\w-])(?:\+?\d{1,3}[\s.-]?)?(?:\(\d{2,4}\)[\s.-]?|\d{2,4}[\s.-])\d{2,4}[\s.-]\d{2,4}(?:[\s.-]\d{2,4})?(?![\w-])",
    # The name itself must be capitalised even though the rest of the patterns ignore case.
    # No bare "M." (French "Monsieur"): it is also the genus in "M. tuberculosis".
    "person_name": r"\b(?:Mr|Mrs|Ms|Miss|Mme|Mlle)\.?\s+(?-i:[A-Z][a-z]+(?:\s+[A-Z][a-z]+)?)"
    r"|\b(?:patient name|name)\s*:\s*(?-i:[A-Z][a-z]+(?:\s+[A-Z][a-z]+)?)",
}
_COMBINED = re.compile("|".join(f"(?P<{kind}>{pattern})" for kind, pattern in PATTERNS.items()), re.IGNORECASE)
# Dates, counts and ranges in medical text look like phones: require enough digits.
MIN_PHONE_DIGITS = 9


def _kind(match: re.Match) -> str | None:
    kind = match.lastgroup
    text = match.group(0)
    if kind == "phone" and sum(ch.isdigit() for ch in text) < MIN_PHONE_DIGITS:
        return None
    return kind


# Cheap first pass: only texts with an "@", a run of digits, a label or an honorific go through
# the full patterns (one alternation tried at every position is the slow part on long passages).
_DIGIT_RUN = re.compile(r"\d[\d\s().-]{6,}\d|\d[/.-]\d")
_HONORIFIC = re.compile(r"M(?:rs?|s|iss|me|lle)\.?\s+[A-Z]")
_LABELS = ("mrn", "ssn", "nhs", "dob", "d.o.b", "birth", "born", "né", "patient", "name")


def _triggered(text: str) -> bool:
    if "@" in text or _DIGIT_RUN.search(text) or _HONORIFIC.search(text):
        return True
    lowered = text.lower()
    return any(label in lowered for label in _LABELS)


def _matches(text: str):
    if not _triggered(text):
        return
    for match in _COMBINED.finditer(text):
        kind = _kind(match)
        if kind:
            yield match, kind


def scan(text: str) -> Counter:
    return Counter(kind for _, kind in _matches(text))


def redact(text: str) -> tuple[str, Counter]:
    """Text with each identifier replaced by a placeholder such as [EMAIL], and counts per kind."""
    found = Counter()
    pieces, last = [], 0
    for match, kind in _matches(text):
        found[kind] += 1
        pieces += [text[last : match.start()], f"[{kind.upper()}]"]
        last = match.end()
    if not found:
        return text, found
    pieces.append(text[last:])
    return "".join(pieces), found
