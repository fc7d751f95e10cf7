"""Malformed inputs, a matrix (issue 13): each input goes through data prep. An unusable one fails with
one DataError that names the file (and the row and field, or the header, where the fault is there)
and says what to do, and prep writes nothing; a usable one with a few bad rows is read, the bad rows
counted and named in validation_report.json."""

from __future__ import annotations

import csv
import dataclasses
import gzip
import io
import json
import os
import re
from pathlib import Path

import pytest

from conftest import make_rows
from faultkit import case, observe
from medembed.config import LOCAL
from medembed.prep import DataError, stage

ROWS = make_rows()
GOOD = "".join(json.dumps(r) + "\n" for r in ROWS)


def _csv(rows: list[list[str]]) -> str:
    out = io.StringIO()
    csv.writer(out).writerows(rows)
    return out.getvalue()


QA = [[r["question"], r["answer"]] for r in ROWS]


def _parquet(path: Path, table: dict) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(table), path)
    return path


def _write(name: str, data: str | bytes):
    def build(tmp_path: Path) -> Path:
        path = tmp_path / name
        path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
        return path
    return build


def _hf_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "saved-dataset"
    folder.mkdir()
    (folder / "dataset_info.json").write_text("{}")
    return folder


def _truncated_gz(tmp_path: Path) -> Path:
    payload = gzip.compress(GOOD.encode())
    path = tmp_path / "pairs.jsonl.gz"
    path.write_bytes(payload[: len(payload) // 2])
    return path


ROW = r"row \d+ field '{}'"
# id: (build(tmp_path) -> path, data.* changes, fragments the message must hold (regex; {path} = the input))
FAILS = {
    "empty file": (_write("empty.jsonl", ""), {}, [r"the dataset is empty \(no rows\); check that data.data_uri"]),
    "only blank lines": (_write("blank.jsonl", "\n \n\t\n"), {}, [r"the dataset is empty"]),
    "CSV with a header only": (_write("header.csv", "question,answer\n"), {}, [r"the dataset is empty"]),
    "every line broken JSON": (_write("broken.jsonl", "{not json\n" * 30 + GOOD), {},
                               [r"30 of 78 rows are unusable", ROW.format("<row>") + r": not valid JSON", r"Fix or remove those rows"]),
    "JSON arrays, not objects": (_write("arrays.jsonl", "".join(json.dumps(q) + "\n" for q in QA)), {},
                                 [ROW.format("<row>") + r": a JSON list, not an object \(JSON lines: one object per line\)", r"Fix those rows"]),
    "a .json file holding one array": (_write("all.json", json.dumps(ROWS)), {}, [r"row 1 field '<row>': a JSON list, not an object"]),
    "JSON strings, not objects": (_write("strings.jsonl", "".join(json.dumps(r["question"]) + "\n" for r in ROWS)), {},
                                  [ROW.format("<row>") + r": a JSON str, not an object"]),
    "question is a number": (_write("numbers.jsonl", "".join(json.dumps(dict(r, question=i)) + "\n" for i, r in enumerate(ROWS))), {},
                             [ROW.format("question") + r": wrong type \(int, expected text\)"]),
    "question is null": (_write("nulls.jsonl", "".join(json.dumps(dict(r, question=None)) + "\n" for r in ROWS)), {},
                         [ROW.format("question") + r": empty"]),
    "answer is a list": (_write("lists.jsonl", "".join(json.dumps(dict(r, answer=[r["answer"]])) + "\n" for r in ROWS)), {},
                         [ROW.format("answer") + r": wrong type \(list"]),
    "no answer field": (_write("noanswer.jsonl", "".join(json.dumps({"question": r["question"], "text": r["answer"]}) + "\n" for r in ROWS)), {},
                        [ROW.format("answer") + r": has no field 'answer' \(fields present: question, text\); set data.question_field"]),
    "column_map to a missing column": (_write("mapped.jsonl", "".join(json.dumps({"prompt": r["question"], "answer": r["answer"]}) + "\n" for r in ROWS)),
                                       {"column_map": ("question=query",)}, [ROW.format("question") + r": has no field 'question'"]),
    "invalid UTF-8 bytes": (_write("bytes.jsonl", GOOD.encode().replace(b"symptoms", b"sympt\xff\xfems")), {},
                            [ROW.format("question") + r": broken encoding .*: save the file as UTF-8"]),
    "UTF-16 file": (_write("wide.jsonl", GOOD.encode("utf-16")), {}, [r"encoded as UTF-16, not UTF-8; convert it \(e.g. `iconv -f UTF-16"]),
    "Latin-1 CSV": (_write("latin1.csv", _csv([["question", "answer"]] + [[q, a + " café"] for q, a in QA]).encode("latin-1")), {},
                    [ROW.format("answer") + r": broken encoding"]),
    "NUL bytes in fields": (_write("nul.jsonl", "".join(json.dumps(dict(r, answer=r["answer"] + "\u0000")) + "\n" for r in ROWS)), {},
                            [ROW.format("answer") + r": broken encoding"]),
    "ragged CSV rows": (_write("ragged.csv", "question,answer\n" + "".join(f"{q},{a},x,y\n" for q, a in QA)), {},
                        [ROW.format("<row>") + r": 4 cells but the header has 2 columns"]),
    "unclosed quote in a CSV": (_write("quote.csv", 'question,answer\n"What is gout ?,Arthritis\n' + _csv(QA)), {},
                                [r"row 2: not readable as CSV \(unexpected end of data\); check quoting around that row"]),
    "tab-separated file named .csv": (_write("tabs.csv", "question\tanswer\n" + "".join(f"{q}\t{a}\n" for q, a in QA)), {},
                                      [r"row 1 \(the header\): one column only, and it holds tabs: .* name a tab-separated file .tsv"]),
    "duplicate column names": (_write("twice.csv", _csv([["question", "question", "answer"]] + [[q, "x", a] for q, a in QA])), {},
                               [r"row 1 \(the header\): a column name appears more than once \('question' in columns 1, 2\)",
                                r"rename the header cells"]),
    "empty header cell": (_write("blankhead.csv", _csv([["", "answer"]] + QA)), {},
                          [r"row 1 \(the header\): no column named 'question'", r"data.column_map"]),
    "binary bytes named .jsonl": (_write("image.jsonl", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 16), {},
                                  [ROW.format("<row>") + r": not valid JSON", r"Fix those rows"]),
    "gzip of garbage": (_write("garbage.jsonl.gz", gzip.compress(bytes(range(256)) * 8)), {}, [ROW.format("<row>")]),
    "truncated .jsonl.gz": (_truncated_gz, {}, [r"the compressed file ends early or is corrupt", r"upload it again"]),
    "plain file named .gz": (_write("plain.jsonl.gz", GOOD), {}, [r"not gzip-compressed although its name ends in .gz; rename it"]),
    "CSV named .parquet": (_write("table.parquet", "question,answer\nWhat is gout ?,Arthritis.\n"), {},
                           [r"not a readable Parquet file", r"write it again as Parquet"]),
    "Parquet with other columns": (lambda t: _parquet(t / "other.parquet", {"prompt": [q for q, _ in QA], "response": [a for _, a in QA]}), {},
                                   [ROW.format("question") + r": has no field 'question' \(fields present: prompt, response\)"]),
    "Parquet with a numeric question": (lambda t: _parquet(t / "ints.parquet", {"question": list(range(len(QA))), "answer": [a for _, a in QA]}), {},
                                        [ROW.format("question") + r": wrong type \(int"]),
    "broken saved-datasets folder": (_hf_folder, {}, [r"cannot load the saved datasets folder", r"save it again with Dataset.save_to_disk"]),
    "JSON nested 100,000 deep": (_write("deep.jsonl", "[" * 100_000 + "\n" + GOOD), {},
                                 [r"row 1 field '<row>': JSON nested too deeply to read", r"Fix or remove those rows"]),
    "one 10 MB answer": (_write("long.jsonl", GOOD + json.dumps({"question": "What is it ?", "answer": "word " * 2_000_000}) + "\n"), {},
                         [ROW.format("answer") + r": absurd length \(9999999 characters > 100000\)"]),
    "answers of markup only": (_write("markup.jsonl", "".join(json.dumps(dict(r, answer="<p><br/></p>")) + "\n" for r in ROWS)), {},
                               [ROW.format("answer") + r": empty"]),
    "zero-width questions": (_write("invisible.jsonl", "".join(json.dumps(dict(r, question="\u200b\u200b")) + "\n" for r in ROWS)), {},
                             [ROW.format("question") + r": too short"]),
    "every question equals its answer": (_write("same.jsonl", "".join(json.dumps(dict(r, answer=r["question"])) + "\n" for r in ROWS)), {},
                                         [ROW.format("answer") + r": question equals the answer"]),
    "XML that is not MedQuAD": (_write("other.xml", "<root><a>1</a></root>"), {}, [r"the dataset is empty"]),
    "broken XML": (_write("broken.xml", "<Document><QAPair><Question>What"), {}, [r"row 1 field '<row>': not valid XML"]),
    "unsupported file type": (_write("pairs.xlsx", b"PK\x03\x04"), {}, [r"unsupported file type; use .jsonl"]),
}

ACCEPTED = {
    "Windows line ends (CRLF) in a CSV": (_write("crlf.csv", _csv([["question", "answer"]] + QA).replace("\n", "\r\n")), {}, 0),
    "a byte-order mark before JSON lines": (_write("bom.jsonl", b"\xef\xbb\xbf" + GOOD.encode()), {}, 0),
    "a symlink loop next to the data": (None, {}, 0),
    "one broken line within the tolerance": (_write("one-bad.jsonl", GOOD + "{oops\n"), {"max_bad_row_fraction": 0.05}, 1),
}


def _symlink_loop(tmp_path: Path) -> Path:
    folder = tmp_path / "with-loop"
    folder.mkdir()
    os.symlink(folder / "a", folder / "b")
    os.symlink(folder / "b", folder / "a")
    (folder / "pairs.jsonl").write_text(GOOD)
    return folder


def _prepare(tmp_path: Path, path: Path, changes: dict):
    config = dataclasses.replace(LOCAL.data, data_uri=str(path), max_train_pairs=0, min_train_pairs=4, num_negatives=0,
                                 eval_distractors=5, **changes)
    return stage.prepare(config, tmp_path / "out" / "train", tmp_path / "out" / "eval", model=LOCAL.train.base_model,
                         max_seq_length=LOCAL.train.max_seq_length)


@case(fault="malformed input: {id}",
      promise="one DataError naming the file (and row and field, or the header) and what to do; nothing written")
@pytest.mark.parametrize("name", list(FAILS))
def test_a_malformed_input_fails_with_one_message_naming_it(tmp_path, name):
    build, changes, fragments = FAILS[name]
    path = build(tmp_path)
    with pytest.raises(DataError, match=re.escape(str(path))) as error:
        _prepare(tmp_path, path, changes)
    message = str(error.value)
    assert message.startswith(str(path)), message
    for fragment in fragments:
        assert re.search(fragment, message), f"{fragment!r} not in {message!r}"
    assert error.value.__cause__ is None and (error.value.__context__ is None or error.value.__suppress_context__), \
        "one message: no chained library error"
    assert not (tmp_path / "out").exists(), "prep wrote outputs although it failed"
    observe(message[len(str(path)):].lstrip(": ") if len(message) < 400 else message[len(str(path)):400] + "…")


@case(fault="a usable input with a flaw: {id}",
      promise="read; bad rows counted and named in validation_report.json, within the tolerance")
@pytest.mark.parametrize("name", list(ACCEPTED))
def test_a_usable_input_with_a_flaw_is_read(tmp_path, name):
    build, changes, bad = ACCEPTED[name]
    path = (build or _symlink_loop)(tmp_path)
    stats = _prepare(tmp_path, path, changes)
    assert stats.rows_kept == len(ROWS) and stats.dropped_bad == bad
    report = json.loads((tmp_path / "out" / "train" / "validation_report.json").read_text())
    assert report["bad_rows"] == bad and len(report["issues"]) == bad
    observe(f"{stats.rows_kept} pairs kept, {stats.dropped_bad} bad row(s)"
            + (f": {report['issues'][0]['file'].rsplit('/', 1)[-1]} row {report['issues'][0]['row']} field "
               f"{report['issues'][0]['field']!r}: {report['issues'][0]['reason']}" if bad else ""))
