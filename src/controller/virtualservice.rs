//! VirtualService: what it adds to the shared reconcile (`reconcile.rs`): engine health from
//! the inventory, the VIP (fixed, or reserved and read back), routes to every RUNNING engine,
//! and its status (VIP, active engines, the GCP resources).

use std::time::Duration;

use kube::ResourceExt;

use super::claims::{Claim, address_claimed_by, stalled};
use super::context::{CloudRuntime, Context};
use super::error::Error;
use super::pools::{Membership, key, overlapped_subnet};
use super::reconcile::{Bookkeeping, Kind, Observation, Step};
use super::status::Phase;
use crate::api::{GcpResources, VipMode, VirtualService, VirtualServiceStatus};
use crate::gcp::{Collection, Target};
use crate::plan::diff::Diff;
use crate::plan::guard::{Surroundings, check_virtual_service};
use crate::plan::owner::Owner;
use crate::plan::virtualservice::{Hop, hops, opening};
use crate::plan::{DesiredResource, EngineHealth, virtualservice};
use std::collections::BTreeSet;
use std::net::Ipv4Addr;

pub use super::reconcile::FINALIZER;

/// What a VirtualService's status shows besides its conditions.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub vip: Option<String>,
    pub active: Vec<String>,
    /// Engines that are down (the NoHealthyEngine message names them; not in the status).
    pub down: Vec<String>,
    /// None while stalled: the resources listed before stay listed.
    pub resources: Option<GcpResources>,
    /// The address reserved for an allocated VIP.
    pub(super) address: Option<Target>,
    /// For a VIP of a pool: whether the cloud's shared resources carry it exactly yet.
    pub(super) carried: Option<bool>,
    /// The mode that carries the VIP now.
    pub mode: VipMode,
    /// ILB mode: each engine's health as the load balancer reports it.
    pub engine_health: Vec<crate::api::EngineHealthStatus>,
    /// ILB mode: what the next piece of the load balancer waits for.
    pub waiting: Option<String>,
}

/// This VirtualService as a claimant of `address`.
pub(super) fn claim(object: &VirtualService, address: &str) -> Claim {
    let holding = object
        .status
        .as_ref()
        .is_some_and(|s| s.vip.as_deref() == Some(address) && !stalled(&s.conditions));
    Claim::of(virtualservice::KIND, object, holding)
}

impl Kind for VirtualService {
    type Status = VirtualServiceStatus;
    type Report = Report;
    const ZONES_FIELD: &'static str = "spec.serviceEngines";
    const RESOURCES: &'static str = "GCP resource(s)";

    fn status(&self) -> Option<&VirtualServiceStatus> {
        self.status.as_ref()
    }

    fn bookkeeping(status: &mut VirtualServiceStatus) -> Bookkeeping<'_> {
        (
            &mut status.observed_generation,
            &mut status.conditions,
            &mut status.plan,
        )
    }

    fn fill(status: &mut VirtualServiceStatus, report: Option<&Report>) {
        status.vip = report.and_then(|r| r.vip.clone());
        status.active_service_engines = report.map(|r| r.active.clone()).unwrap_or_default();
        if let Some(report) = report {
            status.vip_mode = Some(report.mode);
            status.engine_health = report.engine_health.clone();
        }
        if let Some(resources) = report.and_then(|r| r.resources.clone()) {
            status.resources = Some(resources);
        }
    }

    fn zones(&self) -> Vec<&str> {
        self.spec
            .service_engines
            .iter()
            .map(|e| e.zone.as_str())
            .collect()
    }

    async fn observe<'a>(
        &'a self,
        ctx: &'a Context,
        runtime: &'a CloudRuntime,
        owner: &'a Owner,
    ) -> Result<Observation<Report>, Error> {
        Ok(observe(self, ctx, runtime, owner))
    }

    async fn before_synced<'a>(
        &'a self,
        runtime: &'a CloudRuntime,
        observation: &'a Observation<Report>,
        changes: &'a Diff,
    ) -> Result<Option<Step<Report>>, Error> {
        let report = &observation.report;
        if report.carried == Some(false) {
            // The shared layout cannot make what it needs (a quota, a refusal): say so.
            if let Some(err) = runtime.pools.error() {
                let (phase, retry) = super::apply::error_phase(&err);
                return Ok(Some(Step {
                    phase,
                    report: Some(report.clone()),
                    requeue: retry,
                }));
            }
            return Ok(Some(Step {
                phase: Phase::progressing(
                    "Aggregating",
                    "waiting for the cloud's shared routes and firewall rule to carry the VIP",
                ),
                report: Some(report.clone()),
                requeue: Duration::from_secs(30),
            }));
        }
        if report.vip.is_some() {
            if report.mode == VipMode::Ilb || report.waiting.is_some() {
                return Ok(ilb_step(runtime, report, changes));
            }
            return Ok(None);
        }
        // Once the address exists, read back the IP GCP chose, then plan the rest.
        let address = report
            .address
            .as_ref()
            .filter(|a| !changes.inserts.iter().any(|i| &i.target == *a));
        if let Some(address) = address {
            runtime.engine.read_back(address).await?;
        }
        let waiting = Report {
            active: Vec::new(),
            ..report.clone()
        };
        Ok(Some(Step {
            phase: Phase::progressing("AllocatingVip", "waiting for the reserved address's IP"),
            report: Some(waiting),
            requeue: Duration::from_millis(if address.is_some() { 200 } else { 30_000 }),
        }))
    }

    fn cleaned_up(&self, ctx: &Context) {
        if let Some(runtime) = ctx.cloud(&self.spec.cloud_ref) {
            let key = key(&self.namespace().unwrap_or_default(), &self.name_any());
            runtime
                .pools
                .release(&self.spec.cloud_ref, &ctx.virtual_services, &key);
        }
    }

    fn synced(report: &Report) -> Phase {
        if report.mode == VipMode::Ilb {
            return ilb_synced(report);
        }
        if report.active.is_empty() {
            Phase::progressing(
                "NoHealthyEngine",
                format!(
                    "no service engine is RUNNING ({} down); the VIP has no route",
                    report.down.join(", ")
                ),
            )
        } else {
            Phase::ready(
                "Synced",
                format!(
                    "{} route(s) to {}",
                    report.active.len(),
                    report.active.join(", ")
                ),
            )
        }
    }
}

