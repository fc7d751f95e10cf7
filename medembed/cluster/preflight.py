"""Before a GPU run: does the cluster have what the compiled pipeline will ask for?

    target = PreflightTarget.from_config(load_config("cluster"))
    checks = run_preflight(target, kube=kube_client(), minio_endpoint=None, kfp_check=...)
    print(format_checks(checks)); sys.exit(0 if passed(checks) else 1)

Each check is PASS, FAIL, WARN (works, but not as intended) or SKIP (could not be checked, e.g. because
an earlier check failed or RBAC hides it), with one line of detail and, when not PASS, a one-line fix.
Reads with the `kubernetes` client (namespaces, secrets, configmaps, nodes: nothing is changed), talks to
MinIO with the pipeline's own keys (read from the Secret) and writes one small object to each bucket the
pipeline writes, then deletes it. Secret values are never printed.
"""

from __future__ import annotations

import base64
import io
import os
import uuid
from dataclasses import dataclass, field
from typing import Callable, Mapping
from urllib.parse import urlparse

import yaml

from . import EXAMPLE_CREDENTIAL_PREFIX, PIPELINE_ROOT, PROFILE_NAMESPACE
from .runs import ClusterError

PASS, FAIL, WARN, SKIP = "PASS", "FAIL", "WARN", "SKIP"
APPLY = "kubectl apply -k manifests/overlays/<overlay>"
RERUN_INIT_JOB = ("kubectl -n medembed delete job minio-bucket-init --ignore-not-found && " + APPLY
                  + " (the Job creates buckets, policy and user)")
PORT_FORWARD_MINIO = ("kubectl -n medembed port-forward svc/minio 9000:9000, then MINIO_ENDPOINT=http://127.0.0.1:9000 "
                      "(or --minio-endpoint)")


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    detail: str
    fix: str | None = None


@dataclass(frozen=True)
class Toleration:
    key: str
    operator: str = "Exists"
    value: str = ""
    effect: str = ""

    def tolerates(self, taint) -> bool:
        if self.effect and self.effect != taint.effect:
            return False
        if self.key and self.key != taint.key:
            return False
        return self.operator == "Exists" or (self.value or "") == (taint.value or "")


@dataclass(frozen=True)
class PreflightTarget:
    """What the compiled pipeline expects of the cluster."""

    namespace: str
    secret: str
    node_selector: tuple[tuple[str, str], ...]
    tolerations: tuple[Toleration, ...]
    gpu_resource: str
    gpu_count: int
    minio_endpoint: str  # the in-cluster endpoint of the pipeline tasks
    minio_secure: bool
    read_buckets: tuple[str, ...]
    write_buckets: tuple[str, ...]
    data_uri: str
    pipeline_root: str
    pipeline_root_explicit: bool = False  # given per run (--pipeline-root), not from kfp-launcher
    base_model: str = ""
    secret_keys: tuple[str, str] = ("accesskey", "secretkey")

    @classmethod
    def from_config(cls, config, namespace: str | None = None, pipeline_root: str | None = None) -> "PreflightTarget":
        cluster = config.cluster

        def bucket(uri: str) -> str | None:
            return urlparse(uri).netloc if uri.startswith("s3://") else None

        root = pipeline_root or PIPELINE_ROOT
        writes = [bucket(config.registry.registry_uri), bucket(config.train.checkpoint_uri), bucket(root)]
        reads = [bucket(config.data.data_uri), bucket(config.train.base_model)]
        return cls(namespace=namespace or PROFILE_NAMESPACE, secret=cluster.minio_secret,
                   node_selector=tuple(tuple(pair) for pair in cluster.gpu_node_selector),
                   tolerations=(Toleration(cluster.gpu_toleration_key, "Exists", "", cluster.gpu_toleration_effect),),
                   gpu_resource=cluster.gpu_resource, gpu_count=cluster.gpu_count,
                   minio_endpoint=cluster.minio_endpoint, minio_secure=cluster.minio_secure,
                   read_buckets=tuple(dict.fromkeys(b for b in reads if b and b not in writes)),
                   write_buckets=tuple(dict.fromkeys(b for b in writes if b)),
                   data_uri=config.data.data_uri, pipeline_root=root, pipeline_root_explicit=pipeline_root is not None,
                   base_model=config.train.base_model)


