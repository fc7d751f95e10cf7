from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Metrics, Model, Output


def evaluate_models(
    config: dict,
    eval_data: Input[Dataset],
    model: Input[Model],
    metrics: Output[Metrics],
    report: Output[Markdown],
    report_html: Output[HTML],
    results: Output[Artifact],
):
    """Base vs fine-tuned at every Matryoshka dim x storage precision: scalar metrics named for
    KFP's run-compare view, an HTML report with plots, a Markdown summary and results.json."""
    import json
    import shutil
    from pathlib import Path

    from medembed import artifacts
    from medembed.config import PipelineConfig
    from medembed.evaluate import stage, tables

    scores = stage.run(PipelineConfig.from_dict(config), Path(eval_data.path), Path(model.path), Path(results.path))
    for name, value in tables.kfp_metrics(scores).items():
        metrics.log_metric(name, value)
    # The scalars also as a file: kfp.local's cache only replays a task whose output artifacts all exist as files.
    Path(metrics.path).write_text(json.dumps(metrics.metadata))
    shutil.copyfile(Path(results.path) / artifacts.REPORT_HTML_FILE, report_html.path)
    shutil.copyfile(Path(results.path) / artifacts.REPORT_MARKDOWN_FILE, report.path)
