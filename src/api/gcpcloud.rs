//! `GcpCloud`: one GCP project and VPC network the operator may program, and how.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::conditions::Condition;

/// One GCP project and VPC network that the operator may program, with the credentials, limits
/// and batching it uses there. Virtual services and VPC routes name it in `cloudRef`.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
// Every `printcolumn(...)` repeats `type_ = "string"`, which clippy takes for a duplicate.
#[allow(clippy::duplicated_attributes)]
#[kube(
    group = "adc.dev",
    version = "v1alpha1",
    kind = "GcpCloud",
    plural = "gcpclouds",
    shortname = "gcpcloud",
    category = "adc",
    status = "GcpCloudStatus",
    derive = "PartialEq",
    doc = "A GCP project and VPC network that the operator may program, and how.",
    printcolumn(
        name = "PROJECT",
        type_ = "string",
        json_path = ".spec.project",
        description = "GCP project id"
    ),
    printcolumn(
        name = "NETWORK",
        type_ = "string",
        json_path = ".spec.network",
        description = "VPC network name"
    ),
    printcolumn(
        name = "READY",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Whether the operator can reach the network"
    ),
    printcolumn(
        name = "ROUTES",
        type_ = "string",
        json_path = ".status.routes",
        description = "Project-wide ROUTES quota: used/limit"
    ),
    printcolumn(
        name = "OBJECTS",
        type_ = "integer",
        json_path = ".status.progress.objects",
        description = "VirtualServices and VpcRoutes that use this cloud"
    ),
    printcolumn(
        name = "PROGRESS",
        type_ = "string",
        json_path = ".status.progress.summary",
        description = "Objects Ready of all, as a bar and a percentage"
    ),
    printcolumn(
        name = "QUEUED",
        type_ = "integer",
        json_path = ".status.progress.writesQueued",
        description = "GCP writes waiting to be sent"
    ),
    printcolumn(
        name = "LEFT",
        type_ = "string",
        json_path = ".status.progress.estimatedTimeLeft",
        description = "Estimated time until the queued GCP work is done"
    ),
    printcolumn(
        name = "HOLDER",
        type_ = "string",
        json_path = ".status.holder",
        description = "The replica that reconciles this cloud (the holder of its Lease with sharding)"
    ),
    printcolumn(
        name = "AGE",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new(
    "!has(self.allowedDestinationRanges) || self.allowDefaultRoute || !self.allowedDestinationRanges.exists(r, r.endsWith('/0'))"
).message("0.0.0.0/0 (or ::/0) needs allowDefaultRoute: true").field_path(".allowedDestinationRanges"))]
#[x_kube(validation = Rule::new(
    "!has(self.vipPools) || !has(self.allowedDestinationRanges) || size(self.allowedDestinationRanges) == 0 || self.vipPools.all(p, !isCIDR(p.cidr) || self.allowedDestinationRanges.exists(r, isCIDR(r) && cidr(r).ip().family() == 4 && cidr(r).containsCIDR(cidr(p.cidr))))"
).message("every vipPools cidr must lie inside one of allowedDestinationRanges").field_path(".vipPools"))]
#[serde(rename_all = "camelCase")]
pub struct GcpCloudSpec {
    /// GCP project id, e.g. `acme-prod`: 6 to 30 lowercase letters, digits or hyphens, starting
    /// with a letter and not ending with a hyphen.
    #[x_kube(validation = Rule::new("self.matches('^[a-z][-a-z0-9]{4,28}[a-z0-9]$')").message(
        "project must be a GCP project id: 6 to 30 lowercase letters, digits or hyphens, starting with a letter, not ending with a hyphen"
    ))]
    #[schemars(length(max = 30))]
    pub project: String,

    /// The Shared VPC host project that owns `network`, its subnetworks, routes and firewall
    /// rules, when it is not `project` (absent: `project`). The service engines, and in ILB
    /// mode the instance groups, health checks, backend services, forwarding rules and
    /// reserved addresses, stay in `project` and use the host's subnetworks. Routes then reach
    /// an engine by its internal address (`nextHopIp`), as Compute takes a `nextHopInstance`
    /// only in the route's own project, and follow it when the address changes. The
    /// credentials must act in both projects, and each project's `rateLimit` is budgeted
    /// separately (the same figures apply to each). VIP pools and VpcRoutes with
    /// `nextHop.instance` are not carried in a Shared VPC yet (they stall saying so).
    #[x_kube(validation = Rule::new("self.matches('^[a-z][-a-z0-9]{4,28}[a-z0-9]$')").message(
        "networkProject must be a GCP project id: 6 to 30 lowercase letters, digits or hyphens, starting with a letter, not ending with a hyphen"
    ))]
    #[schemars(length(max = 30))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_project: Option<String>,

    /// How the VIPs of this cloud's VirtualServices reach their engines when an object does
    /// not say (`VirtualService.spec.vipMode`): `Routes` (default) or `ILB`.
    #[serde(default)]
    pub default_vip_mode: super::VipMode,

    /// Name of the VPC network in the project, e.g. `prod-vpc` (a GCP resource name: 1 to 63
    /// lowercase letters, digits or hyphens, starting with a letter).
    #[x_kube(validation = Rule::new("self.matches('^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$')").message(
        "network must be a GCP network name: 1 to 63 lowercase letters, digits or hyphens, starting with a letter, not ending with a hyphen"
    ))]
    #[schemars(length(max = 63))]
    pub network: String,

    /// Region for regional resources (addresses, forwarding rules), e.g. `us-central1`.
    #[schemars(regex(pattern = crate::api::GCP_NAME_PATTERN), length(min = 1, max = 63))]
    pub region: String,

    /// How the operator authenticates to GCP: exactly one of `workloadIdentity` or `secretRef`.
    pub credentials: CloudCredentials,

    /// Compute API base URL. Absent means `https://compute.googleapis.com`; set it for a local
    /// emulator or a private endpoint.
    #[x_kube(validation = Rule::new("self.startsWith('http://') || self.startsWith('https://')")
        .message("endpoint must be an http:// or https:// URL"))]
    #[schemars(length(max = 2048))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,

    /// Prefix of every GCP resource name the operator creates in this network (default `adc-`):
    /// a lowercase letter, then up to 19 lowercase letters, digits or hyphens.
    #[x_kube(validation = Rule::new("self.matches('^[a-z][-a-z0-9]{0,19}$')").message(
        "resourcePrefix must be a lowercase letter followed by at most 19 lowercase letters, digits or hyphens"
    ))]
    #[schemars(length(max = 20))]
    #[serde(default = "default_resource_prefix")]
    pub resource_prefix: String,

    /// Namespaces whose objects may reference this cloud, by label. Absent means every
    /// namespace; an empty selector (`{}`) also matches every namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_namespaces: Option<LabelSelector>,

    /// CIDR ranges that VIPs and route destinations must fall inside, e.g. `10.0.0.0/8`. Empty
    /// means no restriction other than the default route: a range with prefix length 0
    /// (`0.0.0.0/0`, `::/0`) is only accepted with `allowDefaultRoute: true`.
    #[x_kube(validation = Rule::new("self.all(r, isCIDR(r))")
        .message("allowedDestinationRanges must be CIDR ranges such as 10.0.0.0/8"))]
    #[schemars(length(max = 256), inner(length(max = 43)))]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_destination_ranges: Vec<String>,

    /// Allows a default route (`0.0.0.0/0` or `::/0`) in `allowedDestinationRanges`.
    #[serde(default)]
    pub allow_default_route: bool,

    /// IPv4 blocks the operator hands VIPs out of (`VirtualService.spec.vip.allocate.pool`), and
    /// where it aggregates routes: the VIPs inside a pool, allocated or fixed, are carried by
    /// the fewest routes that give every VIP exactly the engines its own routes would (one
    /// route per block and engine for VIPs of the same engines), and VIPs asking for the same
    /// ports and sources share firewall rules. Those routes and rules belong to the cloud, not to
    /// one object. A pool must not overlap another pool or a subnetwork of the network (the
    /// objects that use it stall until it is fixed) and must lie inside
    /// `allowedDestinationRanges` when that is set. Up to 64 pools; names unique.
    #[x_kube(validation = Rule::new("self.all(p, self.exists_one(q, q.name == p.name))")
        .message("vipPools names must not repeat"))]
    #[x_kube(validation = Rule::new("self.all(p, self.all(q, p.name == q.name || !isCIDR(p.cidr) || !isCIDR(q.cidr) || !cidr(p.cidr).containsIP(cidr(q.cidr).ip())))")
        .message("vipPools must not overlap each other"))]
    #[schemars(length(max = 64))]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vip_pools: Vec<VipPool>,

    /// Compute API request budgets for this project, per minute.
    #[serde(default)]
    pub rate_limit: RateLimitSpec,

    /// How Compute API calls are grouped into batch requests.
    #[serde(default)]
    pub batching: BatchingSpec,

    /// What the operator may do in GCP for this cloud's objects: `Full` (default: plan and
    /// write), `Observe` (plan, show the plan in each object's `status.plan`, write only what
    /// the annotation `adc.dev/approved-plan` approves) or `Paused` (neither plan nor write;
    /// nothing is collected). An object's annotation `adc.dev/management-policy` overrides it.
    /// Switching to Observe or Paused stops writes at once: queued changes are dropped, the
    /// ones Compute already runs finish.
    #[serde(default)]
    pub management_policy: super::ManagementPolicy,

    /// Taking over routes and firewall rules that already exist in the project without this
    /// cluster's ownership marker (made by an ADC controller, Terraform or by hand). Off by
    /// default: without it nothing foreign is ever touched.
    #[serde(default, skip_serializing_if = "AdoptionSpec::is_off")]
    pub adoption: AdoptionSpec,

    /// How often the operator re-reads the network's inventory to detect drift, as a duration
    /// such as `30s`, `5m` or `1h` (default `5m`). Between whole lists (the first resync, then
    /// at least hourly), routes and firewall rules are read back only where the project's
    /// operations log shows a change; an interval of `45m` or more lists them whole every time.
    #[schemars(regex(pattern = crate::api::DURATION_PATTERN), length(max = 32))]
    #[serde(default = "default_resync_interval")]
    pub resync_interval: String,

    /// How often the operator reads the status of the instances that service engines and next
    /// hops use, as a duration such as `5s` or `1m` (default `5s`; taken as at least `1s` and at
    /// most `24h`). Each poll is one `instances.aggregatedList` for every zone at once of the
    /// instances that are not RUNNING, trimmed with `fields` to what the operator reads, so
    /// routes are withdrawn from an engine within about this long after it stops, without
    /// waiting for the inventory resync. An engine that was down and no longer is listed, or
    /// one the operator has not seen yet, is then read by name. It costs one read call per
    /// poll while nothing changes, whatever the number of engines, out of
    /// `rateLimit.readsPerMinute`.
    #[schemars(regex(pattern = crate::api::DURATION_PATTERN), length(max = 32))]
    #[serde(default = "default_instance_poll_interval")]
    pub instance_poll_interval: String,
}

