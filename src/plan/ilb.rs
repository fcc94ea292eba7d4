//! ILB mode: a VirtualService's VIP carried by an internal passthrough Network Load Balancer
//! instead of routes. The object owns a regional health check, one regional backend service
//! and one internal forwarding rule per protocol of its ports (plus, as in Routes mode, its
//! firewall rule and reserved address); the cloud owns one unmanaged instance group per engine,
//! shared by every ILB VirtualService of that engine, and one firewall rule admitting Google's
//! health-check probes.
//!
//! Why a group per engine: Compute lets an instance belong to at most one load-balanced
//! instance group (`instanceInMultipleLoadBalancedIgs`, emulator/README.md), so groups of
//! engine *sets* would collide as soon as two objects share one engine but not all; and
//! ActiveStandby marks the standby engines' groups as failover backends one by one.
//!
//! Compute wants the pieces made in order (a backend service names its health check and
//! groups, a forwarding rule its backend service) and removed in the reverse order (a resource
//! in use is refused): [`plan`] lists a resource only once what it names exists, and
//! [`delete_stage`] picks the deletes that may go now.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use super::names::{content_hash, object_hash, resource_name};
use super::owner::Owner;
use super::resource::{Collection, Target};
use super::shared;
use super::{CloudView, DesiredResource};
use crate::api::{HaMode, HealthCheckProtocol, HealthCheckSpec, Protocol, VirtualServiceSpec};

/// Google's health-check probe ranges for internal passthrough load balancers
/// (emulator/README.md, "Health checks").
pub const HEALTH_CHECK_RANGES: [&str; 2] = ["35.191.0.0/16", "130.211.0.0/22"];

/// Compute's limit on the `ports` of one forwarding rule: beyond it, the rule takes all ports.
pub const MAX_FORWARDING_RULE_PORTS: usize = 5;

/// A link as Compute writes it (backends must be full URLs).
fn link(path: &str) -> String {
    format!("https://www.googleapis.com/compute/v1/{path}")
}

/// The network, as a link into its project (the Shared VPC host, or the cloud's project).
pub fn network_link(cloud: &CloudView) -> String {
    link(&format!(
        "projects/{}/global/networks/{}",
        cloud.network_project, cloud.network
    ))
}

/// A subnetwork of the cloud's region, as a link into the network's project.
pub fn subnetwork_link(cloud: &CloudView, subnetwork: &str) -> String {
    link(&format!(
        "projects/{}/regions/{}/subnetworks/{subnetwork}",
        cloud.network_project, cloud.region
    ))
}

/// The owner of the cloud's ILB pieces (groups, the probe rule): the cloud, under a
/// namespace of their own, so that the VIP pools' layout (which owns the cloud's other shared
/// resources) never takes them for its own.
pub fn owner(cloud: &CloudView) -> Owner {
    Owner::new(
        &cloud.cluster_id,
        &cloud.cloud,
        shared::KIND,
        "ilb",
        &cloud.cloud,
    )
}

/// The prefix of the cloud's ILB pieces' names.
pub fn name_prefix(cloud: &CloudView) -> String {
    owner(cloud).name_prefix(&cloud.resource_prefix)
}

/// The shared instance group of one engine.
pub fn group_target(cloud: &CloudView, zone: &str, engine: &str) -> Target {
    let hash = content_hash(&json!([zone, engine]));
    Target {
        collection: Collection::InstanceGroups,
        location: zone.to_string(),
        name: format!("{}ig{hash}", name_prefix(cloud)),
    }
}

/// The insert body of an engine's shared group: the cloud's marker, the network (a group
/// without one cannot be a backend until it has a member).
pub fn group_body(cloud: &CloudView, target: &Target) -> Value {
    json!({
        "name": target.name,
        "description": owner(cloud).description(),
        "network": network_link(cloud),
    })
}

/// The engine instance a shared group must hold, as a link.
pub fn engine_link(cloud: &CloudView, zone: &str, engine: &str) -> String {
    link(&format!(
        "projects/{}/zones/{zone}/instances/{engine}",
        cloud.project
    ))
}

/// The cloud's probe rule.
pub fn health_firewall_target(cloud: &CloudView) -> Target {
    Target::firewall(format!("{}hc", name_prefix(cloud)))
}

