"""Model registry on a plain folder or S3/MinIO: versions, checksums, aliases with history.

Layout under the registry root (a folder, or s3://bucket/prefix):

    <model>/v0003/CLAIM                  create-only: whoever writes it first owns number 3
    <model>/v0003/model/...              sentence-transformers folder (README.md = model card)
    <model>/v0003/metrics.json           evaluation results
    <model>/v0003/manifest.json          written last: files with sizes and SHA-256, lineage, gate decision
    <model>/aliases/champion/000007.json create-only alias log: {"seq", "action", "version", ...}

Safe under concurrency with one primitive, a create-only write (`Store.put_if_absent`: S3's
`If-None-Match: *`, which MinIO supports, or an exclusive link on a local disk):
- a version number is claimed by creating its CLAIM; a number is never reused, also when its
  upload died (such a version has no manifest and is never listed);
- an alias change appends the next entry of the alias log; two writers racing for the same
  entry see one of them fail and re-read (compare-and-swap with retry), so the log keeps every
  change and the alias is the replay of the log (promotions push, rollbacks pop).

No maintained library offers this on plain MinIO without a tracking server (MLflow, W&B need one),
hence this module.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .artifacts import folder_checksums
from .config import MODEL_NAME_PATTERN
from .storage import Store, StorageError

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
METRICS = "metrics.json"
CLAIM = "CLAIM"
CHAMPION = "champion"
MODEL_FOLDER = "model"
# Files that differ between two registrations of the same weights: the card (it names the version)
# and the training record (it names the run's folder).
NOT_WEIGHTS = ("README.md", "training_info.json")
_VERSION_DIR = re.compile(r"^v(\d{4,})$")
_ALIAS_ENTRY = re.compile(r"^(\d{6,})\.json$")
MAX_ATTEMPTS = 64


class RegistryError(StorageError):
    """A registry operation that cannot proceed; the message names the key and the way out."""


@dataclass
class Registration:
    model_name: str
    version: int
    model_uri: str
    promoted: bool
    reasons: list[str]
    duplicate_of: int | None = None


@dataclass
class AliasState:
    version: int | None
    seq: int
    stack: list[int] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)


def weights_hash(files: dict[str, dict]) -> str:
    """One hash of what makes the model the model (its weights and configs, not its card)."""
    digest = hashlib.sha256()
    for name, meta in sorted(files.items()):
        if Path(name).name not in NOT_WEIGHTS:
            digest.update(f"{name}\0{meta['sha256']}\n".encode())
    return digest.hexdigest()


class ModelRegistry:
    """Versions and aliases of one model name in a Store.

        >>> from medembed.storage import open_store
        >>> registry = ModelRegistry(open_store("/tmp/medembed-doc-registry"), "medical-embeddings")
        >>> registry.versions()  # complete versions only
        []
    """

    def __init__(self, store: Store, model_name: str):
        if not re.fullmatch(MODEL_NAME_PATTERN, model_name):
            raise ValueError(f"model name {model_name!r} must be letters, digits, '.', '_' or '-'")
        self.store = store
        self.model_name = model_name

    # ------------------------------------------------------------ reading

    def _key(self, *parts: str) -> str:
        return "/".join((self.model_name,) + parts)

    @staticmethod
    def version_dir(version: int) -> str:
        return f"v{version:04d}"

    def _read_json(self, key: str, what: str):
        raw = self.store.get_bytes(key)
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise RegistryError(
                f"{self.store.uri(key)}: the {what} is not valid JSON ({exc.__class__.__name__} at byte "
                f"{getattr(exc, 'pos', '?')} of {len(raw)}); it was damaged outside the registry: restore it from a "
                f"backup or delete it ({self._way_out(key)})") from None

    def _way_out(self, key: str) -> str:
        if "/aliases/" in key:
            return "deleting this entry returns the alias to the state before it"
        if key.endswith(MANIFEST):
            return "deleting the manifest makes the version incomplete: it is then ignored"
        return "the version stays listed, but its metrics cannot be shown"

    def _claimed_numbers(self) -> set[int]:
        numbers = set()
        for key in self.store.list(self.model_name + "/"):
            parts = key.split("/")
            if len(parts) > 1 and (match := _VERSION_DIR.match(parts[1])):
                numbers.add(int(match.group(1)))
        return numbers

    def versions(self) -> list[int]:
        """Complete versions only: their manifest exists (it is written last)."""
        complete = set()
        for key in self.store.list(self.model_name + "/"):
            parts = key.split("/")
            if len(parts) == 3 and parts[2] == MANIFEST and (match := _VERSION_DIR.match(parts[1])):
                complete.add(int(match.group(1)))
        return sorted(complete)

    def manifest(self, version: int) -> dict:
        self._require(version)
        return self._read_json(self._key(self.version_dir(version), MANIFEST), "manifest")

    def metrics(self, version: int) -> dict:
        self._require(version)
        return self._read_json(self._key(self.version_dir(version), METRICS), "metrics file")

    def model_uri(self, version: int) -> str:
        return self.store.uri(self._key(self.version_dir(version), MODEL_FOLDER))

    def version_of(self, model_uri: str) -> int:
        """The version whose model folder is `model_uri` (as model_uri() gives it)."""
        match = re.search(r"/v(\d{4,})/" + MODEL_FOLDER + "/?$", model_uri)
        if not match or self.model_uri(int(match.group(1))).rstrip("/") != model_uri.rstrip("/"):
            raise RegistryError(f"{model_uri}: not a model folder of {self.model_name} in {self.store.uri('')}")
        return int(match.group(1))

    def _require(self, version: int) -> None:
        if not self.store.exists(self._key(self.version_dir(version), MANIFEST)):
            raise RegistryError(f"{self.model_name}: no complete version {version}; complete versions: "
                                f"{', '.join(map(str, self.versions())) or 'none'}")

    def resolve(self, ref: str | int | None = None) -> int:
        """'3', 'v3', 'champion' (any alias) or None (the champion) -> a complete version number."""
        if ref is None:
            ref = CHAMPION
        text = str(ref)
        if re.fullmatch(r"v?\d+", text):
            version = int(text.lstrip("v"))
            self._require(version)
            return version
        version = self.alias(text)
        if version is None:
            raise RegistryError(f"{self.model_name}: alias {text!r} points at no version yet")
        return version

    # ------------------------------------------------------------ aliases

    def _alias_prefix(self, name: str) -> str:
        return self._key("aliases", name) + "/"

    def alias_state(self, name: str = CHAMPION) -> AliasState:
        """Replay the alias log: a promotion pushes its version, a rollback pops back to the one before."""
        entries = []
        for key in self.store.list(self._alias_prefix(name)):
            if match := _ALIAS_ENTRY.match(key.rsplit("/", 1)[-1]):
                entries.append((int(match.group(1)), key))
        state = AliasState(version=None, seq=0)
        for seq, key in sorted(entries):
            entry = self._read_json(key, f"alias {name!r} log entry {seq}")
            if not (isinstance(entry, dict) and entry.get("action") in ("promote", "rollback")
                    and isinstance(entry.get("version"), int)):
                shape = type(entry).__name__ if not isinstance(entry, dict) else f"keys {', '.join(sorted(entry)) or 'none'}"
                raise RegistryError(
                    f"{self.store.uri(key)}: the alias {name!r} log entry {seq} is not an entry ({shape}; expected an object "
                    f"with 'action' promote or rollback and a whole-number 'version'); it was damaged outside the registry: "
                    f"restore it from a backup or delete it ({self._way_out(key)})")
            if entry.get("action") == "rollback" and state.stack:
                state.stack.pop()
            elif entry.get("action") != "rollback":
                state.stack.append(int(entry["version"]))
            state.history.append(entry)
            state.seq = seq
        state.version = state.stack[-1] if state.stack else None
        return state

    def alias(self, name: str = CHAMPION) -> int | None:
        return self.alias_state(name).version

    def _append_alias(self, name: str, state: AliasState, entry: dict) -> bool:
        """Append entry seq+1 to the alias log; False if another writer took that entry first."""
        seq = state.seq + 1
        body = {"seq": seq, "at": _now(), "previous": state.version, **entry}
        return self.store.put_if_absent(f"{self._alias_prefix(name)}{seq:06d}.json",
                                        json.dumps(body, indent=2, sort_keys=True).encode())

    def promote(self, version: int, name: str = CHAMPION, reason: str = "promoted by hand",
                expected: int | None | str = "any") -> bool:
        """Point the alias at `version`. With `expected` (a version or None), only if the alias still
        points there (compare-and-swap): False when it moved. Otherwise retried until it lands."""
        self._require(version)
        for _ in range(MAX_ATTEMPTS):
            state = self.alias_state(name)
            if expected != "any" and state.version != expected:
                return False
            if self._append_alias(name, state, {"action": "promote", "version": version, "reason": reason}):
                log.info("%s@%s -> v%d (%s)", self.model_name, name, version, reason)
                return True
        raise RegistryError(f"{self.model_name}@{name}: gave up after {MAX_ATTEMPTS} contended attempts; retry")

    def rollback(self, name: str = CHAMPION) -> int:
        """Point the alias back at the version it held before the current one. Repeated rollbacks walk
        further back through the promotions (v3 -> v2 -> v1); they never toggle."""
        for _ in range(MAX_ATTEMPTS):
            state = self.alias_state(name)
            if len(state.stack) < 2:
                raise RegistryError(f"{self.model_name}: alias {name!r} has no earlier version to roll back to"
                                    + (f" (it points at v{state.version})" if state.version else ""))
            current, target = state.stack[-1], state.stack[-2]
            self._require(target)
            if self._append_alias(name, state, {"action": "rollback", "version": target,
                                                "reason": f"rollback from v{current}"}):
                log.info("%s@%s rolled back v%d -> v%d", self.model_name, name, current, target)
                return target
        raise RegistryError(f"{self.model_name}@{name}: gave up after {MAX_ATTEMPTS} contended attempts; retry")

    # ------------------------------------------------------------ registering

    def find_weights(self, digest: str) -> int | None:
        """The complete version whose weights hash is `digest`, if any."""
        for version in reversed(self.versions()):
            try:
                if self.manifest(version).get("weights_sha256") == digest:
                    return version
            except RegistryError as exc:
                log.warning("skipping v%d while looking for identical weights: %s", version, exc)
        return None

    def claim_version(self, owner: str = "") -> int:
        """A new version number, never used before (create-only CLAIM)."""
        candidate = max(self._claimed_numbers(), default=0) + 1
        for _ in range(MAX_ATTEMPTS):
            claim = json.dumps({"claimed_at": _now(), "owner": owner}).encode()
            if self.store.put_if_absent(self._key(self.version_dir(candidate), CLAIM), claim):
                return candidate
            candidate = max(max(self._claimed_numbers(), default=0), candidate) + 1
        raise RegistryError(f"{self.model_name}: could not claim a version number after {MAX_ATTEMPTS} attempts")

    def register(self, model_dir: Path, results: dict, lineage: dict, card, decision, owner: str = "") -> Registration:
        """Store a new version (model with its card, metrics, manifest with checksums), then promote it
        when `decision.promote`, compare-and-swap against the champion it was judged against
        (`decision.champion_version`). The same weights are never registered twice.

        `card(version) -> str` renders the model card once the version number is known."""
        model_dir = Path(model_dir)
        digest = weights_hash(folder_checksums(model_dir))
        existing = self.find_weights(digest)
        if existing is not None:
            log.info("%s: these weights are already v%d; nothing registered", self.model_name, existing)
            return Registration(self.model_name, existing, self.model_uri(existing), False,
                                [f"identical weights are already registered as v{existing}"], duplicate_of=existing)
        if decision.promote:
            self.alias_state()  # a damaged alias log fails here, before anything is written
        version = self.claim_version(owner)
        vdir = self.version_dir(version)
        try:
            with tempfile.TemporaryDirectory() as work:
                staged = Path(work) / MODEL_FOLDER
                shutil.copytree(model_dir, staged)
                (staged / "README.md").write_text(card(version), encoding="utf-8")
                files = folder_checksums(staged)
                self.store.upload_dir(staged, self._key(vdir, MODEL_FOLDER))
            self.store.put_bytes(self._key(vdir, METRICS), json.dumps(results, indent=2).encode())
            manifest = {
                "model_name": self.model_name, "version": version, "created": _now(), "owner": owner,
                "files": {f"{MODEL_FOLDER}/{name}": meta for name, meta in files.items()},
                "weights_sha256": digest, "gate": asdict(decision), **lineage,
            }
            self.store.put_bytes(self._key(vdir, MANIFEST), json.dumps(manifest, indent=2, sort_keys=True).encode())
        except BaseException:
            # An unfinished version stays invisible (no manifest); its files are removed where possible.
            try:
                self.store.delete_prefix(self._key(vdir, MODEL_FOLDER) + "/")
                self.store.delete_prefix(self._key(vdir, METRICS))
            except Exception:  # noqa: BLE001 - best effort: the missing manifest already hides it
                log.warning("could not clean up the unfinished %s %s", self.model_name, vdir)
            raise
        promoted, reasons = False, list(decision.reasons)
        if decision.promote:
            promoted = self.promote(version, reason="won the promotion gate", expected=decision.champion_version)
            if not promoted:
                now = self.alias()
                reasons.append(f"the champion changed to v{now} while this run was evaluated against "
                               f"{'v' + str(decision.champion_version) if decision.champion_version else 'no champion'}; "
                               f"not promoted (compare them in a new run, or `medembed models promote`)")
        log.info("registered %s v%d (promoted: %s)", self.model_name, version, promoted)
        return Registration(self.model_name, version, self.model_uri(version), promoted, reasons)

    # ------------------------------------------------------------ pulling

    def pull(self, version: int, target: Path) -> Path:
        """Download a version's model folder to `target` and verify every file against the manifest.
        The folder appears only once complete and verified."""
        manifest = self.manifest(version)
        target = Path(target)
        if target.exists() and any(target.iterdir()):
            raise RegistryError(f"{target}: not empty; pull into a new folder")
        expected = {name[len(MODEL_FOLDER) + 1:]: meta for name, meta in manifest["files"].items()}
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            self.store.download_dir(self._key(self.version_dir(version), MODEL_FOLDER), staging)
            actual = folder_checksums(staging)
            for name, meta in expected.items():
                got = actual.get(name)
                if got is None:
                    raise RegistryError(f"{self.model_uri(version)}/{name}: missing from the registry copy of "
                                        f"v{version}; the version is damaged: pull another version or re-register")
                if got != meta:
                    raise RegistryError(
                        f"{self.model_uri(version)}/{name}: checksum mismatch (manifest sha256 {meta['sha256'][:12]}…, "
                        f"{meta['size']} bytes; got {got['sha256'][:12]}…, {got['size']} bytes): the stored file is "
                        f"corrupt; pull another version or re-register this one")
            if target.exists():
                target.rmdir()
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds")