/// Adoption of existing resources: see `GcpCloudSpec.adoption`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AdoptionSpec {
    /// Whether objects annotated `adc.dev/adopt: "true"` may take over a route or firewall rule
    /// that has exactly the content they want (same network, destination, next hop, priority
    /// and tags; for a firewall rule the same direction, ranges, ports and targets) but no
    /// ownership marker of any cluster. A firewall rule gets the marker patched into its
    /// description; a route, which Compute cannot change, gets an identical twin with the
    /// marker first, and the original is deleted once the twin exists. Each adoption is an
    /// Event on the object and an `adopt` line of its plan. Turning it on makes the inventory
    /// list every route and firewall rule of the project, not only those named with
    /// `resourcePrefix`.
    #[serde(default)]
    pub enabled: bool,
}

impl AdoptionSpec {
    fn is_off(&self) -> bool {
        !self.enabled
    }
}

/// How the operator authenticates to GCP: exactly one of `workloadIdentity` or `secretRef`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[x_kube(validation = Rule::new(
    "(has(self.workloadIdentity) ? 1 : 0) + (has(self.secretRef) ? 1 : 0) == 1"
).message("credentials needs exactly one of workloadIdentity or secretRef"))]
#[serde(rename_all = "camelCase")]
pub struct CloudCredentials {
    /// Use the workload's own identity (the GKE metadata server, or Application Default
    /// Credentials): write `workloadIdentity: {}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_identity: Option<WorkloadIdentity>,

