"""A stdlib HTTP server on 127.0.0.1 speaking the KFP API v2beta1 paths the CLI uses, for the REAL
`kfp.Client` (its request serialisation and response parsing are what the tests exercise):

    healthz; pipelines (list by name, upload, upload_version, versions); experiments; runs (create, list,
    get, terminate); recurring runs (create, list with filter, get, enable, disable, delete).

State is in memory. A run's answers to GET can be scripted: `script_next_run([snapshot, ...])` makes the
next created run answer each GET with the next snapshot (the last one repeats), so waiting, progress and
failures can be played back. `component()` and `group()` build the task details KFP reports for the
pipeline's container tasks and its sub-DAGs (condition branches). Not collected by pytest (no test_ prefix).
"""

from __future__ import annotations

import itertools
import json
import threading
import uuid
from email.parser import BytesParser
from email.policy import default as default_policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import yaml

API = "/apis/v2beta1"
EPOCH = "1970-01-01T00:00:00Z"


def timestamp(second: int) -> str:
    return f"2025-03-01T10:{second // 60:02d}:{second % 60:02d}Z"


def task(name: str, state: str, start: int | None = None, end: int | None = None, message: str | None = None,
         pods: tuple[str, ...] = ()) -> dict:
    """One entry of run_details.task_details, as KFP builds it from an Argo node."""
    detail = {"task_id": str(uuid.uuid4()), "display_name": name, "state": state,
              "create_time": timestamp(0), "start_time": timestamp(start) if start is not None else EPOCH,
              "end_time": timestamp(end) if end is not None else EPOCH,
              "child_tasks": [{"pod_name": pod} for pod in pods]}
    if message:
        detail["error"] = {"code": 2, "message": message}
    return detail


def component(name: str, state: str, start: int | None = None, end: int | None = None, message: str | None = None,
              pods: tuple[str, ...] = ()) -> list[dict]:
    """A container task as KFP's Argo compiler runs it: the task's driver node, the task node and its
    executor pod node (KFP reports all three)."""
    return [task(f"{name}-driver", "SUCCEEDED", start, start),
            task(name, state, start, end, message=message, pods=pods),
            task("executor", state, start, end)]


def group(name: str, state: str, start: int | None = None, end: int | None = None) -> list[dict]:
    """A sub-DAG task (`condition-branches-1`, or a dsl.If/Else branch `condition-2`): its driver and its DAG
    node. A branch whose condition was false is SKIPPED (Argo's `when`), and no node exists inside it."""
    return [task(f"{name}-driver", "SUCCEEDED", start, start), task(name, state, start, end)]