/// The cloud's firewall rule admitting Google's health-check probes on `ports` (TCP), to
/// every instance of the network: the probes of a passthrough load balancer go to the
/// forwarding rule's address on the engines. None when no ILB VirtualService needs one.
pub fn health_firewall(cloud: &CloudView, ports: &BTreeSet<u16>) -> Option<DesiredResource> {
    if ports.is_empty() {
        return None;
    }
    let target = health_firewall_target(cloud);
    let name = target.name.clone();
    let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
    Some(DesiredResource {
        target,
        body: json!({
            "name": name,
            "description": owner(cloud).description(),
            "network": network_link(cloud),
            "direction": "INGRESS",
            "priority": 1000,
            "sourceRanges": HEALTH_CHECK_RANGES,
            "allowed": [{"IPProtocol": "tcp", "ports": ports}],
        }),
    })
}

/// The port the health check probes: `healthCheck.port`, else the first of `ports`.
pub fn health_check_port(spec: &VirtualServiceSpec) -> u16 {
    spec.health_check
        .as_ref()
        .and_then(|h| h.port)
        .or_else(|| spec.ports.first().map(|p| p.port))
        .unwrap_or(80)
}

/// The protocols of the object's ports, each with its ports (sorted, unique).
fn by_protocol(spec: &VirtualServiceSpec) -> Vec<(Protocol, Vec<u16>)> {
    [Protocol::Tcp, Protocol::Udp]
        .into_iter()
        .filter_map(|protocol| {
            let ports: BTreeSet<u16> = spec
                .ports
                .iter()
                .filter(|p| p.protocol == protocol)
                .map(|p| p.port)
                .collect();
            (!ports.is_empty()).then(|| (protocol, ports.into_iter().collect()))
        })
        .collect()
}

fn protocol_name(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Tcp => "TCP",
        Protocol::Udp => "UDP",
    }
}

/// What the plan knows of the object's ILB pieces in Compute.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Present {
    /// Object-owned resources the inventory holds (health check, backend services).
    pub resources: BTreeSet<Target>,
    /// Shared groups that exist and hold their engine.
    pub ready_groups: BTreeSet<Target>,
}

/// Where the VIP is: its address, once known, and the subnetwork (a name in the cloud's
/// region) it lies in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontend<'a> {
    pub vip: Option<&'a str>,
    pub subnetwork: Option<&'a str>,
}

/// An object's ILB resources.
#[derive(Debug, Clone, PartialEq)]
pub struct IlbPlan {
    /// What it wants now, in dependency order: each resource only once what it names exists.
    pub desired: Vec<DesiredResource>,
    /// Every shared group it uses, with its engine: (group, zone, engine).
    pub groups: Vec<(Target, String, String)>,
    pub health_check: Target,
    pub backend_services: Vec<Target>,
    pub forwarding_rules: Vec<Target>,
    /// What the next piece waits for, when not everything is listed yet.
    pub waiting: Option<String>,
}

