"""Synchronous validation: a 400 whose message names the offending field."""

import pytest
from googleapiclient.errors import HttpError

from emulator_proc import PROJECT
from gce import error_reason, route_body


def firewall_body(**extra):
    body = {
        "name": "fid-fw-bad",
        "network": f"projects/{PROJECT}/global/networks/default",
        "allowed": [{"IPProtocol": "tcp", "ports": ["22"]}],
        "sourceRanges": ["10.0.0.0/8"],
    }
    body.update(extra)
    return body


CASES = [
    ("route bad name", "routes", route_body(PROJECT, "Bad_Name"), "name"),
    ("route name too long", "routes", route_body(PROJECT, "a" * 64), "name"),
    ("route bad CIDR", "routes", route_body(PROJECT, "fid-bad-cidr", "10.0.0.0/33"), "destRange"),
    ("route not a CIDR", "routes", route_body(PROJECT, "fid-bad-cidr2", "banana"), "destRange"),
    (
        "route two next hops",
        "routes",
        route_body(PROJECT, "fid-two-hops", nextHopInstance=f"projects/{PROJECT}/zones/us-central1-a/instances/se-1"),
        "nextHop",
    ),
    ("route priority 70000", "routes", route_body(PROJECT, "fid-prio", priority=70000), "priority"),
    ("firewall priority 70000", "firewalls", firewall_body(priority=70000), "priority"),
    ("firewall bad source range", "firewalls", firewall_body(sourceRanges=["10.0.0.0/99"]), "sourceRanges"),
]


@pytest.mark.parametrize("label,collection,body,field", CASES, ids=[c[0] for c in CASES])
def test_invalid_body_names_the_field(compute, project, label, collection, body, field):
    with pytest.raises(HttpError) as err:
        getattr(compute, collection)().insert(project=project, body=body).execute()
    assert err.value.status_code == 400, err.value.content
    assert error_reason(err.value) == "invalid"
    assert field in err.value.reason, f"message does not name {field!r}: {err.value.reason}"
    assert field in err.value.error_details[0]["message"]
    # Nothing was created.
    listed = getattr(compute, collection)().list(project=project).execute()
    assert body["name"] not in [item["name"] for item in listed.get("items", [])]


def test_missing_required_field(compute, project):
    body = route_body(project, "fid-no-dest")
    del body["destRange"]
    with pytest.raises(HttpError) as err:
        compute.routes().insert(project=project, body=body).execute()
    assert err.value.status_code == 400
    assert error_reason(err.value) == "required"
    assert "destRange" in err.value.reason


def test_bad_request_id_is_400(compute, project):
    with pytest.raises(HttpError) as err:
        compute.routes().insert(
            project=project, body=route_body(project, "fid-rid"), requestId="not-a-uuid"
        ).execute()
    assert err.value.status_code == 400
    assert "requestId" in err.value.reason


def test_unknown_network_is_404(compute, project):
    body = route_body(project, "fid-no-net")
    body["network"] = f"projects/{project}/global/networks/nope"
    with pytest.raises(HttpError) as err:
        compute.routes().insert(project=project, body=body).execute()
    assert err.value.status_code == 404
    assert error_reason(err.value) == "notFound"