class FakeKfp:
    def __init__(self, multi_user: bool = True):
        self.multi_user = multi_user
        self.requests: list[dict] = []
        self.experiments: dict[str, dict] = {}
        self.pipelines: dict[str, dict] = {}
        self.versions: dict[str, dict] = {}  # version id -> version (with its uploaded spec)
        self.uploads: list[dict] = []  # {"kind", "query", "filename", "content"}
        self.runs: dict[str, dict] = {}
        self.recurring_runs: dict[str, dict] = {}
        self.scripts: dict[str, list[dict]] = {}
        self._next_script: list[dict] | None = None
        self.required_token: str | None = None  # answer 401 unless "Bearer <token>" is sent
        self.fail_deletes = False  # answer DELETE of a recurring run with HTTP 500
        self.redirect_to_login = False  # answer every request with a 302 to a login page
        self.url = ""
        self._clock = itertools.count(1)

    # --- set-up helpers --------------------------------------------------------------------------------
    def add_experiment(self, name: str, namespace: str | None = None) -> str:
        experiment_id = str(uuid.uuid4())
        self.experiments[experiment_id] = {"experiment_id": experiment_id, "display_name": name,
                                           "namespace": namespace or ""}
        return experiment_id

    def add_run(self, name: str, state: str, experiment_id: str | None = None, **extra) -> str:
        run_id = str(uuid.uuid4())
        n = next(self._clock)
        self.runs[run_id] = {"run_id": run_id, "display_name": name, "state": state,
                             "experiment_id": experiment_id or "", "created_at": timestamp(n),
                             "finished_at": EPOCH, **extra}
        return run_id

    def add_recurring_run(self, name: str, experiment_id: str, cron: str = "0 0 3 * * *", enabled: bool = True,
                          **extra) -> str:
        """A recurring run as KFP stores it (e.g. one made earlier, by hand or by an older medembed)."""
        recurring_id = str(uuid.uuid4())
        self.recurring_runs[recurring_id] = {
            "recurring_run_id": recurring_id, "display_name": name, "experiment_id": experiment_id,
            "namespace": self.experiments.get(experiment_id, {}).get("namespace", ""),
            "trigger": {"cron_schedule": {"cron": cron}}, "mode": "ENABLE" if enabled else "DISABLE",
            "status": "ENABLED" if enabled else "DISABLED", "max_concurrency": "1", "no_catchup": True,
            "created_at": timestamp(next(self._clock)), **extra}
        return recurring_id

    def script_next_run(self, snapshots: list[dict]) -> None:
        self._next_script = list(snapshots)

    def script_run(self, run_id: str, snapshots: list[dict]) -> None:
        self.scripts[run_id] = list(snapshots)

    # --- inspection helpers ----------------------------------------------------------------------------
    def posted(self, path: str) -> list:
        return [r["body"] for r in self.requests if r["method"] == "POST" and r["path"] == API + path]

    def calls(self, method: str, path_prefix: str) -> list[dict]:
        return [r for r in self.requests if r["method"] == method and r["path"].startswith(API + path_prefix)]

    # --- behaviour -------------------------------------------------------------------------------------
    def run_view(self, run_id: str) -> dict:
        run = self.runs[run_id]
        script = self.scripts.get(run_id)
        if script:
            snapshot = script.pop(0) if len(script) > 1 else script[0]
            run.update(snapshot)
        return run


def _name_filter(query: dict) -> set[str]:
    if "filter" not in query:
        return set()
    return {p["stringValue"] for p in json.loads(query["filter"][0])["predicates"] if p["key"] == "display_name"}


