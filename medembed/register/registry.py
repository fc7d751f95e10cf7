"""Model registry: versioned models with their metrics, model card and lineage, and a
`champion` alias that moves only when a candidate wins.

Layout under the registry root (a folder, or s3://bucket/prefix on MinIO):

    <model_name>/v0003/model/...        sentence-transformers folder (with README.md = model card)
    <model_name>/v0003/metrics.json     evaluation results (base vs fine-tuned per dim)
    <model_name>/v0003/manifest.json    written last: a version without it is incomplete and ignored
    <model_name>/aliases/champion.json  {"version": 3, "history": [...]}

No maintained library offers this on plain MinIO without a tracking server (MLflow, W&B need one),
hence these ~150 lines.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from ..config import MODEL_NAME_PATTERN
from ..storage import Store, StorageError, read_json, write_json
from .gate import GateDecision, decide_promotion

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
METRICS = "metrics.json"
CHAMPION = "champion"
_VERSION_DIR = re.compile(r"^v(\d{4,})$")


@dataclass
class Registration:
    model_name: str
    version: int
    model_uri: str
    promoted: bool
    reasons: list[str]


class ModelRegistry:
    def __init__(self, store: Store, model_name: str):
        if not re.fullmatch(MODEL_NAME_PATTERN, model_name):
            raise ValueError(f"model name {model_name!r} must be letters, digits, '.', '_' or '-'")
        self.store = store
        self.model_name = model_name

    def _key(self, *parts: str) -> str:
        return "/".join((self.model_name,) + parts)

    @staticmethod
    def version_dir(version: int) -> str:
        return f"v{version:04d}"

    def _all_version_numbers(self) -> set[int]:
        numbers = set()
        for key in self.store.list(self.model_name + "/"):
            parts = key.split("/")
            if len(parts) > 1 and (match := _VERSION_DIR.match(parts[1])):
                numbers.add(int(match.group(1)))
        return numbers

    def versions(self) -> list[int]:
        """Complete versions only (their manifest exists)."""
        return sorted(v for v in self._all_version_numbers() if self.store.exists(self._key(self.version_dir(v), MANIFEST)))

    def manifest(self, version: int) -> dict:
        return read_json(self.store, self._key(self.version_dir(version), MANIFEST))

    def metrics(self, version: int) -> dict:
        return read_json(self.store, self._key(self.version_dir(version), METRICS))

    def alias(self, name: str = CHAMPION) -> int | None:
        key = self._key("aliases", f"{name}.json")
        return read_json(self.store, key)["version"] if self.store.exists(key) else None

    def set_alias(self, version: int, name: str = CHAMPION, reason: str = "") -> None:
        if version not in self.versions():
            raise StorageError(f"{self.model_name}: no complete version {version} to point {name!r} at")
        key = self._key("aliases", f"{name}.json")
        history = read_json(self.store, key).get("history", []) if self.store.exists(key) else []
        history.append({"version": version, "at": _now(), "reason": reason})
        write_json(self.store, key, {"version": version, "history": history})

    def rollback(self, name: str = CHAMPION) -> int:
        """Point the alias back at the version it held before the current one."""
        key = self._key("aliases", f"{name}.json")
        history = read_json(self.store, key).get("history", []) if self.store.exists(key) else []
        if len(history) < 2:
            raise StorageError(f"{self.model_name}: alias {name!r} has no earlier version to roll back to")
        previous = history[-2]["version"]
        self.set_alias(previous, name, reason=f"rollback from v{history[-1]['version']}")
        return previous

    def register(
        self,
        model_dir: Path,
        results: dict,
        lineage: dict,
        render_card: Callable[[int, GateDecision], str],
        min_gain: float = 0.0,
    ) -> Registration:
        """Store a new version (model, metrics, card), then promote it if it wins the gate.

        The version number skips any incomplete leftover so nothing stored is overwritten;
        the manifest is written last, so readers never see a half-uploaded version.
        """
        version = max(self._all_version_numbers(), default=0) + 1
        vdir = self.version_dir(version)
        champion = self.alias()
        champion_results = self.metrics(champion) if champion is not None else None
        decision = decide_promotion(results, champion_results, min_gain)

        (Path(model_dir) / "README.md").write_text(render_card(version, decision), encoding="utf-8")
        files = self.store.upload_dir(Path(model_dir), self._key(vdir, "model"))
        write_json(self.store, self._key(vdir, METRICS), results)
        manifest = {
            "model_name": self.model_name,
            "version": version,
            "created": _now(),
            "files": files,
            "gate": asdict(decision),
            "champion_before": champion,
            **lineage,
        }
        write_json(self.store, self._key(vdir, MANIFEST), manifest)
        if decision.promote:
            self.set_alias(version, reason="won the promotion gate")
        log.info("registered %s v%d (promoted: %s)", self.model_name, version, decision.promote)
        return Registration(
            self.model_name, version, self.store.uri(self._key(vdir, "model")), decision.promote, decision.reasons
        )


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
