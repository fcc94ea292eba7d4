//! Compute resources as the operator writes and reads them (the subset of fields it uses; unknown
//! fields in answers are ignored).

use serde::{Deserialize, Serialize};

fn is_false(value: &bool) -> bool {
    !*value
}

/// A VPC route (`compute#route`). Routes are immutable: a change is a delete and an insert.
/// Routes and firewall rules are the bulk of an inventory (three per VirtualService): they
/// keep only what the operator reads, not their `selfLink` (about 120 bytes each).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Route {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    pub network: String,
    pub dest_range: String,
    pub priority: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_hop_instance: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_hop_ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_hop_gateway: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_hop_ilb: Option<String>,
}

/// One `allowed` or `denied` entry of a firewall rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirewallRule {
    #[serde(rename = "IPProtocol")]
    pub ip_protocol: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
}

/// A firewall rule (`compute#firewall`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Firewall {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    pub network: String,
    #[serde(default)]
    pub priority: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub direction: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub source_ranges: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub destination_ranges: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed: Vec<FirewallRule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub denied: Vec<FirewallRule>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub disabled: bool,
}

/// A static address (`compute#address`), global or regional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Address {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnetwork: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub self_link: Option<String>,
}

/// A forwarding rule (`compute#forwardingRule`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ForwardingRule {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(rename = "IPAddress", default, skip_serializing_if = "Option::is_none")]
    pub ip_address: Option<String>,
    #[serde(
        rename = "IPProtocol",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub ip_protocol: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_range: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancing_scheme: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// Internal rules: the subnetwork the address lies in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnetwork: Option<String>,
    /// Internal passthrough rules: the backend service they feed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_service: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub all_ports: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub self_link: Option<String>,
}

/// A secondary range of a subnetwork.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecondaryRange {
    #[serde(default)]
    pub range_name: String,
    #[serde(default)]
    pub ip_cidr_range: String,
}

/// A subnetwork (`compute#subnetwork`): GCP refuses routes into its ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Subnetwork {
    pub name: String,
    #[serde(default)]
    pub network: String,
    #[serde(default)]
    pub ip_cidr_range: String,
    #[serde(default)]
    pub secondary_ip_ranges: Vec<SecondaryRange>,
}

/// A target instance (`compute#targetInstance`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetInstance {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    pub instance: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat_policy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub self_link: Option<String>,
}

/// A VM's network interface.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkInterface {
    #[serde(default)]
    pub network: String,
    #[serde(default)]
    pub subnetwork: Option<String>,
    #[serde(rename = "networkIP", default)]
    pub network_ip: Option<String>,
}

/// A VM instance (`compute#instance`): the service engines routes point to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Instance {
    pub name: String,
    #[serde(default)]
    pub zone: String,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub can_ip_forward: bool,
    #[serde(default)]
    pub network_interfaces: Vec<NetworkInterface>,
    #[serde(default)]
    pub self_link: Option<String>,
}

impl Instance {
    /// Whether the instance can carry traffic.
    pub fn is_running(&self) -> bool {
        self.status == "RUNNING"
    }
}

/// One entry of an operation's `error.errors`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperationErrorEntry {
    #[serde(default)]
    pub code: String,
    #[serde(default)]
    pub message: String,
}

/// An operation's `error`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperationError {
    #[serde(default)]
    pub errors: Vec<OperationErrorEntry>,
}

/// A long-running operation (`compute#operation`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Operation {
    pub name: String,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub operation_type: String,
    #[serde(default)]
    pub target_link: String,
    #[serde(default)]
    pub zone: Option<String>,
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub client_operation_id: Option<String>,
    #[serde(default)]
    pub insert_time: Option<String>,
    #[serde(default)]
    pub error: Option<OperationError>,
    #[serde(default)]
    pub http_error_status_code: Option<u16>,
    #[serde(default)]
    pub self_link: Option<String>,
}

impl Operation {
    /// Whether it is DONE.
    pub fn is_done(&self) -> bool {
        self.status == "DONE"
    }

    /// Its scope path: `global`, `regions/R` or `zones/Z` (from the zone or region URL).
    pub fn scope(&self) -> String {
        if let Some(zone) = &self.zone {
            return format!("zones/{}", last_segment(zone));
        }
        if let Some(region) = &self.region {
            return format!("regions/{}", last_segment(region));
        }
        "global".to_string()
    }

    /// The project it runs in, from its selfLink (else its targetLink).
    pub fn project(&self) -> Option<&str> {
        let link = self.self_link.as_deref().unwrap_or(&self.target_link);
        link.split("/projects/")
            .nth(1)
            .or_else(|| link.strip_prefix("projects/"))
            .and_then(|rest| rest.split('/').next())
            .filter(|p| !p.is_empty())
    }

    /// The tracker's key for it: its scope, prefixed with `projects/P/` when it runs in a
    /// project other than `home` (a Shared VPC host's route or firewall operation).
    pub fn scope_from(&self, home: &str) -> String {
        match self.project() {
            Some(project) if project != home => format!("projects/{project}/{}", self.scope()),
            _ => self.scope(),
        }
    }

    /// The error of a DONE operation, if it failed.
    pub fn failure(&self) -> Option<super::GcpError> {
        let first = self.error.as_ref()?.errors.first()?;
        Some(super::GcpError::Operation {
            code: first.code.clone(),
            message: first.message.clone(),
            http_status: self.http_error_status_code,
        })
    }
}

