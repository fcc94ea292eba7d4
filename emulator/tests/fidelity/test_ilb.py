"""Internal passthrough load balancing through Google's Python client: unmanaged instance groups,
regional health checks, regional backend services with getHealth, internal forwarding rules; the
validation refusals; the aggregated lists; and what the real gcloud sends for the ordinary
commands (skipped without gcloud on PATH).

Every response is held against the discovery schemas (InstanceGroup, HealthCheck,
BackendService, BackendServiceGroupHealth, InstanceGroupsListInstances, ...) by the schema guard of
conftest.py. The world is emulator_proc.ILB_WORLD.
"""

import pytest
from googleapiclient.errors import HttpError

from emulator_proc import ILB_PROJECT as P
from gce import REGION, ZONE, error_reason, gcloud_env, last_segment, run_gcloud, wait_done

LINK = "https://www.googleapis.com/compute/v1/projects/"
PROBES = ["35.191.0.0/16", "130.211.0.0/22"]


def group_url(name: str, zone: str = ZONE) -> str:
    return f"{LINK}{P}/zones/{zone}/instanceGroups/{name}"


def refs(*names: str, zone: str = ZONE) -> dict:
    return {"instances": [{"instance": f"{LINK}{P}/zones/{zone}/instances/{n}"} for n in names]}


def done(compute, op: dict) -> dict:
    return wait_done(compute, P, op)


def make_group(compute, name: str, *members: str) -> None:
    done(compute, compute.instanceGroups().insert(project=P, zone=ZONE, body={"name": name}).execute())
    if members:
        done(compute, compute.instanceGroups().addInstances(
            project=P, zone=ZONE, instanceGroup=name, body=refs(*members)).execute())


def make_health_check(compute, name: str = "hc", port: int = 80) -> None:
    done(compute, compute.regionHealthChecks().insert(project=P, region=REGION, body={
        "name": name, "type": "TCP", "tcpHealthCheck": {"port": port}}).execute())


def service_body(name: str, *groups: str, **extra) -> dict:
    body = {"name": name, "loadBalancingScheme": "INTERNAL", "protocol": "TCP",
            "healthChecks": [f"{LINK}{P}/regions/{REGION}/healthChecks/hc"],
            "backends": [{"group": group_url(g)} for g in groups]}
    body.update(extra)
    return body


def rule_body(name: str, service: str = "bs", **extra) -> dict:
    body = {"name": name, "loadBalancingScheme": "INTERNAL",
            "backendService": f"regions/{REGION}/backendServices/{service}",
            "subnetwork": f"regions/{REGION}/subnetworks/default", "ports": ["80"]}
    for key, value in extra.items():
        if value is None:
            body.pop(key, None)
        else:
            body[key] = value
    return body


def probe_firewall(compute, name: str = "allow-probes") -> None:
    done(compute, compute.firewalls().insert(project=P, body={
        "name": name, "network": "global/networks/default", "sourceRanges": PROBES,
        "allowed": [{"IPProtocol": "tcp", "ports": ["80"]}], "targetTags": ["web"]}).execute())


def health(compute, service: str, group: str) -> list[tuple[str, str, str]]:
    answer = compute.regionBackendServices().getHealth(
        project=P, region=REGION, backendService=service, body={"group": group_url(group)}).execute()
    assert answer["kind"] == "compute#backendServiceGroupHealth"
    return [(last_segment(s["instance"]), last_segment(s["forwardingRule"]), s["healthState"])
            for s in answer.get("healthStatus", [])]


def refused(request, status: int, reason: str, text: str = "") -> str:
    with pytest.raises(HttpError) as err:
        request.execute()
    assert err.value.status_code == status, err.value.content
    assert error_reason(err.value) == reason, err.value.content
    assert text in err.value.reason, err.value.reason
    return err.value.reason


