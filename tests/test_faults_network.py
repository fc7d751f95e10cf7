"""A misbehaving object store (issue 13): a TCP proxy on 127.0.0.1 in front of the S3 server (moto) is
down, slow, silent or drops a connection mid-upload, while the real registry, training and prep code
talk to it. Promise: a live but slow endpoint still works; every failure is one StorageError naming
the endpoint, bucket and key and what to do, within the configured timeouts; nothing half-written
becomes visible (no version without its manifest, no checkpoint without its marker)."""

from __future__ import annotations

import dataclasses
import http.server
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlparse

import pytest

from conftest import make_rows, write_jsonl
from faultkit import FaultProxy, case, observe
from medembed import storage
from medembed.config import LOCAL
from medembed.prep import DataError
from medembed.prep import stage as prep_stage
from medembed.registry import ModelRegistry
from medembed.storage import StorageError, open_store
from medembed.train import checkpoints, recipe
from test_registry import WIN, card, fake_model, promote, refuse, results
from test_training import _config, _train_dir

KIB = 1024


@pytest.fixture
def proxy(s3_endpoint, monkeypatch):
    """The proxy in front of moto, with the client's timeouts and retries made short for the tests."""
    server = FaultProxy(urlparse(s3_endpoint["MINIO_ENDPOINT"]).port)
    for name, value in {"MINIO_ENDPOINT": server.endpoint, storage.CONNECT_TIMEOUT_VAR: "2", storage.READ_TIMEOUT_VAR: "1",
                        storage.RETRIES_VAR: "1", storage.BACKOFF_VAR: "0"}.items():
        monkeypatch.setenv(name, value)
    yield server
    server.close()


def _bucket() -> str:
    return f"faults-{uuid.uuid4().hex[:12]}"


def _weights_model(tmp_path: Path, name: str, size: int) -> Path:
    return fake_model(tmp_path, name, os.urandom(size))


def _prep(data_uri: str, tmp_path: Path):
    config = dataclasses.replace(LOCAL.data, data_uri=data_uri, max_train_pairs=0, min_train_pairs=4, num_negatives=0,
                                 eval_distractors=5)
    return prep_stage.prepare(config, tmp_path / "train", tmp_path / "eval", model=LOCAL.train.base_model,
                              max_seq_length=LOCAL.train.max_seq_length)


# ---------------------------------------------------------------- endpoint down at start


@case(fault="the S3 endpoint is down when {id} starts (port closed)",
      promise="one StorageError/DataError naming the endpoint and the bucket or key, 'cannot connect', what to check; "
              "nothing written")
@pytest.mark.parametrize("what", ["prep reading s3 input", "training with s3 checkpoints", "a registration"])
def test_an_endpoint_down_at_start(proxy, tmp_path, tiny_model_dir, what):
    bucket = _bucket()
    open_store(f"s3://{bucket}/x")  # the bucket exists; the endpoint goes away
    proxy.down()
    if what == "prep reading s3 input":
        with pytest.raises(DataError, match=rf"^data input s3://{bucket}/pairs.jsonl: cannot look up s3://{bucket}/pairs.jsonl") as error:
            _prep(f"s3://{bucket}/pairs.jsonl", tmp_path)
        assert not (tmp_path / "train").exists()
    elif what == "training with s3 checkpoints":
        config = _config(tiny_model_dir, checkpoint_uri=f"s3://{bucket}/run-1")
        with pytest.raises(StorageError, match=rf"cannot check or create bucket '{bucket}' at {proxy.endpoint}") as error:
            recipe.train(_train_dir(tmp_path), tmp_path / "model", config, tmp_path / "work")
        assert not (tmp_path / "model").exists()
    else:
        with pytest.raises(StorageError, match=rf"cannot check or create bucket '{bucket}' at {proxy.endpoint}") as error:
            ModelRegistry(open_store(f"s3://{bucket}/models"), "medical").register(
                fake_model(tmp_path, "m1"), results(WIN), {}, card, promote(None))
    message = str(error.value)
    assert "cannot connect (2 attempts, connection refused or host unknown); check MINIO_ENDPOINT" in message
    observe(f"{type(error.value).__name__}: {message}")


@case(fault="`medembed run-local` with its input on an S3 endpoint that is down",
      promise="exit code 1 and one last line naming the stage, the input's bucket and key, and what to check")
