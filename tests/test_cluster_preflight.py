"""medembed.cluster.preflight against a local Kubernetes API (tests/fake_k8s.py, read through the real
`kubernetes` client from a kubeconfig) and a local S3 (moto's server; tests/fake_k8s.DenyingS3 where moto
cannot say no): the healthy cluster passes every check, and each failure is reported with its one-line fix."""

from __future__ import annotations

import dataclasses
import io
import uuid
from pathlib import Path

import pytest
import yaml

from fake_k8s import GKE_GPU_TAINT, FakeKube, kube_server, node, s3_server
from medembed.cluster import PROFILE_NAMESPACE, preflight, runs
from medembed.cluster.preflight import FAIL, PASS, SKIP, WARN
from medembed.config import load_config

ROOT = Path(__file__).resolve().parents[1]
GPU_POOL = {"cloud.google.com/gke-nodepool": "gpu-pool"}
KEYS = {"accesskey": "medembed-pipelines", "secretkey": "a3f1c9e07b2d4e6f8a9b0c1d2e3f4a5b"}


def _launcher_data() -> dict[str, str]:
    """The kfp-launcher ConfigMap exactly as the manifests deploy it."""
    return yaml.safe_load((ROOT / "manifests" / "core" / "kfp-launcher.yaml").read_text())["data"]


@pytest.fixture
def buckets(s3_endpoint):
    """Fresh buckets on moto (shared across the session): data (with the dataset), registry, checkpoints,
    artifacts; and the target the cluster profile would have with these bucket names."""
    from minio import Minio

    prefix = f"pf{uuid.uuid4().hex[:10]}"
    names = {kind: f"{prefix}-{kind}" for kind in ("data", "registry", "checkpoints", "artifacts")}
    client = Minio(s3_endpoint["MINIO_ENDPOINT"].split("://")[1], access_key="x", secret_key="y", secure=False,
                   region="us-east-1")
    for name in names.values():
        client.make_bucket(name)
    client.put_object(names["data"], "medquad/medquad.jsonl.gz", io.BytesIO(b"{}\n"), 3)
    client.put_object(names["registry"], "base-models/e5/medembed-base-model.json", io.BytesIO(b"{}"), 2)
    config = load_config("cluster").override({
        "data.data_uri": f"s3://{names['data']}/medquad/medquad.jsonl.gz",
        "train.base_model": f"s3://{names['registry']}/base-models/e5",
        "registry.registry_uri": f"s3://{names['registry']}/models",
        "train.checkpoint_uri": f"s3://{names['checkpoints']}/train"})
    target = preflight.PreflightTarget.from_config(config, pipeline_root=f"s3://{names['artifacts']}/pipelines")
    # As if kfp-launcher set this root (not --pipeline-root).
    target = dataclasses.replace(target, pipeline_root_explicit=False)
    return {"names": names, "client": client, "target": target, "endpoint": s3_endpoint["MINIO_ENDPOINT"]}


@pytest.fixture
def cluster(buckets):
    """A healthy cluster: profile namespace, scoped Secret, kfp-launcher, a GKE H200 node and a CPU node."""
    state = FakeKube()
    state.namespaces.add(PROFILE_NAMESPACE)
    state.add_secret(PROFILE_NAMESPACE, "medembed-minio", KEYS)
    data = _launcher_data()
    data["defaultPipelineRoot"] = buckets["target"].pipeline_root
    state.configmaps[(PROFILE_NAMESPACE, "kfp-launcher")] = data
    state.nodes = [node("gke-h200-1", GPU_POOL, gpus="8", taints=[GKE_GPU_TAINT]),
                   node("gke-default-1", {"cloud.google.com/gke-nodepool": "default-pool"}, gpus=None)]
    with kube_server(state) as kube:
        yield kube


def _run(kube_state: FakeKube, target, tmp_path, *, endpoint: str | None = None, kfp_check=None, **kwargs):
    access = preflight.kube_client(kubeconfig=str(kube_state.kubeconfig(tmp_path / "kubeconfig")))
    return preflight.run_preflight(target, kube=access, minio_endpoint=endpoint, kfp_check=kfp_check, env={}, **kwargs)


