from kfp.dsl import Markdown, Output


def resolve_config(
    profile_config: dict,
    overrides: dict,
    data_uri: str,
    base_model: str,
    matryoshka_dims: list,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    loss: str,
    force_retrain: bool,
    registry_uri: str,
    model_name: str,
    notify_url: str,
    resolved_config: Output[Markdown],
) -> dict:
    """The run's configuration, once: the compiled profile, then the run form's named parameters
    (these inputs, named as in medembed.config.RUN_PARAMETERS), then `overrides`; validated here,
    before any other task starts, shown in the UI, and handed to every stage as one dict."""
    run_values = {name: value for name, value in locals().items()
                  if name not in ("profile_config", "overrides", "resolved_config")}
    from medembed.config import PipelineConfig
    from medembed.models import setup_logging

    setup_logging()
    config = PipelineConfig.from_dict(profile_config).with_run_parameters(run_values, overrides)
    with open(resolved_config.path, "w", encoding="utf-8") as handle:
        handle.write(config.to_markdown())
    print(config.to_json())
    return config.to_dict()
