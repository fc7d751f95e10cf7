"""The run life cycle on a KFP endpoint, through the real `kfp.Client` (KFP API v2beta1).

    settings = resolve_settings(host=None, namespace=None, token_file=None)   # flags, env, in-cluster
    session = connect(settings)                 # healthz first: one-line ClusterError when unreachable
    sub = submit(session, package, experiment="medical-embeddings", params={"epochs": 3})
    report = wait(session, sub.run_id, display=ProgressDisplay(sys.stdout))
    sys.exit(exit_code(report.state))

`submit` uploads the compiled pipeline as a named pipeline with a new version per submission (the
Kubeflow UI keeps the history), then starts a run of that version. `get_run` turns KFP's task details
(Argo nodes) into the pipeline's own tasks: states, durations, the failing task's message and where its
logs are. Every failure talking to KFP becomes a `ClusterError`: one line, with the fix.

Credentials: the token comes from `--token-file`, `KF_PIPELINES_TOKEN`, `KF_PIPELINES_TOKEN_FILE` or, in a
pod, the projected service-account token KFP accepts; it is sent as a bearer token and never printed.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import io
import json
import logging
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping, TextIO

import yaml

from . import PROFILE_NAMESPACE

ENDPOINT_ENV = "KF_PIPELINES_ENDPOINT"
UI_ENDPOINT_ENV = "KF_PIPELINES_UI_ENDPOINT"
TOKEN_ENV = "KF_PIPELINES_TOKEN"
TOKEN_FILE_ENV = "KF_PIPELINES_TOKEN_FILE"
# Where a Kubeflow PodDefault ("access-ml-pipeline") mounts a token with KFP's audience; KFP's SDK reads the same.
SA_TOKEN_PATH_ENV = "KF_PIPELINES_SA_TOKEN_PATH"
SA_TOKEN_PATH = "/var/run/secrets/kubeflow/pipelines/token"
IN_CLUSTER_ENDPOINT = "http://ml-pipeline.kubeflow.svc.cluster.local:8888"
PORT_FORWARD_HINT = ("kubectl -n kubeflow port-forward svc/ml-pipeline-ui 8080:80, then --host http://localhost:8080 "
                     f"(or set {ENDPOINT_ENV})")
TOKEN_HINT = ("create one with `kubectl create token default-editor -n {namespace} --audience pipelines.kubeflow.org` "
              f"and pass it in {TOKEN_ENV} or --token-file")

TERMINAL_STATES = frozenset({"SUCCEEDED", "FAILED", "CANCELED", "SKIPPED"})
EXIT_SUCCEEDED, EXIT_FAILED, EXIT_CANCELED, EXIT_TIMEOUT, EXIT_CLUSTER_ERROR = 0, 1, 3, 4, 5


class ClusterError(RuntimeError):
    """A failure the user fixes outside this program: `str()` is one line, ending with the fix."""

    exit_code = EXIT_CLUSTER_ERROR

    def __init__(self, message: str, fix: str | None = None):
        super().__init__(message)
        self.message = message
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.message}; fix: {self.fix}" if self.fix else self.message


class KfpConnectionError(ClusterError):
    """The endpoint cannot be reached, or does not speak KFP's API."""


class KfpAuthError(ClusterError):
    """The endpoint wants (other) credentials."""


class KfpNotFoundError(ClusterError):
    """A run, pipeline or experiment that does not exist."""


# --- endpoint and credentials ----------------------------------------------------------------------------

@dataclass(frozen=True)
class KfpSettings:
    host: str
    namespace: str | None
    ui_host: str
    token: str | None = field(default=None, repr=False)
    token_source: str = "none"
    verify_ssl: bool = True
    timeout: float = 20.0

    def __repr__(self) -> str:  # never shows the token, whatever prints the settings
        return (f"KfpSettings(host={self.host!r}, namespace={self.namespace!r}, ui_host={self.ui_host!r}, "
                f"token_source={self.token_source!r})")


def _read_token(path: str | os.PathLike, what: str) -> str:
    try:
        token = Path(path).expanduser().read_text().strip()
    except OSError as exc:
        raise KfpAuthError(f"cannot read the KFP token file {path} ({what}): {exc.strerror or exc}",
                           f"point {what} at a readable file holding only the token") from None
    if not token:
        raise KfpAuthError(f"the KFP token file {path} ({what}) is empty", f"write the token into {path}")
    return token