    /// Use a service-account JSON key stored in a Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretKeySelector>,
}

/// Marker for workload-identity credentials; it has no fields (`{}`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct WorkloadIdentity {}

/// A key of a Secret holding a service-account JSON key.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeySelector {
    /// Namespace of the Secret.
    #[schemars(length(min = 1, max = 63))]
    pub namespace: String,

    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,

    /// Key in the Secret's data whose value is the JSON key (default `key.json`).
    #[schemars(length(min = 1, max = 253))]
    #[serde(default = "default_secret_key")]
    pub key: String,
}

/// Compute API request budgets for one project, per minute. GCP's default quotas are 1500 per
/// minute for each of these.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new(
    "!has(self.urgentReserve) || (type(self.urgentReserve) == int ? (self.urgentReserve >= 0 && self.urgentReserve < self.writesPerMinute) : string(self.urgentReserve).matches('^[0-9]{1,2}%$'))"
).message("urgentReserve must be a percentage from 0% to 99% or a number of calls below writesPerMinute").field_path(".urgentReserve"))]
#[serde(rename_all = "camelCase")]
pub struct RateLimitSpec {
    /// Read requests (get, list) per minute (default 1500).
    #[schemars(range(min = 1))]
    #[serde(default = "default_per_minute")]
    pub reads_per_minute: u32,