def test_the_whole_internal_load_balancer_path(ilb_compute, ilb_emulator):
    c = ilb_compute
    # Unmanaged groups: zonal operations; membership; listInstances with listInstances_next.
    op = c.instanceGroups().insert(project=P, zone=ZONE, body={
        "name": "ig-a", "description": "primary", "namedPorts": [{"name": "http", "port": 80}]}).execute()
    assert op["zone"].endswith(f"/projects/{P}/zones/{ZONE}") and op["operationType"] == "insert"
    done(c, op)
    op = done(c, c.instanceGroups().addInstances(project=P, zone=ZONE, instanceGroup="ig-a",
                                                 body=refs("web-1", "web-2")).execute())
    assert op["operationType"] == "addInstances"
    group = c.instanceGroups().get(project=P, zone=ZONE, instanceGroup="ig-a").execute()
    assert group["size"] == 2 and group["zone"].endswith(f"/zones/{ZONE}")
    assert group["network"] == f"{LINK}{P}/global/networks/default"
    assert group["subnetwork"] == f"{LINK}{P}/regions/{REGION}/subnetworks/default"
    request = c.instanceGroups().listInstances(project=P, zone=ZONE, instanceGroup="ig-a",
                                               body={"instanceState": "ALL"}, maxResults=1)
    listed = []
    while request is not None:
        page = request.execute()
        assert page["kind"] == "compute#instanceGroupsListInstances"
        listed.extend(page.get("items", []))
        request = c.instanceGroups().listInstances_next(request, page)
    assert [(last_segment(i["instance"]), i["status"]) for i in listed] == [("web-1", "RUNNING"), ("web-2", "RUNNING")]
    assert listed[0]["namedPorts"] == [{"name": "http", "port": 80}]
    make_group(c, "ig-f", "web-3")

    # TCP health check with the discovery defaults.
    make_health_check(c)
    hc = c.regionHealthChecks().get(project=P, region=REGION, healthCheck="hc").execute()
    assert (hc["checkIntervalSec"], hc["timeoutSec"], hc["healthyThreshold"], hc["unhealthyThreshold"]) == (5, 5, 2, 2)
    assert hc["tcpHealthCheck"] == {"port": 80, "proxyHeader": "NONE", "portSpecification": "USE_FIXED_PORT"}

    # Backend service: one normal and one failover backend, a failover policy.
    body = service_body("bs", "ig-a", "ig-f", failoverPolicy={
        "failoverRatio": 0.5, "dropTrafficIfUnhealthy": True, "disableConnectionDrainOnFailover": True})
    body["backends"][1]["failover"] = True
    op = done(c, c.regionBackendServices().insert(project=P, region=REGION, body=body).execute())
    assert op["region"].endswith(f"/regions/{REGION}")
    bs = c.regionBackendServices().get(project=P, region=REGION, backendService="bs").execute()
    assert [(b["group"], b["balancingMode"], b.get("failover")) for b in bs["backends"]] == [
        (group_url("ig-a"), "CONNECTION", None), (group_url("ig-f"), "CONNECTION", True)]
    assert bs["failoverPolicy"]["failoverRatio"] == 0.5 and bs["fingerprint"]
    assert health(c, "bs", "ig-a") == [], "no forwarding rule references it yet"

    # Internal forwarding rules: one with ports, one with allPorts.
    done(c, c.forwardingRules().insert(project=P, region=REGION, body=rule_body("fr-ports", ports=["80", "443"])).execute())
    done(c, c.forwardingRules().insert(project=P, region=REGION, body=rule_body("fr-all", ports=None, allPorts=True)).execute())
    rule = c.forwardingRules().get(project=P, region=REGION, forwardingRule="fr-ports").execute()
    assert rule["ports"] == ["80", "443"] and rule["backendService"].endswith("/backendServices/bs")
    assert rule["subnetwork"].endswith("/subnetworks/default") and rule["IPAddress"].startswith("10.128.")
    assert c.forwardingRules().get(project=P, region=REGION, forwardingRule="fr-all").execute()["allPorts"] is True

    # getHealth: HEALTHY with the probe firewall; one entry per (instance, rule).
    probe_firewall(c)
    assert health(c, "bs", "ig-a") == [("web-1", "fr-all", "HEALTHY"), ("web-1", "fr-ports", "HEALTHY"),
                                       ("web-2", "fr-all", "HEALTHY"), ("web-2", "fr-ports", "HEALTHY")]
    raw = c.regionBackendServices().getHealth(project=P, region=REGION, backendService="bs",
                                              body={"group": f"zones/{ZONE}/instanceGroups/ig-a"}).execute()
    assert raw["healthStatus"][0]["ipAddress"] == "10.128.0.21"
    assert raw["healthStatus"][0]["forwardingRuleIp"].startswith("10.128.")
    # instances.stop → UNHEALTHY.
    done(c, c.instances().stop(project=P, zone=ZONE, instance="web-1").execute())
    assert {(i, s) for i, _, s in health(c, "bs", "ig-a")} == {("web-1", "UNHEALTHY"), ("web-2", "HEALTHY")}
    # The admin mark → UNHEALTHY, cleared → HEALTHY.
    mark = {"project": P, "zone": ZONE, "instance": "web-2"}
    ilb_emulator.admin("POST", "health", {**mark, "healthy": False})
    assert {s for _, _, s in health(c, "bs", "ig-a")} == {"UNHEALTHY"}
    ilb_emulator.admin("POST", "health", {**mark, "healthy": True})
    assert {(i, s) for i, _, s in health(c, "bs", "ig-a")} == {("web-1", "UNHEALTHY"), ("web-2", "HEALTHY")}
    # No health-check firewall → UNHEALTHY.
    done(c, c.firewalls().delete(project=P, firewall="allow-probes").execute())
    assert {s for _, _, s in health(c, "bs", "ig-a")} == {"UNHEALTHY"}

    # Deletes in dependency order, each refused while in use.
    in_use = "resourceInUseByAnotherResource"
    refused(c.regionBackendServices().delete(project=P, region=REGION, backendService="bs"), 400, in_use,
            f"The backend_service resource 'projects/{P}/regions/{REGION}/backendServices/bs' is already being used by")
    refused(c.regionHealthChecks().delete(project=P, region=REGION, healthCheck="hc"), 400, in_use,
            f"The health_check resource 'projects/{P}/regions/{REGION}/healthChecks/hc' is already being used by "
            f"'projects/{P}/regions/{REGION}/backendServices/bs'")
    refused(c.instanceGroups().delete(project=P, zone=ZONE, instanceGroup="ig-a"), 400, in_use,
            f"The instance_group resource 'projects/{P}/zones/{ZONE}/instanceGroups/ig-a' is already being used by "
            f"'projects/{P}/regions/{REGION}/backendServices/bs'")
    for name in ("fr-ports", "fr-all"):
        done(c, c.forwardingRules().delete(project=P, region=REGION, forwardingRule=name).execute())
    done(c, c.regionBackendServices().delete(project=P, region=REGION, backendService="bs").execute())
    done(c, c.regionHealthChecks().delete(project=P, region=REGION, healthCheck="hc").execute())
    for name in ("ig-a", "ig-f"):
        done(c, c.instanceGroups().delete(project=P, zone=ZONE, instanceGroup=name).execute())
    assert c.instanceGroups().list(project=P, zone=ZONE).execute().get("items", []) == []
    assert c.instances().get(project=P, zone=ZONE, instance="web-2").execute()["status"] == "RUNNING"