def _handler(state: FakeKfp):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep pytest output clean
            pass

        def _record(self):
            url = urlparse(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            content_type = self.headers.get("Content-Type") or ""
            body: object = raw
            if raw and "json" in content_type:
                body = json.loads(raw)
            query = parse_qs(url.query)
            state.requests.append({"method": self.command, "path": url.path, "query": query, "body": body,
                                   "authorization": self.headers.get("Authorization")})
            return url.path, query, body, content_type

        def _reply(self, payload: dict, status: int = 200) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _not_found(self, what: str) -> None:
            self._reply({"error": f"{what} not found", "message": f"{what} not found", "code": 5}, 404)

        def _guard(self) -> bool:
            if state.redirect_to_login:
                self.send_response(302)
                self.send_header("Location", "/dex/auth?client_id=kubeflow-oidc-authservice")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return False
            if state.required_token and self.headers.get("Authorization") != f"Bearer {state.required_token}":
                self._reply({"error": "Unauthenticated", "message": "Unauthenticated", "code": 16}, 401)
                return False
            return True

        def _upload(self, raw: bytes, content_type: str) -> tuple[str, str]:
            message = BytesParser(policy=default_policy).parsebytes(
                f"Content-Type: {content_type}\r\n\r\n".encode() + raw)
            for part in message.iter_parts():
                if part.get_param("name", header="content-disposition") == "uploadfile":
                    return part.get_filename() or "", part.get_payload(decode=True).decode()
            raise ValueError("no uploadfile part")

        def do_GET(self):
            path, query, _, _ = self._record()
            if not self._guard():
                return
            parts = path[len(API):].strip("/").split("/")
            if parts == ["healthz"]:
                return self._reply({"multi_user": state.multi_user})
            if parts == ["pipelines"]:
                wanted = _name_filter(query)
                namespace = (query.get("namespace") or [""])[0]
                found = [p for p in state.pipelines.values()
                         if (not wanted or p["display_name"] in wanted) and p["namespace"] == namespace]
                return self._reply({"pipelines": found, "total_size": len(found)} if found else {})
            if len(parts) == 3 and parts[0] == "pipelines" and parts[2] == "versions":
                versions = [v for v in state.versions.values() if v["pipeline_id"] == parts[1]]
                return self._reply({"pipeline_versions": versions, "total_size": len(versions)})
            if len(parts) == 4 and parts[0] == "pipelines" and parts[2] == "versions":
                version = state.versions.get(parts[3])
                return self._reply(version) if version else self._not_found(f"pipeline version {parts[3]}")
            if parts == ["experiments"]:
                wanted = _name_filter(query)
                found = [e for e in state.experiments.values() if not wanted or e["display_name"] in wanted]
                return self._reply({"experiments": found, "total_size": len(found)} if found else {})
            if parts == ["runs"]:
                runs = list(state.runs.values())
                if "experiment_id" in query:
                    runs = [r for r in runs if r.get("experiment_id") == query["experiment_id"][0]]
                runs.sort(key=lambda r: r["created_at"], reverse="desc" in (query.get("sort_by") or [""])[0])
                size = int((query.get("page_size") or ["10"])[0])
                return self._reply({"runs": runs[:size], "total_size": len(runs)} if runs else {})
            if len(parts) == 2 and parts[0] == "runs":
                if parts[1] not in state.runs:
                    return self._not_found(f"run {parts[1]}")
                return self._reply(state.run_view(parts[1]))
            if parts == ["recurringruns"]:
                # As KFP's ListRecurringRuns: by experiment, else by namespace; a display_name filter.
                found = list(state.recurring_runs.values())
                if "experiment_id" in query:
                    found = [r for r in found if r["experiment_id"] == query["experiment_id"][0]]
                elif "namespace" in query:
                    found = [r for r in found if r.get("namespace", "") == query["namespace"][0]]
                wanted = _name_filter(query)
                found = [r for r in found if not wanted or r["display_name"] in wanted]
                found.sort(key=lambda r: r["created_at"])
                # KFP's proto names this field recurringRuns (not snake_case like the others).
                return self._reply({"recurringRuns": found, "total_size": len(found)} if found else {})
            if len(parts) == 2 and parts[0] == "recurringruns":
                if parts[1] not in state.recurring_runs:
                    return self._not_found(f"recurring run {parts[1]}")
                return self._reply(state.recurring_runs[parts[1]])
            self._reply({"error": f"not implemented: GET {path}", "code": 12}, 501)

        def do_DELETE(self):
            path, _, _, _ = self._record()
            if not self._guard():
                return
            parts = path[len(API):].strip("/").split("/")
            if len(parts) == 2 and parts[0] == "recurringruns":
                if parts[1] not in state.recurring_runs:
                    return self._not_found(f"recurring run {parts[1]}")
                if state.fail_deletes:
                    return self._reply({"error": "database is locked", "message": "database is locked", "code": 13},
                                       500)
                del state.recurring_runs[parts[1]]
                return self._reply({})
            self._reply({"error": f"not implemented: DELETE {path}", "code": 12}, 501)

        def do_POST(self):
            path, query, body, content_type = self._record()
            if not self._guard():
                return
            parts = path[len(API):].strip("/").split("/")
            if parts == ["pipelines", "upload"]:
                filename, content = self._upload(body, content_type)
                name = query["name"][0]
                pipeline_id = str(uuid.uuid4())
                state.pipelines[pipeline_id] = {
                    "pipeline_id": pipeline_id, "display_name": name, "name": name,
                    "description": (query.get("description") or [""])[0],
                    "namespace": (query.get("namespace") or [""])[0], "created_at": timestamp(next(state._clock))}
                # KFP makes a first version of the uploaded file, named like the pipeline.
                version_id = str(uuid.uuid4())
                state.versions[version_id] = {"pipeline_id": pipeline_id, "pipeline_version_id": version_id,
                                              "display_name": name, "name": name,
                                              "pipeline_spec": next(yaml.safe_load_all(content))}
                state.uploads.append({"kind": "pipeline", "query": query, "filename": filename, "content": content})
                return self._reply(state.pipelines[pipeline_id])
            if parts == ["pipelines", "upload_version"]:
                filename, content = self._upload(body, content_type)
                pipeline_id = query["pipelineid"][0]
                if pipeline_id not in state.pipelines:
                    return self._not_found(f"pipeline {pipeline_id}")
                version_id = str(uuid.uuid4())
                docs = [d for d in yaml.safe_load_all(content) if d]
                state.versions[version_id] = {
                    "pipeline_id": pipeline_id, "pipeline_version_id": version_id, "display_name": query["name"][0],
                    "name": query["name"][0], "description": (query.get("description") or [""])[0],
                    "pipeline_spec": {"pipeline_spec": docs[0], "platform_spec": docs[1]} if len(docs) > 1 else docs[0]}
                state.uploads.append({"kind": "version", "query": query, "filename": filename, "content": content})
                return self._reply(state.versions[version_id])
            if parts == ["experiments"]:
                experiment_id = state.add_experiment(body["display_name"], body.get("namespace"))
                return self._reply(state.experiments[experiment_id])
            if parts == ["runs"]:
                run_id = str(uuid.uuid4())
                state.runs[run_id] = {**body, "run_id": run_id, "state": "PENDING",
                                      "created_at": timestamp(next(state._clock)), "finished_at": EPOCH}
                if state._next_script is not None:
                    state.scripts[run_id], state._next_script = state._next_script, None
                return self._reply(state.runs[run_id])
            if len(parts) == 2 and parts[0] == "runs" and parts[1].endswith(":terminate"):
                run_id = parts[1][: -len(":terminate")]
                if run_id not in state.runs:
                    return self._not_found(f"run {run_id}")
                state.runs[run_id]["state"] = "CANCELING"
                state.scripts.pop(run_id, None)
                return self._reply({})
            if parts == ["recurringruns"]:
                recurring_id = str(uuid.uuid4())
                enabled = body.get("mode", "ENABLE") == "ENABLE"
                namespace = state.experiments.get(body.get("experiment_id", ""), {}).get("namespace", "")
                state.recurring_runs[recurring_id] = {
                    **body, "recurring_run_id": recurring_id, "namespace": namespace,
                    "status": "ENABLED" if enabled else "DISABLED", "created_at": timestamp(next(state._clock))}
                return self._reply(state.recurring_runs[recurring_id])
            if len(parts) == 2 and parts[0] == "recurringruns" and parts[1].endswith((":enable", ":disable")):
                recurring_id, _, action = parts[1].partition(":")
                if recurring_id not in state.recurring_runs:
                    return self._not_found(f"recurring run {recurring_id}")
                job = state.recurring_runs[recurring_id]
                job["mode"], job["status"] = ("ENABLE", "ENABLED") if action == "enable" else ("DISABLE", "DISABLED")
                return self._reply({})
            self._reply({"error": f"not implemented: POST {path}", "code": 12}, 501)

    return Handler


class KfpServer:
    """Context manager: `with KfpServer() as kfp: kfp.url ...`; binds 127.0.0.1 on a free port."""

    def __init__(self, state: FakeKfp | None = None):
        self.state = state or FakeKfp()

    def __enter__(self) -> FakeKfp:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self.state))
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.state.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        return self.state

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()