/// Reads engine health and what the object owns from the inventory, plans, and asks the
/// guard rails.
fn observe(
    object: &VirtualService,
    ctx: &Context,
    runtime: &CloudRuntime,
    owner: &Owner,
) -> Observation<Report> {
    if super::cloud::vip_mode(object, &runtime.spec) == VipMode::Ilb {
        return super::ilb::observe(object, ctx, runtime, owner);
    }
    let cloud_name = &object.spec.cloud_ref;
    let cloud_spec = &runtime.spec;
    let engine = &runtime.engine;
    let (health, missing, allocated_ip, owned) = engine.inventory().read(|snapshot| {
        let health = |zone: &str, name: &str| match snapshot.instance(zone, name) {
            Some(instance) if instance.is_running() => EngineHealth::Running,
            Some(_) => EngineHealth::Down,
            None => EngineHealth::Missing,
        };
        let states: Vec<(String, String, EngineHealth, Option<String>)> = object
            .spec
            .service_engines
            .iter()
            .map(|e| {
                let ip = snapshot
                    .instance(&e.zone, &e.name)
                    .and_then(|i| i.network_interfaces.first())
                    .and_then(|nic| nic.network_ip.clone());
                (e.zone.clone(), e.name.clone(), health(&e.zone, &e.name), ip)
            })
            .collect();
        let missing: Vec<String> = states
            .iter()
            .filter(|s| s.2 == EngineHealth::Missing)
            .map(|s| format!("{}/{}", s.0, s.1))
            .collect();
        (
            states,
            missing,
            snapshot.address_of(owner).map(str::to_string),
            snapshot.owned_by(owner, &runtime.view.resource_prefix),
        )
    });
    let engine_health = |zone: &str, name: &str| {
        health
            .iter()
            .find(|(z, n, _, _)| z == zone && n == name)
            .map_or(EngineHealth::Missing, |s| s.2)
    };
    let engine_ip = |zone: &str, name: &str| {
        health
            .iter()
            .find(|(z, n, _, _)| z == zone && n == name)
            .and_then(|s| s.3.clone())
    };
    let namespace_allowed =
        ctx.namespace_allowed(cloud_spec, &object.namespace().unwrap_or_default());
    let (pool_vip, mut problems) = pool_address(object, ctx, runtime, namespace_allowed);
    if pool_vip.is_some() && runtime.view.network_project != runtime.view.project {
        problems.push(format!(
            "VIP pools are not carried in a Shared VPC yet (the GcpCloud's networkProject is '{}'): give this VirtualService a fixed vip.address outside the pools, or vip.allocate.type",
            runtime.view.network_project
        ));
    }
    let plan = virtualservice::plan(
        &runtime.view,
        &object.namespace().unwrap_or_default(),
        &object.name_any(),
        &object.spec,
        match pool_vip {
            Some(ip) => Some(ip.to_string()),
            None => allocated_ip,
        }
        .as_deref(),
        engine_health,
        engine_ip,
    );

    let around = Surroundings {
        namespace_allowed,
        allowed_ranges: cloud_spec.allowed_destination_ranges.clone(),
        allow_default_route: cloud_spec.allow_default_route,
        vip_claimed_by: plan
            .vip
            .as_deref()
            .and_then(|vip| address_claimed_by(ctx, cloud_name, vip, claim(object, vip))),
        missing_engines: missing,
        // An allocated VIP comes from its subnetwork by design; a fixed one must stay out.
        subnet_ranges: match object.spec.vip.address {
            Some(_) => engine
                .inventory()
                .read(|s| s.subnets(&runtime.view.network)),
            None => Vec::new(),
        },
        missing_subnetwork: object
            .spec
            .vip
            .allocate
            .as_ref()
            .and_then(|a| a.subnetwork.clone())
            .filter(|name| {
                !engine
                    .inventory()
                    .read(|s| s.has_subnetwork(&runtime.view.region, name, &runtime.view.network))
            }),
        missing_ilb: None,
    };
    problems.extend(check_virtual_service(
        plan.vip.as_deref(),
        &object.spec.source_ranges,
        &around,
    ));
    let mut resources = GcpResources {
        routes: plan
            .desired
            .iter()
            .filter(|d| d.target.collection == Collection::Routes)
            .map(|d| d.target.name.clone())
            .collect(),
        firewall: plan
            .desired
            .iter()
            .find(|d| d.target.collection == Collection::Firewalls)
            .map(|d| d.target.name.clone()),
        address: plan.address.as_ref().map(|t| t.name.clone()),
        shared: false,
        ..Default::default()
    };
    // An adopted firewall rule keeps the name it was made with: the status names it.
    if let Some(planned) = resources.firewall.clone()
        && !owned.iter().any(|(t, _)| t.name == planned)
        && let Some(want) = plan.desired.iter().find(|d| d.target.name == planned)
        && let Some((adopted, _)) = owned.iter().find(|(t, body)| {
            t.collection == Collection::Firewalls && crate::plan::adopt::same_behaviour(want, body)
        })
    {
        resources.firewall = Some(adopted.name.clone());
    }
    // A VIP of a pool is carried by the cloud's shared routes and rule. Until they carry it
    // exactly, the object keeps what it has of its own (a VIP migrating from its own routes
    // loses nothing; routes to engines that are down still go at once) and makes nothing new.
    let mut desired = plan.desired;
    let mut carried = None;
    if let Some(vip) = pool_vip {
        let wanted: BTreeSet<Hop> = hops(&object.spec, engine_health).into_iter().collect();
        let carriage = runtime
            .pools
            .view()
            .carries(vip, &wanted, &opening(&object.spec));
        // Ready once carried exactly; a Ready VIP with nothing of its own stays Ready while a
        // layout change leaves it on some of its engines (and nothing else) for a moment,
        // rather than flap.
        let was_ready = crate::controller::status::ready_for_generation(
            object.status.as_ref().map(|s| s.conditions.as_slice()),
            object.metadata.generation,
        );
        let steady = was_ready && carriage.serving && owned.is_empty();
        if carriage.exact || steady {
            desired = Vec::new();
            resources = GcpResources {
                routes: carriage.routes,
                firewall: carriage.rule,
                address: None,
                shared: true,
                ..Default::default()
            };
        } else {
            runtime.pools.wake.notify_one();
            let running = |hop: &str| {
                plan.active_engines
                    .iter()
                    .any(|e| hop.ends_with(&format!("/instances/{e}")))
            };
            desired = owned
                .iter()
                .filter(|(target, body)| {
                    target.collection != Collection::Routes
                        || body["nextHopInstance"].as_str().is_some_and(running)
                })
                .map(|(target, body)| DesiredResource {
                    target: target.clone(),
                    body: body.clone(),
                })
                .collect();
            resources = GcpResources {
                routes: desired
                    .iter()
                    .filter(|d| d.target.collection == Collection::Routes)
                    .map(|d| d.target.name.clone())
                    .collect(),
                firewall: desired
                    .iter()
                    .find(|d| d.target.collection == Collection::Firewalls)
                    .map(|d| d.target.name.clone()),
                address: None,
                shared: false,
                ..Default::default()
            };
        }
        carried = Some(carriage.exact || steady);
    }
    Observation {
        down_engines: plan.down_engines.clone(),
        down_addresses: health
            .iter()
            .filter(|s| s.2 == EngineHealth::Down)
            .filter_map(|s| s.3.clone())
            .collect(),
        problems,
        stalled_report: Some(Report {
            vip: plan.vip.clone(),
            ..Report::default()
        }),
        report: Report {
            vip: plan.vip,
            active: plan.active_engines,
            down: plan.down_engines,
            resources: Some(resources),
            address: plan.address,
            carried,
            ..Report::default()
        },
        desired,
        owned,
    }
}

