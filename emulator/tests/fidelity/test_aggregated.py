"""aggregatedList: instances, operations, addresses, forwarding rules and target instances across
every scope, paged with aggregatedList_next, filtered, partial (`fields` with the `*` map
wildcard); and gcloud's `compute instances list` / `compute operations list`, which use them.

Every response is held against the discovery schemas (InstanceAggregatedList, ...) by the schema
guard of conftest.py.
"""

import json
import subprocess

import pytest
from googleapiclient.errors import HttpError

from gce import REGION, ZONE, error_reason, gcloud_env, wait_done

ZONES = [f"zones/{REGION}-{suffix}" for suffix in "abcf"]  # what the fidelity world knows


def aggregated_pages(collection, partial_success: bool = False, **kwargs) -> list[dict]:
    """Every page of an aggregatedList call, following nextPageToken with aggregatedList_next.

    `returnPartialSuccess` is sent on the wire when `partial_success`: the discovery document
    shipped in google-api-python-client (compute.v1 revision 20261106) does not declare it, so
    the client refuses it as a keyword (TypeError) and it is appended to the request URI, which
    aggregatedList_next keeps for the following pages.
    """
    request = collection.aggregatedList(**kwargs)
    if partial_success:
        request.uri += "&returnPartialSuccess=true"
    pages = []
    while request is not None:
        page = request.execute()
        pages.append(page)
        request = collection.aggregatedList_next(request, page)
        if request is not None and partial_success:
            assert "returnPartialSuccess=true" in request.uri
    return pages


def scoped(page: dict, field: str) -> list[tuple[str, dict]]:
    """(scope, item) of every item on a page; checks that each other scope carries the warning."""
    out = []
    for scope, scoped_list in page.get("items", {}).items():
        if field in scoped_list:
            assert scoped_list[field], f"{scope}: an empty list instead of the warning"
            assert "warning" not in scoped_list, scope
            out.extend((scope, item) for item in scoped_list[field])
        else:
            assert scoped_list == {"warning": {
                "code": "NO_RESULTS_ON_PAGE",
                "message": f"There are no results for scope '{scope}' on this page.",
                "data": [{"key": "scope", "value": scope}],
            }}, scope
    return out


@pytest.fixture
def spread(compute, project):
    """Resources and operations in every scope type: two regional and one global address, a
    forwarding rule, a target instance, se-1 stopped. Returns the operations, by scope."""
    ops = [
        compute.addresses().insert(project=project, region=REGION, body={"name": "fid-agg-r2"}).execute(),
        compute.addresses().insert(project=project, region=REGION, body={"name": "fid-agg-r1"}).execute(),
        compute.globalAddresses().insert(project=project, body={"name": "fid-agg-g"}).execute(),
        compute.forwardingRules().insert(project=project, region=REGION, body={"name": "fid-agg-fr"}).execute(),
        compute.targetInstances().insert(project=project, zone=f"{REGION}-b", body={
            "name": "fid-agg-ti", "instance": f"zones/{REGION}-b/instances/se-2"}).execute(),
        compute.instances().stop(project=project, zone=ZONE, instance="se-1").execute(),
    ]
    return [wait_done(compute, project, op) for op in ops]


def test_instances_page_across_zones(compute, project):
    pages = aggregated_pages(compute.instances(), project=project, maxResults=1)
    assert len(pages) == 2
    for page in pages:
        assert page["kind"] == "compute#instanceAggregatedList"
        assert page["id"] == f"projects/{project}/aggregated/instances"
        assert page["selfLink"].endswith(f"/compute/v1/projects/{project}/aggregated/instances")
        assert list(page["items"]) == ZONES, "every zone on every page, in key order"
        assert not page.get("unreachables")
    seen = [(scope, item["name"]) for page in pages for scope, item in scoped(page, "instances")]
    assert seen == [(f"zones/{REGION}-a", "se-1"), (f"zones/{REGION}-b", "se-2")]
    assert "nextPageToken" in pages[0] and "nextPageToken" not in pages[1]
    se1 = compute.instances().get(project=project, zone=ZONE, instance="se-1").execute()
    assert pages[0]["items"][f"zones/{ZONE}"]["instances"] == [se1]


