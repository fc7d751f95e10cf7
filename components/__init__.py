"""Thin typed KFP adapters over the stages in `medembed`: the run's config and artifacts in, one
call, artifacts out. Each is a plain function; `for_image` makes them KFP components that run in
the given project image (cluster.image), so the image is chosen when the pipeline is compiled."""

from __future__ import annotations

import functools
from typing import NamedTuple

from kfp import dsl

from .changes import check_changes, keep_champion
from .evaluate import evaluate_models
from .prep import prep_data
from .record import record_run
from .register import register_model
from .resolve import resolve_config
from .snapshot import snapshot_data
from .train import train_model


class Stages(NamedTuple):
    resolve_config: dsl.base_component.BaseComponent
    snapshot_data: dsl.base_component.BaseComponent
    prep_data: dsl.base_component.BaseComponent
    check_changes: dsl.base_component.BaseComponent
    keep_champion: dsl.base_component.BaseComponent
    train_model: dsl.base_component.BaseComponent
    evaluate_models: dsl.base_component.BaseComponent
    register_model: dsl.base_component.BaseComponent
    record_run: dsl.base_component.BaseComponent


@functools.lru_cache(maxsize=None)
def for_image(image: str) -> Stages:
    # The image already holds kfp and this project: no per-task pip install (it would also break offline runs).
    def component(func):
        return dsl.component(func, base_image=image, install_kfp_package=False)

    return Stages(*(component(f) for f in (resolve_config, snapshot_data, prep_data, check_changes, keep_champion,
                                           train_model, evaluate_models, register_model, record_run)))


__all__ = ["Stages", "for_image"]