def resolve_token(token: str | None = None, token_file: str | None = None,
                  env: Mapping[str, str] = os.environ) -> tuple[str | None, str]:
    """(token, where it came from). Order: explicit value, --token-file, KF_PIPELINES_TOKEN,
    KF_PIPELINES_TOKEN_FILE, the in-cluster token KFP accepts, none."""
    if token:
        return token.strip(), "--token"
    if token_file:
        return _read_token(token_file, "--token-file"), f"--token-file {token_file}"
    if env.get(TOKEN_ENV, "").strip():
        return env[TOKEN_ENV].strip(), TOKEN_ENV
    if env.get(TOKEN_FILE_ENV):
        return _read_token(env[TOKEN_FILE_ENV], TOKEN_FILE_ENV), f"{TOKEN_FILE_ENV}={env[TOKEN_FILE_ENV]}"
    in_cluster = env.get(SA_TOKEN_PATH_ENV) or SA_TOKEN_PATH
    if Path(in_cluster).is_file():
        return _read_token(in_cluster, "the in-cluster service-account token"), f"service-account token {in_cluster}"
    return None, "none"


def resolve_settings(host: str | None = None, namespace: str | None = None, *, token: str | None = None,
                     token_file: str | None = None, ui_host: str | None = None, verify_ssl: bool = True,
                     timeout: float = 20.0, env: Mapping[str, str] = os.environ) -> KfpSettings:
    """Endpoint: --host, KF_PIPELINES_ENDPOINT, or (in a pod) KFP's in-cluster service."""
    host = (host or env.get(ENDPOINT_ENV) or "").strip()
    if not host:
        if env.get("KUBERNETES_SERVICE_HOST"):
            host = IN_CLUSTER_ENDPOINT
        else:
            raise KfpConnectionError("no KFP endpoint given", f"pass --host or set {ENDPOINT_ENV}; e.g. "
                                     + PORT_FORWARD_HINT.replace(f" (or set {ENDPOINT_ENV})", ""))
    if "://" not in host:
        host = "https://" + host  # what kfp.Client assumes too
    host = host.rstrip("/")
    ui = (ui_host or env.get(UI_ENDPOINT_ENV) or host).rstrip("/")
    token_value, source = resolve_token(token, token_file, env)
    return KfpSettings(host=host, namespace=namespace or PROFILE_NAMESPACE, ui_host=ui, token=token_value,
                       token_source=source, verify_ssl=verify_ssl, timeout=timeout)


# --- quiet calls, one-line errors ------------------------------------------------------------------------

