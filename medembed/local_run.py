"""The whole pipeline on this machine, through kfp.local: the same components and pipeline as on
the cluster, each task a subprocess, artifacts in a run folder instead of MinIO."""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import re
import shutil
import sys
import time
import warnings
from collections import deque
from pathlib import Path

from .artifacts import REPORT_HTML_FILE, REPORT_MARKDOWN_FILE, RESULTS_FILE
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


STAGE_TITLES = {"resolve-config": "configuration", "snapshot-data": "data snapshot", "prep-data": "data prep",
                "check-changes": "changes since the champion", "keep-champion": "nothing new: champion kept",
                "train-model": "training", "evaluate-models": "Matryoshka evaluation",
                "register-model": "model registration", "record-run": "record the run"}
LOG_FILE = "pipeline.log"


class LocalRunFailed(RuntimeError):
    """A task of the local run failed; the message names the stage, the error and the full log."""


class StageConsole(io.TextIOBase):
    """kfp.local's output, split: all of it goes to the run's log file; the console gets each stage's
    start and end, the product's own log messages and progress bars (the executor's input dumps and
    framework warnings stay in the file)."""

    _ANSI = re.compile(r"\x1b\[[0-9;]*m")
    _START = re.compile(r"Executing task '([\w-]+)'")
    _CACHED = re.compile(r"Task '?([\w-]+)'? cache hit")
    _END = re.compile(r"Task '([\w-]+)' finished with status (\w+)")
    _MESSAGE = re.compile(r"\[KFP Executor [^\]]* (INFO|WARNING|ERROR)\]: (.*)")
    _KFP_OWN = ("Looking for component", "Loading KFP component", "Got executor_input", "Wrote executor output")
    _BAR = re.compile(r"^\s*([^|]*?):?\s*(\d+)%\|.*\|\s*(\d+)/(\d+)(.*)")
    # Library bars that say nothing about the run's progress.
    _QUIET_BARS = ("Loading weights", "Writing model shards", "Computing widget examples")
    _EXCEPTION = re.compile(r"^\s*([\w.]+(Error|Exception)|AssertionError): (.+)$")

    def __init__(self, log, console):
        self.log, self.console = log, console
        self.tty = console.isatty()
        self.pending = ""
        self.started: dict[str, float] = {}
        self.recent: deque[str] = deque(maxlen=400)
        self.failed: tuple[str, str] | None = None
        self.last_bar = ""
        self.shown_quarter: dict[str, tuple[int, int]] = {}

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.log.write(text)
        self.pending += text
        while "\n" in self.pending:
            line, self.pending = self.pending.split("\n", 1)
            self._line(self._ANSI.sub("", line))
        return len(text)

    def flush(self) -> None:
        self.log.flush()
        self.console.flush()

    def _say(self, text: str) -> None:
        if self.last_bar and self.tty:
            self.console.write("\n")
        self.last_bar = ""
        self.console.write(text + "\n")
        self.console.flush()

    def _line(self, line: str) -> None:
        if match := self._START.search(line):
            self.started[match.group(1)] = time.monotonic()
            self.recent.clear()
            self._say(f"▶ {STAGE_TITLES.get(match.group(1), match.group(1))}")
        elif match := self._CACHED.search(line):
            self._say(f"↺ {STAGE_TITLES.get(match.group(1), match.group(1))}: same inputs as before, reused from the cache")
        elif match := self._END.search(line):
            task, status = match.groups()
            seconds = time.monotonic() - self.started.get(task, time.monotonic())
            mark = "✓" if status == "SUCCESS" else "✗"
            self._say(f"{mark} {STAGE_TITLES.get(task, task)}: {status.lower()} in {seconds:.0f} s")
            if status != "SUCCESS" and self.failed is None:
                self.failed = (STAGE_TITLES.get(task, task), self._last_exception())
        elif match := self._MESSAGE.search(line):
            if not match.group(2).startswith(self._KFP_OWN):
                self._say(f"    {match.group(2)}" if match.group(1) == "INFO" else f"    {match.group(1)}: {match.group(2)}")
        elif match := self._BAR.search(line):
            name = match.group(1).strip() or "train"
            if not name.startswith(self._QUIET_BARS):
                self._bar(name, int(match.group(2)), f"{name}: {match.group(2)}% {match.group(3)}/{match.group(4)}"
                          f"{match.group(5).split(']')[0]}]")
        else:
            self.recent.append(line)

    def _bar(self, name: str, percent: int, bar: str) -> None:
        if self.tty:
            self.console.write("\r    " + bar.ljust(len(self.last_bar)))
            self.console.flush()
            self.last_bar = bar
            return
        # Not a terminal (CI, a log file): a line per quarter of each bar.
        last_percent, shown = self.shown_quarter.get(name, (101, 0))
        if percent < last_percent:  # a new bar under the same name
            shown = 0
        if percent // 25 > shown:
            shown = percent // 25
            self.console.write("    " + bar + "\n")
        self.shown_quarter[name] = (percent, shown)

    def _last_exception(self) -> str:
        for line in reversed(self.recent):
            if match := self._EXCEPTION.match(line):
                return f"{match.group(1).rsplit('.', 1)[-1]}: {match.group(3)}"
        return "see the log"


