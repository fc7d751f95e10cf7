"""The registration stage: a new model version with its metrics, card and lineage; promotion if it wins."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

from ..artifacts import RESULTS_FILE, STATS_FILE, TrainingInfo
from ..config import PipelineConfig
from ..models import setup_logging
from ..storage import open_store
from . import model_card
from .registry import ModelRegistry

log = logging.getLogger(__name__)


def run(config: PipelineConfig, model_dir: Path, results_dir: Path, train_dir: Path, pipeline_run: str = "") -> dict:
    setup_logging()
    results = json.loads((Path(results_dir) / RESULTS_FILE).read_text())
    info = TrainingInfo.read(Path(model_dir)).to_dict()
    stats = json.loads((Path(train_dir) / STATS_FILE).read_text())
    settings = config.registry
    registry = ModelRegistry(open_store(settings.registry_uri), settings.model_name)
    lineage = {
        "base_model": info["base_model"],
        "data_source": stats["source"],
        "data_fingerprint": stats["fingerprint"],
        "eval_fingerprint": results["eval_fingerprint"],
        "index_contract": model_card.index_contract(info),
        "training": info,
        "pipeline_run": pipeline_run,
    }

    rendered: list[str] = []

    def render_card(version: int, decision) -> str:
        rendered.append(model_card.render(settings.model_name, version, info, results, stats, decision.promote, decision.reasons))
        return rendered[-1]

    with tempfile.TemporaryDirectory() as work:
        # The card goes into a copy: the input artifact stays untouched.
        staged = Path(work) / "model"
        shutil.copytree(model_dir, staged)
        registration = registry.register(staged, results, lineage, render_card, settings.min_ndcg_gain)
    return {**asdict(registration), "model_card": rendered[-1]}
