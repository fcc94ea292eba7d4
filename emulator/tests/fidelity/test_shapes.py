"""Optional fields of each resource: set them, read them back, and let the schema guard check the
bodies (so every field the emulator can emit is held against the discovery document)."""

from gce import REGION, ZONE, wait_done


def _insert_get(compute, project, collection, body, **location):
    res = getattr(compute, collection)()
    wait_done(compute, project, res.insert(project=project, body=body, **location).execute())
    key = {"routes": "route", "firewalls": "firewall", "addresses": "address",
           "globalAddresses": "address", "forwardingRules": "forwardingRule",
           "targetInstances": "targetInstance"}[collection]
    return res.get(project=project, **location, **{key: body["name"]}).execute()


def test_route_next_hop_kinds(compute, project):
    net = f"projects/{project}/global/networks/default"
    inst = _insert_get(compute, project, "routes", {
        "name": "fid-hop-inst", "network": net, "destRange": "192.168.1.0/24",
        "nextHopInstance": f"zones/{ZONE}/instances/se-1", "tags": ["a", "b"], "description": "d"})
    assert inst["nextHopInstance"].endswith(f"/projects/{project}/zones/{ZONE}/instances/se-1")
    assert inst["tags"] == ["a", "b"]
    gw = _insert_get(compute, project, "routes", {
        "name": "fid-hop-gw", "network": net, "destRange": "0.0.0.0/0",
        "nextHopGateway": "global/gateways/default-internet-gateway"})
    assert gw["nextHopGateway"].endswith(f"/projects/{project}/global/gateways/default-internet-gateway")
    ilb = _insert_get(compute, project, "routes", {
        "name": "fid-hop-ilb", "network": net, "destRange": "192.168.9.0/24", "nextHopIlb": "10.128.0.10"})
    assert ilb["nextHopIlb"] == "10.128.0.10"
    for route in (inst, gw, ilb):
        assert route["routeType"] == "STATIC" and route["priority"] == 1000


def test_firewall_optional_fields(compute, project):
    net = f"projects/{project}/global/networks/default"
    egress = _insert_get(compute, project, "firewalls", {
        "name": "fid-egress", "network": net, "direction": "EGRESS", "denied": [{"IPProtocol": "all"}],
        "destinationRanges": ["0.0.0.0/0"], "logConfig": {"enable": True, "metadata": "INCLUDE_ALL_METADATA"},
        "targetServiceAccounts": ["a@b.iam.gserviceaccount.com"]})
    assert egress["direction"] == "EGRESS" and egress["denied"] == [{"IPProtocol": "all"}]
    assert egress["logConfig"] == {"enable": True, "metadata": "INCLUDE_ALL_METADATA"}
    tags = _insert_get(compute, project, "firewalls", {
        "name": "fid-tags", "network": net, "allowed": [{"IPProtocol": "icmp"}], "sourceTags": ["x"],
        "disabled": False})
    assert tags["sourceTags"] == ["x"] and tags["disabled"] is False


def test_address_optional_fields(compute, project):
    external = _insert_get(compute, project, "addresses", {
        "name": "fid-ext", "labels": {"k": "v"}, "networkTier": "STANDARD", "description": "x",
        "address": "203.0.113.50"}, region=REGION)
    assert external["labels"] == {"k": "v"} and external["networkTier"] == "STANDARD"
    assert external["address"] == "203.0.113.50" and external["addressType"] == "EXTERNAL"
    endpoint = _insert_get(compute, project, "addresses", {
        "name": "fid-ep", "addressType": "INTERNAL", "purpose": "GCE_ENDPOINT",
        "subnetwork": f"regions/{REGION}/subnetworks/default", "address": "10.128.0.77"}, region=REGION)
    assert endpoint["purpose"] == "GCE_ENDPOINT" and endpoint["address"] == "10.128.0.77"
    glob = _insert_get(compute, project, "globalAddresses", {"name": "fid-global"})
    assert "region" not in glob and glob["addressType"] == "EXTERNAL"
    assert [a["name"] for a in compute.globalAddresses().list(project=project).execute()["items"]] == ["fid-global"]


def test_forwarding_rule_optional_fields(compute, project):
    wait_done(compute, project, compute.addresses().insert(project=project, region=REGION, body={
        "name": "fid-ilb-ip", "addressType": "INTERNAL",
        "subnetwork": f"regions/{REGION}/subnetworks/default", "address": "10.128.0.88"}).execute())
    # An internal rule needs its backend service (and that, its health check).
    wait_done(compute, project, compute.regionHealthChecks().insert(project=project, region=REGION, body={
        "name": "fid-ilb-hc", "type": "TCP", "tcpHealthCheck": {"port": 80}}).execute())
    wait_done(compute, project, compute.regionBackendServices().insert(project=project, region=REGION, body={
        "name": "fid-ilb-bs", "loadBalancingScheme": "INTERNAL",
        "healthChecks": [f"regions/{REGION}/healthChecks/fid-ilb-hc"]}).execute())
    internal = _insert_get(compute, project, "forwardingRules", {
        "name": "fid-ilb", "loadBalancingScheme": "INTERNAL", "network": "global/networks/default",
        "subnetwork": f"regions/{REGION}/subnetworks/default",
        "backendService": f"regions/{REGION}/backendServices/fid-ilb-bs",
        "ports": ["80", "443"], "allowGlobalAccess": True, "labels": {"a": "b"},
        "IPAddress": f"projects/{project}/regions/{REGION}/addresses/fid-ilb-ip"}, region=REGION)
    assert internal["IPAddress"] == "10.128.0.88"
    assert internal["ports"] == ["80", "443"] and internal["allowGlobalAccess"] is True
    assert internal["labels"] == {"a": "b"} and internal["backendService"].endswith("/backendServices/fid-ilb-bs")
    all_ports = _insert_get(compute, project, "forwardingRules", {
        "name": "fid-all", "allPorts": True, "IPProtocol": "UDP", "networkTier": "PREMIUM"}, region=REGION)
    assert all_ports["allPorts"] is True and all_ports["IPProtocol"] == "UDP"


def test_operation_lists_of_each_scope(compute, project):
    compute.instances().stop(project=project, zone=ZONE, instance="se-1").execute()
    compute.addresses().insert(project=project, region=REGION, body={"name": "fid-op-addr"}).execute()
    zonal = compute.zoneOperations().list(project=project, zone=ZONE).execute()
    assert [o["operationType"] for o in zonal["items"]] == ["stop"]
    regional, = compute.regionOperations().list(project=project, region=REGION).execute()["items"]
    assert regional["operationType"] == "insert" and regional["region"].endswith(f"/regions/{REGION}")
    assert compute.globalOperations().list(project=project).execute().get("items", []) == []
