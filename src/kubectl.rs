//! The kubectl plugin: the operator's binary installed or linked as `kubectl-adc` answers
//! `kubectl adc status`, a fleet summary per GcpCloud (objects by state and reason, progress,
//! quota use, the replica that leads, the latest errors), read with the current kubeconfig
//! context like any kubectl plugin.
//!
//! [`summarize`] and [`render`] are pure (objects and `now` in, a summary and its text out);
//! [`run`] only lists the objects and prints.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use serde::Serialize;

use crate::api::conditions::{
    Condition, ObjectState, READY, STALLED, find_condition, object_state,
};
use crate::api::{
    CloudProgress, FleetObject, GcpCloud, InventoryCounts, QuotaStatus, VirtualService, VpcRoute,
};

/// The name the plugin is installed under; kubectl finds `kubectl-adc` on PATH for `kubectl adc`.
pub const PLUGIN_NAME: &str = "kubectl-adc";

/// Errors of the plugin.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("no usable kubeconfig: {0}")]
    Config(String),
    #[error("listing {what}: {source}")]
    List {
        what: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("encoding the summary: {0}")]
    Encode(#[from] serde_json::Error),
}

/// The whole fleet as the plugin shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FleetStatus {
    /// One entry per GcpCloud, and one per cloud that objects name but that does not exist.
    pub clouds: Vec<CloudSummary>,
    /// The operator's leader Leases found.
    pub leaders: Vec<LeaderInfo>,
}

/// One cloud.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CloudSummary {
    pub name: String,
    /// False when objects name a GcpCloud that does not exist.
    pub exists: bool,
    pub project: String,
    pub network: String,
    pub region: String,
    /// The replica that reconciles the cloud (`status.holder`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub holder: Option<String>,
    /// The cloud's Ready condition: status, reason, message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ready: Option<ConditionSummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<CloudProgress>,
    pub quota: Vec<QuotaStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inventory: Option<InventoryCounts>,
    /// Objects by kind, state and reason, counted from the objects themselves.
    pub objects: Vec<StateCount>,
    /// The latest objects that are Stalled or failing, newest first (at most `--errors`).
    pub last_errors: Vec<ObjectError>,
}

/// A condition in short.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConditionSummary {
    pub status: String,
    pub reason: String,
    pub message: String,
}

/// How many objects of a kind are in a state for a reason.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StateCount {
    pub kind: String,
    pub state: String,
    pub reason: String,
    pub count: u32,
}

/// An object that is Stalled, or not Ready for an error.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectError {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub state: String,
    pub reason: String,
    pub message: String,
    /// When the condition last changed (RFC 3339).
    pub since: String,
}

/// A leader Lease.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaderInfo {
    pub namespace: String,
    pub name: String,
    /// The replica that holds it.
    pub holder: String,
    /// When it was last renewed (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub renewed: Option<String>,
    pub transitions: i32,
}

/// One object of either namespaced kind, as the summary needs it.
pub struct ObjectView<'a> {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    pub cloud: &'a str,
    pub conditions: &'a [Condition],
    pub generation: Option<i64>,
}

impl<'a> ObjectView<'a> {
    /// The view of a VirtualService or VpcRoute.
    pub fn of<K: FleetObject>(object: &'a K) -> Self {
        ObjectView {
            kind: K::KIND,
            namespace: object.namespace().unwrap_or_default(),
            name: object.name_any(),
            cloud: object.cloud_ref(),
            conditions: object.conditions(),
            generation: object.meta().generation,
        }
    }
}

/// Ready reasons that say an object is being worked on or waits its turn, not that it fails
/// (docs/operations.md lists them).
const NOT_ERRORS: &[&str] = &[
    "Pending",
    "Applying",
    "Synced",
    "AllocatingVip",
    "WaitingForCloud",
];