/// Plans the ILB pieces of a VirtualService whose VIP is at `frontend`; `engines` are its
/// engines that exist, as (zone, name), in spec order.
pub fn plan(
    cloud: &CloudView,
    (namespace, name): (&str, &str),
    spec: &VirtualServiceSpec,
    frontend: &Frontend<'_>,
    engines: &[(String, String)],
    present: &Present,
) -> IlbPlan {
    let kind = super::virtualservice::KIND;
    let object = object_hash(&cloud.cluster_id, kind, namespace, name);
    let description =
        Owner::new(&cloud.cluster_id, &cloud.cloud, kind, namespace, name).description();
    let regional = |collection: Collection, suffix: &str| Target {
        collection,
        location: cloud.region.clone(),
        name: resource_name(&cloud.resource_prefix, &object, suffix),
    };
    let path = |target: &Target| target.path(&cloud.project);

    let groups: Vec<(Target, String, String)> = engines
        .iter()
        .map(|(zone, engine)| {
            (
                group_target(cloud, zone, engine),
                zone.clone(),
                engine.clone(),
            )
        })
        .collect();
    let protocols = by_protocol(spec);
    let health_check = regional(Collection::HealthChecks, "hc");
    let backend_services: Vec<Target> = protocols
        .iter()
        .map(|(p, _)| {
            regional(
                Collection::BackendServices,
                &format!("bs-{}", protocol_name(*p).to_lowercase()),
            )
        })
        .collect();
    let forwarding_rules: Vec<Target> = protocols
        .iter()
        .map(|(p, _)| {
            regional(
                Collection::ForwardingRules,
                &format!("fr-{}", protocol_name(*p).to_lowercase()),
            )
        })
        .collect();

    let mut desired = vec![DesiredResource {
        target: health_check.clone(),
        body: health_check_body(&health_check.name, &description, spec),
    }];
    let mut waiting = None;
    let unready: Vec<String> = groups
        .iter()
        .filter(|(g, _, _)| !present.ready_groups.contains(g))
        .map(|(_, zone, engine)| format!("{zone}/{engine}"))
        .collect();
    if groups.is_empty() {
        waiting = Some("an engine that exists".to_string());
    } else if !present.resources.contains(&health_check) {
        waiting = Some(format!("health check {}", health_check.name));
    } else if !unready.is_empty() {
        waiting = Some(format!("the instance groups of {}", unready.join(", ")));
    } else {
        for (target, (protocol, _)) in backend_services.iter().zip(&protocols) {
            let backends: Vec<Value> = groups
                .iter()
                .enumerate()
                .map(|(i, (group, _, _))| {
                    let mut backend = json!({"group": link(&group.path(&cloud.project)), "balancingMode": "CONNECTION"});
                    if spec.mode == HaMode::ActiveStandby && i > 0 {
                        backend["failover"] = json!(true);
                    }
                    backend
                })
                .collect();
            let mut body = json!({
                "name": target.name,
                "description": description,
                "loadBalancingScheme": "INTERNAL",
                "protocol": protocol_name(*protocol),
                "network": network_link(cloud),
                "healthChecks": [link(&path(&health_check))],
                "backends": backends,
            });
            if spec.mode == HaMode::ActiveStandby && groups.len() > 1 {
                // Failover when no primary backend is healthy; keep serving the primary
                // when every engine fails its check (Compute's defaults, written out).
                body["failoverPolicy"] = json!({"dropTrafficIfUnhealthy": false});
            }
            desired.push(DesiredResource {
                target: target.clone(),
                body,
            });
        }
        match (frontend.vip, frontend.subnetwork) {
            (None, _) => waiting = Some("the VIP's address".to_string()),
            (Some(_), None) => waiting = Some("a subnetwork holding the VIP".to_string()),
            (Some(vip), Some(subnetwork)) => {
                for ((target, (protocol, ports)), service) in forwarding_rules
                    .iter()
                    .zip(&protocols)
                    .zip(&backend_services)
                {
                    if !present.resources.contains(service) {
                        waiting.get_or_insert_with(|| format!("backend service {}", service.name));
                        continue;
                    }
                    let mut body = json!({
                        "name": target.name,
                        "description": description,
                        "loadBalancingScheme": "INTERNAL",
                        "IPAddress": vip,
                        "IPProtocol": protocol_name(*protocol),
                        "backendService": link(&path(service)),
                        "network": network_link(cloud),
                        "subnetwork": subnetwork_link(cloud, subnetwork),
                    });
                    if ports.len() > MAX_FORWARDING_RULE_PORTS {
                        body["allPorts"] = json!(true);
                    } else {
                        body["ports"] = json!(ports.iter().map(u16::to_string).collect::<Vec<_>>());
                    }
                    desired.push(DesiredResource {
                        target: target.clone(),
                        body,
                    });
                }
            }
        }
    }
    IlbPlan {
        desired,
        groups,
        health_check,
        backend_services,
        forwarding_rules,
        waiting,
    }
}