def _by_name(checks) -> dict[str, preflight.Check]:
    return {c.name: c for c in checks}


def _only_failure(checks, name: str, status: str = FAIL) -> preflight.Check:
    """The named check has `status` (with a one-line fix) and is the only check not passing or skipped."""
    check = _by_name(checks)[name]
    assert check.status == status, check
    assert check.fix and "\n" not in check.fix and "\n" not in check.detail
    others = [c for c in checks if c.name != name and c.status not in (PASS, SKIP)]
    assert others == [], others
    return check


def test_healthy_cluster_passes_every_check_without_showing_secrets(cluster, buckets, tmp_path):
    checks = _run(cluster, buckets["target"], tmp_path, endpoint=buckets["endpoint"], kfp_check=lambda: "healthy")
    assert [(c.name, c.status) for c in checks] == [
        ("KFP API", PASS), ("Kubernetes API", PASS), ("namespace", PASS), ("Secret medembed-minio", PASS),
        ("kfp-launcher", PASS), ("GPU nodes", PASS), ("MinIO", PASS),
        *[(f"bucket {buckets['names'][k]}", PASS) for k in ("data", "registry", "checkpoints", "artifacts")],
        ("data", PASS), ("base model", PASS)]
    assert preflight.passed(checks)
    text = preflight.format_checks(checks)
    assert "fix:" not in text and text.endswith("preflight: ok (13 checks, 0 failed, 0 warnings)")
    assert "1 of 1 node(s) with cloud.google.com/gke-nodepool=gpu-pool usable: gke-h200-1 (8 nvidia.com/gpu)" in text
    assert KEYS["secretkey"] not in text and KEYS["accesskey"] not in text
    # Read-only towards Kubernetes; the test objects written to MinIO were deleted again.
    assert {r["path"].split("/")[3] for r in cluster.requests} == {"namespaces", "nodes"}  # all GETs
    for name in buckets["names"].values():
        assert not [o for o in buckets["client"].list_objects(name, prefix=".medembed-preflight/", recursive=True)]
    # The kubeconfig's token authenticated every request.
    assert {r["authorization"] for r in cluster.requests} == {"Bearer kube-token"}


# --- Kubernetes side ----------------------------------------------------------------------------------

def test_unreachable_kubernetes_api(buckets, tmp_path):
    state = FakeKube()
    access = preflight.kube_client(kubeconfig=str(state.kubeconfig(tmp_path / "kc", server="http://127.0.0.1:9")))
    checks = preflight.run_preflight(buckets["target"], kube=access, minio_endpoint=buckets["endpoint"], env={})
    check = _by_name(checks)["Kubernetes API"]
    assert check.status == FAIL and "(connection refused)" in check.detail and "kubectl cluster-info" in check.fix
    assert all(_by_name(checks)[n].status == SKIP for n in ("namespace", "Secret medembed-minio", "GPU nodes"))


def test_no_kubeconfig_at_all(tmp_path):
    with pytest.raises(runs.ClusterError, match="no Kubernetes credentials") as exc:
        preflight.kube_client(env={"KUBECONFIG": str(tmp_path / "none")})
    assert "no Kubernetes credentials" in str(exc.value) and "get-credentials" in exc.value.fix


def test_rejected_kubernetes_credentials(cluster, buckets, tmp_path):
    cluster.token = "another-token"
    check = _by_name(_run(cluster, buckets["target"], tmp_path, endpoint=buckets["endpoint"]))["Kubernetes API"]
    assert check.status == FAIL and "HTTP 401" in check.detail and "get-credentials" in check.fix


def test_missing_namespace(cluster, buckets, tmp_path):
    cluster.namespaces.clear()
    checks = _run(cluster, buckets["target"], tmp_path, endpoint=buckets["endpoint"])
    check = _by_name(checks)["namespace"]
    assert check.status == FAIL and "create the Kubeflow profile" in check.fix and "--namespace" in check.fix