# --- Kubernetes client -----------------------------------------------------------------------------------

@dataclass
class KubeAccess:
    api: object  # kubernetes.client.ApiClient
    where: str  # "context NAME at URL" / "in-cluster at URL"
    timeout: float = 15.0


def kube_client(kubeconfig: str | None = None, context: str | None = None, timeout: float = 15.0,
                env: Mapping[str, str] = os.environ) -> KubeAccess:
    """Credentials from the kubeconfig (KUBECONFIG, ~/.kube/config; `context` or the current one), else
    the pod's service account. One try per request, no retry chatter."""
    from kubernetes import client, config

    configuration = client.Configuration()
    path = kubeconfig or env.get("KUBECONFIG", "").split(os.pathsep)[0] or os.path.expanduser("~/.kube/config")
    where = None
    if os.path.exists(path):
        try:
            config.load_kube_config(config_file=path, context=context, client_configuration=configuration,
                                    persist_config=False)
        except Exception as exc:  # noqa: BLE001 - any kubeconfig problem is reported in one line
            raise ClusterError(f"cannot use kubeconfig {path}{f' context {context}' if context else ''}: "
                               f"{' '.join(str(exc).split())[:200]}",
                               "kubectl config get-contexts; pass --context NAME or --kubeconfig PATH") from None
        current = context or config.list_kube_config_contexts(config_file=path)[1]["name"]
        where = f"context {current} at {configuration.host}"
    elif env.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config(client_configuration=configuration)
        where = f"in-cluster service account at {configuration.host}"
    else:
        raise ClusterError(f"no Kubernetes credentials (no kubeconfig at {path}, not in a pod)",
                           "gcloud container clusters get-credentials CLUSTER (or your cluster's equivalent), "
                           "or pass --kubeconfig")
    configuration.retries = 0
    return KubeAccess(api=client.ApiClient(configuration), where=where, timeout=timeout)


def _kube_status(exc) -> int | None:
    from kubernetes.client.exceptions import ApiException

    return exc.status if isinstance(exc, ApiException) else None


def _kube_reason(exc) -> str:
    status = _kube_status(exc)
    if status is not None:
        return f"HTTP {status}"
    inner = getattr(exc, "reason", None) or exc
    text = str(inner)
    return "connection refused" if "refused" in text.lower() else " ".join(text.split())[:160]


# --- checks ----------------------------------------------------------------------------------------------

@dataclass
class _Context:
    target: PreflightTarget
    kube: KubeAccess | None
    checks: list[Check] = field(default_factory=list)
    keys: tuple[str, str] | None = None  # MinIO keys from the Secret (never printed)
    namespace_ok: bool = False

    def add(self, name: str, status: str, detail: str, fix: str | None = None) -> Check:
        check = Check(name, status, detail, fix if status != PASS else None)
        self.checks.append(check)
        return check


def _check_kubernetes(ctx: _Context, kube_error: ClusterError | None) -> bool:
    from kubernetes import client

    target = ctx.target
    if kube_error is not None:
        ctx.add("Kubernetes API", FAIL, kube_error.message, kube_error.fix)
        return False
    core = client.CoreV1Api(ctx.kube.api)
    try:
        core.read_namespace(target.namespace, _request_timeout=ctx.kube.timeout)
    except Exception as exc:  # noqa: BLE001
        status = _kube_status(exc)
        if status is None:
            ctx.add("Kubernetes API", FAIL, f"cannot reach {ctx.kube.where} ({_kube_reason(exc)})",
                    "check the cluster's address and your network (kubectl cluster-info), or pass --context")
            return False
        ctx.add("Kubernetes API", PASS, ctx.kube.where)
        if status == 401:
            ctx.checks[-1] = Check("Kubernetes API", FAIL, f"{ctx.kube.where} refused the credentials (HTTP 401)",
                                   "refresh them: gcloud container clusters get-credentials CLUSTER (or kubectl login)")
            return False
        if status == 404:
            ctx.add("namespace", FAIL, f"{target.namespace} does not exist",
                    f"create the Kubeflow profile {target.namespace} (Kubeflow UI or a Profile object), "
                    "or pass --namespace with yours")
            return True
        if status == 403:
            ctx.add("namespace", SKIP, f"not allowed to read namespace {target.namespace} (RBAC); "
                    "the objects in it are checked below", None)
            ctx.namespace_ok = True
            return True
        ctx.add("namespace", FAIL, f"reading {target.namespace} failed ({_kube_reason(exc)})",
                "retry; check the API server (kubectl get ns)")
        return True
    ctx.add("Kubernetes API", PASS, ctx.kube.where)
    ctx.add("namespace", PASS, f"{target.namespace} exists")
    ctx.namespace_ok = True
    return True


