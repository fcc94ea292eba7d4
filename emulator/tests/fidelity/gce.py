"""Small helpers shared by the fidelity tests: request bodies, operation waiting, batches."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

from googleapiclient.errors import HttpError
from googleapiclient.http import BatchHttpRequest

REGION = "us-central1"
ZONE = "us-central1-a"


def last_segment(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


def route_body(project: str, name: str, dest: str = "192.168.10.0/24", **extra) -> dict:
    body = {
        "name": name,
        "network": f"projects/{project}/global/networks/default",
        "destRange": dest,
        "nextHopIp": "10.128.0.10",
    }
    body.update(extra)
    return body


def operations_of(compute, op: dict):
    """The operations collection (and its location argument) an Operation belongs to."""
    if op.get("zone"):
        return compute.zoneOperations(), {"zone": last_segment(op["zone"])}
    if op.get("region"):
        return compute.regionOperations(), {"region": last_segment(op["region"])}
    return compute.globalOperations(), {}


def wait_done(compute, project: str, op: dict, timeout: float = 30.0) -> dict:
    """Calls operations.wait until the operation is DONE (wait may return early, as Google's does)."""
    collection, location = operations_of(compute, op)
    deadline = time.monotonic() + timeout
    while op["status"] != "DONE":
        assert time.monotonic() < deadline, f"operation {op['name']} not DONE after {timeout}s: {op}"
        op = collection.wait(project=project, operation=op["name"], **location).execute()
    assert "error" not in op, f"operation failed: {op['error']}"
    return op


def error_reason(err: HttpError) -> str:
    details = err.error_details
    assert isinstance(details, list) and details, f"no error details in {err.content!r}"
    return details[0]["reason"]


def new_batch(base_url: str, callback=None) -> BatchHttpRequest:
    """A batch aimed at the emulator's batch endpoint.

    `service.new_batch_http_request()` takes its URL from the discovery document's rootUrl and
    ignores client_options.api_endpoint, so a client pointed elsewhere with api_endpoint builds its
    batch with `BatchHttpRequest(batch_uri=...)` (or uses a discovery document whose rootUrl was
    rewritten; see test_batch).
    """
    return BatchHttpRequest(callback=callback, batch_uri=base_url + "/batch/compute/v1")


class Outcomes:
    """A batch callback that keeps each request's (response, exception)."""

    def __init__(self):
        self.results: dict[str, tuple[dict | None, HttpError | None]] = {}

    def __call__(self, request_id, response, exception):
        assert request_id not in self.results, f"callback called twice for {request_id}"
        self.results[request_id] = (response, exception)

    def ok(self, request_id: str) -> dict:
        response, exception = self.results[request_id]
        assert exception is None, f"{request_id}: {exception}"
        return response

    def failed(self, request_id: str) -> HttpError:
        response, exception = self.results[request_id]
        assert exception is not None, f"{request_id} succeeded: {response}"
        return exception


def list_all(collection, **kwargs) -> tuple[list[dict], list[dict]]:
    """All items of a list call, following nextPageToken with list_next; also returns the pages."""
    request = collection.list(**kwargs)
    pages = []
    while request is not None:
        page = request.execute()
        pages.append(page)
        request = collection.list_next(request, page)
    return [item for page in pages for item in page.get("items", [])], pages


def gcloud_env(emulator, config_dir: Path) -> dict:
    """The environment that points the real gcloud at the emulator: its compute endpoint, a token
    the emulator issued (from the metadata path), a throw-away configuration, no prompts.
    Skips the calling test when gcloud is not on PATH."""
    import pytest

    if shutil.which("gcloud") is None:
        pytest.skip("gcloud is not on PATH")
    request = urllib.request.Request(
        f"{emulator.base_url}/computeMetadata/v1/instance/service-accounts/default/token",
        headers={"Metadata-Flavor": "Google"})
    with urllib.request.urlopen(request, timeout=10) as response:
        token = json.loads(response.read())["access_token"]
    token_file = config_dir / "token"
    token_file.write_text(token)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDSDK_")}
    env.update({
        "CLOUDSDK_CONFIG": str(config_dir / "gcloud-config"),
        "CLOUDSDK_API_ENDPOINT_OVERRIDES_COMPUTE": f"{emulator.base_url}/compute/v1/",
        "CLOUDSDK_AUTH_ACCESS_TOKEN_FILE": str(token_file),
        "CLOUDSDK_CORE_DISABLE_PROMPTS": "1",
    })
    return env


def run_gcloud(args: list[str], env: dict, ok: bool = True) -> tuple[object, list[tuple[str, str, int, object]], str]:
    """Runs gcloud with --format=json --log-http. Returns its JSON output (None when empty), the
    requests it sent as (method, path below /compute/v1/ with the query, response status, JSON
    body or None), and stderr."""
    done = subprocess.run(["gcloud", *args, "--format=json", "--log-http"], env=env,
                          capture_output=True, text=True, timeout=180)
    if ok:
        assert done.returncode == 0, f"gcloud {' '.join(args)}: {done.stderr[-3000:]}"
    requests = []
    for block in done.stderr.split("==== request start ====")[1:]:
        request, _, rest = block.partition("==== request end ====")
        uri = re.search(r"^uri: (.*)$", request, re.M).group(1)
        method = re.search(r"^method: (.*)$", request, re.M).group(1)
        body = request.partition("== body start ==")[2].partition("== body end ==")[0].strip()
        status = re.search(r"^status: (\d+)$", rest, re.M)
        requests.append((method, uri.split("/compute/v1/", 1)[-1], int(status.group(1)) if status else 0,
                         json.loads(body) if body else None))
    output = json.loads(done.stdout) if done.stdout.strip() else None
    return output, requests, done.stderr
