//! A VirtualService in ILB mode: its VIP carried by an internal passthrough load balancer
//! (`plan::ilb`). What it observes: the VIP and the subnetwork it lies in, which pieces exist,
//! and each engine's health as the backend services last reported it (read by the cloud's ILB
//! task, `cloud/balancers.rs`). A switch from Routes mode keeps the object's routes until the
//! load balancer carries the VIP to a healthy engine; a switch back makes the routes before
//! the balancer's pieces go (the shared reconcile deletes only once everything desired exists).

use kube::ResourceExt;

use super::claims::address_claimed_by;
use super::context::{CloudRuntime, Context};
use super::reconcile::Observation;
use super::virtualservice::{Report, claim};
use crate::api::{EngineHealthStatus, GcpResources, HealthState, VipMode, VirtualService};
use crate::gcp::Collection;
use crate::plan::guard::{Surroundings, check_ilb_vip, check_virtual_service};
use crate::plan::ilb::{self, Frontend, Present};
use crate::plan::owner::Owner;
use crate::plan::{DesiredResource, EngineHealth, virtualservice};

/// Observes and plans a VirtualService whose VIP mode is ILB.
pub(super) fn observe(
    object: &VirtualService,
    ctx: &Context,
    runtime: &CloudRuntime,
    owner: &Owner,
) -> Observation<Report> {
    let spec = &object.spec;
    let view = &runtime.view;
    let cloud_spec = &runtime.spec;
    let namespace = object.namespace().unwrap_or_default();
    let name = object.name_any();
    let fixed = spec.vip.address.clone();
    let mut problems = Vec::new();
    if let Some(allocation) = &spec.vip.allocate
        && (allocation.pool.is_some()
            || allocation.r#type != Some(crate::api::AllocationType::Internal))
    {
        problems.push("an ILB VIP is an internal address of a subnetwork (vipMode ILB comes from the GcpCloud's defaultVipMode): vip.allocate must be {type: Internal, subnetwork: ...}, or set vipMode: Routes".to_string());
    }
    let read = runtime.engine.inventory().read(|s| {
        let health = |zone: &str, name: &str| match s.instance(zone, name) {
            Some(instance) if instance.is_running() => EngineHealth::Running,
            Some(_) => EngineHealth::Down,
            None => EngineHealth::Missing,
        };
        let states: Vec<(String, String, EngineHealth)> = spec
            .service_engines
            .iter()
            .map(|e| (e.zone.clone(), e.name.clone(), health(&e.zone, &e.name)))
            .collect();
        let allocated = s.address_of(owner).map(str::to_string);
        let vip = fixed.clone().or_else(|| allocated.clone());
        let taken_by = vip.as_deref().and_then(|vip| {
            s.forwarding_rules()
                .find(|(_, rule)| {
                    rule.ip_address.as_deref() == Some(vip)
                        && Owner::parse(&rule.description).as_ref() != Some(owner)
                })
                .map(|(target, _)| target.to_string())
        });
        let mut present = Present::default();
        for engine in &spec.service_engines {
            let group = ilb::group_target(view, &engine.zone, &engine.name);
            if s.group_ready(&group) {
                present.ready_groups.insert(group);
            }
        }
        let owned = s.owned_by(owner, &view.resource_prefix);
        for (target, _) in &owned {
            if matches!(
                target.collection,
                Collection::HealthChecks
                    | Collection::BackendServices
                    | Collection::ForwardingRules
            ) {
                present.resources.insert(target.clone());
            }
        }
        (
            states,
            allocated,
            taken_by,
            present,
            owned,
            s.subnets(&view.network),
        )
    });
    let (states, allocated, taken_by, present, owned, subnets) = read;
    let vip = fixed.clone().or_else(|| allocated.clone());
    let missing: Vec<String> = states
        .iter()
        .filter(|s| s.2 == EngineHealth::Missing)
        .map(|s| format!("{}/{}", s.0, s.1))
        .collect();
    let existing: Vec<(String, String)> = states
        .iter()
        .filter(|s| s.2 != EngineHealth::Missing)
        .map(|s| (s.0.clone(), s.1.clone()))
        .collect();
    let namespace_allowed = ctx.namespace_allowed(cloud_spec, &namespace);
    // The address and the VIP's firewall rule, as in Routes mode (no engine: no route).
    let base = virtualservice::plan(
        view,
        &namespace,
        &name,
        spec,
        allocated.as_deref(),
        |_, _| EngineHealth::Missing,
        |_, _| None,
    );
    let (vip_subnet, ilb_problems) = check_ilb_vip(vip.as_deref(), &subnets, taken_by.as_deref());
    problems.extend(ilb_problems);
    let subnetwork = spec
        .vip
        .allocate
        .as_ref()
        .and_then(|a| a.subnetwork.clone())
        .or(vip_subnet);
    let around = Surroundings {
        namespace_allowed,
        allowed_ranges: cloud_spec.allowed_destination_ranges.clone(),
        allow_default_route: cloud_spec.allow_default_route,
        vip_claimed_by: vip
            .as_deref()
            .and_then(|vip| address_claimed_by(ctx, &spec.cloud_ref, vip, claim(object, vip))),
        missing_engines: missing,
        // An ILB VIP lies inside a subnetwork by design.
        subnet_ranges: Vec::new(),
        missing_subnetwork: spec
            .vip
            .allocate
            .as_ref()
            .and_then(|a| a.subnetwork.clone())
            .filter(|name| {
                !runtime
                    .engine
                    .inventory()
                    .read(|s| s.has_subnetwork(&view.region, name, &view.network))
            }),
        missing_ilb: None,
    };
    problems.extend(check_virtual_service(
        vip.as_deref(),
        &spec.source_ranges,
        &around,
    ));
    let plan = ilb::plan(
        view,
        (&namespace, &name),
        spec,
        &Frontend {
            vip: vip.as_deref(),
            subnetwork: subnetwork.as_deref(),
        },
        &existing,
        &present,
    );

    // Each engine's health as the backend services report it (HEALTHY in any of them).
    let mut engine_health: Vec<EngineHealthStatus> = spec
        .service_engines
        .iter()
        .map(|e| EngineHealthStatus {
            name: e.name.clone(),
            zone: e.zone.clone(),
            state: HealthState::Unknown,
        })
        .collect();
    for service in &plan.backend_services {
        if !present.resources.contains(service) {
            continue;
        }
        let report = runtime.ilb.of(&service.name);
        for status in &mut engine_health {
            match report.get(&(status.zone.clone(), status.name.clone())) {
                Some(HealthState::Healthy) => status.state = HealthState::Healthy,
                Some(state) if status.state == HealthState::Unknown => status.state = *state,
                _ => {}
            }
        }
    }
    let healthy: Vec<String> = engine_health
        .iter()
        .filter(|e| e.state == HealthState::Healthy)
        .map(|e| e.name.clone())
        .collect();
    // ActiveStandby: the primary while it is healthy, else the healthy standbys (the backend
    // service's failover backends); ActiveActive: every healthy engine.
    let active: Vec<String> = match (spec.mode, spec.service_engines.first()) {
        (crate::api::HaMode::ActiveStandby, Some(primary)) if healthy.contains(&primary.name) => {
            vec![primary.name.clone()]
        }
        _ => healthy,
    };
    let down: Vec<String> = states
        .iter()
        .filter(|s| s.2 == EngineHealth::Down)
        .map(|s| s.1.clone())
        .collect();
    let serving = !active.is_empty()
        && plan
            .forwarding_rules
            .iter()
            .all(|rule| present.resources.contains(rule));

    let firewall = base
        .desired
        .iter()
        .find(|d| d.target.collection == Collection::Firewalls)
        .map(|d| d.target.name.clone());
    let mut desired: Vec<DesiredResource> = base.desired;
    desired.extend(plan.desired.iter().cloned());
    // Routes of Routes mode stay until the balancer carries the VIP (those to running engines:
    // a route to a stopped engine goes at once, as in Routes mode).
    let kept_routes: Vec<DesiredResource> = if serving {
        Vec::new()
    } else {
        owned
            .iter()
            .filter(|(target, body)| {
                target.collection == Collection::Routes
                    && body["nextHopInstance"].as_str().is_none_or(|hop| {
                        !down
                            .iter()
                            .any(|d| hop.ends_with(&format!("/instances/{d}")))
                    })
            })
            .map(|(target, body)| DesiredResource {
                target: target.clone(),
                body: body.clone(),
            })
            .collect()
    };
    let routes: Vec<String> = kept_routes.iter().map(|d| d.target.name.clone()).collect();
    // Until the balancer serves, the VIP the kept routes carry is the one in service.
    let route_vip = kept_routes.iter().find_map(|d| {
        d.body["destRange"]
            .as_str()
            .map(|r| r.trim_end_matches("/32").to_string())
    });
    desired.extend(kept_routes);
    let names = |targets: &[crate::gcp::Target]| -> Vec<String> {
        targets.iter().map(|t| t.name.clone()).collect()
    };
    let resources = GcpResources {
        routes,
        firewall,
        address: base.address.as_ref().map(|t| t.name.clone()),
        instance_groups: plan
            .groups
            .iter()
            .map(|(g, _, _)| format!("{}/{}", g.location, g.name))
            .collect(),
        health_check: Some(plan.health_check.name.clone()),
        backend_services: names(&plan.backend_services),
        forwarding_rules: names(&plan.forwarding_rules),
        shared: false,
    };
    Observation {
        down_engines: down.clone(),
        down_addresses: Vec::new(),
        problems,
        stalled_report: Some(Report {
            vip: vip.clone(),
            mode: VipMode::Ilb,
            ..Report::default()
        }),
        report: Report {
            // The VIP the balancer serves; during a switch from Routes, the one routes serve.
            vip: route_vip.or(base.vip.clone()),
            active,
            down,
            resources: Some(resources),
            address: base.address,
            carried: None,
            mode: if serving
                || owned
                    .iter()
                    .all(|(t, _)| t.collection != Collection::Routes)
            {
                VipMode::Ilb
            } else {
                VipMode::Routes
            },
            engine_health,
            waiting: plan.waiting,
        },
        desired,
        owned,
    }
}
