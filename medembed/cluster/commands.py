"""Command-line front ends of the cluster operations, for `medembed` (argparse):

    medembed preflight [--namespace NS] [--kubeconfig F] [--context C] [--minio-endpoint URL] [--gpu-scale-from-zero]
    medembed submit    [--wait] [--skip-preflight] [--param NAME=VALUE ...] [--experiment E] [--run-name R] ...
    medembed runs list [--experiment E] [--limit N]
    medembed runs get RUN_ID
    medembed runs wait RUN_ID [--timeout S]
    medembed runs terminate RUN_ID
    medembed schedule  --cron "0 0 2 * * *" [--name N] [--param NAME=VALUE ...]   (replaces the one named N)
    medembed schedules list [--experiment E] | pause NAME | resume NAME | delete NAME

KFP endpoint: --host or KF_PIPELINES_ENDPOINT (in a pod: KFP's in-cluster service); token: --token-file,
KF_PIPELINES_TOKEN, KF_PIPELINES_TOKEN_FILE or the pod's KFP token; namespace: --namespace (default
kubeflow-user-example-com, the manifests' profile).

Exit codes: 0 done (or the run succeeded), 1 the run failed, 2 usage error, 3 the run was canceled,
4 still running when --timeout ran out, 5 cannot talk to KFP / Kubernetes (one line with the fix),
6 preflight failed, 130 interrupted while following (the run goes on).

`add_commands(subparsers, common)` registers the commands on the CLI's subparsers; `run(args, plan=...,
compile_pipeline=...)` executes a parsed command with the CLI's run planning and compiler and returns its
exit code. Heavy imports (kfp, kubernetes) happen inside.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Callable

from . import PROFILE_NAMESPACE
from .runs import EXIT_CLUSTER_ERROR, ClusterError

COMMANDS = ("preflight", "submit", "runs", "schedule", "schedules")
DEFAULT_SCHEDULE = "medical-embeddings-retrain"
EXIT_USAGE, EXIT_PREFLIGHT, EXIT_INTERRUPTED = 2, 6, 130
DEFAULT_EXPERIMENT = "medical-embeddings"


# --- arguments ------------------------------------------------------------------------------------------

def _connection_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("KFP endpoint")
    g.add_argument("--host", default=None, help="KFP API endpoint (default: $KF_PIPELINES_ENDPOINT; in a pod, KFP's "
                   "in-cluster service), e.g. http://localhost:8080 through svc/ml-pipeline-ui")
    g.add_argument("--namespace", default=None, help=f"Kubeflow profile namespace (default: {PROFILE_NAMESPACE})")
    g.add_argument("--token-file", default=None, help="file holding a bearer token for KFP (default: "
                   "$KF_PIPELINES_TOKEN, $KF_PIPELINES_TOKEN_FILE, or the pod's KFP service-account token)")
    # Kept for scripts that pass it; it shows in shell history and `ps`: prefer the two above.
    g.add_argument("--token", default=None, help=argparse.SUPPRESS)
    g.add_argument("--ui-host", default=None, help="Kubeflow UI base for run links (default: $KF_PIPELINES_UI_ENDPOINT "
                   "or --host)")


def _preflight_args(p: argparse.ArgumentParser, in_submit: bool) -> None:
    g = p.add_argument_group("preflight" + (" (skipped with --skip-preflight)" if in_submit else ""))
    g.add_argument("--kubeconfig", default=None, help="kubeconfig file (default: $KUBECONFIG or ~/.kube/config; "
                   "in a pod, its service account)")
    g.add_argument("--context", default=None, help="kubeconfig context (default: the current one)")
    g.add_argument("--minio-endpoint", default=None, help="MinIO as reachable from here (default: $MINIO_ENDPOINT, "
                   "else the in-cluster endpoint), e.g. http://127.0.0.1:9000 through a port-forward")
    g.add_argument("--gpu-scale-from-zero", action="store_true",
                   help="the GPU node pool autoscales from zero: no GPU node yet is a warning, not a failure")
    if not in_submit:
        g.add_argument("--pipeline-root", default=None, help="check this pipeline root instead of kfp-launcher's")


def add_commands(sub, common: Callable[[argparse.ArgumentParser, str], None] | None = None) -> None:
    """Register preflight, submit and runs on `sub` (an argparse subparsers object). `common(parser,
    default_profile)` adds the CLI's --profile/--set options (added here when not given)."""

    def profile_args(p: argparse.ArgumentParser) -> None:
        if common is not None:
            common(p, "cluster")
        else:
            p.add_argument("--profile", default="cluster", help="configuration profile: local or cluster")
            p.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE", help="override a config field")

    p = sub.add_parser("preflight", help="check the cluster before a GPU run (namespace, Secret, GPU nodes, MinIO, "
                       "buckets, data, KFP)")
    profile_args(p)
    _connection_args(p)
    _preflight_args(p, in_submit=False)
    p.add_argument("--param", action="append", metavar="NAME=VALUE",
                   help="a run parameter as for submit (data_uri and registry_uri change what is checked)")

    p = sub.add_parser("submit", help="compile, upload as a new pipeline version, start a run (and follow it)")
    profile_args(p)
    _connection_args(p)
    p.add_argument("--experiment", default=DEFAULT_EXPERIMENT)
    p.add_argument("--run-name", default=None, help="default: <model name>-<date>-<time>")
    p.add_argument("--param", action="append", metavar="NAME=VALUE",
                   help="a run parameter (JSON values: epochs=3, matryoshka_dims=[768,256]) or "
                   "overrides='{\"section.field\": value}'")
    p.add_argument("--pipeline-name", default=None, help="pipeline to add the version to (default: the compiled "
                   "pipeline's name, medical-embedding-finetune)")
    p.add_argument("--pipeline-root", default=None,
                   help="where this run's artifacts go (default: kfp-launcher's defaultPipelineRoot)")
    p.add_argument("--no-cache", action="store_true", help="turn execution caching off for every task of this version")
    p.add_argument("--output", default=None, help="also keep the compiled IR here")
    p.add_argument("--wait", action="store_true", help="follow the run until it ends; the exit code is its outcome")
    p.add_argument("--timeout", type=float, default=None, metavar="SECONDS", help="with --wait: give up after this")
    p.add_argument("--interval", type=float, default=10.0, metavar="SECONDS", help="with --wait: poll interval")
    p.add_argument("--skip-preflight", action="store_true", help="submit without checking the cluster first")
    _preflight_args(p, in_submit=True)

    p = sub.add_parser("runs", help="list, inspect, follow or stop runs")
    runs_sub = p.add_subparsers(dest="runs_command", required=True)
    q = runs_sub.add_parser("list", help="recent runs, newest first")
    _connection_args(q)
    q.add_argument("--experiment", default=None, help="only this experiment's runs")
    q.add_argument("--limit", type=int, default=20)
    for name, help_text in (("get", "a run's tasks, states and durations; for a failed run, the failing task, "
                             "its message and where its logs are"),
                            ("wait", "follow a run until it ends; the exit code is its outcome"),
                            ("terminate", "stop a run")):
        q = runs_sub.add_parser(name, help=help_text)
        _connection_args(q)
        q.add_argument("run_id", metavar="RUN_ID")
        if name == "wait":
            q.add_argument("--timeout", type=float, default=None, metavar="SECONDS")
            q.add_argument("--interval", type=float, default=10.0, metavar="SECONDS")


    p = sub.add_parser("schedule", help="create or replace a recurring retraining run (by name) on a new "
                       "pipeline version")
    profile_args(p)
    _connection_args(p)
    p.add_argument("--cron", required=True, help="6 fields, seconds first, e.g. '0 0 2 * * *' (02:00 daily)")
    p.add_argument("--name", default=DEFAULT_SCHEDULE,
                   help="the schedule's name; an existing recurring run of that name in the experiment is replaced")
    p.add_argument("--experiment", default=DEFAULT_EXPERIMENT)
    p.add_argument("--param", action="append", metavar="NAME=VALUE",
                   help="a run parameter (JSON values: epochs=3) or overrides='{\"section.field\": value}'")
    p.add_argument("--pipeline-name", default=None, help="pipeline to add the version to (default: the compiled "
                   "pipeline's name, medical-embedding-finetune)")
    p.add_argument("--pipeline-root", default=None,
                   help="where the runs' artifacts go (default: kfp-launcher's defaultPipelineRoot)")
    p.add_argument("--no-cache", action="store_true", help="turn execution caching off for every task of this version")
    p.add_argument("--output", default=None, help="also keep the compiled IR here")

    p = sub.add_parser("schedules", help="list, pause, resume or delete recurring runs")
    schedules_sub = p.add_subparsers(dest="schedules_command", required=True)
    q = schedules_sub.add_parser("list", help="recurring runs: name, status, cron, experiment")
    _connection_args(q)
    q.add_argument("--experiment", default=None, help="only this experiment's recurring runs")
    q.add_argument("--json", action="store_true", help="one JSON document on stdout")
    for name, help_text in (("pause", "stop a schedule from starting runs (it is kept)"),
                            ("resume", "let a paused schedule start runs again"),
                            ("delete", "delete a schedule (runs it started are kept)")):
        q = schedules_sub.add_parser(name, help=help_text)
        _connection_args(q)
        q.add_argument("name", metavar="NAME")
        q.add_argument("--experiment", default=DEFAULT_EXPERIMENT)


