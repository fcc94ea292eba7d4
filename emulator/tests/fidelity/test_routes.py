"""Routes: the full insert / get / duplicate / delete cycle through Google's client."""

import uuid

import pytest
from googleapiclient.errors import HttpError

from gce import error_reason, route_body, wait_done


def test_route_lifecycle(compute, emulator, project):
    body = route_body(
        project, "fid-route-1", "192.168.50.0/24", priority=900, description="fidelity", tags=["se"]
    )
    request_id = str(uuid.uuid4())
    request = compute.routes().insert(project=project, body=body, requestId=request_id)
    assert request.uri.startswith(
        f"{emulator.base_url}/compute/v1/projects/{project}/global/routes?"
    ), request.uri
    assert request.methodId == "compute.routes.insert"
    op = request.execute()
    assert op["kind"] == "compute#operation"
    assert op["operationType"] == "insert"
    assert op["clientOperationId"] == request_id
    assert op["targetLink"].endswith(f"/projects/{project}/global/routes/fid-route-1")
    assert op["selfLink"].endswith(f"/projects/{project}/global/operations/{op['name']}")
    assert "zone" not in op and "region" not in op

    # The same requestId again: the same operation back, no second insert and no 409.
    again = compute.routes().insert(project=project, body=body, requestId=request_id).execute()
    assert again["name"] == op["name"]
    assert again["targetId"] == op["targetId"]

    got = compute.globalOperations().get(project=project, operation=op["name"]).execute()
    assert got["name"] == op["name"]
    assert got["status"] == "DONE"
    assert got["progress"] == 100
    assert "error" not in got
    waited = compute.globalOperations().wait(project=project, operation=op["name"]).execute()
    assert waited["status"] == "DONE" and waited["name"] == op["name"]

    route = compute.routes().get(project=project, route="fid-route-1").execute()
    assert route["kind"] == "compute#route"
    for key in ("name", "destRange", "nextHopIp", "priority", "description", "tags"):
        assert route[key] == body[key], key
    assert route["network"].endswith(f"/projects/{project}/global/networks/default")
    assert route["selfLink"] == op["targetLink"]
    assert route["id"] == op["targetId"]

    # Same name, new request: 409 alreadyExists.
    with pytest.raises(HttpError) as dup:
        compute.routes().insert(project=project, body=body).execute()
    assert dup.value.status_code == 409
    assert error_reason(dup.value) == "alreadyExists"
    assert "fid-route-1" in dup.value.reason

    delete = compute.routes().delete(project=project, route="fid-route-1").execute()
    assert delete["operationType"] == "delete"
    done = wait_done(compute, project, delete)
    assert done["targetLink"] == route["selfLink"]

    with pytest.raises(HttpError) as gone:
        compute.routes().get(project=project, route="fid-route-1").execute()
    assert gone.value.status_code == 404
    assert error_reason(gone.value) == "notFound"

    with pytest.raises(HttpError) as gone_again:
        compute.routes().delete(project=project, route="fid-route-1").execute()
    assert gone_again.value.status_code == 404
    assert error_reason(gone_again.value) == "notFound"


def test_operation_of_unknown_name_is_404(compute, project):
    with pytest.raises(HttpError) as missing:
        compute.globalOperations().get(project=project, operation="operation-nope").execute()
    assert missing.value.status_code == 404
    assert error_reason(missing.value) == "notFound"