def test_instance_group_refusals(ilb_compute):
    c = ilb_compute
    make_group(c, "ig", "web-1")
    add = lambda *names, zone=ZONE: c.instanceGroups().addInstances(  # noqa: E731
        project=P, zone=ZONE, instanceGroup="ig", body=refs(*names, zone=zone))
    refused(add("web-1"), 400, "memberAlreadyExists",
            f"Resource 'projects/{P}/zones/{ZONE}/instances/web-1' is already a member of "
            f"'projects/{P}/zones/{ZONE}/instanceGroups/ig'.")
    refused(add("other-subnet"), 400, "wrongSubnetwork",
            f"is expected to be in the subnetwork 'projects/{P}/regions/{REGION}/subnetworks/default' but is in "
            f"the subnetwork 'projects/{P}/regions/{REGION}/subnetworks/second'.")
    refused(add("web-b", zone=f"{REGION}-b"), 400, "invalid", "'resource.instances[0].instance'")
    refused(add("ghost"), 404, "notFound")
    remove = c.instanceGroups().removeInstances(project=P, zone=ZONE, instanceGroup="ig", body=refs("web-2"))
    refused(remove, 400, "invalid", "is not a member of")
    refused(c.instanceGroups().listInstances(project=P, zone=ZONE, instanceGroup="ig",
                                             body={"instanceState": "SOME"}), 400, "invalid", "instanceState")

    # An instance may belong to at most one load-balanced group.
    make_group(c, "ig-2", "web-1")
    make_health_check(c)
    done(c, c.regionBackendServices().insert(project=P, region=REGION, body=service_body("bs", "ig")).execute())
    multiple = "instanceInMultipleLoadBalancedIgs"
    text = (f"Validation failed for instance 'projects/{P}/zones/{ZONE}/instances/web-1': instance may belong "
            "to at most one load-balanced instance group.")
    refused(c.regionBackendServices().insert(project=P, region=REGION, body=service_body("bs2", "ig-2")),
            400, multiple, text)
    done(c, c.instanceGroups().removeInstances(project=P, zone=ZONE, instanceGroup="ig-2", body=refs("web-1")).execute())
    done(c, c.instanceGroups().addInstances(project=P, zone=ZONE, instanceGroup="ig-2", body=refs("web-2")).execute())
    done(c, c.regionBackendServices().insert(project=P, region=REGION, body=service_body("bs2", "ig-2")).execute())
    refused(c.instanceGroups().addInstances(project=P, zone=ZONE, instanceGroup="ig-2", body=refs("web-1")),
            400, multiple, text)


