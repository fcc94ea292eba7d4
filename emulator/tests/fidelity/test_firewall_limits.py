"""The per-rule range limit of VPC firewall rules, through google-cloud-compute's FirewallsClient.

The other fidelity tests drive the emulator with google-api-python-client (discovery-based); this
one uses Google's generated client, `google.cloud.compute_v1` (REST transport over `requests`,
proto-plus messages), built as a user builds it: service-account credentials from the emulator's
key file and `client_options.api_endpoint` pointed at the emulator. Its responses do not pass
through the discovery schema check of conftest (that recorder wraps httplib2 only).

The limit itself (5,000 `sourceRanges` and 5,000 `destinationRanges` per rule) and the error text
are model values; see the emulator README, "Firewall rule size".
"""

from __future__ import annotations

import ipaddress

import pytest
from google.api_core import exceptions
from google.cloud import compute_v1
from google.cloud.compute_v1.services.firewalls.transports import FirewallsRestTransport
from google.oauth2 import service_account

LIMIT = 5000
SCOPES = ["https://www.googleapis.com/auth/compute"]


@pytest.fixture(scope="module")
def firewalls(emulator) -> compute_v1.FirewallsClient:
    """A FirewallsClient on the instant emulator (`--auth token`).

    The transport is built by hand only to keep `always_use_jwt_access` at the transport's own
    default, False: `FirewallsClient(credentials=...)` sets it True, and a service account then
    sends a self-signed JWT (AIP-4111) as its bearer token instead of fetching an access token
    from the key's `token_uri`. The emulator accepts only tokens it issued, so that client would
    get 401 (see the emulator README, "Firewall rule size").
    """
    credentials = service_account.Credentials.from_service_account_file(
        str(emulator.key_path), scopes=SCOPES
    )
    transport = FirewallsRestTransport(host=emulator.base_url, credentials=credentials)
    return compute_v1.FirewallsClient(transport=transport)


@pytest.fixture
def fresh(emulator):
    """The instant emulator, reset."""
    emulator.reset()
    return emulator


def distinct_hosts(count: int) -> list[str]:
    """`count` distinct /32s inside 10.200.0.0/16."""
    network = ipaddress.ip_network("10.200.0.0/16")
    assert count < network.num_addresses
    return [f"{network.network_address + i}/32" for i in range(count)]


def egress_rule(project: str, name: str, count: int) -> compute_v1.Firewall:
    return compute_v1.Firewall(
        name=name,
        network=f"projects/{project}/global/networks/default",
        direction=compute_v1.Firewall.Direction.EGRESS.name,
        priority=1000,
        allowed=[compute_v1.Allowed(I_p_protocol="tcp", ports=["443"])],
        destination_ranges=distinct_hosts(count),
    )


def names(firewalls: compute_v1.FirewallsClient, project: str) -> list[str]:
    return [fw.name for fw in firewalls.list(project=project)]


def test_destination_ranges_at_the_limit_are_accepted(firewalls, fresh):
    project = fresh.project
    operation = firewalls.insert(
        project=project, firewall_resource=egress_rule(project, "fid-fw-5000", LIMIT)
    )
    operation.result(timeout=30)  # raises if the operation ended with an error
    assert operation.done() and not operation.error_code, operation.error_message

    stored = firewalls.get(project=project, firewall="fid-fw-5000")
    assert len(stored.destination_ranges) == LIMIT
    assert list(stored.destination_ranges) == distinct_hosts(LIMIT)
    assert stored.direction == "EGRESS"


def test_one_destination_range_above_the_limit_is_a_400(firewalls, fresh):
    project = fresh.project
    with pytest.raises(exceptions.BadRequest) as err:
        firewalls.insert(
            project=project, firewall_resource=egress_rule(project, "fid-fw-5001", LIMIT + 1)
        )
    assert err.value.code == 400
    assert "destinationRanges" in err.value.message, err.value.message
    assert [e["reason"] for e in err.value.errors] == ["invalid"], err.value.errors
    assert "fid-fw-5001" not in names(firewalls, project)


def test_a_patch_beyond_the_limit_is_a_400_and_changes_nothing(firewalls, fresh):
    project = fresh.project
    firewalls.insert(
        project=project, firewall_resource=egress_rule(project, "fid-fw-patch", 1)
    ).result(timeout=30)
    with pytest.raises(exceptions.BadRequest) as err:
        firewalls.patch(
            project=project,
            firewall="fid-fw-patch",
            firewall_resource=compute_v1.Firewall(destination_ranges=distinct_hosts(LIMIT + 1)),
        )
    assert err.value.code == 400
    assert "destinationRanges" in err.value.message, err.value.message
    stored = firewalls.get(project=project, firewall="fid-fw-patch")
    assert list(stored.destination_ranges) == distinct_hosts(1)
