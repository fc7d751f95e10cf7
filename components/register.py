from typing import NamedTuple

from kfp.dsl import Artifact, Dataset, Input, Markdown, Model, Output


def register_model(
    config: dict,
    model: Input[Model],
    results: Input[Artifact],
    train_data: Input[Dataset],
    pipeline_run: str,
    run_id: str,
    model_card: Output[Markdown],
    gate_decision: Output[Markdown],
) -> NamedTuple("Registration", [("version", int), ("model_uri", str), ("promoted", bool)]):
    """Store a new model version with metrics and card; promote it only if it passes the gate. The
    decision and every comparison behind it are shown in the UI, also when it is refused."""
    from collections import namedtuple
    from pathlib import Path

    from medembed.config import PipelineConfig
    from medembed.register import stage

    registration = stage.run(PipelineConfig.from_dict(config), Path(model.path), Path(results.path),
                             Path(train_data.path), pipeline_run, run_id=run_id)
    Path(model_card.path).write_text(registration["model_card"])
    Path(gate_decision.path).write_text(registration["decision"])
    outputs = namedtuple("Registration", ["version", "model_uri", "promoted"])
    return outputs(registration["version"], registration["model_uri"], registration["promoted"])