def test_health_check_and_backend_service_refusals(ilb_compute):
    c = ilb_compute
    hcs = c.regionHealthChecks()
    for body, field in [
        ({"name": "h", "type": "HTTPS", "httpsHealthCheck": {}}, "resource.type"),
        ({"name": "h", "type": "TCP", "httpHealthCheck": {"port": 80}}, "resource.httpHealthCheck"),
        ({"name": "h", "type": "TCP", "tcpHealthCheck": {"port": 0}}, "resource.tcpHealthCheck.port"),
        ({"name": "h", "type": "TCP", "tcpHealthCheck": {}, "timeoutSec": 9, "checkIntervalSec": 5}, "resource.timeoutSec"),
    ]:
        refused(hcs.insert(project=P, region=REGION, body=body), 400, "invalid", f"'{field}'")
    make_health_check(c)
    done(c, hcs.patch(project=P, region=REGION, healthCheck="hc", body={"tcpHealthCheck": {"port": 8080}}).execute())
    assert hcs.get(project=P, region=REGION, healthCheck="hc").execute()["tcpHealthCheck"]["port"] == 8080
    refused(hcs.patch(project=P, region=REGION, healthCheck="hc", body={"timeoutSec": 50}), 400, "invalid", "'resource.timeoutSec'")

    make_group(c, "ig", "web-1", "web-2")
    make_group(c, "empty")
    services = c.regionBackendServices()
    for body, status, text in [
        (service_body("b", "ig", loadBalancingScheme="EXTERNAL"), 400, "only internal passthrough backend services"),
        (service_body("b", "ig", healthChecks=[f"{LINK}{P}/global/healthChecks/hc"]), 404, "global/healthChecks/hc"),
        ({**service_body("b"), "backends": [{"group": f"zones/{ZONE}/instanceGroups/ig"}]}, 400, "'resource.backends[0].group'"),
        (service_body("b", "empty"), 400, "Instance group must have a network to be attached to a backend service."),
        (service_body("b", "ig", "ig"), 400, "Duplicate instance groups in backend service."),
        ({**service_body("b"), "backends": [{"group": group_url("ig"), "balancingMode": "UTILIZATION"}]}, 400,
         "Balancing mode must be CONNECTION for an INTERNAL backend service."),
    ]:
        refused(services.insert(project=P, region=REGION, body=body), status,
                "notFound" if status == 404 else "invalid", text)

    # Created without backends, then update (PUT) with the fingerprint, as gcloud's add-backend.
    done(c, services.insert(project=P, region=REGION, body={
        **service_body("bs"), "backends": [], "failoverPolicy": {"failoverRatio": 0.1}}).execute())
    bs = services.get(project=P, region=REGION, backendService="bs").execute()
    stale = dict(bs, backends=[{"group": group_url("ig"), "failover": True}])
    done(c, services.update(project=P, region=REGION, backendService="bs", body=stale).execute())
    updated = services.get(project=P, region=REGION, backendService="bs").execute()
    assert updated["fingerprint"] != bs["fingerprint"] and updated["backends"][0]["failover"] is True
    refused(services.update(project=P, region=REGION, backendService="bs", body=stale), 412, "conditionNotMet")
    # patch: backends replaced wholesale; no fingerprint accepted.
    make_group(c, "ig-3", "web-3")
    done(c, services.patch(project=P, region=REGION, backendService="bs",
                           body={"backends": [{"group": group_url("ig-3")}]}).execute())
    patched = services.get(project=P, region=REGION, backendService="bs").execute()
    assert [b["group"] for b in patched["backends"]] == [group_url("ig-3")]
    assert patched["failoverPolicy"] == {"failoverRatio": 0.1}
    refused(services.getHealth(project=P, region=REGION, backendService="bs", body={"group": group_url("ig")}),
            400, "invalid", "'resource.group'")