/// Builds the fleet summary.
pub fn summarize<'a>(
    clouds: &[GcpCloud],
    objects: impl IntoIterator<Item = ObjectView<'a>>,
    leases: &[Lease],
    max_errors: usize,
) -> FleetStatus {
    let mut summaries: BTreeMap<String, CloudSummary> = clouds
        .iter()
        .map(|cloud| {
            let status = cloud.status.clone().unwrap_or_default();
            let ready = find_condition(&status.conditions, READY).map(|c| ConditionSummary {
                status: c.status.clone(),
                reason: c.reason.clone(),
                message: c.message.clone(),
            });
            (
                cloud.name_any(),
                CloudSummary {
                    name: cloud.name_any(),
                    exists: true,
                    project: cloud.spec.project.clone(),
                    network: cloud.spec.network.clone(),
                    region: cloud.spec.region.clone(),
                    holder: status.holder,
                    ready,
                    progress: status.progress,
                    quota: status.quota,
                    inventory: status.inventory,
                    objects: Vec::new(),
                    last_errors: Vec::new(),
                },
            )
        })
        .collect();
    let mut counts: BTreeMap<(String, String, ObjectState, String), u32> = BTreeMap::new();
    let mut errors: BTreeMap<String, Vec<ObjectError>> = BTreeMap::new();
    for object in objects {
        let (state, reason) = object_state(object.conditions, object.generation);
        *counts
            .entry((
                object.cloud.to_string(),
                object.kind.to_string(),
                state,
                reason.to_string(),
            ))
            .or_default() += 1;
        let failing = match state {
            ObjectState::Stalled => find_condition(object.conditions, STALLED),
            ObjectState::Reconciling if !NOT_ERRORS.contains(&reason) => {
                find_condition(object.conditions, READY).filter(|c| c.status == "False")
            }
            _ => None,
        };
        if let Some(condition) = failing {
            errors
                .entry(object.cloud.to_string())
                .or_default()
                .push(ObjectError {
                    kind: object.kind.to_string(),
                    namespace: object.namespace.clone(),
                    name: object.name.clone(),
                    state: state.label().to_string(),
                    reason: condition.reason.clone(),
                    message: condition.message.clone(),
                    since: condition.last_transition_time.0.to_string(),
                });
        }
    }
    for ((cloud, kind, state, reason), count) in counts {
        summaries
            .entry(cloud.clone())
            .or_insert_with(|| missing_cloud(&cloud))
            .objects
            .push(StateCount {
                kind,
                state: state.label().to_string(),
                reason,
                count,
            });
    }
    for (cloud, mut list) in errors {
        // Newest first; RFC 3339 in UTC sorts as text.
        list.sort_by(|a, b| {
            b.since
                .cmp(&a.since)
                .then_with(|| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)))
        });
        list.truncate(max_errors);
        summaries
            .entry(cloud.clone())
            .or_insert_with(|| missing_cloud(&cloud))
            .last_errors = list;
    }
    let leaders = leases
        .iter()
        .filter_map(|lease| {
            let spec = lease.spec.as_ref()?;
            Some(LeaderInfo {
                namespace: lease.namespace().unwrap_or_default(),
                name: lease.name_any(),
                holder: spec.holder_identity.clone().unwrap_or_default(),
                renewed: spec.renew_time.as_ref().map(|t| t.0.to_string()),
                transitions: spec.lease_transitions.unwrap_or(0),
            })
        })
        .collect();
    FleetStatus {
        clouds: summaries.into_values().collect(),
        leaders,
    }
}

fn missing_cloud(name: &str) -> CloudSummary {
    CloudSummary {
        name: name.to_string(),
        exists: false,
        project: String::new(),
        network: String::new(),
        region: String::new(),
        holder: None,
        ready: None,
        progress: None,
        quota: Vec::new(),
        inventory: None,
        objects: Vec::new(),
        last_errors: Vec::new(),
    }
}

/// `3s`, `5m`, `2h`, `4d` ago; `-` when the time does not parse.
fn age(since: &str, now: Timestamp) -> String {
    let Ok(then) = since.parse::<Timestamp>() else {
        return "-".into();
    };
    let seconds = now.as_second().saturating_sub(then.as_second()).max(0);
    match seconds {
        0..120 => format!("{seconds}s"),
        120..7200 => format!("{}m", seconds / 60),
        7200..172_800 => format!("{}h", seconds / 3600),
        _ => format!("{}d", seconds / 86_400),
    }
}

fn percent(usage: f64, limit: f64) -> String {
    if limit > 0.0 {
        format!("{:.0}%", usage / limit * 100.0)
    } else {
        "-".into()
    }
}

