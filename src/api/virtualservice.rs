//! `VirtualService`: an ADC virtual service — a VIP, its ports, and the service engines that
//! carry its traffic.

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::conditions::Condition;

/// An ADC virtual service: a VIP, its ports, who may reach it, and the service-engine VM
/// instances that carry its traffic. It becomes one VPC route per serving engine, one firewall
/// rule and, with `vip.allocate.type`, one reserved address; a VIP of a pool
/// (`vip.allocate.pool`, or a fixed address inside a pool) is carried by the cloud's shared,
/// aggregated routes and firewall rules instead.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
// Every `printcolumn(...)` repeats `type_ = "string"`, which clippy takes for a duplicate.
#[allow(clippy::duplicated_attributes)]
#[kube(
    group = "adc.dev",
    version = "v1alpha1",
    kind = "VirtualService",
    plural = "virtualservices",
    namespaced,
    shortname = "adcvs",
    category = "adc",
    status = "VirtualServiceStatus",
    derive = "PartialEq",
    doc = "An ADC virtual service: a VIP, its ports, and the service engines that carry its traffic.",
    printcolumn(
        name = "VIP",
        type_ = "string",
        json_path = ".status.vip",
        description = "The virtual IP address"
    ),
    printcolumn(
        name = "READY",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Whether GCP carries the VIP's traffic as asked"
    ),
    printcolumn(
        name = "MODE",
        type_ = "string",
        json_path = ".status.vipMode",
        description = "How the VIP reaches its engines: Routes or ILB"
    ),
    printcolumn(
        name = "ENGINES",
        type_ = "string",
        json_path = ".status.activeServiceEngines",
        description = "Service engines that currently serve the VIP"
    ),
    printcolumn(
        name = "AGE",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new(
    "!has(self.mode) || self.mode != 'ActiveStandby' || !has(self.routePriority) || self.routePriority < 65535"
).message("routePriority must be below 65535 in ActiveStandby mode: standby routes take routePriority + 1").field_path(".routePriority"))]
#[x_kube(validation = Rule::new(
    "!has(self.healthCheck) || !has(self.vipMode) || self.vipMode == 'ILB'"
).message("healthCheck applies only to vipMode ILB").field_path(".healthCheck"))]
#[x_kube(validation = Rule::new(
    "!has(self.vipMode) || self.vipMode != 'ILB' || !has(self.vip.allocate) || (has(self.vip.allocate.type) && self.vip.allocate.type == 'Internal')"
).message("an ILB VIP is an internal address of a subnetwork: vip.allocate must be {type: Internal, subnetwork: ...} (not a pool or an External address)").field_path(".vip.allocate"))]
#[serde(rename_all = "camelCase")]
pub struct VirtualServiceSpec {
    /// Name of the `GcpCloud` whose network carries this virtual service.
    #[schemars(length(min = 1, max = 253))]
    pub cloud_ref: String,

    /// The virtual IP address: exactly one of a fixed `address` or `allocate`.
    pub vip: Vip,