def test_internal_forwarding_rule_refusals(ilb_compute):
    c = ilb_compute
    make_group(c, "ig", "web-1")
    make_health_check(c)
    done(c, c.regionBackendServices().insert(project=P, region=REGION, body=service_body("bs", "ig")).execute())
    rules = c.forwardingRules()
    for body, text in [
        (rule_body("f", ports=None), "Invalid value for field 'resource.ports[0]': ''. Forwarding rules with "
                                     "backend services must specify at least one port."),
        (rule_body("f", ports=[str(p) for p in range(81, 87)]),
         "Invalid value for field 'resource.ports[5]': '86'. Too many ports specified. Maximum is 5."),
        (rule_body("f", target=f"zones/{ZONE}/targetInstances/t"), "'resource.target'"),
        (rule_body("f", ports=None, portRange="80"), "'resource.portRange'"),
        (rule_body("f", backendService=None), "Required field 'resource.backendService' not specified"),
        (rule_body("f", subnetwork=None), "Required field 'resource.subnetwork' not specified"),
        (rule_body("f", IPProtocol="UDP"), "'resource.IPProtocol'"),
        (rule_body("f", network="global/networks/default", subnetwork=f"regions/{REGION}/subnetworks/default",
                   IPAddress="10.200.0.9"),
         "Invalid value for field 'resource.IPAddress': '10.200.0.9'. Address '10.200.0.9' is not in the "
         "subnetwork ranges of network 'default'."),
        (rule_body("f", IPProtocol="L3_DEFAULT", ports=None, allPorts=True), "'resource.IPProtocol'"),
    ]:
        refused(rules.insert(project=P, region=REGION, body=body), 400,
                "required" if "Required" in text else "invalid", text)
    done(c, rules.insert(project=P, region=REGION, body=rule_body("fr", IPAddress="10.128.0.50",
                                                                  ports=["80", "8000-8100"])).execute())
    # The same IP: overlapping ports, allPorts, an instance's IP, an unnamed internal address → 409.
    done(c, c.addresses().insert(project=P, region=REGION, body={
        "name": "held", "addressType": "INTERNAL", "subnetwork": f"regions/{REGION}/subnetworks/default",
        "address": "10.128.0.60"}).execute())
    for ip, extra in [("10.128.0.50", {"ports": ["8080"]}), ("10.128.0.50", {"ports": None, "allPorts": True}),
                      ("10.128.0.21", {}), ("10.128.0.60", {})]:
        refused(rules.insert(project=P, region=REGION, body=rule_body("f", IPAddress=ip, **extra)), 409,
                "ipInUseByAnotherResource",
                f"IP_IN_USE_BY_ANOTHER_RESOURCE - IP '{ip}' is already being used by another resource.")
    # Disjoint ports on the same IP, and the address named: accepted; the address is IN_USE.
    done(c, rules.insert(project=P, region=REGION, body=rule_body("fr-443", IPAddress="10.128.0.50", ports=["443"])).execute())
    done(c, rules.insert(project=P, region=REGION, body=rule_body(
        "fr-held", IPAddress=f"projects/{P}/regions/{REGION}/addresses/held")).execute())
    held = c.addresses().get(project=P, region=REGION, address="held").execute()
    assert held["status"] == "IN_USE" and held["users"] == [f"{LINK}{P}/regions/{REGION}/forwardingRules/fr-held"]
    refused(c.addresses().delete(project=P, region=REGION, address="held"), 400, "resourceInUseByAnotherResource")
    # Filterable by the new fields, also in aggregatedList.
    listed = rules.list(project=P, region=REGION, filter='backendService eq ".*/bs"').execute()["items"]
    assert sorted(r["name"] for r in listed) == ["fr", "fr-443", "fr-held"]
    agg = rules.aggregatedList(project=P, filter="ports:443").execute()
    assert [r["name"] for r in agg["items"][f"regions/{REGION}"]["forwardingRules"]] == ["fr-443"]


