"""Training checkpoints in the object store, so a pre-empted task (KFP retry) resumes where it stopped.

Layout under the checkpoint URI (a local folder or s3://bucket/prefix, see `storage.open_store`):

    checkpoint-00000120/<files the trainer saved>
    checkpoint-00000120/COMPLETE      <- written last: {"step": 120, "files": {name: {size, sha256}},
                                                        "binding": {"data": sha256, "config": sha256}}

A checkpoint without its marker (the pod died during the upload) or whose files do not match the
marker's manifest (truncated, overwritten, bit rot) is skipped, and the next older one is tried.

A checkpoint is bound to its run: the marker records a fingerprint of the training data and of the
training configuration (`run_binding`). A run whose data or configuration differ never resumes from
it: it starts from step 0, logs why, and once it has saved its own first checkpoint it removes the
other run's checkpoints and any partial (marker-less) upload from the location.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

from ..artifacts import fingerprint, folder_checksums
from ..storage import Store, StorageError, open_store

log = logging.getLogger(__name__)

MARKER = "COMPLETE"
_NAME = re.compile(r"^checkpoint-(\d+)$")
DATA_FILES = ("train.jsonl", "dev.jsonl")


def data_fingerprint(train_dir: Path, files: tuple[str, ...] = DATA_FILES) -> str:
    """SHA-256 over the training and dev pairs (names and bytes) that a run trains and selects on."""
    return fingerprint([Path(train_dir) / name for name in files if (Path(train_dir) / name).exists()])


def run_binding(train_dir: Path, config, world_size: int = 1) -> dict[str, str]:
    """What a checkpoint must match to be resumed: {"data": ..., "config": ...}."""
    return {"data": data_fingerprint(train_dir), "config": config.signature(world_size)}


def binding_mismatch(recorded: dict | None, wanted: dict) -> str | None:
    """Why a checkpoint with binding `recorded` may not be resumed by a run with binding `wanted`."""
    if not recorded:
        return "it records no data or configuration fingerprint (written before checkpoints were bound to their run)"
    differ = [part for part in ("data", "config") if recorded.get(part) != wanted.get(part)]
    if not differ:
        return None
    names = {"data": "training data", "config": "training configuration"}
    return " and ".join(f"other {names[p]} ({str(recorded.get(p))[:12]}, this run {wanted[p][:12]})" for p in differ)


def checkpoint_name(step: int) -> str:
    # Zero-padded so names sort by step and no step's prefix is another's.
    return f"checkpoint-{step:08d}"


class CheckpointStore:
    """`binding` (see `run_binding`): checkpoints are written with it and only those with the same
    binding are resumed; None (tools, tests) reads every intact checkpoint."""

    def __init__(self, uri: str, keep: int = 2, binding: dict[str, str] | None = None):
        self.uri = uri
        self.store: Store = open_store(uri)
        self.keep = max(1, keep)
        self.binding = binding
        self.not_resumed: str | None = None  # why restore_latest started fresh although checkpoints existed
        self._swept = False

    def _folders(self) -> tuple[set[int], set[int]]:
        """(steps with a completion marker, steps of every checkpoint folder)."""
        marked, folders = set(), set()
        for key in self.store.list(""):
            parts = key.split("/")
            match = _NAME.match(parts[0]) if len(parts) >= 2 else None
            if match:
                folders.add(int(match.group(1)))
                if len(parts) == 2 and parts[1] == MARKER:
                    marked.add(int(match.group(1)))
        return marked, folders

    def steps(self) -> list[int]:
        """Steps of checkpoints that have a completion marker, newest first (whatever their binding)."""
        return sorted(self._folders()[0], reverse=True)

    def _marker(self, step: int) -> dict | None:
        try:
            marker = json.loads(self.store.get_bytes(f"{checkpoint_name(step)}/{MARKER}"))
            return marker if isinstance(marker, dict) else None
        except (StorageError, ValueError) as exc:
            log.warning("checkpoint %s: marker unreadable (%s)", checkpoint_name(step), exc)
            return None

    def _mismatch(self, marker: dict | None) -> str | None:
        if self.binding is None:
            return None
        if marker is None:
            return "its marker is unreadable"
        return binding_mismatch(marker.get("binding"), self.binding)

    def bound_steps(self) -> list[int]:
        """Steps of intact-marker checkpoints this run may resume from, newest first."""
        return [step for step in self.steps() if self._mismatch(self._marker(step)) is None]

    def upload(self, local_dir: Path, step: int, protect: tuple[int, ...] = ()) -> str:
        """Upload one checkpoint folder, then its marker; prune old ones (never those in `protect`).
        The first upload of a run also removes other runs' checkpoints and partial uploads here."""
        name = checkpoint_name(step)
        files = folder_checksums(local_dir)
        self.store.delete_prefix(name + "/")
        try:
            self.store.upload_dir(Path(local_dir), name)
            marker = {"step": step, "files": files}
            if self.binding is not None:
                marker["binding"] = self.binding
            self.store.put_bytes(f"{name}/{MARKER}", json.dumps(marker).encode())
        except Exception:
            # Without its marker a partial checkpoint is never resumed; remove it too (full disk, dropped upload).
            try:
                self.store.delete_prefix(name + "/")
            except Exception as exc:  # noqa: BLE001 - the missing marker already makes it invisible
                log.warning("could not remove the unfinished checkpoint %s/%s: %s", self.uri, name, exc)
            raise
        log.info("checkpoint %s uploaded (%d files) to %s", name, len(files), self.uri)
        if not self._swept and self.binding is not None:
            self._sweep(keep={step, *protect})
            self._swept = True
        for old in self.bound_steps()[self.keep :] if self.binding is not None else self.steps()[self.keep :]:
            if old not in protect and old != step:
                self.store.delete_prefix(checkpoint_name(old) + "/")
        return name

    def _sweep(self, keep: set[int]) -> None:
        """Remove checkpoints of other runs (other binding) and folders without a marker."""
        marked, folders = self._folders()
        removed = []
        for step in sorted(folders - keep):
            if step not in marked or self._mismatch(self._marker(step)) is not None:
                self.store.delete_prefix(checkpoint_name(step) + "/")
                removed.append(step)
        if removed:
            log.warning("removed %d checkpoint(s) of another run or a partial upload from %s (steps %s)",
                        len(removed), self.uri, ", ".join(map(str, removed)))

    def download(self, step: int, local_dir: Path) -> bool:
        """Fetch one checkpoint and verify it against its marker; False (and nothing left) if it is bad
        or bound to another run."""
        name = checkpoint_name(step)
        local_dir = Path(local_dir)
        shutil.rmtree(local_dir, ignore_errors=True)
        try:
            marker = json.loads(self.store.get_bytes(f"{name}/{MARKER}"))
            if self._mismatch(marker):
                log.warning("checkpoint %s belongs to another run (%s): skipped", name, self._mismatch(marker))
                return False
            expected = marker["files"]
            self.store.download_dir(name, local_dir)
        except (StorageError, ValueError, KeyError, TypeError, OSError) as exc:
            log.warning("checkpoint %s unreadable (%s): skipped", name, exc)
            shutil.rmtree(local_dir, ignore_errors=True)
            return False
        (local_dir / MARKER).unlink(missing_ok=True)
        actual = folder_checksums(local_dir)
        if actual != expected:
            bad = sorted(k for k in set(actual) | set(expected) if actual.get(k) != expected.get(k))
            log.warning("checkpoint %s does not match its manifest (%s): skipped", name, ", ".join(bad[:5]))
            shutil.rmtree(local_dir, ignore_errors=True)
            return False
        return True

    def restore_latest(self, local_parent: Path) -> Path | None:
        """Download the newest intact checkpoint of this run into `local_parent/checkpoint-N`; None if
        there is none. `local_parent` is emptied first: a checkpoint a killed attempt left there is not
        verified and must not be picked up by the trainer."""
        shutil.rmtree(local_parent, ignore_errors=True)
        self.not_resumed = None
        foreign: list[tuple[int, str]] = []
        for step in self.steps():
            mismatch = self._mismatch(self._marker(step))
            if mismatch:
                foreign.append((step, mismatch))
                continue
            # The trainer's own naming (unpadded), so its rotation and best-model bookkeeping apply.
            target = Path(local_parent) / f"checkpoint-{step}"
            if self.download(step, target):
                log.info("resuming from %s/%s", self.uri, checkpoint_name(step))
                self._restore_best(target, Path(local_parent))
                return target
        if foreign:
            newest, why = foreign[0]
            self.not_resumed = (f"not resuming from {self.uri}: its {len(foreign)} checkpoint(s) (newest step {newest}) were "
                                f"written by another run: {why}; training starts from step 0, and this run's first "
                                f"checkpoint replaces them")
            log.warning("%s", self.not_resumed)
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
