"""The cluster commands (medembed.cluster.commands) as the CLI runs them: argument parsing, preflight before
submit, the compiled package never left in a temp folder, following a run to its exit code, and one line
on stderr (no traceback, no warning) when KFP cannot be reached."""

from __future__ import annotations

import argparse
import io
import tempfile

import pytest

from fake_kfp import KfpServer, component, group, timestamp
from medembed import cli
from medembed.cluster import PROFILE_NAMESPACE, commands
from test_cluster_preflight import buckets, cluster  # noqa: F401 - fixtures: moto buckets, fake Kubernetes
from test_cluster_runs import group_keys, isolated_kfp, package  # noqa: F401 - sub-DAG keys; autouse: no KFP
# context/env leaks in; the compiled pipeline (the same package the CLI compiles: cluster profile)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medembed")
    commands.add_commands(parser.add_subparsers(dest="command", required=True))
    return parser


def _cli(*argv: str) -> tuple[int, str, str]:
    """The commands as medembed.cli runs them: with its run planning (--set/--param) and compiler."""
    out, err = io.StringIO(), io.StringIO()
    code = commands.run(_parser().parse_args(list(argv)), out=out, err=err, plan=cli.run_plan,
                        compile_pipeline=cli.compile_pipeline)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def kfp_api():
    with KfpServer() as state:
        yield state