def test_instances_partial_success_filter_and_fields(compute, project):
    partial = aggregated_pages(compute.instances(), partial_success=True, project=project, maxResults=1)
    assert [item["name"] for page in partial for _, item in scoped(page, "instances")] == ["se-1", "se-2"]
    with pytest.raises(TypeError):
        compute.instances().aggregatedList(project=project, returnPartialSuccess=True)

    filtered, = aggregated_pages(compute.instances(), project=project, filter='name = "se-2"')
    assert [(s, i["name"]) for s, i in scoped(filtered, "instances")] == [(f"zones/{REGION}-b", "se-2")]
    regex, = aggregated_pages(compute.instances(), project=project, filter="name eq se-.*",
                              includeAllScopes=True)
    assert list(regex["items"])[:2] == ["global", f"regions/{REGION}"]
    assert len(scoped(regex, "instances")) == 2

    fields = "items/*/instances(name,zone,status),nextPageToken"
    first, second = aggregated_pages(compute.instances(), project=project, maxResults=1, fields=fields)
    assert set(first) == {"items", "nextPageToken"} and set(second) == {"items"}
    assert first["items"][f"zones/{ZONE}"] == {"instances": [{
        "name": "se-1", "status": "RUNNING",
        "zone": f"https://www.googleapis.com/compute/v1/projects/{project}/zones/{ZONE}"}]}
    assert first["items"][f"zones/{REGION}-c"] == {}
    assert second["items"][f"zones/{REGION}-b"]["instances"][0]["name"] == "se-2"


def test_operations_of_every_scope(compute, project, spread):
    pages = aggregated_pages(compute.globalOperations(), partial_success=True, project=project, maxResults=2)
    assert len(pages) == 3
    for page in pages:
        assert page["kind"] == "compute#operationAggregatedList"
        assert list(page["items"]) == ["global", f"regions/{REGION}", *ZONES]
    listed = {(scope, op["name"]): op for page in pages for scope, op in scoped(page, "operations")}
    assert len(listed) == len(spread)
    per_scope = {
        "global": compute.globalOperations().list(project=project).execute(),
        f"regions/{REGION}": compute.regionOperations().list(project=project, region=REGION).execute(),
        f"zones/{ZONE}": compute.zoneOperations().list(project=project, zone=ZONE).execute(),
        f"zones/{REGION}-b": compute.zoneOperations().list(project=project, zone=f"{REGION}-b").execute(),
    }
    for scope, page in per_scope.items():
        for op in page["items"]:
            assert listed[(scope, op["name"])] == op, "the same JSON as the per-scope list"
    stops, = aggregated_pages(compute.globalOperations(), project=project, filter="operationType = stop",
                              fields="items/*/operations(name,operationType,zone)")
    # Only the selected fields: scopes without a stop are `{}`, their warnings not selected.
    (scope, stop), = [(s, o) for s, v in stops["items"].items() for o in v.get("operations", [])]
    assert (scope, stop["operationType"]) == (f"zones/{ZONE}", "stop")
    assert set(stop) == {"name", "operationType", "zone"}