/// The address of a VIP of a pool, and what stops it. An object that leaves its pool (or
/// whose namespace may not use the cloud) gives its address back or takes none.
fn pool_address(
    object: &VirtualService,
    ctx: &Context,
    runtime: &CloudRuntime,
    namespace_allowed: bool,
) -> (Option<Ipv4Addr>, Vec<String>) {
    let cloud = &object.spec.cloud_ref;
    let store = &ctx.virtual_services;
    let object_key = key(&object.namespace().unwrap_or_default(), &object.name_any());
    let names = || {
        let names: Vec<&str> = runtime
            .pools
            .pools
            .iter()
            .map(|(n, _)| n.as_str())
            .collect();
        if names.is_empty() {
            "it has none".to_string()
        } else {
            format!("it has {}", names.join(", "))
        }
    };
    match runtime.pools.membership(&object.spec) {
        Membership::None => {
            runtime.pools.release(cloud, store, &object_key);
            (None, Vec::new())
        }
        Membership::Missing(pool) => {
            runtime.pools.release(cloud, store, &object_key);
            (
                None,
                vec![format!(
                    "spec.vip.allocate.pool: GcpCloud '{cloud}' has no VIP pool '{pool}' ({}); fix the pool name or add the pool to spec.vipPools of the GcpCloud",
                    names()
                )],
            )
        }
        Membership::Pool { name, cidr } => {
            if let Some((subnet, range)) = overlapped_subnet(runtime, cidr) {
                return (
                    None,
                    vec![format!(
                        "VIP pool '{name}' ({cidr}) of GcpCloud '{cloud}' overlaps subnetwork '{subnet}' ({range}): a pool must lie outside every subnetwork of the network (Compute refuses routes inside a subnet range); fix spec.vipPools of the GcpCloud"
                    )],
                );
            }
            if !namespace_allowed {
                // The guard rails say why; no address is taken meanwhile (one held stays held).
                let held = runtime.pools.address_of(cloud, store, &object_key);
                return (held, Vec::new());
            }
            match runtime.pools.assign(cloud, store, object, (&name, cidr)) {
                Ok(Some(ip)) => (Some(ip), Vec::new()),
                Ok(None) => (
                    None,
                    vec![format!(
                        "spec.vip.address: {} in VIP pool '{name}' is already given to another VirtualService; choose another address or use vip.allocate.pool",
                        object.spec.vip.address.as_deref().unwrap_or_default()
                    )],
                ),
                Err(err) => (
                    None,
                    vec![format!(
                        "spec.vip.allocate.pool: {err}; widen the pool, add a pool, or free addresses"
                    )],
                ),
            }
        }
    }
}

