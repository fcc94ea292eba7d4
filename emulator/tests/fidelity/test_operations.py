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


def test_the_log_newest_first_names_what_changed(gcp_compute, gcp_emulator):
    """The operator's resync reads global operations newest first, trimmed to four fields, and
    stops at the first operation older than where its last read ended."""
    compute, project = gcp_compute, gcp_emulator.project
    inserted = compute.routes().insert(
        project=project, body=route_body(project, "fid-log-1", "192.168.71.0/24")
    ).execute()
    wait_done(compute, project, inserted, timeout=20)
    deleted = compute.routes().delete(project=project, route="fid-log-1").execute()
    rule = compute.firewalls().insert(
        project=project,
        body={
            "name": "fid-log-fw",
            "network": f"projects/{project}/global/networks/default",
            "allowed": [{"IPProtocol": "tcp", "ports": ["443"]}],
            "sourceRanges": ["0.0.0.0/0"],
        },
    ).execute()
    fields = "items(name,targetLink,insertTime,status),nextPageToken"
    page = compute.globalOperations().list(
        project=project, orderBy="creationTimestamp desc", maxResults=2, fields=fields
    ).execute()
    items = page["items"]
    # Newest first: the rule's insert, then the route's delete (the insert is on the next page).
    assert [o["name"] for o in items] == [rule["name"], deleted["name"]]
    assert all(set(o) == {"name", "targetLink", "insertTime", "status"} for o in items), items
    assert items[0]["targetLink"].endswith(f"/projects/{project}/global/firewalls/fid-log-fw")
    assert items[1]["targetLink"].endswith(f"/projects/{project}/global/routes/fid-log-1")
    assert items[0]["insertTime"] >= items[1]["insertTime"]
    assert set(page) == {"items", "nextPageToken"}
    following = compute.globalOperations().list(
        project=project,
        orderBy="creationTimestamp desc",
        maxResults=2,
        fields=fields,
        pageToken=page["nextPageToken"],
    ).execute()
    assert following["items"][0]["name"] == inserted["name"]
    assert following["items"][0]["status"] == "DONE"
    wait_done(compute, project, rule, timeout=20)
    wait_done(compute, project, deleted, timeout=20)