    /// Write requests (insert, delete, patch) per minute (default 1500).
    #[schemars(range(min = 1))]
    #[serde(default = "default_per_minute")]
    pub writes_per_minute: u32,

    /// Operation polls (operations.get, operations.wait) per minute (default 1500).
    #[schemars(range(min = 1))]
    #[serde(default = "default_per_minute")]
    pub operation_reads_per_minute: u32,

    /// How much of each minute's quota bulk work (creating and updating resources) leaves unspent
    /// for urgent work (withdrawing routes from a stopped engine, deletes), as a percentage of
    /// each group's per-minute quota such as `10%`, or a number of calls such as `200` (default
    /// `25%`: 375 of 1,500 writes, the withdrawals of 75 engines serving five VIPs each; size it
    /// to the routes of the engines one zone holds, the failure that happens at once). Bulk
    /// work otherwise spends each minute's quota as early as it can, so a change that fits in
    /// what is left of the minute goes at once; the reserve is released to bulk work in the
    /// minute's last two seconds. A percentage is 0% to 99%; a number must be below
    /// `writesPerMinute`.
    #[serde(default = "default_urgent_reserve")]
    pub urgent_reserve: IntOrString,
}

/// Why `spec.rateLimit.urgentReserve` was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReserveError {
    #[error("'{0}' is neither a percentage such as '10%' nor a number of calls")]
    Malformed(String),
    #[error("{0}% leaves bulk work nothing: give 0% to 99%")]
    Percent(u32),
    #[error("a negative number of calls ({0})")]
    Negative(i32),
    #[error("{calls} calls is not below writesPerMinute ({writes})")]
    TooLarge { calls: u32, writes: u32 },
}

