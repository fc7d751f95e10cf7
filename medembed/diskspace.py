"""A full disk, said once: which folder's filesystem ran out, how much is left there, and what to do.

A write on a full disk surfaces in many shapes: `OSError: [Errno 28] No space left on device` naming no
file, a `shutil.Error` listing every file a copy could not write, safetensors' `SafetensorError ... (os
error 28)`, or torch's `RuntimeError: [enforce fail at inline_container.cc] ... unexpected pos`, which
carries no error number at all. `explained` turns each of them into one `DiskFullError` that names the
stage, the file when it is known, the folder whose filesystem is full (with its free and total space)
and what to do; the stage cleans up what it left half-written.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
from pathlib import Path
from typing import Iterator

from .storage import StorageError

# A filesystem with less free space than this is "full" (a failed write may leave a few pages).
NEARLY_FULL = 1 << 20
_NO_SPACE_TEXT = ("No space left on device", "os error 28", "Disk quota exceeded", "[Errno 28]", "[Errno 122]")
# torch's zip writer reports a short write with no error number: only trusted when a disk is full.
_WRITE_FAILURE = re.compile(r"file write failed|unexpected pos|PytorchStreamWriter|failed writing", re.I)


class DiskFullError(StorageError):
    """A stage ran out of disk space; the message names where and what to do."""


def human(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def _usage(path: Path) -> tuple[int, int, int] | None:
    """(free bytes, total bytes, device) of the filesystem holding `path` or its nearest existing parent."""
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        stat = os.statvfs(path)
        return stat.f_bavail * stat.f_frsize, stat.f_blocks * stat.f_frsize, os.stat(path).st_dev
    except OSError:
        return None


def _texts(exc: BaseException) -> list[str]:
    texts = [str(exc)]
    if isinstance(exc, shutil.Error) and exc.args and isinstance(exc.args[0], list):
        texts += [str(entry[-1]) for entry in exc.args[0] if isinstance(entry, tuple)]
    return texts


def _file_named(exc: BaseException) -> str | None:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return exc.filename2 or exc.filename
    if isinstance(exc, shutil.Error) and exc.args and isinstance(exc.args[0], list):
        for entry in exc.args[0]:
            if isinstance(entry, tuple) and len(entry) == 3 and any(t in str(entry[2]) for t in _NO_SPACE_TEXT):
                return str(entry[1])
    return None


def describe(exc: BaseException, what: str, places: dict[str, Path | str | None], then: str) -> str | None:
    """The one-line message for `exc` if it is a full disk, else None. `places`: label -> folder the
    stage writes to (None entries are ignored); `then`: what happened to the partial output and what
    to do."""
    usage = {label: (Path(p), _usage(Path(p))) for label, p in places.items() if p}
    usage = {label: (p, u) for label, (p, u) in usage.items() if u is not None}
    errno_says = (isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)) or any(
        marker in text for text in _texts(exc) for marker in _NO_SPACE_TEXT)
    full = {label: (p, u) for label, (p, u) in usage.items() if u[0] < NEARLY_FULL}
    if not errno_says and not (full and isinstance(exc, (OSError, RuntimeError)) and _WRITE_FAILURE.search(str(exc))):
        return None
    if not full and usage:  # the failed write was larger than what is left: name the emptiest place
        label = min(usage, key=lambda k: usage[k][1][0] / max(usage[k][1][1], 1))
        full = {label: usage[label]}
    by_device: dict[int, list] = {}
    for label, (path, (free, total, device)) in full.items():
        by_device.setdefault(device, [free, total, []])[2].append(f"{label} {path}")
    where = [f"{', '.join(names)}: {human(free)} free of {human(total)}" for free, total, names in by_device.values()]
    file = _file_named(exc)
    return (f"{what}: no space left on device" + (f" writing {file}" if file else "")
            + (f" ({'; '.join(where)})" if where else "") + f". {then}")


@contextlib.contextmanager
def explained(what: str, places: dict[str, Path | str | None], then: str, cleanup=None) -> Iterator[None]:
    """Run the block. On any error, `cleanup()` removes what it left half-written (see `remover`); a full
    disk becomes one DiskFullError, measured before the cleanup frees space; other errors pass through."""
    try:
        yield
    except Exception as exc:
        message = None if isinstance(exc, DiskFullError) else describe(exc, what, places, then)
        if cleanup is not None:
            cleanup()
        if message is None:
            raise
        raise DiskFullError(message) from None


def remover(*folders: Path | str | None):
    """A cleanup for `explained`: afterwards, each of `folders` is as it was now if it did not exist
    or was empty (removed, or emptied); a folder that already held files is left alone."""
    fresh = []
    for folder in (Path(f) for f in folders if f):
        if not folder.exists():
            fresh.append((folder, False))
        elif folder.is_dir() and not any(folder.iterdir()):
            fresh.append((folder, True))

    def cleanup() -> None:
        for folder, keep in fresh:
            if not folder.exists():
                continue
            if keep:
                for child in folder.iterdir():
                    shutil.rmtree(child, ignore_errors=True) if child.is_dir() and not child.is_symlink() else child.unlink(missing_ok=True)
            else:
                shutil.rmtree(folder, ignore_errors=True)

    return cleanup
