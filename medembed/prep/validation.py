"""Row checks and text normalisation.

A row is *bad* (dropped, counted against the tolerance) when a text field is missing, of the wrong
type, empty, too short (fewer than two letters or digits), badly encoded or absurdly long, or when its
question equals its answer. HTML remnants are not fatal: they are stripped and counted; markup written
as entities (`&lt;script&gt;`) is stripped too, never unescaped into live markup. Issues carry file,
row, field and reason, never the text (it may hold personal data).
"""

from __future__ import annotations

import html
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field

from .ingest import RAW_FIELD, DataError

# A tag, closing tag, comment or declaration: "<" + letter, "/", "!" or "?", up to the next ">" (bounded, so
# linear). "a < b" and "HbA1c <7%" are not tags.
_HTML_TAG = re.compile(r"<(?:/?[A-Za-z]|[!?])[^<>]{0,2000}>")
# What is left of a tag without its ">" ("<script" at the end of a field): escaped, so it cannot open one.
_TAG_OPENER = re.compile(r"<(?=/?[A-Za-z]|[!?])")
_HTML_ENTITY = re.compile(r"&(?:[a-zA-Z]{2,8}|#\d{1,6}|#x[0-9a-fA-F]{1,6});")
# U+FFFD from undecodable bytes, UTF-8 read as Latin-1/cp1252 ("Ã©", "â€™"), stray C0 controls.
_MOJIBAKE = re.compile("Ã[\u0080-\u00bf]|â€[\u0080-\u00bf\u2018-\u203a\u0152-\u017e]")
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f]")
_WORD = re.compile(r"\w+")
# A leading question-like heading: up to 200 characters without a sentence end, closed by "?".
_LEADING_HEADING = re.compile(r"^([^.?!]{3,200}\?)\s+(?=\S)")
# A question or answer needs at least this many letters or digits.
MIN_TEXT_ALNUM = 2
# How many issues a failure message and the row-level report list (counts are always complete).
MESSAGE_EXAMPLES = 10
REPORT_EXAMPLES = 1000


@dataclass(frozen=True)
class RowIssue:
    file: str
    row: int
    field: str
    reason: str

    def describe(self) -> str:
        return f"{self.file} row {self.row} field {self.field!r}: {self.reason}"


@dataclass
class ValidationReport:
    rows_read: int = 0
    bad_rows: int = 0
    issues_by_reason: Counter = field(default_factory=Counter)
    warnings_by_reason: Counter = field(default_factory=Counter)
    issues: list[RowIssue] = field(default_factory=list)
    warnings: list[RowIssue] = field(default_factory=list)
    # Files in an input folder that are of no supported type (named in the log and the report).
    skipped_files: list = field(default_factory=list)

    def add(self, issue: RowIssue, fatal: bool) -> None:
        bucket, counter = (self.issues, self.issues_by_reason) if fatal else (self.warnings, self.warnings_by_reason)
        counter[issue.reason.split(" (")[0]] += 1
        if len(bucket) < REPORT_EXAMPLES:
            bucket.append(issue)

    def to_dict(self) -> dict:
        return {
            "rows_read": self.rows_read,
            "bad_rows": self.bad_rows,
            "issues_by_reason": dict(self.issues_by_reason),
            "warnings_by_reason": dict(self.warnings_by_reason),
            "issues": [vars(i) for i in self.issues],
            "warnings": [vars(w) for w in self.warnings],
            "skipped_files": [str(p) for p in self.skipped_files],
        }


def normalize_text(value: object) -> str:
    if value is None:
        return ""
    text = str(value)
    if not text.isascii():
        text = unicodedata.normalize("NFKC", text)
    # split() without arguments splits on the same Unicode whitespace as \s, several times faster than re.sub.
    return " ".join(text.split())


