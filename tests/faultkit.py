"""Tools of the fault suite (issue 13): a TCP proxy on 127.0.0.1 that can be slow, silent, drop
connections or be down; a real small filesystem (tmpfs in a private mount namespace, no root needed);
and `observe`, which records what a fault case saw for docs/RELIABILITY.md (see conftest.py).

Run as a script (`python tests/faultkit.py small-disk ...`) it is the helper that mounts the small
filesystem inside `unshare --user --map-root-user --mount` and runs a command on it.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# ------------------------------------------------------------------ observations for RELIABILITY.md

# conftest.py sets the current test's record before each test; observe() appends to it.
CURRENT: dict = {}
# Figures a case measured for the report's header (e.g. the PII corpus's precision and recall).
FIGURES: dict = {}
# The session's pytest temporary folder, shown as $TMP in observations (it changes every run).
SCRUB: list[str] = []


def observe(text: str, limit: int = 600) -> str:
    """Record what this fault case observed (a message, a count, a listing); returns `text`."""
    text = " ".join(str(text).split())
    for prefix in SCRUB:
        text = text.replace(prefix, "$TMP")
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    CURRENT.setdefault("observed", []).append(text)
    return text


def figure(name: str, value) -> None:
    """A measured figure for the report's header (see write_report)."""
    FIGURES[name] = value


def case(fault: str, promise: str):
    """Mark a test as a fault case: what goes wrong, and what the product promises then. `{id}` in
    either is replaced by the parametrized case's id."""
    import pytest

    return pytest.mark.faults(fault=fault, promise=promise)


# ------------------------------------------------------------------ a misbehaving endpoint


