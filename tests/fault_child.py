"""One stage of the pipeline in its own process, as a KFP task runs it (the fault suite's child):

    python tests/fault_child.py STAGE CONFIG_JSON PATH...

STAGE is prep, train, evaluate or register; CONFIG_JSON the `--set` values over the local profile;
the paths are the stage's input and output folders, in the order of its `stage.run`. An exception
propagates as in a KFP task: a traceback and exit code 1 (its last line is what the run shows)."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(stage: str, overrides: str, *paths: str) -> None:
    from medembed.config import load_config

    config = load_config("local", json.loads(overrides))
    folders = [Path(p) for p in paths]
    if stage == "prep":
        from medembed.prep import stage as prep

        stats = prep.run(config, *folders)
        print(json.dumps({"train_pairs": stats.train_pairs}))
    elif stage == "train":
        from medembed.train import stage as train

        info = train.run(config, *folders[:2], curves_dir=folders[2] if len(folders) > 2 else None, run_id="fault-run")
        print(json.dumps({"steps": info.steps, "resumed_from_step": info.resumed_from_step}))
    elif stage == "evaluate":
        from medembed.evaluate import stage as evaluate

        evaluate.run(config, *folders)
        print(json.dumps({"ok": True}))
    elif stage == "register":
        from medembed.register import stage as register

        registration = register.run(config, *folders)
        print(json.dumps({"version": registration["version"], "promoted": registration["promoted"]}))
    else:
        raise SystemExit(f"unknown stage {stage!r}")




# ---------------------------------------------------------------- disk-full scenarios, one process


def _usage(path: Path) -> tuple[int, int]:
    import os

    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize, stat.f_blocks * stat.f_frsize


def _fill(mount: Path, leave: int) -> None:
    """Take all but `leave` bytes of the filesystem with one file."""
    free, _ = _usage(mount)
    with open(mount / "FILLER", "wb") as handle:
        handle.write(b"\0" * max(0, free - leave))


def _files(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file()} if root.exists() else {}


def scenarios(spec_file: str, out_file: str) -> None:
    """Run each scenario of the spec: fill the small disk but `leave` bytes, run one stage (its
    outputs, scratch or store on the small disk), record the error and what is left there; then free
    the space and run the same stage again (`retry`), recording that too."""
    import os
    import tempfile
    import traceback

    from medembed.config import load_config

    spec = json.loads(Path(spec_file).read_text())
    mount = Path(spec["mount"])
    results = {}
    for item in spec["scenarios"]:
        config = load_config("local", item["overrides"])
        tmp = Path(item.get("tmpdir") or spec["default_tmpdir"])
        tmp.mkdir(parents=True, exist_ok=True)
        os.environ["TMPDIR"] = str(tmp)
        tempfile.tempdir = str(tmp)
        record = {}
        for attempt in ("full", "retry"):
            if attempt == "full":
                _fill(mount, item["leave"])
            else:
                (mount / "FILLER").unlink(missing_ok=True)
            outcome = {"free_before": _usage(mount)[0]}
            try:
                outcome["result"] = _run_stage(item["stage"], config, [Path(p) for p in item["paths"]])
                outcome["error"] = None
            except Exception as exc:  # noqa: BLE001 - recorded for the test to judge
                outcome["error"] = {"type": type(exc).__name__, "message": str(exc),
                                    "chained": exc.__cause__ is not None or (exc.__context__ is not None and not exc.__suppress_context__),
                                    "traceback": traceback.format_exc()[-4000:]}
            outcome["files"] = {label: _files(Path(path)) for label, path in item["watch"].items()}
            outcome["tmp_files"] = _files(tmp)
            record[attempt] = outcome
            if item.get("no_retry"):
                break
        if item.get("promote_after") and record["retry"]["error"] is None:
            from medembed.registry import ModelRegistry
            from medembed.storage import open_store

            ModelRegistry(open_store(config.registry.registry_uri), config.registry.model_name).promote(
                record["retry"]["result"]["version"], reason="the fault suite needs a champion")
        results[item["name"]] = record
        Path(out_file).write_text(json.dumps(results, indent=1))
    (mount / "FILLER").unlink(missing_ok=True)
    Path(out_file).write_text(json.dumps(results, indent=1))


def _run_stage(stage: str, config, folders: list[Path]):
    if stage == "prep":
        from medembed.prep import stage as prep

        return {"train_pairs": prep.run(config, *folders).train_pairs}
    if stage == "train":
        from medembed.train import stage as train

        info = train.run(config, folders[0], folders[1], run_id="fault-run")
        return {"steps": info.steps, "resumed_from_step": info.resumed_from_step}
    if stage == "evaluate":
        from medembed.evaluate import stage as evaluate

        return {"dims": evaluate.run(config, *folders)["dims"]}
    if stage == "register":
        from medembed.register import stage as register

        registration = register.run(config, *folders)
        return {"version": registration["version"], "promoted": registration["promoted"]}
    raise ValueError(stage)


def train_watched(overrides: str, train_dir: str, model_dir: str) -> None:
    """The training stage with a line per finished step on stdout (`STEP n`), so a parent can kill it at
    a chosen step; at the end one JSON line with the steps this attempt ran."""
    from transformers import TrainerCallback

    from medembed.config import load_config
    from medembed.train import stage as train

    ran = []

    class Announce(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            ran.append(state.global_step)
            print(f"STEP {state.global_step}", flush=True)

    info = train.run(load_config("local", json.loads(overrides)), Path(train_dir), Path(model_dir), run_id="killed-run",
                     callbacks=[Announce()])
    print("RESULT " + json.dumps({"steps": info.steps, "resumed_from_step": info.resumed_from_step, "ran": ran}), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "train-watched":
        train_watched(*sys.argv[2:])
        sys.exit(0)
    if sys.argv[1] == "scenarios":
        scenarios(*sys.argv[2:])
    else:
        main(*sys.argv[1:])
