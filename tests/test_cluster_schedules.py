"""Schedules (medembed/cluster/schedules.py and `medembed schedule` / `medembed schedules`) through the real
kfp.Client against the local KFP API (tests/fake_kfp.py): the recurring run references an uploaded pipeline
version, `schedule` replaces by name (create first, then delete), list/pause/resume/delete by name, the cron
is checked before KFP is contacted, and every failure is one line."""

from __future__ import annotations

import json
import re

import pytest

from fake_kfp import KfpServer
from medembed import cli
from medembed.cluster import PROFILE_NAMESPACE, runs, schedules
from medembed.config import ConfigError
from test_cluster_cli import _cli, temp_dir  # noqa: F401 - the CLI as medembed runs it; fixture: temp folder
from test_cluster_runs import isolated_kfp, package  # noqa: F401 - autouse isolation; the compiled pipeline

API = "/apis/v2beta1"
EXPERIMENT = "medical-embeddings"


@pytest.fixture
def kfp_api():
    with KfpServer() as state:
        yield state


def _session(state) -> runs.KfpSession:
    return runs.connect(runs.resolve_settings(host=state.url))


def _requests(state) -> list[tuple[str, str]]:
    """(method, path) of the recurring-run calls, in the order the server saw them."""
    return [(r["method"], r["path"][len(API):]) for r in state.requests if r["path"].startswith(API + "/recurringruns")]


# ---------------------------------------------------------------- cron


@pytest.mark.parametrize("cron", ["0 0 2 * * *", "*/30 * * * * ?", "0 15 10 ? * MON-FRI", "0 0 0 1 jan,jul *",
                                  "0 0 */6 * * 0", "5 4-22/2 1,13 * * *"])
def test_valid_crons_are_accepted(cron):
    assert schedules.validate_cron(cron) == cron


@pytest.mark.parametrize("cron, message", [
    ("0 2 * * *", "5 field(s); KFP takes 6, seconds first, e.g. '0 0 2 * * *' = 02:00 every day; a 5-field "
                  "(minute-first) expression needs a seconds field in front: '0 0 2 * * *'"),
    ("0 0 0 2 * * *", "7 field(s); KFP takes 6"),
    ("@daily", "1 field(s); KFP takes 6"),
    ("0 0 24 * * *", "hour 24 is outside 0-23"),
    ("0 60 2 * * *", "minute 60 is outside 0-59"),
    ("0 0 2 0 * *", "day of month 0 is outside 1-31"),
    ("0 0 2 * 13 *", "month 13 is outside 1-12"),
    ("0 0 2 * * 7", "day of week 7 is outside 0-6"),
    ("0 0 2 * * MONDAY", "day of week 'MONDAY' is not a number or one of SUN, MON"),
    ("0 */0 * * * *", "minute step '0' must be a whole number above 0"),
    ("0 0 5-1 * * *", "hour range '5-1' runs backwards"),
    ("0 0 2- * * *", "hour '2-' is not a value"),
])
def test_bad_crons_are_refused_with_the_reason(cron, message):
    with pytest.raises(ConfigError, match=re.escape(message)) as exc:
        schedules.validate_cron(cron)
    assert message in str(exc.value)


def test_a_bad_cron_or_config_never_reaches_kfp(kfp_api, temp_dir):
    code, out, err = _cli("schedule", "--host", kfp_api.url, "--cron", "0 2 * * *")
    assert (code, out) == (2, "") and err.count("\n") == 1 and "KFP takes 6, seconds first" in err
    code, _, err = _cli("schedule", "--host", kfp_api.url, "--cron", "0 0 2 * * *", "--set", "train.loss=foo")
    assert code == 2 and "train.loss='foo'" in err
    assert kfp_api.requests == []  # not even the health check
    assert list(temp_dir.iterdir()) == []


# ---------------------------------------------------------------- schedule: create, replace