class FaultProxy:
    """A TCP proxy on 127.0.0.1 in front of `upstream_port`, whose behaviour can change while it runs:

    - "pass":    forwards both ways
    - "slow":    forwards both ways at `rate` bytes/s (a slow but live endpoint)
    - "latency": holds every response `delay` seconds before its first byte (slower than a read timeout)
    - "silent":  accepts connections and forwards nothing, never answers (a hung endpoint)
    - "drop":    resets a connection once a request has sent more than `drop_after` bytes without an
                 answer in between (a connection dropped mid-upload)
    and `down()` closes the listening port (connection refused) until `up()`.
    """

    CHUNK = 16 * 1024

    def __init__(self, upstream_port: int):
        self.upstream = ("127.0.0.1", upstream_port)
        self.mode = "pass"
        self.rate = 1_000_000
        self.delay = 5.0
        self.drop_after = 64 * 1024
        self.connections = 0
        self.dropped = 0
        self.throttled_bytes = 0
        self._stop = threading.Event()
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self.port = 0
        self._listener: socket.socket | None = None
        self.up()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def set(self, mode: str, **settings) -> "FaultProxy":
        for name, value in settings.items():
            setattr(self, name, value)
        self.mode = mode
        return self

    def up(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.settimeout(0.05)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        """Close the port: new connections are refused; open ones are reset."""
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        self._close_all()

    def close(self) -> None:
        self._stop.set()
        self.down()

    def _close_all(self) -> None:
        with self._lock:
            socks, self._socks = self._socks, []
        for sock in socks:
            _reset(sock)

    def _accept(self, listener: socket.socket) -> None:
        while not self._stop.is_set() and self._listener is listener:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            with self._lock:
                self._socks.append(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            self._connect(client)
        except OSError:
            _reset(client)

    def _connect(self, client: socket.socket) -> None:
        if self.mode == "silent":
            self._hold(client)
            return
        try:
            server = socket.create_connection(self.upstream, timeout=10)
        except OSError:
            _reset(client)
            return
        with self._lock:
            self._socks.append(server)
        state = {"unanswered": 0}
        threading.Thread(target=self._pump, args=(client, server, state, True), daemon=True).start()
        self._pump(server, client, state, False)

    def _hold(self, client: socket.socket) -> None:
        client.settimeout(0.1)
        while not self._stop.is_set():
            try:
                if client.recv(self.CHUNK) == b"":
                    break
            except TimeoutError:
                continue
            except OSError:
                break
        _reset(client)

    def _pump(self, source: socket.socket, target: socket.socket, state: dict, upload: bool) -> None:
        try:
            self._forward(source, target, state, upload)
        except OSError:  # a socket closed under it (down(), close(), the peer): the connection ends
            pass
        _reset(source)
        _reset(target)

    def _forward(self, source: socket.socket, target: socket.socket, state: dict, upload: bool) -> None:
        source.settimeout(0.1)
        first_of_response = True
        while not self._stop.is_set():
            try:
                data = source.recv(self.CHUNK)
            except TimeoutError:
                first_of_response = True
                continue
            except OSError:
                break
            if not data:
                break
            mode = self.mode
            if mode == "silent":
                while self.mode == "silent" and not self._stop.is_set():
                    time.sleep(0.05)  # went silent mid-stream: hold what was received, forward nothing
                break  # a connection that went silent never comes back (its client gave up long ago)
            if upload:
                state["unanswered"] += len(data)
                if mode == "drop" and state["unanswered"] > self.drop_after:
                    self.dropped += 1
                    return
            else:
                state["unanswered"] = 0
                if mode == "latency" and first_of_response:
                    time.sleep(self.delay)
            first_of_response = False
            try:
                if mode == "slow":
                    for start in range(0, len(data), 4096):
                        piece = data[start:start + 4096]
                        time.sleep(len(piece) / self.rate)
                        target.sendall(piece)
                        self.throttled_bytes += len(piece)
                else:
                    target.sendall(data)
            except OSError:
                break


def _reset(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0): the peer sees the connection reset, as when a link drops."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


# ------------------------------------------------------------------ a small, real filesystem


@dataclass
class DiskRun:
    """What a command did on a small filesystem: its exit code and output, and what it left there."""

    returncode: int
    stdout: str
    stderr: str
    files: dict[str, int] = field(default_factory=dict)  # path relative to the mount -> size
    texts: dict[str, str] = field(default_factory=dict)  # the same for small .json files -> their text
    size: int = 0
    free: int = 0
    isolation: str = ""

    @property
    def last_line(self) -> str:
        lines = [line for line in self.stderr.splitlines() if line.strip()]
        return lines[-1] if lines else ""


_ISOLATION: list[str] | None = None


def isolation() -> list[str]:
    """The command prefix that gives a private mount namespace in which tmpfs can be mounted: an
    unprivileged user namespace (`unshare -r -m`), else, for root with CAP_SYS_ADMIN, `unshare -m`.
    Neither available: the fault suite fails (it never pretends a disk is full)."""
    global _ISOLATION
    if _ISOLATION is not None:
        return _ISOLATION
    tried = []
    for prefix in (["unshare", "--user", "--map-root-user", "--mount"], ["unshare", "--mount"]):
        if shutil.which(prefix[0]) is None:
            tried.append(f"{prefix[0]}: not installed")
            break
        probe = subprocess.run([*prefix, sys.executable, __file__, "probe"], capture_output=True, text=True, timeout=60)
        if probe.returncode == 0:
            _ISOLATION = prefix
            return prefix
        tried.append(f"{' '.join(prefix)}: {probe.stderr.strip().splitlines()[-1] if probe.stderr.strip() else probe.returncode}")
    raise RuntimeError("the disk-full cases need a private mount namespace to mount a small tmpfs, and none is "
                       "available (" + "; ".join(tried) + "): allow unprivileged user namespaces "
                       "(sysctl kernel.unprivileged_userns_clone=1 / user.max_user_namespaces>0) or run as root")


def run_on_small_disk(argv: list[str], mount: Path, size: str, *, env: dict | None = None, timeout: float = 300,
                      fill: int = 0) -> DiskRun:
    """Run `argv` with a fresh tmpfs of `size` (e.g. "256k") mounted at `mount`, and `fill` bytes of
    it taken by a file `FILLER` first; report what the command left on it. The mount exists only for
    the command (a private mount namespace): the listing is taken before it disappears."""
    mount = Path(mount)
    mount.mkdir(parents=True, exist_ok=True)
    listing = mount.parent / f".{mount.name}.listing.json"
    listing.unlink(missing_ok=True)
    prefix = isolation()
    proc = subprocess.run([*prefix, sys.executable, __file__, "small-disk", str(mount), size, str(fill), str(listing),
                           "--", *argv], capture_output=True, text=True, env=env, timeout=timeout)
    if not listing.exists():
        raise RuntimeError(f"the small-disk helper failed (exit {proc.returncode}): {proc.stderr[-3000:]}")
    seen = json.loads(listing.read_text())
    return DiskRun(seen["returncode"], proc.stdout, proc.stderr, seen["files"], seen["texts"], seen["size"], seen["free"],
                   " ".join(prefix))


def _listing(mount: Path) -> dict[str, int]:
    return {str(p.relative_to(mount)): p.stat().st_size for p in sorted(mount.rglob("*")) if p.is_file()}


def _small_disk_main(args: list[str]) -> int:
    mount, size, fill, listing = Path(args[0]), args[1], int(args[2]), Path(args[3])
    command = args[args.index("--") + 1:]
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0777", "medembed-small-disk", str(mount)], check=True)
    if fill:
        with open(mount / "FILLER", "wb") as handle:
            handle.write(b"\0" * fill)
    returncode = subprocess.run(command).returncode
    stat = os.statvfs(mount)
    texts = {name: (mount / name).read_text(errors="replace") for name, size in _listing(mount).items()
             if name.endswith(".json") and size < 4096}
    listing.write_text(json.dumps({"returncode": returncode, "files": _listing(mount), "texts": texts,
                                   "size": stat.f_blocks * stat.f_frsize, "free": stat.f_bavail * stat.f_frsize}))
    return returncode


if __name__ == "__main__":
    if sys.argv[1] == "probe":
        import tempfile

        where = tempfile.mkdtemp(prefix="medembed-probe-")
        try:
            subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "medembed-probe", where], check=True)
            stat = os.statvfs(where)
            small = stat.f_blocks * stat.f_frsize <= 64 * 1024
            subprocess.run(["umount", where], check=True)
        finally:
            os.rmdir(where)
        sys.exit(0 if small else 1)
    if sys.argv[1] == "small-disk":
        sys.exit(_small_disk_main(sys.argv[2:]))
    sys.exit(f"unknown command {sys.argv[1:]}")