def test_addresses_and_forwarding_rules(compute, project, spread):
    pages = aggregated_pages(compute.addresses(), partial_success=True, project=project, maxResults=2)
    assert [p["kind"] for p in pages] == ["compute#addressAggregatedList"] * 2
    assert all(list(p["items"]) == ["global", f"regions/{REGION}"] for p in pages)
    assert [(s, a["name"]) for p in pages for s, a in scoped(p, "addresses")] == [
        ("global", "fid-agg-g"), (f"regions/{REGION}", "fid-agg-r1"), (f"regions/{REGION}", "fid-agg-r2")]
    regional, = aggregated_pages(compute.addresses(), project=project, filter="region:*",
                                 fields="items/*/addresses(name,address)")
    assert sorted(a["name"] for v in regional["items"].values() for a in v.get("addresses", [])) == [
        "fid-agg-r1", "fid-agg-r2"]
    assert regional["items"]["global"] == {}

    rules, = aggregated_pages(compute.forwardingRules(), partial_success=True, project=project)
    assert rules["kind"] == "compute#forwardingRuleAggregatedList"
    assert [(s, r["name"]) for s, r in scoped(rules, "forwardingRules")] == [(f"regions/{REGION}", "fid-agg-fr")]
    none, = aggregated_pages(compute.forwardingRules(), project=project, filter='name = "nothing"')
    assert scoped(none, "forwardingRules") == [] and list(none["items"]) == ["global", f"regions/{REGION}"]

    targets, = aggregated_pages(compute.targetInstances(), project=project)
    assert targets["kind"] == "compute#targetInstanceAggregatedList"
    assert [(s, t["name"]) for s, t in scoped(targets, "targetInstances")] == [(f"zones/{REGION}-b", "fid-agg-ti")]


def test_bad_parameters_are_400(compute, project):
    for kwargs in ({"maxResults": 501}, {"orderBy": "zone"}, {"pageToken": "not-a-token"},
                   {"filter": "name ~~ ("}):
        with pytest.raises(HttpError) as err:
            compute.instances().aggregatedList(project=project, **kwargs).execute()
        assert err.value.status_code == 400, kwargs
        assert error_reason(err.value) == "invalid"
    request = compute.globalOperations().aggregatedList(project=project)
    request.uri += "&returnPartialSuccess=maybe"
    with pytest.raises(HttpError) as err:
        request.execute()
    assert err.value.status_code == 400 and "returnPartialSuccess" in err.value.reason


def test_stats_count_them_as_reads(compute, emulator, project):
    compute.instances().aggregatedList(project=project).execute()
    compute.globalOperations().aggregatedList(project=project).execute()
    stats = emulator.admin("GET", "stats")
    assert stats["callsByMethod"]["compute.instances.aggregatedList"] == 1
    assert stats["callsByMethod"]["compute.globalOperations.aggregatedList"] == 1
    assert stats["callsByGroup"] == {"read": 2}


def _gcloud(args: list[str], env: dict) -> tuple[object, str]:
    done = subprocess.run(["gcloud", *args, "--format=json", "--log-http"], env=env,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, f"gcloud {' '.join(args)}: {done.stderr[-2000:]}"
    uris = [line.removeprefix("uri: ") for line in done.stderr.splitlines() if line.startswith("uri: ")]
    return json.loads(done.stdout), uris


def test_gcloud_lists_instances_and_operations(compute, emulator, project, spread, tmp_path):
    env = gcloud_env(emulator, tmp_path)
    base = f"{emulator.base_url}/compute/v1/projects/{project}"

    instances, uris = _gcloud(["compute", "instances", "list", "--project", project], env)
    assert sorted((i["name"], i["status"]) for i in instances) == [("se-1", "TERMINATED"), ("se-2", "RUNNING")]
    assert uris == [f"{base}/aggregated/instances?alt=json&includeAllScopes=True&maxResults=500"
                    "&returnPartialSuccess=True"], uris

    operations, uris = _gcloud(["compute", "operations", "list", "--project", project], env)
    assert sorted(op["name"] for op in operations) == sorted(op["name"] for op in spread)
    assert uris == [f"{base}/aggregated/operations?alt=json&maxResults=500&returnPartialSuccess=True"], uris

    stops, uris = _gcloud(["compute", "operations", "list", "--project", project,
                           "--filter=operationType=stop"], env)
    assert [op["operationType"] for op in stops] == ["stop"]
    assert "filter=operationType+eq+%22.%2A%5Cbstop%5Cb.%2A%22" in uris[0], uris

    stats = emulator.admin("GET", "stats")
    assert stats["callsByMethod"]["compute.instances.aggregatedList"] == 1
    assert stats["callsByMethod"]["compute.globalOperations.aggregatedList"] == 2
