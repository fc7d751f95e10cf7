from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output

from medembed.config import component_image


@dsl.component(base_image=component_image(), install_kfp_package=False)
def train_model(
    train_data: Input[Dataset],
    base_model: str,
    matryoshka_dims: list,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    warmup_steps: int,
    eval_steps: int,
    max_seq_length: int,
    query_prompt: str,
    passage_prompt: str,
    seed: int,
    model: Output[Model],
    training_metrics: Output[Metrics],
    training_curves: Output[HTML],
    train_options: dict = {},
    run_id: str = "",
):
    """Fine-tune with MatryoshkaLoss((Cached)MultipleNegativesRankingLoss); bf16 on GPU, one process per
    GPU, checkpoints under `train_options["checkpoint_uri"]/<run_id>` so a KFP retry resumes."""
    import dataclasses
    import shutil
    import tempfile
    from pathlib import Path

    from medembed import curves, stages
    from medembed.config import TrainConfig, section_from_dict

    # The profile's other TrainConfig fields (loss, mini-batch, checkpoints, LoRA...), as plain JSON.
    options = section_from_dict(TrainConfig, dict(train_options), ignore_unknown=True)
    if options.checkpoint_uri and run_id:
        # One folder per pipeline run: its retries share it, other runs never see it.
        options = dataclasses.replace(options, checkpoint_uri=options.checkpoint_uri.rstrip("/") + "/" + run_id)
    config = dataclasses.replace(
        options,
        base_model=base_model,
        # KFP hands list parameters over as JSON numbers, which may arrive as floats.
        matryoshka_dims=tuple(int(d) for d in matryoshka_dims),
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        warmup_steps=warmup_steps,
        eval_steps=eval_steps,
        max_seq_length=max_seq_length,
        query_prompt=query_prompt,
        passage_prompt=passage_prompt,
        seed=seed,
    )
    with tempfile.TemporaryDirectory() as curves_dir:
        result = stages.train(Path(train_data.path), Path(model.path), config, curves_dir=Path(curves_dir))
        # The HTML page inlines its PNG, so the Kubeflow UI shows it from the one artifact.
        shutil.copyfile(Path(curves_dir) / curves.CURVES_HTML, training_curves.path)
    model.metadata.update(
        {"base_model": base_model, "dims": result.matryoshka_dims, "framework": "sentence-transformers",
         "loss": result.loss, "lora_r": result.lora_r}
    )
    for name in ("train_loss", "train_seconds", "steps", "train_pairs", "num_processes", "resumed_from_step"):
        training_metrics.log_metric(name, float(getattr(result, name)))
    if result.best_metric is not None:
        training_metrics.log_metric(f"best_{config.best_metric}", float(result.best_metric))
        training_metrics.log_metric("best_checkpoint_step", float(result.best_checkpoint_step))
