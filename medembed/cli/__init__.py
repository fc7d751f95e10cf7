"""Command line: run the pipeline locally, compile it, submit it, schedule it.

    medembed run-local [--profile local] [--set train.epochs=2 ...]
    medembed compile   [--profile cluster] [--set section.field=value ...] [--output pipeline.yaml]
    medembed preflight [--namespace NS] [--minio-endpoint URL] [--kubeconfig F]   (checks before a GPU run)
    medembed submit    [--host URL] [--wait] [--skip-preflight] [--set ...] [--param NAME=VALUE ...]
    medembed runs      list | get RUN_ID | wait RUN_ID | terminate RUN_ID
    medembed schedule  --cron "0 0 2 * * *" [--name nightly-retrain]   (running it again replaces it)
    medembed schedules list | pause NAME | resume NAME | delete NAME
    medembed models    list | show REF | pull REF --to DIR | promote NAME:N | rollback NAME | diff A B

Every command resolves and validates the configuration before any work starts: a bad value ends
in one line naming the field, the value and what is accepted, with exit code 2.

`--set section.field=value` works for every field. `compile` bakes it into the pipeline's defaults;
`submit`/`schedule` send it with the run (a named run parameter or an entry of `overrides`), except
cluster.* which places tasks and so is compiled in. `--param NAME=VALUE` sets a named run parameter
(values read as JSON: `epochs=3`, `matryoshka_dims=[768,256]`) or `overrides={"train.lora_r": 8}`.

The pipeline is imported lazily: nothing a KFP task imports may import component definitions.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from ..cluster import commands as cluster_commands
from ..config import COMPILE_TIME_SECTIONS, RUN_PARAMETERS, ConfigError, PipelineConfig, load_config, split_assignment
from . import models as model_commands

log = logging.getLogger("medembed")
DEFAULT_IR_FILE = "pipeline.yaml"
OVERRIDES = "overrides"


# ---------------------------------------------------------------- configuration from the command line


def _config(args) -> PipelineConfig:
    return load_config(args.profile, args.set)


def run_plan(profile: str, sets: list[str] | None, params: list[str] | None) -> tuple[PipelineConfig, dict, PipelineConfig]:
    """For submit/schedule: (config to compile, the run's parameter values, the config the run will use).

    cluster.* settings are compiled in; every other `--set` travels with the run as its named
    parameter or in `overrides`; `--param` adds named parameters or overrides. The run's config
    is resolved here exactly as the pipeline's first task will resolve it, so a bad value fails
    now, not on the cluster."""
    compile_sets, run_sets = [], {}
    for item in sets or []:
        dotted, value = split_assignment(item)
        if dotted.partition(".")[0] in COMPILE_TIME_SECTIONS:
            compile_sets.append(item)
        else:
            run_sets[dotted] = value
    compiled = load_config(profile, compile_sets)
    named_for = {path: name for name, path in RUN_PARAMETERS.items()}
    run_values: dict = {}
    overrides: dict = {}
    for dotted, value in run_sets.items():
        if dotted in named_for:
            run_values[named_for[dotted]] = value
        else:
            overrides[dotted] = value
    for name, value in parse_params(params):
        if name == OVERRIDES:
            if not isinstance(value, dict):
                raise ConfigError(f"--param overrides={value!r}: expected a JSON object, e.g. '{{\"train.lora_r\": 8}}'")
            overrides.update(value)
        elif name in RUN_PARAMETERS:
            run_values[name] = value
        else:
            raise ConfigError(f"--param {name}: unknown run parameter; known: {', '.join(RUN_PARAMETERS)}, {OVERRIDES}")
    # Validates every value now, exactly as the pipeline's configuration task will.
    resolved = compiled.with_run_parameters(run_values, overrides)
    arguments = {name: _jsonable(resolved.value(RUN_PARAMETERS[name])) for name in run_values}
    if overrides:
        arguments[OVERRIDES] = {dotted: _jsonable(resolved.value(dotted)) for dotted in overrides}
    return compiled, arguments, resolved


def _jsonable(value):
    return list(value) if isinstance(value, tuple) else value


def parse_params(items: list[str] | None) -> list[tuple[str, object]]:
    parsed = []
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--param {item!r} is not of the form name=value")
        try:
            parsed.append((key.strip(), json.loads(value)))
        except json.JSONDecodeError:
            parsed.append((key.strip(), value))
    return parsed


# ---------------------------------------------------------------- commands


def compile_pipeline(config: PipelineConfig, output: Path) -> Path:
    from kfp import compiler

    from pipelines.medical_embedding import build_pipeline

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_pipeline(config, for_cluster=True), str(output))
    return output


def run_local_command(args) -> None:
    from ..evaluate.tables import comparison_text, guard_text
    from ..local_run import run_local

    outcome = run_local(_config(args), Path(args.runs_dir))
    print(f"\nrun artifacts: {outcome['run_root']}")
    if not outcome["trained"]:
        print(f"nothing trained: {outcome['reason']}")
        print(f"champion: v{outcome['champion']}" if outcome["champion"] is not None
              else f"no champion yet; the same inputs made v{outcome['version']}")
    else:
        print("\nBase vs fine-tuned, per Matryoshka dimension:")
        print(comparison_text(outcome["results"]))
        if guards := guard_text(outcome["results"]):
            print("\nGuard collections (built-in shifted probes, extra collections), NDCG@10 base -> fine-tuned, "
                  "delta [95% interval]:")
            print(guards)
        print(f"evaluation report: {outcome['report']}")
        print(f"v{outcome['version']}: " + outcome["decision"].splitlines()[0].replace("**", ""))
    print(f"model: {outcome['model_uri']}")


# ---------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medembed", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p, default_profile):
        p.add_argument("--profile", default=default_profile, help="configuration profile: local or cluster")
        p.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE", help="set any config field")

    p = sub.add_parser("run-local", help="run the whole pipeline on this machine (kfp.local)")
    common(p, "local")
    p.add_argument("--runs-dir", default="runs", help="where local pipeline runs keep their artifacts")

    p = sub.add_parser("compile", help="write the KFP IR YAML")
    common(p, "cluster")
    p.add_argument("--output", default=DEFAULT_IR_FILE)

    # preflight, submit, runs, schedule, schedules: medembed/cluster/commands.py (submit and schedule plan
    # the run with run_plan above).
    cluster_commands.add_commands(sub, common)
    # models list|show|pull|promote|rollback|diff: medembed/cli/models.py
    model_commands.add_commands(sub, common)

    return parser


def main(argv: list[str] | None = None) -> int:
    from ..local_run import LocalRunFailed
    from ..models import setup_logging

    args = build_parser().parse_args(argv)
    setup_logging()
    if args.command == "models":
        # Results and errors are the command's own lines: no INFO logs, no urllib3 retry warnings on stderr.
        logging.getLogger("medembed").setLevel(logging.WARNING)
        logging.getLogger("urllib3").setLevel(logging.ERROR)
        return model_commands.run(args)
    if args.command in cluster_commands.COMMANDS:
        return cluster_commands.run(args, plan=run_plan, compile_pipeline=compile_pipeline)
    try:
        if args.command == "run-local":
            run_local_command(args)
        elif args.command == "compile":
            print(f"pipeline IR: {compile_pipeline(_config(args), Path(args.output)).resolve()}")
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except LocalRunFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
