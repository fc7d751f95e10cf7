from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output


def train_model(
    config: dict,
    train_data: Input[Dataset],
    run_id: str,
    model: Output[Model],
    training_metrics: Output[Metrics],
    training_curves: Output[HTML],
):
    """Fine-tune with MatryoshkaLoss((Cached)MultipleNegativesRankingLoss); bf16 on GPU, one process per
    GPU, checkpoints under train.checkpoint_uri/<run_id> so a KFP retry resumes."""
    import json
    import shutil
    import tempfile
    from pathlib import Path

    from medembed.config import PipelineConfig
    from medembed.train import curves, stage

    settings = PipelineConfig.from_dict(config)
    with tempfile.TemporaryDirectory() as curves_dir:
        info = stage.run(settings, Path(train_data.path), Path(model.path), Path(curves_dir), run_id=run_id)
        # The HTML page inlines its PNG, so the Kubeflow UI shows it from the one artifact.
        shutil.copyfile(Path(curves_dir) / curves.CURVES_HTML, training_curves.path)
    model.metadata.update({"base_model": info.base_model, "dims": info.matryoshka_dims,
                           "framework": "sentence-transformers", "loss": info.loss, "lora_r": info.lora_r})
    for name in ("train_loss", "train_seconds", "steps", "train_pairs", "num_processes", "resumed_from_step"):
        training_metrics.log_metric(name, float(getattr(info, name)))
    if info.best_metric is not None:
        training_metrics.log_metric(f"best_{settings.train.best_metric}", float(info.best_metric))
        training_metrics.log_metric("best_checkpoint_step", float(info.best_checkpoint_step))
    # The scalars also as a file: kfp.local's cache only replays a task whose output artifacts all exist as files.
    Path(training_metrics.path).write_text(json.dumps(training_metrics.metadata))