@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """kfp.Client prints links, warns (FutureWarning) and logs (urllib3 retries, healthz tracebacks through
    the root logger): none of that reaches the user; what matters comes back as values or ClusterError."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        previous = logging.root.manager.disable
        logging.disable(logging.CRITICAL)
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                yield
        finally:
            logging.disable(previous)


def _api_message(exc) -> str:
    body = getattr(exc, "body", None)
    if body:
        try:
            data = json.loads(body)
            message = data.get("message") or data.get("error") if isinstance(data, dict) else None
            if message:
                return " ".join(str(message).split())[:300]
        except (ValueError, TypeError):
            pass
    return (getattr(exc, "reason", None) or "").strip()[:300]


def translate(exc: BaseException, settings: KfpSettings, action: str) -> ClusterError:
    """A ClusterError for whatever kfp / kfp_server_api / urllib3 raised while doing `action`."""
    import kfp_server_api
    import urllib3

    host = settings.host
    namespace = settings.namespace or PROFILE_NAMESPACE
    if isinstance(exc, ClusterError):
        return exc
    if isinstance(exc, kfp_server_api.ApiException):
        status = exc.status or 0
        message = _api_message(exc)
        if status == 0 and "SSL" in message:
            return KfpConnectionError(f"TLS failed talking to KFP at {host} ({message.splitlines()[0]})",
                                      "check the URL's scheme (http:// for a port-forward) or the CA certificate")
        if status in (301, 302, 303, 307, 308):
            return KfpAuthError(f"KFP at {host} redirects {action} to a login page (HTTP {status})",
                                TOKEN_HINT.format(namespace=namespace))
        if status == 401:
            return KfpAuthError(f"KFP at {host} refused the credentials for {action} (HTTP 401"
                                + (", no token sent)" if settings.token is None else ", token rejected or expired)"),
                                TOKEN_HINT.format(namespace=namespace))
        if status == 403:
            return KfpAuthError(f"KFP at {host} does not allow {action} in namespace {namespace} (HTTP 403: {message})",
                                f"use a token of a user or service account with access to profile {namespace}, "
                                "or pass --namespace with your own profile")
        if status == 404:
            return KfpNotFoundError(f"{action}: not found at {host} (HTTP 404: {message or 'no such object'})",
                                    "check the id, or that --host is KFP's API (e.g. http://localhost:8080 through "
                                    "svc/ml-pipeline-ui, or https://<kubeflow>/pipeline)")
        return ClusterError(f"KFP at {host} failed {action} (HTTP {status}: {message or 'no message'})",
                            "retry; if it persists, check `kubectl -n kubeflow logs deploy/ml-pipeline`")
    if isinstance(exc, urllib3.exceptions.MaxRetryError):
        exc = exc.reason or exc
    # urllib3's NewConnectionError subclasses ConnectTimeoutError: test the specific classes first.
    if isinstance(exc, urllib3.exceptions.NameResolutionError) or "Name or service not known" in str(exc):
        return KfpConnectionError(f"cannot resolve the KFP host of {host}", PORT_FORWARD_HINT)
    if isinstance(exc, (urllib3.exceptions.NewConnectionError, ConnectionError)):
        text = str(exc)
        why = "connection refused" if "refused" in text.lower() else text.rsplit(": ", 1)[-1][:120]
        return KfpConnectionError(f"cannot reach KFP at {host} ({why})", PORT_FORWARD_HINT)
    if isinstance(exc, (urllib3.exceptions.ConnectTimeoutError, urllib3.exceptions.ReadTimeoutError,
                        TimeoutError)):
        return KfpConnectionError(f"KFP at {host} did not answer {action} within {settings.timeout:g}s",
                                  PORT_FORWARD_HINT)
    if isinstance(exc, urllib3.exceptions.SSLError):
        return KfpConnectionError(f"TLS failed talking to KFP at {host}",
                                  "check the URL's scheme (http:// for a port-forward) or the CA certificate")
    if isinstance(exc, (urllib3.exceptions.HTTPError, OSError)):
        return KfpConnectionError(f"cannot talk to KFP at {host} ({type(exc).__name__}: {exc})", PORT_FORWARD_HINT)
    if isinstance(exc, ValueError):
        return KfpConnectionError(f"KFP at {host} sent an answer that is not KFP's API ({exc})",
                                  "check that --host is KFP's API endpoint")
    return ClusterError(f"{action} failed ({type(exc).__name__}: {exc})")


# --- session --------------------------------------------------------------------------------------------

@dataclass
class KfpSession:
    settings: KfpSettings
    client: object  # kfp.Client
    multi_user: bool
    _specs: dict = field(default_factory=dict)

    @property
    def namespace(self) -> str | None:
        """The profile namespace for API calls; None on a single-user KFP, which has no namespaces."""
        return self.settings.namespace if self.multi_user else None

    def run_url(self, run_id: str) -> str:
        return f"{self.settings.ui_host}/#/runs/details/{run_id}"

    def call(self, action: str, fn: Callable, *args, **kwargs):
        """Run a kfp.Client call quietly; whatever fails becomes one ClusterError."""
        try:
            with quiet():
                return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - every failure is translated into one line
            raise translate(exc, self.settings, action) from None


def _server_configuration(settings: KfpSettings):
    import kfp_server_api
    import urllib3

    config = kfp_server_api.Configuration(host=settings.host)
    config.verify_ssl = settings.verify_ssl
    # One try, redirects not followed: a login redirect is reported as such, an outage within seconds.
    config.retries = urllib3.Retry(total=0, redirect=False, raise_on_redirect=False)
    if settings.token:
        config.api_key["authorization"] = settings.token
        config.api_key_prefix["authorization"] = "Bearer"
    return config


def check_health(settings: KfpSettings) -> bool:
    """GET /apis/v2beta1/healthz once; True when KFP runs in multi-user mode. Raises ClusterError."""
    import kfp_server_api

    api = kfp_server_api.HealthzServiceApi(kfp_server_api.ApiClient(_server_configuration(settings)))
    try:
        with quiet():
            response = api.healthz_service_get_healthz(_request_timeout=settings.timeout, _preload_content=False)
    except Exception as exc:  # noqa: BLE001
        raise translate(exc, settings, "the health check") from None
    content_type = response.headers.get("Content-Type", "")
    try:
        data = json.loads(response.data)
    except ValueError:
        data = None
    if "json" not in content_type or not isinstance(data, dict):
        kind = "a web page" if "html" in content_type else f"{content_type or 'no content type'}"
        raise KfpConnectionError(f"{settings.host}/apis/v2beta1/healthz answered with {kind}, not KFP's API "
                                 "(a login page, or not the KFP endpoint)",
                                 TOKEN_HINT.format(namespace=settings.namespace or PROFILE_NAMESPACE)
                                 + "; or check --host")
    return bool(data.get("multi_user"))


def connect(settings: KfpSettings) -> KfpSession:
    """Health check first (fast, one line on failure), then the real kfp.Client."""
    multi_user = check_health(settings)
    try:
        with quiet():
            import kfp

            # Single-user KFP has no namespaces: kfp.Client's default ("kubeflow") sends none.
            client = kfp.Client(host=settings.host,
                                namespace=(settings.namespace or "kubeflow") if multi_user else "kubeflow",
                                existing_token=settings.token, ui_host=settings.ui_host,
                                verify_ssl=settings.verify_ssl)
    except Exception as exc:  # noqa: BLE001
        raise translate(exc, settings, "connecting") from None
    return KfpSession(settings=settings, client=client, multi_user=multi_user)


# --- pipeline packages ----------------------------------------------------------------------------------

def read_package(path: Path) -> tuple[dict, dict | None]:
    """(pipeline spec, kubernetes platform spec or None) of a compiled IR YAML."""
    docs = [d for d in yaml.safe_load_all(Path(path).read_text()) if d]
    if not docs or "pipelineInfo" not in docs[0]:
        raise ClusterError(f"{path} is not a compiled KFP pipeline (no pipelineInfo)")
    return docs[0], (docs[1] if len(docs) > 1 else None)


def pipeline_parameters(spec: dict) -> set[str]:
    return set(spec.get("root", {}).get("inputDefinitions", {}).get("parameters", {}))


def _dags(spec: dict) -> list[dict]:
    """The root DAG and every sub-DAG (condition branches, loops, exit handlers) of a pipeline spec."""
    return [spec.get("root", {}).get("dag", {})] + [c["dag"] for c in spec.get("components", {}).values()
                                                     if isinstance(c, dict) and "dag" in c]


def check_parameters(spec: dict, params: Mapping[str, object]) -> None:
    """Refuse parameters the pipeline does not have, before anything is uploaded."""
    unknown = sorted(set(params) - pipeline_parameters(spec))
    if unknown:
        raise ClusterError(f"unknown pipeline parameter(s) {', '.join(unknown)}",
                           f"use one of: {', '.join(sorted(pipeline_parameters(spec)))}")


def disable_caching(path: Path) -> None:
    """Turn off execution caching for every task that runs a container, in the root DAG and in every
    sub-DAG (the "retrain" branch holds training), in the package itself: a run of an uploaded version
    cannot override caching at submission time."""
    docs = [d for d in yaml.safe_load_all(Path(path).read_text()) if d]
    components = docs[0].get("components", {})
    for dag in _dags(docs[0]):
        for task in dag.get("tasks", {}).values():
            if "dag" not in components.get(task.get("componentRef", {}).get("name", ""), {}):
                task["cachingOptions"] = {}
    Path(path).write_text(yaml.safe_dump_all(docs, sort_keys=True))


def version_name(package: Path, now: dt.datetime | None = None) -> str:
    """Unique, sortable, content-addressed: 20250102-031500-1a2b3c4d."""
    now = now or dt.datetime.now(dt.timezone.utc)
    digest = hashlib.sha256(Path(package).read_bytes()).hexdigest()[:8]
    return f"{now:%Y%m%d-%H%M%S}-{digest}"


# --- submit ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Submission:
    pipeline_id: str
    pipeline_name: str
    version_id: str
    version_name: str
    experiment_id: str
    run_id: str
    url: str


def _name_filter(name: str) -> str:
    return json.dumps({"predicates": [{"operation": "EQUALS", "key": "display_name", "stringValue": name}]})


def find_pipeline(session: KfpSession, name: str) -> str | None:
    client = session.client
    response = session.call(f"looking up pipeline {name!r}", client.list_pipelines, filter=_name_filter(name),
                            page_size=10, namespace=session.namespace)
    found = [p for p in (response.pipelines or []) if p.display_name == name]
    if len(found) > 1:
        raise ClusterError(f"{len(found)} pipelines are named {name!r} in {session.namespace or 'KFP'}",
                           "delete the duplicates in the Kubeflow UI (Pipelines), or pass another --pipeline-name")
    return found[0].pipeline_id if found else None


def upload_version(session: KfpSession, package: Path, pipeline_name: str, version: str,
                   description: str = "") -> tuple[str, str]:
    """(pipeline id, version id): a new version of the named pipeline, the pipeline created if new."""
    client = session.client
    pipeline_id = find_pipeline(session, pipeline_name)
    if pipeline_id is None:
        pipeline = session.call(f"creating pipeline {pipeline_name!r}", client.upload_pipeline, str(package),
                                pipeline_name=pipeline_name, description=description or None,
                                namespace=session.namespace)
        pipeline_id = pipeline.pipeline_id
    created = session.call(f"uploading version {version!r} of {pipeline_name!r}", client.upload_pipeline_version,
                           str(package), pipeline_version_name=version, pipeline_id=pipeline_id,
                           description=description or None)
    return pipeline_id, created.pipeline_version_id


@dataclass(frozen=True)
class Uploaded:
    """A package uploaded as a new pipeline version, and the experiment its runs go to."""
    pipeline_id: str
    pipeline_name: str
    version_id: str
    version_name: str
    experiment_id: str
    params: dict


def upload_to_experiment(session: KfpSession, package: Path, *, params: Mapping[str, object] | None,
                         pipeline_name: str | None, description: str, experiment: str) -> Uploaded:
    """What a run and a schedule both start with: `params` checked against the package (before anything is
    uploaded), the package uploaded as a new version of its pipeline, the experiment found or created."""
    spec, _ = read_package(package)
    params = dict(params or {})
    check_parameters(spec, params)
    pipeline_name = pipeline_name or spec["pipelineInfo"]["name"]
    version = version_name(package)
    pipeline_id, version_id = upload_version(session, package, pipeline_name, version, description)
    found = session.call(f"finding or creating experiment {experiment!r}", session.client.create_experiment,
                         experiment, namespace=session.namespace)
    return Uploaded(pipeline_id=pipeline_id, pipeline_name=pipeline_name, version_id=version_id,
                    version_name=version, experiment_id=found.experiment_id, params=params)


def submit(session: KfpSession, package: Path, *, experiment: str, run_name: str,
           params: Mapping[str, object] | None = None, pipeline_name: str | None = None,
           description: str = "", pipeline_root: str | None = None,
           service_account: str | None = None) -> Submission:
    """Upload `package` as a new version of its pipeline and start a run of that version."""
    up = upload_to_experiment(session, package, params=params, pipeline_name=pipeline_name,
                              description=description, experiment=experiment)
    run = session.call(f"starting a run of {up.pipeline_name!r}", session.client.run_pipeline,
                       experiment_id=up.experiment_id, job_name=run_name, params=up.params,
                       pipeline_id=up.pipeline_id, version_id=up.version_id, pipeline_root=pipeline_root,
                       service_account=service_account)
    return Submission(pipeline_id=up.pipeline_id, pipeline_name=up.pipeline_name, version_id=up.version_id,
                      version_name=up.version_name, experiment_id=up.experiment_id, run_id=run.run_id,
                      url=session.run_url(run.run_id))


# --- run reports ----------------------------------------------------------------------------------------

def _time(value) -> dt.datetime | None:
    """KFP sends unset timestamps as the epoch."""
    if value is None:
        return None
    if isinstance(value, str):
        from dateutil import parser

        value = parser.isoparse(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return None if value.timestamp() <= 0 else value


def _state(value) -> str:
    return str(value or "PENDING").upper().replace("RUNTIME_STATE_UNSPECIFIED", "PENDING")


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


@dataclass
class TaskReport:
    name: str  # the task's key in the pipeline (Argo node name), e.g. train-model
    display_name: str  # what the UI shows, e.g. "GPU training"
    state: str = "PENDING"
    branch: str | None = None  # the condition branch it belongs to (e.g. "retrain"), None at the top level
    started: dt.datetime | None = None
    finished: dt.datetime | None = None
    error: str | None = None
    nodes: list[str] = field(default_factory=list)  # Argo node ids of the task's pods

    def duration(self, now: dt.datetime | None = None) -> float | None:
        if not self.started:
            return None
        end = self.finished or now or dt.datetime.now(dt.timezone.utc)
        return max(0.0, (end - self.started).total_seconds())


@dataclass
class RunReport:
    run_id: str
    name: str
    state: str
    url: str
    namespace: str | None
    created: dt.datetime | None = None
    finished: dt.datetime | None = None
    error: str | None = None
    tasks: list[TaskReport] = field(default_factory=list)
    pipeline_id: str | None = None
    version_id: str | None = None
    experiment_id: str | None = None
    branches: list[tuple[str, str]] = field(default_factory=list)  # (branch name, state) of condition branches

    @property
    def done(self) -> bool:
        return self.state in TERMINAL_STATES

    @property
    def failed_tasks(self) -> list[TaskReport]:
        return [t for t in self.tasks if t.state == "FAILED"]

    def duration(self, now: dt.datetime | None = None) -> float | None:
        if not self.created:
            return None
        end = self.finished or now or dt.datetime.now(dt.timezone.utc)
        return max(0.0, (end - self.created).total_seconds())

    def logs_hint(self) -> str:
        namespace = self.namespace or "<namespace>"
        return f"kubectl -n {namespace} logs -l pipeline/runid={self.run_id} -c main --prefix --tail=200"


@dataclass(frozen=True)
class SpecTask:
    key: str  # the task's key in its DAG, which is also its Argo node's display name
    display_name: str
    groups: tuple[str, ...] = ()  # keys of the sub-DAG tasks it sits in, outermost first
    branch: str | None = None  # display name of the innermost condition group, e.g. "retrain"


@dataclass(frozen=True)
class SpecGroup:
    key: str  # e.g. condition-2
    display_name: str  # e.g. retrain
    condition: bool  # a dsl.If / Elif / Else branch (its Argo node is SKIPPED when the condition was false)


def _dependency_order(tasks: dict) -> list[str]:
    order: list[str] = []
    visiting: set[str] = set()

    def visit(key: str) -> None:
        if key in order or key in visiting or key not in tasks:
            return
        visiting.add(key)
        for dep in sorted(tasks[key].get("dependentTasks", [])):
            visit(dep)
        order.append(key)

    for key in sorted(tasks):
        visit(key)
    return order


def _spec_structure(spec: dict | None) -> tuple[list[SpecTask], list[SpecGroup]]:
    """The pipeline's container tasks in dependency order, each sub-DAG (condition branch, loop, exit
    handler) expanded in place where it sits in its parent, and the sub-DAG groups themselves."""
    if not spec:
        return [], []
    if "root" not in spec and isinstance(spec.get("pipeline_spec"), dict):  # {pipeline_spec, platform_spec}
        spec = spec["pipeline_spec"]
    components = spec.get("components", {})
    tasks: list[SpecTask] = []
    groups: list[SpecGroup] = []

    def expand(dag: dict, parents: tuple[str, ...], branch: str | None, entered: frozenset) -> None:
        dag_tasks = dag.get("tasks", {})
        for key in _dependency_order(dag_tasks):
            task = dag_tasks[key]
            display = task.get("taskInfo", {}).get("name") or key
            component_name = task.get("componentRef", {}).get("name", "")
            component = components.get(component_name, {})
            if "dag" not in component:
                tasks.append(SpecTask(key, display, parents, branch))
                continue
            if component_name in entered:  # a malformed, self-referencing spec: do not loop
                continue
            condition = bool(task.get("triggerPolicy", {}).get("condition"))
            groups.append(SpecGroup(key, display, condition))
            expand(component["dag"], parents + (key,), display if condition else branch, entered | {component_name})

    expand(spec.get("root", {}).get("dag", {}), (), None, frozenset())
    return tasks, groups


def _spec_tasks(spec: dict | None) -> list[SpecTask]:
    """The pipeline's tasks, dependencies first, tasks of condition branches expanded in place."""
    return _spec_structure(spec)[0]


