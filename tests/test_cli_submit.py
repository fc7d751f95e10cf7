"""`medembed submit` / `medembed schedule` / `medembed runs` through the CLI against a fake KFP API server.

The server (tests/fake_kfp.py) is a stdlib `http.server` speaking the `/apis/v2beta1/*` paths of the REAL
`kfp.Client` (so its serialisation of pipeline uploads, runs and recurring runs is what we check). `submit`
uploads the compiled spec as a new pipeline version and runs that version; `schedule` does the same for a
recurring run and replaces the one of the same name. The cluster commands themselves are tested in
test_cluster_*.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fake_kfp import KfpServer
from medembed import cli

API = "/apis/v2beta1"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def kfp_server(monkeypatch, tmp_path):
    import kfp

    from medembed.cluster import runs

    # Isolate from the developer's KFP context file, KF_PIPELINES_* variables and an in-cluster token.
    monkeypatch.setattr(kfp.Client, "_LOCAL_KFP_CONTEXT", str(tmp_path / "kfp-context.json"))
    monkeypatch.setattr(runs, "SA_TOKEN_PATH", str(tmp_path / "no-such-token"))
    for name in ("KF_PIPELINES_ENDPOINT", "KF_PIPELINES_UI_ENDPOINT", "KF_PIPELINES_DEFAULT_EXPERIMENT_NAME",
                 "KF_PIPELINES_OVERRIDE_EXPERIMENT_NAME", "KF_PIPELINES_IAP_OAUTH2_CLIENT_ID",
                 "KF_PIPELINES_APP_OAUTH2_CLIENT_ID", "KF_PIPELINES_APP_OAUTH2_CLIENT_SECRET", "KF_PIPELINES_TOKEN",
                 "KF_PIPELINES_TOKEN_FILE", "KF_PIPELINES_SA_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    with KfpServer() as state:
        yield state


def _version(state, run: dict) -> dict:
    """The uploaded pipeline version a run references."""
    return state.versions[run["pipeline_version_reference"]["pipeline_version_id"]]


def _spec(body: dict) -> tuple[dict, dict]:
    """(pipeline spec, kubernetes platform spec) as kfp.Client sent them."""
    sent = body["pipeline_spec"]
    return sent["pipeline_spec"], sent["platform_spec"]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def _assert_gpu_training(body: dict) -> None:
    spec, k8s = _spec(body)
    accelerator = spec["deploymentSpec"]["executors"]["exec-train-model"]["container"]["resources"]["accelerator"]
    assert accelerator["resourceType"] == "nvidia.com/gpu"
    assert str(accelerator["resourceCount"]) == "1"
    assert k8s["exec-train-model"]["nodeSelector"]["labels"] == {"cloud.google.com/gke-nodepool": "gpu-pool"}
    assert k8s["exec-train-model"]["secretAsEnv"][0]["secretName"] == "medembed-minio"


def test_submit_sends_gpu_pipeline_and_typed_params(kfp_server, tmp_path, capsys):
    rc = cli.main(["submit", "--host", kfp_server.url, "--skip-preflight", "--output", str(tmp_path / "pipeline.yaml"),
                   "--experiment", "medembed-ci", "--run-name", "e5-trial",
                   "--param", "epochs=3", "--param", "base_model=intfloat/multilingual-e5-small",
                   "--param", "matryoshka_dims=[768,256,64]"])
    assert rc == 0

    # The experiment did not exist: looked up first, then created once.
    created = kfp_server.posted("/experiments")
    assert [e["display_name"] for e in created] == ["medembed-ci"]
    (run,) = kfp_server.posted("/runs")
    (experiment_id,) = kfp_server.experiments
    assert run["experiment_id"] == experiment_id
    assert run["display_name"] == "e5-trial"
    # JSON values keep their type (3 is an int, the dims a list); plain strings stay strings.
    assert run["runtime_config"]["parameters"] == {
        "epochs": 3, "base_model": "intfloat/multilingual-e5-small", "matryoshka_dims": [768, 256, 64]}
    # The run references the uploaded version, which is the compiled GPU pipeline.
    _assert_gpu_training(_version(kfp_server, run))
    assert "run: " in capsys.readouterr().out


def _containers(spec: dict) -> dict[str, dict]:
    """The tasks that run a container, at the root and inside the condition branches (sub-DAGs)."""
    components = spec["components"]
    dags = [spec["root"]["dag"]] + [c["dag"] for c in components.values() if "dag" in c]
    return {name: task for dag in dags for name, task in dag["tasks"].items()
            if "dag" not in components[task["componentRef"]["name"]]}


def _cached(body: dict) -> dict[str, bool]:
    return {name: bool(task.get("cachingOptions", {}).get("enableCache"))
            for name, task in _containers(_spec(body)[0]).items()}


def test_submit_keeps_registration_uncached_unless_no_cache(kfp_server, tmp_path):
    """Submission must not re-enable the cache of the registration task (a side effect)."""
    cli.main(["submit", "--host", kfp_server.url, "--skip-preflight", "--output", str(tmp_path / "a.yaml")])
    cli.main(["submit", "--host", kfp_server.url, "--skip-preflight", "--output", str(tmp_path / "b.yaml"),
              "--no-cache"])
    default_run, no_cache_run = kfp_server.posted("/runs")

    # Exactly the compiled per-task choices: registration off, the rest on.
    compiled = next(yaml.safe_load_all((tmp_path / "a.yaml").read_text()))
    default_version = _version(kfp_server, default_run)
    assert _cached(default_version) == {name: bool(task.get("cachingOptions", {}).get("enableCache"))
                                        for name, task in _containers(compiled).items()}
    # Training, evaluation and registration sit in the "retrain" branch; the change check, the
    # registration and the run record (side effects, or reads of the registry) are never cached.
    assert _cached(default_version) == {
        "resolve-config": True, "snapshot-data": False, "prep-data": True, "check-changes": False,
        "train-model": True, "evaluate-models": False, "register-model": False, "keep-champion": True,
        "record-run": False}
    no_cache = _cached(_version(kfp_server, no_cache_run))
    assert set(no_cache) == set(_cached(default_version)) and not any(no_cache.values())
    # Second submission found the experiment the first one created, and added a version to the same pipeline.
    assert len(kfp_server.posted("/experiments")) == 1
    assert len(kfp_server.pipelines) == 1


def test_schedule_creates_a_recurring_run_of_an_uploaded_version_and_twice_keeps_one(kfp_server, tmp_path, capsys):
    experiment_id = kfp_server.add_experiment("medical-embeddings")  # exists already: reused
    argv = ["schedule", "--host", kfp_server.url, "--output", str(tmp_path / "pipeline.yaml"),
            "--cron", "0 0 2 * * *", "--name", "nightly-retrain", "--param", "epochs=2",
            "--param", "data_uri=s3://medembed-data/medquad/v2.jsonl.gz"]
    assert cli.main(argv) == 0
    assert kfp_server.posted("/experiments") == []
    (job,) = kfp_server.posted("/recurringruns")
    assert job["experiment_id"] == experiment_id
    assert job["display_name"] == "nightly-retrain"
    assert job["trigger"]["cron_schedule"]["cron"] == "0 0 2 * * *"
    assert str(job["max_concurrency"]) == "1"
    assert job["no_catchup"] is True
    assert job["mode"] == "ENABLE"
    assert job["runtime_config"]["parameters"] == {"epochs": 2, "data_uri": "s3://medembed-data/medquad/v2.jsonl.gz"}
    # The recurring run references the uploaded version (no embedded spec): the compiled GPU pipeline.
    assert not job.get("pipeline_spec")
    version = _version(kfp_server, job)
    _assert_gpu_training(version)
    assert _cached(version)["register-model"] is False
    assert kfp_server.uploads[-1]["content"] == (tmp_path / "pipeline.yaml").read_text()
    assert "recurring run: nightly-retrain (" in capsys.readouterr().out

    assert cli.main(argv) == 0  # again: replaced, not duplicated
    (remaining,) = kfp_server.recurring_runs.values()
    assert remaining["display_name"] == "nightly-retrain"
    assert remaining["pipeline_version_reference"]["pipeline_version_id"] != job["pipeline_version_reference"][
        "pipeline_version_id"]
    assert "replaced: " in capsys.readouterr().out


def test_schedule_rejects_five_field_cron_before_contacting_kfp(kfp_server, tmp_path):
    assert cli.main(["schedule", "--host", kfp_server.url, "--output", str(tmp_path / "p.yaml"), "--cron", "0 2 * * *"]) == 2
    assert kfp_server.requests == []


def test_token_is_sent_as_bearer(kfp_server, tmp_path):
    cli.main(["submit", "--host", kfp_server.url, "--skip-preflight", "--output", str(tmp_path / "p.yaml"),
              "--token", "t0ken"])
    api_calls = [r for r in kfp_server.requests if r["path"] != f"{API}/healthz"]
    assert api_calls and all(r["authorization"] == "Bearer t0ken" for r in api_calls)


def test_bad_param_is_a_usage_error(kfp_server, tmp_path, capsys):
    rc = cli.main(["submit", "--host", kfp_server.url, "--skip-preflight", "--output", str(tmp_path / "p.yaml"),
                   "--param", "epochs"])
    assert rc == 2
    assert "name=value" in capsys.readouterr().err
    assert kfp_server.posted("/runs") == []


@pytest.mark.parametrize("argv", [["submit"], ["runs", "list"], ["schedules", "list"]])
def test_nothing_listening_is_one_line_and_a_non_zero_exit(argv, tmp_path):
    """The console script as a user runs it: no FutureWarning, no retry warnings, no traceback."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KF_PIPELINES_")}
    env.update(PYTHONPATH=str(ROOT), TMPDIR=str(tmp_path), HOME=str(tmp_path), PYTHONWARNINGS="default")
    result = subprocess.run([sys.executable, "-m", "medembed", *argv, "--host", "http://127.0.0.1:9"],
                            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert result.returncode == 5
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("error: cannot reach KFP at http://127.0.0.1:9 (connection refused); fix: "
                                    "kubectl -n kubeflow port-forward svc/ml-pipeline-ui 8080:80")
    assert list(tmp_path.iterdir()) == []  # nothing compiled, nothing left behind