def _check_secret(ctx: _Context) -> None:
    from kubernetes import client

    target = ctx.target
    name = f"Secret {target.secret}"
    if not ctx.namespace_ok:
        ctx.add(name, SKIP, f"namespace {target.namespace} missing")
        return
    try:
        secret = client.CoreV1Api(ctx.kube.api).read_namespaced_secret(target.secret, target.namespace,
                                                                      _request_timeout=ctx.kube.timeout)
    except Exception as exc:  # noqa: BLE001
        status = _kube_status(exc)
        if status == 404:
            ctx.add(name, FAIL, f"not found in {target.namespace}",
                    f"{APPLY} (creates it in {target.namespace}; another profile: manifests/README.md)")
        elif status == 403:
            ctx.add(name, WARN, f"not allowed to read Secrets in {target.namespace}: keys not checked",
                    "MinIO is checked with MINIO_ACCESS_KEY/MINIO_SECRET_KEY instead, if set")
        else:
            ctx.add(name, FAIL, f"reading it failed ({_kube_reason(exc)})", "retry; kubectl get secret -n "
                    + target.namespace)
        return
    data = secret.data or {}
    values = {}
    for key in target.secret_keys:
        try:
            values[key] = base64.b64decode(data.get(key) or "").decode().strip()
        except (ValueError, UnicodeDecodeError):
            values[key] = ""
    missing = [key for key in target.secret_keys if not values[key]]
    if missing:
        ctx.add(name, FAIL, f"has no value for {', '.join(missing)} in {target.namespace}",
                f"set accesskey and secretkey in manifests/base/minio-pipelines.env, then {APPLY}")
        return
    if any(value.startswith(EXAMPLE_CREDENTIAL_PREFIX) for value in values.values()):
        ctx.add(name, FAIL, "holds the example credentials of manifests/base/minio-pipelines.env.example",
                f"put real keys in manifests/base/minio-pipelines.env, {APPLY}, then re-run the init Job")
        return
    ctx.keys = (values[target.secret_keys[0]], values[target.secret_keys[1]])
    ctx.add(name, PASS, f"in {target.namespace}, keys {' and '.join(target.secret_keys)} set")


