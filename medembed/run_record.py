"""What happened to a pipeline run, kept where the models are and optionally announced.

The pipeline's exit handler calls `record` whatever the outcome: a JSON record under
<registry>/<model>/runs/<time>-<run>.json (the failed ones are easy to find later) and, with
registry.notify_url, a POST of the same JSON (a chat or incident webhook). Announcing must never
fail the run: a webhook that does not answer is logged and skipped.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import urllib.error
import urllib.request

from .storage import StorageError, open_store

log = logging.getLogger(__name__)

WEBHOOK_TIMEOUT_S = 10


def record(run_name: str, state: str, error: str, registry_uri: str, model_name: str, notify_url: str = "") -> dict:
    entry = {"run": run_name, "state": state, "error": error, "model_name": model_name,
             "recorded": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    safe_name = "".join(c if c.isalnum() or c in "-._" else "-" for c in run_name) or "run"
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    try:
        open_store(registry_uri).put_bytes(f"{model_name}/runs/{stamp}-{safe_name}.json", json.dumps(entry, indent=2).encode())
    except (StorageError, OSError) as exc:
        log.warning("could not record the run in %s: %s", registry_uri, exc)
    if notify_url:
        request = urllib.request.Request(notify_url, data=json.dumps(entry).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=WEBHOOK_TIMEOUT_S) as response:
                log.info("notified %s (HTTP %s)", notify_url.split("?")[0], response.status)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            log.warning("could not notify %s: %s", notify_url.split("?")[0], exc)
    log.info("run %s ended %s%s", run_name, state, f": {error}" if error else "")
    return entry
