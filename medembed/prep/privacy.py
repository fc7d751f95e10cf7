"""Likely personal identifiers in free text: detect, then redact or fail.

Kinds: `person_name` (after an honorific such as Mr/Mrs/Ms/Mx/Miss/Dr/Prof/Mme, or a label such as
"Patient:", "Pt:", "Name:", "Attending:", "Next of kin:"), `record_number` (MRN, MR#, medical record,
account/Acct#, member/subscriber/policy/group/insurance/Medicare/Medicaid IDs, NHS number, chart,
encounter, claim, accession numbers), `ssn`, `date_of_birth` (a date after DOB / date of birth / born /
né le), `address` (a numbered street with its unit, city, state and ZIP; P.O. boxes; "Address:" lines),
`email` and `phone`. A redaction replaces the value and keeps the label ("MRN: [RECORD_NUMBER]").
Only counts and positions leave this module, never the text.

Why hand-written patterns and not presidio-analyzer (2.2.366, checked here): it requires spaCy (a
390 MB environment), its default engine downloads a spaCy model at start-up (fails offline), its name
recogniser needs that model (no package registry reachable here ships one), and its pattern
recognisers work without it but cover only e-mail, phone, SSN and bare dates: no labelled names,
record/account/member numbers, dates of birth or street addresses. Its phone recogniser
(python-phonenumbers) took 8 s on a 1 MB row of "1-1-1-...", against the one-second budget below.

Linear time: every quantifier in these patterns is bounded (RFC limits for e-mail parts, a few
tokens per name) and adjacent repeats cannot share characters, so each match attempt inspects a
bounded window and a scan is linear in the text length (tests/test_faults_privacy.py scans 1 MB
adversarial rows). No unbounded `+`/`*` may be added here.

Measured on tests/data/pii_corpus.jsonl: `python -m medembed.prep.privacy tests/data/pii_corpus.jsonl`;
hostile rows: `python -m medembed.prep.privacy --timing`.
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ..config import PII_ACTIONS  # noqa: F401  (the accepted data.pii_action values)

KINDS = ("person_name", "record_number", "ssn", "date_of_birth", "address", "email", "phone")

# Letters with Latin-1 and Latin Extended-A accents (Müller, Łukasz); Python's re has no \p{Lu}.
_UP = "A-ZÀ-ÖØ-Þ\u0100-\u017f"
_LO = "a-zß-öø-ÿ\u0100-\u017f"
# A capitalised name token: Smith, O'Brien, McDonald, MacLeod, Al-Sayed, Jean-Pierre, Müller. Each
# continuation starts with a separator or a capital, so a word splits into parts in one way only.
_TOKEN = rf"[{_UP}][{_LO}]{{0,24}}(?:['’-][{_UP}]?[{_LO}]{{1,24}}|[{_UP}][{_LO}]{{1,24}}){{0,2}}(?![\w'’-])"
_UPPER_TOKEN = rf"[{_UP}]{{2,25}}(?:['’-][{_UP}]{{2,25}})?(?![\w'’-])"
_INITIAL = rf"[{_UP}]\.?(?=\s)"
# 1-4 tokens, initials allowed ("R. Gupta", "John A. Smith").
_NAME = rf"(?:{_INITIAL}\s{{1,2}})?{_TOKEN}(?:\s{{1,2}}(?:{_INITIAL}|{_TOKEN})){{0,3}}"
_NAME2 = rf"(?:{_INITIAL}\s{{1,2}})?{_TOKEN}(?:\s{{1,2}}(?:{_INITIAL}\s{{1,2}})?{_TOKEN}){{1,2}}"
_LAST_FIRST = rf"{_TOKEN},\s{{1,2}}{_TOKEN}"
_UPPER_NAME = rf"{_UPPER_TOKEN}(?:,?\s{{1,2}}{_UPPER_TOKEN}){{1,3}}"
_SEP = r"(?:\s{0,3}(?:[:#]|-(?=\s))\s{0,3})"

_HONORIFIC = r"\b(?:Mrs|Mr|Ms|Mx|Miss|Dr|Prof|Mme|Mlle)\b\.?\s{1,3}"
# Labels followed by a colon (or " - "): a person follows. "Name" qualified by a thing is not one.
_PERSON_LABEL = (
    r"\b(?P<plabel>(?i:(?:patient|pt)\s{1,2}name|name|patient|pt|attending|physician|doctor|provider|nurse|resident|surgeon"
    r"|guardian|emergency\s{1,2}contact|next\s{1,2}of\s{1,2}kin|contact|signed(?:\s{1,2}by)?|dictated\s{1,2}by"
    r"|referred\s{1,2}by|seen\s{1,2}by|parent|mother|father|spouse|caregiver))"
)
_NAME_LABELS = {"name", "patient name", "pt name"}

_MONTH = (
    r"(?i:jan(?:uary|vier)?|feb(?:ruary)?|f[ée]v(?:rier)?|mar(?:ch|s)?|apr(?:il)?|avr(?:il)?|may|mai|june?|juin"
    r"|july?|juil(?:let)?|aug(?:ust)?|ao[uû]t|sept?(?:ember|embre)?|oct(?:ober|obre)?|nov(?:ember|embre)?"
    r"|d[ée]c(?:ember|embre)?)\.?"
)
_DAY = r"\d{1,2}(?:st|nd|rd|th|er)?"
_DATE = (
    rf"(?:\d{{1,4}}[/.-]\d{{1,2}}[/.-]\d{{2,4}}(?!\d)|{_DAY}\s{{1,2}}{_MONTH}\s{{1,2}}\d{{2,4}}(?!\d)"
    rf"|{_MONTH}\s{{1,2}}{_DAY},?\s{{1,2}}\d{{2,4}}(?!\d))"
)
_DOB_LABEL = (
    r"(?i:\bDOB|\bD\.O\.B\.?|\bdate\s{1,2}of\s{1,2}birth|\bbirth\s{0,2}date|\bborn(?:\s{1,2}on)?|\bn[ée]e?\s{1,2}le"
    r"|\bdate\s{1,2}de\s{1,2}naissance|\bb\.)"
)

# A value: optional letter prefix, a digit, then letters/digits, up to three more digit-bearing groups.
_RECORD_VALUE = r"(?<![\w-])[A-Z]{0,4}[- ]?\d[A-Z\d]{1,19}(?:[ -](?=[A-Z]{0,11}\d)[A-Z\d]{2,12}){0,3}(?![\w-])"
_RECORD_LABEL = (
    r"\b(?i:MRN|MR(?=\s{0,2}(?:#|no\b|number))|med(?:ical)?\s{1,2}rec(?:ord)?s?|hospital|record|case|visit"
    r"|chart|acct|account|member|subscriber|policy|insurance|group|(?:patient|pt)(?=\s{1,2}id\b)"
    r"|encounter|FIN|NHS|medicare|medicaid|MBI|HICN|(?:health\s{1,2}plan\s{1,2})?beneficiary|claim|accession)"
    r"(?i:\.?\s{0,2}(?:number|num|no|id|#)\.?){0,2}"
)
_SSN = r"\d{3}[- ]?\d{2}[- ]?\d{4}"
_SSN_LABEL = r"(?i:\bSSN|\bSS#|\bS\.S\.N\.?|\bsocial\s{1,2}security(?:\s{1,2}(?:number|no\.?|#))?)(?:\s{1,2}is)?"

_SUFFIX_WORDS = ("Street", "St", "Avenue", "Ave", "Road", "Rd", "Boulevard", "Blvd", "Lane", "Ln", "Drive", "Dr", "Court",
                 "Ct", "Way", "Place", "Pl", "Terrace", "Ter", "Circle", "Cir", "Highway", "Hwy", "Parkway", "Pkwy",
                 "Square", "Sq", "Trail", "Crescent", "Close", "Row", "Alley", "Plaza", "Pike")
_STREET_SUFFIX = "(?:" + "|".join(sorted(_SUFFIX_WORDS, key=len, reverse=True)) + r")\b\.?"
_STREET_WORD = rf"(?:(?:\d{{1,3}}(?:st|nd|rd|th)|[{_UP}][{_LO}]{{1,20}})\s{{1,2}})"
_DIRECTION = r"(?:(?:North|South|East|West|[NSEW]\.?)\s{1,2})"
_UNIT = r"(?:,?\s{1,2}(?:Apt|Apartment|Suite|Ste|Unit|Flat|Room|Rm|#)\.?\s{0,2}#?\s{0,2}[A-Z\d]{1,6}\b)"
_CITY = rf"(?:,\s{{1,2}}[{_UP}][{_LO}]{{1,20}}(?:\s{{1,2}}[{_UP}][{_LO}]{{1,20}}){{0,2}})"
_POSTAL = r"(?:,?\s{1,2}(?:[A-Z]{2}\s{1,2}\d{5}(?:-\d{4})?|[A-Z]{1,2}\d[A-Z\d]?\s?\d[A-Z]{2})\b)"
_STREET = (
    rf"(?<![\w-])\d{{1,6}}[A-Z]?\s{{1,2}}{_DIRECTION}?{_STREET_WORD}{{1,4}}{_STREET_SUFFIX}"
    rf"(?:\s{{1,2}}(?:NW|NE|SW|SE|[NSEW])\b)?{_UNIT}?{_CITY}?{_POSTAL}?"
)

_PHONE_LABEL = (
    r"\b(?i:tel|t[ée]l|telephone|t[ée]l[ée]phone|phone|ph|cell|mobile|mob|fax|pager|call|portable)"
    r"(?i:\s{1,2}(?:number|no|#))?\.?\s{0,3}:?\s{0,3}"
)


def _trie(words) -> str:
    """A regex matching any of `words` (longest first), nested by shared prefixes: the engine then
    tests a few characters per position instead of every word in turn (5x faster than a flat
    alternation on a megabyte)."""
    root: dict = {}
    for word in words:
        node = root
        for ch in word:
            node = node.setdefault(ch, {})
        node[""] = {}

    def build(node: dict) -> str:
        branches = [re.escape(ch) + build(child) for ch, child in sorted(node.items()) if ch]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        if "" in node:
            body = f"(?:{body})?"
        return body

    return build(root)


def _anchor_regex(words) -> re.Pattern:
    # The first-character class up front lets the engine skip other characters without entering the trie.
    first = "".join(sorted({re.escape(w[0]) for w in words}))
    return re.compile(rf"(?=[{first}])\b{_trie(set(words))}")


@dataclass(frozen=True)
class Finding:
    kind: str
    start: int
    end: int


@dataclass(frozen=True)
class _Detector:
    """One family of patterns. `groups` maps each value group to its kind. Anchored families are tried
    only where one of their `keywords` (lower case, on the lower-cased text) or `cased` words starts;
    the others scan the whole text when `gate` is found in it."""

    pattern: re.Pattern
    groups: dict
    keywords: tuple = ()
    cased: tuple = ()
    gate: re.Pattern | None = None


_DETECTORS: tuple[_Detector, ...] = (
    _Detector(re.compile(r"(?<![\w.+'-])(?P<v>[\w.+'-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63}){0,8}\.[A-Za-z]{2,24})(?![\w-])"),
              {"v": "email"}, gate=re.compile("@")),
    _Detector(re.compile(rf"{_SSN_LABEL}{_SEP}?\s{{0,2}}(?P<v>{_SSN})(?!\d)"), {"v": "ssn"},
              keywords=("ssn", "ss#", "s.s.n", "social")),
    _Detector(re.compile(rf"{_RECORD_LABEL}{_SEP}?\s{{0,2}}(?P<v>{_RECORD_VALUE})"), {"v": "record_number"},
              keywords=("mrn", "mr", "med", "medical", "hospital", "record", "case", "visit", "chart", "acct", "account",
                        "member", "subscriber", "policy", "insurance", "group", "patient", "pt", "encounter", "fin",
                        "nhs", "medicare", "medicaid", "mbi", "hicn", "health", "beneficiary", "claim", "accession")),
    _Detector(re.compile(rf"{_DOB_LABEL}{_SEP}?\s{{0,2}}(?P<v>{_DATE})"), {"v": "date_of_birth"},
              keywords=("dob", "d.o.b", "date", "birth", "birthdate", "born", "né", "née", "ne", "nee", "b.")),
    _Detector(re.compile(rf"\b(?i:address|adresse)\s{{0,2}}:\s{{0,3}}(?P<v>(?:[^\n;|.]|\.(?!\s|$)){{4,80}})"
                         rf"|(?P<v2>\b(?i:P\.?\s?O\.?\s{{0,2}}Box)\s{{1,2}}\d{{1,6}}{_CITY}?{_POSTAL}?)"),
              {"v": "address", "v2": "address"}, keywords=("address", "adresse", "p.o", "p. o", "po")),
    _Detector(re.compile(rf"{_PHONE_LABEL}(?P<v>\+?[\d(][\d\s().-]{{5,22}}\d)(?![\w-])"), {"v": "phone"},
              keywords=("tel", "tél", "telephone", "téléphone", "ph", "phone", "cell", "mob", "mobile", "fax", "pager",
                        "call", "portable")),
    _Detector(re.compile(
        rf"{_HONORIFIC}(?P<v>{_NAME})"
        rf"|{_PERSON_LABEL}{_SEP}(?P<hon>{_HONORIFIC})?(?P<v2>{_LAST_FIRST}|{_NAME2}|{_UPPER_NAME}|{_NAME})"
        rf"|\b(?:[Pp]atient|P[Tt]\.?)\s{{1,2}}(?P<v3>{_TOKEN}\s{{1,2}}(?:{_INITIAL}\s{{1,2}})?{_TOKEN})(?=\s{{1,2}}[a-z]|\s{{0,2}}[,(])"
        rf"|\b(?i:patient),\s{{1,2}}(?P<v4>{_NAME}),"),
        {"v": "person_name", "v2": "person_name", "v3": "person_name", "v4": "person_name"},
        keywords=("name", "patient", "pt", "attending", "physician", "doctor", "provider", "nurse", "resident", "surgeon",
                  "guardian", "emergency", "next", "contact", "signed", "dictated", "referred", "seen", "parent", "mother",
                  "father", "spouse", "caregiver"),
        cased=("Mrs", "Mr", "Ms", "Mx", "Miss", "Dr", "Prof", "Mme", "Mlle")),
    # Unlabelled shapes: North American phone numbers and SSNs, international numbers, street addresses.
    _Detector(re.compile(r"(?<![\w+.-])(?P<v>(?:\+?1[\s.-])?(?:\(\d{3}\)\s?|\d{3}[\s.-])\d{3}[\s.-]\d{4})(?![\w-])"
                         r"|(?<![\w-])(?P<v2>\d{3}-\d{2}-\d{4})(?![\w-])"), {"v": "phone", "v2": "ssn"},
              gate=re.compile(r"\d\d\d")),
    _Detector(re.compile(r"(?<![\w+])(?P<v>\+\d{1,3}(?:[\s.-]{1,2}\(?\d{1,5}\)?){1,6})(?![\w-])"), {"v": "phone"},
              gate=re.compile(r"\+\d")),
    _Detector(re.compile(rf"(?P<v>{_STREET})"), {"v": "address"}, gate=re.compile(rf"(?=[A-Z])\b{_trie(_SUFFIX_WORDS)}\b")),
)
_PRIORITY = {kind: i for i, kind in enumerate(KINDS)}  # where two findings start and end alike
MIN_RECORD_DIGITS = 4
MIN_PHONE_DIGITS, MAX_PHONE_DIGITS = 7, 15
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


_KEYWORD_FAMILIES: dict[str, list[int]] = {}
for _index, _detector in enumerate(_DETECTORS):
    for _word in _detector.keywords:
        _KEYWORD_FAMILIES.setdefault(_word, []).append(_index)
_CASED_FAMILIES: dict[str, list[int]] = {}
for _index, _detector in enumerate(_DETECTORS):
    for _word in _detector.cased:
        _CASED_FAMILIES.setdefault(_word, []).append(_index)
_KEYWORDS = _anchor_regex(list(_KEYWORD_FAMILIES))
_CASED = _anchor_regex(list(_CASED_FAMILIES))


_WORD_BEFORE = re.compile(r"([A-Za-z']{1,20})\s{1,2}$")
_NUMBER_WORD = re.compile(r"\b(?:number|num|no|id)\b")
_SELF_LABELLED = re.compile(r"(?:mrn|acct|mbi|hicn)\b")
_NAME_QUALIFIERS = {"patient", "pt", "full", "first", "last", "given", "family", "legal", "maiden", "middle", "his", "her",
                    "their", "my", "contact", "client", "resident", "member", "person", "child", "baby", "donor"}


def _accept(text: str, kind: str, match: re.Match, group: str) -> bool:
    if kind == "record_number":
        # "MRN 123456" names a number by itself; "Policy 2019-04", "Claim 2" need "#", "no", "number",
        # "ID" or a colon to be one.
        if sum(map(str.isdigit, match.group(group))) < MIN_RECORD_DIGITS:
            return False
        label = text[match.start() : match.start(group)].lower()
        return bool(":" in label or "#" in label or _NUMBER_WORD.search(label) or _SELF_LABELLED.match(label))
    if kind == "phone":
        # Unlabelled forms already have a phone's shape; labelled ones ("tel", "call") need its length.
        return MIN_PHONE_DIGITS <= sum(map(str.isdigit, match.group(group))) <= MAX_PHONE_DIGITS
    if kind == "address" and group == "v":
        return any(map(str.isdigit, match.group(group)))
    if kind == "person_name" and group == "v2":
        return _accept_labelled_name(text, match)
    if kind == "person_name" and group == "v4":
        return text[max(0, match.start() - 4) : match.start()].lower() == "the "
    return True


def _accept_labelled_name(text: str, match: re.Match) -> bool:
    value, label = match.group("v2"), match.group("plabel")
    words = " ".join(label.lower().split())
    qualified = False
    if words == "name":
        # "Name:" alone, or after a person's qualifier ("Patient name", "Full name", "Mother's name"), labels
        # a person; after any other word it labels a thing ("Brand name: Glucophage", "school name - Tell").
        before = _WORD_BEFORE.search(text, max(0, match.start() - 24), match.start())
        qualifier = before.group(1).lower() if before else ""
        if qualifier and not (qualifier in _NAME_QUALIFIERS or qualifier.endswith("'s")):
            return False
        qualified = bool(qualifier)
    # After "Patient:" / "Pt:" and other role labels one capitalised word is often a finding
    # ("Pt: Afebrile", "Patient: Female"): a name there needs two tokens or "Last, First".
    if match.group("hon") is None and words not in _NAME_LABELS and not qualified and " " not in value and "," not in value:
        return False
    # Capitals only in a record written in capitals ("PATIENT: DOE, JANE"), never after "PT:"
    # (physical therapy, prothrombin time) or a label in lower case ("Pt: COPD, CHF").
    return not (value.isupper() and (not label.isupper() or words == "pt"))


def _record(found: list, text: str, detector: _Detector, match: re.Match) -> None:
    group = match.lastgroup  # each alternative ends with its value group
    kind = detector.groups[group]
    if _accept(text, kind, match, group):
        start, end = match.span(group)
        while end > start and text[end - 1] in " ,.":
            end -= 1
        found.append((start, start - end, _PRIORITY[kind], end))


def findings(text: str) -> list[Finding]:
    """Non-overlapping findings, in text order (the longest wins where two overlap).

    Labelled kinds are tried only where a label starts (one pass of a keyword pattern, then a bounded
    match at each hit); unlabelled shapes scan the text when a cheap gate finds their raw material."""
    if not text:
        return []
    found: list[tuple[int, int, int, int]] = []  # (start, -length, kind priority, end): sorts as wanted
    lowered = text.lower()
    if len(lowered) != len(text):  # a few characters lower-case to two: keep positions aligned
        lowered = text.translate(_ASCII_LOWER)
    last_end = [0] * len(_DETECTORS)
    hits = [(m.start(), _KEYWORD_FAMILIES[m.group()]) for m in _KEYWORDS.finditer(lowered)]
    hits += [(m.start(), _CASED_FAMILIES[m.group()]) for m in _CASED.finditer(text)]
    hits.sort()
    for position, families in hits:
        for index in families:
            if position >= last_end[index]:
                detector = _DETECTORS[index]
                match = detector.pattern.match(text, position)
                if match:
                    _record(found, text, detector, match)
                    last_end[index] = match.end()
    for detector in _DETECTORS:
        if detector.gate is not None and detector.gate.search(text):
            for match in detector.pattern.finditer(text):
                _record(found, text, detector, match)
    found.sort()
    kept: list[Finding] = []
    last = -1
    for start, _, priority, end in found:
        if start >= last:
            kept.append(Finding(KINDS[priority], start, end))
            last = end
    return kept


def scan(text: str) -> Counter:
    return Counter(f.kind for f in findings(text))


def redact(text: str) -> tuple[str, Counter]:
    """Text with each identifier replaced by a placeholder such as [EMAIL], and counts per kind."""
    found = findings(text)
    if not found:
        return text, Counter()
    pieces, last = [], 0
    for finding in found:
        pieces += [text[last : finding.start], f"[{finding.kind.upper()}]"]
        last = finding.end
    pieces.append(text[last:])
    return "".join(pieces), Counter(f.kind for f in found)


# ---------------------------------------------------------------- measuring on a labelled corpus


def _leaks(redacted: str, value: str) -> bool:
    """True when any word of at least two characters of `value` is still in the redacted text."""
    return any(re.search(rf"(?<!\w){re.escape(word)}(?!\w)", redacted) for word in re.findall(r"\w+", value) if len(word) > 1)


def evaluate(snippets: list[dict]) -> dict:
    """Precision and recall on labelled snippets {"text", "pii": [{"kind", "value"}], "keep": [...]}.

    A positive snippet is found when every word of every labelled value is gone from the redacted
    text. False positives are negative snippets with any finding, plus positive snippets where a
    term listed in "keep" (a drug, dose or finding) was damaged. Misses are listed by corpus line and
    kind, never by value."""
    tp = fn = fp = 0
    values = values_found = kind_right = 0
    misses, false_alarms = [], []
    for line_no, snippet in enumerate(snippets, start=1):
        text, labelled = snippet["text"], snippet.get("pii", [])
        redacted, _ = redact(text)
        spans = findings(text)
        if labelled:
            leaked = [item for item in labelled if _leaks(redacted, item["value"])]
            if leaked:
                fn += 1
                misses.append({"line": line_no, "kinds": sorted({item["kind"] for item in leaked})})
            else:
                tp += 1
            for item in labelled:
                values += 1
                if item not in leaked:
                    values_found += 1
                    start = text.find(item["value"])
                    end = start + len(item["value"])
                    kind_right += any(f.kind == item["kind"] and f.start < end and start < f.end for f in spans)
            if any(term not in redacted for term in snippet.get("keep", [])):
                fp += 1
                false_alarms.append({"line": line_no, "kinds": sorted({f.kind for f in spans}), "damaged": "keep term"})
        elif spans:
            fp += 1
            false_alarms.append({"line": line_no, "kinds": sorted({f.kind for f in spans})})
    positives = sum(1 for s in snippets if s.get("pii"))
    return {
        "positives": positives,
        "negatives": len(snippets) - positives,
        "true_positives": tp,
        "false_negatives": fn,
        "false_positives": fp,
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "recall": tp / (tp + fn) if tp + fn else 0.0,
        "value_recall": values_found / values if values else 0.0,
        "kind_agreement": kind_right / values_found if values_found else 0.0,
        "misses": misses,
        "false_alarms": false_alarms,
    }


# Repeated shapes that make a backtracking pattern quadratic or worse (main's e-mail pattern took 35-69 s
# on a 98 KB answer of "1-1-1-..."), one per pattern family; `--timing` scans a megabyte of each.
HOSTILE_SHAPES = ("1-", "1 ", "a.", "a@", "x@y.", "Mr. A", "Dr. Aaaa ", "Patient: Aa ", "MRN 1 ", "MRN 1-", "123 Aaa ",
                  "1 Aa St ", "+1 ", "(555) ", "DOB 1/", "Address: ", "A1 ", "AB-1 ", "O'", "Name: ", "Pt Aa Bb ",
                  "P.O. Box 1 ", "a" * 63 + "@", "SSN 1")


def time_hostile(size: int = 1_000_000) -> dict[str, float]:
    """Seconds to redact `size` characters of each hostile shape, and of the issue's 98 KB answer."""
    import time

    timings = {}
    for shape in HOSTILE_SHAPES:
        text = shape * (size // len(shape))
        start = time.perf_counter()
        redact(text)
        timings[shape] = time.perf_counter() - start
    answer = "-".join("1" * 49_000)
    start = time.perf_counter()
    redact(answer)
    timings["98 KB answer of 1-1-1-"] = time.perf_counter() - start
    return timings


def read_corpus(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args == ["--timing"]:
        timings = time_hostile()
        for shape, seconds in timings.items():
            print(f"{seconds:6.3f} s  {shape[:20]!r}" + ("" if shape.startswith("98 KB") else " x 1 MB"))
        print(f"worst 1 MB: {max(v for k, v in timings.items() if not k.startswith('98 KB')):.3f} s")
        return 0
    if len(args) != 1:
        print("usage: python -m medembed.prep.privacy CORPUS.jsonl | --timing", file=sys.stderr)
        return 2
    result = evaluate(read_corpus(Path(args[0])))
    print(f"snippets: {result['positives']} with personal data, {result['negatives']} without")
    print(f"precision {result['precision']:.3f}  recall {result['recall']:.3f}  "
          f"(tp {result['true_positives']}, fn {result['false_negatives']}, fp {result['false_positives']})")
    print(f"values removed {result['value_recall']:.3f}, of which the right kind {result['kind_agreement']:.3f}")
    for miss in result["misses"]:
        print(f"missed: line {miss['line']} ({', '.join(miss['kinds'])})")
    for alarm in result["false_alarms"]:
        print(f"false positive: line {alarm['line']} ({', '.join(alarm['kinds'])})" + (" damaged a kept term" if "damaged" in alarm else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