@contextlib.contextmanager
def _root_logging_to(stream):
    """This process's own log lines (kfp.local's orchestration notes) go to the run's log file too."""
    import logging

    handlers = [h for h in logging.getLogger().handlers if isinstance(h, logging.StreamHandler)]
    saved = [h.setStream(stream) for h in handlers]
    try:
        yield
    finally:
        for handler, original in zip(handlers, saved):
            handler.setStream(original)


def run_local(config: PipelineConfig, runs_dir: Path) -> dict:
    """Run the whole pipeline on this machine through kfp.local; return the registration.

    The console shows stages, the product's log messages and progress; the complete output of
    every task is in <run folder>/pipeline.log."""
    import kfp.local

    from pipelines.medical_embedding import build_pipeline

    config = absolute_local_paths(config)
    run_root = Path(runs_dir).resolve() / dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_root.mkdir(parents=True, exist_ok=True)
    (run_root / "config.json").write_text(config.to_json())
    log_path = run_root / LOG_FILE
    console = sys.stdout
    console.write(f"local run of the {config.profile!r} profile in {run_root}\n(every task's full output: {log_path})\n")
    # Cluster-only settings (display names, the project image) are expected to be no-ops here.
    warnings.filterwarnings("ignore", message=".*no effect in the current local runner.*")
    warnings.filterwarnings("ignore", message=".*custom or non-Python base image.*")
    with open(log_path, "w", encoding="utf-8") as log:
        stages = StageConsole(log, console)
        with contextlib.redirect_stdout(stages), contextlib.redirect_stderr(log), _root_logging_to(stages):
            # Cached across runs in runs_dir: an unchanged input replays data prep instead of redoing it.
            kfp.local.init(runner=kfp.local.SubprocessRunner(use_venv=False), pipeline_root=str(run_root),
                           enable_caching=True, cache_root=str(Path(runs_dir).resolve() / ".kfp-cache"))
            pipeline = build_pipeline(config, for_cluster=False)
            try:
                pipeline()
            except RuntimeError:
                stage, error = stages.failed or ("the pipeline", "see the log")
                raise LocalRunFailed(f"{stage} failed: {error} (full log: {log_path})") from None
    return _outcome(config, run_root, log_path)


def _task_outputs(run_root: Path, task: str) -> dict | None:
    """A task's output parameters in this run, None when it did not run here (skipped branch)."""
    folder = next(run_root.glob(f"*/{task}"), None)
    if folder is None:
        return None
    return json.loads((folder / "executor_output.json").read_text()).get("parameterValues", {})


def _outcome(config: PipelineConfig, run_root: Path, log_path: Path) -> dict:
    """What the run did: trained and registered (with the gate's decision), or kept the champion.
    Read from the two tasks that are never cached: the change check and the registration."""
    from .registry import ModelRegistry
    from .storage import open_store

    changes = _task_outputs(run_root, "check-changes")
    registration = _task_outputs(run_root, "register-model")
    model_uri = registration["model_uri"] if registration else changes["champion_uri"]
    registry = ModelRegistry(open_store(config.registry.registry_uri, create=False), config.registry.model_name)
    version = registry.version_of(model_uri)
    outcome = {"model_uri": model_uri, "version": version, "results": registry.metrics(version),
               "manifest": registry.manifest(version), "run_root": str(run_root), "log": str(log_path),
               "champion": registry.alias()}
    if registration is None:
        outcome.update(trained=False, reason=changes["reason"])
        return outcome
    register_dir = next(run_root.glob("*/register-model"))
    outcome.update(trained=True, promoted=registration["promoted"],
                   decision=(register_dir / "gate_decision").read_text())
    # The evaluation report (what the Kubeflow UI shows as HTML/Markdown) next to the run's config.
    evaluation_dir = next(run_root.glob("*/evaluate-models/results"))
    outcome["results"] = json.loads((evaluation_dir / RESULTS_FILE).read_text())
    report = run_root / f"eval-{REPORT_HTML_FILE}"
    shutil.copyfile(evaluation_dir / REPORT_HTML_FILE, report)
    shutil.copyfile(evaluation_dir / REPORT_MARKDOWN_FILE, run_root / f"eval-{REPORT_MARKDOWN_FILE}")
    outcome["report"] = str(report)
    return outcome