SYSTEM_NODES = ("root", "root-driver", "executor")


def _is_system_node(name: str) -> bool:
    return (not name or name in SYSTEM_NODES or name.endswith("-driver") or name.startswith("system-")
            or name.startswith("executor("))


def _run_spec(session: KfpSession, run) -> dict | None:
    if getattr(run, "pipeline_spec", None):
        return run.pipeline_spec
    ref = getattr(run, "pipeline_version_reference", None)
    if not ref or not ref.pipeline_id or not ref.pipeline_version_id:
        return None
    key = (ref.pipeline_id, ref.pipeline_version_id)
    if key not in session._specs:
        try:
            version = session.call("reading the pipeline version", session.client.get_pipeline_version,
                                   pipeline_id=ref.pipeline_id, pipeline_version_id=ref.pipeline_version_id)
            session._specs[key] = version.pipeline_spec
        except KfpNotFoundError:  # version deleted since: fall back to the node names
            session._specs[key] = None
    return session._specs[key]


def build_report(session: KfpSession, run) -> RunReport:
    """A RunReport from a V2beta1Run: the pipeline's tasks (not KFP's drivers), failures explained."""
    details = (getattr(run.run_details, "task_details", None) or []) if run.run_details else []
    nodes = {}
    for detail in details:
        name = detail.display_name or ""
        previous = nodes.get(name)
        # Several nodes of one name (retries): the latest start wins.
        if previous is None or (_time(detail.start_time) or dt.datetime.min.replace(tzinfo=dt.timezone.utc)) >= (
                _time(previous.start_time) or dt.datetime.min.replace(tzinfo=dt.timezone.utc)):
            nodes[name] = detail
    spec_tasks, spec_groups = _spec_structure(_run_spec(session, run))
    if not spec_tasks:  # unknown spec: every node that is not KFP's own machinery
        spec_tasks = [SpecTask(name, name) for name in sorted(nodes) if not _is_system_node(name)]
    # A condition that was false: Argo skips the branch's DAG node and creates nothing inside it.
    skipped_groups = {g.key for g in spec_groups if g.key in nodes and _state(nodes[g.key].state) == "SKIPPED"}
    tasks = []
    for spec_task in spec_tasks:
        key = spec_task.key
        task = TaskReport(name=key, display_name=spec_task.display_name, branch=spec_task.branch)
        node = nodes.get(key)
        if node is not None:
            task.state = _state(node.state)
            task.started, task.finished = _time(node.start_time), _time(node.end_time)
            if node.error and node.error.message:
                task.error = " ".join(node.error.message.split())
            task.nodes = [c.pod_name or c.task_id for c in (node.child_tasks or []) if (c.pod_name or c.task_id)]
        driver = nodes.get(f"{key}-driver")
        if driver is not None and _state(driver.state) == "FAILED" and task.state != "FAILED":
            task.state = "FAILED"  # the driver (inputs, caching, pod spec) failed before the task ran
            task.error = (" ".join(driver.error.message.split()) if driver.error and driver.error.message
                          else "KFP's driver for this task failed (inputs, cache lookup or pod spec)")
        if node is None and skipped_groups.intersection(spec_task.groups):
            task.state = "SKIPPED"  # its branch did not run, whatever the run is doing elsewhere
        if run.state and _state(run.state) in TERMINAL_STATES and task.state in ("PENDING", "RUNNING"):
            task.state = "SKIPPED" if node is None else task.state
        tasks.append(task)
    branches = []
    for group in (g for g in spec_groups if g.condition):
        node = nodes.get(group.key)
        state = _state(node.state) if node is not None else "PENDING"
        if node is None and _state(run.state) in TERMINAL_STATES:
            state = "SKIPPED"
        branches.append((group.display_name, state))
    error = " ".join(run.error.message.split()) if getattr(run, "error", None) and run.error.message else None
    for task in tasks:
        if task.state == "FAILED" and not task.error:
            task.error = error
    ref = getattr(run, "pipeline_version_reference", None)
    return RunReport(run_id=run.run_id, name=run.display_name or run.run_id, state=_state(run.state),
                     url=session.run_url(run.run_id), namespace=session.settings.namespace,
                     created=_time(run.created_at), finished=_time(run.finished_at), error=error, tasks=tasks,
                     pipeline_id=getattr(ref, "pipeline_id", None), version_id=getattr(ref, "pipeline_version_id", None),
                     experiment_id=run.experiment_id, branches=branches)


