"""Recurring retraining on a KFP endpoint, through the real `kfp.Client` (KFP API v2beta1 recurring runs).

    validate_cron("0 0 2 * * *")                   # 6 fields, seconds first; ConfigError otherwise
    result = create_or_replace(session, package, name="nightly-retrain", cron="0 0 2 * * *",
                               experiment="medical-embeddings", params={"epochs": 3})
    rows = list_schedules(session)
    set_enabled(session, "nightly-retrain", "medical-embeddings", enabled=False)    # pause
    delete(session, "nightly-retrain", "medical-embeddings")

A schedule is known by its display name within its experiment. `create_or_replace` uploads the compiled
pipeline as a new version of its pipeline (as submit does: the UI keeps the history, and the recurring run
references that version instead of embedding a spec), creates the new recurring run, and only then deletes
the older ones of that name: running it twice replaces, never duplicates, and there is no moment without
a schedule. Every recurring run allows one run at a time and does not catch up on missed runs.
Failures are `ClusterError`s (one line, with the fix), as in `runs`.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping

from ..config import ConfigError
from .runs import (ClusterError, KfpNotFoundError, KfpSession, _name_filter, _state, _time, find_experiment,
                   upload_to_experiment)

# robfig/cron (KFP's scheduler): second minute hour day-of-month month day-of-week.
_MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
_DAYS = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")
CRON_FIELDS = (("second", 0, 59, {}), ("minute", 0, 59, {}), ("hour", 0, 23, {}),
               ("day of month", 1, 31, {}), ("month", 1, 12, {m: i + 1 for i, m in enumerate(_MONTHS)}),
               ("day of week", 0, 6, {d: i for i, d in enumerate(_DAYS)}))
CRON_EXAMPLE = "'0 0 2 * * *' = 02:00 every day"
PAGE_SIZE = 100


def _cron_value(text: str, name: str, low: int, high: int, names: dict, expression: str) -> int:
    value = names.get(text.upper()) if not text.isdigit() else int(text)
    if value is None:
        raise ConfigError(f"--cron {expression!r}: {name} {text!r} is not a number"
                          + (f" or one of {', '.join(names)}" if names else ""))
    if not low <= value <= high:
        raise ConfigError(f"--cron {expression!r}: {name} {value} is outside {low}-{high}")
    return value


def validate_name(name: str) -> str:
    if not re.fullmatch(r"\S(.*\S)?", name or ""):
        raise ConfigError(f"--name {name!r}: a recurring run needs a name, without leading or trailing blanks")
    return name


def validate_cron(expression: str) -> str:
    """KFP's scheduler takes 6 fields, seconds first (`0 0 2 * * *` = 02:00 daily); each field `*`, `?`,
    a value, a range `a-b`, a step `*/n` or `a-b/n`, or a list of those; months and days also by name."""
    fields = expression.split()
    if len(fields) != 6:
        hint = (f"; a 5-field (minute-first) expression needs a seconds field in front: '0 {expression.strip()}'"
                if len(fields) == 5 else "")
        raise ConfigError(f"--cron {expression!r}: {len(fields)} field(s); KFP takes 6, seconds first, e.g. "
                          f"{CRON_EXAMPLE}{hint}")
    for text, (name, low, high, names) in zip(fields, CRON_FIELDS):
        for part in text.split(","):
            base, slash, step = part.partition("/")
            if slash and not (step.isdigit() and int(step) > 0):
                raise ConfigError(f"--cron {expression!r}: {name} step {step!r} must be a whole number above 0")
            if base in ("*", "?"):
                continue
            start, dash, end = base.partition("-")
            if not start or (dash and not end):
                raise ConfigError(f"--cron {expression!r}: {name} {part!r} is not a value, a range a-b or a step")
            first = _cron_value(start, name, low, high, names, expression)
            if dash and _cron_value(end, name, low, high, names, expression) < first:
                raise ConfigError(f"--cron {expression!r}: {name} range {base!r} runs backwards")
    return expression


@dataclass(frozen=True)
class Schedule:
    recurring_run_id: str
    name: str
    enabled: bool
    cron: str | None
    experiment_id: str | None
    pipeline_id: str | None
    version_id: str | None
    created: dt.datetime | None
    max_concurrency: int | None
    no_catchup: bool
    parameters: dict = field(default_factory=dict)
    description: str = ""

    @property
    def status(self) -> str:
        return "enabled" if self.enabled else "paused"

    def to_dict(self) -> dict:
        out = asdict(self)
        out["created"] = self.created.isoformat() if self.created else None
        out["status"] = self.status
        return out


def _schedule(run) -> Schedule:
    status = _state(getattr(run, "status", None))
    mode = str(getattr(run, "mode", "") or "").upper()
    enabled = status == "ENABLED" or (status not in ("ENABLED", "DISABLED") and mode != "DISABLE")
    trigger = getattr(run, "trigger", None)
    cron = getattr(getattr(trigger, "cron_schedule", None), "cron", None) if trigger else None
    ref = getattr(run, "pipeline_version_reference", None)
    concurrency = getattr(run, "max_concurrency", None)
    config = getattr(run, "runtime_config", None)
    return Schedule(recurring_run_id=run.recurring_run_id, name=run.display_name or "", enabled=enabled, cron=cron,
                    experiment_id=getattr(run, "experiment_id", None), pipeline_id=getattr(ref, "pipeline_id", None),
                    version_id=getattr(ref, "pipeline_version_id", None), created=_time(getattr(run, "created_at", None)),
                    max_concurrency=int(concurrency) if concurrency not in (None, "") else None,
                    no_catchup=bool(getattr(run, "no_catchup", False)),
                    parameters=dict(getattr(config, "parameters", None) or {}),
                    description=getattr(run, "description", None) or "")


def _list(session: KfpSession, action: str, **kwargs) -> list[Schedule]:
    found, token = [], ""
    while True:
        response = session.call(action, session.client.list_recurring_runs, page_token=token, page_size=PAGE_SIZE,
                                sort_by="created_at", **kwargs)
        found += [_schedule(r) for r in (response.recurring_runs or [])]
        token = getattr(response, "next_page_token", None) or ""
        if not token:
            return found


def find_schedules(session: KfpSession, name: str, experiment_id: str) -> list[Schedule]:
    """The recurring runs named `name` in the experiment (the server filters by name; checked again here)."""
    found = _list(session, f"looking up recurring runs named {name!r}", experiment_id=experiment_id,
                  filter=_name_filter(name))
    return [s for s in found if s.name == name]


def list_schedules(session: KfpSession, experiment: str | None = None) -> list[Schedule]:
    if experiment:
        return _list(session, "listing recurring runs", experiment_id=find_experiment(session, experiment))
    return _list(session, "listing recurring runs", namespace=session.namespace)


def experiment_names(session: KfpSession) -> dict[str, str]:
    """{experiment id: name} of the namespace, for listings."""
    names, token = {}, ""
    while True:
        response = session.call("listing experiments", session.client.list_experiments, page_token=token,
                                page_size=PAGE_SIZE, namespace=session.namespace)
        names.update({e.experiment_id: e.display_name for e in (response.experiments or [])})
        token = getattr(response, "next_page_token", None) or ""
        if not token:
            return names


@dataclass(frozen=True)
class Scheduled:
    schedule: Schedule
    pipeline_name: str
    version_name: str
    replaced: list[Schedule]
    url: str


def schedule_url(session: KfpSession, recurring_run_id: str) -> str:
    return f"{session.settings.ui_host}/#/recurringrun/details/{recurring_run_id}"


def create_or_replace(session: KfpSession, package: Path, *, name: str, cron: str, experiment: str,
                      params: Mapping[str, object] | None = None, pipeline_name: str | None = None,
                      description: str = "", pipeline_root: str | None = None,
                      service_account: str | None = None) -> Scheduled:
    """A new pipeline version and a recurring run of it named `name`; then the older recurring runs of that
    name in the experiment are deleted (created first: never a moment without one)."""
    validate_cron(cron)
    up = upload_to_experiment(session, package, params=params, pipeline_name=pipeline_name,
                              description=description, experiment=experiment)
    client = session.client
    older = find_schedules(session, name, up.experiment_id)
    created = session.call(f"creating recurring run {name!r}", client.create_recurring_run,
                           experiment_id=up.experiment_id, job_name=name, description=description or None,
                           cron_expression=cron,
                           # One retraining at a time, and no burst of missed runs after downtime.
                           max_concurrency=1, no_catchup=True, params=up.params, pipeline_id=up.pipeline_id,
                           version_id=up.version_id, enabled=True, pipeline_root=pipeline_root,
                           service_account=service_account)
    new = _schedule(created)
    for old in older:
        try:
            session.call(f"deleting recurring run {old.recurring_run_id}", client.delete_recurring_run,
                         old.recurring_run_id)
        except ClusterError as exc:
            raise ClusterError(
                f"created recurring run {name!r} ({new.recurring_run_id}) but could not delete the one it replaces "
                f"({old.recurring_run_id}), so both are scheduled: {exc.message}",
                "run the same `medembed schedule` again (it keeps only the newest), or "
                f"`medembed schedules delete {name}` and schedule again") from None
    return Scheduled(schedule=new, pipeline_name=up.pipeline_name, version_name=up.version_name, replaced=older,
                     url=schedule_url(session, new.recurring_run_id))


def _named(session: KfpSession, name: str, experiment: str) -> list[Schedule]:
    found = find_schedules(session, name, find_experiment(session, experiment))
    if not found:
        raise KfpNotFoundError(f"no recurring run named {name!r} in experiment {experiment!r}",
                               "see `medembed schedules list` (and --experiment for another experiment)")
    return found


def set_enabled(session: KfpSession, name: str, experiment: str, enabled: bool) -> list[tuple[Schedule, bool]]:
    """Pause (enabled=False) or resume every recurring run of that name: [(schedule, changed)]."""
    done = []
    for schedule in _named(session, name, experiment):
        if schedule.enabled == enabled:
            done.append((schedule, False))
            continue
        call = session.client.enable_recurring_run if enabled else session.client.disable_recurring_run
        session.call(f"{'resuming' if enabled else 'pausing'} recurring run {schedule.recurring_run_id}", call,
                     schedule.recurring_run_id)
        done.append((schedule, True))
    return done


def delete(session: KfpSession, name: str, experiment: str) -> list[Schedule]:
    found = _named(session, name, experiment)
    for schedule in found:
        session.call(f"deleting recurring run {schedule.recurring_run_id}", session.client.delete_recurring_run,
                     schedule.recurring_run_id)
    return found


def _stamp(value: dt.datetime | None) -> str:
    return value.astimezone().strftime("%Y-%m-%d %H:%M") if value else "-"


def format_schedules(rows: list[Schedule], experiments: dict[str, str]) -> str:
    if not rows:
        return "no recurring runs"
    table = [("NAME", "STATUS", "CRON", "EXPERIMENT", "CREATED", "RECURRING RUN ID")]
    for row in rows:
        table.append((row.name, row.status, row.cron or "-", experiments.get(row.experiment_id or "", "-"),
                      _stamp(row.created), row.recurring_run_id))
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]) - 1)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths)) + "  " + r[-1] for r in table)


def describe(schedule: Schedule) -> str:
    parts = [f"cron '{schedule.cron}'" if schedule.cron else "no cron", schedule.status]
    return ", ".join(parts)
