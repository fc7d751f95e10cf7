"""Bad input (issue 13): each failure is one message naming the file, row and field and what to do;
headerless CSVs are reported by column position, never by value; nothing is written on failure."""

from __future__ import annotations

import csv
import dataclasses
import gzip
import json
import logging
import re
from pathlib import Path

import pytest

from conftest import make_rows, write_jsonl
from faultkit import case, observe
from medembed import artifacts
from medembed.config import LOCAL
from medembed.prep import DataError, stage
from medembed.prep.validation import strip_html

pytestmark = pytest.mark.faults

FIRST_ROW = ["John Smith", "742 Evergreen Terrace, Springfield", "john.smith@example.org", "123-45-6789",
             "What is gout ?", "Gout is a form of arthritis."]


def _prepare(config, train_dir, eval_dir):
    return stage.prepare(config, train_dir, eval_dir, model=LOCAL.train.base_model, max_seq_length=LOCAL.train.max_seq_length)


def _config(path, **changes):
    base = dataclasses.replace(LOCAL.data, data_uri=str(path), max_train_pairs=0, min_train_pairs=4, num_negatives=0,
                               eval_distractors=5)
    return dataclasses.replace(base, **changes)


def _fails(tmp_path, config, caplog=None) -> str:
    with pytest.raises(DataError, match=re.escape(config.data_uri)) as error:  # every message names its input
        _prepare(config, tmp_path / "train", tmp_path / "eval")
    assert not (tmp_path / "train").exists() and not (tmp_path / "eval").exists()
    return str(error.value)