def _check_launcher(ctx: _Context) -> None:
    from kubernetes import client

    target = ctx.target
    name = "kfp-launcher"
    if not ctx.namespace_ok:
        ctx.add(name, SKIP, f"namespace {target.namespace} missing")
        return
    try:
        config_map = client.CoreV1Api(ctx.kube.api).read_namespaced_config_map("kfp-launcher", target.namespace,
                                                                               _request_timeout=ctx.kube.timeout)
    except Exception as exc:  # noqa: BLE001
        status = _kube_status(exc)
        if status == 404:
            ctx.add(name, WARN, f"no ConfigMap kfp-launcher in {target.namespace}: run artifacts go to KFP's own "
                    "store (a second copy of every model)", f"{APPLY} (manifests/core/kfp-launcher.yaml)")
        else:
            ctx.add(name, SKIP, f"cannot read it ({_kube_reason(exc)})")
        return
    data = config_map.data or {}
    root = data.get("defaultPipelineRoot", "")
    try:
        s3 = ((yaml.safe_load(data.get("providers") or "") or {}).get("s3") or {}).get("default") or {}
    except yaml.YAMLError:
        s3 = {}
    secret_ref = ((s3.get("credentials") or {}).get("secretRef") or {})
    providers_ok = (s3.get("endpoint") == target.minio_endpoint and secret_ref.get("secretName") == target.secret)
    effective = target.pipeline_root if target.pipeline_root_explicit else root
    if effective.startswith("s3://") and not providers_ok:
        ctx.add(name, FAIL, f"pipeline root {effective} but no s3 provider for {target.minio_endpoint} with Secret "
                f"{target.secret}: the launcher would have no MinIO credentials",
                f"{APPLY} (restores `providers` in kfp-launcher); manifests/README.md, 'Pipeline root'")
    elif effective != target.pipeline_root:
        ctx.add(name, WARN, f"defaultPipelineRoot is {root or 'unset'}, not {target.pipeline_root}: run artifacts "
                "go to KFP's own store (Kubeflow's profile controller may have reset it)",
                f"medembed submit --pipeline-root {target.pipeline_root}, or set the profile controller's default "
                "pipeline root")
    else:
        ctx.add(name, PASS, f"pipeline root {effective} in MinIO {s3.get('endpoint')}"
                + (" (set per run)" if target.pipeline_root_explicit else ""))


def _check_gpu_nodes(ctx: _Context, scale_from_zero: bool) -> None:
    from kubernetes import client

    target = ctx.target
    name = "GPU nodes"
    selector = ",".join(f"{k}={v}" for k, v in target.node_selector)
    try:
        nodes = client.CoreV1Api(ctx.kube.api).list_node(label_selector=selector,
                                                         _request_timeout=ctx.kube.timeout).items or []
    except Exception as exc:  # noqa: BLE001
        if _kube_status(exc) == 403:
            column = target.gpu_resource.replace(".", "\\.")
            ctx.add(name, WARN, "not allowed to list nodes (cluster-scoped RBAC): GPU capacity not checked",
                    f"ask an administrator to run: kubectl get nodes -l {selector} "
                    f"-o custom-columns=NAME:.metadata.name,GPU:.status.allocatable.{column}")
        else:
            ctx.add(name, FAIL, f"listing nodes failed ({_kube_reason(exc)})", "retry; kubectl get nodes")
        return
    if not nodes:
        detail = f"no node has the label {selector}"
        if scale_from_zero:
            ctx.add(name, WARN, detail + " (node pool scaled to zero: the autoscaler adds one for the run)",
                    "make sure the pool exists and may scale up: manifests/README.md, 'GKE GPU node pool'")
        else:
            ctx.add(name, FAIL, detail, "create the GPU node pool (manifests/README.md, 'GKE GPU node pool'), or set "
                    "--set cluster.gpu_node_selector to its label; a pool at zero nodes: --gpu-scale-from-zero")
        return
    usable, problems = [], []
    for node in nodes:
        node_name = node.metadata.name
        allocatable = (node.status.allocatable or {}) if node.status else {}
        gpus = _quantity(allocatable.get(target.gpu_resource))
        untolerated = [t for t in (node.spec.taints or []) if t.effect in ("NoSchedule", "NoExecute")
                       and not any(tol.tolerates(t) for tol in target.tolerations)]
        ready = any(c.type == "Ready" and c.status == "True" for c in ((node.status.conditions or []) if node.status else []))
        if node.spec.unschedulable:
            problems.append(("cordoned", f"{node_name} is cordoned"))
        elif not ready:
            problems.append(("notready", f"{node_name} is not Ready"))
        elif gpus < target.gpu_count:
            problems.append(("gpus", f"{node_name} has {gpus:g} allocatable {target.gpu_resource}"))
        elif untolerated:
            taint = untolerated[0]
            problems.append(("taint", f"{node_name} has taint {taint.key}"
                                      f"{'=' + taint.value if taint.value else ''}:{taint.effect} the tasks do not tolerate"))
        else:
            usable.append(f"{node_name} ({gpus:g} {target.gpu_resource})")
    if usable:
        ctx.add(name, PASS, f"{len(usable)} of {len(nodes)} node(s) with {selector} usable: {', '.join(usable[:3])}"
                + (" ..." if len(usable) > 3 else ""))
        return
    kinds = {kind for kind, _ in problems}
    fixes = {
        "gpus": f"install the GPU driver / NVIDIA device plugin so nodes report {target.gpu_resource} (GKE: "
                "--accelerator ...,gpu-driver-version=latest), or lower --set cluster.gpu_count",
        "taint": "remove the taint, or make the tasks tolerate it: --set cluster.gpu_toleration_key=KEY "
                 "(and cluster.gpu_toleration_effect)",
        "cordoned": "kubectl uncordon NODE",
        "notready": "kubectl describe node NODE (kubelet, driver or network trouble)",
    }
    first = next(kind for kind in ("gpus", "taint", "cordoned", "notready") if kind in kinds)
    ctx.add(name, FAIL, f"no usable node with {selector}: {'; '.join(text for _, text in problems[:3])}", fixes[first])