def _pages(collection, **kwargs) -> list[dict]:
    request = collection.aggregatedList(**kwargs)
    pages = []
    while request is not None:
        page = request.execute()
        pages.append(page)
        request = collection.aggregatedList_next(request, page)
    return pages


def test_aggregated_lists_page_with_aggregatedList_next(ilb_compute):
    c = ilb_compute
    make_group(c, "ig-1", "web-1")
    make_group(c, "ig-2", "web-2")
    done(c, c.instanceGroups().insert(project=P, zone=f"{REGION}-b", body={"name": "ig-b"}).execute())
    make_health_check(c, "hc")
    make_health_check(c, "hc-2")
    done(c, c.regionBackendServices().insert(project=P, region=REGION, body=service_body("bs", "ig-1")).execute())
    done(c, c.regionBackendServices().insert(project=P, region=REGION, body=service_body("bs-2", "ig-2")).execute())
    for collection, kind, field, expected in [
        (c.instanceGroups(), "compute#instanceGroupAggregatedList", "instanceGroups",
         [(f"zones/{ZONE}", "ig-1"), (f"zones/{ZONE}", "ig-2"), (f"zones/{REGION}-b", "ig-b")]),
        (c.backendServices(), "compute#backendServiceAggregatedList", "backendServices",
         [(f"regions/{REGION}", "bs"), (f"regions/{REGION}", "bs-2")]),
        (c.healthChecks(), "compute#healthChecksAggregatedList", "healthChecks",
         [(f"regions/{REGION}", "hc"), (f"regions/{REGION}", "hc-2")]),
    ]:
        pages = _pages(collection, project=P, maxResults=1)
        assert len(pages) == len(expected)
        seen = []
        for page in pages:
            assert page["kind"] == kind and page["id"] == f"projects/{P}/aggregated/{field}"
            for scope, scoped in page["items"].items():
                if field in scoped:
                    seen.extend((scope, item["name"]) for item in scoped[field])
                else:
                    assert scoped["warning"]["code"] == "NO_RESULTS_ON_PAGE"
        assert sorted(seen) == sorted(expected)
        if field != "instanceGroups":
            assert "global" in pages[0]["items"], "Compute's global scope, empty here"


