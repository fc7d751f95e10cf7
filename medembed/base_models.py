"""Base models served from MinIO, so no pipeline task needs a model hub (hospital clusters rarely
have internet egress).

`import_base(source, uri)` mirrors a model (a hub name, fetched once from a machine with hub access,
a local folder, or a bundled model) into an s3:// folder with a manifest of every file's size and
SHA-256, written last. A task that uses `train.base_model = s3://...` gets a local copy through
`fetch_base`: downloaded once into the model cache (MEDEMBED_MODEL_CACHE; on the cluster a shared
volume), verified against the manifest, and moved into place only when complete, so concurrent
tasks never see half a model and the next task on that cache reuses it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from .artifacts import folder_checksums
from .registry import RegistryError
from .storage import StorageError, open_store

log = logging.getLogger(__name__)

MANIFEST = "medembed-base-model.json"
CACHE_ENV = "MEDEMBED_MODEL_CACHE"


class BaseModelError(RegistryError):
    """A base model that cannot be imported or fetched; the message names the URI and the way out."""


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "medembed" / "models")


def _digest(files: dict[str, dict]) -> str:
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def read_manifest(uri: str) -> dict:
    store = open_store(uri, create=False)
    try:
        return json.loads(store.get_bytes(MANIFEST))
    except StorageError:
        raise BaseModelError(f"{uri.rstrip('/')}/{MANIFEST}: not found: {uri} is not an imported base model "
                             f"(import one with `medembed models import-base NAME_OR_DIR {uri}`)") from None
    except ValueError:
        raise BaseModelError(f"{uri.rstrip('/')}/{MANIFEST}: not valid JSON; import the model again") from None


def import_base(source: str, uri: str, folder: Path | None = None) -> dict:
    """Mirror a model into `uri` (s3://bucket/prefix or a folder); returns the manifest. `folder` is
    its local files (a bundled or saved model); without it `source` is a hub name fetched now.
    Importing the same files again is a no-op; different files at an imported URI are refused."""
    with tempfile.TemporaryDirectory() as work:
        local = Path(folder) if folder is not None else None
        if local is None:
            # A hub name: sentence-transformers fetches it (this machine needs hub access) and saves a plain folder.
            from sentence_transformers import SentenceTransformer

            local = Path(work) / "model"
            SentenceTransformer(source, device="cpu").save(str(local))
        files = folder_checksums(local)
        manifest = {"source": source, "files": files, "digest": _digest(files),
                    "imported": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
        store = open_store(uri)
        if store.exists(MANIFEST):
            existing = read_manifest(uri)
            if existing.get("digest") == manifest["digest"]:
                log.info("%s already holds these files (%s); nothing to do", uri, manifest["digest"][:12])
                return existing
            raise BaseModelError(f"{uri} already holds another model ({existing.get('source')}, imported "
                                 f"{existing.get('imported')}); import to a new URI (base models are immutable)")
        store.upload_dir(local, "")
        store.put_bytes(MANIFEST, json.dumps(manifest, indent=2, sort_keys=True).encode())
    log.info("imported %s into %s (%d files)", source, uri, len(files))
    return manifest


def fetch_base(uri: str, root: Path | None = None) -> Path:
    """A verified local copy of the base model at `uri`, downloaded once into the model cache."""
    manifest = read_manifest(uri)
    root = Path(root or cache_root())
    target = root / hashlib.sha256(uri.rstrip("/").encode()).hexdigest()[:16] / manifest["digest"][:16]
    if (target / MANIFEST).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".incoming-", dir=target.parent))
    try:
        log.info("downloading base model %s into %s", uri, target)
        open_store(uri, create=False).download_dir("", staging)
        (staging / MANIFEST).unlink(missing_ok=True)
        actual = folder_checksums(staging)
        if actual != manifest["files"]:
            bad = sorted(k for k in set(actual) | set(manifest["files"]) if actual.get(k) != manifest["files"].get(k))
            raise BaseModelError(f"{uri}: downloaded files do not match its manifest ({', '.join(bad[:5])}); "
                                 "the stored copy is damaged: import the model again")
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        try:
            staging.rename(target)
        except OSError:
            if not (target / MANIFEST).is_file():  # another task won the race with the same verified files
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def identity(uri: str) -> str:
    """The imported model's identity: its URI and the digest of its files (read from the manifest)."""
    return f"{uri.rstrip('/')}@sha256:{read_manifest(uri)['digest']}"