def _quantity(value) -> float:
    if value is None:
        return 0.0
    try:
        return float(str(value))
    except ValueError:
        from kubernetes.utils import parse_quantity

        return float(parse_quantity(str(value)))


# --- MinIO -----------------------------------------------------------------------------------------------

def minio_client(endpoint: str, keys: tuple[str, str], secure: bool | None = None, timeout: float = 10.0,
                 region: str | None = None):
    """A `minio.Minio` for `endpoint` (host:port or URL): one try per request, bounded waits."""
    import urllib3
    from minio import Minio

    parsed = urlparse(endpoint if "://" in endpoint else f"//{endpoint}")
    if secure is None:
        secure = parsed.scheme == "https"
    http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=timeout, read=timeout * 3),
                               retries=urllib3.Retry(total=0))
    return Minio(parsed.netloc, access_key=keys[0], secret_key=keys[1], secure=secure,
                 region=region or os.environ.get("MINIO_REGION") or "us-east-1", http_client=http)


AUTH_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken"}


def _s3_code(exc) -> str | None:
    from minio.error import S3Error

    return exc.code if isinstance(exc, S3Error) else None


def _check_minio(ctx: _Context, endpoint: str | None, env: Mapping[str, str]) -> object | None:
    """Reachability and the keys; returns a client for the bucket checks, or None."""
    target = ctx.target
    endpoint = endpoint or env.get("MINIO_ENDPOINT") or target.minio_endpoint
    keys = ctx.keys
    source = f"the keys of Secret {target.secret}"
    if keys is None and env.get("MINIO_ACCESS_KEY") and env.get("MINIO_SECRET_KEY"):
        keys, source = (env["MINIO_ACCESS_KEY"], env["MINIO_SECRET_KEY"]), "MINIO_ACCESS_KEY/MINIO_SECRET_KEY"
    if keys is None:
        ctx.add("MinIO", SKIP, "no pipeline keys to test with (Secret not readable, MINIO_ACCESS_KEY/"
                "MINIO_SECRET_KEY not set)", "see the Secret check, or export MINIO_ACCESS_KEY/MINIO_SECRET_KEY")
        return None
    secure = None if "://" in endpoint else target.minio_secure
    client = minio_client(endpoint, keys, secure=secure)
    probe = (target.read_buckets + target.write_buckets)[0]
    try:
        next(iter(client.list_objects(probe, prefix=".medembed-preflight/")), None)
    except Exception as exc:  # noqa: BLE001
        code = _s3_code(exc)
        if code in AUTH_CODES:
            ctx.add("MinIO", FAIL, f"{endpoint} rejected {source} ({code})",
                    f"the init Job creates this user from the Secret: {RERUN_INIT_JOB}")
            return None
        if code is None:
            ctx.add("MinIO", FAIL, f"cannot reach {endpoint} ({_minio_reason(exc)})",
                    PORT_FORWARD_MINIO if endpoint == target.minio_endpoint or "127.0.0.1" in endpoint
                    else "check the endpoint (--minio-endpoint / MINIO_ENDPOINT) and that MinIO runs: "
                         "kubectl -n medembed get pods")
            return None
    ctx.add("MinIO", PASS, f"{endpoint} answers to {source}")
    return client


