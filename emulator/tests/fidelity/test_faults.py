"""Injected faults as the client sees them: failed operations, 5xx, and rate-limit 403s it retries."""

import pytest
from googleapiclient.errors import HttpError

from gce import error_reason, route_body


@pytest.fixture
def faults(emulator):
    def set_faults(spec: str):
        emulator.admin("POST", "faults", {"spec": spec})

    yield set_faults
    set_faults("")


def test_failed_operation_has_googles_error_shape(compute, project, faults):
    faults("opfail=1")
    op = compute.routes().insert(project=project, body=route_body(project, "fid-opfail")).execute()
    faults("")
    op = compute.globalOperations().get(project=project, operation=op["name"]).execute()
    assert op["status"] == "DONE"
    assert op["httpErrorStatusCode"] >= 400
    assert isinstance(op["httpErrorMessage"], str) and op["httpErrorMessage"]
    errors = op["error"]["errors"]
    assert errors and all(isinstance(e["code"], str) and e["code"] for e in errors)
    with pytest.raises(HttpError) as missing:  # a failed insert leaves nothing behind
        compute.routes().get(project=project, route="fid-opfail").execute()
    assert missing.value.status_code == 404


@pytest.mark.parametrize(
    "spec,status,reason",
    [("http500=1", 500, "backendError"), ("http503=1", 503, "backendError"),
     ("ratelimit=1", 403, "rateLimitExceeded")],
)
def test_transient_errors_are_retried_by_the_client(compute, project, faults, spec, status, reason):
    faults(spec)
    with pytest.raises(HttpError) as err:
        compute.instances().get(project=project, zone="us-central1-a", instance="se-1").execute()
    assert err.value.status_code == status
    assert error_reason(err.value) == reason

    # googleapiclient retries it (num_retries) because it recognises the body; the fault is lifted
    # in the client's back-off sleep, so the second attempt succeeds.
    request = compute.instances().get(project=project, zone="us-central1-a", instance="se-1")
    sleeps = []
    request._sleep = lambda seconds: (sleeps.append(seconds), faults(""))
    assert request.execute(num_retries=2)["name"] == "se-1"
    assert len(sleeps) == 1
