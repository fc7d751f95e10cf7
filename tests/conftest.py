"""Shared fixtures: a tiny random sentence-transformers model (built in seconds, no hub),
small pair files, and a live S3 endpoint on 127.0.0.1 (moto's server)."""

from __future__ import annotations

import gzip
import json
import os
import socket
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MEDEMBED_THREADS", "1")

TOPICS = ["anemia", "asthma", "diabetes", "glaucoma", "gout", "lupus", "migraine", "psoriasis",
          "rickets", "scurvy", "tetanus", "vitiligo", "measles", "mumps", "rabies", "sepsis"]
QTYPES = {
    "symptoms": "What are the symptoms of {} ?",
    "treatment": "What are the treatments for {} ?",
    "causes": "What causes {} ?",
}


def need_tool(available: bool, what: str, how: str) -> None:
    """A test that needs a tool outside Python (a browser, a linter binary): without it the test skips with
    the reason (listed in pytest's summary), except in CI (MEDEMBED_CI=1, set by .ci/run), where it fails:
    CI must run every test."""
    if available:
        return
    if os.environ.get("MEDEMBED_CI"):
        pytest.fail(f"{what} is missing in CI, which must run every test: {how}")
    pytest.skip(f"{what} is missing: {how} (in CI this fails instead of skipping)")


def make_rows(n_topics: int = 16) -> list[dict]:
    """Templated medical-style pairs: one document per topic, one row per question type."""
    rows = []
    for t, topic in enumerate(TOPICS[:n_topics]):
        for qtype, template in QTYPES.items():
            rows.append({
                "uid": f"{t}-{qtype}",
                "doc_id": f"doc{t}",
                "focus": topic,
                "qtype": qtype,
                "question": template.format(topic),
                "answer": f"The {qtype} of {topic} are described here: {topic} {qtype} details number {t}.",
            })
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    return path


@pytest.fixture
def pairs_file(tmp_path) -> Path:
    return write_jsonl(tmp_path / "pairs.jsonl", make_rows())


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer, 64-dim random BERT with a word-level tokenizer: real code paths, seconds to train."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    root = tmp_path_factory.mktemp("tiny-model")
    words = {w for row in make_rows() for text in (row["question"], row["answer"]) for w in text.lower().replace("?", " ").replace(":", " ").replace(".", " ").split()}
    vocab = {tok: i for i, tok in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(words))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                     cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    bert_dir = root / "bert"
    config = BertConfig(vocab_size=len(vocab), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=128, max_position_embeddings=128)
    import torch

    torch.manual_seed(0)
    BertModel(config).save_pretrained(bert_dir)
    hf_tok.save_pretrained(bert_dir)
    transformer = Transformer(str(bert_dir), max_seq_length=64)
    model = SentenceTransformer(modules=[transformer, Pooling(64, pooling_mode="mean")], device="cpu")
    model.save(str(root / "st"))
    return root / "st"


def tiny_overrides(model_dir: Path, data: Path, **more) -> dict:
    """`--set` values for a whole run on the tiny model and make_rows() data (seconds per stage)."""
    return {"data.data_uri": str(data), "data.max_train_pairs": 0, "data.min_train_pairs": 4,
            "data.dev_fraction": 0.0, "data.test_fraction": 0.25, "data.num_negatives": 0,
            "train.base_model": str(model_dir), "train.matryoshka_dims": "64,32", "train.batch_size": 8,
            "train.warmup_steps": 0, "train.max_seq_length": 32, **more}


@pytest.fixture(scope="session")
def stage_outputs(tmp_path_factory, tiny_model_dir) -> dict:
    """Prep, training and evaluation run once on the tiny model (in this process): their output folders,
    for tests of what later stages do with damaged or unusual inputs. Treat them as read-only."""
    from medembed.config import load_config
    from medembed.evaluate import stage as evaluate
    from medembed.prep import stage as prep
    from medembed.train import stage as train

    root = tmp_path_factory.mktemp("stage-outputs")
    data = write_jsonl(root / "pairs.jsonl", make_rows())
    config = load_config("local", tiny_overrides(tiny_model_dir, data, **{"registry.registry_uri": str(root / "registry")}))
    prep.run(config, root / "train", root / "eval")
    train.run(config, root / "train", root / "model")
    evaluate.run(config, root / "eval", root / "model", root / "results")
    return {"config": config, "train": root / "train", "eval": root / "eval", "model": root / "model",
            "results": root / "results", "data": data}