def _minio_reason(exc) -> str:
    import urllib3

    if isinstance(exc, urllib3.exceptions.MaxRetryError):
        exc = exc.reason or exc
    text = str(exc)
    if "refused" in text.lower():
        return "connection refused"
    if "Name or service not known" in text or "nodename nor servname" in text or "resolution" in text.lower():
        return "unknown host: the in-cluster name resolves only inside the cluster"
    if isinstance(exc, (urllib3.exceptions.TimeoutError, TimeoutError)):
        return "timed out"
    return " ".join(text.split())[:160]


def _check_buckets(ctx: _Context, client) -> None:
    target = ctx.target
    for bucket in target.read_buckets + target.write_buckets:
        name = f"bucket {bucket}"
        writes = bucket in target.write_buckets
        try:
            exists = client.bucket_exists(bucket)
        except Exception as exc:  # noqa: BLE001
            code = _s3_code(exc)
            if code in ("AccessDenied", "Forbidden") or "403" in str(exc):
                ctx.add(name, FAIL, "the pipeline user may not list it (policy medembed-pipelines)",
                        f"add it to manifests/core/scripts/pipelines-policy.json, then {RERUN_INIT_JOB}")
            else:
                ctx.add(name, FAIL, f"checking it failed ({code or _minio_reason(exc)})", "retry")
            continue
        if not exists:
            ctx.add(name, FAIL, "does not exist", RERUN_INIT_JOB)
            continue
        if not writes:
            ctx.add(name, PASS, "present (read by the pipeline)")
            continue
        key = f".medembed-preflight/{uuid.uuid4().hex}"
        try:
            client.put_object(bucket, key, io.BytesIO(b"ok"), 2)
            client.remove_object(bucket, key)
        except Exception as exc:  # noqa: BLE001
            code = _s3_code(exc)
            ctx.add(name, FAIL, f"present but not writable with the pipeline keys ({code or _minio_reason(exc)})",
                    f"the policy must allow s3:PutObject/DeleteObject on {bucket}/*: {RERUN_INIT_JOB}")
            continue
        ctx.add(name, PASS, "present, writable (test object written and deleted)")


def _check_data(ctx: _Context, client) -> None:
    uri = ctx.target.data_uri
    name = "data"
    if uri.startswith("bundled:"):
        ctx.add(name, PASS, f"{uri} ships in the project image")
        return
    if not uri.startswith("s3://"):
        ctx.add(name, FAIL, f"{uri} is a local path, which the cluster's tasks cannot see",
                "upload it (mc cp FILE ALIAS/medembed-data/...) and --set data.data_uri=s3://medembed-data/...")
        return
    if client is None:
        ctx.add(name, SKIP, f"{uri}: MinIO not checked")
        return
    parsed = urlparse(uri)
    bucket, key = parsed.netloc, parsed.path.lstrip("/")
    try:
        if key and not key.endswith("/"):
            try:
                stat = client.stat_object(bucket, key)
                ctx.add(name, PASS, f"{uri} ({stat.size:,} bytes)")
                return
            except Exception as exc:  # noqa: BLE001
                if _s3_code(exc) not in ("NoSuchKey", "NoSuchObject", "ResourceNotFound"):
                    raise
        first = next(iter(client.list_objects(bucket, prefix=key.rstrip("/") + "/" if key else "",
                                              recursive=True)), None)
    except Exception as exc:  # noqa: BLE001
        code = _s3_code(exc)
        ctx.add(name, FAIL, f"cannot read {uri} ({code or _minio_reason(exc)})",
                "the pipeline user must be able to read it: manifests/core/scripts/pipelines-policy.json")
        return
    if first is None:
        ctx.add(name, FAIL, f"{uri} not found (no object, no objects under that prefix)",
                f"upload it: mc cp FILE ALIAS/{bucket}/{key} (manifests/README.md, 'Upload the data'), "
                "or --set data.data_uri=...")
    else:
        ctx.add(name, PASS, f"{uri} (a folder: objects under it)")


