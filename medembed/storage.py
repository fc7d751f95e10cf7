"""Object storage behind one small interface: a local folder or an S3 bucket (MinIO) via `minio`.

The registry and data ingestion speak to `Store`; which backend is used follows from the URI
(`s3://bucket/prefix` or a filesystem path). MinIO credentials come from the environment, which
on the cluster is filled from a Kubernetes Secret, never from literals.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

ENDPOINT_VARS = ("MINIO_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
ACCESS_KEY_VARS = ("MINIO_ACCESS_KEY", "AWS_ACCESS_KEY_ID")
SECRET_KEY_VARS = ("MINIO_SECRET_KEY", "AWS_SECRET_ACCESS_KEY")


class StorageError(RuntimeError):
    pass


class Store(Protocol):
    """Keys are '/'-separated paths relative to the store's root."""

    def put_bytes(self, key: str, data: bytes) -> None: ...
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
        tmp.write_bytes(data)
        os.replace(tmp, path)

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
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(local_dir, target)
        return sum(1 for p in target.rglob("*") if p.is_file())

    def download_dir(self, prefix: str, local_dir: Path) -> int:
        shutil.copytree(self._path(prefix), local_dir, dirs_exist_ok=True)
        return sum(1 for p in Path(local_dir).rglob("*") if p.is_file())

    def delete_prefix(self, prefix: str) -> None:
        shutil.rmtree(self._path(prefix), ignore_errors=True)

    def uri(self, key: str) -> str:
        return str(self._path(key))


class ObjectStore:
    """S3/MinIO through the `minio` client, rooted at bucket/prefix."""

    def __init__(self, client, bucket: str, prefix: str = "", endpoint: str = ""):
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint = endpoint

    @classmethod
    def from_uri(cls, uri: str) -> tuple["ObjectStore", str]:
        """`s3://bucket/some/key` -> (store rooted at the bucket, 'some/key')."""
        parsed = urlparse(uri)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise StorageError(f"not an s3:// URI: {uri!r}")
        return cls(connect(), parsed.netloc, "", _env(ENDPOINT_VARS) or ""), parsed.path.lstrip("/")

    @classmethod
    def for_prefix(cls, uri: str) -> "ObjectStore":
        store, key = cls.from_uri(uri)
        store.prefix = key.strip("/")
        return store

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def ensure_bucket(self) -> None:
        if not self.client.bucket_exists(self.bucket):
            self.client.make_bucket(self.bucket)

    def put_bytes(self, key: str, data: bytes) -> None:
        self.client.put_object(self.bucket, self._key(key), io.BytesIO(data), len(data))

    def get_bytes(self, key: str) -> bytes:
        from minio.error import S3Error

        try:
            response = self.client.get_object(self.bucket, self._key(key))
        except S3Error as exc:
            raise StorageError(f"cannot read s3://{self.bucket}/{self._key(key)}: {exc.code}") from None
        try:
            return response.read()
        finally:
            response.close()
            response.release_conn()

    def exists(self, key: str) -> bool:
        from minio.error import S3Error

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
        return sorted(o.object_name[strip:] for o in self.client.list_objects(self.bucket, prefix=full, recursive=True))

    def download_file(self, key: str, target: Path) -> Path:
        from minio.error import S3Error

        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.client.fget_object(self.bucket, self._key(key), str(target))
        except S3Error as exc:
            raise StorageError(f"cannot download s3://{self.bucket}/{self._key(key)}: {exc.code}") from None
        return target

    def upload_dir(self, local_dir: Path, prefix: str) -> int:
        count = 0
        for path in sorted(Path(local_dir).rglob("*")):
            if path.is_file():
                rel = path.relative_to(local_dir).as_posix()
                self.client.fput_object(self.bucket, self._key(f"{prefix}/{rel}"), str(path))
                count += 1
        return count

    def download_dir(self, prefix: str, local_dir: Path) -> int:
        keys = self.list(prefix.rstrip("/") + "/")
        for key in keys:
            self.download_file(key, Path(local_dir) / key[len(prefix.rstrip("/")) + 1 :])
        return len(keys)

    def delete_prefix(self, prefix: str) -> None:
        from minio.deleteobjects import DeleteObject

        keys = [DeleteObject(self._key(k)) for k in self.list(prefix)]
        for error in self.client.remove_objects(self.bucket, keys):
            raise StorageError(f"cannot delete {error.name}: {error.code}")

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"


def connect():
    """A `minio.Minio` client from MINIO_ENDPOINT / MINIO_ACCESS_KEY / MINIO_SECRET_KEY (or AWS_*)."""
    from minio import Minio

    endpoint = _env(ENDPOINT_VARS)
    if not endpoint:
        raise StorageError(f"an s3:// URI needs an endpoint: set one of {', '.join(ENDPOINT_VARS)}")
    parsed = urlparse(endpoint if "://" in endpoint else f"//{endpoint}")
    secure_default = parsed.scheme == "https"
    secure = os.environ.get("MINIO_SECURE", str(secure_default)).lower() in ("1", "true", "yes")
    return Minio(
        parsed.netloc,
        access_key=_env(ACCESS_KEY_VARS),
        secret_key=_env(SECRET_KEY_VARS),
        secure=secure,
        region=os.environ.get("MINIO_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None,
    )


def read_json(store: Store, key: str) -> dict:
    return json.loads(store.get_bytes(key))


def write_json(store: Store, key: str, value: dict) -> None:
    store.put_bytes(key, json.dumps(value, indent=2, sort_keys=True).encode())
