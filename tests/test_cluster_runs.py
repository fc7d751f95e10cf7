"""medembed.cluster.runs against a local KFP API (tests/fake_kfp.py) through the real kfp.Client:
submit uploads a new pipeline version and starts a run of it with the given parameters, get explains a
failed run, wait follows a run to its final state, list/terminate, and every connection or auth
failure is one line with its fix (never the token)."""

from __future__ import annotations

import io
import time
import warnings

import pytest
import yaml

from fake_kfp import KfpServer, FakeKfp, component, group, task, timestamp
from medembed.cluster import PROFILE_NAMESPACE, runs
from medembed.config import load_config

API = "/apis/v2beta1"
KFP_ENV = ("KF_PIPELINES_ENDPOINT", "KF_PIPELINES_UI_ENDPOINT", "KF_PIPELINES_TOKEN", "KF_PIPELINES_TOKEN_FILE",
           "KF_PIPELINES_SA_TOKEN_PATH", "KF_PIPELINES_DEFAULT_EXPERIMENT_NAME", "KF_PIPELINES_OVERRIDE_EXPERIMENT_NAME",
           "KF_PIPELINES_IAP_OAUTH2_CLIENT_ID", "KF_PIPELINES_APP_OAUTH2_CLIENT_ID",
           "KF_PIPELINES_APP_OAUTH2_CLIENT_SECRET", "KUBERNETES_SERVICE_HOST")


@pytest.fixture(autouse=True)
def isolated_kfp(monkeypatch, tmp_path):
    """No developer KFP context file, KF_PIPELINES_* variable or in-cluster token leaks into a test."""
    import kfp

    monkeypatch.setattr(kfp.Client, "_LOCAL_KFP_CONTEXT", str(tmp_path / "kfp-context.json"))
    monkeypatch.setattr(runs, "SA_TOKEN_PATH", str(tmp_path / "no-such-token"))
    for name in KFP_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def kfp_api():
    with KfpServer() as state:
        yield state


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    """The product's cluster pipeline, compiled once."""
    from kfp import compiler

    from pipelines.medical_embedding import build_pipeline

    path = tmp_path_factory.mktemp("ir") / "pipeline.yaml"
    compiler.Compiler().compile(build_pipeline(load_config("cluster"), for_cluster=True), str(path))
    return path


def _session(state: FakeKfp, **kwargs) -> runs.KfpSession:
    return runs.connect(runs.resolve_settings(host=state.url, **kwargs))


# --- submit ---------------------------------------------------------------------------------------------

def test_submit_uploads_a_new_version_and_starts_a_run_of_it_with_the_given_parameters(kfp_api, package):
    session = _session(kfp_api)
    params = {"epochs": 3, "matryoshka_dims": [768, 256, 64], "base_model": "intfloat/multilingual-e5-small"}
    sub = runs.submit(session, package, experiment="medembed-ci", run_name="e5-trial", params=params,
                      description="profile cluster")

    # New pipeline: created by upload (KFP adds a first version), then the submission's own version.
    (pipeline,) = kfp_api.pipelines.values()
    assert pipeline["display_name"] == sub.pipeline_name == "medical-embedding-finetune"
    assert pipeline["namespace"] == PROFILE_NAMESPACE  # multi-user: private to the profile
    assert [u["kind"] for u in kfp_api.uploads] == ["pipeline", "version"]
    version = kfp_api.versions[sub.version_id]
    assert version["display_name"] == sub.version_name and version["pipeline_id"] == sub.pipeline_id
    assert version["description"] == "profile cluster"
    # What was uploaded is the compiled package, GPU settings and all.
    assert kfp_api.uploads[1]["content"] == package.read_text()
    assert version["pipeline_spec"]["platform_spec"]["platforms"]["kubernetes"]["deploymentSpec"]["executors"][
        "exec-train-model"]["nodeSelector"]["labels"] == {"cloud.google.com/gke-nodepool": "gpu-pool"}

    # The run references that version (no spec embedded) and carries the parameters with their JSON types.
    (run,) = kfp_api.posted("/runs")
    assert run["pipeline_version_reference"] == {"pipeline_id": sub.pipeline_id, "pipeline_version_id": sub.version_id}
    assert "pipeline_spec" not in run or not run["pipeline_spec"]
    assert run["runtime_config"]["parameters"] == params
    assert run["display_name"] == "e5-trial"
    (experiment,) = kfp_api.posted("/experiments")
    assert experiment == {"display_name": "medembed-ci", "namespace": PROFILE_NAMESPACE}
    assert run["experiment_id"] == sub.experiment_id
    assert sub.url == f"{kfp_api.url}/#/runs/details/{sub.run_id}"


