"""Personal data (issue 13): the labelled corpus, the issue's escaped cases, linear time on hostile
rows, and values never reaching outputs, messages or logs."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

import pytest

from conftest import make_rows, write_jsonl
from faultkit import case, figure, observe
from medembed import artifacts
from medembed.config import LOCAL
from medembed.prep import DataError, privacy, stage

pytestmark = pytest.mark.faults

CORPUS = Path(__file__).parent / "data" / "pii_corpus.jsonl"
# The rows that passed main's scan with data.pii_action=fail (issue 13), and the value each must lose.
ESCAPED = [
    ("Patient: John Smith was admitted with chest pain.", "person_name", "John Smith"),
    ("Pt: Mary Jones, 67F, presents with dyspnea.", "person_name", "Mary Jones"),
    ("Seen by Dr. Gregory House for recurrent fevers.", "person_name", "Gregory House"),
    ("Billing: Acct# 44556677 closed.", "record_number", "44556677"),
    ("Chart reference MR# 7788990.", "record_number", "7788990"),
    ("MRN: 00123456", "record_number", "00123456"),
    ("Member ID XJH123456789 (insurance)", "record_number", "XJH123456789"),
    ("SSN 123-45-6789", "ssn", "123-45-6789"),
    ("Lives at 742 Evergreen Terrace, Springfield, IL 62704.", "address", "742 Evergreen Terrace"),
]
MEDICAL = ["BRCA1 and BRCA2 mutations", "Metformin 500 mg twice daily", "ICD-10 E11.9", "HbA1c 7.2%",
           "A 45-year-old woman presented in 2019", "Hashimoto thyroiditis", "Dravet syndrome", "HLA-DR4",
           "MR angiography was normal", "PT 13.2 s, INR 1.1", "Vancomycin 15-20 mg/kg every 8-12 hours",
           "chr17:43,044,295-43,125,483", "Group B strep at 36-37 weeks", "Brand name: Glucophage"]


@case(fault='personal data of every kind in the labelled corpus (tests/data/pii_corpus.jsonl), medical terms and drug names among the negatives',
      promise='recall ≥ 0.95 and precision ≥ 0.9')
def test_corpus_precision_and_recall_meet_the_targets(capsys):
    snippets = privacy.read_corpus(CORPUS)
    result = privacy.evaluate(snippets)
    assert result["positives"] >= 100 and result["negatives"] >= 100
    assert {item["kind"] for s in snippets for item in s["pii"]} == set(privacy.KINDS)
    print(f"PII corpus: precision {result['precision']:.3f}, recall {result['recall']:.3f} "
          f"({result['positives']} positive, {result['negatives']} negative snippets)")
    figure("pii", {k: result[k] for k in ("precision", "recall", "positives", "negatives")})
    observe(f"precision {result['precision']:.3f}, recall {result['recall']:.3f} ({result['positives']} positive, "
            f"{result['negatives']} negative snippets; {len(result['misses'])} missed, {len(result['false_alarms'])} false alarms)")
    assert result["recall"] >= 0.95, result["misses"]
    assert result["precision"] >= 0.9, result["false_alarms"]


@case(fault="the corpus evaluation's own report (python -m medembed.prep.privacy)",
      promise='names lines and kinds, never a personal value')
def test_evaluation_report_names_lines_and_kinds_never_values(capsys):
    assert privacy.main([str(CORPUS)]) == 0
    out = capsys.readouterr().out
    assert "precision" in out and "recall" in out
    values = {item["value"] for s in privacy.read_corpus(CORPUS) for item in s["pii"]}
    assert not [v for v in values if len(v) > 3 and v in out]
    observe(f"{len(out.splitlines())} lines printed, none holding any of the corpus's {len(values)} values; "
            f"summary: {next(line for line in out.splitlines() if 'recall' in line)}")


@case(fault="a row that passed main's scan: {id}",
      promise='caught as its kind and replaced by a placeholder')
@pytest.mark.parametrize("text, kind, value", ESCAPED)
def test_the_issues_escaped_rows_are_caught_and_redacted(text, kind, value):
    redacted, counts = privacy.redact(text)
    assert counts[kind] >= 1
    assert value not in redacted and f"[{kind.upper()}]" in redacted
    observe(f"{redacted!r}")


@case(fault='a medical term, drug, dose or code that looks like personal data: {id}',
      promise='left alone (no kind found, text unchanged)')
@pytest.mark.parametrize("text", MEDICAL)
def test_medical_terms_drug_names_and_codes_are_left_alone(text):
    assert privacy.scan(text) == {}
    assert privacy.redact(text)[0] == text
    observe(f"unchanged: {text!r}")


@case(fault='a clinical note line with a name, MRN, date of birth and phone',
      promise='labels kept, each value replaced by its kind')
def test_labels_are_kept_and_only_values_replaced():
    redacted, _ = privacy.redact("Patient: John Smith, MRN 12345678, DOB 04/05/1961, call (555) 010-2000.")
    assert redacted == "Patient: [PERSON_NAME], MRN [RECORD_NUMBER], DOB [DATE_OF_BIRTH], call [PHONE]."
    observe(redacted)


@case(fault='a 1 MB row of a shape that makes backtracking patterns quadratic: {id}…',
      promise='scanned in linear time (bound 10 s only proves no blow-up)')
@pytest.mark.parametrize("unit", privacy.HOSTILE_SHAPES)
def test_a_hostile_megabyte_row_is_scanned_in_linear_time(unit):
    """One MB of a repeated shape that makes backtracking patterns quadratic (main's e-mail pattern took
    35-69 s on 98 KB of "1-1-1-"). Here every pattern is bounded: measured 0.1-0.9 s per MB on the
    shared 2-core machine. The bound only proves there is no blow-up (quadratic would be hours)."""
    text = unit * (1_000_000 // len(unit))
    start = time.perf_counter()
    privacy.redact(text)
    seconds = time.perf_counter() - start
    assert seconds < 10
    observe(f"{len(text):,} characters in {seconds:.2f} s")


@case(fault="the issue's 98 KB answer 1-1-1-… (35–69 s on main)",
      promise='redacted in well under 2 s, unchanged (it holds no personal data)')
def test_the_issues_98_kb_answer_is_fast():
    answer = "-".join("1" * 49_000)
    start = time.perf_counter()
    assert privacy.redact(answer) == (answer, {})
    seconds = time.perf_counter() - start
    assert seconds < 2
    observe(f"{len(answer):,} characters in {seconds:.3f} s, nothing found")


def _prepare(config, train_dir, eval_dir):
    return stage.prepare(config, train_dir, eval_dir, model=LOCAL.train.base_model, max_seq_length=LOCAL.train.max_seq_length)


def _config(path, **changes):
    base = dataclasses.replace(LOCAL.data, data_uri=str(path), max_train_pairs=0, min_train_pairs=4, num_negatives=0,
                               eval_distractors=5, max_bad_row_fraction=0.2)
    return dataclasses.replace(base, **changes)


def _rows_with_escaped_pii() -> list[dict]:
    rows = make_rows()
    for i, (text, _, _) in enumerate(ESCAPED):
        rows.append({"doc_id": f"pii{i}", "focus": f"pii{i}", "question": f"What did note {i} say ?", "answer": text})
    return rows


@case(fault="the issue's escaped rows in the data with data.pii_action=fail",
      promise='one DataError naming file, row, field and kind, never a value (message and log); nothing written')
def test_fail_mode_stops_on_the_escaped_rows_naming_row_field_kind_only(tmp_path, caplog):
    path = write_jsonl(tmp_path / "notes.jsonl", _rows_with_escaped_pii())
    caplog.set_level(logging.DEBUG)
    with pytest.raises(DataError, match="personal data") as error:
        _prepare(_config(path, pii_action="fail"), tmp_path / "train", tmp_path / "eval")
    message = str(error.value)
    for kind in ("person_name", "record_number", "ssn", "address"):
        assert kind in message
    assert f"{path} row {len(make_rows()) + 1} field 'answer'" in message
    for _, _, value in ESCAPED:
        assert value not in message and value not in caplog.text
    assert not (tmp_path / "train").exists()
    observe(message)


@case(fault="the issue's escaped rows in the data with data.pii_action=redact",
      promise='no value in any output file, stats or log; the data card does not say "None found"')
def test_redact_mode_keeps_values_out_of_every_output_and_log(tmp_path, caplog):
    path = write_jsonl(tmp_path / "notes.jsonl", _rows_with_escaped_pii())
    caplog.set_level(logging.DEBUG)
    stats = _prepare(_config(path), tmp_path / "train", tmp_path / "eval")
    assert stats.pii_found["person_name"] >= 3 and stats.pii_found["record_number"] >= 4
    outputs = "".join(p.read_text() for d in ("train", "eval") for p in sorted((tmp_path / d).rglob("*"))
                      if p.is_file())  # the built-in probes live in eval/probes/<name>/
    outputs += json.dumps(dataclasses.asdict(stats))
    for _, _, value in ESCAPED:
        assert value not in outputs and value not in caplog.text
    assert "None found" not in (tmp_path / "train" / artifacts.CARD_MARKDOWN_FILE).read_text()
    observe(f"redacted counts {dict(stats.pii_found)}; none of the {len(ESCAPED)} values in {len(outputs):,} characters "
            "of outputs or in the log")