def test_namespace_hidden_by_rbac_is_skipped_not_failed(cluster, buckets, tmp_path):
    cluster.forbidden.add("namespaces")  # a profile user may not read namespace objects
    checks = _run(cluster, buckets["target"], tmp_path, endpoint=buckets["endpoint"])
    assert _by_name(checks)["namespace"].status == SKIP
    assert preflight.passed(checks)


def test_missing_secret(cluster, buckets, tmp_path):
    cluster.secrets.clear()
    checks = _run(cluster, buckets["target"], tmp_path, endpoint=buckets["endpoint"])
    check = _by_name(checks)["Secret medembed-minio"]
    assert check.status == FAIL and f"not found in {PROFILE_NAMESPACE}" in check.detail
    assert check.fix.startswith("kubectl apply -k manifests/overlays/")
    assert _by_name(checks)["MinIO"].status == SKIP  # no keys to test MinIO with


def test_secret_with_the_example_credentials(cluster, buckets, tmp_path):
    cluster.add_secret(PROFILE_NAMESPACE, "medembed-minio",
                       {"accesskey": "CHANGE-ME-pipelines-user", "secretkey": "CHANGE-ME-pipelines-secret"})
    check = _by_name(_run(cluster, buckets["target"], tmp_path, endpoint=buckets["endpoint"]))["Secret medembed-minio"]
    assert check.status == FAIL and "example credentials" in check.detail
    assert "manifests/base/minio-pipelines.env" in check.fix


def test_secret_without_a_key(cluster, buckets, tmp_path):
    cluster.add_secret(PROFILE_NAMESPACE, "medembed-minio", {"accesskey": "medembed-pipelines"})
    check = _by_name(_run(cluster, buckets["target"], tmp_path, endpoint=buckets["endpoint"]))["Secret medembed-minio"]
    assert check.status == FAIL and "no value for secretkey" in check.detail


def test_missing_kfp_launcher_is_a_warning(cluster, buckets, tmp_path):
    cluster.configmaps.clear()
    checks = _run(cluster, buckets["target"], tmp_path, endpoint=buckets["endpoint"])
    check = _only_failure(checks, "kfp-launcher", WARN)
    assert "KFP's own store" in check.detail and "kfp-launcher.yaml" in check.fix
    assert preflight.passed(checks)  # runs work, artifacts are just stored twice


def test_pipeline_root_reset_by_the_profile_controller(cluster, buckets, tmp_path):
    data = cluster.configmaps[(PROFILE_NAMESPACE, "kfp-launcher")]
    data["defaultPipelineRoot"] = "minio://mlpipeline/private-artifacts/kubeflow-user-example-com/v2/artifacts"
    check = _only_failure(_run(cluster, buckets["target"], tmp_path, endpoint=buckets["endpoint"]),
                          "kfp-launcher", WARN)
    assert check.fix.startswith(f"medembed submit --pipeline-root {buckets['target'].pipeline_root}")
    # Given per run, the same ConfigMap passes: the providers entry supplies the credentials.
    explicit = dataclasses.replace(buckets["target"], pipeline_root_explicit=True)
    assert _by_name(_run(cluster, explicit, tmp_path, endpoint=buckets["endpoint"]))["kfp-launcher"].status == PASS


def test_s3_pipeline_root_without_providers_fails(cluster, buckets, tmp_path):
    cluster.configmaps[(PROFILE_NAMESPACE, "kfp-launcher")] = {
        "defaultPipelineRoot": buckets["target"].pipeline_root}
    check = _only_failure(_run(cluster, buckets["target"], tmp_path, endpoint=buckets["endpoint"]), "kfp-launcher")
    assert "no MinIO credentials" in check.detail and "providers" in check.fix


def test_no_gpu_node_with_the_pipelines_node_selector(cluster, buckets, tmp_path):
    cluster.nodes = [node("gke-default-1", {"cloud.google.com/gke-nodepool": "default-pool"}, gpus=None)]
    check = _only_failure(_run(cluster, buckets["target"], tmp_path, endpoint=buckets["endpoint"]), "GPU nodes")
    assert check.detail == "no node has the label cloud.google.com/gke-nodepool=gpu-pool"
    assert "create the GPU node pool" in check.fix and "--gpu-scale-from-zero" in check.fix
    # A pool that autoscales from zero has no node yet: a warning when the user says so.
    checks = _run(cluster, buckets["target"], tmp_path, endpoint=buckets["endpoint"], gpu_scale_from_zero=True)
    assert _by_name(checks)["GPU nodes"].status == WARN and preflight.passed(checks)