# --- commands -------------------------------------------------------------------------------------------

def _settings(args):
    from . import runs

    return runs.resolve_settings(host=args.host, namespace=args.namespace, token=args.token,
                                 token_file=args.token_file, ui_host=args.ui_host)


Plan = Callable[[str, "list[str] | None", "list[str] | None"], tuple]
Compile = Callable[[object, Path], Path]


def _plan(args, plan: Plan | None):
    """(config to compile, the run's arguments, the config the run will use): the CLI's own planning
    (medembed.cli.run_plan: --set / --param semantics, validated as the pipeline will)."""
    if plan is None:
        raise TypeError("commands.run(..., plan=medembed.cli.run_plan) is needed for preflight and submit")
    return plan(args.profile, args.set, args.param)


def _preflight(args, config, settings, kfp_check: Callable[[], str]) -> list:
    from . import preflight

    try:
        kube = preflight.kube_client(kubeconfig=args.kubeconfig, context=args.context)
    except ClusterError as exc:
        kube = exc
    target = preflight.PreflightTarget.from_config(config, namespace=settings.namespace,
                                                   pipeline_root=getattr(args, "pipeline_root", None))
    return preflight.run_preflight(target, kube=kube, minio_endpoint=args.minio_endpoint, kfp_check=kfp_check,
                                   gpu_scale_from_zero=args.gpu_scale_from_zero)


