from typing import NamedTuple

from kfp.dsl import Dataset, Input, Markdown, Metrics, Output


def check_changes(
    config: dict,
    train_data: Input[Dataset],
    decision: Output[Markdown],
    change_metrics: Output[Metrics],
) -> NamedTuple("Changes", [("retrain", bool), ("reason", str), ("champion_uri", str)]):
    """Whether this run has anything new to train on: its prepared data, base model and training
    settings against the champion's. Never cached; the answer and why are shown in the UI."""
    import json
    import logging
    from collections import namedtuple
    from pathlib import Path

    from medembed.config import PipelineConfig
    from medembed.lineage import check_changes as check
    from medembed.models import setup_logging

    setup_logging()
    result = check(PipelineConfig.from_dict(config), Path(train_data.path))
    Path(decision.path).write_text(result.markdown(), encoding="utf-8")
    change_metrics.log_metric("retrain", float(result.retrain))
    # The scalars also as a file: kfp.local's cache only replays a task whose output artifacts all exist as files.
    Path(change_metrics.path).write_text(json.dumps(change_metrics.metadata))
    logging.getLogger("medembed").info("%s %s", "training:" if result.retrain else "nothing to train:", result.reason)
    outputs = namedtuple("Changes", ["retrain", "reason", "champion_uri"])
    return outputs(result.retrain, result.reason, result.champion_uri)


def keep_champion(reason: str, champion_uri: str, summary: Output[Markdown]) -> str:
    """The branch of a run that found nothing new: the champion stays, and the UI says why."""
    from pathlib import Path

    Path(summary.path).write_text(f"**Nothing trained or registered.** {reason}\n\nChampion: `{champion_uri}`\n",
                                  encoding="utf-8")
    return champion_uri