/// The summary as text for a terminal.
pub fn render(status: &FleetStatus, now: Timestamp) -> String {
    let mut out = String::new();
    if status.clouds.is_empty() {
        out.push_str("No GcpCloud and no VirtualService or VpcRoute found.\n");
    }
    for cloud in &status.clouds {
        if cloud.exists {
            let _ = writeln!(
                out,
                "GcpCloud {}: project {}, network {}, region {}",
                cloud.name, cloud.project, cloud.network, cloud.region
            );
        } else {
            let _ = writeln!(
                out,
                "GcpCloud {}: does not exist (objects name it in spec.cloudRef)",
                cloud.name
            );
        }
        if let Some(holder) = &cloud.holder {
            let _ = writeln!(out, "  Holder:    {holder}");
        }
        if let Some(ready) = &cloud.ready {
            let _ = writeln!(
                out,
                "  Ready:     {} ({}) {}",
                ready.status, ready.reason, ready.message
            );
        }
        if let Some(progress) = &cloud.progress {
            let left = progress
                .estimated_time_left
                .as_deref()
                .map_or(String::new(), |l| format!(", about {l} left"));
            let _ = writeln!(
                out,
                "  Progress:  {}, {} stalled; {} GCP writes queued, {} operations in flight{left}",
                progress.summary,
                progress.stalled,
                progress.writes_queued,
                progress.operations_in_flight
            );
        }
        if !cloud.quota.is_empty() {
            let quota: Vec<String> = cloud
                .quota
                .iter()
                .map(|q| {
                    let scope = if q.scope == "global" {
                        String::new()
                    } else {
                        format!("{} ", q.scope)
                    };
                    format!(
                        "{scope}{} {}/{} ({})",
                        q.metric,
                        q.usage,
                        q.limit,
                        percent(q.usage, q.limit)
                    )
                })
                .collect();
            let _ = writeln!(out, "  Quota:     {}", quota.join(", "));
        }
        if let Some(inventory) = &cloud.inventory {
            let _ = writeln!(
                out,
                "  Inventory: {} routes, {} firewall rules, {} addresses, {} forwarding rules, {} instances",
                inventory.routes,
                inventory.firewalls,
                inventory.addresses,
                inventory.forwarding_rules,
                inventory.instances
            );
        }
        if cloud.objects.is_empty() {
            out.push_str("  Objects:   none\n");
        } else {
            out.push_str("  Objects:\n");
            let rows: Vec<[String; 4]> = cloud
                .objects
                .iter()
                .map(|c| {
                    [
                        c.kind.clone(),
                        c.state.clone(),
                        c.reason.clone(),
                        c.count.to_string(),
                    ]
                })
                .collect();
            table(&mut out, ["KIND", "STATE", "REASON", "COUNT"], &rows);
        }
        if !cloud.last_errors.is_empty() {
            out.push_str("  Last errors:\n");
            for error in &cloud.last_errors {
                let _ = writeln!(
                    out,
                    "    {} ago  {} {}/{}  {} {}: {}",
                    age(&error.since, now),
                    error.kind,
                    error.namespace,
                    error.name,
                    error.state,
                    error.reason,
                    error.message
                );
            }
        }
        out.push('\n');
    }
    if status.leaders.is_empty() {
        out.push_str("Leader: no leader Lease found (a single replica without leader election, sharding (each cloud's Holder reconciles it), or a different --lease-name)\n");
    }
    for leader in &status.leaders {
        let renewed = leader
            .renewed
            .as_deref()
            .map_or("never renewed".to_string(), |r| {
                format!("renewed {} ago", age(r, now))
            });
        let _ = writeln!(
            out,
            "Leader: {} (Lease {}/{}, {renewed}, {} transitions)",
            if leader.holder.is_empty() {
                "nobody"
            } else {
                &leader.holder
            },
            leader.namespace,
            leader.name,
            leader.transitions
        );
    }
    out
}

/// Appends an indented table with left-aligned columns.
fn table<const N: usize>(out: &mut String, header: [&str; N], rows: &[[String; N]]) {
    let mut widths = header.map(str::len);
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let mut line = |cells: Vec<&str>| {
        let mut text = String::from("    ");
        for (i, (cell, width)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == N {
                text.push_str(cell);
            } else {
                let _ = write!(text, "{cell:<width$}  ");
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// Every object of a kind, in all namespaces.
async fn list_all<K>(client: &Client, what: &'static str) -> Result<Vec<K>, PluginError>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    Api::<K>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map(|list| list.items)
        .map_err(|source| PluginError::List { what, source })
}

/// Lists what the summary needs and prints it, as text or JSON.
pub async fn status(
    client: Client,
    cloud: Option<&str>,
    lease_name: &str,
    max_errors: usize,
    json: bool,
) -> Result<String, PluginError> {
    let clouds: Vec<GcpCloud> = list_all(&client, "GcpClouds").await?;
    let virtual_services: Vec<VirtualService> = list_all(&client, "VirtualServices").await?;
    let vpc_routes: Vec<VpcRoute> = list_all(&client, "VpcRoutes").await?;
    // The Lease may live in any namespace (the chart's release namespace); one that cannot be
    // listed only leaves the leader line out.
    let leases = Api::<Lease>::all(client)
        .list(&ListParams::default().fields(&format!("metadata.name={lease_name}")))
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    let objects = virtual_services
        .iter()
        .map(ObjectView::of)
        .chain(vpc_routes.iter().map(ObjectView::of));
    let mut summary = summarize(&clouds, objects, &leases, max_errors);
    if let Some(cloud) = cloud {
        summary.clouds.retain(|c| c.name == cloud);
    }
    if json {
        Ok(serde_json::to_string_pretty(&summary)? + "\n")
    } else {
        Ok(render(&summary, Timestamp::now()))
    }
}

/// A client for the current kubeconfig context (or `context`), else the in-cluster one.
pub async fn client(context: Option<String>) -> Result<Client, PluginError> {
    let options = kube::config::KubeConfigOptions {
        context,
        ..Default::default()
    };
    let config = match kube::Config::from_kubeconfig(&options).await {
        Ok(config) => config,
        Err(kubeconfig_err) => kube::Config::incluster().map_err(|_| {
            PluginError::Config(format!(
                "{kubeconfig_err} (and not running in a cluster either)"
            ))
        })?,
    };
    Client::try_from(config).map_err(|err| PluginError::Config(err.to_string()))
}

#[cfg(test)]
#[path = "kubectl_tests.rs"]
mod tests;
