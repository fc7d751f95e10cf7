"""The four pipeline stages as plain functions over folders and parameters.

KFP components call these with their artifacts' paths; tests call them directly. Nothing here
imports KFP, so the same code runs in a `kfp.local` subprocess, in a cluster pod and in pytest.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

from . import data, evaluation, model_card, report, scratch, training
from .config import DataConfig, EvalConfig, RegistryConfig, TrainConfig
from .models import setup_logging
from .registry import ModelRegistry
from .storage import open_store

log = logging.getLogger(__name__)

RESULTS_FILE = "results.json"


def prep(config: DataConfig, train_dir: Path, eval_dir: Path) -> data.PrepStats:
    setup_logging()
    with scratch.work_dir("prep") as work:
        stats = data.prepare(config, Path(train_dir), Path(eval_dir), Path(work))
    log.info("prep done: %s", json.dumps(asdict(stats)))
    return stats


def train(train_dir: Path, model_dir: Path, config: TrainConfig, curves_dir: Path | None = None) -> training.TrainResult:
    """Fine-tune; `curves_dir` receives training_curves.{json,png,html}. Resumes from
    `config.checkpoint_uri` when an earlier attempt left checkpoints there."""
    setup_logging()
    with scratch.work_dir("train") as work:
        return training.train(Path(train_dir), Path(model_dir), config, Path(work), curves_dir=curves_dir)


def evaluate(eval_dir: Path, model_dir: Path, results_dir: Path, batch_size: int, query_chunk: int,
             config: EvalConfig | None = None) -> dict:
    """results.json plus the HTML and Markdown reports (report.html, report.md) in `results_dir`."""
    setup_logging()
    info = json.loads((Path(model_dir) / training.TRAINING_INFO).read_text())
    # evaluation.evaluate applies batch_size / query_chunk over the rest of `config`.
    results = evaluation.evaluate(
        Path(eval_dir),
        str(model_dir),
        info["base_model"],
        info["matryoshka_dims"],
        info["query_prompt"],
        info["passage_prompt"],
        batch_size,
        query_chunk,
        config,
        max_seq_length=info.get("max_seq_length"),
    )
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / RESULTS_FILE).write_text(json.dumps(results, indent=2))
    report.write_reports(results, results_dir)
    log.info("evaluation:\n%s", evaluation.comparison_text(results))
    return results


def register(model_dir: Path, results_dir: Path, train_dir: Path, config: RegistryConfig, pipeline_run: str = "") -> dict:
    setup_logging()
    results = json.loads((Path(results_dir) / RESULTS_FILE).read_text())
    info = json.loads((Path(model_dir) / training.TRAINING_INFO).read_text())
    stats = json.loads((Path(train_dir) / data.STATS_FILE).read_text())
    registry = ModelRegistry(open_store(config.registry_uri), config.model_name)
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
        rendered.append(model_card.render(config.model_name, version, info, results, stats, decision.promote, decision.reasons))
        return rendered[-1]

    with tempfile.TemporaryDirectory() as work:
        # The card goes into a copy: the input artifact stays untouched.
        staged = Path(work) / "model"
        shutil.copytree(model_dir, staged)
        registration = registry.register(staged, results, lineage, render_card, config.min_ndcg_gain)
    return {**asdict(registration), "model_card": rendered[-1]}
