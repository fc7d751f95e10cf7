"""Command line: run the pipeline locally, compile it, submit it, schedule it.

    medembed run-local [--profile local] [--set train.epochs=2 ...]
    medembed compile   [--profile cluster] [--output pipeline.yaml]
    medembed submit    --host http://kfp.example/pipeline [--experiment NAME] [--set ...]
    medembed schedule  --host ... --cron "0 0 2 * * *" [--name nightly-retrain]

The pipeline is imported lazily: nothing a KFP task imports may import component definitions.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys
import warnings
from pathlib import Path

from .config import ConfigError, PipelineConfig, load_config

log = logging.getLogger("medembed")
DEFAULT_IR_FILE = "pipeline.yaml"


def _config(args) -> PipelineConfig:
    return load_config(args.profile, args.set)


def _absolute_local_paths(config: PipelineConfig) -> PipelineConfig:
    """Local tasks run as subprocesses; pin relative paths to the caller's working directory."""
    overrides = {}
    if not config.registry.registry_uri.startswith("s3://"):
        overrides["registry.registry_uri"] = str(Path(config.registry.registry_uri).expanduser().resolve())
    uri = config.data.data_uri
    if not uri.startswith(("s3://", "bundled:")):
        overrides["data.data_uri"] = str(Path(uri).expanduser().resolve())
    return config.override(overrides)


def run_local(config: PipelineConfig, runs_dir: Path) -> dict:
    """Run the whole pipeline on this machine through kfp.local; return the registration."""
    import kfp.local

    from pipelines.medical_embedding import build_pipeline

    config = _absolute_local_paths(config)
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
    import shutil

    from .report import HTML_FILE, MARKDOWN_FILE

    evaluation_dir = next(run_root.glob("*/evaluate-models/results"))
    report = run_root / f"eval-{HTML_FILE}"
    shutil.copyfile(evaluation_dir / HTML_FILE, report)
    shutil.copyfile(evaluation_dir / MARKDOWN_FILE, run_root / f"eval-{MARKDOWN_FILE}")
    return {"model_uri": model_uri, "results": results, "manifest": manifest, "run_root": str(run_root),
            "report": str(report)}


def compile_pipeline(config: PipelineConfig, output: Path) -> Path:
    from kfp import compiler

    from pipelines.medical_embedding import build_pipeline

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_pipeline(config, for_cluster=True), str(output))
    return output


def _package_path(args) -> Path:
    """Where submit/schedule keep the compiled IR: --output if given, else a temp file."""
    if args.output:
        return Path(args.output)
    import tempfile

    return Path(tempfile.mkdtemp(prefix="medembed-")) / DEFAULT_IR_FILE


def _client(args):
    import kfp

    return kfp.Client(host=args.host, namespace=args.namespace, existing_token=args.token or None)


def submit(args) -> str:
    config = _config(args)
    package = compile_pipeline(config, _package_path(args))
    client = _client(args)
    run = client.create_run_from_pipeline_package(
        str(package),
        arguments=dict(_parse_params(args.param)),
        run_name=args.run_name or f"{config.registry.model_name}-{dt.datetime.now():%Y%m%d-%H%M%S}",
        experiment_name=args.experiment,
        # None keeps the compiled per-task caching (registration is never cached); True would override it.
        enable_caching=False if args.no_cache else None,
    )
    return run.run_id


def schedule(args) -> str:
    config = _config(args)
    package = compile_pipeline(config, _package_path(args))
    client = _client(args)
    experiment = client.create_experiment(args.experiment, namespace=args.namespace)
    job = client.create_recurring_run(
        experiment_id=experiment.experiment_id,
        job_name=args.name,
        description=f"Recurring retraining of {config.registry.model_name} ({args.cron})",
        cron_expression=args.cron,
        # One retraining at a time, and no burst of missed runs after downtime.
        max_concurrency=1,
        no_catchup=True,
        pipeline_package_path=str(package),
        params=dict(_parse_params(args.param)),
        enable_caching=False if args.no_cache else None,
    )
    return job.recurring_run_id


def _parse_params(items: list[str] | None) -> list[tuple[str, object]]:
    parsed = []
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--param {item!r} is not of the form name=value")
        try:
            parsed.append((key, json.loads(value)))
        except json.JSONDecodeError:
            parsed.append((key, value))
    return parsed


def validate_cron(expression: str) -> str:
    """KFP's scheduler takes six fields, seconds first (`0 0 2 * * *` = 02:00 daily)."""
    if len(expression.split()) != 6:
        raise argparse.ArgumentTypeError(f"cron {expression!r} needs 6 fields (seconds first), e.g. '0 0 2 * * *'")
    return expression


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medembed", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p, default_profile):
        p.add_argument("--profile", default=default_profile, help="configuration profile: local or cluster")
        p.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE", help="override a config field")

    p = sub.add_parser("run-local", help="run the whole pipeline on this machine (kfp.local)")
    common(p, "local")
    p.add_argument("--runs-dir", default="runs", help="where local pipeline runs keep their artifacts")

    p = sub.add_parser("compile", help="write the KFP IR YAML")
    common(p, "cluster")
    p.add_argument("--output", default=DEFAULT_IR_FILE)

    for name, help_text in (("submit", "compile and start a run on a KFP endpoint"),
                            ("schedule", "create a recurring retraining run on a KFP endpoint")):
        p = sub.add_parser(name, help=help_text)
        common(p, "cluster")
        p.add_argument("--host", required=True, help="KFP API endpoint, e.g. http://localhost:8080")
        p.add_argument("--namespace", default=None)
        # kfp.Client loads no kubeconfig credentials when --host is given: pass a token for auth'd endpoints.
        p.add_argument("--token", default=None, help="bearer token, e.g. $(kubectl create token default-editor "
                       "-n PROFILE_NAMESPACE --audience pipelines.kubeflow.org); default: none")
        p.add_argument("--experiment", default="medical-embeddings")
        p.add_argument("--param", action="append", metavar="NAME=VALUE", help="pipeline parameter for this run")
        p.add_argument("--output", default=None, help="also keep the compiled IR here")
        p.add_argument("--no-cache", action="store_true")
        if name == "submit":
            p.add_argument("--run-name", default=None)
        else:
            p.add_argument("--cron", required=True, type=validate_cron, help="6 fields, seconds first")
            p.add_argument("--name", default="medical-embeddings-retrain")
    return parser


def main(argv: list[str] | None = None) -> int:
    from .models import setup_logging

    setup_logging()
    try:
        args = build_parser().parse_args(argv)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        if args.command == "run-local":
            from .evaluation import comparison_text

            outcome = run_local(_config(args), Path(args.runs_dir))
            gate = outcome["manifest"]["gate"]
            print("\nBase vs fine-tuned, per Matryoshka dimension:")
            print(comparison_text(outcome["results"]))
            print(f"\nrun artifacts: {outcome['run_root']}")
            print("promoted to champion" if gate["promote"] else "not promoted: " + "; ".join(gate["reasons"]))
            print(f"model: {outcome['model_uri']}")
        elif args.command == "compile":
            print(f"pipeline IR: {compile_pipeline(_config(args), Path(args.output)).resolve()}")
        elif args.command == "submit":
            print(f"run: {submit(args)}")
        elif args.command == "schedule":
            print(f"recurring run: {schedule(args)}")
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