def get_run(session: KfpSession, run_id: str) -> RunReport:
    run = session.call(f"reading run {run_id}", session.client.get_run, run_id)
    return build_report(session, run)


@dataclass(frozen=True)
class RunRow:
    run_id: str
    name: str
    state: str
    created: dt.datetime | None
    finished: dt.datetime | None
    experiment_id: str | None


def find_experiment(session: KfpSession, name: str) -> str:
    response = session.call(f"looking up experiment {name!r}", session.client.list_experiments,
                            filter=_name_filter(name), namespace=session.namespace, page_size=10)
    found = [e for e in (response.experiments or []) if e.display_name == name]
    if not found:
        raise KfpNotFoundError(f"no experiment named {name!r} in {session.namespace or 'KFP'}",
                               "check the name (medembed submit creates 'medical-embeddings' by default)")
    return found[0].experiment_id


def list_runs(session: KfpSession, *, experiment: str | None = None, limit: int = 20) -> list[RunRow]:
    experiment_id = find_experiment(session, experiment) if experiment else None
    response = session.call("listing runs", session.client.list_runs, page_size=limit, sort_by="created_at desc",
                            experiment_id=experiment_id, namespace=session.namespace)
    return [RunRow(run_id=r.run_id, name=r.display_name or "", state=_state(r.state), created=_time(r.created_at),
                   finished=_time(r.finished_at), experiment_id=r.experiment_id) for r in (response.runs or [])]