def _kfp_detail(settings, multi_user: bool) -> str:
    mode = "multi-user" if multi_user else "single-user"
    return f"healthy at {settings.host} ({mode}; token: {settings.token_source})"


def cmd_preflight(args, out, plan: Plan | None = None, compile_pipeline: Compile | None = None) -> int:
    from . import preflight, runs

    _, _, config = _plan(args, plan)  # checks what the run would use: --set / --param data_uri, registry_uri
    try:
        settings = _settings(args)
    except ClusterError as exc:
        settings, settings_error = None, exc
    else:
        settings_error = None

    def kfp_check() -> str:
        if settings_error is not None:
            raise settings_error
        return _kfp_detail(settings, runs.check_health(settings))

    namespaced = settings or runs.KfpSettings(host="", namespace=args.namespace or PROFILE_NAMESPACE, ui_host="")
    checks = _preflight(args, config, namespaced, kfp_check)
    print(preflight.format_checks(checks), file=out)
    return 0 if preflight.passed(checks) else EXIT_PREFLIGHT


def _follow(session, run_id: str, args, out) -> int:
    from . import runs

    try:
        report = runs.wait(session, run_id, interval=args.interval, timeout=args.timeout,
                           display=runs.ProgressDisplay(out))
    except KeyboardInterrupt:
        print(f"\nstopped following; the run goes on: medembed runs wait {run_id} | medembed runs terminate {run_id}",
              file=out)
        return EXIT_INTERRUPTED
    print(runs.format_report(report), file=out)
    return runs.exit_code(report.state)


def cmd_submit(args, out, plan: Plan | None = None, compile_pipeline: Compile | None = None) -> int:
    from . import preflight, runs

    compiled, arguments, config = _plan(args, plan)  # a bad value ends here: exit 2, nothing contacted
    if compile_pipeline is None:
        raise TypeError("commands.run(..., compile_pipeline=medembed.cli.compile_pipeline) is needed for submit")
    settings = _settings(args)
    session = runs.connect(settings)  # unreachable or refused: one line, before anything else
    if not args.skip_preflight:
        checks = _preflight(args, config, settings, lambda: _kfp_detail(settings, session.multi_user))
        print(preflight.format_checks(checks), file=out)
        if not preflight.passed(checks):
            print("not submitted: fix the failed checks above, or pass --skip-preflight", file=out)
            return EXIT_PREFLIGHT
    now = dt.datetime.now()
    run_name = args.run_name or f"{config.registry.model_name}-{now:%Y%m%d-%H%M%S}"
    description = _describe_run(args, compiled)
    with _package(args, compiled, compile_pipeline) as package:
        sub = runs.submit(session, package, experiment=args.experiment, run_name=run_name, params=arguments,
                          pipeline_name=args.pipeline_name, description=description,
                          pipeline_root=args.pipeline_root)
    print(f"pipeline: {sub.pipeline_name}, version {sub.version_name}", file=out)
    print(f"run: {sub.run_id}", file=out)
    print(f"url: {sub.url}", file=out)
    if not args.wait:
        return 0
    return _follow(session, sub.run_id, args, out)


def cmd_runs(args, out, plan: Plan | None = None, compile_pipeline: Compile | None = None) -> int:
    from . import runs

    session = runs.connect(_settings(args))
    if args.runs_command == "list":
        print(runs.format_runs(runs.list_runs(session, experiment=args.experiment, limit=args.limit)), file=out)
        return 0
    if args.runs_command == "get":
        print(runs.format_report(runs.get_run(session, args.run_id)), file=out)
        return 0
    if args.runs_command == "wait":
        return _follow(session, args.run_id, args, out)
    if args.runs_command == "terminate":
        report = runs.terminate(session, args.run_id)
        print(f"run {args.run_id}: {report.state} (terminate requested); medembed runs wait {args.run_id} "
              "to see it end", file=out)
        return 0
    raise AssertionError(args.runs_command)


