"""The cluster pipeline IR: GPU placement, MinIO secret wiring and parameter defaults.

The compiled file has two YAML documents: the pipeline spec, then the Kubernetes platform spec
(node selectors, tolerations, secrets from kfp-kubernetes).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from medembed import cli


def _compile(tmp_path, monkeypatch, *extra: str) -> tuple[dict, dict, str]:
    out = tmp_path / "ir" / "pipeline.yaml"
    assert cli.main(["compile", "--output", str(out), *extra]) == 0
    text = out.read_text()
    spec, platform = yaml.safe_load_all(text)
    return spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"], text


@pytest.fixture
def compiled(tmp_path, monkeypatch):
    return _compile(tmp_path, monkeypatch)


def _defaults(spec: dict) -> dict:
    return {name: p.get("defaultValue") for name, p in spec["root"]["inputDefinitions"]["parameters"].items()}


def test_training_task_requests_one_gpu_on_the_gpu_pool(compiled):
    spec, k8s, _ = compiled
    container = spec["deploymentSpec"]["executors"]["exec-train-model"]["container"]
    accelerator = container["resources"]["accelerator"]
    assert accelerator["resourceType"] == "nvidia.com/gpu"
    assert int(accelerator["resourceCount"]) == 1
    assert container["image"] == "ghcr.io/medembed/medembed:0.1.0"
    train = k8s["exec-train-model"]
    assert train["nodeSelector"]["labels"] == {"cloud.google.com/gke-nodepool": "gpu-pool"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in train["tolerations"]
    # Registration must not hold a GPU; prep does while the profile mines hard negatives with the base model.
    executors = spec["deploymentSpec"]["executors"]
    assert "accelerator" not in executors["exec-register-model"]["container"].get("resources", {})
    assert "nodeSelector" not in k8s["exec-register-model"]
    assert executors["exec-prep-data"]["container"]["resources"]["accelerator"]["resourceType"] == "nvidia.com/gpu"


def test_prep_stays_on_cpu_without_mining(tmp_path):
    from medembed.cli import main

    output = tmp_path / "no-mining.yaml"
    assert main(["compile", "--output", str(output), "--set", "data.num_negatives=0"]) == 0
    spec, k8s = list(yaml.safe_load_all(output.read_text()))
    prep = k8s["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-prep-data"]
    assert "accelerator" not in spec["deploymentSpec"]["executors"]["exec-prep-data"]["container"].get("resources", {})
    assert "nodeSelector" not in prep


def test_every_task_reads_minio_credentials_from_the_secret(compiled):
    spec, k8s, text = compiled
    executors = spec["deploymentSpec"]["executors"]
    # Every task that touches storage; the configuration task reads nothing but its inputs.
    assert "secretAsEnv" not in k8s["exec-resolve-config"]
    for name, platform in ((n, p) for n, p in k8s.items() if n != "exec-resolve-config"):
        (secret,) = platform["secretAsEnv"]
        assert secret["secretName"] == "medembed-minio", name
        assert {(m["secretKey"], m["envVar"]) for m in secret["keyToEnv"]} == {
            ("accesskey", "MINIO_ACCESS_KEY"), ("secretkey", "MINIO_SECRET_KEY")}
        env = {e["name"]: e["value"] for e in executors[name]["container"].get("env", [])}
        assert env["MINIO_ENDPOINT"] == "minio.medembed.svc.cluster.local:9000"
        # Keys come from the Secret only, never as plain container env values.
        assert not {"MINIO_ACCESS_KEY", "MINIO_SECRET_KEY", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} & set(env)
    # No credential value anywhere in the IR (the example/test keys included).
    for literal in ("minioadmin", "minio123", "CHANGE-ME", "test-secret", "test-access"):
        assert literal not in text


def _profile(spec: dict) -> dict:
    """The compiled profile: every field's default, resolved with the run form by the first task."""
    dags = [spec["root"]["dag"]] + [c["dag"] for c in spec["components"].values() if "dag" in c]
    (task,) = [dag["tasks"]["resolve-config"] for dag in dags if "resolve-config" in dag["tasks"]]
    return task["inputs"]["parameters"]["profile_config"]["runtimeValue"]["constant"]


