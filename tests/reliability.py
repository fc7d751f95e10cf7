"""docs/RELIABILITY.md, written by the fault suite (conftest.py calls `write` at the end of a session
that ran every fault case): each case's fault, the promised behaviour, what was observed and the result."""

from __future__ import annotations

import datetime as dt
import html
import platform
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REPORT = ROOT / "docs" / "RELIABILITY.md"

AREAS = {
    "test_faults_input": "Bad input: clear errors",
    "test_faults_inputs_matrix": "Malformed inputs, a matrix",
    "test_faults_privacy": "Personal data",
    "test_faults_storage": "Object store: timeouts, retries, messages",
    "test_faults_network": "A misbehaving endpoint (TCP proxy in front of the S3 server)",
    "test_faults_disk": "A full disk (real tmpfs)",
    "test_faults_kill": "kill -9",
    "test_faults_checkpoints": "Checkpoints bound to their run; scratch of killed runs",
    "test_faults_corruption": "Corrupted model, checkpoint and registry files",
    "test_faults_registry": "Registry under faults",
    "test_registry": "Registry (the registry's own tests, collected under the marker)",
    "test_training": "Training resume (the training tests, collected under the marker)",
    "test_pipeline_local": "End to end (kfp.local)",
}

# Issue 13's "Why", item by item, and the test functions that cover it.
WHY = [
    ("Personal data after clinical labels and honorifics (Patient:, Pt:, Dr.), Acct#, MR# passed the scan",
     ["test_the_issues_escaped_rows_are_caught_and_redacted", "test_fail_mode_stops_on_the_escaped_rows_naming_row_field_kind_only"]),
    ("… the data card said \"None found\" and the values landed in train.jsonl and corpus.jsonl",
     ["test_redact_mode_keeps_values_out_of_every_output_and_log"]),
    ("A CSV without a header row put its first row (names, address, e-mail, SSN) into messages and logs",
     ["test_headerless_csv_is_reported_by_column_position_without_values", "test_headerless_question_answer_csv_is_detected"]),
    ("A 98 KB answer of 1-1-1-… took 35–69 s to redact (backtracking)",
     ["test_the_issues_98_kb_answer_is_fast", "test_a_hostile_megabyte_row_is_scanned_in_linear_time"]),
    ("An S3 endpoint that accepts connections and never answers kept prep silent for minutes",
     ["test_a_silent_endpoint_ends_in_one_clear_error_within_the_timeout", "test_prep_on_a_silent_endpoint_fails_with_the_input_named",
      "test_an_endpoint_that_goes_silent_mid_registration"]),
    ("A reused checkpoint location returned the old model (no data or config fingerprint)",
     ["test_other_data_at_the_same_location_starts_fresh_and_says_why", "test_another_training_configuration_starts_fresh"]),
    ("A truncated alias file or champion metrics.json: bare JSONDecodeError naming no file",
     ["test_a_damaged_registry_file_is_named_with_a_way_out", "test_a_truncated_champion_metrics_file_blocks_nothing"]),
    ("An alias history that is not a list failed after a version was fully written",
     ["test_an_alias_entry_of_the_wrong_shape_is_named_before_anything_is_written"]),
    ("A second rollback re-promoted the version just rolled back (3 → 2 → 3)", ["test_rollback_walks_back_and_never_toggles"]),
    ("A local registry that hit a full disk kept failing on the partial folder",
     ["test_a_full_disk_in_each_stage_is_one_message_and_leaves_nothing_half_written",
      "test_an_interrupted_upload_is_never_listed_and_its_number_never_reused"]),
    ("run-local with an s3:// registry registered, then failed with FileNotFoundError 's3:/…/metrics.json'",
     ["test_run_local_with_an_s3_registry_works_end_to_end"]),
    ("A truncated .jsonl.gz: EOFError naming no file", ["test_truncated_jsonl_gz_names_the_file_and_the_last_good_row"]),
    ("A non-Parquet file named .parquet: ArrowInvalid", ["test_a_csv_named_parquet_says_so"]),
    ("A missing bucket: S3Error NoSuchBucket, resource: None", ["test_a_missing_bucket_is_named_with_its_endpoint"]),
    ("An unreachable endpoint: MaxRetryError", ["test_a_refused_connection_says_to_check_the_endpoint", "test_an_endpoint_down_at_start"]),
    ("Files of unknown type in an input folder skipped without a word",
     ["test_unknown_files_in_a_folder_are_named_in_the_log_and_the_report"]),
    ("One-character questions and question == answer passed silently",
     ["test_one_character_questions_and_question_equal_answer_are_bad_rows"]),
    ("&lt;script&gt; unescaped into a live <script> in the evaluation corpus",
     ["test_escaped_script_in_input_is_not_live_in_the_evaluation_corpus"]),
    ("A checkpoint write on a full disk: a long shutil.Error and a partial checkpoint",
     ["test_a_full_disk_in_each_stage_is_one_message_and_leaves_nothing_half_written"]),
    ("A killed training left a 520 MB temp folder",
     ["test_a_killed_runs_scratch_folder_is_removed_at_the_next_start_and_a_live_one_kept", "test_kill_9_at_random_training_steps"]),
    ("Resume was checked by a folder name, not by what ran",
     ["test_kill_9_at_random_training_steps", "test_killed_training_resumes_from_last_checkpoint"]),
]