@contextlib.contextmanager
def _package(args, compiled, compile_pipeline: Compile):
    """The pipeline compiled for one upload (submit or schedule): caching off with --no-cache, a copy kept at
    --output. The compiled file lives only as long as the upload: nothing is left in temp folders."""
    from . import runs

    with tempfile.TemporaryDirectory(prefix="medembed-upload-") as tmp:
        package = compile_pipeline(compiled, Path(tmp) / "pipeline.yaml")
        if args.no_cache:
            runs.disable_caching(package)
        if args.output:
            Path(args.output).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(package, args.output)
        yield package


def _describe_run(args, compiled) -> str:
    return (f"profile {compiled.profile}" + (f"; --set {' '.join(args.set)}" if args.set else "")
            + ("; caching off" if args.no_cache else ""))


def cmd_schedule(args, out, plan: Plan | None = None, compile_pipeline: Compile | None = None) -> int:
    from . import runs, schedules

    # Everything that can be checked here is checked before KFP is contacted: the cron, the name, the config.
    schedules.validate_cron(args.cron)
    schedules.validate_name(args.name)
    compiled, arguments, config = _plan(args, plan)
    if compile_pipeline is None:
        raise TypeError("commands.run(..., compile_pipeline=medembed.cli.compile_pipeline) is needed for schedule")
    session = runs.connect(_settings(args))
    description = _describe_run(args, compiled)
    with _package(args, compiled, compile_pipeline) as package:
        result = schedules.create_or_replace(
            session, package, name=args.name, cron=args.cron, experiment=args.experiment, params=arguments,
            pipeline_name=args.pipeline_name, pipeline_root=args.pipeline_root,
            description=f"Recurring retraining of {config.registry.model_name}, schedule {args.name}; {description}")
    new = result.schedule
    print(f"pipeline: {result.pipeline_name}, version {result.version_name}", file=out)
    print(f"recurring run: {new.name} ({new.recurring_run_id}): {schedules.describe(new)}; one run at a time, "
          "no catch-up of missed runs", file=out)
    for old in result.replaced:
        print(f"replaced: {old.recurring_run_id} ({schedules.describe(old)}), deleted", file=out)
    print(f"url: {result.url}", file=out)
    return 0


def cmd_schedules(args, out, plan: Plan | None = None, compile_pipeline: Compile | None = None) -> int:
    import json

    from . import runs, schedules

    session = runs.connect(_settings(args))
    if args.schedules_command == "list":
        rows = schedules.list_schedules(session, experiment=args.experiment)
        experiments = schedules.experiment_names(session)
        if args.json:
            print(json.dumps([{**row.to_dict(), "experiment": experiments.get(row.experiment_id or "")}
                              for row in rows], indent=2), file=out)
        else:
            print(schedules.format_schedules(rows, experiments), file=out)
        return 0
    if args.schedules_command == "delete":
        for row in schedules.delete(session, args.name, args.experiment):
            print(f"deleted {row.name} ({row.recurring_run_id}); the runs it started are kept", file=out)
        return 0
    enabled = args.schedules_command == "resume"
    for row, changed in schedules.set_enabled(session, args.name, args.experiment, enabled):
        state = "resumed" if enabled else "paused"
        print(f"{state} {row.name} ({row.recurring_run_id})" if changed
              else f"{row.name} ({row.recurring_run_id}) was already {'enabled' if enabled else 'paused'}", file=out)
    return 0


def run(args, out=None, err=None, *, plan: Plan | None = None, compile_pipeline: Compile | None = None) -> int:
    """Execute a parsed cluster command; ClusterError -> one line on stderr and its exit code.
    `plan` and `compile_pipeline` are the CLI's (medembed.cli.run_plan, medembed.cli.compile_pipeline):
    passed in, so that this module does not import the CLI that imports it."""
    from ..config import ConfigError

    out, err = out or sys.stdout, err or sys.stderr
    handlers = {"preflight": cmd_preflight, "submit": cmd_submit, "runs": cmd_runs, "schedule": cmd_schedule,
                "schedules": cmd_schedules}
    try:
        return handlers[args.command](args, out, plan=plan, compile_pipeline=compile_pipeline)
    except ClusterError as exc:
        print(f"error: {exc}", file=err)
        return getattr(exc, "exit_code", EXIT_CLUSTER_ERROR)
    except ConfigError as exc:
        print(f"error: {exc}", file=err)
        return EXIT_USAGE
