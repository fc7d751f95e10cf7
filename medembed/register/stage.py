"""The registration stage: a new model version with its metrics, card and lineage, promoted to
champion only if it passes the gate. The same weights are never registered twice."""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import asdict
from pathlib import Path

from .. import diskspace
from ..artifacts import RESULTS_FILE, STATS_FILE, TrainingInfo
from ..config import PipelineConfig
from ..lineage import run_lineage
from ..models import setup_logging
from ..registry import ModelRegistry
from ..storage import open_store
from . import model_card
from .gate import decide_promotion, decision_markdown

log = logging.getLogger(__name__)


def run(config: PipelineConfig, model_dir: Path, results_dir: Path, train_dir: Path, pipeline_run: str = "",
        run_id: str = "") -> dict:
    """Returns the Registration as a dict plus "model_card" and "decision" (Markdown). Once the model
    is safely stored, this run's training checkpoints are deleted (unless train.keep_checkpoints)."""
    setup_logging()
    results = json.loads((Path(results_dir) / RESULTS_FILE).read_text())
    info = TrainingInfo.read(Path(model_dir)).to_dict()
    stats = json.loads((Path(train_dir) / STATS_FILE).read_text())
    settings = config.registry
    registry = ModelRegistry(open_store(settings.registry_uri), settings.model_name)
    decision = decide_promotion(results, settings)
    decision_text = decision_markdown(decision)
    lineage = {
        **run_lineage(config, Path(train_dir)),
        "eval_fingerprint": results["eval_fingerprint"],
        "index_contract": model_card.index_contract(info),
        "training": info,
        "pipeline_run": pipeline_run,
    }

    def card(version: int) -> str:
        return model_card.render(settings.model_name, version, info, results, stats, decision_text)

    local_registry = None if settings.registry_uri.startswith("s3://") else settings.registry_uri
    with diskspace.explained(
            "model registration", {"registry.registry_uri": local_registry, "scratch space (TMPDIR)": tempfile.gettempdir()},
            "The unfinished version stays invisible (it has no manifest) and its files were removed; free space there "
            "(or point registry.registry_uri at a larger volume), then run again: it takes the next version number"):
        registration = registry.register(Path(model_dir), results, lineage, card, decision, owner=pipeline_run)
    if registration.duplicate_of is not None:
        decision_text = (f"**Nothing registered:** these weights are already v{registration.duplicate_of}.\n\n"
                         + decision_text)
    elif decision.promote and not registration.promoted:
        decision_text = f"**Not promoted:** {registration.reasons[-1]}\n\n" + decision_text
    log.info("gate: %s", "promote" if decision.promote else "; ".join(decision.reasons))
    if config.train.checkpoint_uri and run_id and not config.train.keep_checkpoints:
        checkpoints = f"{config.train.checkpoint_uri.rstrip('/')}/{run_id}"
        open_store(checkpoints, create=False).delete_prefix("")
        log.info("deleted this run's checkpoints at %s (train.keep_checkpoints keeps them)", checkpoints)
    return {**asdict(registration), "model_card": card(registration.version), "decision": decision_text}
