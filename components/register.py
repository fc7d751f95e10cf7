from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Markdown, Model, Output

from medembed.config import component_image


@dsl.component(base_image=component_image(), install_kfp_package=False)
def register_model(
    model: Input[Model],
    results: Input[Artifact],
    train_data: Input[Dataset],
    registry_uri: str,
    model_name: str,
    min_ndcg_gain: float,
    pipeline_run: str,
    model_card: Output[Markdown],
) -> NamedTuple("Registration", [("version", int), ("model_uri", str), ("promoted", bool)]):
    """Store a new model version with metrics and card; promote it only if it wins the gate."""
    from collections import namedtuple
    from pathlib import Path

    from medembed import stages
    from medembed.config import RegistryConfig

    config = RegistryConfig(registry_uri=registry_uri, model_name=model_name, min_ndcg_gain=min_ndcg_gain)
    registration = stages.register(Path(model.path), Path(results.path), Path(train_data.path), config, pipeline_run)
    Path(model_card.path).write_text(registration["model_card"])
    outputs = namedtuple("Registration", ["version", "model_uri", "promoted"])
    return outputs(registration["version"], registration["model_uri"], registration["promoted"])