def _write_csv(path: Path, rows: list[list[str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(rows)
    return path


@case(fault='a CSV without a header row whose first row holds a name, address, e-mail and SSN',
      promise='one DataError naming the file, row 1 and the columns by position; no value in the message or the log; nothing written')
def test_headerless_csv_is_reported_by_column_position_without_values(tmp_path, caplog):
    rows = [FIRST_ROW] + [["a", "b", "c", "d", r["question"], r["answer"]] for r in make_rows()]
    path = _write_csv(tmp_path / "export.csv", rows)
    caplog.set_level(logging.DEBUG)
    message = _fails(tmp_path, _config(path), caplog)
    assert message.startswith(f"{path} row 1: does not look like a header row")
    assert "column 3 has an @" in message and "column 4 has no letters" in message and "column 5 has sentence punctuation" in message
    assert "add one" in message
    observe(message)
    for value in FIRST_ROW:
        for word in value.replace(",", " ").split():
            if len(word) > 3:
                assert word not in message and word not in caplog.text


@case(fault='a question,answer CSV without its header row',
      promise='the first data row is not taken as column names: one DataError naming row 1 by column position')
def test_headerless_question_answer_csv_is_detected(tmp_path):
    path = _write_csv(tmp_path / "qa.csv", [[r["question"], r["answer"]] for r in make_rows()])
    message = _fails(tmp_path, _config(path))
    assert f"{path} row 1" in message and "column 1 has" in message and "column 2 has" in message
    assert "What are" not in message
    observe(message)


@case(fault='a CSV whose question column has another name (prompt)',
      promise='one DataError naming the header row and data.column_map; with the map, the file is read')
def test_csv_without_the_question_column_names_the_fix(tmp_path):
    path = _write_csv(tmp_path / "renamed.csv", [["prompt", "answer"]] + [[r["question"], r["answer"]] for r in make_rows()])
    message = _fails(tmp_path, _config(path))
    assert f"{path} row 1 (the header): no column named 'question'" in message and "data.column_map" in message
    stats = _prepare(_config(path, column_map=("question=prompt",)), tmp_path / "ok" / "train", tmp_path / "ok" / "eval")
    assert stats.rows_kept == len(make_rows())
    observe(f"{message} -> with data.column_map=question=prompt: {stats.rows_kept} pairs")


@case(fault='a spreadsheet-exported CSV starting with a UTF-8 byte-order mark',
      promise="read normally (the mark does not become part of the first column's name)")
def test_csv_with_a_byte_order_mark_reads_its_first_column(tmp_path):
    path = tmp_path / "excel.csv"
    lines = ["question,answer"] + [f'"{r["question"]}","{r["answer"]}"' for r in make_rows()]
    path.write_bytes("\ufeff".encode() + "\n".join(lines).encode())
    kept = _prepare(_config(path), tmp_path / "train", tmp_path / "eval").rows_kept
    assert kept == len(make_rows())
    observe(f"{kept} of {len(make_rows())} pairs read")


@case(fault='a .jsonl.gz cut in half (an interrupted upload)',
      promise='one DataError naming the file and the last good row, saying to upload it again (gzip -t); nothing written')
def test_truncated_jsonl_gz_names_the_file_and_the_last_good_row(tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl.gz", make_rows())
    payload = path.read_bytes()
    path.write_bytes(payload[: len(payload) // 2])
    message = _fails(tmp_path, _config(path))
    assert message.startswith(f"{path}: the compressed file ends early or is corrupt after row ")
    assert "EOFError" in message and "upload it again" in message and "gzip -t pairs.jsonl.gz" in message
    observe(message)


@case(fault='a plain JSONL file named .jsonl.gz',
      promise='one DataError saying it is not gzip-compressed and how to fix the name')
def test_a_plain_file_named_gz_says_so(tmp_path):
    path = tmp_path / "pairs.jsonl.gz"
    path.write_text("\n".join(json.dumps(r) for r in make_rows()))
    message = _fails(tmp_path, _config(path))
    assert message == (f"{path}: not gzip-compressed although its name ends in .gz; rename it to its real type "
                       "(e.g. .jsonl) or compress it with gzip")
    observe(message)


@case(fault='a CSV file named .parquet',
      promise='one DataError: not a readable Parquet file (no footer), write it again or rename it; no ArrowInvalid')
def test_a_csv_named_parquet_says_so(tmp_path):
    path = tmp_path / "pairs.parquet"
    path.write_text("question,answer\nWhat is gout ?,Arthritis.\n")
    message = _fails(tmp_path, _config(path))
    assert message.startswith(f"{path}: not a readable Parquet file, before the first row (no Parquet footer")
    assert "write it again as Parquet" in message and "ArrowInvalid" not in message
    observe(message)


@case(fault='an input folder with files of unknown type (.txt, .xlsx) next to the data',
      promise='read, and the skipped files named in the log, validation_report.json and the data card')
def test_unknown_files_in_a_folder_are_named_in_the_log_and_the_report(tmp_path, caplog):
    folder = tmp_path / "inputs"
    folder.mkdir()
    write_jsonl(folder / "pairs.jsonl", make_rows())
    (folder / "notes.txt").write_text("to do")
    (folder / "more_pairs.xlsx").write_bytes(b"PK\x03\x04")
    caplog.set_level(logging.WARNING)
    stats = _prepare(_config(folder), tmp_path / "train", tmp_path / "eval")
    assert stats.rows_kept == len(make_rows())
    assert [Path(p).name for p in stats.validation["skipped_files"]] == ["more_pairs.xlsx", "notes.txt"]
    assert "skipping 2 file(s) of unknown type: more_pairs.xlsx, notes.txt" in caplog.text
    report = json.loads((tmp_path / "train" / artifacts.VALIDATION_FILE).read_text())
    assert len(report["skipped_files"]) == 2
    assert "| input files skipped (unknown type; named in validation_report.json) | 2 |" in (tmp_path / "train" / artifacts.CARD_MARKDOWN_FILE).read_text()
    observe(next(r.getMessage() for r in caplog.records if "skipping" in r.getMessage()))


@case(fault='an input folder holding only a file of unknown type',
      promise='one DataError naming the folder, one of its files and the supported types')
def test_a_folder_of_only_unknown_files_fails_naming_one(tmp_path):
    folder = tmp_path / "inputs"
    folder.mkdir()
    (folder / "pairs.xlsx").write_bytes(b"PK\x03\x04")
    message = _fails(tmp_path, _config(folder))
    assert f"{folder}: folder holds no input file (it holds 1 file(s) of other types, e.g. pairs.xlsx)" in message
    observe(message)


def _rows_with(*extra: dict) -> list[dict]:
    return make_rows() + list(extra)


@case(fault='rows whose question is one character, and a row whose question equals its answer',
      promise='bad rows counted per reason and named by row and field; past the tolerance one DataError with what to do')
def test_one_character_questions_and_question_equal_answer_are_bad_rows(tmp_path):
    rows = _rows_with({"question": "?", "answer": "An answer without a question."},
                      {"question": "x", "answer": "Another answer."},
                      {"question": "What is gout ?", "answer": "what is gout?"})
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    stats = _prepare(_config(path, max_bad_row_fraction=0.1), tmp_path / "train", tmp_path / "eval")
    assert stats.validation["issues_by_reason"] == {"too short": 2, "question equals the answer": 1}
    issues = {(i["row"], i["field"]) for i in stats.validation["issues"]}
    n = len(make_rows())
    assert issues == {(n + 1, "question"), (n + 2, "question"), (n + 3, "answer")}

    message = _fails(tmp_path / "strict", _config(path, max_bad_row_fraction=0.0))
    assert f"{path} row {n + 1} field 'question': too short" in message
    assert f"{path} row {n + 3} field 'answer': question equals the answer" in message
    assert "Fix or remove those rows" in message
    observe(message)


@case(fault='data.column_map maps question and answer to the same column',
      promise='one DataError saying question equals the answer and to name two different columns')
def test_mapping_both_fields_to_one_column_is_explained(tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", [{"text": r["answer"], "id": i} for i, r in enumerate(make_rows())])
    message = _fails(tmp_path, _config(path, column_map=("question=text", "answer=text")))
    assert "question equals the answer" in message and "name two different columns" in message
    observe(message)


@case(fault='entity-encoded or nested markup in a text field: {id}',
      promise='stripped: no live <script>, <img>, <iframe>, <svg> or comment survives')
@pytest.mark.parametrize("raw", [
    "&lt;script&gt;alert(1)&lt;/script&gt;", "&#60;script&#62;alert(1)&#60;/script&#62;",
    "&lt;img/src=x onerror=alert(1)&gt;", "<scr<script>ipt>alert(1)</script>", "&lt;!-- c --&gt;&lt;iframe src=x&gt;",
    "&lt;script", "<svg/onload=alert(1)>",
])
def test_entity_encoded_markup_never_becomes_live_markup(raw):
    cleaned, _ = strip_html(f"Before {raw} after.")
    assert cleaned.startswith("Before") and cleaned.endswith("after.")
    for opener in ("<script", "<img", "<iframe", "<svg", "<!--", "<scr"):
        assert opener not in cleaned.lower()
    observe(f"cleaned: {cleaned!r}")


@case(fault='&lt;script&gt;alert(1)&lt;/script&gt; in every answer',
      promise='no <script in corpus.jsonl or train.jsonl; ordinary entities (&lt; &amp;) still decoded')
def test_escaped_script_in_input_is_not_live_in_the_evaluation_corpus(tmp_path):
    rows = [dict(r, answer=r["answer"] + " Example: &lt;script&gt;alert(1)&lt;/script&gt; 5 &lt; 7 &amp; done.") for r in make_rows()]
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    _prepare(_config(path), tmp_path / "train", tmp_path / "eval")
    corpus = (tmp_path / "eval" / artifacts.CORPUS_FILE).read_text()
    train = (tmp_path / "train" / artifacts.TRAIN_FILE).read_text()
    for text in (corpus, train):
        assert "<script" not in text and "</script" not in text
    assert "alert(1) 5 < 7 & done." in corpus  # ordinary entities are still decoded
    observe("corpus.jsonl: " + next(line for line in corpus.splitlines() if "alert(1)" in line)[-120:])
