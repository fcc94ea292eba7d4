//! `adc-operator import`, decided purely: the VirtualService and VpcRoute manifests that would
//! own a project's foreign routes and firewall rules. VIP routes (a `/32` to instances) are
//! grouped by destination, with the one firewall rule that opens exactly that `/32`, into a
//! VirtualService (its engines, HA mode and priority from the routes' priorities); other routes
//! to an instance, an IP or the internet gateway become VpcRoutes. Every manifest is checked by
//! planning it: it is written only when what it plans is exactly what exists. Anything else is
//! listed with the reason, never guessed.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::adopt::same_behaviour;
use super::resource::{Collection, Target, last_segment};
use super::{CloudView, EngineHealth};
use crate::api::policy::ADOPT_ANNOTATION;
use crate::api::{VirtualServiceSpec, VpcRouteSpec};

/// Which foreign resources to import.
#[derive(Debug, Clone, Default)]
pub struct Filters {
    /// Only names that start with this.
    pub name_prefix: Option<String>,
    /// Only routes to this instance (its name), and the firewall rules of their VIPs.
    pub next_hop_instance: Option<String>,
    /// Only resources whose description contains this.
    pub description: Option<String>,
}

impl Filters {
    fn admit(&self, target: &Target, body: &Value) -> bool {
        self.name_prefix
            .as_ref()
            .is_none_or(|p| target.name.starts_with(p.as_str()))
            && self.description.as_ref().is_none_or(|d| {
                body["description"]
                    .as_str()
                    .is_some_and(|text| text.contains(d.as_str()))
            })
    }
}

/// What the import found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Import {
    /// VirtualService and VpcRoute manifests, each with `adc.dev/adopt: "true"`.
    pub manifests: Vec<Value>,
    /// Resources no manifest owns, with why: (`global/routes/NAME`, reason).
    pub unmapped: Vec<(String, String)>,
    /// Resources the manifests own.
    pub mapped: usize,
}

