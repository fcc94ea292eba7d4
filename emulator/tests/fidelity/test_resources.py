"""Firewalls, addresses, target instances, forwarding rules and instance power, via the client."""

import ipaddress

import pytest
from googleapiclient.errors import HttpError

from gce import REGION, ZONE, error_reason, last_segment, wait_done


def test_firewall_insert_patch_get_delete(compute, project):
    body = {
        "name": "fid-fw-1",
        "network": f"projects/{project}/global/networks/default",
        "allowed": [{"IPProtocol": "tcp", "ports": ["22", "8000-8080"]}],
        "sourceRanges": ["10.0.0.0/8"],
        "targetTags": ["se"],
        "priority": 800,
        "description": "before",
    }
    op = compute.firewalls().insert(project=project, body=body).execute()
    assert op["operationType"] == "insert"
    wait_done(compute, project, op)

    fw = compute.firewalls().get(project=project, firewall="fid-fw-1").execute()
    assert fw["kind"] == "compute#firewall"
    for key in ("name", "allowed", "sourceRanges", "targetTags", "priority", "description"):
        assert fw[key] == body[key], key
    assert fw["direction"] == "INGRESS"
    assert fw["network"].endswith(f"/projects/{project}/global/networks/default")

    patch = compute.firewalls().patch(
        project=project,
        firewall="fid-fw-1",
        body={"sourceRanges": ["192.168.0.0/16"], "description": "after", "disabled": True},
    ).execute()
    assert patch["operationType"] == "patch"
    wait_done(compute, project, patch)

    patched = compute.firewalls().get(project=project, firewall="fid-fw-1").execute()
    assert patched["sourceRanges"] == ["192.168.0.0/16"]
    assert patched["description"] == "after"
    assert patched["disabled"] is True
    # Untouched fields stay.
    assert patched["allowed"] == body["allowed"]
    assert patched["priority"] == 800
    assert patched["targetTags"] == ["se"]
    assert patched["id"] == fw["id"]

    wait_done(compute, project, compute.firewalls().delete(project=project, firewall="fid-fw-1").execute())
    with pytest.raises(HttpError) as gone:
        compute.firewalls().get(project=project, firewall="fid-fw-1").execute()
    assert gone.value.status_code == 404 and error_reason(gone.value) == "notFound"


def test_internal_address_from_subnetwork(compute, project):
    op = compute.addresses().insert(
        project=project,
        region=REGION,
        body={
            "name": "fid-addr-1",
            "addressType": "INTERNAL",
            "subnetwork": f"projects/{project}/regions/{REGION}/subnetworks/default",
        },
    ).execute()
    assert last_segment(op["region"]) == REGION
    assert op["selfLink"].endswith(f"/regions/{REGION}/operations/{op['name']}")
    wait_done(compute, project, op)
    address = compute.addresses().get(project=project, region=REGION, address="fid-addr-1").execute()
    assert address["kind"] == "compute#address"
    assert address["addressType"] == "INTERNAL"
    assert address["status"] == "RESERVED"
    ip = ipaddress.ip_address(address["address"])
    subnet = ipaddress.ip_network("10.128.0.0/20")
    assert ip in subnet
    # GCP reserves the first two and the last two addresses of a subnet.
    assert ip not in {subnet[0], subnet[1], subnet[-2], subnet[-1]}
    assert ip != ipaddress.ip_address("10.128.0.10")  # se-1's
    assert address["subnetwork"].endswith(f"/regions/{REGION}/subnetworks/default")
    listed = compute.addresses().list(project=project, region=REGION).execute()
    assert [a["name"] for a in listed["items"]] == ["fid-addr-1"]