def test_parameter_defaults_follow_the_cluster_profile(compiled):
    defaults = _defaults(compiled[0])
    # The production base model, mirrored into MinIO (`medembed models import-base`): no hub at run time.
    assert defaults["base_model"] == "s3://medembed-registry/base-models/intfloat/multilingual-e5-large"
    # KFP stores numbers as floats in the IR.
    assert [int(d) for d in defaults["matryoshka_dims"]] == [1024, 768, 512, 384, 256, 128, 64]
    assert defaults["epochs"] == 5
    assert _profile(compiled[0])["train"]["warmup_steps"] == 100
    assert _profile(compiled[0])["train"]["eval_steps"] == 1000
    assert defaults["batch_size"] == 32
    assert defaults["overrides"] == {}
    assert defaults["data_uri"].startswith("s3://medembed-data/")
    assert defaults["registry_uri"].startswith("s3://medembed-registry/")


def test_set_override_changes_the_default(tmp_path, monkeypatch):
    spec, _, _ = _compile(tmp_path, monkeypatch, "--set", "train.epochs=3")
    assert _defaults(spec)["epochs"] == 3
    assert _defaults(spec)["batch_size"] == 32  # everything else stays


def test_image_override_at_compile_time(tmp_path):
    out = tmp_path / "pipeline.yaml"
    subprocess.run([sys.executable, "-m", "medembed", "compile", "--output", str(out),
                    "--set", "cluster.image=registry.example.com/medembed:9.9"], check=True,
                   cwd=Path(__file__).resolve().parents[1], capture_output=True)
    spec = next(yaml.safe_load_all(out.read_text()))
    images = [e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()]
    assert len(images) == 9 and set(images) == {"registry.example.com/medembed:9.9"}


def test_every_task_is_bounded_and_gpu_tasks_get_shm_scratch_and_the_model_cache(compiled):
    spec, k8s, _ = compiled
    executors = spec["deploymentSpec"]["executors"]
    for name, executor in executors.items():
        resources = executor["container"]["resources"]
        assert {"resourceCpuLimit", "resourceMemoryLimit", "resourceCpuRequest", "resourceMemoryRequest"} <= set(resources), name
        assert resources["resourceMemoryLimit"] == resources["resourceMemoryRequest"], f"{name}: no memory overcommit"
        assert int(k8s[name]["activeDeadlineSeconds"]) > 0, f"{name} has no timeout"
    for name in ("exec-prep-data", "exec-train-model", "exec-evaluate-models"):  # the profile mines negatives
        platform = k8s[name]
        assert platform["emptyDirMounts"] == [{"medium": "Memory", "mountPath": "/dev/shm", "sizeLimit": "16Gi",
                                               "volumeName": "dshm"}]
        (scratch,) = platform["genericEphemeralVolume"]
        assert (scratch["mountPath"], scratch["size"]) == ("/scratch", "200Gi")
        (cache,) = platform["pvcMount"]
        assert (cache["constant"], cache["mountPath"]) == ("medembed-model-cache", "/models-cache")
        env = {e["name"]: e["value"] for e in executors[name]["container"]["env"]}
        assert env["TMPDIR"] == "/scratch" and env["MEDEMBED_MODEL_CACHE"] == "/models-cache"
    assert int(k8s["exec-train-model"]["activeDeadlineSeconds"]) == 86_400


def test_an_exit_handler_records_every_run_and_the_base_model_comes_from_minio(compiled):
    spec, _, _ = compiled
    root = spec["root"]["dag"]["tasks"]
    assert root["record-run"]["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    assert root["record-run"]["dependentTasks"] == ["exit-handler-1"]
    assert root["record-run"]["cachingOptions"].get("enableCache", False) is False
    assert _defaults(spec)["base_model"].startswith("s3://medembed-registry/base-models/"), "no hub at run time"
    assert _defaults(spec)["notify_url"] == ""
