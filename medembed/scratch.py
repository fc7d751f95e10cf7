"""Scratch folders that a killed run does not leave behind for good.

A training attempt keeps its local checkpoints (hundreds of MB) in a scratch folder; a process killed
with SIGKILL or out of memory never runs its cleanup, and `tempfile.TemporaryDirectory` leaves the
folder in place. Each folder made here holds a lock file that its owner keeps locked (`flock`) while it
lives; the kernel drops the lock when the owner dies, however it dies. The next `work_dir` call removes
every folder of the same kind whose lock it can take, so the debris of a killed run is cleaned at the
next start. Process ids are not used: they are reused (every container's first process is pid 1).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)

PREFIX = "medembed-"
LOCK_FILE = ".medembed-owner.lock"
# A folder without its lock file is either being created right now or older than locking: only the
# latter is removed.
UNLOCKED_GRACE_SECONDS = 600


def _prefix(kind: str) -> str:
    return f"{PREFIX}{kind}-"


def clean_stale(kind: str, parent: Path | None = None) -> list[Path]:
    """Remove `parent`'s scratch folders of `kind` whose owner process is gone; returns them."""
    parent = Path(parent or tempfile.gettempdir())
    removed = []
    for folder in sorted(parent.glob(_prefix(kind) + "*")):
        if not folder.is_dir() or folder.is_symlink():
            continue
        lock_path = folder / LOCK_FILE
        if not lock_path.exists():
            if time.time() - folder.stat().st_mtime < UNLOCKED_GRACE_SECONDS:
                continue
        else:
            try:
                with open(lock_path, "a") as lock:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # taken: the owner is dead
            except BlockingIOError:
                continue  # its owner is alive
            except OSError:
                continue
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())
        shutil.rmtree(folder, ignore_errors=True)
        log.warning("removed %s (%.0f MB) left by a %s run that was killed", folder, size / 1e6, kind)
        removed.append(folder)
    return removed


@contextlib.contextmanager
def work_dir(kind: str, parent: Path | None = None) -> Iterator[Path]:
    """A scratch folder `<parent>/medembed-<kind>-XXXX`, locked while this process lives and removed on
    exit; killed runs' folders of the same kind are removed first."""
    parent = Path(parent or tempfile.gettempdir())
    parent.mkdir(parents=True, exist_ok=True)
    clean_stale(kind, parent)
    folder = Path(tempfile.mkdtemp(prefix=_prefix(kind), dir=parent))
    lock = open(folder / LOCK_FILE, "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        lock.write(f"pid {os.getpid()}\n")
        lock.flush()
        yield folder
    finally:
        lock.close()
        shutil.rmtree(folder, ignore_errors=True)