/// `spec.rateLimit.urgentReserve`, read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UrgentReserve {
    /// A percentage of each group's per-minute quota.
    Percent(u32),
    /// A number of calls per minute.
    Calls(u32),
}

impl RateLimitSpec {
    /// The urgent reserve, checked.
    pub fn urgent_reserve(&self) -> Result<UrgentReserve, ReserveError> {
        match &self.urgent_reserve {
            IntOrString::Int(calls) if *calls < 0 => Err(ReserveError::Negative(*calls)),
            IntOrString::Int(calls) => {
                let calls = calls.unsigned_abs();
                if calls >= self.writes_per_minute {
                    return Err(ReserveError::TooLarge {
                        calls,
                        writes: self.writes_per_minute,
                    });
                }
                Ok(UrgentReserve::Calls(calls))
            }
            IntOrString::String(text) => {
                let percent = text
                    .trim()
                    .strip_suffix('%')
                    .and_then(|digits| digits.trim().parse::<u32>().ok())
                    .ok_or_else(|| ReserveError::Malformed(text.clone()))?;
                if percent > 99 {
                    return Err(ReserveError::Percent(percent));
                }
                Ok(UrgentReserve::Percent(percent))
            }
        }
    }
}

impl Default for RateLimitSpec {
    fn default() -> Self {
        Self {
            reads_per_minute: default_per_minute(),
            writes_per_minute: default_per_minute(),
            operation_reads_per_minute: default_per_minute(),
            urgent_reserve: default_urgent_reserve(),
        }
    }
}

/// A block of IPv4 addresses VIPs are handed out of.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct VipPool {
    /// The pool's name, as `vip.allocate.pool` names it: a lowercase letter, then up to 62
    /// lowercase letters, digits or hyphens.
    #[schemars(regex(pattern = crate::api::GCP_NAME_PATTERN), length(min = 1, max = 63))]
    pub name: String,

    /// The block, an IPv4 CIDR range from /16 to /28 with no host bits set, e.g.
    /// `10.200.0.0/20`. Its first and last addresses are never handed out.
    #[x_kube(validation = Rule::new("isCIDR(self) && cidr(self).ip().family() == 4 && cidr(self) == cidr(self).masked() && cidr(self).prefixLength() >= 16 && cidr(self).prefixLength() <= 28")
        .message("cidr must be an IPv4 CIDR range from /16 to /28 with no host bits set, such as 10.200.0.0/20"))]
    #[schemars(length(max = 18))]
    pub cidr: String,
}

/// How Compute API calls are grouped into batch requests.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BatchingSpec {
    /// Most calls in one batch request, 1 to 1000 (default 500).
    #[schemars(range(min = 1, max = 1000))]
    #[serde(default = "default_max_calls_per_batch")]
    pub max_calls_per_batch: u32,

    /// How long a call may wait for others to share its batch, as a duration such as `50ms`
    /// (default `50ms`).
    #[schemars(regex(pattern = crate::api::DURATION_PATTERN), length(max = 32))]
    #[serde(default = "default_linger")]
    pub linger: String,

    /// Most batch requests in flight at once, 1 to 64 (default 4).
    #[schemars(range(min = 1, max = 64))]
    #[serde(default = "default_max_batches_in_flight")]
    pub max_batches_in_flight: u32,
}

impl Default for BatchingSpec {
    fn default() -> Self {
        Self {
            max_calls_per_batch: default_max_calls_per_batch(),
            linger: default_linger(),
            max_batches_in_flight: default_max_batches_in_flight(),
        }
    }
}

