//! A VirtualService becomes: one route per serving engine (`VIP/32` → engine instance, priority
//! by mode), one firewall rule allowing its ports from its source ranges to the VIP, and with
//! `allocate` one reserved address.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::names::{content_hash, object_hash, resource_name};
use super::owner::Owner;
use super::resource::{Collection, Target};
use super::{CloudView, DesiredResource, EngineHealth};
use crate::api::{AllocationType, HaMode, Protocol, VirtualServiceSpec};

/// The kind name in ownership markers.
pub const KIND: &str = <crate::api::VirtualService as crate::api::FleetObject>::KIND;

/// The plan of one VirtualService.
#[derive(Debug, Clone, PartialEq)]
pub struct VirtualServicePlan {
    /// Every GCP resource it wants, the address first.
    pub desired: Vec<DesiredResource>,
    /// The VIP, once known (fixed, or the allocated address's IP).
    pub vip: Option<String>,
    /// Engines that carry traffic, in spec order (the primary first in ActiveStandby).
    pub active_engines: Vec<String>,
    /// Engines that exist but are not RUNNING.
    pub down_engines: Vec<String>,
    /// The reserved address's target, with `allocate`.
    pub address: Option<Target>,
}

/// Plans a VirtualService. `allocated_ip` is the address the inventory shows for the reserved
/// address (None until it exists), or the address given from a VIP pool; `engine_health` tells
/// each engine's state; `engine_ip` its internal address, which a Shared VPC's routes name
/// (`nextHopIp`): Compute takes a `nextHopInstance` only in the route's own project.
pub fn plan(
    cloud: &CloudView,
    namespace: &str,
    name: &str,
    spec: &VirtualServiceSpec,
    allocated_ip: Option<&str>,
    engine_health: impl Fn(&str, &str) -> EngineHealth,
    engine_ip: impl Fn(&str, &str) -> Option<String>,
) -> VirtualServicePlan {
    let object = object_hash(&cloud.cluster_id, KIND, namespace, name);
    let description =
        Owner::new(&cloud.cluster_id, &cloud.cloud, KIND, namespace, name).description();
    let network = format!("global/networks/{}", cloud.network);
    let mut desired = Vec::new();

    let mut address = None;
    let vip = match (&spec.vip.address, &spec.vip.allocate) {
        (Some(ip), _) => Some(ip.clone()),
        // An address of a VIP pool: the controller's allocation, nothing reserved in GCP.
        (None, Some(allocation)) if allocation.pool.is_some() => allocated_ip.map(str::to_string),
        (None, Some(allocation)) => {
            let internal = allocation.r#type == Some(AllocationType::Internal);
            let mut body = json!({
                "name": resource_name(&cloud.resource_prefix, &object, "vip"),
                "description": description,
                "addressType": if internal { "INTERNAL" } else { "EXTERNAL" },
            });
            if internal {
                body["purpose"] = json!("GCE_ENDPOINT");
                if let Some(subnetwork) = &allocation.subnetwork {
                    body["subnetwork"] = if cloud.network_project == cloud.project {
                        json!(format!("regions/{}/subnetworks/{subnetwork}", cloud.region))
                    } else {
                        // A Shared VPC host's subnetwork, by its full path.
                        json!(super::ilb::subnetwork_link(cloud, subnetwork))
                    };
                }
            }
            let target = Target {
                collection: Collection::Addresses,
                location: cloud.region.clone(),
                name: resource_name(&cloud.resource_prefix, &object, "vip"),
            };
            address = Some(target.clone());
            desired.push(DesiredResource { target, body });
            allocated_ip.map(str::to_string)
        }
        (None, None) => None,
    };

    let mut active_engines = Vec::new();
    let mut down_engines = Vec::new();
    for engine in &spec.service_engines {
        match engine_health(&engine.zone, &engine.name) {
            EngineHealth::Running => active_engines.push(engine.name.clone()),
            EngineHealth::Down => down_engines.push(engine.name.clone()),
            EngineHealth::Missing => {}
        }
    }
    let Some(vip) = vip else {
        return VirtualServicePlan {
            desired,
            vip: None,
            active_engines,
            down_engines,
            address,
        };
    };

    let shared_vpc = cloud.network_project != cloud.project;
    for hop in hops(spec, &engine_health) {
        let mut body = if shared_vpc {
            // An engine whose address is not known yet gets its route once it is.
            let Some(ip) = engine_ip(&hop.zone, &hop.instance) else {
                continue;
            };
            json!({
                "description": description,
                "network": super::ilb::network_link(cloud),
                "destRange": format!("{vip}/32"),
                "priority": hop.priority,
                "nextHopIp": ip,
            })
        } else {
            json!({
                "description": description,
                "network": network,
                "destRange": format!("{vip}/32"),
                "priority": hop.priority,
                "nextHopInstance": format!("projects/{}/zones/{}/instances/{}", cloud.project, hop.zone, hop.instance),
            })
        };
        let route_name = resource_name(&cloud.resource_prefix, &object, &content_hash(&body));
        body["name"] = json!(route_name);
        desired.push(DesiredResource {
            target: Target::route(route_name),
            body,
        });
    }

    let opening = opening(spec);
    let mut firewall = json!({
        "description": description,
        "network": network,
        "direction": "INGRESS",
        "priority": 1000,
        "sourceRanges": opening.sources,
        "destinationRanges": [format!("{vip}/32")],
        "allowed": opening.allowed_json(),
    });
    let firewall_name = resource_name(
        &cloud.resource_prefix,
        &object,
        &format!("fw{}", &content_hash(&firewall)[..6]),
    );
    firewall["name"] = json!(firewall_name);
    desired.push(DesiredResource {
        target: Target::firewall(firewall_name),
        body: firewall,
    });

    VirtualServicePlan {
        desired,
        vip: Some(vip),
        active_engines,
        down_engines,
        address,
    }
}