def test_schedule_runs_an_uploaded_version_and_replaces_by_name(kfp_api, temp_dir):
    kept_elsewhere = kfp_api.add_recurring_run("nightly-retrain", kfp_api.add_experiment("other", PROFILE_NAMESPACE))
    code, out, err = _cli("schedule", "--host", kfp_api.url, "--cron", "0 0 2 * * *", "--name", "nightly-retrain",
                          "--param", "epochs=2", "--set", "train.lora_r=8")
    assert (code, err) == (0, "")
    (first,) = kfp_api.posted("/recurringruns")
    experiment_id = next(e for e, x in kfp_api.experiments.items() if x["display_name"] == EXPERIMENT)
    # A recurring run of the uploaded version (the UI shows the version), not an embedded spec.
    version = kfp_api.versions[first["pipeline_version_reference"]["pipeline_version_id"]]
    assert first["pipeline_version_reference"]["pipeline_id"] == version["pipeline_id"]
    assert not first.get("pipeline_spec")
    assert kfp_api.uploads[-1]["kind"] == "version" and "schedule nightly-retrain" in version["description"]
    assert first["display_name"] == "nightly-retrain" and first["experiment_id"] == experiment_id
    assert first["trigger"]["cron_schedule"]["cron"] == "0 0 2 * * *"
    assert str(first["max_concurrency"]) == "1" and first["no_catchup"] is True and first["mode"] == "ENABLE"
    assert first["runtime_config"]["parameters"] == {"epochs": 2, "overrides": {"train.lora_r": 8}}
    first_id = next(i for i, r in kfp_api.recurring_runs.items() if r["display_name"] == "nightly-retrain"
                    and r["experiment_id"] == experiment_id)
    assert f"recurring run: nightly-retrain ({first_id}): cron '0 0 2 * * *', enabled" in out
    assert f"url: {kfp_api.url}/#/recurringrun/details/{first_id}" in out and "replaced" not in out

    # Paused since, then scheduled again with another cron: one schedule of that name, the new one.
    kfp_api.recurring_runs[first_id].update(mode="DISABLE", status="DISABLED")
    kfp_api.requests.clear()
    code, out, err = _cli("schedule", "--host", kfp_api.url, "--cron", "0 30 1 * * *", "--name", "nightly-retrain")
    assert (code, err) == (0, "")
    ours = [r for r in kfp_api.recurring_runs.values() if r["experiment_id"] == experiment_id]
    assert [(r["display_name"], r["trigger"]["cron_schedule"]["cron"], r["status"]) for r in ours] == [
        ("nightly-retrain", "0 30 1 * * *", "ENABLED")]
    assert ours[0]["pipeline_version_reference"]["pipeline_version_id"] != version["pipeline_version_id"]
    assert f"replaced: {first_id} (cron '0 0 2 * * *', paused), deleted" in out
    # Created first, then the old one deleted: never a moment without a schedule.
    calls = _requests(kfp_api)
    assert calls.index(("POST", "/recurringruns")) < calls.index(("DELETE", f"/recurringruns/{first_id}"))
    # Same name in another experiment: not ours, untouched.
    assert kept_elsewhere in kfp_api.recurring_runs
    assert len(kfp_api.pipelines) == 1 and len(kfp_api.uploads) == 3  # pipeline + 2 versions
    assert list(temp_dir.iterdir()) == []  # nothing compiled left behind


def test_schedule_removes_every_duplicate_an_older_tool_left(kfp_api, package):
    experiment_id = kfp_api.add_experiment(EXPERIMENT, PROFILE_NAMESPACE)
    old = [kfp_api.add_recurring_run("nightly", experiment_id) for _ in range(2)]
    other = kfp_api.add_recurring_run("weekly", experiment_id)
    result = schedules.create_or_replace(_session(kfp_api), package, name="nightly", cron="0 0 2 * * *",
                                         experiment=EXPERIMENT)
    assert sorted(s.recurring_run_id for s in result.replaced) == sorted(old)
    assert set(kfp_api.recurring_runs) == {other, result.schedule.recurring_run_id}
    # The listing asked the server for that name only.
    (listing,) = [r for r in kfp_api.requests if r["method"] == "GET" and r["path"] == f"{API}/recurringruns"]
    assert '"stringValue": "nightly"' in listing["query"]["filter"][0]
    assert listing["query"]["experiment_id"] == [experiment_id]


def test_a_failed_delete_of_the_replaced_one_is_one_line_naming_both(kfp_api):
    experiment_id = kfp_api.add_experiment(EXPERIMENT, PROFILE_NAMESPACE)
    old = kfp_api.add_recurring_run("nightly", experiment_id)
    kfp_api.fail_deletes = True
    code, out, err = _cli("schedule", "--host", kfp_api.url, "--cron", "0 0 2 * * *", "--name", "nightly")
    assert code == 5 and out == "" and err.count("\n") == 1
    new = next(i for i in kfp_api.recurring_runs if i != old)
    assert f"created recurring run 'nightly' ({new}) but could not delete the one it replaces ({old})" in err
    assert "both are scheduled" in err and "run the same `medembed schedule` again" in err
    kfp_api.fail_deletes = False
    assert _cli("schedule", "--host", kfp_api.url, "--cron", "0 0 2 * * *", "--name", "nightly")[0] == 0
    assert [r["display_name"] for r in kfp_api.recurring_runs.values()] == ["nightly"]  # converged to one


def test_unknown_parameter_is_refused_before_anything_is_uploaded(kfp_api, package):
    with pytest.raises(runs.ClusterError, match="unknown pipeline parameter"):
        schedules.create_or_replace(_session(kfp_api), package, name="n", cron="0 0 2 * * *", experiment="e",
                                    params={"epoch": 3})
    assert kfp_api.uploads == [] and kfp_api.recurring_runs == {}


