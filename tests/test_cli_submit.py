"""`medembed submit` / `medembed schedule` against a fake KFP API server.

The server is a stdlib `http.server` speaking just enough of `/apis/v2beta1/*` for the REAL
`kfp.Client` (so its serialisation of runs, recurring runs and pipeline specs is what we check).
The CLI embeds the compiled spec in the run / recurring run, so no pipeline upload endpoint is needed.
"""

from __future__ import annotations

import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest
import yaml

from medembed import cli

API = "/apis/v2beta1"


class FakeKfp:
    """State and request log of the fake server."""

    def __init__(self):
        self.requests: list[dict] = []
        self.experiments: dict[str, dict] = {}

    def add_experiment(self, name: str) -> str:
        experiment_id = str(uuid.uuid4())
        self.experiments[experiment_id] = {"experiment_id": experiment_id, "display_name": name}
        return experiment_id

    def posted(self, path: str) -> list[dict]:
        return [r["body"] for r in self.requests if r["method"] == "POST" and r["path"] == API + path]


def _handler(state: FakeKfp):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep pytest output clean
            pass

        def _record(self) -> tuple[str, dict, object]:
            url = urlparse(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw and "json" in (self.headers.get("Content-Type") or "") else raw
            query = parse_qs(url.query)
            state.requests.append({"method": self.command, "path": url.path, "query": query, "body": body,
                                   "authorization": self.headers.get("Authorization")})
            return url.path, query, body

        def _reply(self, payload: dict, status: int = 200) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            path, query, _ = self._record()
            if path == f"{API}/healthz":
                return self._reply({"multi_user": False})
            if path == f"{API}/experiments":
                # kfp.Client looks an experiment up by a display_name EQUALS filter before creating it.
                wanted = {p["stringValue"] for p in json.loads(query["filter"][0])["predicates"]
                          if p["key"] == "display_name"}
                found = [e for e in state.experiments.values() if e["display_name"] in wanted]
                return self._reply({"experiments": found, "total_size": len(found)} if found else {})
            self._reply({"error": f"not implemented: GET {path}", "code": 5}, 404)

        def do_POST(self):
            path, _, body = self._record()
            if path == f"{API}/experiments":
                experiment_id = state.add_experiment(body["display_name"])
                return self._reply(state.experiments[experiment_id])
            if path == f"{API}/runs":
                return self._reply({**body, "run_id": str(uuid.uuid4()), "state": "PENDING"})
            if path == f"{API}/recurringruns":
                return self._reply({**body, "recurring_run_id": str(uuid.uuid4()), "status": "ENABLED"})
            self._reply({"error": f"not implemented: POST {path}", "code": 5}, 404)

    return Handler


@pytest.fixture
def kfp_server(monkeypatch, tmp_path):
    import kfp

    # Isolate from the developer's KFP context file and KF_PIPELINES_* variables.
    monkeypatch.setattr(kfp.Client, "_LOCAL_KFP_CONTEXT", str(tmp_path / "kfp-context.json"))
    for name in ("KF_PIPELINES_ENDPOINT", "KF_PIPELINES_UI_ENDPOINT", "KF_PIPELINES_DEFAULT_EXPERIMENT_NAME",
                 "KF_PIPELINES_OVERRIDE_EXPERIMENT_NAME", "KF_PIPELINES_IAP_OAUTH2_CLIENT_ID",
                 "KF_PIPELINES_APP_OAUTH2_CLIENT_ID", "KF_PIPELINES_APP_OAUTH2_CLIENT_SECRET"):
        monkeypatch.delenv(name, raising=False)
    state = FakeKfp()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))  # port 0: a free port
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


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
    rc = cli.main(["submit", "--host", kfp_server.url, "--output", str(tmp_path / "pipeline.yaml"),
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
    _assert_gpu_training(run)
    assert "run: " in capsys.readouterr().out


def _cached(body: dict) -> dict[str, bool]:
    tasks = _spec(body)[0]["root"]["dag"]["tasks"]
    return {name: bool(task.get("cachingOptions", {}).get("enableCache")) for name, task in tasks.items()}


def test_submit_keeps_registration_uncached_unless_no_cache(kfp_server, tmp_path):
    """Submission must not re-enable the cache of the registration task (a side effect)."""
    cli.main(["submit", "--host", kfp_server.url, "--output", str(tmp_path / "a.yaml")])
    cli.main(["submit", "--host", kfp_server.url, "--output", str(tmp_path / "b.yaml"), "--no-cache"])
    default_run, no_cache_run = kfp_server.posted("/runs")

    # Exactly the compiled per-task choices: registration off, the rest on.
    compiled = next(yaml.safe_load_all((tmp_path / "a.yaml").read_text()))
    assert _cached(default_run) == {name: bool(task.get("cachingOptions", {}).get("enableCache"))
                                    for name, task in compiled["root"]["dag"]["tasks"].items()}
    assert _cached(default_run)["register-model"] is False
    assert _cached(default_run)["train-model"] is True
    assert not any(_cached(no_cache_run).values())
    # Second submission found the experiment the first one created.
    assert len(kfp_server.posted("/experiments")) == 1


def test_schedule_creates_recurring_run(kfp_server, tmp_path, capsys):
    experiment_id = kfp_server.add_experiment("medical-embeddings")  # exists already: reused
    rc = cli.main(["schedule", "--host", kfp_server.url, "--output", str(tmp_path / "pipeline.yaml"),
                   "--cron", "0 0 2 * * *", "--name", "nightly-retrain", "--param", "epochs=2",
                   "--param", "data_uri=s3://medembed-data/medquad/v2.jsonl.gz"])
    assert rc == 0
    assert kfp_server.posted("/experiments") == []
    (job,) = kfp_server.posted("/recurringruns")
    assert job["experiment_id"] == experiment_id
    assert job["display_name"] == "nightly-retrain"
    assert job["trigger"]["cron_schedule"]["cron"] == "0 0 2 * * *"
    assert str(job["max_concurrency"]) == "1"
    assert job["no_catchup"] is True
    assert job["mode"] == "ENABLE"
    assert job["runtime_config"]["parameters"] == {"epochs": 2, "data_uri": "s3://medembed-data/medquad/v2.jsonl.gz"}
    _assert_gpu_training(job)
    assert _cached(job)["register-model"] is False
    assert "recurring run: " in capsys.readouterr().out


def test_schedule_rejects_five_field_cron_before_contacting_kfp(kfp_server, tmp_path):
    assert cli.main(["schedule", "--host", kfp_server.url, "--output", str(tmp_path / "p.yaml"), "--cron", "0 2 * * *"]) == 2
    assert kfp_server.requests == []


def test_token_is_sent_as_bearer(kfp_server, tmp_path):
    cli.main(["submit", "--host", kfp_server.url, "--output", str(tmp_path / "p.yaml"), "--token", "t0ken"])
    api_calls = [r for r in kfp_server.requests if r["path"] != f"{API}/healthz"]
    assert api_calls and all(r["authorization"] == "Bearer t0ken" for r in api_calls)


def test_bad_param_is_a_usage_error(kfp_server, tmp_path, capsys):
    rc = cli.main(["submit", "--host", kfp_server.url, "--output", str(tmp_path / "p.yaml"), "--param", "epochs"])
    assert rc == 2
    assert "name=value" in capsys.readouterr().err
    assert kfp_server.posted("/runs") == []