    /// Ports the VIP serves (1 to 16, each port and protocol at most once).
    #[x_kube(validation = Rule::new("self.all(p, self.exists_one(q, q.port == p.port && q.protocol == p.protocol))")
        .message("ports must not repeat"))]
    #[schemars(length(min = 1, max = 16))]
    pub ports: Vec<ServicePort>,

    /// IPv4 CIDR ranges allowed to reach the VIP's ports (the firewall rule's sources), e.g.
    /// `10.0.0.0/8`, with no host bits set. IPv4 only: the VIP is IPv4 and a firewall rule cannot
    /// mix IPv4 and IPv6.
    #[x_kube(validation = Rule::new("self.all(r, isCIDR(r))")
        .message("sourceRanges must be CIDR ranges such as 10.0.0.0/8"))]
    #[x_kube(validation = Rule::new("self.all(r, !isCIDR(r) || (cidr(r).ip().family() == 4 && cidr(r) == cidr(r).masked()))")
        .message("sourceRanges must be IPv4 CIDR ranges with no host bits set, such as 10.0.0.0/8 (not 10.1.2.3/8); the VIP is IPv4"))]
    #[schemars(length(min = 1, max = 256), inner(length(max = 43)))]
    pub source_ranges: Vec<String>,

    /// The VM instances that carry the VIP's traffic (1 to 16, names unique), in order of
    /// preference for `ActiveStandby`.
    #[x_kube(validation = Rule::new("self.all(e, self.exists_one(f, f.name == e.name))")
        .message("serviceEngines names must not repeat"))]
    #[schemars(length(min = 1, max = 16))]
    pub service_engines: Vec<ServiceEngineRef>,

    /// How traffic is spread over the engines: `ActiveActive` (default; equal-priority routes to
    /// every healthy engine, ECMP) or `ActiveStandby` (the first healthy engine is primary, the
    /// others get routes at lower priority).
    #[serde(default)]
    pub mode: HaMode,

    /// Priority of the VIP's routes, 0 (highest) to 65535 (default 2000). `ActiveStandby` gives
    /// standby engines larger numbers than this.
    #[schemars(range(max = 65535))]
    #[serde(default = "default_route_priority")]
    pub route_priority: u32,

    /// How GCP brings the VIP to the engines. `Routes`: one VPC route per serving engine; the
    /// VIP lies outside every subnetwork, and the operator moves routes when an engine stops.
    /// `ILB`: an internal passthrough Network Load Balancer (an instance group per engine, a
    /// health check, a backend service and a forwarding rule per protocol); the VIP lies
    /// inside a subnetwork of the cloud's region (`vip.allocate: {type: Internal,
    /// subnetwork}` reserves one), and Google's health checks move traffic off an engine with
    /// no write by the operator. Absent: the GcpCloud's `defaultVipMode` (`Routes` unless it
    /// says otherwise). Switching mode is make-before-break: the new path carries the VIP
    /// before the old one is removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vip_mode: Option<VipMode>,

    /// The health check of `ILB` mode. Absent: TCP on the first of `ports`, every 5 s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheckSpec>,
}

/// How a VIP reaches its engines.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum VipMode {
    /// A VPC route per serving engine.
    #[default]
    Routes,
    /// An internal passthrough Network Load Balancer.
    #[serde(rename = "ILB")]
    Ilb,
}

/// How Google's health checks probe the engines of an `ILB` VirtualService.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[x_kube(validation = Rule::new("!has(self.requestPath) || self.protocol == 'HTTP'")
    .message("healthCheck.requestPath applies only to protocol HTTP").field_path(".requestPath"))]
#[x_kube(validation = Rule::new("self.timeoutSeconds <= self.checkIntervalSeconds")
    .message("healthCheck.timeoutSeconds must not exceed checkIntervalSeconds").field_path(".timeoutSeconds"))]
#[serde(rename_all = "camelCase")]
pub struct HealthCheckSpec {
    /// `TCP` (default: a connection to `port` must open) or `HTTP` (a GET of `requestPath`
    /// must answer 200).
    #[serde(default)]
    pub protocol: HealthCheckProtocol,

    /// Port probed, 1 to 65535. Absent: the first of `spec.ports`.
    #[schemars(range(min = 1, max = 65535))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,

    /// Path of the HTTP probe (default `/`), starting with `/`.
    #[x_kube(validation = Rule::new("self.startsWith('/')")
        .message("healthCheck.requestPath must start with /"))]
    #[schemars(length(min = 1, max = 1024))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_path: Option<String>,

    /// Seconds between probes, 1 to 300 (default 5).
    #[schemars(range(min = 1, max = 300))]
    #[serde(default = "default_check_interval")]
    pub check_interval_seconds: u32,

    /// Seconds a probe may take, 1 to 300 and at most `checkIntervalSeconds` (default 5).
    #[schemars(range(min = 1, max = 300))]
    #[serde(default = "default_check_interval")]
    pub timeout_seconds: u32,

    /// Consecutive successes that make an engine healthy, 1 to 10 (default 2).
    #[schemars(range(min = 1, max = 10))]
    #[serde(default = "default_threshold")]
    pub healthy_threshold: u32,

    /// Consecutive failures that make an engine unhealthy, 1 to 10 (default 2).
    #[schemars(range(min = 1, max = 10))]
    #[serde(default = "default_threshold")]
    pub unhealthy_threshold: u32,
}

