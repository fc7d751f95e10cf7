"""Stage 1, data prep: ingest, validate, redact, dedup, split by group, mine hard negatives, and write
the training pairs, the IR evaluation set and the data card (see `stage.prepare`)."""

from .ingest import DataError
from .stage import PrepStats, prepare, run

__all__ = ["DataError", "PrepStats", "prepare", "run"]
