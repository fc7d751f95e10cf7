"""The training stage: one process, or one per GPU through the launcher."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from .. import scratch
from ..artifacts import TrainingInfo
from ..config import PipelineConfig
from ..models import setup_logging
from . import launcher, recipe

log = logging.getLogger(__name__)


def run(config: PipelineConfig, train_dir: Path, model_dir: Path, curves_dir: Path | None = None,
        run_id: str = "", callbacks: list | None = None) -> TrainingInfo:
    """Fine-tune on train_dir and export to model_dir; `curves_dir` receives training_curves.{json,png,html}.
    With a `run_id`, checkpoints live under train.checkpoint_uri/<run_id>: retries of that pipeline run
    resume from them, other runs never see them."""
    setup_logging()
    train = config.train
    if train.checkpoint_uri and run_id:
        train = dataclasses.replace(train, checkpoint_uri=f"{train.checkpoint_uri.rstrip('/')}/{run_id}")
    with scratch.work_dir("train") as work:
        processes = launcher.processes_wanted(train)
        if processes > 1 and recipe.distributed_env()[1] == 1:
            return launcher.launch(Path(train_dir), Path(model_dir), train, Path(work), processes, curves_dir)
        return recipe.train(Path(train_dir), Path(model_dir), train, Path(work), curves_dir, callbacks)