impl Default for HealthCheckSpec {
    fn default() -> Self {
        Self {
            protocol: HealthCheckProtocol::Tcp,
            port: None,
            request_path: None,
            check_interval_seconds: default_check_interval(),
            timeout_seconds: default_check_interval(),
            healthy_threshold: default_threshold(),
            unhealthy_threshold: default_threshold(),
        }
    }
}

/// The protocol of a health check.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum HealthCheckProtocol {
    /// A TCP connection.
    #[default]
    #[serde(rename = "TCP")]
    Tcp,
    /// An HTTP GET.
    #[serde(rename = "HTTP")]
    Http,
}

fn default_check_interval() -> u32 {
    5
}

fn default_threshold() -> u32 {
    2
}

/// The virtual IP address: exactly one of `address` or `allocate`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[x_kube(validation = Rule::new("has(self.address) != has(self.allocate)")
    .message("vip needs exactly one of address or allocate"))]
#[serde(rename_all = "camelCase")]
pub struct Vip {
    /// A fixed IPv4 address, e.g. `10.10.0.5`: a unicast one (not 0.0.0.0, loopback, link-local,
    /// multicast or broadcast).
    #[x_kube(validation = Rule::new("isIP(self) && ip(self).family() == 4")
        .message("vip.address must be an IPv4 address such as 10.10.0.5"))]
    #[x_kube(validation = Rule::new("!isIP(self) || ip(self).isGlobalUnicast()")
        .message("vip.address must be a unicast address: not 0.0.0.0, loopback, link-local, multicast or broadcast"))]
    #[schemars(length(max = 15))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,

    /// Reserve a static address in GCP and use it as the VIP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocate: Option<VipAllocation>,
}

/// Where an allocated VIP comes from: exactly one of a static address GCP reserves (`type`) or
/// an address of one of the cloud's VIP pools (`pool`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[x_kube(validation = Rule::new("has(self.type) != has(self.pool)")
    .message("vip.allocate needs exactly one of type or pool"))]
#[x_kube(validation = Rule::new("!has(self.subnetwork) || (has(self.type) && self.type == 'Internal')")
    .message("subnetwork applies only to Internal addresses"))]
#[serde(rename_all = "camelCase")]
pub struct VipAllocation {
    /// Reserve a static address in GCP: `Internal` (from a subnetwork of the VPC network) or
    /// `External`. The VIP gets a route per engine and a firewall rule of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#type: Option<AllocationType>,

    /// Subnetwork an `Internal` address comes from (name in the cloud's region). Absent means
    /// GCP's choice.
    #[schemars(regex(pattern = crate::api::GCP_NAME_PATTERN), length(min = 1, max = 63))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnetwork: Option<String>,

    /// Take an address of this VIP pool of the cloud (`GcpCloud.spec.vipPools[].name`). The
    /// address is chosen next to VIPs of the same engines, mode and priority, so that routes
    /// aggregate; it is kept in `status.vip` for as long as the object exists and is freed
    /// when it goes. Routes and the firewall rule are shared with the cloud's other pool VIPs.
    #[schemars(regex(pattern = crate::api::GCP_NAME_PATTERN), length(min = 1, max = 63))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
}

/// Where a reserved VIP address comes from.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AllocationType {
    /// An internal address of the VPC network.
    Internal,
    /// An external (internet) address.
    External,
}

/// A port the VIP serves.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    /// Port number, 1 to 65535.
    #[schemars(range(min = 1, max = 65535))]
    pub port: u16,

    /// `TCP` (default) or `UDP`.
    #[serde(default)]
    pub protocol: Protocol,
}

