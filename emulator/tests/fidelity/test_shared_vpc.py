"""Shared VPC through Google's Python client: a host (`host-project`) with one service project
(`service-project`, `networkProject: host-project` in emulator_proc.ILB_WORLD) and a project
attached to nothing (`lone-project`). Each rule of the emulator README's "Shared VPC" section."""

import pytest
from googleapiclient.errors import HttpError

from emulator_proc import HOST_PROJECT as HOST
from emulator_proc import LONE_PROJECT as LONE
from emulator_proc import SERVICE_PROJECT as SVC
from gce import REGION, ZONE, error_reason, last_segment, wait_done

LINK = "https://www.googleapis.com/compute/v1/"
SHARED_NET = f"projects/{HOST}/global/networks/shared"
SHARED_SUB = f"projects/{HOST}/regions/{REGION}/subnetworks/shared-sub"


def refused(request, status: int, reason: str, text: str = "") -> str:
    with pytest.raises(HttpError) as err:
        request.execute()
    assert err.value.status_code == status, err.value.content
    assert error_reason(err.value) == reason, err.value.content
    assert text in err.value.reason, err.value.reason
    return err.value.reason


def usage(resource: dict, metric: str) -> float:
    return next(q["usage"] for q in resource["quotas"] if q["metric"] == metric)


def service_lb(c) -> None:
    """In the service project, on the host's subnetwork: a group of app-1 and app-2, a health
    check and a backend service."""
    wait_done(c, SVC, c.instanceGroups().insert(project=SVC, zone=ZONE, body={
        "name": "ig", "network": SHARED_NET}).execute())
    wait_done(c, SVC, c.instanceGroups().addInstances(project=SVC, zone=ZONE, instanceGroup="ig", body={
        "instances": [{"instance": f"zones/{ZONE}/instances/{n}"} for n in ("app-1", "app-2")]}).execute())
    wait_done(c, SVC, c.regionHealthChecks().insert(project=SVC, region=REGION, body={
        "name": "hc", "type": "TCP", "tcpHealthCheck": {"port": 8080}}).execute())
    wait_done(c, SVC, c.regionBackendServices().insert(project=SVC, region=REGION, body={
        "name": "bs", "loadBalancingScheme": "INTERNAL", "network": SHARED_NET,
        "healthChecks": [f"regions/{REGION}/healthChecks/hc"],
        "backends": [{"group": f"{LINK}projects/{SVC}/zones/{ZONE}/instanceGroups/ig"}]}).execute())


def rule(name: str, **extra) -> dict:
    body = {"name": name, "loadBalancingScheme": "INTERNAL", "network": SHARED_NET, "subnetwork": SHARED_SUB,
            "backendService": f"regions/{REGION}/backendServices/bs", "ports": ["8080"]}
    body.update(extra)
    return body


def test_host_status_get_xpn_host_and_service_instances(ilb_compute):
    c = ilb_compute
    assert c.projects().get(project=HOST).execute()["xpnProjectStatus"] == "HOST"
    assert c.projects().get(project=SVC).execute()["xpnProjectStatus"] == "UNSPECIFIED_XPN_PROJECT_STATUS"
    host = c.projects().getXpnHost(project=SVC).execute()
    assert host["name"] == HOST and host["selfLink"] == f"{LINK}projects/{HOST}"
    assert c.projects().getXpnHost(project=LONE).execute() == {}
    nic = c.instances().get(project=SVC, zone=ZONE, instance="app-1").execute()["networkInterfaces"][0]
    assert nic["network"] == LINK + SHARED_NET and nic["subnetwork"] == LINK + SHARED_SUB
    assert c.networks().list(project=SVC).execute().get("items", []) == [], "no networks of its own"


def test_routes_and_firewalls_of_the_shared_network_live_in_the_host(ilb_compute):
    c = ilb_compute
    cross = (f"Invalid value for field 'resource.network': '{SHARED_NET}'. "
             "Cross project referencing is not allowed for this resource.")
    refused(c.routes().insert(project=SVC, body={"name": "r", "network": SHARED_NET, "destRange": "10.99.0.0/24",
                                                  "nextHopIp": "10.10.0.11"}), 400, "invalid", cross)
    refused(c.firewalls().insert(project=SVC, body={"name": "f", "network": SHARED_NET,
                                                     "allowed": [{"IPProtocol": "tcp"}]}), 400, "invalid", cross)
    # next-hop-instance must be in the route's project: the host cannot name a service VM ...
    refused(c.routes().insert(project=HOST, body={
        "name": "r", "network": "global/networks/shared", "destRange": "10.99.0.0/24",
        "nextHopInstance": f"projects/{SVC}/zones/{ZONE}/instances/app-1"}), 400, "invalid",
        "Invalid value for field 'resource.nextHopInstance'")
    # ... but a nextHopIp route to its internal address is fine.
    wait_done(c, HOST, c.routes().insert(project=HOST, body={
        "name": "r", "network": "global/networks/shared", "destRange": "10.99.0.0/24",
        "nextHopIp": "10.10.0.11"}).execute())
    assert c.routes().get(project=HOST, route="r").execute()["nextHopIp"] == "10.10.0.11"