# ---------------------------------------------------------------- list, pause, resume, delete


def test_list_pause_resume_delete_by_name(kfp_api):
    ours = kfp_api.add_experiment(EXPERIMENT, PROFILE_NAMESPACE)
    other = kfp_api.add_experiment("experiments-2", PROFILE_NAMESPACE)
    nightly = kfp_api.add_recurring_run("nightly", ours, cron="0 0 2 * * *")
    weekly = kfp_api.add_recurring_run("weekly", other, cron="0 0 4 * * SUN", enabled=False)
    host = ("--host", kfp_api.url)

    code, out, _ = _cli("schedules", "list", *host)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "STATUS", "CRON", "EXPERIMENT", "CREATED", "RECURRING", "RUN", "ID"]
    assert lines[1].split()[:9] == ["nightly", "enabled", "0", "0", "2", "*", "*", "*", EXPERIMENT]
    assert lines[2].split()[:9] == ["weekly", "paused", "0", "0", "4", "*", "*", "SUN", "experiments-2"]
    code, out, _ = _cli("schedules", "list", *host, "--experiment", EXPERIMENT, "--json")
    (row,) = json.loads(out)
    assert (row["recurring_run_id"], row["status"], row["experiment"]) == (nightly, "enabled", EXPERIMENT)

    code, out, _ = _cli("schedules", "pause", "nightly", *host)
    assert code == 0 and out == f"paused nightly ({nightly})\n"
    assert kfp_api.recurring_runs[nightly]["status"] == "DISABLED"
    assert kfp_api.posted(f"/recurringruns/{nightly}:disable") != []
    code, out, _ = _cli("schedules", "pause", "nightly", *host)
    assert out == f"nightly ({nightly}) was already paused\n"
    assert len(kfp_api.posted(f"/recurringruns/{nightly}:disable")) == 1
    code, out, _ = _cli("schedules", "resume", "weekly", *host, "--experiment", "experiments-2")
    assert code == 0 and out == f"resumed weekly ({weekly})\n" and kfp_api.recurring_runs[weekly]["status"] == "ENABLED"
    code, out, _ = _cli("schedules", "resume", "nightly", *host)
    assert kfp_api.recurring_runs[nightly]["status"] == "ENABLED"

    code, out, _ = _cli("schedules", "delete", "nightly", *host)
    assert code == 0 and out.startswith(f"deleted nightly ({nightly})")
    assert set(kfp_api.recurring_runs) == {weekly}
    code, out, err = _cli("schedules", "delete", "nightly", *host)
    assert (code, out) == (5, "") and err.count("\n") == 1
    assert "no recurring run named 'nightly' in experiment 'medical-embeddings'" in err and "schedules list" in err
    code, _, err = _cli("schedules", "pause", "nightly", *host, "--experiment", "nope")
    assert code == 5 and "no experiment named 'nope'" in err


def test_endpoint_and_token_come_from_the_environment(kfp_api, monkeypatch, tmp_path):
    kfp_api.required_token = "sched-token-42"
    token = tmp_path / "token"
    token.write_text("sched-token-42\n")
    monkeypatch.setenv("KF_PIPELINES_ENDPOINT", kfp_api.url)
    monkeypatch.setenv("KF_PIPELINES_TOKEN_FILE", str(token))
    code, out, err = _cli("schedule", "--cron", "0 0 2 * * *", "--name", "env-made")
    assert (code, err) == (0, "") and "sched-token-42" not in out
    assert [r["display_name"] for r in kfp_api.recurring_runs.values()] == ["env-made"]
    assert all(r["authorization"] == "Bearer sched-token-42" for r in kfp_api.requests
               if r["path"].startswith(API + "/recurringruns"))


@pytest.mark.parametrize("argv", [["schedule", "--cron", "0 0 2 * * *"], ["schedules", "list"],
                                  ["schedules", "pause", "nightly"], ["schedules", "delete", "nightly"]])
def test_unreachable_kfp_is_one_line_and_exit_5(argv, capsys, temp_dir):
    code = cli.main([*argv, "--host", "http://127.0.0.1:9"])
    out, err = capsys.readouterr()
    assert code == 5 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: cannot reach KFP at http://127.0.0.1:9 (connection refused)")
    assert list(temp_dir.iterdir()) == []


def test_schedules_output_is_readable_without_a_terminal():
    row = schedules.Schedule(recurring_run_id="r-1", name="nightly", enabled=True, cron="0 0 2 * * *",
                             experiment_id="e-1", pipeline_id="p", version_id="v", created=None, max_concurrency=1,
                             no_catchup=True)
    text = schedules.format_schedules([row], {"e-1": EXPERIMENT})
    assert text.splitlines()[1].split() == ["nightly", "enabled", "0", "0", "2", "*", "*", "*", EXPERIMENT, "-", "r-1"]
    assert schedules.format_schedules([], {}) == "no recurring runs"
