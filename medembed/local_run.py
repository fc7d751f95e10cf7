"""The whole pipeline on this machine, through kfp.local: the same components and pipeline as on
the cluster, each task a subprocess, artifacts in a run folder instead of MinIO."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import warnings
from pathlib import Path

from .artifacts import REPORT_HTML_FILE, REPORT_MARKDOWN_FILE
from .config import PipelineConfig


def absolute_local_paths(config: PipelineConfig) -> PipelineConfig:
    """Local tasks run as subprocesses; pin relative paths to the caller's working directory."""
    overrides = {}
    if not config.registry.registry_uri.startswith("s3://"):
        overrides["registry.registry_uri"] = str(Path(config.registry.registry_uri).expanduser().resolve())
    uri = config.data.data_uri
    if not uri.startswith(("s3://", "bundled:")) and "," not in uri and "=" not in uri:
        overrides["data.data_uri"] = str(Path(uri).expanduser().resolve())
    return config.override(overrides)


def run_local(config: PipelineConfig, runs_dir: Path) -> dict:
    """Run the whole pipeline on this machine through kfp.local; return the registration."""
    import kfp.local

    from pipelines.medical_embedding import build_pipeline

    config = absolute_local_paths(config)
    run_root = Path(runs_dir).resolve() / dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_root.mkdir(parents=True, exist_ok=True)
    (run_root / "config.json").write_text(config.to_json())
    # Cluster-only settings (display names, the project image) are expected to be no-ops here.
    warnings.filterwarnings("ignore", message=".*no effect in the current local runner.*")
    warnings.filterwarnings("ignore", message=".*custom or non-Python base image.*")
    kfp.local.init(runner=kfp.local.SubprocessRunner(use_venv=False), pipeline_root=str(run_root))
    pipeline = build_pipeline(config, for_cluster=False)
    task = pipeline()
    model_uri = task.output
    results = json.loads((Path(model_uri).parent / "metrics.json").read_text())
    manifest = json.loads((Path(model_uri).parent / "manifest.json").read_text())
    # The evaluation report (what the Kubeflow UI shows as HTML/Markdown) next to the run's config.
    evaluation_dir = next(run_root.glob("*/evaluate-models/results"))
    report = run_root / f"eval-{REPORT_HTML_FILE}"
    shutil.copyfile(evaluation_dir / REPORT_HTML_FILE, report)
    shutil.copyfile(evaluation_dir / REPORT_MARKDOWN_FILE, run_root / f"eval-{REPORT_MARKDOWN_FILE}")
    return {"model_uri": model_uri, "results": results, "manifest": manifest, "run_root": str(run_root),
            "report": str(report)}