@pytest.fixture
def temp_dir(tmp_path, monkeypatch):
    """tempfile's folder for the test: what submit leaves there is visible."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def _finishing(package, final: str) -> list[dict]:
    """A run of the real graph that retrains: prep running, then training (inside the "retrain" branch)
    ending as `final`, then the exit handler records the run."""
    g = group_keys(package)
    train = "SUCCEEDED" if final == "SUCCEEDED" else "FAILED"
    head = [*group(g["exit"], "RUNNING", 0), *component("resolve-config", "SUCCEEDED", 0, 1),
            *component("snapshot-data", "SUCCEEDED", 1, 2)]
    branch = "SUCCEEDED" if train == "SUCCEEDED" else "FAILED"
    end = head + [*component("prep-data", "SUCCEEDED", 2, 60), *component("check-changes", "SUCCEEDED", 60, 61),
                  *group(g["branches"], branch, 61, 390), *group(g["retrain"], branch, 61, 390),
                  *group(g["unchanged"], "SKIPPED", 61, 61),
                  *component("train-model", train, 62, 300, message=None if train == "SUCCEEDED" else "CUDA out of memory")]
    if train == "SUCCEEDED":
        end += [*component("evaluate-models", "SUCCEEDED", 300, 380), *component("register-model", "SUCCEEDED", 380, 390)]
    end += component("record-run", "SUCCEEDED", 391, 400)
    return [{"state": "RUNNING", "run_details": {"task_details": head + component("prep-data", "RUNNING", 2)}},
            {"state": final, "finished_at": timestamp(400), "run_details": {"task_details": end}}]


def test_submit_wait_uploads_runs_follows_and_exits_with_the_outcome(kfp_api, temp_dir, tmp_path, package):
    kfp_api.script_next_run(_finishing(package, "SUCCEEDED"))
    code, out, err = _cli("submit", "--host", kfp_api.url, "--skip-preflight", "--wait", "--interval", "0",
                          "--param", "epochs=3", "--param", "matryoshka_dims=[768,256]", "--run-name", "e5-trial",
                          "--set", "train.lora_r=8", "--set", "cluster.train_memory=80Gi",
                          "--output", str(tmp_path / "kept.yaml"))
    assert (code, err) == (0, "")
    (run,) = kfp_api.posted("/runs")
    # The CLI's planning: named run parameters, other --set fields in `overrides`, cluster.* compiled in.
    assert run["runtime_config"]["parameters"] == {"epochs": 3, "matryoshka_dims": [768, 256],
                                                   "overrides": {"train.lora_r": 8}}
    assert run["display_name"] == "e5-trial"
    version = kfp_api.versions[run["pipeline_version_reference"]["pipeline_version_id"]]
    assert version["description"] == "profile cluster; --set train.lora_r=8 cluster.train_memory=80Gi"
    kept = (tmp_path / "kept.yaml").read_text()
    assert "resourceMemoryRequest: 80Gi" in kept
    assert kfp_api.uploads[-1]["content"] == kept  # the uploaded package is the one kept with --output
    run_id = next(iter(kfp_api.runs))
    assert f"run: {run_id}\nurl: {kfp_api.url}/#/runs/details/{run_id}\n" in out
    assert "run SUCCEEDED" in out and "state:    SUCCEEDED" in out
    assert list(temp_dir.iterdir()) == []  # the compiled file went with its temporary folder


def test_submit_wait_on_a_failing_run_names_the_task_and_exits_1(kfp_api, temp_dir, package):
    kfp_api.script_next_run(_finishing(package, "FAILED"))
    code, out, err = _cli("submit", "--host", kfp_api.url, "--skip-preflight", "--wait", "--interval", "0")
    assert code == 1 and err == ""
    assert "failed task: GPU training (train-model): CUDA out of memory" in out
    assert "GPU training: FAILED" in out  # the live progress names it too
    assert "branches: retrain FAILED, unchanged SKIPPED" in out
    assert "logs: kubectl -n kubeflow-user-example-com logs -l pipeline/runid=" in out
    assert list(temp_dir.iterdir()) == []


def test_submit_runs_preflight_first_and_stops_on_a_failure(kfp_api, cluster, buckets, tmp_path, temp_dir):
    names = buckets["names"]
    storage = ["--set", f"data.data_uri=s3://{names['data']}/medquad/medquad.jsonl.gz",
               "--set", f"registry.registry_uri=s3://{names['registry']}/models",
               "--set", f"train.checkpoint_uri=s3://{names['checkpoints']}/train",
               "--set", f"train.base_model=s3://{names['registry']}/base-models/e5",  # imported by the fixture
               "--pipeline-root", f"s3://{names['artifacts']}/pipelines",
               "--kubeconfig", str(cluster.kubeconfig(tmp_path / "kubeconfig")),
               "--minio-endpoint", buckets["endpoint"]]
    code, out, err = _cli("submit", "--host", kfp_api.url, *storage)
    assert (code, err) == (0, ""), out
    assert "PASS  KFP API" in out and "preflight: ok" in out
    assert out.index("preflight: ok") < out.index("run: ")
    (run,) = kfp_api.posted("/runs")
    assert run["runtime_config"]["pipeline_root"] == f"s3://{names['artifacts']}/pipelines"

    cluster.nodes = []  # the GPU pool is gone
    code, out, err = _cli("submit", "--host", kfp_api.url, *storage)
    assert code == commands.EXIT_PREFLIGHT and err == ""
    assert "FAIL  GPU nodes" in out and "fix: create the GPU node pool" in out
    assert "not submitted: fix the failed checks above, or pass --skip-preflight" in out
    assert len(kfp_api.posted("/runs")) == 1 and len(kfp_api.uploads) == 2  # nothing more was uploaded
    # The run parameter data_uri is what preflight checks, not the compiled default.
    code, out, _ = _cli("preflight", "--host", kfp_api.url, *storage, "--gpu-scale-from-zero",
                        "--param", f"data_uri=s3://{names['data']}/nothing-here.jsonl")
    assert code == commands.EXIT_PREFLIGHT
    assert "FAIL  data" in out and f"s3://{names['data']}/nothing-here.jsonl not found" in out
    assert "WARN  GPU nodes" in out


def test_preflight_command_exit_codes(kfp_api, cluster, buckets, tmp_path):
    kubeconfig = str(cluster.kubeconfig(tmp_path / "kubeconfig"))
    names = buckets["names"]
    args = ["preflight", "--host", kfp_api.url, "--kubeconfig", kubeconfig, "--minio-endpoint", buckets["endpoint"],
            "--set", f"data.data_uri=s3://{names['data']}/medquad/medquad.jsonl.gz",
            "--set", f"registry.registry_uri=s3://{names['registry']}/models",
            "--set", f"train.checkpoint_uri=s3://{names['checkpoints']}/train",
            "--set", f"train.base_model=s3://{names['registry']}/base-models/e5",  # imported by the fixture
            "--pipeline-root", f"s3://{names['artifacts']}/pipelines"]
    code, out, _ = _cli(*args)
    assert code == 0 and out.rstrip().endswith("0 failed, 0 warnings)")
    code, out, _ = _cli(*args[:2], "http://127.0.0.1:9", *args[3:])
    assert code == commands.EXIT_PREFLIGHT
    assert "FAIL  KFP API" in out and "cannot reach KFP at http://127.0.0.1:9 (connection refused)" in out


@pytest.mark.parametrize("argv", [["submit", "--skip-preflight"], ["runs", "list"], ["runs", "get", "r-1"],
                                  ["runs", "wait", "r-1"], ["runs", "terminate", "r-1"]])
def test_unreachable_kfp_is_one_line_on_stderr_and_exit_5(argv, capsys, recwarn, temp_dir):
    code, out, err = _cli(*argv, "--host", "http://127.0.0.1:9")
    assert code == 5 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: cannot reach KFP at http://127.0.0.1:9 (connection refused)")
    assert "Traceback" not in err
    assert capsys.readouterr() == ("", "")  # nothing printed around the CLI's own streams
    assert not [w for w in recwarn if issubclass(w.category, FutureWarning)]
    assert list(temp_dir.iterdir()) == []


def test_endpoint_and_token_from_the_environment_never_printed(kfp_api, monkeypatch, tmp_path):
    kfp_api.required_token = "env-file-token-123"
    token_file = tmp_path / "token"
    token_file.write_text("env-file-token-123\n")
    monkeypatch.setenv("KF_PIPELINES_ENDPOINT", kfp_api.url)
    monkeypatch.setenv("KF_PIPELINES_TOKEN_FILE", str(token_file))
    kfp_api.add_run("nightly", "SUCCEEDED")
    code, out, err = _cli("runs", "list")
    assert code == 0 and "nightly" in out and "env-file-token-123" not in out + err
    monkeypatch.delenv("KF_PIPELINES_TOKEN_FILE")
    code, out, err = _cli("runs", "list")
    assert code == 5 and "HTTP 401, no token sent" in err and "kubectl create token" in err


def test_runs_get_wait_terminate(kfp_api):
    experiment = kfp_api.add_experiment("medical-embeddings", PROFILE_NAMESPACE)
    done = kfp_api.add_run("done", "SUCCEEDED", experiment, finished_at=timestamp(90))
    code, out, _ = _cli("runs", "get", done, "--host", kfp_api.url)
    assert code == 0 and "state:    SUCCEEDED" in out and f"/#/runs/details/{done}" in out

    failed = kfp_api.add_run("broken", "RUNNING", experiment)
    kfp_api.script_run(failed, [{"state": "RUNNING"}, {"state": "FAILED", "finished_at": timestamp(50),
                                                       "error": {"code": 2, "message": "pod deleted"}}])
    code, out, _ = _cli("runs", "wait", failed, "--host", kfp_api.url, "--interval", "0")
    assert code == 1 and "error: pod deleted" in out

    slow = kfp_api.add_run("slow", "RUNNING", experiment)
    code, out, _ = _cli("runs", "terminate", slow, "--host", kfp_api.url)
    assert code == 0 and f"run {slow}: CANCELING (terminate requested)" in out
    kfp_api.script_run(slow, [{"state": "CANCELED", "finished_at": timestamp(70)}])
    code, _, _ = _cli("runs", "wait", slow, "--host", kfp_api.url, "--interval", "0")
    assert code == 3

    code, out, _ = _cli("runs", "list", "--host", kfp_api.url, "--experiment", "medical-embeddings", "--limit", "2")
    assert code == 0 and len(out.strip().splitlines()) == 3  # header + 2 newest
    code, _, err = _cli("runs", "get", "no-such-run", "--host", kfp_api.url)
    assert code == 5 and "not found" in err


def test_wait_timeout_exit_4(kfp_api):
    run_id = kfp_api.add_run("endless", "RUNNING")
    code, out, err = _cli("runs", "wait", run_id, "--host", kfp_api.url, "--interval", "0", "--timeout", "0")
    assert code == 4 and "still RUNNING" in err and f"medembed runs terminate {run_id}" in err


def test_bad_param_is_a_usage_error(kfp_api):
    code, _, err = _cli("submit", "--host", kfp_api.url, "--skip-preflight", "--param", "epochs")
    assert code == 2 and "name=value" in err
    assert kfp_api.posted("/runs") == []