def _check_base_model(ctx: _Context, client) -> None:
    """The base model must come from MinIO (imported with its manifest): tasks never reach a model hub."""
    from ..base_models import MANIFEST

    ref, name = ctx.target.base_model, "base model"
    if not ref:
        return
    if ref.startswith("bundled:"):
        ctx.add(name, PASS, f"{ref} ships in the project image")
        return
    if not ref.startswith("s3://"):
        ctx.add(name, WARN, f"{ref} would be downloaded from a model hub by every GPU task",
                f"mirror it once: medembed models import-base {ref} s3://medembed-registry/base-models/{ref}, "
                "then --set train.base_model=s3://medembed-registry/base-models/...")
        return
    if client is None:
        ctx.add(name, SKIP, f"{ref}: MinIO not checked")
        return
    parsed = urlparse(ref)
    key = f"{parsed.path.strip('/')}/{MANIFEST}".lstrip("/")
    try:
        client.stat_object(parsed.netloc, key)
    except Exception as exc:  # noqa: BLE001
        code = _s3_code(exc)
        if code in ("NoSuchKey", "NoSuchObject", "ResourceNotFound", "NoSuchBucket"):
            ctx.add(name, FAIL, f"{ref} holds no imported model (no {MANIFEST})",
                    f"from a machine with hub access: medembed models import-base NAME_OR_DIR {ref}")
        else:
            ctx.add(name, FAIL, f"cannot read {ref} ({code or _minio_reason(exc)})",
                    "the pipeline user must be able to read it: manifests/core/scripts/pipelines-policy.json")
        return
    ctx.add(name, PASS, f"{ref} (imported, with its manifest)")


def run_preflight(target: PreflightTarget, *, kube: KubeAccess | ClusterError | None,
                  minio_endpoint: str | None = None, kfp_check: Callable[[], str] | None = None,
                  gpu_scale_from_zero: bool = False, env: Mapping[str, str] = os.environ) -> list[Check]:
    """Every check, in order. `kube` is a client, or the ClusterError that prevented one."""
    kube_error = kube if isinstance(kube, ClusterError) else None
    if kube is None:
        kube_error = ClusterError("no Kubernetes client given")
    ctx = _Context(target=target, kube=None if kube_error else kube)
    if kfp_check is not None:
        try:
            ctx.add("KFP API", PASS, kfp_check())
        except ClusterError as exc:
            ctx.add("KFP API", FAIL, exc.message, exc.fix)
    if _check_kubernetes(ctx, kube_error):
        _check_secret(ctx)
        _check_launcher(ctx)
        _check_gpu_nodes(ctx, gpu_scale_from_zero)
    else:
        for name in ("namespace", f"Secret {target.secret}", "kfp-launcher", "GPU nodes"):
            ctx.add(name, SKIP, "Kubernetes API not reachable")
    client = _check_minio(ctx, minio_endpoint, env)
    if client is not None:
        _check_buckets(ctx, client)
    else:
        for bucket in target.read_buckets + target.write_buckets:
            ctx.add(f"bucket {bucket}", SKIP, "MinIO not checked")
    _check_data(ctx, client)
    _check_base_model(ctx, client)
    return ctx.checks


def passed(checks: list[Check]) -> bool:
    return not any(c.status == FAIL for c in checks)


def format_checks(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks) if checks else 0
    lines = []
    for check in checks:
        lines.append(f"{check.status:<4}  {check.name:<{width}}  {check.detail}")
        if check.fix and check.status != PASS:
            lines.append(f"{'':<4}  {'':<{width}}  fix: {check.fix}")
    failed = sum(c.status == FAIL for c in checks)
    warned = sum(c.status == WARN for c in checks)
    lines.append(f"preflight: {'FAILED' if failed else 'ok'} ({len(checks)} checks, {failed} failed, {warned} warnings)")
    return "\n".join(lines)


__all__ = ["Check", "KubeAccess", "PreflightTarget", "Toleration", "format_checks", "kube_client", "minio_client",
           "passed", "run_preflight"]