def terminate(session: KfpSession, run_id: str) -> RunReport:
    session.call(f"terminating run {run_id}", session.client.terminate_run, run_id)
    return get_run(session, run_id)


class WaitTimeout(ClusterError):
    exit_code = EXIT_TIMEOUT


def wait(session: KfpSession, run_id: str, *, interval: float = 10.0, timeout: float | None = None,
         display: "ProgressDisplay | None" = None, sleep: Callable[[float], None] = time.sleep,
         clock: Callable[[], float] = time.monotonic, max_transient_errors: int = 5) -> RunReport:
    """Poll the run until it ends, updating `display` on every poll. Connection hiccups are retried
    (`max_transient_errors` in a row); auth errors and unknown runs end the wait at once."""
    start = clock()
    errors = 0
    while True:
        try:
            report = get_run(session, run_id)
            errors = 0
        except (KfpAuthError, KfpNotFoundError):
            raise
        except ClusterError:
            errors += 1
            if errors > max_transient_errors:
                raise
            sleep(interval)
            continue
        if display is not None:
            display.update(report)
        if report.done:
            return report
        if timeout is not None and clock() - start >= timeout:
            raise WaitTimeout(f"run {run_id} is still {report.state} after {format_duration(timeout)}",
                              f"medembed runs wait {run_id} (again), or medembed runs terminate {run_id}")
        sleep(interval)