def test_forwarding_rule_to_target_instance(compute, project):
    ti_op = compute.targetInstances().insert(
        project=project,
        zone=ZONE,
        body={"name": "fid-ti-1", "instance": f"projects/{project}/zones/{ZONE}/instances/se-1"},
    ).execute()
    assert last_segment(ti_op["zone"]) == ZONE
    wait_done(compute, project, ti_op)
    ti = compute.targetInstances().get(project=project, zone=ZONE, targetInstance="fid-ti-1").execute()
    assert ti["kind"] == "compute#targetInstance"
    assert ti["instance"].endswith(f"/zones/{ZONE}/instances/se-1")
    assert ti["natPolicy"] == "NO_NAT"

    fr_op = compute.forwardingRules().insert(
        project=project,
        region=REGION,
        body={
            "name": "fid-fr-1",
            "IPProtocol": "TCP",
            "portRange": "80-80",
            "target": ti["selfLink"],
            "loadBalancingScheme": "EXTERNAL",
        },
    ).execute()
    wait_done(compute, project, fr_op)
    fr = compute.forwardingRules().get(project=project, region=REGION, forwardingRule="fid-fr-1").execute()
    assert fr["kind"] == "compute#forwardingRule"
    assert fr["target"] == ti["selfLink"]
    assert fr["IPProtocol"] == "TCP"
    assert fr["portRange"] == "80-80"
    ipaddress.ip_address(fr["IPAddress"])
    assert last_segment(fr["region"]) == REGION

    # A forwarding rule to a target instance that does not exist: 404.
    with pytest.raises(HttpError) as missing:
        compute.forwardingRules().insert(
            project=project,
            region=REGION,
            body={"name": "fid-fr-2", "target": f"projects/{project}/zones/{ZONE}/targetInstances/nope"},
        ).execute()
    assert missing.value.status_code == 404

    wait_done(compute, project, compute.forwardingRules().delete(
        project=project, region=REGION, forwardingRule="fid-fr-1").execute())
    wait_done(compute, project, compute.targetInstances().delete(
        project=project, zone=ZONE, targetInstance="fid-ti-1").execute())
    assert compute.forwardingRules().list(project=project, region=REGION).execute().get("items", []) == []


def test_instance_stop_start(compute, project):
    instance = compute.instances().get(project=project, zone=ZONE, instance="se-1").execute()
    assert instance["status"] == "RUNNING"
    assert instance["canIpForward"] is True
    assert instance["networkInterfaces"][0]["networkIP"] == "10.128.0.10"

    stop = compute.instances().stop(project=project, zone=ZONE, instance="se-1").execute()
    assert stop["operationType"] == "stop"
    assert last_segment(stop["zone"]) == ZONE
    assert stop["targetLink"] == instance["selfLink"]
    wait_done(compute, project, stop)
    assert compute.instances().get(project=project, zone=ZONE, instance="se-1").execute()["status"] == "TERMINATED"

    start = compute.instances().start(project=project, zone=ZONE, instance="se-1").execute()
    assert start["operationType"] == "start"
    wait_done(compute, project, start)
    assert compute.instances().get(project=project, zone=ZONE, instance="se-1").execute()["status"] == "RUNNING"

    listed = compute.instances().list(project=project, zone=ZONE).execute()
    assert [i["name"] for i in listed["items"]] == ["se-1"]
    with pytest.raises(HttpError) as missing:
        compute.instances().stop(project=project, zone=ZONE, instance="nope").execute()
    assert missing.value.status_code == 404 and error_reason(missing.value) == "notFound"


def test_networks_and_subnetworks(compute, project):
    network = compute.networks().get(project=project, network="default").execute()
    assert network["kind"] == "compute#network"
    subnet = compute.subnetworks().get(project=project, region=REGION, subnetwork="default").execute()
    assert subnet["kind"] == "compute#subnetwork"
    assert subnet["ipCidrRange"] == "10.128.0.0/20"
    assert subnet["network"] == network["selfLink"]
    assert subnet["selfLink"] in network["subnetworks"]
    listed = compute.subnetworks().list(project=project, region=REGION).execute()
    assert [s["name"] for s in listed["items"]] == ["default"]
