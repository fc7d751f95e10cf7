"""Object storage behind one small interface: a local folder or an S3 bucket (MinIO) via `minio`.

The registry and data ingestion speak to `Store`; which backend is used follows from the URI
(`s3://bucket/prefix` or a filesystem path). MinIO credentials come from the environment, which
on the cluster is filled from a Kubernetes Secret, never from literals.

Every S3 call is bounded: connect and read timeouts and a few retries with exponential backoff
(MEDEMBED_S3_CONNECT_TIMEOUT, MEDEMBED_S3_READ_TIMEOUT, MEDEMBED_S3_RETRIES, MEDEMBED_S3_BACKOFF; the
minio client's own defaults are 300 s timeouts and 5 retries, minutes of silence on a dead endpoint).
A failure ends in one StorageError naming the endpoint, bucket and key and what to do.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

ENDPOINT_VARS = ("MINIO_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
ACCESS_KEY_VARS = ("MINIO_ACCESS_KEY", "AWS_ACCESS_KEY_ID")
SECRET_KEY_VARS = ("MINIO_SECRET_KEY", "AWS_SECRET_ACCESS_KEY")
CONNECT_TIMEOUT_VAR = "MEDEMBED_S3_CONNECT_TIMEOUT"
READ_TIMEOUT_VAR = "MEDEMBED_S3_READ_TIMEOUT"
RETRIES_VAR = "MEDEMBED_S3_RETRIES"
BACKOFF_VAR = "MEDEMBED_S3_BACKOFF"
# Seconds / count. A silent endpoint is given up after (1 + retries) x read timeout plus the backoff
# (about a minute); a refused connection after the backoff alone (seconds).
DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_READ_TIMEOUT = 20.0
DEFAULT_RETRIES = 2
DEFAULT_BACKOFF = 0.5
MAX_BACKOFF = 10.0
RETRY_STATUSES = (500, 502, 503, 504)


class StorageError(RuntimeError):
    pass


@dataclass(frozen=True)
class S3Settings:
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    read_timeout: float = DEFAULT_READ_TIMEOUT
    retries: int = DEFAULT_RETRIES
    backoff: float = DEFAULT_BACKOFF

    @property
    def attempts(self) -> int:
        return self.retries + 1


def _number(name: str, default: float, integer: bool = False) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        raise StorageError(f"{name}={raw!r} is not {'a whole number' if integer else 'a number of seconds'}; "
                           f"unset it for the default ({default:g})") from None
    if value < 0 or (not integer and value == 0 and name != BACKOFF_VAR):
        raise StorageError(f"{name}={raw!r} must be {'0 or more' if integer or name == BACKOFF_VAR else 'more than 0'}; "
                           f"unset it for the default ({default:g})")
    return value


def s3_settings() -> S3Settings:
    """Timeouts and retries from the environment (defaults: seconds, not the minio client's minutes)."""
    return S3Settings(
        connect_timeout=_number(CONNECT_TIMEOUT_VAR, DEFAULT_CONNECT_TIMEOUT),
        read_timeout=_number(READ_TIMEOUT_VAR, DEFAULT_READ_TIMEOUT),
        retries=int(_number(RETRIES_VAR, DEFAULT_RETRIES, integer=True)),
        backoff=_number(BACKOFF_VAR, DEFAULT_BACKOFF),
    )


class Store(Protocol):
    """Keys are '/'-separated paths relative to the store's root."""

    def put_bytes(self, key: str, data: bytes) -> None: ...
    def put_if_absent(self, key: str, data: bytes) -> bool: ...
    def get_bytes(self, key: str) -> bytes: ...
    def exists(self, key: str) -> bool: ...
    def list(self, prefix: str) -> list[str]: ...
    def upload_dir(self, local_dir: Path, prefix: str) -> int: ...
    def download_dir(self, prefix: str, local_dir: Path) -> int: ...
    def delete_prefix(self, prefix: str) -> None: ...
    def uri(self, key: str) -> str: ...


def _env(names: tuple[str, ...]) -> str | None:
    return next((os.environ[n] for n in names if os.environ.get(n)), None)


def open_store(uri: str, create: bool = True) -> Store:
    """A store rooted at `uri`; `create` makes the bucket when it does not exist yet."""
    if uri.startswith("s3://"):
        store = ObjectStore.for_prefix(uri)
        if create:
            store.ensure_bucket()
        return store
    return LocalStore(Path(uri))


class LocalStore:
    def __init__(self, root: Path):
        self.root = Path(root).expanduser().resolve()

    def _path(self, key: str) -> Path:
        return self.root / key

    def put_bytes(self, key: str, data: bytes) -> None:
        # Write then rename: a reader never sees a half-written file.
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)  # a write that failed (a full disk) leaves no temporary file

    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Create `key` with `data` unless it exists; False if it did. Atomic: a hard link of a fully
        written file either creates the name or fails because it exists."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        try:
            tmp.write_bytes(data)
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise StorageError(f"not found: {self._path(key)}") from None

    def exists(self, key: str) -> bool:
        return self._path(key).exists()

    def list(self, prefix: str) -> list[str]:
        base = self._path(prefix)
        if not base.exists():
            return []
        return sorted(str(p.relative_to(self.root)) for p in base.rglob("*") if p.is_file())

    def upload_dir(self, local_dir: Path, prefix: str) -> int:
        target = self._path(prefix)
        if prefix.strip("/") and target.exists():  # replace the prefix's files; never the whole store
            shutil.rmtree(target)
        shutil.copytree(local_dir, target, dirs_exist_ok=True)
        return sum(1 for p in target.rglob("*") if p.is_file())

    def download_dir(self, prefix: str, local_dir: Path) -> int:
        shutil.copytree(self._path(prefix), local_dir, dirs_exist_ok=True)
        return sum(1 for p in Path(local_dir).rglob("*") if p.is_file())

    def delete_prefix(self, prefix: str) -> None:
        path = self._path(prefix)
        if path.is_file():  # a key, as on S3, where a prefix may name one object
            path.unlink(missing_ok=True)
        shutil.rmtree(path, ignore_errors=True)

    def uri(self, key: str) -> str:
        return str(self._path(key))


