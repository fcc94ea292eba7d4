"""Operations that take time: the gcp profile at time scale 0.01."""

import time

from gce import REGION, route_body, wait_done


def test_insert_is_pending_then_wait_returns_done(gcp_compute, gcp_emulator):
    compute, project = gcp_compute, gcp_emulator.project
    op = compute.routes().insert(
        project=project, body=route_body(project, "fid-slow-1", "192.168.70.0/24")
    ).execute()
    assert op["status"] in ("PENDING", "RUNNING"), op
    assert "endTime" not in op

    pending = compute.globalOperations().list(project=project, filter="status != DONE").execute()
    assert op["name"] in [o["name"] for o in pending.get("items", [])]

    started = time.monotonic()
    done = wait_done(compute, project, op, timeout=20)
    assert done["status"] == "DONE"
    assert done["progress"] == 100
    assert "endTime" in done and done["insertTime"] <= done["startTime"] <= done["endTime"]
    assert done["user"] == "fidelity@fidelity-project.iam.gserviceaccount.com"
    assert time.monotonic() - started < 20

    still_pending = compute.globalOperations().list(project=project, filter="status != DONE").execute()
    assert op["name"] not in [o["name"] for o in still_pending.get("items", [])]
    finished = compute.globalOperations().list(project=project, filter="status = DONE").execute()
    assert op["name"] in [o["name"] for o in finished["items"]]
    assert compute.routes().get(project=project, route="fid-slow-1").execute()["name"] == "fid-slow-1"


def test_regional_operation_wait(gcp_compute, gcp_emulator):
    compute, project = gcp_compute, gcp_emulator.project
    # A forwarding rule: the longest regional operation (10-30 s at Google, 0.1-0.3 s here).
    op = compute.forwardingRules().insert(
        project=project, region=REGION, body={"name": "fid-slow-fr", "IPProtocol": "TCP", "portRange": "443"},
    ).execute()
    assert op["status"] in ("PENDING", "RUNNING"), op
    assert op["region"].endswith(f"/regions/{REGION}")
    pending = compute.regionOperations().list(project=project, region=REGION, filter="status != DONE").execute()
    assert op["name"] in [o["name"] for o in pending.get("items", [])]
    done = wait_done(compute, project, op, timeout=20)
    got = compute.regionOperations().get(project=project, region=REGION, operation=op["name"]).execute()
    assert got["status"] == done["status"] == "DONE"
    assert got["insertTime"] <= got["startTime"] <= got["endTime"]
    rule = compute.forwardingRules().get(project=project, region=REGION, forwardingRule="fid-slow-fr").execute()
    assert rule["portRange"] in ("443", "443-443")
