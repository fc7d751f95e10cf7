"""One rank of a multi-process training run: `python -m medembed.train.worker <spec.json>` (see launcher)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..config import TrainConfig, parse_section
from ..models import setup_logging
from .recipe import train


def main(argv: list[str]) -> None:
    setup_logging()
    spec = json.loads(Path(argv[0]).read_text())
    train(
        Path(spec["train_dir"]), Path(spec["output_dir"]), parse_section(TrainConfig, spec["config"]),
        Path(spec["work_dir"]), Path(spec["curves_dir"]) if spec["curves_dir"] else None,
    )


if __name__ == "__main__":
    main(sys.argv[1:])