/// An IP protocol.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Protocol {
    /// TCP.
    #[default]
    #[serde(rename = "TCP")]
    Tcp,
    /// UDP.
    #[serde(rename = "UDP")]
    Udp,
}

/// A service-engine VM instance.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceEngineRef {
    /// Instance name, e.g. `se-1`.
    #[schemars(regex(pattern = crate::api::GCP_NAME_PATTERN), length(max = 63))]
    pub name: String,

    /// Zone of the instance, e.g. `us-central1-a`.
    #[schemars(regex(pattern = crate::api::GCP_NAME_PATTERN), length(min = 1, max = 63))]
    pub zone: String,
}

/// How a virtual service's traffic is spread over its engines.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum HaMode {
    /// Equal-priority routes to every healthy engine (ECMP).
    #[default]
    ActiveActive,
    /// The first healthy engine is primary; the others get routes at lower priority.
    ActiveStandby,
}

/// What the operator observed and did for a `VirtualService`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct VirtualServiceStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// The VIP in use (the fixed address, or the one reserved).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vip: Option<String>,

    /// Names of the service engines that routes currently point at (`ILB`: the engines the
    /// load balancer's health check finds healthy).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub active_service_engines: Vec<String>,

    /// The mode the VIP is carried in now (`spec.vipMode`, or the cloud's default). During a
    /// switch it stays the old mode until the new path carries the VIP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vip_mode: Option<VipMode>,

    /// `ILB`: each engine's health as the backend service's `getHealth` reports it, read at
    /// the cloud's `instancePollInterval`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub engine_health: Vec<EngineHealthStatus>,

    /// The GCP resources that carry this object's traffic, by GCP name: its own, or for a VIP
    /// of a pool the cloud's shared routes (those its VIP selects) and firewall rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<GcpResources>,

    /// The plan waiting for approval while the object's management policy is Observe (its
    /// hash, counts and first changes); absent under Full.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<super::PlanStatus>,

    /// `Ready`, `Reconciling` and `Stalled`, with kstatus semantics.
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// GCP resources that exist for one object, by GCP name.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct GcpResources {
    /// Routes, one per serving engine (for a pool VIP: the shared routes it selects).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<String>,

    /// The firewall rule admitting `sourceRanges` to the VIP's ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firewall: Option<String>,

    /// The reserved address, with `vip.allocate.type`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,

    /// `ILB`: the instance groups of the engines, as `zone/name` (shared with every ILB
    /// VirtualService of the same engine).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub instance_groups: Vec<String>,

    /// `ILB`: the regional health check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<String>,

    /// `ILB`: the regional backend services, one per protocol of `ports`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backend_services: Vec<String>,

    /// `ILB`: the internal forwarding rules carrying the VIP, one per protocol of `ports`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forwarding_rules: Vec<String>,

    /// True when the routes and the firewall rule above are the cloud's shared ones (a VIP of a
    /// pool): they carry other VIPs too, belong to the GcpCloud and go when no VIP needs them.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shared: bool,
}

/// One engine's health as an ILB's backend service reports it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct EngineHealthStatus {
    /// Instance name.
    pub name: String,
    /// Zone of the instance.
    pub zone: String,
    /// `HEALTHY`, `UNHEALTHY`, or `UNKNOWN` while the load balancer reports nothing for it.
    pub state: HealthState,
}

/// An engine's health in an ILB.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HealthState {
    /// Passes the health check: the load balancer sends it traffic.
    #[serde(rename = "HEALTHY")]
    Healthy,
    /// Fails the health check (or is stopped): the load balancer sends it nothing.
    #[serde(rename = "UNHEALTHY")]
    Unhealthy,
    /// Not reported (yet).
    #[serde(rename = "UNKNOWN")]
    Unknown,
}

fn default_route_priority() -> u32 {
    2000
}
