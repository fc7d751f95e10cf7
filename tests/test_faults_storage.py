"""Object store faults (issue 13): a silent endpoint, a refused connection, a failing server, a missing
bucket or key each end in one StorageError naming the endpoint, bucket and key and what to do, within
the configured timeouts and retries (not the minio client's 300 s x 5)."""

from __future__ import annotations

import dataclasses
import http.server
import socket
import threading
import time

import pytest

from conftest import make_rows, write_jsonl
from faultkit import case, observe
from medembed import storage
from medembed.config import LOCAL
from medembed.prep import DataError, stage
from medembed.storage import StorageError, open_store

pytestmark = pytest.mark.faults


def _prepare(config, train_dir, eval_dir):
    return stage.prepare(config, train_dir, eval_dir, model=LOCAL.train.base_model, max_seq_length=LOCAL.train.max_seq_length)


class BlackHole:
    """A TCP server on 127.0.0.1 that accepts connections and never answers (a hung endpoint)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(32)
        self.sock.settimeout(0.05)  # accept() wakes up to notice close()
        self.port = self.sock.getsockname()[1]
        self.stopped = threading.Event()
        self.accepted: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted.append(conn)

    def close(self):
        self.stopped.set()
        self.thread.join(timeout=5)
        self.sock.close()
        for conn in self.accepted:
            conn.close()


class Failing(http.server.BaseHTTPRequestHandler):
    """An HTTP server that answers every request with 503 (an overloaded or broken endpoint)."""

    requests = 0

    def _fail(self):
        type(self).requests += 1
        self.send_response(503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_HEAD = do_PUT = _fail

    def log_message(self, *args):
        pass


@pytest.fixture
def black_hole():
    server = BlackHole()
    yield server
    server.close()


@pytest.fixture
def s3_env(monkeypatch):
    """Fast timeouts for the tests; the endpoint is set per test."""
    for name, value in {"MINIO_ACCESS_KEY": "test", "MINIO_SECRET_KEY": "test", "MINIO_SECURE": "false",
                        "MINIO_REGION": "us-east-1", storage.CONNECT_TIMEOUT_VAR: "1", storage.READ_TIMEOUT_VAR: "0.5",
                        storage.RETRIES_VAR: "1", storage.BACKOFF_VAR: "0"}.items():
        monkeypatch.setenv(name, value)
    return monkeypatch


@case(fault='the object-store timeouts and retries: defaults, overrides, bad values',
      promise='seconds, not minutes (5 s connect, 20 s read, 2 retries); a bad value is one message naming the variable')
def test_defaults_are_seconds_and_the_environment_overrides_them(monkeypatch):
    for name in (storage.CONNECT_TIMEOUT_VAR, storage.READ_TIMEOUT_VAR, storage.RETRIES_VAR, storage.BACKOFF_VAR):
        monkeypatch.delenv(name, raising=False)
    defaults = storage.s3_settings()
    assert defaults == storage.S3Settings(connect_timeout=5.0, read_timeout=20.0, retries=2, backoff=0.5)
    monkeypatch.setenv(storage.READ_TIMEOUT_VAR, "7.5")
    monkeypatch.setenv(storage.RETRIES_VAR, "0")
    assert storage.s3_settings().read_timeout == 7.5 and storage.s3_settings().attempts == 1
    monkeypatch.setenv(storage.RETRIES_VAR, "two")
    with pytest.raises(StorageError, match=r"MEDEMBED_S3_RETRIES='two' is not a whole number; unset it for the default \(2\)"):
        storage.s3_settings()
    monkeypatch.setenv(storage.RETRIES_VAR, "1")
    monkeypatch.setenv(storage.READ_TIMEOUT_VAR, "0")
    with pytest.raises(StorageError, match="MEDEMBED_S3_READ_TIMEOUT='0' must be more than 0") as error:
        storage.s3_settings()
    observe(f"defaults {defaults}; MEDEMBED_S3_READ_TIMEOUT=0: {error.value}")


@case(fault='an endpoint that accepts connections and never answers, on {id}',
      promise='one StorageError naming the endpoint, bucket/key and MEDEMBED_S3_READ_TIMEOUT after the configured attempts')
@pytest.mark.parametrize("call, action, target", [
    (lambda: open_store("s3://models/reg", create=False).get_bytes("aliases/champion.json"), "read", "s3://models/reg/aliases/champion.json"),
    (lambda: open_store("s3://models/reg"), "check or create", "bucket 'models'"),
    (lambda: open_store("s3://models/reg", create=False).list("v0001/"), "list", "s3://models/reg/v0001/"),
    (lambda: open_store("s3://models/reg", create=False).put_bytes("x.json", b"{}"), "write", "s3://models/reg/x.json"),
])
def test_a_silent_endpoint_ends_in_one_clear_error_within_the_timeout(s3_env, black_hole, call, action, target):
    endpoint = f"http://127.0.0.1:{black_hole.port}"
    s3_env.setenv("MINIO_ENDPOINT", endpoint)
    start = time.monotonic()
    with pytest.raises(StorageError, match="sent no answer within 0.5 s") as error:
        call()
    waited = time.monotonic() - start
    assert str(error.value) == (
        f"cannot {action} {target} at {endpoint}: the endpoint accepted the connection but sent no answer within 0.5 s "
        "(2 attempts); check that the server is healthy and that MINIO_ENDPOINT points at its S3 API, or raise "
        "MEDEMBED_S3_READ_TIMEOUT for a slow one")
    assert len(black_hole.accepted) == 2  # one try and one retry, each on a fresh connection
    # Bounded by the configured 2 x 0.5 s, not the client's default 6 x 300 s; generous for a loaded machine.
    assert waited < 30
    observe(f"after {waited:.1f} s and {len(black_hole.accepted)} connections: {error.value}")


@case(fault='data prep reading its input from a silent endpoint',
      promise='one DataError naming the input and the timeout; nothing written')
def test_prep_on_a_silent_endpoint_fails_with_the_input_named(s3_env, black_hole, tmp_path):
    s3_env.setenv("MINIO_ENDPOINT", f"http://127.0.0.1:{black_hole.port}")
    config = dataclasses.replace(LOCAL.data, data_uri="s3://medembed-data/pairs.jsonl", num_negatives=0)
    with pytest.raises(DataError, match="^data input s3://medembed-data/pairs.jsonl") as error:
        _prepare(config, tmp_path / "train", tmp_path / "eval")
    message = str(error.value)
    assert message.startswith("data input s3://medembed-data/pairs.jsonl: cannot look up s3://medembed-data/pairs.jsonl")
    assert "sent no answer within 0.5 s" in message and not (tmp_path / "train").exists()
    observe(message)


@case(fault='the endpoint refuses connections (nothing listening)',
      promise='one StorageError: cannot connect, check MINIO_ENDPOINT and the server')
def test_a_refused_connection_says_to_check_the_endpoint(s3_env):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    s3_env.setenv("MINIO_ENDPOINT", endpoint)
    with pytest.raises(StorageError, match="cannot connect") as error:
        open_store("s3://medembed-data/x", create=False).get_bytes("pairs.jsonl")
    assert str(error.value) == (f"cannot read s3://medembed-data/x/pairs.jsonl at {endpoint}: cannot connect (2 attempts, "
                                "connection refused or host unknown); check MINIO_ENDPOINT and that the server is running")
    observe(str(error.value))


@case(fault='a server answering every request with HTTP 503',
      promise='retried (2 attempts), then one StorageError saying to check its health and disk space')
def test_a_failing_server_is_retried_then_reported(s3_env):
    Failing.requests = 0
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Failing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        endpoint = f"http://127.0.0.1:{server.server_address[1]}"
        s3_env.setenv("MINIO_ENDPOINT", endpoint)
        with pytest.raises(StorageError, match="the server kept failing") as error:
            open_store("s3://bucket/p", create=False).get_bytes("k")
    finally:
        server.shutdown()
        server.server_close()
    assert str(error.value) == (f"cannot read s3://bucket/p/k at {endpoint}: the server kept failing (HTTP 5xx after 2 attempts); "
                                "check its health and disk space, then retry")
    assert Failing.requests == 2
    observe(f"{Failing.requests} requests; {error.value}")


@case(fault='a bucket that does not exist (registry read and prep input)',
      promise='one error naming the bucket and endpoint and how to create it (no S3Error resource: None)')
def test_a_missing_bucket_is_named_with_its_endpoint(s3_endpoint, tmp_path):
    endpoint = s3_endpoint["MINIO_ENDPOINT"]
    with pytest.raises(StorageError, match="bucket 'no-such-bucket' does not exist") as error:
        open_store("s3://no-such-bucket/reg", create=False).get_bytes("aliases/champion.json")
    assert str(error.value) == (
        f"cannot read s3://no-such-bucket/reg/aliases/champion.json at {endpoint}: bucket 'no-such-bucket' does not exist "
        "there; create it (e.g. `mc mb ALIAS/no-such-bucket`, or the manifests' bucket job) or fix the bucket in the URI")
    config = dataclasses.replace(LOCAL.data, data_uri="s3://no-such-bucket/pairs.jsonl", num_negatives=0)
    with pytest.raises(DataError, match=r"^data input s3://no-such-bucket/pairs.jsonl: .*bucket 'no-such-bucket' does not exist") as data_error:
        _prepare(config, tmp_path / "train", tmp_path / "eval")
    observe(str(data_error.value))


@case(fault="an s3:// URI with an invalid bucket name ('b')",
      promise='one StorageError explaining bucket names')
def test_an_invalid_bucket_name_is_explained(s3_endpoint):
    with pytest.raises(StorageError, match=r"'b' is not a valid bucket name .*; fix the bucket in the URI") as error:
        open_store("s3://b/reg", create=False).get_bytes("k")
    observe(str(error.value))


@case(fault='a key that does not exist',
      promise='one StorageError naming the key, with what to check')
def test_a_missing_key_is_named(s3_endpoint):
    store = open_store("s3://medembed-faults/reg")
    with pytest.raises(StorageError, match="no such object") as error:
        store.get_bytes("v0001/metrics.json")
    assert str(error.value) == (
        f"cannot read s3://medembed-faults/reg/v0001/metrics.json at {s3_endpoint['MINIO_ENDPOINT']}: no such object; "
        "check the key (a prefix must end with '/') and that the upload finished")
    observe(str(error.value))


@case(fault='(control) a healthy endpoint with the bounded client',
      promise='writes, reads and lists work')
def test_a_live_endpoint_still_round_trips_with_the_bounded_client(s3_endpoint, tmp_path):
    store = open_store("s3://medembed-faults/data")
    path = write_jsonl(tmp_path / "pairs.jsonl", make_rows())
    store.put_bytes("pairs.jsonl", path.read_bytes())
    assert store.get_bytes("pairs.jsonl") == path.read_bytes() and store.list("") == ["pairs.jsonl"]
    observe(f"round trip of {len(path.read_bytes()):,} bytes and a listing: ok")