/// The manifests for `foreign` (routes and firewall rules of the cloud's network without a
/// marker), in `namespace`, for the GcpCloud `cloud.cloud`.
pub fn import(
    cloud: &CloudView,
    namespace: &str,
    foreign: &[(Target, Value)],
    filters: &Filters,
) -> Import {
    let mut out = Import::default();
    let admitted: Vec<&(Target, Value)> = foreign
        .iter()
        .filter(|(t, b)| filters.admit(t, b))
        .collect();
    let routes: Vec<&(Target, Value)> = admitted
        .iter()
        .copied()
        .filter(|(t, _)| t.collection == Collection::Routes)
        .collect();
    let firewalls: Vec<&(Target, Value)> = admitted
        .iter()
        .copied()
        .filter(|(t, _)| t.collection == Collection::Firewalls)
        .collect();
    let mut used_firewalls: Vec<&Target> = Vec::new();

    // VIP routes by destination.
    let mut vips: BTreeMap<String, Vec<&(Target, Value)>> = BTreeMap::new();
    let mut others = Vec::new();
    for route in &routes {
        let dest = route.1["destRange"].as_str().unwrap_or_default();
        let to_instance = route.1["nextHopInstance"].is_string();
        if dest.ends_with("/32") && to_instance {
            vips.entry(dest.to_string()).or_default().push(route);
        } else {
            others.push(*route);
        }
    }
    for (dest, group) in vips {
        if let Some(hop) = &filters.next_hop_instance
            && !group.iter().any(|(_, b)| instance_of(b).1 == hop.as_str())
        {
            continue;
        }
        let rules: Vec<&&(Target, Value)> = firewalls
            .iter()
            .filter(|(_, b)| opens_exactly(b, &dest))
            .collect();
        let vip = dest.trim_end_matches("/32").to_string();
        let manifest = match rules.as_slice() {
            [rule] => virtual_service(cloud, namespace, &vip, &group, &rule.1),
            // No rule opens it: not a VIP, a static route to an instance.
            [] => {
                others.extend(group);
                continue;
            }
            many => Err(format!(
                "{} firewall rules open {dest} ({}): which one is the VIP's is unclear",
                many.len(),
                many.iter()
                    .map(|r| r.0.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        };
        match manifest {
            Ok(manifest) => {
                out.mapped += group.len() + 1;
                if let [rule] = rules.as_slice() {
                    used_firewalls.push(&rule.0);
                }
                out.manifests.push(manifest);
            }
            Err(reason) => {
                for (target, _) in &group {
                    out.unmapped.push((target.to_string(), reason.clone()));
                }
            }
        }
    }
    for (target, body) in others {
        if let Some(hop) = &filters.next_hop_instance
            && instance_of(body).1 != hop.as_str()
        {
            continue;
        }
        match vpc_route(cloud, namespace, target, body) {
            Ok(manifest) => {
                out.mapped += 1;
                out.manifests.push(manifest);
            }
            Err(reason) => out.unmapped.push((target.to_string(), reason)),
        }
    }
    if filters.next_hop_instance.is_none() {
        for (target, _) in firewalls {
            if !used_firewalls.contains(&target) {
                out.unmapped.push((
                    target.to_string(),
                    "opens no VIP of an imported VirtualService".into(),
                ));
            }
        }
    }
    out
}

/// (zone, name) of a route's `nextHopInstance`.
fn instance_of(body: &Value) -> (&str, &str) {
    let link = body["nextHopInstance"].as_str().unwrap_or_default();
    let name = last_segment(link);
    let zone = link
        .split_once("/zones/")
        .map_or("", |(_, rest)| rest.split('/').next().unwrap_or_default());
    (zone, name)
}

/// Whether a firewall rule is one the operator would make for the VIP `dest`.
fn opens_exactly(rule: &Value, dest: &str) -> bool {
    let list = |key: &str| rule[key].as_array().cloned().unwrap_or_default();
    list("destinationRanges") == vec![json!(dest)]
        && rule["direction"].as_str().unwrap_or("INGRESS") == "INGRESS"
}

fn virtual_service(
    cloud: &CloudView,
    namespace: &str,
    vip: &str,
    group: &[&(Target, Value)],
    rule: &Value,
) -> Result<Value, String> {
    let mut hops: Vec<(u64, &str, &str)> = Vec::new();
    for (_, route) in group {
        if route["tags"].as_array().is_some_and(|t| !t.is_empty()) {
            return Err("a route of the VIP applies only to tagged instances".into());
        }
        let (zone, name) = instance_of(route);
        let priority = route["priority"].as_u64().unwrap_or(1000);
        if !hops.iter().any(|h| h.2 == name && h.1 == zone) {
            hops.push((priority, zone, name));
        }
    }
    hops.sort();
    let top = hops.first().map_or(1000, |h| h.0);
    let mode = if hops.iter().all(|h| h.0 == top) {
        "ActiveActive"
    } else if hops.len() >= 2 && hops[1..].iter().all(|h| h.0 == top + 1) && hops[0].0 < hops[1].0 {
        "ActiveStandby"
    } else {
        return Err(format!(
            "route priorities {:?} are neither all equal (ActiveActive) nor one primary and standbys one step lower (ActiveStandby)",
            hops.iter().map(|h| h.0).collect::<Vec<_>>()
        ));
    };
    let mut ports = Vec::new();
    for entry in rule["allowed"].as_array().cloned().unwrap_or_default() {
        let protocol = match entry["IPProtocol"].as_str().map(str::to_ascii_lowercase) {
            Some(p) if p == "tcp" => "TCP",
            Some(p) if p == "udp" => "UDP",
            other => {
                return Err(format!(
                    "the firewall rule allows protocol {other:?}: a VirtualService serves TCP and UDP ports"
                ));
            }
        };
        let listed = entry["ports"].as_array().cloned().unwrap_or_default();
        if listed.is_empty() {
            return Err(
                "the firewall rule allows every port: a VirtualService names its ports".into(),
            );
        }
        for port in listed {
            let port: u16 = port
                .as_str()
                .and_then(|p| p.parse().ok())
                .filter(|p| *p > 0)
                .ok_or_else(|| {
                    format!(
                        "the firewall rule allows port {port}: a VirtualService names single ports"
                    )
                })?;
            ports.push(json!({"port": port, "protocol": protocol}));
        }
    }
    let engines: Vec<Value> = hops
        .iter()
        .map(|(_, zone, name)| json!({"name": name, "zone": zone}))
        .collect();
    let name = format!("vip-{}", vip.replace('.', "-"));
    let spec = json!({
        "cloudRef": cloud.cloud,
        "vip": {"address": vip},
        "ports": ports,
        "sourceRanges": rule["sourceRanges"].clone(),
        "serviceEngines": engines,
        "mode": mode,
        "routePriority": top,
    });
    let parsed: VirtualServiceSpec = serde_json::from_value(spec.clone())
        .map_err(|err| format!("the VirtualService it suggests is not valid: {err}"))?;
    let plan = super::virtualservice::plan(
        cloud,
        namespace,
        &name,
        &parsed,
        None,
        |_, _| EngineHealth::Running,
        |_, _| None,
    );
    let mut wanted: Vec<(Target, Value)> = group.iter().map(|r| (*r).clone()).collect();
    wanted.push((Target::firewall("-"), rule.clone()));
    check(&plan.desired, &wanted)?;
    Ok(manifest("VirtualService", &name, namespace, spec))
}

fn vpc_route(
    cloud: &CloudView,
    namespace: &str,
    target: &Target,
    body: &Value,
) -> Result<Value, String> {
    let dest = body["destRange"].as_str().unwrap_or_default();
    let hop = if body["nextHopInstance"].is_string() {
        let (zone, name) = instance_of(body);
        json!({"instance": {"name": name, "zone": zone}})
    } else if let Some(ip) = body["nextHopIp"].as_str() {
        json!({"ip": ip})
    } else if let Some(gateway) = body["nextHopGateway"].as_str() {
        if dest == "0.0.0.0/0" {
            return Err("the network's default route to the internet: left to the network".into());
        }
        json!({"gateway": last_segment(gateway)})
    } else if body["nextHopNetwork"].is_string() || body["nextHopPeering"].is_string() {
        return Err("a subnet or peering route: Compute's own".into());
    } else {
        return Err(
            "its next hop (ILB, VPN tunnel) is not imported: write its VpcRoute by hand".into(),
        );
    };
    let mut spec = json!({
        "cloudRef": cloud.cloud,
        "destRange": dest,
        "priority": body["priority"].as_u64().unwrap_or(1000),
        "nextHop": hop,
    });
    if let Some(tags) = body["tags"].as_array().filter(|t| !t.is_empty()) {
        spec["tags"] = json!(tags);
    }
    let name = kubernetes_name(&target.name);
    let parsed: VpcRouteSpec = serde_json::from_value(spec.clone())
        .map_err(|err| format!("the VpcRoute it suggests is not valid: {err}"))?;
    let desired = super::vpcroute::plan(cloud, namespace, &name, &parsed);
    check(&[desired], &[(target.clone(), body.clone())])?;
    Ok(manifest("VpcRoute", &name, namespace, spec))
}

/// Every desired resource has exactly one of `existing` with its behaviour, and every one of
/// `existing` is wanted.
fn check(desired: &[super::DesiredResource], existing: &[(Target, Value)]) -> Result<(), String> {
    for (_, body) in existing {
        if !desired.iter().any(|d| same_behaviour(d, body)) {
            return Err(format!(
                "what it plans would not reproduce {} exactly",
                body["name"].as_str().unwrap_or_default()
            ));
        }
    }
    for d in desired {
        if !existing.iter().any(|(_, body)| same_behaviour(d, body)) {
            return Err(format!(
                "it would also make {}, which does not exist",
                super::policy::summary(&d.target, &d.body)
            ));
        }
    }
    Ok(())
}

fn manifest(kind: &str, name: &str, namespace: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "adc.dev/v1alpha1",
        "kind": kind,
        "metadata": {
            "name": name,
            "namespace": namespace,
            "annotations": {ADOPT_ANNOTATION: "true"},
        },
        "spec": spec,
    })
}

/// A GCP name as a Kubernetes object name (both are lowercase DNS labels, but GCP allows 63
/// characters and Kubernetes objects here are kept under it as well).
fn kubernetes_name(gcp: &str) -> String {
    let name: String = gcp
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    name.trim_matches('-').chars().take(63).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cloud() -> CloudView {
        CloudView {
            cluster_id: "prod".into(),
            cloud: "gcp".into(),
            project: "p".into(),
            network_project: "p".into(),
            network: "vpc".into(),
            region: "us-central1".into(),
            resource_prefix: "adc-".into(),
        }
    }

    fn route(name: &str, dest: &str, hop: &str, priority: u32) -> (Target, Value) {
        (
            Target::route(name),
            json!({"name": name, "description": "avi", "network": "projects/p/global/networks/vpc",
                "destRange": dest, "priority": priority,
                "nextHopInstance": format!("https://www.googleapis.com/compute/v1/projects/p/zones/us-central1-a/instances/{hop}")}),
        )
    }

    fn rule(name: &str, dest: &str, ports: &[&str]) -> (Target, Value) {
        (
            Target::firewall(name),
            json!({"name": name, "description": "avi", "network": "projects/p/global/networks/vpc",
                "direction": "INGRESS", "priority": 1000, "sourceRanges": ["10.0.0.0/8"],
                "destinationRanges": [dest], "allowed": [{"IPProtocol": "tcp", "ports": ports}]}),
        )
    }

    #[test]
    fn vip_routes_and_their_rule_become_one_virtual_service() {
        let foreign = vec![
            route("avi-a1", "10.9.0.5/32", "se-1", 900),
            route("avi-a2", "10.9.0.5/32", "se-2", 901),
            rule("avi-fw-a", "10.9.0.5/32", &["443", "80"]),
            route("avi-b1", "10.9.0.6/32", "se-1", 900),
            route("avi-b2", "10.9.0.6/32", "se-2", 900),
            rule("avi-fw-b", "10.9.0.6/32", &["8443"]),
        ];
        let out = import(&cloud(), "adc", &foreign, &Filters::default());
        assert_eq!(out.unmapped, vec![]);
        assert_eq!(out.mapped, 6);
        assert_eq!(out.manifests.len(), 2);
        let a = &out.manifests[0];
        assert_eq!(a["metadata"]["name"], "vip-10-9-0-5");
        assert_eq!(a["metadata"]["annotations"]["adc.dev/adopt"], "true");
        assert_eq!(a["spec"]["mode"], "ActiveStandby");
        assert_eq!(a["spec"]["routePriority"], 900);
        assert_eq!(a["spec"]["serviceEngines"][0]["name"], "se-1");
        assert_eq!(out.manifests[1]["spec"]["mode"], "ActiveActive");
    }

    #[test]
    fn what_cannot_be_mapped_is_listed_with_why() {
        let mut tagged = route("tagged", "10.9.0.7/32", "se-1", 900);
        tagged.1["tags"] = json!(["web"]);
        let foreign = vec![
            route("lonely", "10.9.0.5/32", "se-1", 900),
            route("odd-1", "10.9.0.6/32", "se-1", 900),
            route("odd-2", "10.9.0.6/32", "se-2", 905),
            rule("fw-odd", "10.9.0.6/32", &["443"]),
            tagged,
            rule("fw-tagged", "10.9.0.7/32", &["443"]),
            rule("fw-range", "10.9.0.8/32", &["8000-8100"]),
            (
                Target::route("default-route-1"),
                json!({"name": "default-route-1", "network": "global/networks/vpc", "destRange": "0.0.0.0/0",
                    "priority": 1000, "nextHopGateway": "projects/p/global/gateways/default-internet-gateway"}),
            ),
        ];
        let out = import(&cloud(), "adc", &foreign, &Filters::default());
        let reason = |name: &str| {
            out.unmapped
                .iter()
                .find(|(t, _)| t.ends_with(&format!("/{name}")))
                .map(|(_, r)| r.clone())
                .unwrap_or_else(|| panic!("{name} not listed: {:?}", out.unmapped))
        };
        // A /32 to an instance without a rule is a plain static route: a VpcRoute.
        assert_eq!(out.manifests.len(), 1, "{:?}", out.manifests);
        assert_eq!(out.manifests[0]["kind"], "VpcRoute");
        assert!(reason("odd-1").contains("priorities"));
        assert!(reason("tagged").contains("tagged"));
        assert!(reason("fw-range").contains("opens no VIP"));
        assert!(reason("default-route-1").contains("default route"));
    }

    #[test]
    fn filters_narrow_what_is_read() {
        let foreign = vec![
            route("avi-a1", "10.9.0.5/32", "se-1", 900),
            rule("avi-fw-a", "10.9.0.5/32", &["443"]),
            route("tf-b1", "10.9.0.6/32", "se-2", 900),
            rule("tf-fw-b", "10.9.0.6/32", &["443"]),
        ];
        let by_prefix = Filters {
            name_prefix: Some("avi-".into()),
            ..Filters::default()
        };
        let out = import(&cloud(), "adc", &foreign, &by_prefix);
        assert_eq!(out.manifests.len(), 1);
        assert!(out.unmapped.is_empty(), "{:?}", out.unmapped);
        let by_hop = Filters {
            next_hop_instance: Some("se-2".into()),
            ..Filters::default()
        };
        let out = import(&cloud(), "adc", &foreign, &by_hop);
        assert_eq!(out.manifests.len(), 1);
        assert_eq!(out.manifests[0]["metadata"]["name"], "vip-10-9-0-6");
    }
}
