"""One training process per GPU on one node (torchrun), in-batch negatives gathered across them.

`training.train` calls `launch` when more than one process is wanted and it is not itself one of
them; torchrun then starts `python -m medembed.distributed <spec.json>` per process, each of which
runs `training.train` with RANK/WORLD_SIZE set (DDP over NCCL on GPUs, gloo on CPU). Rank 0 writes
the model and training_info.json; the launcher reads the result back from there.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

from .config import TrainConfig, section_from_dict

log = logging.getLogger(__name__)


def processes_wanted(config: TrainConfig) -> int:
    if config.num_processes > 0:
        return config.num_processes
    import torch

    return max(1, torch.cuda.device_count()) if torch.cuda.is_available() else 1


def launch(train_dir: Path, output_dir: Path, config: TrainConfig, work_dir: Path, nproc: int, curves_dir: Path | None):
    from .training import TRAINING_INFO, TrainResult

    work_dir.mkdir(parents=True, exist_ok=True)
    spec = work_dir / "launch.json"
    spec.write_text(json.dumps({
        "train_dir": str(train_dir), "output_dir": str(output_dir), "work_dir": str(work_dir),
        "curves_dir": str(curves_dir) if curves_dir else None, "config": dataclasses.asdict(config),
    }))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", "medembed.distributed", str(spec)]
    log.info("launching %d training processes: %s", nproc, " ".join(cmd))
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")  # torchrun's default too; said explicitly so CPU ranks don't oversubscribe
    subprocess.run(cmd, check=True, env=env)
    info = json.loads((Path(output_dir) / TRAINING_INFO).read_text())
    return TrainResult(**info)


def _config_from_dict(values: dict) -> TrainConfig:
    return section_from_dict(TrainConfig, values, ignore_unknown=True)


def main(argv: list[str]) -> None:
    from .models import setup_logging
    from .training import train

    setup_logging()
    spec = json.loads(Path(argv[0]).read_text())
    train(
        Path(spec["train_dir"]), Path(spec["output_dir"]), _config_from_dict(spec["config"]), Path(spec["work_dir"]),
        Path(spec["curves_dir"]) if spec["curves_dir"] else None,
    )


if __name__ == "__main__":
    main(sys.argv[1:])
