"""The batch endpoint through googleapiclient's BatchHttpRequest: each inner outcome on its own."""

from conftest import build_compute, doc_with_root
from gce import Outcomes, ZONE, error_reason, new_batch, route_body, wait_done


def test_batch_mixes_successes_and_failures(compute, emulator, project, recorder):
    existing = compute.routes().insert(
        project=project, body=route_body(project, "fid-existing", "192.168.200.0/24")
    ).execute()
    wait_done(compute, project, existing)

    outcomes = Outcomes()
    batch = new_batch(emulator.base_url, outcomes)
    routes = compute.routes()
    batch.add(routes.insert(project=project, body=route_body(project, "fid-batch-1", "192.168.201.0/24")),
              request_id="insert-1")
    batch.add(routes.insert(project=project, body=route_body(project, "fid-batch-2", "192.168.202.0/24")),
              request_id="insert-2")
    batch.add(routes.get(project=project, route="fid-existing"), request_id="get-existing")
    batch.add(compute.instances().get(project=project, zone=ZONE, instance="se-1"), request_id="get-instance")
    batch.add(compute.networks().get(project=project, network="default"), request_id="get-network")
    batch.add(routes.insert(project=project, body=route_body(project, "Bad_Name", "192.168.203.0/24")),
              request_id="invalid-name")
    batch.add(routes.get(project=project, route="fid-missing"), request_id="get-missing")
    batch.add(routes.insert(project=project, body=route_body(project, "fid-existing", "192.168.204.0/24")),
              request_id="duplicate")
    batch.add(routes.list(project=project, maxResults=1), request_id="list")
    before = len(recorder.checked)
    batch.execute()

    assert sorted(outcomes.results) == sorted([
        "insert-1", "insert-2", "get-existing", "get-instance", "get-network", "invalid-name",
        "get-missing", "duplicate", "list",
    ])
    for request_id, name in (("insert-1", "fid-batch-1"), ("insert-2", "fid-batch-2")):
        op = outcomes.ok(request_id)
        assert op["kind"] == "compute#operation" and op["operationType"] == "insert"
        assert op["targetLink"].endswith(f"/global/routes/{name}")
        wait_done(compute, project, op)
    assert outcomes.ok("get-existing")["destRange"] == "192.168.200.0/24"
    instance = outcomes.ok("get-instance")
    assert instance["kind"] == "compute#instance" and instance["name"] == "se-1"
    assert outcomes.ok("get-network")["kind"] == "compute#network"
    assert outcomes.ok("list")["kind"] == "compute#routeList"

    invalid = outcomes.failed("invalid-name")
    assert invalid.status_code == 400
    assert error_reason(invalid) == "invalid"
    assert "name" in invalid.reason and "Bad_Name" in invalid.reason
    missing = outcomes.failed("get-missing")
    assert missing.status_code == 404 and error_reason(missing) == "notFound"
    duplicate = outcomes.failed("duplicate")
    assert duplicate.status_code == 409 and error_reason(duplicate) == "alreadyExists"

    # The batch's inner responses went through the schema check one by one.
    inner = [c for c in recorder.checked[before:] if c.request.startswith("batch[")]
    assert len(inner) == 9, [c.request for c in inner]

    # And the state is what the successes and failures say.
    names = {r["name"] for r in compute.routes().list(project=project).execute()["items"]}
    assert {"fid-existing", "fid-batch-1", "fid-batch-2"} <= names
    assert "Bad_Name" not in names
    assert compute.routes().get(project=project, route="fid-existing").execute()["destRange"] == "192.168.200.0/24"


def test_new_batch_http_request_with_rewritten_root_url(compute, emulator, project):
    """`service.new_batch_http_request()` works once the discovery document's rootUrl is the emulator."""
    service, _ = build_compute(emulator, doc=doc_with_root(emulator.base_url), api_endpoint=None)
    # build_compute passes api_endpoint = BASE/compute/v1/; rootUrl+servicePath is the same here.
    outcomes = Outcomes()
    batch = service.new_batch_http_request(callback=outcomes)
    assert batch._batch_uri == emulator.base_url + "/batch/compute/v1"
    batch.add(service.routes().insert(project=project, body=route_body(project, "fid-nb-1", "192.168.210.0/24")),
              request_id="a")
    batch.add(service.routes().get(project=project, route="fid-nb-nope"), request_id="b")
    batch.execute()
    wait_done(service, project, outcomes.ok("a"))
    assert outcomes.failed("b").status_code == 404
    assert service.routes().get(project=project, route="fid-nb-1").execute()["name"] == "fid-nb-1"


def test_default_batch_uri_ignores_api_endpoint(compute):
    """Why new_batch() exists: with api_endpoint alone, batches would go to Google, not the emulator."""
    assert compute.new_batch_http_request()._batch_uri == "https://compute.googleapis.com/batch/compute/v1"
