"""A stdlib HTTP server on 127.0.0.1 speaking the read-only Kubernetes API paths preflight uses, for the
REAL `kubernetes` client (loaded from a kubeconfig file that points at it):

    GET /api/v1/namespaces/{ns}, /api/v1/namespaces/{ns}/secrets/{name},
    GET /api/v1/namespaces/{ns}/configmaps/{name}, GET /api/v1/nodes?labelSelector=k=v,...

plus a tiny S3 stand-in (`DenyingS3`) for the answers moto cannot give: a policy that forbids writes and
keys MinIO does not know. Not collected by pytest (no test_ prefix).
"""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse


def node(name: str, labels: dict[str, str], gpus: str | None = "8", taints: list[dict] | None = None,
         ready: bool = True, unschedulable: bool = False, gpu_resource: str = "nvidia.com/gpu") -> dict:
    allocatable = {"cpu": "200", "memory": "1800Gi"}
    if gpus is not None:
        allocatable[gpu_resource] = gpus
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels},
            "spec": {"taints": taints or [], "unschedulable": unschedulable},
            "status": {"allocatable": allocatable, "capacity": allocatable,
                       "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


GKE_GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}


class FakeKube:
    def __init__(self):
        self.namespaces: set[str] = set()
        self.secrets: dict[tuple[str, str], dict[str, str]] = {}
        self.configmaps: dict[tuple[str, str], dict[str, str]] = {}
        self.nodes: list[dict] = []
        self.forbidden: set[str] = set()  # resource kinds answered with 403: namespaces, secrets, configmaps, nodes
        self.token: str | None = None  # when set, other bearer tokens get 401
        self.requests: list[dict] = []
        self.url = ""

    def add_secret(self, namespace: str, name: str, values: dict[str, str]) -> None:
        self.secrets[(namespace, name)] = values

    def kubeconfig(self, path: Path, token: str = "kube-token", server: str | None = None) -> Path:
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": server or self.url}}],
            "users": [{"name": "tester", "user": {"token": token}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "tester"}}]}))
        return path


def _status(code: int, reason: str, message: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "code": code}


def _matches(labels: dict[str, str], selector: str) -> bool:
    for term in filter(None, selector.split(",")):
        key, _, value = term.partition("=")
        if labels.get(key) != value:
            return False
    return True


def _handler(state: FakeKube):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _reply(self, payload: dict, status: int = 200) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            url = urlparse(self.path)
            query = parse_qs(url.query)
            state.requests.append({"path": url.path, "query": query, "authorization": self.headers.get("Authorization")})
            if state.token and self.headers.get("Authorization") != f"Bearer {state.token}":
                return self._reply(_status(401, "Unauthorized", "Unauthorized"), 401)
            parts = url.path.strip("/").split("/")
            if parts[:2] != ["api", "v1"]:
                return self._reply(_status(404, "NotFound", "the server could not find the requested resource"), 404)
            parts = parts[2:]
            kind = parts[2] if len(parts) >= 3 else parts[0]
            if kind in state.forbidden:
                return self._reply(_status(403, "Forbidden", f'{kind} is forbidden: User "tester" cannot get '
                                           f'resource "{kind}"'), 403)
            if parts == ["nodes"]:
                selector = (query.get("labelSelector") or [""])[0]
                items = [n for n in state.nodes if _matches(n["metadata"]["labels"], selector)]
                return self._reply({"apiVersion": "v1", "kind": "NodeList", "metadata": {}, "items": items})
            if len(parts) == 2 and parts[0] == "namespaces":
                if parts[1] in state.namespaces:
                    return self._reply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": parts[1]},
                                        "status": {"phase": "Active"}})
                return self._reply(_status(404, "NotFound", f'namespaces "{parts[1]}" not found'), 404)
            if len(parts) == 4 and parts[0] == "namespaces" and parts[2] in ("secrets", "configmaps"):
                namespace, name = parts[1], parts[3]
                if parts[2] == "secrets" and (namespace, name) in state.secrets:
                    data = {k: base64.b64encode(v.encode()).decode() for k, v in state.secrets[(namespace, name)].items()}
                    return self._reply({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                                        "metadata": {"name": name, "namespace": namespace}, "data": data})
                if parts[2] == "configmaps" and (namespace, name) in state.configmaps:
                    return self._reply({"apiVersion": "v1", "kind": "ConfigMap",
                                        "metadata": {"name": name, "namespace": namespace},
                                        "data": state.configmaps[(namespace, name)]})
                return self._reply(_status(404, "NotFound", f'{parts[2]} "{name}" not found'), 404)
            self._reply(_status(404, "NotFound", "the server could not find the requested resource"), 404)

    return Handler


class _Server:
    def __init__(self, handler, state):
        self.handler, self.state = handler, state

    def __enter__(self):
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self.handler)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.state.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        return self.state

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


def kube_server(state: FakeKube | None = None) -> _Server:
    state = state or FakeKube()
    return _Server(_handler(state), state)


# --- an S3 endpoint that says no ------------------------------------------------------------------------

class DenyingS3:
    """mode "deny-writes": reads answer (empty bucket), writes get AccessDenied (a policy without PutObject).
    mode "bad-keys": every request gets InvalidAccessKeyId (keys MinIO does not know)."""

    def __init__(self, mode: str):
        self.mode = mode
        self.url = ""
        self.requests: list[tuple[str, str]] = []


def _s3_error(code: str, message: str) -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{message}</Message>'
            f"<Resource>/</Resource><RequestId>1</RequestId><HostId>1</HostId></Error>").encode()


def _s3_handler(state: DenyingS3):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _send(self, status: int, body: bytes = b"") -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _handle(self):
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            state.requests.append((self.command, self.path))
            if state.mode == "bad-keys":
                return self._send(403, _s3_error("InvalidAccessKeyId",
                                                 "The Access Key Id you provided does not exist in our records."))
            if self.command in ("PUT", "POST", "DELETE"):
                return self._send(403, _s3_error("AccessDenied", "Access Denied."))
            if self.command == "HEAD":
                return self._send(200)
            bucket = urlparse(self.path).path.strip("/").split("/")[0]
            return self._send(200, (
                '<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
                f"<Name>{bucket}</Name><Prefix></Prefix><KeyCount>0</KeyCount><MaxKeys>1000</MaxKeys>"
                "<IsTruncated>false</IsTruncated></ListBucketResult>").encode())

        do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _handle

    return Handler


def s3_server(mode: str) -> _Server:
    state = DenyingS3(mode)
    return _Server(_s3_handler(state), state)