/// One route a VIP selects: the engine it goes to and the route's priority.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Hop {
    pub zone: String,
    pub instance: String,
    pub priority: u32,
}

/// The routes a VirtualService's VIP must select: one per RUNNING engine, at `routePriority`
/// (ActiveActive), or the first RUNNING engine at `routePriority` and the others one step
/// lower (ActiveStandby).
pub fn hops(
    spec: &VirtualServiceSpec,
    engine_health: impl Fn(&str, &str) -> EngineHealth,
) -> Vec<Hop> {
    let mut hops: Vec<Hop> = Vec::new();
    for engine in &spec.service_engines {
        if engine_health(&engine.zone, &engine.name) != EngineHealth::Running {
            continue;
        }
        let priority = match spec.mode {
            HaMode::ActiveActive => spec.route_priority,
            // The first healthy engine is primary; every other healthy one stands by one
            // priority step lower (a higher number).
            HaMode::ActiveStandby if hops.is_empty() => spec.route_priority,
            HaMode::ActiveStandby => spec.route_priority.saturating_add(1).min(65535),
        };
        hops.push(Hop {
            zone: engine.zone.clone(),
            instance: engine.name.clone(),
            priority,
        });
    }
    hops
}

/// What a VIP's firewall rule lets in: ports by protocol and source ranges, both sorted, so
/// that two VirtualServices asking for the same compare equal.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Opening {
    /// (`tcp`|`udp`, ports as strings), by protocol.
    pub allowed: Vec<(String, Vec<String>)>,
    pub sources: Vec<String>,
}

impl Opening {
    /// The firewall rule's `allowed` field.
    pub fn allowed_json(&self) -> Value {
        Value::Array(
            self.allowed
                .iter()
                .map(|(protocol, ports)| json!({"IPProtocol": protocol, "ports": ports}))
                .collect(),
        )
    }
}

