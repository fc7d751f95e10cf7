from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

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
):
    """Fine-tune with MatryoshkaLoss(MultipleNegativesRankingLoss); bf16 on GPU."""
    from pathlib import Path

    from medembed import stages
    from medembed.config import TrainConfig

    config = TrainConfig(
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
    result = stages.train(Path(train_data.path), Path(model.path), config)
    model.metadata.update(
        {"base_model": base_model, "dims": result.matryoshka_dims, "framework": "sentence-transformers"}
    )
    for name in ("train_loss", "train_seconds", "steps", "train_pairs"):
        training_metrics.log_metric(name, float(getattr(result, name)))