def exit_code(state: str) -> int:
    """SUCCEEDED 0, FAILED (and SKIPPED) 1, CANCELED 3."""
    if state == "SUCCEEDED":
        return EXIT_SUCCEEDED
    if state in ("CANCELED", "CANCELING"):
        return EXIT_CANCELED
    return EXIT_FAILED


# --- text output ----------------------------------------------------------------------------------------

def _stamp(value: dt.datetime | None) -> str:
    return value.astimezone().strftime("%Y-%m-%d %H:%M") if value else "-"


def format_report(report: RunReport, now: dt.datetime | None = None) -> str:
    lines = [f"run:      {report.name} ({report.run_id})",
             f"state:    {report.state}",
             f"created:  {_stamp(report.created)}   finished: {_stamp(report.finished)}   "
             f"duration: {format_duration(report.duration(now))}",
             f"url:      {report.url}"]
    if report.branches:
        lines.append("branches: " + ", ".join(f"{name} {state}" for name, state in report.branches))
    if report.tasks:
        width = max(len(t.display_name) for t in report.tasks)
        lines.append("tasks:")
        for task in report.tasks:
            lines.append(f"  {task.display_name:<{width}}  {task.state:<9}  {format_duration(task.duration(now)):>9}"
                         f"  ({task.name}" + (f", branch {task.branch})" if task.branch else ")"))
    for task in report.failed_tasks:
        lines.append(f"failed task: {task.display_name} ({task.name}): {task.error or 'no message from KFP'}")
        if task.nodes:
            lines.append(f"  nodes: {', '.join(task.nodes)}")
    if report.state == "FAILED" and not report.failed_tasks and report.error:
        lines.append(f"error: {report.error}")
    if report.state == "FAILED":
        lines.append(f"logs: {report.logs_hint()}")
        lines.append(f"      or the Kubeflow UI: {report.url} (select the task, then Logs)")
    return "\n".join(lines)


