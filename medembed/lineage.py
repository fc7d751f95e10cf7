"""What a model was made from, and whether a new run would make anything new.

A registered version records its lineage: the prepared data's fingerprint, the base model's
identity and the training settings' signature. A scheduled run compares its own with the
champion's (and every other version's) right after data prep: when all three are equal (and
train.force_retrain is off) it says so and stops, instead of training, evaluating and registering
the same model again.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from .artifacts import STATS_FILE
from .config import PipelineConfig
from .models import model_identity
from .registry import ModelRegistry
from .storage import StorageError, open_store

log = logging.getLogger(__name__)

# What must match the champion's for a run to count as unchanged.
COMPARED = {"data_fingerprint": "prepared data", "base_model_identity": "base model", "training_signature": "training settings"}


def run_lineage(config: PipelineConfig, train_dir: Path) -> dict:
    stats = json.loads((Path(train_dir) / STATS_FILE).read_text())
    return {
        "data_source": stats["source"],
        "data_fingerprint": stats["fingerprint"],
        "base_model": config.train.base_model,
        "base_model_identity": model_identity(config.train.base_model),
        "training_signature": config.train.signature(),
    }


@dataclass
class ChangeCheck:
    retrain: bool
    reason: str
    lineage: dict
    champion_version: int | None = None
    champion_uri: str = ""

    def markdown(self) -> str:
        verdict = "**Training: yes.**" if self.retrain else "**Training: skipped (nothing changed).**"
        rows = "\n".join(f"| {label} | `{str(self.lineage[key])[:24]}` |" for key, label in COMPARED.items())
        return f"{verdict} {self.reason}\n\n| this run | |\n| --- | --- |\n{rows}\n"

    def to_dict(self) -> dict:
        return asdict(self)


def check_changes(config: PipelineConfig, train_dir: Path) -> ChangeCheck:
    """Compare this run's lineage with the champion's, then with every other registered version: a
    run equal to a version that was not promoted would only be refused again."""
    lineage = run_lineage(config, train_dir)
    try:
        registry = ModelRegistry(open_store(config.registry.registry_uri, create=False), config.registry.model_name)
        champion = registry.alias()
        versions = registry.versions()
    except StorageError as exc:
        if "does not exist" not in str(exc):
            raise
        return ChangeCheck(True, f"{config.registry.model_name} has no registry yet.", lineage)
    champion_uri = registry.model_uri(champion) if champion is not None else ""
    ordered = ([champion] if champion is not None else []) + [v for v in reversed(versions) if v != champion]
    for version in ordered:
        manifest = registry.manifest(version)
        if any(manifest.get(key) != value for key, value in ((k, lineage[k]) for k in COMPARED)):
            continue
        what = f"the champion v{version}" if version == champion else f"v{version} (registered, not promoted)"
        if config.train.force_retrain:
            return ChangeCheck(True, f"Same inputs as {what}, but train.force_retrain is on.", lineage, champion,
                               champion_uri)
        return ChangeCheck(False, f"The prepared data, base model and training settings equal those of {what}, "
                           f"registered {manifest.get('created', '?')}: nothing new to train. Set force_retrain=true "
                           "to train anyway.", lineage, champion, champion_uri or registry.model_uri(version))
    if champion is None:
        return ChangeCheck(True, f"{config.registry.model_name} has no champion yet.", lineage)
    manifest = registry.manifest(champion)
    changed = [label for key, label in COMPARED.items() if manifest.get(key) != lineage[key]]
    return ChangeCheck(True, f"Changed since the champion v{champion}: {', '.join(changed)}.", lineage, champion,
                       champion_uri)