def test_service_projects_use_the_host_subnetwork_others_may_not(ilb_compute):
    c = ilb_compute
    wait_done(c, SVC, c.addresses().insert(project=SVC, region=REGION, body={
        "name": "vip", "addressType": "INTERNAL", "subnetwork": SHARED_SUB}).execute())
    vip = c.addresses().get(project=SVC, region=REGION, address="vip").execute()
    assert vip["subnetwork"] == LINK + SHARED_SUB
    assert vip["address"] == "10.10.0.3", "free in the host's whole IP space (.2 is host-vm's)"
    cross = "Cross-project references for this resource are not allowed."
    refused(c.addresses().insert(project=LONE, region=REGION, body={
        "name": "x", "addressType": "INTERNAL", "subnetwork": SHARED_SUB}), 400, "invalid",
        f"Invalid value for field 'resource.subnetwork': '{SHARED_SUB}'. {cross}")
    refused(c.instanceGroups().insert(project=LONE, zone=ZONE, body={"name": "x", "network": SHARED_NET}),
            400, "invalid", f"Invalid value for field 'resource.network': '{SHARED_NET}'. {cross}")

    service_lb(c)
    group = c.instanceGroups().get(project=SVC, zone=ZONE, instanceGroup="ig").execute()
    assert group["size"] == 2 and group["subnetwork"] == LINK + SHARED_SUB
    wait_done(c, SVC, c.forwardingRules().insert(project=SVC, region=REGION, body=rule(
        "fr", IPAddress=f"regions/{REGION}/addresses/vip")).execute())
    fr = c.forwardingRules().get(project=SVC, region=REGION, forwardingRule="fr").execute()
    assert (fr["IPAddress"], fr["network"], fr["subnetwork"]) == ("10.10.0.3", LINK + SHARED_NET, LINK + SHARED_SUB)


def test_one_ip_space_and_the_hosts_firewall(ilb_compute):
    c = ilb_compute
    service_lb(c)
    in_use = "IP_IN_USE_BY_ANOTHER_RESOURCE - IP '10.10.0.2' is already being used by another resource."
    refused(c.forwardingRules().insert(project=SVC, region=REGION, body=rule("f", IPAddress="10.10.0.2")),
            409, "ipInUseByAnotherResource", in_use)
    wait_done(c, SVC, c.forwardingRules().insert(project=SVC, region=REGION, body=rule("fr")).execute())
    ip = c.forwardingRules().get(project=SVC, region=REGION, forwardingRule="fr").execute()["IPAddress"]
    refused(c.addresses().insert(project=HOST, region=REGION, body={
        "name": "taken", "addressType": "INTERNAL", "subnetwork": f"regions/{REGION}/subnetworks/shared-sub",
        "address": ip}), 400, "invalid", "already being used")

    def states():
        answer = c.regionBackendServices().getHealth(project=SVC, region=REGION, backendService="bs", body={
            "group": f"zones/{ZONE}/instanceGroups/ig"}).execute()
        return [(last_segment(s["instance"]), s["healthState"]) for s in answer["healthStatus"]]

    assert states() == [("app-1", "UNHEALTHY"), ("app-2", "UNHEALTHY")]
    # The probes are admitted by the host's rules (the network's project), on the check's port.
    wait_done(c, HOST, c.firewalls().insert(project=HOST, body={
        "name": "probes", "network": "global/networks/shared", "sourceRanges": ["35.191.0.0/16", "130.211.0.0/22"],
        "allowed": [{"IPProtocol": "tcp", "ports": ["8000-8100"]}], "targetTags": ["app"]}).execute())
    assert states() == [("app-1", "HEALTHY"), ("app-2", "HEALTHY")]
    # Only one of the two ranges → UNHEALTHY.
    wait_done(c, HOST, c.firewalls().patch(project=HOST, firewall="probes", body={
        "sourceRanges": ["35.191.0.0/16"]}).execute())
    assert states() == [("app-1", "UNHEALTHY"), ("app-2", "UNHEALTHY")]


def test_each_project_is_charged_for_what_is_inserted_in_its_url(ilb_compute):
    c = ilb_compute
    for i in range(3):
        wait_done(c, HOST, c.routes().insert(project=HOST, body={
            "name": f"r{i}", "network": "global/networks/shared", "destRange": f"10.9{i}.0.0/24",
            "nextHopIp": "10.10.0.11"}).execute())
    assert usage(c.projects().get(project=HOST).execute(), "ROUTES") == 3
    assert usage(c.projects().get(project=SVC).execute(), "ROUTES") == 0
    op = c.routes().insert(project=HOST, body={"name": "r3", "network": "global/networks/shared",
                                               "destRange": "10.94.0.0/24", "nextHopIp": "10.10.0.11"}).execute()
    assert op["error"]["errors"][0]["code"] == "QUOTA_EXCEEDED", "the host's ROUTES quota (3)"
    service_lb(c)
    wait_done(c, SVC, c.forwardingRules().insert(project=SVC, region=REGION, body=rule("fr")).execute())
    assert usage(c.regions().get(project=SVC, region=REGION).execute(), "FORWARDING_RULES") == 1
    assert usage(c.regions().get(project=HOST, region=REGION).execute(), "FORWARDING_RULES") == 0
    op = c.forwardingRules().insert(project=SVC, region=REGION, body=rule("fr-2", ports=["9090"])).execute()
    assert op["error"]["errors"][0]["code"] == "QUOTA_EXCEEDED", "the service project's FORWARDING_RULES (1)"


def test_admin_state_lists_the_new_collections(ilb_compute, ilb_emulator):
    service_lb(ilb_compute)
    for collection, names in [("instanceGroups", ["ig"]), ("healthChecks", ["hc"]), ("backendServices", ["bs"])]:
        dump = ilb_emulator.admin("GET", f"state?collection={collection}")
        assert [item["name"] for item in dump["items"]] == names