/// What the operator observed of a `GcpCloud`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct GcpCloudStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// `Ready`, `Reconciling` and `Stalled`, with kstatus semantics.
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,

    /// How many resources of each kind the network holds, from the last inventory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inventory: Option<InventoryCounts>,

    /// The Compute resource quotas the operator's resources count against, as Compute reported
    /// them at the last inventory refresh (`projects.get`, `regions.get`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub quota: Vec<QuotaStatus>,

    /// Project-wide `ROUTES` use and limit as `used/limit`, e.g. `12/250` (what
    /// `kubectl get gcpcloud` shows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routes: Option<String>,

    /// How far the objects that use this cloud are, and the GCP work still queued for them;
    /// updated every few seconds while anything changes, never when nothing does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<CloudProgress>,

    /// The replica (pod) that reconciles this cloud: with sharding, the holder of the cloud's
    /// Lease; otherwise the leader.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<String>,

    /// Objects deleted with `adc.dev/deletion-policy: abandon` (`Kind/namespace/name`): their
    /// GCP resources were left in place on purpose and garbage collection never deletes them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub abandoned: Vec<String>,
}

/// One resource quota's use.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct QuotaStatus {
    /// The quota's metric, e.g. `ROUTES`, `FIREWALLS`, `STATIC_ADDRESSES`.
    pub metric: String,

    /// `global` for a project-wide quota, else the region it applies to.
    pub scope: String,

    /// How much of it is in use.
    pub usage: f64,

    /// The limit; Compute refuses inserts beyond it (`QUOTA_EXCEEDED`).
    pub limit: f64,

    /// What this cloud's objects need of it at the current plan (the shared layout of its VIP
    /// pools plus every object's own resources), for `ROUTES`, `FIREWALLS` and
    /// `STATIC_ADDRESSES`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub needed: Option<f64>,

    /// The use once the plan is applied: `usage` less what the cloud holds now, plus `needed`.
    /// Above 90 % of `limit` the `QuotaWarning` condition is True.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub projected: Option<f64>,
}

/// The fleet of one cloud at a glance: what `kubectl get gcpcloud -w` shows as it converges.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct CloudProgress {
    /// VirtualServices and VpcRoutes that name this cloud in `spec.cloudRef`.
    #[serde(default)]
    pub objects: u32,

    /// Of them, Ready for their current generation.
    #[serde(default)]
    pub ready: u32,

    /// Of them, Stalled: they wait for a change of their spec or of the cloud (their
    /// conditions say which).
    #[serde(default)]
    pub stalled: u32,

    /// GCP writes (inserts, deletes) waiting to be sent.
    #[serde(default)]
    pub writes_queued: u32,

    /// GCP operations sent and not yet seen DONE.
    #[serde(default)]
    pub operations_in_flight: u32,

    /// Estimated time until the GCP work queued now is done, e.g. `1m30s`, from the write quota
    /// per minute and how long operations take here (the queued writes spread over the rate
    /// windows, plus one operation); absent when no work is queued or in flight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimated_time_left: Option<String>,

    /// Ready of all, as a bar and a percentage, e.g. `[#######...] 70% 700/1000`; `no objects`
    /// while no object uses the cloud.
    #[serde(default)]
    pub summary: String,
}

/// Resource counts in the network, from the last inventory.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct InventoryCounts {
    /// Routes in the network.
    #[serde(default)]
    pub routes: u32,

    /// Firewall rules in the network.
    #[serde(default)]
    pub firewalls: u32,

    /// Addresses in the region.
    #[serde(default)]
    pub addresses: u32,

    /// Forwarding rules in the region.
    #[serde(default)]
    pub forwarding_rules: u32,

    /// VM instances attached to the network.
    #[serde(default)]
    pub instances: u32,
}

fn default_resource_prefix() -> String {
    "adc-".to_string()
}

fn default_resync_interval() -> String {
    "5m".to_string()
}

fn default_instance_poll_interval() -> String {
    "5s".to_string()
}

fn default_secret_key() -> String {
    "key.json".to_string()
}

fn default_per_minute() -> u32 {
    1500
}

fn default_urgent_reserve() -> IntOrString {
    IntOrString::String("25%".into())
}

fn default_max_calls_per_batch() -> u32 {
    500
}

fn default_linger() -> String {
    "50ms".to_string()
}

fn default_max_batches_in_flight() -> u32 {
    4
}