def strip_html(text: str) -> tuple[str, bool]:
    """Tags removed and entities decoded. Decoding can create markup (`&lt;script&gt;` -> `<script>`),
    so tags are stripped again afterwards, and a tag opener left without its ">" is escaped."""
    if "<" not in text and "&" not in text:
        return text, False
    cleaned = _HTML_TAG.sub(" ", text)
    cleaned = _HTML_ENTITY.sub(lambda m: html.unescape(m.group(0)), cleaned)
    if "<" in cleaned:
        cleaned = _TAG_OPENER.sub("&lt;", _HTML_TAG.sub(" ", cleaned))
    return cleaned, cleaned != text


def strip_question_heading(question: str, answer: str, min_overlap: float) -> tuple[str, bool]:
    """Drop a leading heading such as "What are the signs and symptoms of X?" when most of its
    words are in the question: it only repeats the query and would make retrieval trivially lexical."""
    match = _LEADING_HEADING.match(answer)
    if not match:
        return answer, False
    heading_words = set(_WORD.findall(match.group(1).lower()))
    question_words = set(_WORD.findall(question.lower()))
    if not heading_words or len(heading_words & question_words) / len(heading_words) < min_overlap:
        return answer, False
    return answer[match.end():], True


def check_text(record: dict, name: str, max_chars: int) -> tuple[str | None, str | None, bool]:
    """(normalised text or None, reason it is bad or None, html was stripped)."""
    if name not in record:
        present = ", ".join(sorted(map(str, record))) or "none"
        return None, f"has no field {name!r} (fields present: {present}); set data.question_field / data.passage_field or data.column_map", False
    value = record[name]
    if value is None:
        return None, "empty", False
    if not isinstance(value, str):
        return None, f"wrong type ({type(value).__name__}, expected text)", False
    if "\ufffd" in value or _CONTROL.search(value) or (("Ã" in value or "â€" in value) and _MOJIBAKE.search(value)):
        return None, "broken encoding (replacement or mojibake characters): save the file as UTF-8", False
    text, had_html = strip_html(value)
    text = normalize_text(text)
    if not text:
        return None, "empty", had_html
    if len(text) > max_chars:
        return None, f"absurd length ({len(text)} characters > {max_chars})", had_html
    if sum(map(str.isalnum, text[:64])) < MIN_TEXT_ALNUM:
        return None, (f"too short (fewer than {MIN_TEXT_ALNUM} letters or digits): fix the row or remove it"), had_html
    return text, None, had_html


def _letters_and_digits(text: str) -> str:
    return "".join(filter(str.isalnum, text.casefold()))


def pair_issue(question: str, answer: str) -> str | None:
    """A row-level problem of the pair as a whole (reported on the answer field). Case, spacing and
    punctuation do not make a question different from its answer."""
    if _letters_and_digits(question) == _letters_and_digits(answer):
        return ("question equals the answer (nothing to learn or retrieve): check that data.question_field and "
                "data.passage_field (or data.column_map) name two different columns, or remove the row")
    return None


def enforce_tolerance(report: ValidationReport, max_bad_fraction: float, source: str) -> None:
    """Fail when more rows were bad than the tolerance allows, naming files, rows and fields."""
    allowed = int(max_bad_fraction * report.rows_read)
    if report.bad_rows <= allowed:
        return
    examples = "; ".join(issue.describe() for issue in report.issues[:MESSAGE_EXAMPLES])
    reasons = ", ".join(f"{reason}: {count}" for reason, count in report.issues_by_reason.most_common())
    raise DataError(
        f"{source}: {report.bad_rows} of {report.rows_read} rows are unusable, more than the tolerance "
        f"of {allowed} (data.max_bad_row_fraction={max_bad_fraction}) [{reasons}]; first: {examples}. "
        f"Fix or remove those rows (validation_report.json lists up to {REPORT_EXAMPLES}), or raise "
        f"data.max_bad_row_fraction to drop them"
    )


def raw_row_issue(record: dict) -> str | None:
    return record.get(RAW_FIELD) if RAW_FIELD in record and len(record) == 1 else None
