"""The training stage: one process, or one per GPU through the launcher."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from .. import diskspace, scratch
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
    local_checkpoints = train.checkpoint_uri if train.checkpoint_uri and "://" not in train.checkpoint_uri else None
    then = ("The model was not exported" + ("; the unfinished checkpoint was removed and a retry resumes from the last "
                                             "complete one" if train.checkpoint_uri else "")
            + ". Free space there or give the task a larger disk (TMPDIR" + (", train.checkpoint_uri" if local_checkpoints else "")
            + " and the output may each point elsewhere), then run again")
    with scratch.work_dir("train") as work, diskspace.explained(
            "training", {"the model output": model_dir, "scratch space (TMPDIR)": work,
                         "train.checkpoint_uri": local_checkpoints}, then, cleanup=diskspace.remover(model_dir)):
        processes = launcher.processes_wanted(train)
        if processes > 1 and recipe.distributed_env()[1] == 1:
            return launcher.launch(Path(train_dir), Path(model_dir), train, Path(work), processes, curves_dir)
        return recipe.train(Path(train_dir), Path(model_dir), train, Path(work), curves_dir, callbacks)
