"""One training process per GPU on one node (torchrun), in-batch negatives gathered across them.

The training stage calls `launch` when more than one process is wanted; torchrun then starts
`python -m medembed.train.worker <spec.json>` per process, each of which runs `recipe.train` with
RANK/WORLD_SIZE set (DDP over NCCL on GPUs, gloo on CPU). Rank 0 writes the model and
training_info.json; the launcher reads the result back from there.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

from ..artifacts import TrainingInfo
from ..config import TrainConfig

log = logging.getLogger(__name__)


def processes_wanted(config: TrainConfig) -> int:
    if config.num_processes > 0:
        return config.num_processes
    import torch

    return max(1, torch.cuda.device_count()) if torch.cuda.is_available() else 1


def launch(train_dir: Path, output_dir: Path, config: TrainConfig, work_dir: Path, nproc: int,
           curves_dir: Path | None) -> TrainingInfo:
    work_dir.mkdir(parents=True, exist_ok=True)
    spec = work_dir / "launch.json"
    spec.write_text(json.dumps({
        "train_dir": str(train_dir), "output_dir": str(output_dir), "work_dir": str(work_dir),
        "curves_dir": str(curves_dir) if curves_dir else None, "config": dataclasses.asdict(config),
    }))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "medembed.train.worker", str(spec)]
    log.info("launching %d training processes: %s", nproc, " ".join(cmd))
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")  # torchrun's default too; said explicitly so CPU ranks don't oversubscribe
    subprocess.run(cmd, check=True, env=env)
    return TrainingInfo.read(Path(output_dir))
