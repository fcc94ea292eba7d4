//! `VpcRoute`: one static VPC route, for anything the virtual services do not cover.

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::conditions::Condition;

/// One static route in a `GcpCloud`'s VPC network.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
// Every `printcolumn(...)` repeats `type_ = "string"`, which clippy takes for a duplicate.
#[allow(clippy::duplicated_attributes)]
#[kube(
    group = "adc.dev",
    version = "v1alpha1",
    kind = "VpcRoute",
    plural = "vpcroutes",
    namespaced,
    shortname = "vpcroute",
    category = "adc",
    status = "VpcRouteStatus",
    derive = "PartialEq",
    doc = "One static VPC route, for anything the virtual services do not cover.",
    printcolumn(
        name = "DEST",
        type_ = "string",
        json_path = ".spec.destRange",
        description = "Destination range"
    ),
    printcolumn(
        name = "NEXT-HOP",
        type_ = "string",
        json_path = ".spec.nextHop",
        description = "Next hop"
    ),
    printcolumn(
        name = "READY",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Whether the route exists in GCP as asked"
    ),
    printcolumn(
        name = "AGE",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct VpcRouteSpec {
    /// Name of the `GcpCloud` whose network gets the route.
    #[schemars(length(min = 1, max = 253))]
    pub cloud_ref: String,

    /// Destination CIDR range, e.g. `192.168.0.0/16`, with no host bits set.
    #[x_kube(validation = Rule::new("isCIDR(self)")
        .message("destRange must be a CIDR range such as 192.168.0.0/16"))]
    #[x_kube(validation = Rule::new("!isCIDR(self) || cidr(self) == cidr(self).masked()")
        .message("destRange must have no host bits set: write the network address, e.g. 10.77.0.0/16 rather than 10.77.1.5/16"))]
    #[schemars(length(max = 43))]
    pub dest_range: String,

    /// Route priority, 0 (highest) to 65535 (default 1000).
    #[schemars(range(max = 65535))]
    #[serde(default = "default_priority")]
    pub priority: u32,

    /// Network tags: when set, only instances with one of these tags use the route.
    #[schemars(length(max = 64), inner(regex(pattern = crate::api::GCP_NAME_PATTERN), length(max = 63)))]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,

    /// Where matching packets go: exactly one of `ip`, `instance`, `gateway` or `ilb`.
    pub next_hop: NextHop,
}

/// Where a route sends packets: exactly one of `ip`, `instance`, `gateway` or `ilb`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[x_kube(validation = Rule::new(
    "(has(self.ip) ? 1 : 0) + (has(self.instance) ? 1 : 0) + (has(self.gateway) ? 1 : 0) + (has(self.ilb) ? 1 : 0) == 1"
).message("nextHop needs exactly one of ip, instance, gateway or ilb"))]
#[serde(rename_all = "camelCase")]
pub struct NextHop {
    /// A unicast IPv4 address in the network, e.g. `10.0.0.9`.
    #[x_kube(validation = Rule::new("isIP(self) && ip(self).family() == 4")
        .message("nextHop.ip must be an IPv4 address such as 10.0.0.9"))]
    #[x_kube(validation = Rule::new("!isIP(self) || ip(self).isGlobalUnicast()")
        .message("nextHop.ip must be a unicast address: not 0.0.0.0, loopback, link-local, multicast or broadcast"))]
    #[schemars(length(max = 15))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,

    /// A VM instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<InstanceRef>,

    /// An internet gateway: only `default-internet-gateway`.
    #[x_kube(validation = Rule::new("self == 'default-internet-gateway'")
        .message("nextHop.gateway must be default-internet-gateway"))]
    #[schemars(length(max = 63))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,

    /// An internal passthrough load balancer's forwarding rule: its name (in the cloud's
    /// project and region), its URL, e.g.
    /// `projects/acme-prod/regions/us-central1/forwardingRules/ilb-1`, or its IPv4 address.
    #[x_kube(validation = Rule::new(
        "(isIP(self) && ip(self).family() == 4) || self.matches('^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$') || self.matches('^((https://(www|compute)[.]googleapis[.]com/compute/v1/)?projects/[a-z][-a-z0-9]{4,28}[a-z0-9]/)?regions/[a-z][-a-z0-9]{0,61}[a-z0-9]/forwardingRules/[a-z]([-a-z0-9]{0,61}[a-z0-9])?$')"
    ).message("nextHop.ilb must be a forwarding rule name, its URL (projects/P/regions/R/forwardingRules/NAME) or its IPv4 address"))]
    #[schemars(length(min = 1, max = 1024))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ilb: Option<String>,
}

/// A VM instance by name and zone.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct InstanceRef {
    /// Instance name, e.g. `gw-1`.
    #[schemars(regex(pattern = crate::api::GCP_NAME_PATTERN), length(max = 63))]
    pub name: String,

    /// Zone of the instance, e.g. `us-central1-a`.
    #[schemars(regex(pattern = crate::api::GCP_NAME_PATTERN), length(min = 1, max = 63))]
    pub zone: String,
}

/// What the operator observed and did for a `VpcRoute`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct VpcRouteStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// The GCP name of the route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_name: Option<String>,

    /// The plan waiting for approval while the object's management policy is Observe (its
    /// hash, counts and first changes); absent under Full.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<super::PlanStatus>,

    /// `Ready`, `Reconciling` and `Stalled`, with kstatus semantics.
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

fn default_priority() -> u32 {
    1000
}