/// The health check's insert body.
fn health_check_body(name: &str, description: &str, spec: &VirtualServiceSpec) -> Value {
    let check = spec.health_check.clone().unwrap_or_default();
    let HealthCheckSpec {
        protocol,
        request_path,
        check_interval_seconds,
        timeout_seconds,
        healthy_threshold,
        unhealthy_threshold,
        ..
    } = check;
    let port = health_check_port(spec);
    let mut body = json!({
        "name": name,
        "description": description,
        "checkIntervalSec": check_interval_seconds,
        "timeoutSec": timeout_seconds,
        "healthyThreshold": healthy_threshold,
        "unhealthyThreshold": unhealthy_threshold,
    });
    match protocol {
        HealthCheckProtocol::Tcp => {
            body["type"] = json!("TCP");
            body["tcpHealthCheck"] = json!({"port": port, "portSpecification": "USE_FIXED_PORT"});
        }
        HealthCheckProtocol::Http => {
            body["type"] = json!("HTTP");
            body["httpHealthCheck"] = json!({
                "port": port,
                "portSpecification": "USE_FIXED_PORT",
                "requestPath": request_path.unwrap_or_else(|| "/".to_string()),
            });
        }
    }
    body
}

/// Whether Compute changes a resource of this collection in place (`patch`) rather than
/// through a delete and an insert: health checks and backend services are named by the
/// resources that use them and cannot go while they do.
pub fn patched_in_place(collection: Collection) -> bool {
    matches!(
        collection,
        Collection::HealthChecks | Collection::BackendServices
    )
}

/// How early a resource must go when an object gives its ILB pieces up: what uses another
/// resource goes before it (forwarding rules, then backend services, then health checks;
/// addresses once no forwarding rule holds them).
fn delete_rank(collection: Collection) -> u8 {
    match collection {
        Collection::ForwardingRules => 0,
        Collection::BackendServices | Collection::Addresses | Collection::GlobalAddresses => 1,
        Collection::HealthChecks | Collection::InstanceGroups => 2,
        Collection::Routes | Collection::Firewalls | Collection::TargetInstances => 0,
    }
}