def format_runs(rows: list[RunRow], now: dt.datetime | None = None) -> str:
    if not rows:
        return "no runs"
    now = now or dt.datetime.now(dt.timezone.utc)
    header = f"{'RUN ID':<36}  {'STATE':<9}  {'CREATED':<16}  {'DURATION':>9}  NAME"
    lines = [header]
    for row in rows:
        duration = ((row.finished or now) - row.created).total_seconds() if row.created else None
        lines.append(f"{row.run_id:<36}  {row.state:<9}  {_stamp(row.created):<16}  "
                     f"{format_duration(duration):>9}  {row.name}")
    return "\n".join(lines)


class ProgressDisplay:
    """Per-task progress while a run goes on. On a terminal: a table redrawn in place every poll.
    Otherwise (CI logs, files): one timestamped line per change of the run's or a task's state."""

    def __init__(self, stream: TextIO | None = None, tty: bool | None = None):
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty() if tty is None else tty
        self._drawn = 0
        self._states: dict[str, str] = {}

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    def update(self, report: RunReport) -> None:
        if self.tty:
            self._redraw(report)
        else:
            self._log_changes(report)

    def _redraw(self, report: RunReport) -> None:
        lines = [f"{report.name}: {report.state}  {format_duration(report.duration())}"]
        width = max([len(t.display_name) for t in report.tasks] or [0])
        for task in report.tasks:
            lines.append(f"  {task.display_name:<{width}}  {task.state:<9}  {format_duration(task.duration()):>9}")
        # Move up over the previous table and clear it, then draw the new one.
        prefix = f"\x1b[{self._drawn}F\x1b[J" if self._drawn else ""
        self._write(prefix + "\n".join(lines) + "\n")
        self._drawn = len(lines)

    def _log_changes(self, report: RunReport) -> None:
        now = dt.datetime.now().strftime("%H:%M:%S")
        changes = []
        if self._states.get("\0run") != report.state:
            changes.append(f"{now} run {report.state}")
            self._states["\0run"] = report.state
        for task in report.tasks:
            if self._states.get(task.name) != task.state:
                changes.append(f"{now}   {task.display_name}: {task.state}"
                               + (f" after {format_duration(task.duration())}" if task.finished else ""))
                self._states[task.name] = task.state
        if changes:
            self._write("\n".join(changes) + "\n")