def test_run_local_with_the_endpoint_down_exits_1(proxy, tmp_path, tiny_model_dir):
    proxy.down()
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    argv = [sys.executable, "-m", "medembed", "run-local", "--runs-dir", str(tmp_path / "runs"),
            "--set", "data.data_uri=s3://medembed-data/pairs.jsonl", "--set", f"train.base_model={tiny_model_dir}",
            "--set", "train.matryoshka_dims=64,32", "--set", f"registry.registry_uri={tmp_path / 'registry'}"]
    run = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
    last = [line for line in run.stderr.splitlines() if line.strip()][-1]
    assert run.returncode == 1, run.stderr[-2000:]
    assert last.startswith(f"error: data snapshot failed: StorageError: cannot list s3://medembed-data/pairs.jsonl at "
                           f"{proxy.endpoint}: cannot connect (2 attempts"), last
    assert "connection refused" in last and "full log: " in last, last
    assert not list((tmp_path / "registry").rglob("manifest.json")), "nothing registered"
    observe(f"exit code {run.returncode}; last line: {last}")


# ---------------------------------------------------------------- dropped mid-upload


@case(fault="the connection drops mid-upload of a model version's weights (reset after 128 KiB of a 600 KiB file, "
            "every attempt)",
      promise="one StorageError naming the key and 'the connection broke'; the version is never listed and its "
              "files are removed; once the network is back the next registration works and takes the next number")
def test_a_connection_dropped_mid_upload_leaves_no_version(proxy, tmp_path):
    uri = f"s3://{_bucket()}/models"
    registry = ModelRegistry(open_store(uri), "medical")
    proxy.set("drop", drop_after=128 * KIB)
    with pytest.raises(StorageError, match=r"cannot upload s3://.*/models/medical/v0001/model/weights.bin at .*: the connection "
                                           r"broke \(ProtocolError, 2 attempts\); check the endpoint and any proxy") as error:
        registry.register(_weights_model(tmp_path, "m1", 600 * KIB), results(WIN), {}, card, promote(None))
    assert proxy.dropped >= 2
    proxy.set("pass")
    assert registry.versions() == [] and registry.alias() is None
    left = registry.store.list("medical/v0001/")
    assert left == ["medical/v0001/CLAIM"], left
    second = registry.register(_weights_model(tmp_path, "m2", 600 * KIB), results(WIN), {}, card, promote(None))
    assert (second.version, registry.versions(), registry.alias()) == (2, [2], 2)
    pulled = registry.pull(2, tmp_path / "pulled")
    assert (pulled / "weights.bin").read_bytes() == (tmp_path / "m2" / "weights.bin").read_bytes()
    observe(f"{proxy.dropped} connections reset; {error.value}")
    observe(f"left in the registry: {left}; after recovery: v{second.version}, champion v{registry.alias()}, pull verified")


