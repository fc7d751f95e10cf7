from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Metrics, Model, Output

from medembed.config import component_image


@dsl.component(base_image=component_image(), install_kfp_package=False)
def evaluate_models(
    eval_data: Input[Dataset],
    model: Input[Model],
    batch_size: int,
    query_chunk_size: int,
    precisions: list,
    rescore_multiplier: int,
    tolerance: float,
    bootstrap_samples: int,
    bootstrap_seed: int,
    confidence: float,
    index_passages: int,
    extra_collections: list,
    metrics: Output[Metrics],
    report: Output[Markdown],
    report_html: Output[HTML],
    results: Output[Artifact],
):
    """Base vs fine-tuned at every Matryoshka dim x storage precision: scalar metrics named for
    KFP's run-compare view, an HTML report with plots, a Markdown summary and results.json."""
    import shutil
    from pathlib import Path

    from medembed import evaluation, report as reports, stages
    from medembed.config import EvalConfig

    config = EvalConfig(
        batch_size=batch_size,
        query_chunk_size=query_chunk_size,
        precisions=tuple(precisions),
        rescore_multiplier=rescore_multiplier,
        tolerance=tolerance,
        bootstrap_samples=bootstrap_samples,
        bootstrap_seed=bootstrap_seed,
        confidence=confidence,
        index_passages=index_passages,
        extra_collections=tuple(extra_collections),
    )
    scores = stages.evaluate(Path(eval_data.path), Path(model.path), Path(results.path), batch_size, query_chunk_size, config)
    for name, value in evaluation.kfp_metrics(scores).items():
        metrics.log_metric(name, value)
    shutil.copyfile(Path(results.path) / reports.HTML_FILE, report_html.path)
    shutil.copyfile(Path(results.path) / reports.MARKDOWN_FILE, report.path)