def test_gpu_node_without_allocatable_gpus(cluster, buckets, tmp_path):
    cluster.nodes = [node("gke-h200-1", GPU_POOL, gpus="0", taints=[GKE_GPU_TAINT])]
    check = _only_failure(_run(cluster, buckets["target"], tmp_path, endpoint=buckets["endpoint"]), "GPU nodes")
    assert "gke-h200-1 has 0 allocatable nvidia.com/gpu" in check.detail
    assert "device plugin" in check.fix


def test_gpu_node_with_a_taint_the_tasks_do_not_tolerate(cluster, buckets, tmp_path):
    reserved = {"key": "dedicated", "value": "research", "effect": "NoSchedule"}
    cluster.nodes = [node("gke-h200-1", GPU_POOL, taints=[GKE_GPU_TAINT, reserved])]
    check = _only_failure(_run(cluster, buckets["target"], tmp_path, endpoint=buckets["endpoint"]), "GPU nodes")
    assert "taint dedicated=research:NoSchedule the tasks do not tolerate" in check.detail
    assert "cluster.gpu_toleration_key" in check.fix


def test_cordoned_or_not_ready_gpu_nodes(cluster, buckets, tmp_path):
    cluster.nodes = [node("gke-h200-1", GPU_POOL, unschedulable=True), node("gke-h200-2", GPU_POOL, ready=False)]
    check = _only_failure(_run(cluster, buckets["target"], tmp_path, endpoint=buckets["endpoint"]), "GPU nodes")
    assert "gke-h200-1 is cordoned" in check.detail and "gke-h200-2 is not Ready" in check.detail
    assert check.fix == "kubectl uncordon NODE"


def test_nodes_hidden_by_rbac_is_a_warning_with_the_admin_command(cluster, buckets, tmp_path):
    cluster.forbidden.add("nodes")
    check = _only_failure(_run(cluster, buckets["target"], tmp_path, endpoint=buckets["endpoint"]), "GPU nodes", WARN)
    assert "kubectl get nodes -l cloud.google.com/gke-nodepool=gpu-pool" in check.fix
    assert "nvidia\\.com/gpu" in check.fix


