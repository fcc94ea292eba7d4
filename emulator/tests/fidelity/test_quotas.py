"""projects.get and regions.get: the resource quotas (limit, usage) as Google's client reads them.

The world (emulator_proc.WORLD) sets ROUTES 2500, FIREWALLS 1000, STATIC_ADDRESSES 200 and
FORWARDING_RULES 100. ROUTES and FIREWALLS are project-wide (projects.get); STATIC_ADDRESSES and
FORWARDING_RULES are enforced per region by the emulator (regions.get). The schema guard holds every
body against the Project, Region and RegionList schemas of the discovery document.
"""

import pytest
from googleapiclient.errors import HttpError

from gce import REGION, ZONE, Outcomes, error_reason, list_all, new_batch, route_body, wait_done


def quotas(resource: dict) -> dict[str, tuple[float, float]]:
    """metric -> (limit, usage); both are doubles in Compute's Quota, so Python floats."""
    found = {}
    for quota in resource["quotas"]:
        assert isinstance(quota["limit"], float) and isinstance(quota["usage"], float), quota
        found[quota["metric"]] = (quota["limit"], quota["usage"])
    return found


def test_project_quotas_follow_a_route_insert_and_delete(compute, project):
    before = compute.projects().get(project=project).execute()
    assert before["kind"] == "compute#project"
    assert before["name"] == project
    assert before["selfLink"].endswith(f"/compute/v1/projects/{project}")
    assert before["commonInstanceMetadata"]["kind"] == "compute#metadata"
    assert before["defaultServiceAccount"].endswith("-compute@developer.gserviceaccount.com")
    assert quotas(before) == {"ROUTES": (2500.0, 0.0), "FIREWALLS": (1000.0, 0.0)}

    op = compute.routes().insert(project=project, body=route_body(project, "fid-quota-1")).execute()
    wait_done(compute, project, op)
    after = compute.projects().get(project=project).execute()
    assert quotas(after)["ROUTES"] == (2500.0, 1.0)
    assert quotas(after)["FIREWALLS"] == (1000.0, 0.0)

    wait_done(compute, project, compute.routes().delete(project=project, route="fid-quota-1").execute())
    assert quotas(compute.projects().get(project=project).execute())["ROUTES"] == (2500.0, 0.0)


def test_project_quota_limit_is_what_the_insert_enforces(compute, emulator, project):
    wait_done(compute, project, compute.routes().insert(
        project=project, body=route_body(project, "fid-quota-2", "192.168.61.0/24")).execute())
    emulator.admin("POST", "quotas", {"project": project, "quotas": {"ROUTES": 1}})
    assert quotas(compute.projects().get(project=project).execute())["ROUTES"] == (1.0, 1.0)
    op = compute.routes().insert(
        project=project, body=route_body(project, "fid-quota-3", "192.168.62.0/24")).execute()
    assert op["status"] == "DONE" and op["error"]["errors"][0]["code"] == "QUOTA_EXCEEDED", op
    assert quotas(compute.projects().get(project=project).execute())["ROUTES"] == (1.0, 1.0)


def test_region_quotas_and_zones(compute, project):
    region = compute.regions().get(project=project, region=REGION).execute()
    assert region["kind"] == "compute#region"
    assert region["name"] == REGION and region["status"] == "UP"
    assert region["selfLink"].endswith(f"/compute/v1/projects/{project}/regions/{REGION}")
    assert any(zone.endswith(f"/projects/{project}/zones/{ZONE}") for zone in region["zones"])
    assert quotas(region) == {"STATIC_ADDRESSES": (200.0, 0.0), "FORWARDING_RULES": (100.0, 0.0)}

    wait_done(compute, project, compute.addresses().insert(
        project=project, region=REGION, body={"name": "fid-quota-addr"}).execute())
    wait_done(compute, project, compute.forwardingRules().insert(
        project=project, region=REGION, body={"name": "fid-quota-fr"}).execute())
    wait_done(compute, project, compute.routes().insert(
        project=project, body=route_body(project, "fid-quota-4", "192.168.63.0/24")).execute())
    region = compute.regions().get(project=project, region=REGION).execute()
    assert quotas(region) == {"STATIC_ADDRESSES": (200.0, 1.0), "FORWARDING_RULES": (100.0, 1.0)}
    assert quotas(compute.projects().get(project=project).execute())["ROUTES"] == (2500.0, 1.0)

    listed, pages = list_all(compute.regions(), project=project, maxResults=1)
    assert [r["name"] for r in listed] == [REGION]
    assert pages[0]["kind"] == "compute#regionList"
    assert listed[0] == region


def test_fields_and_batch(compute, emulator, project):
    partial = compute.projects().get(project=project, fields="quotas(metric,usage)").execute()
    assert partial == {"quotas": [{"metric": "FIREWALLS", "usage": 0.0},
                                  {"metric": "ROUTES", "usage": 0.0}]}
    outcomes = Outcomes()
    batch = new_batch(emulator.base_url, outcomes)
    batch.add(compute.projects().get(project=project), request_id="project")
    batch.add(compute.regions().get(project=project, region=REGION), request_id="region")
    batch.add(compute.regions().get(project=project, region="mars-north1"), request_id="nowhere")
    batch.execute()
    assert outcomes.ok("project")["kind"] == "compute#project"
    assert outcomes.ok("region")["kind"] == "compute#region"
    assert outcomes.failed("nowhere").status_code == 404


def test_unknown_project_or_region_is_404(compute, project):
    for request in (
        compute.projects().get(project="no-such-project"),
        compute.regions().get(project=project, region="mars-north1"),
        compute.regions().get(project="no-such-project", region=REGION),
    ):
        with pytest.raises(HttpError) as missing:
            request.execute()
        assert missing.value.status_code == 404
        assert error_reason(missing.value) == "notFound"
        assert "was not found" in missing.value.reason


def test_gcp_profile_serves_them_as_reads(gcp_compute, gcp_emulator):
    project = gcp_emulator.project
    assert gcp_compute.projects().get(project=project).execute()["kind"] == "compute#project"
    assert gcp_compute.regions().get(project=project, region=REGION).execute()["status"] == "UP"
    stats = gcp_emulator.admin("GET", "stats")
    assert stats["callsByMethod"]["compute.projects.get"] >= 1
    assert stats["callsByMethod"]["compute.regions.get"] >= 1