/// ILB mode before Synced: the load balancer's pieces still being made, or no health report
/// yet.
fn ilb_step(runtime: &CloudRuntime, report: &Report, changes: &Diff) -> Option<Step<Report>> {
    let poll = super::cloud::instance_poll_period_of(runtime);
    if let Some(waiting) = &report.waiting {
        // What the next piece waits for is made by another hand (the cloud's ILB task makes
        // the groups) or is one of this object's operations: look again soon either way.
        let _ = changes;
        return Some(Step {
            phase: Phase::progressing(
                "BuildingLoadBalancer",
                format!("the internal load balancer is being made: waiting for {waiting}"),
            ),
            report: Some(report.clone()),
            requeue: poll.max(std::time::Duration::from_millis(500)),
        });
    }
    if report.mode == VipMode::Ilb
        && report
            .engine_health
            .iter()
            .all(|e| e.state == crate::api::HealthState::Unknown)
    {
        return Some(Step {
            phase: Phase::progressing(
                "WaitingForHealth",
                "the internal load balancer exists; waiting for its first health report",
            ),
            report: Some(report.clone()),
            requeue: poll,
        });
    }
    None
}

/// ILB mode, Synced: Ready while some engine passes the health check.
fn ilb_synced(report: &Report) -> Phase {
    let rules = report
        .resources
        .as_ref()
        .map(|r| r.forwarding_rules.join(", "))
        .unwrap_or_default();
    if report.active.is_empty() {
        let states: Vec<String> = report
            .engine_health
            .iter()
            .map(|e| format!("{} {:?}", e.name, e.state).to_uppercase())
            .collect();
        Phase::progressing(
            "NoHealthyEngine",
            format!(
                "every service engine fails the load balancer's health check ({}); the VIP has no healthy backend",
                states.join(", ")
            ),
        )
    } else {
        Phase::ready(
            "Synced",
            format!(
                "forwarding rule(s) {rules} carry the VIP to healthy engine(s) {}",
                report.active.join(", ")
            ),
        )
    }
}