REAL_AND_SIMULATED = """\
- **Real**: the product's code in every case (no product function is replaced); an S3 server (moto's, on
  127.0.0.1) for every object-store case; real TCP behaviour from a proxy on 127.0.0.1 in front of it (slow,
  silent, dropping a connection mid-upload, port closed); real processes killed with SIGKILL (`kill -9`)
  at random training steps and during an upload; a real full filesystem: a tmpfs of a few hundred KiB to 128 MiB
  mounted in a private mount namespace (`unshare --user --map-root-user --mount`, no root needed), on which
  writes fail with the kernel's ENOSPC; `medembed run-local` as a subprocess where an exit code is promised.
- **Simulated**: a disk-full *object store* (MinIO's `XMinioStorageFull`) is a small HTTP server on 127.0.0.1
  answering as MinIO does (moto cannot run out of space); stages other than those run through `run-local`
  run in a child process that calls the stage's `run()` as its KFP component does, so their exit code is
  Python's for an uncaught exception (the KFP task fails the same way); corrupted files are written by the
  tests (truncated, overwritten, wrong JSON shape).
"""


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _cell(text: str) -> str:
    """One table cell: markup shown as text (cases quote <script> and the like), pipes escaped."""
    return html.escape(" ".join(str(text).split()), quote=False).replace("|", "\\|")


def write(records: list[dict], figures: dict, seconds: float, command: str, path: Path = REPORT) -> Path:
    passed = sum(r["outcome"] == "passed" for r in records)
    failed = [r for r in records if r["outcome"] != "passed"]
    commit = _git("rev-parse", "--short", "HEAD")
    dirty = [line for line in _git("status", "--porcelain").splitlines() if not line.endswith(path.name)]
    lines = [
        "# Reliability: what medembed does when things go wrong",
        "",
        f"Written by the fault suite (`{command}`; the cases are the tests marked `faults`); do not edit by hand.",
        f"Last run: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, commit {commit or 'unknown'}"
        f"{' with local changes' if dirty else ''}, Python {platform.python_version()}, {platform.system()} "
        f"{platform.machine()}, {seconds:.0f} s.",
        "",
        f"**{len(records)} cases: {passed} passed, {len(failed)} failed.**",
        "",
    ]
    if "pii" in figures:
        pii = figures["pii"]
        lines += [f"**Personal-data detection** on `tests/data/pii_corpus.jsonl` ({pii['positives']} snippets with personal "
                  f"data, {pii['negatives']} without, medical terms and drug names among them): precision "
                  f"**{pii['precision']:.3f}**, recall **{pii['recall']:.3f}** (targets ≥ 0.9 and ≥ 0.95; also printed by "
                  "`python -m medembed.prep.privacy`).", ""]
    lines += ["## What is real and what is simulated", "", REAL_AND_SIMULATED, "## Issue 13's list, item by item", "",
              "| what went wrong before | cases | result |", "| --- | --- | --- |"]
    by_name: dict[str, list[dict]] = {}
    for record in records:
        by_name.setdefault(record["name"], []).append(record)
    for text, names in WHY:
        found = [r for n in names for r in by_name.get(n, [])]
        status = ("missing" if not found else "pass" if all(r["outcome"] == "passed" for r in found) else "**FAIL**")
        lines.append(f"| {_cell(text)} | {', '.join(f'`{n}`' for n in names)} ({len(found)}) | {status} |")
    lines.append("")
    number = 0
    for module, title in AREAS.items():
        rows = [r for r in records if r["module"] == module]
        if not rows:
            continue
        lines += [f"## {title}", "", f"`tests/{module}.py`", "", "| # | fault | promised behaviour | observed | result |",
                  "| ---: | --- | --- | --- | --- |"]
        for record in rows:
            number += 1
            observed = " · ".join(record["observed"]) or "(nothing recorded)"
            result = "pass" if record["outcome"] == "passed" else f"**{record['outcome'].upper()}**: {record.get('failure', '')}"
            lines.append(f"| {number} | {_cell(record['fault'])} | {_cell(record['promise'])} | {_cell(observed)} | {_cell(result)} |")
        lines.append("")
    others = [r for r in records if r["module"] not in AREAS]
    if others:
        raise ValueError(f"fault cases in modules without a section: {sorted({r['module'] for r in others})}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    return path
