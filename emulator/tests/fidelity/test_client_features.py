"""What google-api-python-client and google-auth do on their own, which Google's front end honours.

The emulator honours them: partial responses (`fields`), long GETs sent as POST with
`X-HTTP-Method-Override`.
"""

import json

import pytest
from googleapiclient.errors import HttpError

from gce import ZONE, Outcomes, new_batch, route_body, wait_done


def test_stale_token_is_refreshed_after_a_401(compute, credentials, project, recorder):
    """A 401 makes google_auth_httplib2 run the JWT grant again and retry the call once."""
    compute.routes().list(project=project).execute()  # a valid token first
    credentials.token = "ya29.revoked-or-unknown"
    before = len(recorder.checked)
    listed = compute.routes().list(project=project).execute()
    assert listed["kind"] == "compute#routeList"
    steps = [(c.request.split("?")[0], c.status) for c in recorder.checked[before:]]
    routes_path = f"GET /compute/v1/projects/{project}/global/routes"
    assert steps == [(routes_path, 401), ("POST /token", 200), (routes_path, 200)], steps
    assert credentials.token != "ya29.revoked-or-unknown"


def test_batch_with_a_stale_token_succeeds(compute, credentials, emulator, project):
    credentials.token = "ya29.revoked-or-unknown"
    outcomes = Outcomes()
    batch = new_batch(emulator.base_url, outcomes)
    batch.add(compute.instances().get(project=project, zone=ZONE, instance="se-1"), request_id="i")
    batch.add(compute.routes().insert(project=project, body=route_body(project, "fid-stale")), request_id="r")
    batch.execute()
    assert outcomes.ok("i")["name"] == "se-1"
    wait_done(compute, project, outcomes.ok("r"))


def test_operation_delete_then_404(compute, project):
    op = compute.instances().stop(project=project, zone=ZONE, instance="se-1").execute()
    wait_done(compute, project, op)
    # Void method: googleapiclient returns the raw empty body.
    assert compute.zoneOperations().delete(project=project, zone=ZONE, operation=op["name"]).execute() in ("", b"", {})
    with pytest.raises(HttpError) as gone:
        compute.zoneOperations().get(project=project, zone=ZONE, operation=op["name"]).execute()
    assert gone.value.status_code == 404


def test_standard_parameters_are_accepted(compute, project):
    """quotaUser and prettyPrint are system parameters every Google API accepts."""
    got = compute.instances().get(project=project, zone=ZONE, instance="se-1", quotaUser="fidelity").execute()
    assert got["name"] == "se-1"
    assert compute.routes().list(project=project, prettyPrint=False).execute()["kind"] == "compute#routeList"


def test_fields_selects_a_partial_response(compute, project):
    got = compute.instances().get(project=project, zone=ZONE, instance="se-1", fields="name,status").execute()
    assert got == {"name": "se-1", "status": "RUNNING"}
    listed = compute.instances().list(project=project, zone=ZONE, fields="items(name),nextPageToken").execute()
    assert listed == {"items": [{"name": "se-1"}]}


def test_long_filter_is_sent_as_post_with_method_override(compute, project):
    names = [f"fid-long-{i:03d}" for i in range(90)]
    long_filter = " OR ".join(f'(name = "{n}")' for n in names)
    request = compute.routes().list(project=project, filter=long_filter)
    assert len(request.uri) > 2048  # so googleapiclient switches to POST + override
    wait_done(compute, project, compute.routes().insert(
        project=project, body=route_body(project, names[7], "192.168.77.0/24")).execute())
    listed = request.execute()
    assert request.method == "POST" and request.headers["x-http-method-override"] == "GET"
    assert [r["name"] for r in listed["items"]] == [names[7]]
    assert json.dumps(listed)  # and it was a RouteList (checked by the schema guard)