class ObjectStore:
    """S3/MinIO through the `minio` client, rooted at bucket/prefix."""

    def __init__(self, client, bucket: str, prefix: str = "", endpoint: str = "", settings: S3Settings | None = None):
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint = endpoint
        self.settings = settings or S3Settings()

    @classmethod
    def from_uri(cls, uri: str) -> tuple["ObjectStore", str]:
        """`s3://bucket/some/key` -> (store rooted at the bucket, 'some/key')."""
        parsed = urlparse(uri)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise StorageError(f"not an s3:// URI: {uri!r}")
        settings = s3_settings()
        return cls(connect(settings), parsed.netloc, "", _env(ENDPOINT_VARS) or "", settings), parsed.path.lstrip("/")

    @classmethod
    def for_prefix(cls, uri: str) -> "ObjectStore":
        store, key = cls.from_uri(uri)
        store.prefix = key.strip("/")
        return store

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    @contextlib.contextmanager
    def _calls(self, action: str, key: str | None = None):
        """Translate the client's and urllib3's exceptions into one StorageError naming the endpoint,
        bucket and key and what to do."""
        try:
            yield
        except StorageError:
            raise
        except Exception as exc:  # noqa: BLE001 - classified below, re-raised unchanged when unknown
            message = describe_failure(exc, self, action, key)
            if message is None:
                raise
            raise StorageError(message) from None

    def ensure_bucket(self) -> None:
        with self._calls("check or create"):
            if not self.client.bucket_exists(self.bucket):
                self.client.make_bucket(self.bucket)

    def put_bytes(self, key: str, data: bytes) -> None:
        with self._calls("write", key):
            self.client.put_object(self.bucket, self._key(key), io.BytesIO(data), len(data))

    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Create `key` unless it exists (S3 conditional write `If-None-Match: *`, supported by MinIO and
        AWS); False if it did. minio-py's put_object turns unknown headers into user metadata, so the
        header goes through the client's plain PutObject call."""
        from minio.error import S3Error

        with self._calls("write", key):
            try:
                self.client._put_object(self.bucket, self._key(key), data,
                                        headers={"If-None-Match": "*", "Content-Type": "application/json"})
                return True
            except S3Error as exc:
                # 412: the object exists; 409: a concurrent conditional write to the same key is in flight.
                if exc.code in ("PreconditionFailed", "ConditionalRequestConflict"):
                    return False
                raise

    def get_bytes(self, key: str) -> bytes:
        with self._calls("read", key):
            response = self.client.get_object(self.bucket, self._key(key))
            try:
                return response.read()
            finally:
                response.close()
                response.release_conn()

    def exists(self, key: str) -> bool:
        from minio.error import S3Error

        with self._calls("look up", key):
            try:
                self.client.stat_object(self.bucket, self._key(key))
                return True
            except S3Error as exc:
                if exc.code in ("NoSuchKey", "NoSuchBucket", "NoSuchObject"):
                    return False
                raise

    def list(self, prefix: str) -> list[str]:
        full = self._key(prefix)
        strip = len(self.prefix) + 1 if self.prefix else 0
        with self._calls("list", prefix):
            return sorted(o.object_name[strip:] for o in self.client.list_objects(self.bucket, prefix=full, recursive=True))

    def objects(self, prefix: str) -> list[dict]:
        """[{"name", "size", "etag"}] of the objects whose key starts with `prefix`."""
        full = self._key(prefix)
        strip = len(self.prefix) + 1 if self.prefix else 0
        with self._calls("list", prefix):
            return [{"name": o.object_name[strip:], "size": o.size, "etag": (o.etag or "").strip('"')}
                    for o in self.client.list_objects(self.bucket, prefix=full, recursive=True)]

    def download_file(self, key: str, target: Path) -> Path:
        target.parent.mkdir(parents=True, exist_ok=True)
        with self._calls("download", key):
            self.client.fget_object(self.bucket, self._key(key), str(target))
        return target

    def upload_dir(self, local_dir: Path, prefix: str) -> int:
        count = 0
        base = prefix.strip("/")
        for path in sorted(Path(local_dir).rglob("*")):
            if path.is_file():
                key = f"{base}/{path.relative_to(local_dir).as_posix()}" if base else path.relative_to(local_dir).as_posix()
                with self._calls("upload", key):
                    self.client.fput_object(self.bucket, self._key(key), str(path))
                count += 1
        return count

    def download_dir(self, prefix: str, local_dir: Path) -> int:
        base = prefix.strip("/")
        keys = self.list(f"{base}/" if base else "")
        for key in keys:
            self.download_file(key, Path(local_dir) / (key[len(base) + 1 :] if base else key))
        return len(keys)

    def delete_prefix(self, prefix: str) -> None:
        from minio.deleteobjects import DeleteObject

        keys = [DeleteObject(self._key(k)) for k in self.list(prefix)]
        with self._calls("delete", prefix):
            for error in self.client.remove_objects(self.bucket, keys):
                raise StorageError(f"cannot delete s3://{self.bucket}/{error.name} at {self.endpoint}: {error.code}")

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"