/// The deletes that may be sent now: those of the lowest rank among `deletes`, in their order.
/// The others follow once those are gone (each completion requeues the object).
pub fn delete_stage(deletes: &[Target]) -> Vec<Target> {
    let Some(lowest) = deletes.iter().map(|t| delete_rank(t.collection)).min() else {
        return Vec::new();
    };
    deletes
        .iter()
        .filter(|t| delete_rank(t.collection) == lowest)
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ServiceEngineRef, ServicePort, Vip};

    fn cloud() -> CloudView {
        CloudView {
            cluster_id: "c1".into(),
            cloud: "cloud".into(),
            project: "svc-project".into(),
            network_project: "host-project".into(),
            network: "shared".into(),
            region: "us-central1".into(),
            resource_prefix: "adc-".into(),
        }
    }

    fn spec(mode: HaMode, ports: &[(u16, Protocol)]) -> VirtualServiceSpec {
        VirtualServiceSpec {
            cloud_ref: "cloud".into(),
            vip: Vip {
                address: Some("10.128.0.50".into()),
                allocate: None,
            },
            ports: ports
                .iter()
                .map(|&(port, protocol)| ServicePort { port, protocol })
                .collect(),
            source_ranges: vec!["10.0.0.0/8".into()],
            service_engines: ["se-1", "se-2"]
                .iter()
                .map(|n| ServiceEngineRef {
                    name: (*n).into(),
                    zone: "us-central1-a".into(),
                })
                .collect(),
            mode,
            route_priority: 2000,
            vip_mode: Some(crate::api::VipMode::Ilb),
            health_check: None,
        }
    }

    fn engines() -> Vec<(String, String)> {
        vec![
            ("us-central1-a".into(), "se-1".into()),
            ("us-central1-a".into(), "se-2".into()),
        ]
    }

    fn planned(spec: &VirtualServiceSpec, present: &Present) -> IlbPlan {
        plan(
            &cloud(),
            ("ns", "web"),
            spec,
            &Frontend {
                vip: Some("10.128.0.50"),
                subnetwork: Some("se-subnet"),
            },
            &engines(),
            present,
        )
    }

    fn everything(plan: &IlbPlan) -> Present {
        Present {
            resources: std::iter::once(plan.health_check.clone())
                .chain(plan.backend_services.iter().cloned())
                .collect(),
            ready_groups: plan.groups.iter().map(|g| g.0.clone()).collect(),
        }
    }

    #[test]
    fn pieces_come_in_dependency_order() {
        let spec = spec(HaMode::ActiveActive, &[(443, Protocol::Tcp)]);
        let first = planned(&spec, &Present::default());
        assert_eq!(first.desired.len(), 1, "only the health check at first");
        assert_eq!(first.desired[0].target.collection, Collection::HealthChecks);
        assert!(first.waiting.as_deref().unwrap().contains("health check"));

        let hc_only = Present {
            resources: [first.health_check.clone()].into(),
            ready_groups: BTreeSet::new(),
        };
        let second = planned(&spec, &hc_only);
        assert_eq!(
            second.desired.len(),
            1,
            "the groups must hold their engines first"
        );
        assert!(
            second
                .waiting
                .as_deref()
                .unwrap()
                .contains("us-central1-a/se-1")
        );

        let mut groups_ready = hc_only.clone();
        groups_ready.ready_groups = second.groups.iter().map(|g| g.0.clone()).collect();
        let third = planned(&spec, &groups_ready);
        assert_eq!(
            third
                .desired
                .iter()
                .map(|d| d.target.collection)
                .collect::<Vec<_>>(),
            [Collection::HealthChecks, Collection::BackendServices]
        );
        assert!(
            third
                .waiting
                .as_deref()
                .unwrap()
                .contains("backend service")
        );

        let all = planned(&spec, &everything(&third));
        assert_eq!(all.desired.len(), 3);
        assert_eq!(all.waiting, None);
        let rule = &all.desired[2].body;
        assert_eq!(rule["IPAddress"], "10.128.0.50");
        assert_eq!(rule["ports"], json!(["443"]));
        assert_eq!(rule["loadBalancingScheme"], "INTERNAL");
        assert_eq!(
            rule["subnetwork"],
            "https://www.googleapis.com/compute/v1/projects/host-project/regions/us-central1/subnetworks/se-subnet",
            "Shared VPC: the host's subnetwork"
        );
        assert!(
            rule["backendService"]
                .as_str()
                .unwrap()
                .contains("/projects/svc-project/regions/us-central1/backendServices/")
        );
    }

    #[test]
    fn active_standby_makes_the_standby_groups_failover_backends() {
        let active_standby = spec(HaMode::ActiveStandby, &[(443, Protocol::Tcp)]);
        let p = planned(&active_standby, &Present::default());
        let p = planned(&active_standby, &everything(&p));
        let service = &p.desired[1].body;
        let backends = service["backends"].as_array().unwrap();
        assert_eq!(backends.len(), 2);
        assert_eq!(
            backends[0].get("failover"),
            None,
            "the first engine is primary"
        );
        assert_eq!(backends[1]["failover"], true);
        assert!(service.get("failoverPolicy").is_some());
        for backend in backends {
            assert!(backend["group"].as_str().unwrap().starts_with("https://www.googleapis.com/compute/v1/projects/svc-project/zones/us-central1-a/instanceGroups/"));
            assert_eq!(backend["balancingMode"], "CONNECTION");
        }
        let active_active = spec(HaMode::ActiveActive, &[(443, Protocol::Tcp)]);
        let aa = planned(&active_active, &everything(&p));
        assert!(
            aa.desired[1].body["backends"]
                .as_array()
                .unwrap()
                .iter()
                .all(|b| b.get("failover").is_none())
        );
        assert!(aa.desired[1].body.get("failoverPolicy").is_none());
    }

    #[test]
    fn each_protocol_gets_its_service_and_rule_and_many_ports_take_all() {
        let ports: Vec<(u16, Protocol)> = (1..=6)
            .map(|p| (p * 100, Protocol::Tcp))
            .chain([(53, Protocol::Udp)])
            .collect();
        let spec = spec(HaMode::ActiveActive, &ports);
        let p = planned(&spec, &Present::default());
        let p = planned(&spec, &everything(&p));
        assert_eq!(p.backend_services.len(), 2);
        assert_eq!(p.forwarding_rules.len(), 2);
        let rules: Vec<&Value> = p
            .desired
            .iter()
            .filter(|d| d.target.collection == Collection::ForwardingRules)
            .map(|d| &d.body)
            .collect();
        assert_eq!(rules[0]["IPProtocol"], "TCP");
        assert_eq!(
            rules[0]["allPorts"], true,
            "six TCP ports: more than a rule's five"
        );
        assert!(rules[0].get("ports").is_none());
        assert_eq!(rules[1]["IPProtocol"], "UDP");
        assert_eq!(rules[1]["ports"], json!(["53"]));
    }

    #[test]
    fn the_health_check_probes_the_first_port_unless_told() {
        let mut spec = spec(
            HaMode::ActiveActive,
            &[(8443, Protocol::Tcp), (80, Protocol::Tcp)],
        );
        let p = planned(&spec, &Present::default());
        assert_eq!(p.desired[0].body["type"], "TCP");
        assert_eq!(p.desired[0].body["tcpHealthCheck"]["port"], 8443);
        assert_eq!(p.desired[0].body["checkIntervalSec"], 5);
        spec.health_check = Some(HealthCheckSpec {
            protocol: HealthCheckProtocol::Http,
            port: Some(8080),
            request_path: Some("/healthz".into()),
            ..HealthCheckSpec::default()
        });
        let p = planned(&spec, &Present::default());
        assert_eq!(p.desired[0].body["type"], "HTTP");
        assert_eq!(
            p.desired[0].body["httpHealthCheck"],
            json!({"port": 8080, "portSpecification": "USE_FIXED_PORT", "requestPath": "/healthz"})
        );
        assert_eq!(health_check_port(&spec), 8080);
    }

    #[test]
    fn groups_are_per_engine_and_shared_by_name() {
        let a = group_target(&cloud(), "us-central1-a", "se-1");
        assert_eq!(a, group_target(&cloud(), "us-central1-a", "se-1"));
        assert_ne!(a, group_target(&cloud(), "us-central1-a", "se-2"));
        assert_ne!(a, group_target(&cloud(), "us-central1-b", "se-1"));
        assert!(a.name.starts_with(&name_prefix(&cloud())));
        assert_ne!(
            name_prefix(&cloud()),
            shared::name_prefix(&cloud()),
            "not the pools' layout's"
        );
        assert!(a.name.len() <= 63);
        let body = group_body(&cloud(), &a);
        assert!(body["description"].as_str().unwrap().contains("/GcpCloud/"));
        assert_eq!(
            engine_link(&cloud(), "us-central1-a", "se-1"),
            "https://www.googleapis.com/compute/v1/projects/svc-project/zones/us-central1-a/instances/se-1"
        );
    }

    #[test]
    fn the_probe_rule_opens_the_check_ports_to_googles_ranges() {
        assert_eq!(health_firewall(&cloud(), &BTreeSet::new()), None);
        let rule = health_firewall(&cloud(), &[443, 80].into()).unwrap();
        assert_eq!(rule.body["sourceRanges"], json!(HEALTH_CHECK_RANGES));
        assert_eq!(
            rule.body["allowed"],
            json!([{"IPProtocol": "tcp", "ports": ["80", "443"]}])
        );
        assert!(
            rule.body["network"]
                .as_str()
                .unwrap()
                .contains("/projects/host-project/")
        );
    }

    #[test]
    fn deletes_go_users_first() {
        let t = |collection, name: &str| Target {
            collection,
            location: "us-central1".into(),
            name: name.into(),
        };
        let all = vec![
            t(Collection::HealthChecks, "hc"),
            t(Collection::BackendServices, "bs"),
            Target::firewall("fw"),
            t(Collection::ForwardingRules, "fr"),
            t(Collection::Addresses, "vip"),
        ];
        assert_eq!(
            delete_stage(&all),
            vec![Target::firewall("fw"), t(Collection::ForwardingRules, "fr")]
        );
        assert_eq!(
            delete_stage(&all[..2]),
            vec![t(Collection::BackendServices, "bs")]
        );
        assert_eq!(
            delete_stage(&all[..1]),
            vec![t(Collection::HealthChecks, "hc")]
        );
        assert!(delete_stage(&[]).is_empty());
        assert!(patched_in_place(Collection::BackendServices));
        assert!(!patched_in_place(Collection::ForwardingRules));
    }
}