class _SwitchAt:
    """A trainer callback that switches the proxy to `mode` when training reaches `step`."""

    def __init__(self, proxy: FaultProxy, step: int, mode: str, **settings):
        from transformers import TrainerCallback

        class Switch(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step == step:
                    proxy.set(mode, **settings)

        self.callback = Switch()


class _CountSteps:
    def __init__(self):
        from transformers import TrainerCallback

        counter = self
        self.ran = 0

        class Count(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                counter.ran += 1

        self.callback = Count()


def _weights(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


@case(fault="the connection drops while training uploads a checkpoint to S3 (after step 5 every upload of a file over "
            "64 KiB is reset)",
      promise="training stops with one StorageError naming the checkpoint's key; the partial checkpoint is removed; "
              "the retry resumes from the last complete checkpoint, runs only the remaining steps and ends with the "
              "weights of an uninterrupted run")
def test_a_checkpoint_upload_dropped_mid_training(proxy, tmp_path, tiny_model_dir):
    uri = f"s3://{_bucket()}/run-1"
    train_dir = _train_dir(tmp_path)
    config = _config(tiny_model_dir, checkpoint_uri=uri, checkpoint_steps=2, checkpoint_keep=3)
    with pytest.raises(StorageError, match=rf"cannot upload {uri}/checkpoint-00000006/\S+ at {proxy.endpoint}: the "
                                           r"connection broke") as error:
        recipe.train(train_dir, tmp_path / "m1", config, tmp_path / "w1",
                     callbacks=[_SwitchAt(proxy, 5, "drop", drop_after=64 * KIB).callback])
    proxy.set("pass")
    store = checkpoints.CheckpointStore(uri)
    folders = sorted({key.split("/")[0] for key in store.store.list("")})
    assert folders == ["checkpoint-00000002", "checkpoint-00000004"] and store.steps() == [4, 2], folders
    assert not (tmp_path / "m1").exists()

    count = _CountSteps()
    resumed = recipe.train(train_dir, tmp_path / "m2", config, tmp_path / "w2", callbacks=[count.callback])
    assert (resumed.resumed_from_step, resumed.steps, count.ran) == (4, 10, 6)
    recipe.train(train_dir, tmp_path / "ref", _config(tiny_model_dir), tmp_path / "w3")
    reference, final = _weights(tmp_path / "ref"), _weights(tmp_path / "m2")
    difference = max(float((reference[k] - final[k]).abs().max()) for k in reference)
    assert difference < 1e-6
    observe(f"{error.value}")
    observe(f"checkpoints left: {folders}; retry resumed at step {resumed.resumed_from_step}, ran {count.ran} steps to "
            f"{resumed.steps}; largest weight difference to an uninterrupted run {difference:.1e}")


# ---------------------------------------------------------------- slow and silent


@case(fault="a slow endpoint: every byte both ways throttled to 256 KiB/s during a registration of 600 KiB of weights "
            "(read timeout 20 s, the default)",
      promise="the registration completes (slowly) and the stored files verify against their checksums")
def test_a_slow_endpoint_still_completes(proxy, tmp_path, monkeypatch):
    # The read timeout counts from the last byte sent, which the sender's socket buffers reach long before the
    # server: a throttled upload needs a read timeout above (buffered bytes / rate); the default 20 s is.
    monkeypatch.setenv(storage.READ_TIMEOUT_VAR, "20")
    registry = ModelRegistry(open_store(f"s3://{_bucket()}/models"), "medical")
    proxy.set("slow", rate=256 * KIB)
    start = time.monotonic()
    registration = registry.register(_weights_model(tmp_path, "m1", 600 * KIB), results(WIN), {}, card, promote(None))
    seconds = time.monotonic() - start
    pulled = registry.pull(registration.version, tmp_path / "pulled")
    assert registry.versions() == [1] and registry.alias() == 1
    assert (pulled / "weights.bin").read_bytes() == (tmp_path / "m1" / "weights.bin").read_bytes()
    assert proxy.throttled_bytes > 600 * KIB
    observe(f"registered v{registration.version} and promoted in {seconds:.1f} s through the throttle "
            f"({proxy.throttled_bytes // KIB} KiB throttled); pull verified every checksum")


@case(fault="an endpoint slower than the read timeout: every answer held {id}",
      promise="within the timeout the call completes; beyond it, one error per the configured timeout and retries "
              "(not the client's 300 s x 6) naming the input and MEDEMBED_S3_READ_TIMEOUT")
@pytest.mark.parametrize("delay", [0.3, 3.0], ids=["0.3 s (timeout 1 s)", "3 s (timeout 1 s)"])
def test_answers_slower_than_the_read_timeout(proxy, tmp_path, delay):
    bucket = _bucket()
    store = open_store(f"s3://{bucket}")
    store.put_bytes("pairs.jsonl", write_jsonl(tmp_path / "pairs.jsonl", make_rows()).read_bytes())
    proxy.set("latency", delay=delay)
    start = time.monotonic()
    if delay < 1:
        stats = _prep(f"s3://{bucket}/pairs.jsonl", tmp_path / "out")
        assert stats.rows_kept == len(make_rows())
        observe(f"prep read s3://{bucket}/pairs.jsonl through a {delay} s delay per answer in {time.monotonic() - start:.1f} s: "
                f"{stats.rows_kept} pairs kept")
        return
    with pytest.raises(DataError, match="sent no answer within 1 s") as error:
        _prep(f"s3://{bucket}/pairs.jsonl", tmp_path / "out")
    waited = time.monotonic() - start
    assert str(error.value).startswith(f"data input s3://{bucket}/pairs.jsonl: cannot look up s3://{bucket}/pairs.jsonl at "
                                       f"{proxy.endpoint}: the endpoint accepted the connection but sent no answer within 1 s "
                                       "(2 attempts)")
    assert "raise MEDEMBED_S3_READ_TIMEOUT" in str(error.value) and not (tmp_path / "out").exists()
    assert waited < 60  # generous: proves a bound exists (2 attempts x 1 s), not how fast the machine is
    observe(f"gave up after {waited:.1f} s: {error.value}")


@case(fault="the endpoint goes silent mid-registration (after the version number is claimed, it accepts connections "
            "and never answers)",
      promise="one StorageError within the configured timeouts naming the key; the version is never listed; when the "
              "endpoint answers again the next registration works and takes the next number")
def test_an_endpoint_that_goes_silent_mid_registration(proxy, tmp_path, monkeypatch):
    registry = ModelRegistry(open_store(f"s3://{_bucket()}/models"), "medical")
    claim = registry.claim_version

    def claim_then_hang(owner=""):
        number = claim(owner)
        proxy.set("silent")
        return number

    monkeypatch.setattr(registry, "claim_version", claim_then_hang)
    start = time.monotonic()
    with pytest.raises(StorageError, match=r"cannot upload s3://.*/models/medical/v0001/model/\S+ at .*: the endpoint accepted "
                                           r"the connection but sent no answer within 1 s \(2 attempts\)") as error:
        registry.register(fake_model(tmp_path, "m1"), results(WIN), {}, card, promote(None))
    waited = time.monotonic() - start
    assert waited < 60  # generous: the cleanup's calls time out too, each bounded
    proxy.set("pass")
    monkeypatch.undo()
    assert registry.versions() == [] and registry.alias() is None
    second = registry.register(fake_model(tmp_path, "m2"), results(WIN), {}, card, promote(None))
    assert second.version == 2 and registry.versions() == [2]
    observe(f"failed after {waited:.1f} s: {error.value}")
    observe(f"versions listed afterwards: {registry.versions()} (v1 invisible), champion v{registry.alias()}")


# ---------------------------------------------------------------- a full object store (simulated server)


class _FullMinio(http.server.BaseHTTPRequestHandler):
    """Answers as MinIO does on a full drive: reads of a bucket work, every write is 507 XMinioStorageFull."""

    def _answer(self, status: int, body: bytes = b""):
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        if body:
            self.send_header("Content-Type", "application/xml")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self):
        self._answer(200)

    def do_GET(self):
        self._answer(200, b'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult><Name>models</Name>'
                          b"<IsTruncated>false</IsTruncated></ListBucketResult>")

    def do_PUT(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self._answer(507, b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>XMinioStorageFull</Code><Message>Storage '
                          b"backend has reached its minimum free drive threshold. Please delete a few objects to proceed."
                          b"</Message><Resource>/models</Resource><RequestId>1</RequestId></Error>")

    do_POST = do_DELETE = do_PUT

    def log_message(self, *args):
        pass


@case(fault="the object store's own disk is full (a server answering as MinIO does: 507 XMinioStorageFull)",
      promise="one StorageError naming the key and saying the object store is out of disk space and what to free")
def test_a_full_object_store_is_named(monkeypatch, tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FullMinio)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    for name, value in {"MINIO_ENDPOINT": endpoint, "MINIO_ACCESS_KEY": "k", "MINIO_SECRET_KEY": "s", "MINIO_SECURE": "false",
                        "MINIO_REGION": "us-east-1", storage.RETRIES_VAR: "0"}.items():
        monkeypatch.setenv(name, value)
    try:
        registry = ModelRegistry(open_store("s3://models/reg"), "medical")
        with pytest.raises(StorageError, match="XMinioStorageFull") as error:
            registry.register(fake_model(tmp_path, "m1"), results(WIN), {}, card, refuse())
    finally:
        server.shutdown()
        server.server_close()
    assert str(error.value) == (f"cannot write s3://models/reg/medical/v0001/CLAIM at {endpoint}: the object store is out of "
                                "disk space (XMinioStorageFull); free space on its volumes (delete old checkpoints or "
                                "versions, or grow the volume), then retry")
    observe(str(error.value))