def connect(settings: S3Settings | None = None):
    """A `minio.Minio` client from MINIO_ENDPOINT / MINIO_ACCESS_KEY / MINIO_SECRET_KEY (or AWS_*), whose
    HTTP pool has this module's timeouts and retries instead of the client's 300 s x 5."""
    import certifi
    import urllib3
    from minio import Minio

    settings = settings or s3_settings()
    endpoint = _env(ENDPOINT_VARS)
    if not endpoint:
        raise StorageError(f"an s3:// URI needs an endpoint: set one of {', '.join(ENDPOINT_VARS)}")
    parsed = urlparse(endpoint if "://" in endpoint else f"//{endpoint}")
    secure_default = parsed.scheme == "https"
    secure = os.environ.get("MINIO_SECURE", str(secure_default)).lower() in ("1", "true", "yes")
    retry = urllib3.Retry(
        total=settings.retries, connect=settings.retries, read=settings.retries, status=settings.retries,
        backoff_factor=settings.backoff, backoff_max=MAX_BACKOFF, status_forcelist=RETRY_STATUSES,
    )
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=settings.connect_timeout, read=settings.read_timeout),
        retries=retry, maxsize=10, cert_reqs="CERT_REQUIRED", ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
    )
    return Minio(
        parsed.netloc,
        access_key=_env(ACCESS_KEY_VARS),
        secret_key=_env(SECRET_KEY_VARS),
        secure=secure,
        region=os.environ.get("MINIO_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None,
        http_client=http,
    )


def describe_failure(exc: BaseException, store: "ObjectStore", action: str, key: str | None) -> str | None:
    """One sentence for a failed S3 call: what failed, where, and what to do; None when `exc` is not a
    storage failure (a bug to surface unchanged)."""
    import urllib3.exceptions as ux
    from minio.error import InvalidResponseError, S3Error, ServerError

    endpoint = store.endpoint or "the S3 endpoint"
    target = f"s3://{store.bucket}/{store._key(key)}" if key is not None else f"bucket {store.bucket!r}"
    doing = f"cannot {action} {target} at {endpoint}"
    settings = store.settings
    attempts = f"{settings.attempts} attempt{'s' if settings.attempts > 1 else ''}"
    if isinstance(exc, S3Error):
        code = exc.code or "unknown"
        if code == "NoSuchBucket":
            return (f"{doing}: bucket {store.bucket!r} does not exist there; create it (e.g. `mc mb ALIAS/{store.bucket}`, "
                    f"or the manifests' bucket job) or fix the bucket in the URI")
        if code in ("NoSuchKey", "NoSuchObject"):
            return f"{doing}: no such object; check the key (a prefix must end with '/') and that the upload finished"
        if code in ("XMinioStorageFull", "StorageFull", "InsufficientStorage"):
            return (f"{doing}: the object store is out of disk space ({code}); free space on its volumes (delete old "
                    f"checkpoints or versions, or grow the volume), then retry")
        if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken"):
            return (f"{doing}: the server refused the credentials ({code}); check {ACCESS_KEY_VARS[0]} / "
                    f"{SECRET_KEY_VARS[0]} and the user's policy on bucket {store.bucket!r}")
        return f"{doing}: S3 error {code}; see the server's log for this request"
    reason = exc.reason if isinstance(exc, ux.MaxRetryError) else exc
    if isinstance(reason, (ux.ReadTimeoutError, TimeoutError)):
        return (f"{doing}: the endpoint accepted the connection but sent no answer within {settings.read_timeout:g} s "
                f"({attempts}); check that the server is healthy and that {ENDPOINT_VARS[0]} points at its S3 API, or raise "
                f"{READ_TIMEOUT_VAR} for a slow one")
    # NewConnectionError (refused, unknown host) subclasses ConnectTimeoutError: test it first.
    if isinstance(reason, (ux.NewConnectionError, ConnectionError)):
        return (f"{doing}: cannot connect ({attempts}, connection refused or host unknown); check {ENDPOINT_VARS[0]} "
                f"and that the server is running")
    if isinstance(reason, ux.ConnectTimeoutError):
        return (f"{doing}: no connection within {settings.connect_timeout:g} s ({attempts}); check the network path "
                f"and firewall to the endpoint, or raise {CONNECT_TIMEOUT_VAR}")
    if isinstance(reason, ux.ResponseError) or isinstance(exc, ServerError):
        return (f"{doing}: the server kept failing (HTTP 5xx after {attempts}); check its health and disk space, "
                f"then retry")
    if isinstance(reason, ux.SSLError):
        return f"{doing}: TLS failed ({type(reason).__name__}); check MINIO_SECURE and the certificate (SSL_CERT_FILE)"
    if isinstance(reason, (ux.ProtocolError, ux.HTTPError)):
        return (f"{doing}: the connection broke ({type(reason).__name__}, {attempts}); check the endpoint and any proxy "
                f"in between, then retry")
    if isinstance(exc, ValueError) and str(exc).startswith("invalid bucket name"):
        return (f"{doing}: {store.bucket!r} is not a valid bucket name (3-63 lower-case letters, digits, '.' or '-'); "
                f"fix the bucket in the URI")
    if isinstance(exc, InvalidResponseError):
        return (f"{doing}: the endpoint did not answer like an S3 server; check that {ENDPOINT_VARS[0]} points at the "
                f"S3 API port (MinIO: 9000), not a console or proxy page")
    return None


def read_json(store: Store, key: str) -> dict:
    return json.loads(store.get_bytes(key))


def write_json(store: Store, key: str, value: dict) -> None:
    store.put_bytes(key, json.dumps(value, indent=2, sort_keys=True).encode())