/// The opening a VirtualService asks for.
pub fn opening(spec: &VirtualServiceSpec) -> Opening {
    let mut by_protocol: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for port in &spec.ports {
        let protocol = match port.protocol {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        };
        by_protocol
            .entry(protocol)
            .or_default()
            .push(port.port.to_string());
    }
    let allowed = by_protocol
        .into_iter()
        .map(|(protocol, mut ports)| {
            ports.sort();
            ports.dedup();
            (protocol.to_string(), ports)
        })
        .collect();
    let mut sources = spec.source_ranges.clone();
    sources.sort();
    sources.dedup();
    Opening { allowed, sources }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ServiceEngineRef, ServicePort, Vip, VipAllocation};

    fn cloud() -> CloudView {
        CloudView {
            cluster_id: "c1".into(),
            cloud: "cloud".into(),
            project: "demo-project".into(),
            network_project: "demo-project".into(),
            network: "default".into(),
            region: "us-central1".into(),
            resource_prefix: "adc-".into(),
        }
    }

    fn spec(mode: HaMode) -> VirtualServiceSpec {
        VirtualServiceSpec {
            cloud_ref: "cloud".into(),
            vip: Vip {
                address: Some("10.10.0.5".into()),
                allocate: None,
            },
            ports: vec![
                ServicePort {
                    port: 443,
                    protocol: Protocol::Tcp,
                },
                ServicePort {
                    port: 80,
                    protocol: Protocol::Tcp,
                },
            ],
            source_ranges: vec!["10.0.0.0/8".into()],
            service_engines: vec![
                ServiceEngineRef {
                    name: "se-1".into(),
                    zone: "us-central1-a".into(),
                },
                ServiceEngineRef {
                    name: "se-2".into(),
                    zone: "us-central1-b".into(),
                },
            ],
            mode,
            route_priority: 2000,
            vip_mode: None,
            health_check: None,
        }
    }

    fn routes(plan: &VirtualServicePlan) -> Vec<(String, u64)> {
        plan.desired
            .iter()
            .filter(|d| d.target.collection == Collection::Routes)
            .map(|d| {
                (
                    d.body["nextHopInstance"]
                        .as_str()
                        .unwrap()
                        .rsplit('/')
                        .next()
                        .unwrap()
                        .to_string(),
                    d.body["priority"].as_u64().unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn active_active_routes_every_running_engine_equally() {
        let plan = plan(
            &cloud(),
            "team-a",
            "web",
            &spec(HaMode::ActiveActive),
            None,
            |_, _| EngineHealth::Running,
            |_, _| None,
        );
        assert_eq!(
            routes(&plan),
            vec![("se-1".into(), 2000), ("se-2".into(), 2000)]
        );
        assert_eq!(plan.active_engines, ["se-1", "se-2"]);
        let firewall = plan
            .desired
            .iter()
            .find(|d| d.target.collection == Collection::Firewalls)
            .unwrap();
        assert_eq!(
            firewall.body["allowed"],
            json!([{"IPProtocol": "tcp", "ports": ["443", "80"]}])
        );
        assert_eq!(firewall.body["destinationRanges"], json!(["10.10.0.5/32"]));
        assert!(
            firewall.body["description"]
                .as_str()
                .unwrap()
                .contains("adc.dev/owner=c1/cloud/VirtualService/team-a/web")
        );
    }

    #[test]
    fn a_stopped_engine_is_withdrawn_or_replaced_by_its_standby() {
        let health = |_: &str, name: &str| {
            if name == "se-1" {
                EngineHealth::Down
            } else {
                EngineHealth::Running
            }
        };
        let aa = plan(
            &cloud(),
            "ns",
            "web",
            &spec(HaMode::ActiveActive),
            None,
            health,
            |_, _| None,
        );
        assert_eq!(routes(&aa), vec![("se-2".into(), 2000)]);
        assert_eq!(aa.down_engines, ["se-1"]);
        let healthy = plan(
            &cloud(),
            "ns",
            "web",
            &spec(HaMode::ActiveStandby),
            None,
            |_, _| EngineHealth::Running,
            |_, _| None,
        );
        assert_eq!(
            routes(&healthy),
            vec![("se-1".into(), 2000), ("se-2".into(), 2001)]
        );
        let failed_over = plan(
            &cloud(),
            "ns",
            "web",
            &spec(HaMode::ActiveStandby),
            None,
            health,
            |_, _| None,
        );
        assert_eq!(routes(&failed_over), vec![("se-2".into(), 2000)]);
        // The promoted route is a different resource (new content, new name): make-before-break.
        let before = healthy
            .desired
            .iter()
            .find(|d| {
                d.body["nextHopInstance"]
                    .as_str()
                    .unwrap()
                    .ends_with("se-2")
            })
            .unwrap();
        let after = failed_over
            .desired
            .iter()
            .find(|d| d.target.collection == Collection::Routes)
            .unwrap();
        assert_ne!(before.target.name, after.target.name);
    }

    #[test]
    fn planning_is_deterministic_and_names_fit_gcp() {
        let a = plan(
            &cloud(),
            "ns",
            "web",
            &spec(HaMode::ActiveActive),
            None,
            |_, _| EngineHealth::Running,
            |_, _| None,
        );
        let b = plan(
            &cloud(),
            "ns",
            "web",
            &spec(HaMode::ActiveActive),
            None,
            |_, _| EngineHealth::Running,
            |_, _| None,
        );
        assert_eq!(a, b);
        for resource in &a.desired {
            assert!(resource.target.name.len() <= 63 && resource.target.name.starts_with("adc-"));
        }
    }

    #[test]
    fn an_allocated_vip_waits_for_its_address() {
        let mut allocated = spec(HaMode::ActiveActive);
        allocated.vip = Vip {
            address: None,
            allocate: Some(VipAllocation {
                r#type: Some(AllocationType::Internal),
                subnetwork: Some("se-subnet".into()),
                pool: None,
            }),
        };
        let waiting = plan(
            &cloud(),
            "ns",
            "web",
            &allocated,
            None,
            |_, _| EngineHealth::Running,
            |_, _| None,
        );
        assert_eq!(
            waiting.desired.len(),
            1,
            "only the address until its IP is known"
        );
        assert_eq!(
            waiting.desired[0].body["subnetwork"],
            "regions/us-central1/subnetworks/se-subnet"
        );
        let ready = plan(
            &cloud(),
            "ns",
            "web",
            &allocated,
            Some("10.130.0.7"),
            |_, _| EngineHealth::Running,
            |_, _| None,
        );
        assert_eq!(ready.vip.as_deref(), Some("10.130.0.7"));
        assert_eq!(ready.desired.len(), 4);
    }

    #[test]
    fn a_shared_vpc_routes_by_the_engines_address_and_follows_it() {
        let mut host = cloud();
        host.network_project = "host-project".into();
        let ip = |address: &'static str| {
            move |_: &str, name: &str| (name == "se-1").then(|| address.to_string())
        };
        let first = plan(
            &host,
            "ns",
            "web",
            &spec(HaMode::ActiveActive),
            None,
            |_, _| EngineHealth::Running,
            ip("10.128.0.10"),
        );
        let routes: Vec<&DesiredResource> = first
            .desired
            .iter()
            .filter(|d| d.target.collection == Collection::Routes)
            .collect();
        assert_eq!(
            routes.len(),
            1,
            "se-2's address is not known yet: no route to it"
        );
        assert_eq!(routes[0].body["nextHopIp"], "10.128.0.10");
        assert!(routes[0].body.get("nextHopInstance").is_none());
        assert_eq!(
            routes[0].body["network"],
            "https://www.googleapis.com/compute/v1/projects/host-project/global/networks/default"
        );
        // The engine's address changes: a new route (a new name), made before the old goes.
        let moved = plan(
            &host,
            "ns",
            "web",
            &spec(HaMode::ActiveActive),
            None,
            |_, _| EngineHealth::Running,
            ip("10.128.0.77"),
        );
        let route = moved
            .desired
            .iter()
            .find(|d| d.target.collection == Collection::Routes)
            .unwrap();
        assert_eq!(route.body["nextHopIp"], "10.128.0.77");
        assert_ne!(route.target.name, routes[0].target.name);
    }
}