def test_tolerations_match_like_the_scheduler():
    taint = type("Taint", (), {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"})
    assert preflight.Toleration("nvidia.com/gpu", "Exists", "", "NoSchedule").tolerates(taint)
    assert preflight.Toleration("nvidia.com/gpu", "Exists").tolerates(taint)  # any effect
    assert preflight.Toleration("", "Exists").tolerates(taint)  # empty key + Exists: every taint
    assert preflight.Toleration("nvidia.com/gpu", "Equal", "present", "NoSchedule").tolerates(taint)
    assert not preflight.Toleration("nvidia.com/gpu", "Equal", "absent").tolerates(taint)
    assert not preflight.Toleration("nvidia.com/gpu", "Exists", "", "NoExecute").tolerates(taint)
    assert not preflight.Toleration("dedicated", "Exists").tolerates(taint)


# --- MinIO side -----------------------------------------------------------------------------------------

def test_minio_unreachable(cluster, buckets, tmp_path):
    checks = _run(cluster, buckets["target"], tmp_path, endpoint="http://127.0.0.1:9")
    check = _by_name(checks)["MinIO"]
    assert check.status == FAIL and "cannot reach http://127.0.0.1:9 (connection refused)" in check.detail
    assert "kubectl -n medembed port-forward svc/minio 9000:9000" in check.fix
    assert all(c.status == SKIP for c in checks if c.name.startswith("bucket ") or c.name == "data")


def test_minio_rejects_the_pipeline_keys(cluster, buckets, tmp_path):
    with s3_server("bad-keys") as s3:
        check = _by_name(_run(cluster, buckets["target"], tmp_path, endpoint=s3.url))["MinIO"]
    assert check.status == FAIL and "(InvalidAccessKeyId)" in check.detail
    assert "kubectl -n medembed delete job minio-bucket-init" in check.fix


def test_missing_bucket(cluster, buckets, tmp_path):
    checkpoints = buckets["names"]["checkpoints"]
    buckets["client"].remove_bucket(checkpoints)
    check = _only_failure(_run(cluster, buckets["target"], tmp_path, endpoint=buckets["endpoint"]),
                          f"bucket {checkpoints}")
    assert check.detail == "does not exist" and "minio-bucket-init" in check.fix


def test_bucket_the_policy_does_not_let_the_pipeline_write(cluster, buckets, tmp_path):
    with s3_server("deny-writes") as s3:
        checks = _run(cluster, buckets["target"], tmp_path, endpoint=s3.url)
    names = buckets["names"]
    for kind in ("registry", "checkpoints", "artifacts"):
        check = _by_name(checks)[f"bucket {names[kind]}"]
        assert check.status == FAIL and "not writable with the pipeline keys (AccessDenied)" in check.detail
        assert "s3:PutObject" in check.fix
    assert _by_name(checks)[f"bucket {names['data']}"].status == PASS  # read-only by design: no write test


def test_missing_data(cluster, buckets, tmp_path):
    buckets["client"].remove_object(buckets["names"]["data"], "medquad/medquad.jsonl.gz")
    check = _only_failure(_run(cluster, buckets["target"], tmp_path, endpoint=buckets["endpoint"]), "data")
    assert "not found" in check.detail and check.fix.startswith("upload it: mc cp FILE ALIAS/")


def test_data_folder_and_local_path(cluster, buckets, tmp_path):
    folder = dataclasses.replace(buckets["target"], data_uri=f"s3://{buckets['names']['data']}/medquad/")
    assert _by_name(_run(cluster, folder, tmp_path, endpoint=buckets["endpoint"]))["data"].status == PASS
    local = dataclasses.replace(buckets["target"], data_uri="/home/me/medquad.jsonl")
    check = _only_failure(_run(cluster, local, tmp_path, endpoint=buckets["endpoint"]), "data")
    assert "local path" in check.detail and "data.data_uri=s3://" in check.fix


def test_base_model_not_imported_or_from_a_hub(cluster, buckets, tmp_path):
    missing = dataclasses.replace(buckets["target"], base_model=f"s3://{buckets['names']['registry']}/base-models/none")
    check = _only_failure(_run(cluster, missing, tmp_path, endpoint=buckets["endpoint"]), "base model")
    assert "holds no imported model" in check.detail and check.fix.startswith("from a machine with hub access: medembed models import-base")
    hub = dataclasses.replace(buckets["target"], base_model="intfloat/multilingual-e5-large")
    check = _only_failure(_run(cluster, hub, tmp_path, endpoint=buckets["endpoint"]), "base model", status="WARN")
    assert "model hub" in check.detail and "import-base intfloat/multilingual-e5-large" in check.fix


def test_unhealthy_kfp_api(cluster, buckets, tmp_path):
    settings = runs.resolve_settings(host="http://127.0.0.1:9", env={})
    checks = _run(cluster, buckets["target"], tmp_path, endpoint=buckets["endpoint"],
                  kfp_check=lambda: str(runs.check_health(settings)))
    check = _only_failure(checks, "KFP API")
    assert "cannot reach KFP at http://127.0.0.1:9" in check.detail and "port-forward" in check.fix
    assert not preflight.passed(checks)
    assert "preflight: FAILED" in preflight.format_checks(checks)


def test_target_follows_the_cluster_profile():
    target = preflight.PreflightTarget.from_config(load_config("cluster"))
    assert target.namespace == PROFILE_NAMESPACE and target.secret == "medembed-minio"
    assert target.read_buckets == ("medembed-data",)
    assert target.write_buckets == ("medembed-registry", "medembed-checkpoints", "medembed-artifacts")
    assert target.node_selector == (("cloud.google.com/gke-nodepool", "gpu-pool"),)
    assert target.gpu_resource == "nvidia.com/gpu" and target.gpu_count == 1
    assert not target.pipeline_root_explicit
