"""The pipeline's run form, generated from the configuration.

The Kubeflow UI's run form (and `submit --param`) shows the named run parameters of
medembed.config.RUN_PARAMETERS, each typed by its config field's annotation and defaulting to the
compiled profile's value, plus `overrides` (any other field, as {"section.field": value}).
Generating the signature keeps one declaration of each knob: the config field.
"""

from __future__ import annotations

import functools
import inspect
import typing
from typing import Any, Callable

from medembed.config import RUN_PARAMETERS, PipelineConfig, field_type

OVERRIDES = "overrides"


class RunForm:
    """The run form's values inside the pipeline body (KFP placeholders at compile time)."""

    def __init__(self, values: dict[str, Any]):
        self.values = values

    @property
    def arguments(self) -> dict[str, Any]:
        """Every run-form value by name: exactly the inputs of components/resolve.py."""
        return dict(self.values)


def _kfp_type(annotation: Any) -> type:
    return list if typing.get_origin(annotation) is tuple else annotation


def _kfp_default(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def run_form(config: PipelineConfig) -> Callable[[Callable[[RunForm], Any]], Callable]:
    """Give `body(form)` the pipeline signature KFP reads: RUN_PARAMETERS with the profile's defaults,
    then overrides: dict = {}."""
    parameters = [
        inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=_kfp_type(field_type(path)),
                          default=_kfp_default(config.value(path)))
        for name, path in RUN_PARAMETERS.items()
    ]
    parameters.append(inspect.Parameter(OVERRIDES, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=dict, default={}))
    names = [p.name for p in parameters]

    def decorate(body: Callable[[RunForm], Any]) -> Callable:
        @functools.wraps(body)
        def pipeline_function(*args, **kwargs):
            # KFP passes the pipeline's inputs positionally, in signature order.
            values = dict(zip(names, args))
            values.update(kwargs)
            return body(RunForm(values))

        return_annotation = inspect.signature(body).return_annotation
        pipeline_function.__signature__ = inspect.Signature(parameters, return_annotation=return_annotation)
        pipeline_function.__annotations__ = {p.name: p.annotation for p in parameters} | {"return": return_annotation}
        del pipeline_function.__wrapped__  # KFP must see the generated signature, not body's
        return pipeline_function

    return decorate
