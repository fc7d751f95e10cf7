from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Markdown, Metrics, Model, Output

from medembed.config import component_image


@dsl.component(base_image=component_image(), install_kfp_package=False)
def evaluate_models(
    eval_data: Input[Dataset],
    model: Input[Model],
    batch_size: int,
    query_chunk_size: int,
    metrics: Output[Metrics],
    report: Output[Markdown],
    results: Output[Artifact],
):
    """Base vs fine-tuned retrieval metrics at every Matryoshka dim."""
    from pathlib import Path

    from medembed import evaluation, stages

    scores = stages.evaluate(Path(eval_data.path), Path(model.path), Path(results.path), batch_size, query_chunk_size)
    for label in ("base", "finetuned"):
        for dim in scores["dims"]:
            for name in evaluation.HEADLINE_METRICS:
                metrics.log_metric(evaluation.kfp_metric_name(name, dim, label), scores[label][str(dim)][name])
    Path(report.path).write_text("# Matryoshka evaluation\n\n" + evaluation.comparison_markdown(scores))