/// The resource quotas that the operator's resources (routes, firewall rules, addresses,
/// forwarding rules) count against, project-wide or per region as Compute reports them.
pub const QUOTA_METRICS: &[&str] = &[
    "ROUTES",
    "FIREWALLS",
    "STATIC_ADDRESSES",
    "IN_USE_ADDRESSES",
    "INTERNAL_ADDRESSES",
    "FORWARDING_RULES",
];

/// The `quotas` of a Project or Region resource (`projects.get`, `regions.get`).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct QuotaList {
    #[serde(default)]
    pub quotas: Vec<Quota>,
}

/// One quota as Compute reports it: `limit` and `usage` are doubles on the wire.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Quota {
    pub metric: String,
    #[serde(default)]
    pub limit: f64,
    #[serde(default)]
    pub usage: f64,
}

/// A quota of a project (`scope` = `global`) or of one of its regions (`scope` = the region).
#[derive(Debug, Clone, PartialEq)]
pub struct QuotaUse {
    pub scope: String,
    pub metric: String,
    pub usage: f64,
    pub limit: f64,
}

pub use crate::plan::resource::last_segment;

/// One page of a list call.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListPage<T> {
    #[serde(default = "Vec::new")]
    pub items: Vec<T>,
    #[serde(default)]
    pub next_page_token: Option<String>,
}

/// One page of a list call as it arrived: each item left as its raw JSON text, borrowed from
/// the answer's body, so that a refresh decodes every item straight into its typed form, one at
/// a time, and never builds a JSON tree of a page.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RawPage<'a> {
    #[serde(borrow, default)]
    pub items: Vec<&'a serde_json::value::RawValue>,
    #[serde(default)]
    pub next_page_token: Option<String>,
}

/// One page of an `aggregatedList`: scoped lists by scope (`zones/Z`, `regions/R`, `global`),
/// each holding its items under the collection's name, or a warning when the scope has none on
/// this page. Items stay raw, as in [`RawPage`].
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AggregatedPage<'a> {
    #[serde(borrow, default)]
    pub items: std::collections::BTreeMap<
        String,
        std::collections::BTreeMap<String, &'a serde_json::value::RawValue>,
    >,
    #[serde(default)]
    pub next_page_token: Option<String>,
}

impl<'a> AggregatedPage<'a> {
    /// Every item of every scope under `key` (`instances`, `operations`…), scope by scope. A
    /// scoped list that is not an array of items is an error: Compute never sends one.
    pub fn flatten(
        &self,
        key: &str,
    ) -> Result<Vec<&'a serde_json::value::RawValue>, serde_json::Error> {
        let mut all = Vec::new();
        for scoped in self.items.values() {
            if let Some(list) = scoped.get(key) {
                let items: Vec<&'a serde_json::value::RawValue> = serde_json::from_str(list.get())?;
                all.extend(items);
            }
        }
        Ok(all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_aggregated_page_flattens_its_scopes_and_skips_warnings() {
        let body = serde_json::json!({
            "kind": "compute#instanceAggregatedList",
            "items": {
                "zones/us-central1-a": {"instances": [{"name": "se-1"}, {"name": "se-3"}]},
                "zones/us-central1-b": {"warning": {"code": "NO_RESULTS_ON_PAGE",
                    "data": [{"key": "scope", "value": "zones/us-central1-b"}]}},
                "zones/us-central1-c": {"instances": [{"name": "se-2"}]}
            },
            "nextPageToken": "t"
        })
        .to_string();
        let page: AggregatedPage = serde_json::from_str(&body).unwrap();
        assert_eq!(page.next_page_token.as_deref(), Some("t"));
        let names: Vec<String> = page
            .flatten("instances")
            .unwrap()
            .iter()
            .map(|raw| serde_json::from_str::<Instance>(raw.get()).unwrap().name)
            .collect();
        assert_eq!(names, ["se-1", "se-3", "se-2"]);
    }

    #[test]
    fn route_serialises_like_the_api_expects() {
        let route = Route {
            name: "adc-1".into(),
            network: "global/networks/default".into(),
            dest_range: "10.0.0.5/32".into(),
            priority: 2000,
            next_hop_instance: Some("zones/z/instances/se-1".into()),
            ..Default::default()
        };
        let json = serde_json::to_value(&route).unwrap();
        assert_eq!(json["destRange"], "10.0.0.5/32");
        assert_eq!(json["nextHopInstance"], "zones/z/instances/se-1");
        assert!(json.get("nextHopIp").is_none() && json.get("tags").is_none());
    }

    #[test]
    fn operation_scope_and_failure() {
        let op: Operation = serde_json::from_value(serde_json::json!({
            "name": "operation-1", "status": "DONE",
            "zone": "https://www.googleapis.com/compute/v1/projects/p/zones/us-central1-a",
            "error": {"errors": [{"code": "QUOTA_EXCEEDED", "message": "Quota 'ROUTES' exceeded.  Limit: 2.0 globally."}]},
            "httpErrorStatusCode": 403
        }))
        .unwrap();
        assert_eq!(op.scope(), "zones/us-central1-a");
        assert!(op.failure().unwrap().is_quota_exceeded());
        let ok: Operation =
            serde_json::from_value(serde_json::json!({"name": "o", "status": "DONE"})).unwrap();
        assert_eq!(ok.scope(), "global");
        assert!(ok.failure().is_none());
    }
}
