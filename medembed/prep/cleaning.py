"""Rows in, clean pairs out: read every input, validate each row, normalise, handle personal data,
drop exact duplicates. Bad rows are dropped and counted up to a tolerance; past it, or when nothing
usable is left, prep fails with a message naming file, row and field (never the text).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from ..config import DataConfig
from . import privacy, validation
from .ingest import DataError, apply_column_map, parse_column_map, parse_inputs, read_records, resolve_local_path
from .stats import PrepStats
from .validation import RowIssue, ValidationReport, normalize_text


def load_pairs(config: DataConfig, stats: PrepStats, download_dir: Path) -> list[dict]:
    """Read every input, validate each row, normalise and redact; bad rows are dropped and counted
    (failing past the tolerance); exact-duplicate pairs are dropped."""
    column_map = parse_column_map(config.column_map)
    report = ValidationReport()
    pii_issues: list[RowIssue] = []
    pii_found: Counter = Counter()
    seen: set[tuple[str, str]] = set()
    pairs: list[dict] = []
    sources = parse_inputs(config.data_uri)
    labels = []
    for source in sources:
        path = resolve_local_path(source.uri, download_dir)
        labels.append(str(path))
        required = tuple((name, column_map[name]) if name in column_map else (name,) for name in (config.question_field, config.passage_field))
        for file, row_no, record in read_records(path, required, report.skipped_files):
            report.rows_read += 1
            raw_problem = validation.raw_row_issue(record)
            if raw_problem:
                report.bad_rows += 1
                report.add(RowIssue(file, row_no, validation.RAW_FIELD, raw_problem), fatal=True)
                continue
            record = apply_column_map(record, column_map)
            texts, bad = {}, False
            for name, max_chars in ((config.question_field, config.max_query_chars), (config.passage_field, config.max_passage_chars)):
                text, reason, had_html = validation.check_text(record, name, max_chars)
                if had_html:
                    report.add(RowIssue(file, row_no, name, "html remnants removed"), fatal=False)
                if reason:
                    report.add(RowIssue(file, row_no, name, reason), fatal=True)
                    bad = True
                    if reason == "empty":
                        stats.dropped_empty += 1
                texts[name] = text
            if bad:
                report.bad_rows += 1
                continue
            query, passage = texts[config.question_field], texts[config.passage_field]
            if reason := validation.pair_issue(query, passage):
                report.bad_rows += 1
                report.add(RowIssue(file, row_no, config.passage_field, reason), fatal=True)
                continue
            passage, stripped = validation.strip_question_heading(query, passage, config.heading_overlap)
            stats.headings_removed += stripped
            if config.pii_action != "off":
                redacted = {}
                for name, text in ((config.question_field, query), (config.passage_field, passage)):
                    redacted[name], found = privacy.redact(text)
                    pii_found.update(found)
                    if len(pii_issues) < validation.MESSAGE_EXAMPLES:
                        pii_issues += [RowIssue(file, row_no, name, f"likely {kind}") for kind in found]
                if config.pii_action == "redact":
                    query, passage = redacted[config.question_field], redacted[config.passage_field]
            key = (query.casefold(), passage.casefold())
            if key in seen:
                stats.dropped_duplicate += 1
                continue
            seen.add(key)
            groups = {name: _group_values(record.get(name)) for name in config.group_fields}
            guard = {name: _group_values(record.get(name)) for name in config.negative_guard_fields}
            pairs.append({"file": file, "row": row_no, "query": query, "passage": passage, "groups": groups,
                          "guard": guard, "source": source.tag, "topic": _first_value(record.get(config.topic_field)),
                          "qtype": _first_value(record.get(config.qtype_field))})
    label = ", ".join(labels)
    stats.rows_read = report.rows_read
    stats.dropped_bad = report.bad_rows
    stats.validation = report.to_dict()
    stats.pii_action = config.pii_action
    stats.pii_found = dict(pii_found)
    if stats.rows_read == 0:
        raise DataError(f"{label}: the dataset is empty (no rows); check that data.data_uri names the file or folder "
                        f"that holds the pairs")
    if not pairs:
        examples = "; ".join(issue.describe() for issue in report.issues[: validation.MESSAGE_EXAMPLES])
        raise DataError(
            f"{label}: no usable pairs among {stats.rows_read} rows ({report.bad_rows} bad, "
            f"{stats.dropped_empty} empty fields, {stats.dropped_duplicate} duplicates)" + (f"; first: {examples}" if examples else "")
            + ". Fix those rows at the source (each reason says what is wrong), or point data.question_field / "
              "data.passage_field / data.column_map at the right columns"
        )
    validation.enforce_tolerance(report, config.max_bad_row_fraction, label)
    if config.pii_action == "fail" and pii_found:
        kinds = ", ".join(f"{kind}: {count}" for kind, count in pii_found.most_common())
        where = "; ".join(issue.describe() for issue in pii_issues[: validation.MESSAGE_EXAMPLES])
        raise DataError(f"{label}: likely personal data found [{kinds}] and data.pii_action=fail; first: {where}; "
                        "remove it at the source, or set data.pii_action=redact to replace it with placeholders")
    stats.rows_by_source = dict(Counter(p["source"] for p in pairs))
    return pairs


def _first_value(value: object) -> str:
    """A row's topic or question type as text ("" when absent): the built-in shifted probes read it."""
    values = value if isinstance(value, (list, tuple)) else [value]
    return next((v for v in (normalize_text(x) for x in values if x is not None) if v), "")


def _group_values(value: object) -> tuple[str, ...]:
    """Group keys of one field: list values (e.g. several UMLS CUIs) give one key each."""
    values = value if isinstance(value, (list, tuple)) else [value]
    return tuple(v for v in (normalize_text(x).lower() for x in values if x is not None) if v)
