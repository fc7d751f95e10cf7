"""PrepStats: every count prep makes, written to prep_stats.json and shown in the data card."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

log = logging.getLogger("medembed.prep")


@dataclass
class PrepStats:
    source: str
    rows_read: int = 0
    dropped_bad: int = 0
    dropped_empty: int = 0
    dropped_duplicate: int = 0
    dropped_near_duplicate: int = 0
    rows_kept: int = 0
    rows_by_source: dict[str, int] = field(default_factory=dict)
    headings_removed: int = 0
    pii_action: str = "redact"
    pii_found: dict[str, int] = field(default_factory=dict)
    queries_with_several_answers: int = 0
    near_duplicate_query_clusters: int = 0
    near_duplicate_passage_clusters: int = 0
    groups: int = 0
    largest_group: int = 0
    split_rows: dict[str, int] = field(default_factory=dict)
    split_groups: dict[str, int] = field(default_factory=dict)
    languages: dict[str, int] = field(default_factory=dict)
    token_lengths: dict = field(default_factory=dict)
    train_pairs: int = 0
    dev_pairs: int = 0
    num_negatives: int = 0
    mining_model: str = ""
    mining: dict = field(default_factory=dict)
    eval_queries: int = 0
    eval_corpus: int = 0
    eval_distractors: int = 0
    eval_qrels: int = 0
    groups_crossing_splits: int = 0
    near_duplicate_queries_crossing_splits: int = 0
    # Built-in shifted probes written under eval_data/probes/ (probes.build_shift_probes), by name.
    shift_probes: dict = field(default_factory=dict)
    validation: dict = field(default_factory=dict)
    step_seconds: dict[str, float] = field(default_factory=dict)
    fingerprint: str = ""


class StepTimer:
    """Logs and records how long each prep step took."""

    def __init__(self, stats: PrepStats):
        self.stats, self.last = stats, time.perf_counter()

    def done(self, step: str, message: str = "", *args) -> None:
        now = time.perf_counter()
        self.stats.step_seconds[step] = round(now - self.last, 3)
        self.last = now
        log.info("prep %-12s %6.2fs  " + message, step, self.stats.step_seconds[step], *args)
