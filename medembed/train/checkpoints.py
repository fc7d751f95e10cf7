"""Training checkpoints in the object store, so a pre-empted task (KFP retry) resumes where it stopped.

Layout under the checkpoint URI (a local folder or s3://bucket/prefix, see `storage.open_store`):

    checkpoint-00000120/<files the trainer saved>
    checkpoint-00000120/COMPLETE      <- written last: {"step": 120, "files": {name: {size, sha256}}}

A checkpoint without its marker (the pod died during the upload) or whose files do not match the
marker's manifest (truncated, overwritten, bit rot) is skipped, and the next older one is tried.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from pathlib import Path

from ..storage import Store, StorageError, open_store

log = logging.getLogger(__name__)

MARKER = "COMPLETE"
_NAME = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_name(step: int) -> str:
    # Zero-padded so names sort by step and no step's prefix is another's.
    return f"checkpoint-{step:08d}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def manifest(local_dir: Path) -> dict[str, dict]:
    local_dir = Path(local_dir)
    return {
        p.relative_to(local_dir).as_posix(): {"size": p.stat().st_size, "sha256": _sha256(p)}
        for p in sorted(local_dir.rglob("*"))
        if p.is_file()
    }


class CheckpointStore:
    def __init__(self, uri: str, keep: int = 2):
        self.uri = uri
        self.store: Store = open_store(uri)
        self.keep = max(1, keep)

    def steps(self) -> list[int]:
        """Steps of checkpoints that have a completion marker, newest first."""
        found = set()
        for key in self.store.list(""):
            parts = key.split("/")
            if len(parts) == 2 and parts[1] == MARKER and _NAME.match(parts[0]):
                found.add(int(_NAME.match(parts[0]).group(1)))
        return sorted(found, reverse=True)

    def upload(self, local_dir: Path, step: int, protect: tuple[int, ...] = ()) -> str:
        """Upload one checkpoint folder, then its marker; prune old ones (never those in `protect`)."""
        name = checkpoint_name(step)
        files = manifest(local_dir)
        self.store.delete_prefix(name + "/")
        self.store.upload_dir(Path(local_dir), name)
        self.store.put_bytes(f"{name}/{MARKER}", json.dumps({"step": step, "files": files}).encode())
        log.info("checkpoint %s uploaded (%d files) to %s", name, len(files), self.uri)
        for old in self.steps()[self.keep :]:
            if old not in protect and old != step:
                self.store.delete_prefix(checkpoint_name(old) + "/")
        return name

    def download(self, step: int, local_dir: Path) -> bool:
        """Fetch one checkpoint and verify it against its marker; False (and nothing left) if it is bad."""
        name = checkpoint_name(step)
        local_dir = Path(local_dir)
        shutil.rmtree(local_dir, ignore_errors=True)
        try:
            expected = json.loads(self.store.get_bytes(f"{name}/{MARKER}"))["files"]
            self.store.download_dir(name, local_dir)
        except (StorageError, ValueError, KeyError, OSError) as exc:
            log.warning("checkpoint %s unreadable (%s): skipped", name, exc)
            shutil.rmtree(local_dir, ignore_errors=True)
            return False
        (local_dir / MARKER).unlink(missing_ok=True)
        actual = manifest(local_dir)
        if actual != expected:
            bad = sorted(k for k in set(actual) | set(expected) if actual.get(k) != expected.get(k))
            log.warning("checkpoint %s does not match its manifest (%s): skipped", name, ", ".join(bad[:5]))
            shutil.rmtree(local_dir, ignore_errors=True)
            return False
        return True

    def restore_latest(self, local_parent: Path) -> Path | None:
        """Download the newest intact checkpoint into `local_parent/checkpoint-N`; None if there is none."""
        for step in self.steps():
            # The trainer's own naming (unpadded), so its rotation and best-model bookkeeping apply.
            target = Path(local_parent) / f"checkpoint-{step}"
            if self.download(step, target):
                log.info("resuming from %s/%s", self.uri, checkpoint_name(step))
                self._restore_best(target, Path(local_parent))
                return target
        return None

    def _restore_best(self, latest: Path, local_parent: Path) -> None:
        """The trainer state names the best checkpoint by its old local path: point it at this run's
        folder and fetch it, so load-best-at-end still works after a restart."""
        state_file = latest / "trainer_state.json"
        if not state_file.exists():
            return
        state = json.loads(state_file.read_text())
        best = state.get("best_model_checkpoint")
        match = re.search(r"checkpoint-(\d+)$", (best or "").rstrip("/"))
        if not match:
            return
        best_step = int(match.group(1))
        best_dir = local_parent / f"checkpoint-{best_step}"
        if best_dir != latest and not self.download(best_step, best_dir):
            log.warning("best checkpoint %d is gone: the best model falls back to the latest", best_step)
            state["best_model_checkpoint"] = None
        else:
            state["best_model_checkpoint"] = str(best_dir)
        state_file.write_text(json.dumps(state, indent=2))


def make_callback(checkpoints: CheckpointStore):
    """A TrainerCallback that mirrors every checkpoint the trainer saves locally into the store."""
    from transformers import TrainerCallback

    class UploadCheckpoints(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if not state.is_world_process_zero:
                return
            local = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if not local.is_dir():
                return
            protect = ()
            if state.best_model_checkpoint:
                match = re.search(r"checkpoint-(\d+)$", state.best_model_checkpoint.rstrip("/"))
                protect = (int(match.group(1)),) if match else ()
            checkpoints.upload(local, state.global_step, protect)

    return UploadCheckpoints()