def test_gcloud_commands(ilb_compute, ilb_emulator, tmp_path):
    c = ilb_compute
    env = gcloud_env(ilb_emulator, tmp_path)
    base = ["--project", P]

    _, sent, _ = run_gcloud(["compute", "instance-groups", "unmanaged", "create", "gc-ig", "--zone", ZONE, *base], env)
    inserts = [(m, path, body) for m, path, _, body in sent if m == "POST"]
    assert inserts == [("POST", f"projects/{P}/zones/{ZONE}/instanceGroups?alt=json", {"name": "gc-ig"})]

    _, sent, _ = run_gcloud(["compute", "instance-groups", "unmanaged", "add-instances", "gc-ig",
                             "--instances", "web-1,web-2", "--zone", ZONE, *base], env)
    (method, path, status, body), = [r for r in sent if r[0] == "POST"]
    assert path == f"projects/{P}/zones/{ZONE}/instanceGroups/gc-ig/addInstances?alt=json" and status == 200
    assert [last_segment(i["instance"]) for i in body["instances"]] == ["web-1", "web-2"]
    assert all("/compute/v1/projects/" in i["instance"] for i in body["instances"]), "full URLs"

    members, sent, _ = run_gcloud(["compute", "instance-groups", "unmanaged", "list-instances", "gc-ig",
                                   "--zone", ZONE, *base], env)
    assert [(m, p.split("?")[0], b) for m, p, _, b in sent] == [
        ("POST", f"projects/{P}/zones/{ZONE}/instanceGroups/gc-ig/listInstances", {})]
    assert sorted(last_segment(m["instance"]) for m in members) == ["web-1", "web-2"]

    _, sent, _ = run_gcloud(["compute", "health-checks", "create", "tcp", "gc-hc", "--region", REGION,
                             "--port", "80", *base], env)
    (_, path, _, body), = [r for r in sent if r[0] == "POST"]
    assert path == f"projects/{P}/regions/{REGION}/healthChecks?alt=json"
    assert body == {"name": "gc-hc", "type": "TCP", "checkIntervalSec": 5, "timeoutSec": 5, "healthyThreshold": 2,
                    "unhealthyThreshold": 2, "tcpHealthCheck": {"port": 80, "proxyHeader": "NONE",
                                                                "portSpecification": "USE_FIXED_PORT"}}

    _, sent, _ = run_gcloud(["compute", "backend-services", "create", "gc-bs", "--load-balancing-scheme=internal",
                             "--protocol=tcp", "--region", REGION, "--health-checks", "gc-hc",
                             "--health-checks-region", REGION, *base], env)
    (_, path, _, body), = [r for r in sent if r[0] == "POST"]
    assert path == f"projects/{P}/regions/{REGION}/backendServices?alt=json"
    assert body["loadBalancingScheme"] == "INTERNAL" and "backends" not in body
    assert body["healthChecks"][0].endswith(f"/projects/{P}/regions/{REGION}/healthChecks/gc-hc")

    _, sent, _ = run_gcloud(["compute", "backend-services", "add-backend", "gc-bs", "--region", REGION,
                             "--instance-group", "gc-ig", "--instance-group-zone", ZONE, *base], env)
    methods = [m for m, _, _, _ in sent]
    assert methods[:2] == ["GET", "PUT"], sent
    _, _, status, put = sent[1]
    assert status == 200 and put["fingerprint"] and put["backends"][0]["group"].endswith("/instanceGroups/gc-ig")
    made_group = c.instanceGroups().get(project=P, zone=ZONE, instanceGroup="gc-ig").execute()
    made = c.regionBackendServices().get(project=P, region=REGION, backendService="gc-bs").execute()
    assert made["backends"] == [{"group": made_group["selfLink"], "balancingMode": "CONNECTION"}]

    _, sent, _ = run_gcloud(["compute", "forwarding-rules", "create", "gc-fr", "--region", REGION,
                             "--load-balancing-scheme=internal", "--backend-service", "gc-bs", "--network", "default",
                             "--subnet", "default", "--ports", "80,443", *base], env)
    (_, path, _, body), = [r for r in sent if r[0] == "POST"]
    assert path == f"projects/{P}/regions/{REGION}/forwardingRules?alt=json"
    assert body["ports"] == ["80", "443"] and "target" not in body and "portRange" not in body
    assert body["backendService"].endswith(f"/regions/{REGION}/backendServices/gc-bs")
    assert body["subnetwork"].endswith(f"/regions/{REGION}/subnetworks/default")

    probe_firewall(c)
    report, sent, _ = run_gcloud(["compute", "backend-services", "get-health", "gc-bs", "--region", REGION, *base], env)
    assert [(m, p.split("?")[0]) for m, p, _, _ in sent] == [
        ("GET", f"projects/{P}/regions/{REGION}/backendServices/gc-bs"),
        ("POST", f"projects/{P}/regions/{REGION}/backendServices/gc-bs/getHealth")]
    (entry,) = report
    assert entry["backend"] == made_group["selfLink"]
    assert [(last_segment(s["instance"]), s["healthState"]) for s in entry["status"]["healthStatus"]] == [
        ("web-1", "HEALTHY"), ("web-2", "HEALTHY")]
