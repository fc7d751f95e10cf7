"""What `data.data_uri` points to right now, as an identity: every input file with its size and a
content hash (SHA-256 for local files, the ETag for objects in S3/MinIO).

The pipeline computes it in a task that is never cached and hands it to data prep, so KFP's cache
can replay prep only on the same bytes: a scheduled run on a replaced or added file prepares again.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..artifacts import file_sha256
from .ingest import BUNDLED_DATA, DataError, parse_inputs


def _local_files(path: Path) -> list[dict]:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        return [{"name": p.relative_to(path).as_posix(), "size": p.stat().st_size, "sha256": file_sha256(p)} for p in files]
    return [{"name": path.name, "size": path.stat().st_size, "sha256": file_sha256(path)}]


def _s3_objects(uri: str) -> list[dict]:
    from ..storage import ObjectStore

    store, key = ObjectStore.from_uri(uri)
    objects = store.objects(key if key.endswith("/") else key)
    exact = [o for o in objects if o["name"] == key]
    chosen = exact or [o for o in objects if key.endswith("/") or o["name"].startswith(key.rstrip("/") + "/")]
    if not chosen:
        raise DataError(f"input not found: {uri} (no object and no objects under that prefix)")
    return chosen


def data_snapshot(data_uri: str) -> dict:
    """{"digest": one SHA-256 over everything below, "inputs": [{"tag", "uri", "files": [...]}]}."""
    inputs = []
    for source in parse_inputs(data_uri):
        if source.uri in BUNDLED_DATA:
            files = _local_files(BUNDLED_DATA[source.uri])
        elif source.uri.startswith("bundled:"):
            raise DataError(f"unknown bundled dataset {source.uri!r}; known: {sorted(BUNDLED_DATA)}")
        elif source.uri.startswith("s3://"):
            files = _s3_objects(source.uri)
        else:
            path = Path(source.uri).expanduser()
            if not path.exists():
                raise DataError(f"input file not found: {path}")
            files = _local_files(path)
        inputs.append({"tag": source.tag, "uri": source.uri, "files": files})
    digest = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()
    return {"digest": digest, "inputs": inputs}


def snapshot_markdown(snapshot: dict) -> str:
    lines = [f"Data identity `{snapshot['digest'][:16]}`", "", "| input | file | size | content hash |", "| --- | --- | ---: | --- |"]
    for source in snapshot["inputs"]:
        for item in source["files"][:200]:
            content = item.get("sha256") or item.get("etag", "")
            lines.append(f"| {source['tag']} | {item['name']} | {item['size']} | `{content[:16]}` |")
        if len(source["files"]) > 200:
            lines.append(f"| {source['tag']} | … {len(source['files']) - 200} more | | |")
    return "\n".join(lines) + "\n"