@pytest.fixture(scope="session")
def s3_endpoint():
    """moto's S3 server on 127.0.0.1 with MinIO-style environment variables pointing at it."""
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"MINIO_ENDPOINT": f"http://127.0.0.1:{port}", "MINIO_ACCESS_KEY": "test-access",
           "MINIO_SECRET_KEY": "test-secret", "MINIO_SECURE": "false", "MINIO_REGION": "us-east-1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield env
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# ---------------------------------------------------------------- the fault suite's report (issue 13)
#
# Every test marked `faults` is a case of docs/RELIABILITY.md: the marker's `fault` and `promise`, what the
# test recorded with faultkit.observe(), and its result. The file is written when MEDEMBED_RELIABILITY_REPORT
# is set (make test, make test-faults) and the session ran every fault case (no file arguments, no -k).

import time  # noqa: E402

import faultkit  # noqa: E402

_FAULT_RECORDS: dict[str, dict] = {}
_FAULTS_DESELECTED: list[str] = []
_SESSION_START = time.monotonic()


def _fault_marker(item):
    described = [m for m in item.iter_markers("faults") if m.kwargs]
    return described[0].kwargs if described else None if item.get_closest_marker("faults") is None else {}


def pytest_deselected(items):
    _FAULTS_DESELECTED.extend(i.nodeid for i in items if i.get_closest_marker("faults") is not None)


def pytest_runtest_setup(item):
    if not faultkit.SCRUB:
        faultkit.SCRUB.append(str(item.config._tmp_path_factory.getbasetemp()))
    described = _fault_marker(item)
    if described is None:
        faultkit.CURRENT = {}
        return
    param = item.callspec.id if hasattr(item, "callspec") else ""
    record = {"nodeid": item.nodeid, "module": item.module.__name__, "name": item.originalname, "id": param,
              "fault": described.get("fault", item.name).replace("{id}", param),
              "promise": described.get("promise", "(no promise stated)").replace("{id}", param),
              "observed": [], "outcome": "passed"}
    _FAULT_RECORDS[item.nodeid] = faultkit.CURRENT = record


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    record = _FAULT_RECORDS.get(item.nodeid)
    if record is None or record["outcome"] != "passed":
        return
    if report.failed:
        record["outcome"] = "failed"
        record["failure"] = str(getattr(report.longrepr, "reprcrash", None) and report.longrepr.reprcrash.message or report.longrepr)[:400]
    elif report.skipped:
        record["outcome"] = "skipped"
        record["failure"] = str(report.longrepr)[-300:]


def pytest_sessionfinish(session, exitstatus):
    target = os.environ.get("MEDEMBED_RELIABILITY_REPORT")
    if not target or not _FAULT_RECORDS:
        return
    config = session.config
    partial = bool(config.args and config.args != ["tests"]) or bool(config.getoption("keyword")) or _FAULTS_DESELECTED
    missing = [r["nodeid"] for r in _FAULT_RECORDS.values() if not r["observed"] and r["outcome"] == "passed"]
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if partial:
        if reporter:
            reporter.write_line(f"{target} not written: only part of the fault suite ran")
        return
    import reliability

    for nodeid in missing:  # a case that recorded nothing is no evidence: the report says so and fails
        _FAULT_RECORDS[nodeid].update(outcome="failed", failure="the case recorded no observation")
    command = os.environ.get("MEDEMBED_RELIABILITY_COMMAND", "pytest -m faults")
    path = reliability.write(list(_FAULT_RECORDS.values()), faultkit.FIGURES, time.monotonic() - _SESSION_START, command,
                             Path(target))
    if reporter:
        reporter.write_line(f"{path}: {len(_FAULT_RECORDS)} fault cases written")
    if missing:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        if reporter:
            reporter.write_line("fault cases without an observation: " + ", ".join(missing))