def test_each_submit_adds_a_version_so_the_ui_keeps_the_history(kfp_api, package, monkeypatch):
    session = _session(kfp_api)
    first = runs.submit(session, package, experiment="e", run_name="r1")
    later = {"now": None}
    real = runs.version_name
    monkeypatch.setattr(runs, "version_name", lambda path: real(path, later["now"]))
    import datetime as dt

    later["now"] = dt.datetime(2031, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    second = runs.submit(session, package, experiment="e", run_name="r2")
    assert second.pipeline_id == first.pipeline_id and len(kfp_api.pipelines) == 1
    assert [u["kind"] for u in kfp_api.uploads] == ["pipeline", "version", "version"]
    assert second.version_id != first.version_id
    assert second.version_name.startswith("20310102-030405-")
    assert len(kfp_api.posted("/experiments")) == 1  # found by name the second time
    (_, r2) = kfp_api.posted("/runs")
    assert r2["pipeline_version_reference"]["pipeline_version_id"] == second.version_id


def test_single_user_kfp_gets_no_namespace(package):
    with KfpServer(FakeKfp(multi_user=False)) as kfp_api:
        session = _session(kfp_api)
        assert session.namespace is None
        runs.submit(session, package, experiment="e", run_name="r")
        (pipeline,) = kfp_api.pipelines.values()
        assert pipeline["namespace"] == ""
        assert "namespace" not in kfp_api.uploads[0]["query"]
        assert not kfp_api.posted("/experiments")[0].get("namespace")


def test_unknown_parameter_is_refused_before_anything_is_uploaded(kfp_api, package):
    session = _session(kfp_api)
    with pytest.raises(runs.ClusterError, match="unknown pipeline parameter\\(s\\) epoch") as exc:
        runs.submit(session, package, experiment="e", run_name="r", params={"epoch": 3})
    assert "unknown pipeline parameter(s) epoch" in str(exc.value)
    assert "epochs" in exc.value.fix
    assert kfp_api.uploads == [] and kfp_api.posted("/runs") == []


def test_pipeline_root_and_caching_choice_reach_kfp(kfp_api, package, tmp_path):
    copy = tmp_path / "pipeline.yaml"
    copy.write_text(package.read_text())
    runs.disable_caching(copy)
    session = _session(kfp_api)
    runs.submit(session, copy, experiment="e", run_name="r", pipeline_root="s3://medembed-artifacts/pipelines")
    (run,) = kfp_api.posted("/runs")
    assert run["runtime_config"]["pipeline_root"] == "s3://medembed-artifacts/pipelines"
    uploaded = _all_tasks(next(yaml.safe_load_all(kfp_api.uploads[-1]["content"])))
    compiled = _all_tasks(next(yaml.safe_load_all(package.read_text())))
    # Training sits inside the "retrain" branch (a sub-DAG): caching is off there too, not only at the root.
    assert compiled["train-model"]["cachingOptions"]["enableCache"] is True
    assert compiled["prep-data"]["cachingOptions"]["enableCache"] is True
    containers = {"resolve-config", "snapshot-data", "prep-data", "check-changes", "train-model", "evaluate-models",
                  "register-model", "keep-champion", "record-run"}
    assert containers <= set(uploaded)
    assert all(not uploaded[name].get("cachingOptions") for name in containers)
    # The branch groups themselves are left as the compiler made them.
    assert {k: v for k, v in uploaded.items() if k not in containers} == {
        k: v for k, v in compiled.items() if k not in containers}


def _all_tasks(spec: dict) -> dict[str, dict]:
    """Every task of a compiled pipeline: the root DAG's and those of its sub-DAGs (condition branches)."""
    dags = [spec["root"]["dag"]] + [c["dag"] for c in spec["components"].values() if "dag" in c]
    return {name: t for dag in dags for name, t in dag["tasks"].items()}


def group_keys(package) -> dict[str, str]:
    """The compiler's keys of the pipeline's sub-DAG tasks (its Argo node names), by role: "exit" (the exit
    handler around the run), "branches" (the If/Else pair), "retrain" and "unchanged" (the two branches)."""
    spec = next(yaml.safe_load_all(package.read_text()))
    groups = {t["taskInfo"]["name"]: key for key, t in _all_tasks(spec).items()
              if "dag" in spec["components"][t["componentRef"]["name"]]}
    keys = {"retrain": groups.pop("retrain"), "unchanged": groups.pop("unchanged"),
            "branches": next(k for k in groups.values() if k.startswith("condition-branches-")),
            "exit": next(k for k in groups.values() if k.startswith("exit-handler-"))}
    assert len(groups) == 2, groups  # nothing else is grouped
    return keys


def test_kfp_client_chatter_is_hidden(kfp_api, package, capsys):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        session = _session(kfp_api)
        runs.submit(session, package, experiment="e", run_name="r")
        runs.get_run(session, next(iter(kfp_api.runs)))
    out, err = capsys.readouterr()
    assert out == "" and err == ""  # no "Experiment details:", "Run details:", "Pipeline details:" links
    assert not [w for w in caught if issubclass(w.category, FutureWarning)]


# --- run reports ----------------------------------------------------------------------------------------

def _failed_run(kfp_api: FakeKfp, package, task_message: str | None) -> str:
    """A run of an uploaded version whose GPU training, inside the "retrain" branch, failed: the Argo nodes
    KFP reports (drivers, executors, the branch groups) for the real pipeline's graph."""
    session = _session(kfp_api)
    sub = runs.submit(session, package, experiment="e", run_name="nightly")
    g = group_keys(package)
    nodes = [task("medical-embedding-finetune-x7k2p", "FAILED", 0, 300),
             task("root-driver", "SUCCEEDED", 0, 5), task("root", "FAILED", 5, 300),
             *group(g["exit"], "FAILED", 0, 290),
             *component("resolve-config", "SUCCEEDED", 1, 5), *component("snapshot-data", "SUCCEEDED", 5, 8),
             *component("prep-data", "SUCCEEDED", 10, 70, pods=("medical-embedding-finetune-x7k2p-101",)),
             *component("check-changes", "SUCCEEDED", 70, 72),
             *group(g["branches"], "FAILED", 72, 290),
             *group(g["retrain"], "FAILED", 73, 290), *group(g["unchanged"], "SKIPPED", 73, 73),
             *component("train-model", "FAILED", 75, 290, message=task_message,
                        pods=("medical-embedding-finetune-x7k2p-202",)),
             task(f"{g['exit']}.onExit", "SUCCEEDED", 291, 299),  # the exit handler runs whatever happened
             *component("record-run", "SUCCEEDED", 292, 298)]
    kfp_api.script_run(sub.run_id, [{"state": "FAILED", "finished_at": timestamp(300),
                                     "error": {"code": 2, "message": "workflow failed: child 'train-model' failed"},
                                     "run_details": {"task_details": nodes}}])
    return sub.run_id


def test_get_of_a_failed_run_names_the_failing_task_its_message_and_where_its_logs_are(kfp_api, package):
    run_id = _failed_run(kfp_api, package, "OOMKilled (exit code 137)")
    report = runs.get_run(_session(kfp_api), run_id)

    assert report.state == "FAILED"
    # The pipeline's tasks in dependency order, those of the condition branches where the branches sit, named
    # as in the UI; KFP's drivers, the branch groups and Argo's executor nodes left out.
    assert [(t.name, t.display_name, t.state, t.branch) for t in report.tasks] == [
        ("resolve-config", "configuration", "SUCCEEDED", None),
        ("snapshot-data", "data snapshot", "SUCCEEDED", None),
        ("prep-data", "data prep", "SUCCEEDED", None),
        ("check-changes", "changes since the champion", "SUCCEEDED", None),
        ("train-model", "GPU training", "FAILED", "retrain"),
        ("evaluate-models", "Matryoshka evaluation", "SKIPPED", "retrain"),
        ("register-model", "model registration", "SKIPPED", "retrain"),
        ("keep-champion", "nothing new: champion kept", "SKIPPED", "unchanged"),
        ("record-run", "record the run", "SUCCEEDED", None)]
    assert report.branches == [("retrain", "FAILED"), ("unchanged", "SKIPPED")]
    (failed,) = report.failed_tasks
    assert failed.error == "OOMKilled (exit code 137)"
    assert failed.duration() == 215
    assert report.tasks[2].duration() == 60
    text = runs.format_report(report)
    assert "failed task: GPU training (train-model): OOMKilled (exit code 137)" in text
    assert "nodes: medical-embedding-finetune-x7k2p-202" in text
    assert "branches: retrain FAILED, unchanged SKIPPED" in text
    assert f"logs: kubectl -n {PROFILE_NAMESPACE} logs -l pipeline/runid={run_id} -c main --prefix" in text
    assert f"{kfp_api.url}/#/runs/details/{run_id}" in text


def _unchanged_nodes(package, final: bool) -> list[dict]:
    """A run that found nothing new: the "retrain" branch's condition was false (Argo skips its DAG node and
    creates nothing inside it), the "unchanged" branch keeps the champion."""
    g = group_keys(package)
    keep_state = "SUCCEEDED" if final else "RUNNING"
    nodes = [*group(g["exit"], keep_state, 0, 30 if final else None),
             *component("resolve-config", "SUCCEEDED", 1, 5), *component("snapshot-data", "SUCCEEDED", 5, 8),
             *component("prep-data", "SUCCEEDED", 10, 12), *component("check-changes", "SUCCEEDED", 12, 15),
             *group(g["branches"], keep_state, 15, 30 if final else None),
             *group(g["retrain"], "SKIPPED", 16, 16),
             *group(g["unchanged"], keep_state, 16, 30 if final else None),
             *component("keep-champion", keep_state, 20, 29 if final else None)]
    return nodes + (component("record-run", "SUCCEEDED", 30, 31) if final else [])


@pytest.mark.parametrize("final", [False, True], ids=["running", "finished"])
def test_a_run_with_nothing_new_shows_the_retrain_branch_skipped_and_the_champion_kept(kfp_api, package, final):
    session = _session(kfp_api)
    sub = runs.submit(session, package, experiment="e", run_name="nightly")
    kfp_api.script_run(sub.run_id, [{"state": "SUCCEEDED" if final else "RUNNING",
                                     "finished_at": timestamp(31) if final else "1970-01-01T00:00:00Z",
                                     "run_details": {"task_details": _unchanged_nodes(package, final)}}])
    report = runs.get_run(session, sub.run_id)
    states = {t.name: t.state for t in report.tasks}
    # Skipped as soon as KFP skips the branch, not only once the run has ended.
    assert [states[k] for k in ("train-model", "evaluate-models", "register-model")] == ["SKIPPED"] * 3
    assert states["keep-champion"] == ("SUCCEEDED" if final else "RUNNING")
    assert [states[k] for k in ("resolve-config", "snapshot-data", "prep-data", "check-changes")] == ["SUCCEEDED"] * 4
    assert states["record-run"] == ("SUCCEEDED" if final else "PENDING")
    assert report.branches == [("retrain", "SKIPPED"), ("unchanged", "SUCCEEDED" if final else "RUNNING")]
    assert report.failed_tasks == []
    text = runs.format_report(report)
    assert "GPU training" in text and "(train-model, branch retrain)" in text
    assert "nothing new: champion kept" in text and "(keep-champion, branch unchanged)" in text
    if final:
        assert runs.exit_code(report.state) == runs.EXIT_SUCCEEDED


def test_failing_task_without_its_own_message_gets_the_runs(kfp_api, package):
    run_id = _failed_run(kfp_api, package, None)
    (failed,) = runs.get_run(_session(kfp_api), run_id).failed_tasks
    assert failed.name == "train-model"
    assert failed.error == "workflow failed: child 'train-model' failed"


def test_a_failed_driver_fails_its_task(kfp_api, package):
    session = _session(kfp_api)
    sub = runs.submit(session, package, experiment="e", run_name="r")
    kfp_api.script_run(sub.run_id, [{"state": "FAILED", "run_details": {"task_details": [
        task("prep-data-driver", "FAILED", 0, 3, message="failed to resolve inputs: secret medembed-minio not found")]}}])
    report = runs.get_run(session, sub.run_id)
    (failed,) = report.failed_tasks
    assert (failed.name, failed.error) == ("prep-data", "failed to resolve inputs: secret medembed-minio not found")


def test_unknown_run_is_one_line_not_found(kfp_api):
    with pytest.raises(runs.KfpNotFoundError, match="not found") as exc:
        runs.get_run(_session(kfp_api), "no-such-run")
    assert "\n" not in str(exc.value) and "not found" in str(exc.value)


def test_list_runs_newest_first_and_by_experiment(kfp_api):
    ours = kfp_api.add_experiment("medical-embeddings", PROFILE_NAMESPACE)
    other = kfp_api.add_experiment("other", PROFILE_NAMESPACE)
    first = kfp_api.add_run("first", "SUCCEEDED", ours, finished_at=timestamp(200))
    kfp_api.add_run("elsewhere", "FAILED", other)
    last = kfp_api.add_run("last", "RUNNING", ours)
    session = _session(kfp_api)
    rows = runs.list_runs(session, experiment="medical-embeddings")
    assert [(r.run_id, r.state) for r in rows] == [(last, "RUNNING"), (first, "SUCCEEDED")]
    assert len(runs.list_runs(session)) == 3
    table = runs.format_runs(rows)
    assert table.splitlines()[0].startswith("RUN ID") and first in table and "elsewhere" not in table
    with pytest.raises(runs.KfpNotFoundError, match="no experiment named 'nope'"):
        runs.list_runs(session, experiment="nope")


def test_terminate_asks_kfp_and_reports_the_new_state(kfp_api):
    run_id = kfp_api.add_run("long", "RUNNING")
    report = runs.terminate(_session(kfp_api), run_id)
    assert kfp_api.posted(f"/runs/{run_id}:terminate") != []
    assert report.state == "CANCELING"
    assert runs.exit_code(report.state) == runs.EXIT_CANCELED


# --- waiting --------------------------------------------------------------------------------------------

def _progress(package, final: str) -> list[dict]:
    """PENDING -> prep running -> training running (in the "retrain" branch) -> final."""
    g = group_keys(package)
    head = [*group(g["exit"], "RUNNING", 1), *component("resolve-config", "SUCCEEDED", 2, 8),
            *component("snapshot-data", "SUCCEEDED", 8, 9)]
    prep_running = head + component("prep-data", "RUNNING", 10)
    decided = head + [*component("prep-data", "SUCCEEDED", 10, 70), *component("check-changes", "SUCCEEDED", 70, 72),
                      *group(g["branches"], "RUNNING", 72), *group(g["retrain"], "RUNNING", 73),
                      *group(g["unchanged"], "SKIPPED", 73, 73)]
    train_running = decided + component("train-model", "RUNNING", 75)
    end_state = "SUCCEEDED" if final == "SUCCEEDED" else final
    end_tasks = decided + component("train-model", end_state, 75, 290)
    if final == "SUCCEEDED":
        end_tasks += [*component("evaluate-models", "SUCCEEDED", 300, 400),
                      *component("register-model", "SUCCEEDED", 410, 415)]
    end_tasks += component("record-run", "SUCCEEDED", 416, 420)
    return [{"state": "PENDING"},
            {"state": "RUNNING", "run_details": {"task_details": prep_running}},
            {"state": "RUNNING", "run_details": {"task_details": train_running}},
            {"state": final, "finished_at": timestamp(420), "run_details": {"task_details": end_tasks}}]


@pytest.mark.parametrize("final, code", [("SUCCEEDED", 0), ("FAILED", 1), ("CANCELED", 3)])
def test_wait_follows_the_run_to_its_final_state_and_maps_it_to_an_exit_code(kfp_api, package, final, code):
    session = _session(kfp_api)
    kfp_api.script_next_run(_progress(package, final))
    sub = runs.submit(session, package, experiment="e", run_name="r")
    out = io.StringIO()
    sleeps = []
    report = runs.wait(session, sub.run_id, interval=7, display=runs.ProgressDisplay(out, tty=False),
                       sleep=sleeps.append)
    assert report.state == final and runs.exit_code(report.state) == code
    assert sleeps == [7, 7, 7]  # four polls: PENDING, RUNNING, RUNNING, final
    log = out.getvalue()
    # One line per change, in order: the run, then each task as it starts and ends.
    assert log.index("run PENDING") < log.index("run RUNNING") < log.index(f"run {final}")
    assert log.index("data prep: RUNNING") < log.index("data prep: SUCCEEDED after 1m00s")
    assert log.index("GPU training: RUNNING") < log.index(f"GPU training: {final}")
    assert log.count("data prep: RUNNING") == 1  # unchanged states are not repeated


def test_progress_on_a_terminal_redraws_one_table_in_place(kfp_api, package):
    session = _session(kfp_api)
    kfp_api.script_next_run(_progress(package, "SUCCEEDED"))
    sub = runs.submit(session, package, experiment="e", run_name="live")
    out = io.StringIO()
    runs.wait(session, sub.run_id, interval=0, display=runs.ProgressDisplay(out, tty=True), sleep=lambda s: None)
    frames = out.getvalue().split("\x1b[")
    # First frame drawn plainly, each later one moves up over the 10 lines of the previous (run + 9 tasks).
    assert frames[0].startswith("live: PENDING")
    assert out.getvalue().count("\x1b[10F\x1b[J") == 3
    last = out.getvalue().rsplit("\x1b[J", 1)[1]
    assert last.splitlines()[0].startswith("live: SUCCEEDED")
    # Retrained: every task succeeded but the "unchanged" branch's, which was skipped.
    states = {line.rsplit(None, 2)[0].strip(): line.split()[-2] for line in last.splitlines()[1:]}
    assert states == {"configuration": "SUCCEEDED", "data snapshot": "SUCCEEDED", "data prep": "SUCCEEDED",
                      "changes since the champion": "SUCCEEDED", "GPU training": "SUCCEEDED",
                      "Matryoshka evaluation": "SUCCEEDED", "model registration": "SUCCEEDED",
                      "nothing new: champion kept": "SKIPPED", "record the run": "SUCCEEDED"}


def test_wait_gives_up_after_its_timeout_with_the_next_command(kfp_api):
    run_id = kfp_api.add_run("slow", "RUNNING")
    ticks = iter(range(0, 10_000, 30))
    with pytest.raises(runs.WaitTimeout, match="medembed runs wait") as exc:
        runs.wait(_session(kfp_api), run_id, interval=30, timeout=60, sleep=lambda s: None, clock=lambda: next(ticks))
    assert exc.value.exit_code == runs.EXIT_TIMEOUT
    assert f"medembed runs wait {run_id}" in str(exc.value)


def test_wait_rides_out_a_few_connection_errors_but_not_auth_errors(kfp_api, monkeypatch):
    run_id = kfp_api.add_run("r", "SUCCEEDED")
    session = _session(kfp_api)
    real = runs.get_run
    failures = iter([runs.KfpConnectionError("cannot reach KFP"), runs.KfpConnectionError("cannot reach KFP")])

    def flaky(session_, run_id_):
        error = next(failures, None)
        if error:
            raise error
        return real(session_, run_id_)

    monkeypatch.setattr(runs, "get_run", flaky)
    assert runs.wait(session, run_id, interval=0, sleep=lambda s: None).state == "SUCCEEDED"
    monkeypatch.setattr(runs, "get_run", lambda *a: (_ for _ in ()).throw(runs.KfpAuthError("token expired")))
    with pytest.raises(runs.KfpAuthError, match="token expired"):
        runs.wait(session, run_id, interval=0, sleep=lambda s: None)


# --- connection, credentials, one-line errors --------------------------------------------------------------

def test_nothing_listening_is_one_line_with_the_fix_within_seconds():
    settings = runs.resolve_settings(host="http://127.0.0.1:9")
    started = time.monotonic()
    with pytest.raises(runs.KfpConnectionError, match="127.0.0.1:9") as exc:
        runs.connect(settings)
    assert time.monotonic() - started < 5  # no retries with back-off
    message = str(exc.value)
    assert "\n" not in message
    assert message.startswith("cannot reach KFP at http://127.0.0.1:9 (connection refused); fix: ")
    assert "port-forward svc/ml-pipeline-ui" in message and "KF_PIPELINES_ENDPOINT" in message


def test_endpoint_comes_from_the_environment_or_the_cluster(monkeypatch):
    with pytest.raises(runs.KfpConnectionError, match="no KFP endpoint given") as exc:
        runs.resolve_settings()
    assert "no KFP endpoint given" in str(exc.value) and "KF_PIPELINES_ENDPOINT" in str(exc.value)
    monkeypatch.setenv("KF_PIPELINES_ENDPOINT", "http://kfp.example:8888/")
    assert runs.resolve_settings().host == "http://kfp.example:8888"
    assert runs.resolve_settings(host="https://other").host == "https://other"  # the flag wins
    monkeypatch.delenv("KF_PIPELINES_ENDPOINT")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")  # inside a pod
    assert runs.resolve_settings().host == runs.IN_CLUSTER_ENDPOINT


def test_token_sources_in_order_and_never_shown(monkeypatch, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    sa_token = tmp_path / "sa-token"
    sa_token.write_text("from-service-account")
    env = {"KF_PIPELINES_SA_TOKEN_PATH": str(sa_token)}
    assert runs.resolve_token(env=env) == ("from-service-account", f"service-account token {sa_token}")
    env["KF_PIPELINES_TOKEN_FILE"] = str(token_file)
    assert runs.resolve_token(env=env)[0] == "from-file"
    env["KF_PIPELINES_TOKEN"] = "from-env"
    assert runs.resolve_token(env=env) == ("from-env", "KF_PIPELINES_TOKEN")
    assert runs.resolve_token(token_file=str(token_file), env=env)[0] == "from-file"
    assert runs.resolve_token(token="explicit", token_file=str(token_file), env=env)[0] == "explicit"
    assert runs.resolve_token(env={}) == (None, "none")
    settings = runs.resolve_settings(host="http://h", env=env)
    assert "from-env" not in repr(settings) and "from-env" not in str(settings)
    empty = tmp_path / "empty"
    empty.write_text("  \n")
    with pytest.raises(runs.KfpAuthError, match="is empty"):
        runs.resolve_token(token_file=str(empty), env={})
    with pytest.raises(runs.KfpAuthError, match="cannot read the KFP token file"):
        runs.resolve_token(token_file=str(tmp_path / "missing"), env={})


def test_token_is_sent_as_bearer_and_a_wrong_one_is_one_line_without_it(kfp_api, package):
    kfp_api.required_token = "s3cr3t-token"
    with pytest.raises(runs.KfpAuthError, match="HTTP 401, no token sent") as exc:
        _session(kfp_api)
    assert "HTTP 401, no token sent" in str(exc.value) and "kubectl create token default-editor" in str(exc.value)
    with pytest.raises(runs.KfpAuthError, match="token rejected or expired") as exc:
        _session(kfp_api, token="wrong-token-value")
    assert "token rejected or expired" in str(exc.value) and "wrong-token-value" not in str(exc.value)

    session = _session(kfp_api, token="s3cr3t-token")
    runs.submit(session, package, experiment="e", run_name="r")
    assert {r["authorization"] for r in kfp_api.requests if r["authorization"]} >= {"Bearer s3cr3t-token"}
    api_calls = [r for r in kfp_api.requests if r["path"] != f"{API}/healthz" and "s3cr3t" in (r["authorization"] or "")]
    assert len(api_calls) >= 5  # pipelines lookup, upload x2, experiment, run


def test_login_redirect_is_reported_as_such(kfp_api):
    kfp_api.redirect_to_login = True
    with pytest.raises(runs.KfpAuthError, match="redirects the health check to a login page") as exc:
        _session(kfp_api)
    assert "redirects the health check to a login page (HTTP 302)" in str(exc.value)
