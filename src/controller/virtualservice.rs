//! VirtualService: guard rails, plan, make-before-break apply, status and events; on deletion the
//! finalizer removes its GCP resources unless `adc.dev/deletion-policy: abandon`.

use std::sync::Arc;
use std::time::Duration;

use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::{Resource, ResourceExt};

use super::apply::{advance, superseded_inserts};
use super::context::Context;
use super::error::Error;
use super::status::{Phase, apply_phase, write_status};
use crate::api::{GcpCloud, GcpResources, VirtualService, VirtualServiceStatus};
use crate::gcp::Collection;
use crate::plan::guard::{Surroundings, check_virtual_service};
use crate::plan::owner::Owner;
use crate::plan::{EngineHealth, diff::diff, virtualservice};

/// The finalizer that removes GCP resources before the object goes.
pub const FINALIZER: &str = "adc.dev/cleanup";

/// Reconciles one VirtualService.
pub async fn reconcile(object: Arc<VirtualService>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = object.namespace().unwrap_or_default();
    let api: Api<VirtualService> = Api::namespaced(ctx.client.clone(), &namespace);
    let outcome = finalizer(&api, FINALIZER, object, |event| async {
        match event {
            Finalizer::Apply(object) => apply_object(&api, &object, &ctx).await,
            Finalizer::Cleanup(object) => cleanup(&object, &ctx).await,
        }
    })
    .await;
    super::error::finalizer_outcome(outcome)
}

fn owner(ctx: &Context, object: &VirtualService) -> Owner {
    Owner::new(
        &ctx.settings.cluster_id,
        &object.spec.cloud_ref,
        virtualservice::KIND,
        &object.namespace().unwrap_or_default(),
        &object.name_any(),
    )
}

/// One object that routes an IPv4 address: a VirtualService by its VIP, or a VpcRoute whose
/// destination is that address's /32 (which would take the VIP's traffic).
pub(super) struct Claim {
    kind: &'static str,
    namespace: String,
    name: String,
    uid: Option<String>,
    created: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    /// It serves the address already (its status says so and it is not Stalled): it keeps it
    /// against any newcomer, whatever the creation times (they have one-second resolution).
    holding: bool,
}

impl Claim {
    pub(super) fn of<K: Resource<DynamicType = ()>>(
        kind: &'static str,
        object: &K,
        holding: bool,
    ) -> Self {
        let meta = object.meta();
        Claim {
            kind,
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
            uid: meta.uid.clone(),
            created: meta.creation_timestamp.clone(),
            holding,
        }
    }

    /// Who comes first: the holder, then the earliest created, then by kind, namespace, name.
    fn rank(&self) -> impl Ord + '_ {
        (
            !self.holding,
            self.created.as_ref().map(|t| t.0),
            self.kind,
            &self.namespace,
            &self.name,
        )
    }
}

fn stalled(conditions: &[crate::api::Condition]) -> bool {
    crate::api::conditions::condition_true(conditions, crate::api::conditions::STALLED)
}

/// The object that holds `address` on the network of cloud `cloud_ref` before `me` does, as
/// `Kind namespace/name`; None when `me` comes first. Claimants are VirtualServices whose VIP
/// is `address` and VpcRoutes whose destination is `address/32`, on any GcpCloud of the same
/// project and network. The one already serving it keeps it; otherwise the earliest created.
pub(super) fn address_claimed_by(
    ctx: &Context,
    cloud_ref: &str,
    address: &str,
    me: Claim,
) -> Option<String> {
    let network_of = |cloud: &str| {
        ctx.cloud(cloud)
            .map(|r| (r.view.project.clone(), r.view.network.clone()))
    };
    let mine = network_of(cloud_ref);
    let same_network =
        |other: &str| other == cloud_ref || (mine.is_some() && network_of(other) == mine);
    let host_route = format!("{address}/32");
    let mut claims: Vec<Claim> = Vec::new();
    for vs in ctx.virtual_services.state() {
        let status = vs.status.as_ref();
        let vip = vs
            .spec
            .vip
            .address
            .as_deref()
            .or_else(|| status.and_then(|s| s.vip.as_deref()));
        if vip == Some(address)
            && vs.metadata.deletion_timestamp.is_none()
            && vs.meta().uid != me.uid
            && same_network(&vs.spec.cloud_ref)
        {
            let holding = status
                .is_some_and(|s| s.vip.as_deref() == Some(address) && !stalled(&s.conditions));
            claims.push(Claim::of(virtualservice::KIND, &*vs, holding));
        }
    }
    for route in ctx.vpc_routes.state() {
        if route.spec.dest_range == host_route
            && route.metadata.deletion_timestamp.is_none()
            && route.meta().uid != me.uid
            && same_network(&route.spec.cloud_ref)
        {
            let holding = route
                .status
                .as_ref()
                .is_some_and(|s| s.route_name.is_some() && !stalled(&s.conditions));
            claims.push(Claim::of(crate::plan::vpcroute::KIND, &*route, holding));
        }
    }
    claims
        .iter()
        .filter(|other| other.rank() < me.rank())
        .min_by(|a, b| a.rank().cmp(&b.rank()))
        .map(|first| format!("{} {}/{}", first.kind, first.namespace, first.name))
}

/// This VirtualService as a claimant of `address`.
fn claim(object: &VirtualService, address: &str) -> Claim {
    let holding = object
        .status
        .as_ref()
        .is_some_and(|s| s.vip.as_deref() == Some(address) && !stalled(&s.conditions));
    Claim::of(virtualservice::KIND, object, holding)
}

/// Why a cloud that exists is not usable yet: its own Ready message, when it has one.
pub(super) fn cloud_not_ready(cloud: &GcpCloud) -> String {
    let name = cloud.name_any();
    match cloud
        .status
        .as_ref()
        .and_then(|s| {
            crate::api::conditions::find_condition(&s.conditions, crate::api::conditions::READY)
        })
        .filter(|c| c.status != "True" && !c.message.is_empty())
    {
        Some(ready) => format!("GcpCloud '{name}' is not Ready yet: {}", ready.message),
        None => format!("GcpCloud '{name}' is not Ready yet"),
    }
}

/// A stall for zones Compute does not know, when loading their instances says not found.
pub(super) fn zones_not_found(
    runtime: &super::context::CloudRuntime,
    needed: &[&str],
    err: &Error,
    field: &str,
) -> Option<Phase> {
    if !matches!(err, Error::Gcp(gcp) if gcp.is_not_found()) {
        return None;
    }
    let known = match runtime.zones.read() {
        Ok(guard) => guard.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    };
    let mut unknown: Vec<&str> = needed
        .iter()
        .copied()
        .filter(|z| !known.contains(*z))
        .collect();
    unknown.sort_unstable();
    unknown.dedup();
    Some(Phase::stalled(
        "ZoneNotFound",
        format!(
            "zone(s) {} not found in project '{}' ({err}); fix {field}",
            unknown.join(", "),
            runtime.view.project
        ),
    ))
}

async fn apply_object(
    api: &Api<VirtualService>,
    object: &VirtualService,
    ctx: &Context,
) -> Result<Action, Error> {
    let cloud_name = &object.spec.cloud_ref;
    // A running engine carries the cloud's spec: no API call per reconcile. Without one, the
    // API server says whether the cloud is missing or only not Ready yet.
    let Some(runtime) = ctx
        .cloud(cloud_name)
        .filter(|r| r.ready.load(std::sync::atomic::Ordering::Relaxed))
    else {
        let clouds: Api<GcpCloud> = Api::all(ctx.client.clone());
        let Some(cloud) = clouds.get_opt(cloud_name).await? else {
            let phase = Phase::stalled(
                "CloudNotFound",
                format!("GcpCloud '{cloud_name}' does not exist: create it or fix spec.cloudRef"),
            );
            report(api, object, phase, None, &[], None).await?;
            return Ok(Action::requeue(Duration::from_secs(60)));
        };
        // A restarted operator waits for its engine: that says nothing about the object, so a
        // Ready status stays as it is (no health flapping in Argo CD or Flux).
        if !super::status::ready_for_generation(
            object.status.as_ref().map(|s| &s.conditions[..]),
            object.metadata.generation,
        ) {
            let phase = Phase::progressing("WaitingForCloud", cloud_not_ready(&cloud));
            report(api, object, phase, None, &[], None).await?;
        }
        // The cloud requeues its objects when it becomes Ready; this is only a safety net.
        return Ok(Action::requeue(Duration::from_secs(30)));
    };
    let cloud_spec = &runtime.spec;
    let engine = &runtime.engine;
    // An engine in a zone the inventory does not list yet: load it before judging.
    let zones: Vec<&str> = object
        .spec
        .service_engines
        .iter()
        .map(|e| e.zone.as_str())
        .collect();
    if let Err(err) = super::cloud::ensure_zones(&runtime, &zones).await {
        // A zone Compute does not know is the spec's fault: retrying will not help.
        let Some(phase) = zones_not_found(&runtime, &zones, &err, "spec.serviceEngines") else {
            return Err(err);
        };
        report(api, object, phase, None, &[], None).await?;
        return Ok(Action::requeue(Duration::from_secs(300)));
    }

    let owner = owner(ctx, object);
    let (health, missing, allocated_ip, owned) = engine.inventory().read(|snapshot| {
        let health = |zone: &str, name: &str| match snapshot.instance(zone, name) {
            Some(instance) if instance.is_running() => EngineHealth::Running,
            Some(_) => EngineHealth::Down,
            None => EngineHealth::Missing,
        };
        let states: Vec<(String, String, EngineHealth)> = object
            .spec
            .service_engines
            .iter()
            .map(|e| (e.zone.clone(), e.name.clone(), health(&e.zone, &e.name)))
            .collect();
        let missing: Vec<String> = states
            .iter()
            .filter(|s| s.2 == EngineHealth::Missing)
            .map(|s| format!("{}/{}", s.0, s.1))
            .collect();
        (
            states,
            missing,
            snapshot.address_of(&owner).map(str::to_string),
            snapshot.owned_by(&owner, &runtime.view.resource_prefix),
        )
    });
    let engine_health = |zone: &str, name: &str| {
        health
            .iter()
            .find(|(z, n, _)| z == zone && n == name)
            .map_or(EngineHealth::Missing, |s| s.2)
    };
    let plan = virtualservice::plan(
        &runtime.view,
        &object.namespace().unwrap_or_default(),
        &object.name_any(),
        &object.spec,
        allocated_ip.as_deref(),
        engine_health,
    );

    let around = Surroundings {
        namespace_allowed: ctx
            .namespace_allowed(cloud_spec, &object.namespace().unwrap_or_default()),
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
    let problems = check_virtual_service(plan.vip.as_deref(), &object.spec.source_ranges, &around);
    if !problems.is_empty() {
        let message = problems.join("; ");
        if !matches!(object.status.as_ref().and_then(|s| s.conditions.iter().find(|c| c.type_ == "Stalled")), Some(c) if c.status == "True" && c.message == message)
        {
            ctx.event(object, true, "GuardRail", "Plan", message.clone())
                .await;
        }
        report(
            api,
            object,
            Phase::stalled("GuardRail", message),
            plan.vip.clone(),
            &[],
            None,
        )
        .await?;
        return Ok(Action::requeue(Duration::from_secs(300)));
    }

    let changes = diff(&plan.desired, &owned);
    // Routes to engines that are down go at once; everything else makes before it breaks.
    let withdrawals: Vec<_> = owned
        .iter()
        .filter(|(target, body)| {
            target.collection == Collection::Routes
                && changes.deletes.contains(target)
                && body["nextHopInstance"].as_str().is_some_and(|hop| {
                    plan.down_engines
                        .iter()
                        .any(|down| hop.ends_with(&format!("/instances/{down}")))
                })
        })
        .map(|(target, _)| target.clone())
        .collect();
    // An object that already has resources in GCP carries traffic: its changes are failover
    // work, ahead of the bulk creation of new objects.
    let urgent = !owned.is_empty();
    let superseded = superseded_inserts(
        engine,
        &owner.name_prefix(&runtime.view.resource_prefix),
        &plan.desired,
    );
    let progress = advance(engine, &changes, urgent, &withdrawals, &superseded);
    if progress.started > 0 {
        let reason = if withdrawals.is_empty() && plan.down_engines.is_empty() {
            "Applying"
        } else {
            "Failover"
        };
        let note = format!(
            "creating {} and deleting {} GCP resource(s)",
            progress.inserts, progress.deletes
        );
        tracing::info!(namespace = ?object.namespace(), name = %object.name_any(), inserts = progress.inserts, deletes = progress.deletes, "applying");
        ctx.event(object, false, reason, "Apply", note).await;
    }
    let resources = GcpResources {
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
    };
    if let Some(err) = progress.error {
        let (phase, retry) = super::apply::error_phase(&err);
        ctx.event(object, true, "GcpError", "Apply", err.to_string())
            .await;
        report(
            api,
            object,
            phase,
            plan.vip.clone(),
            &plan.active_engines,
            Some(resources),
        )
        .await?;
        return Ok(Action::requeue(retry));
    }
    if plan.vip.is_none() {
        // Once the address exists, read back the IP GCP chose, then plan the rest.
        let address_made = plan
            .address
            .as_ref()
            .is_some_and(|a| !changes.inserts.iter().any(|i| &i.target == a));
        if address_made && let Some(address) = &plan.address {
            engine.read_back(address).await?;
        }
        report(
            api,
            object,
            Phase::progressing("AllocatingVip", "waiting for the reserved address's IP"),
            None,
            &[],
            Some(resources),
        )
        .await?;
        return Ok(Action::requeue(Duration::from_millis(if address_made {
            200
        } else {
            30_000
        })));
    }
    if !changes.is_empty() {
        // The inventory's events requeue the object as its operations finish.
        report(
            api,
            object,
            super::apply::applying_phase(&progress),
            plan.vip.clone(),
            &plan.active_engines,
            Some(resources),
        )
        .await?;
        return Ok(Action::requeue(Duration::from_secs(30)));
    }
    let phase = if plan.active_engines.is_empty() {
        Phase::progressing(
            "NoHealthyEngine",
            format!(
                "no service engine is RUNNING ({} down); the VIP has no route",
                plan.down_engines.join(", ")
            ),
        )
    } else {
        Phase::ready(
            "Synced",
            format!(
                "{} route(s) to {}",
                plan.active_engines.len(),
                plan.active_engines.join(", ")
            ),
        )
    };
    report(
        api,
        object,
        phase,
        plan.vip.clone(),
        &plan.active_engines,
        Some(resources),
    )
    .await?;
    Ok(Action::requeue(Duration::from_secs(3600)))
}

async fn report(
    api: &Api<VirtualService>,
    object: &VirtualService,
    phase: Phase,
    vip: Option<String>,
    active: &[String],
    resources: Option<GcpResources>,
) -> Result<(), Error> {
    let mut status: VirtualServiceStatus = object.status.clone().unwrap_or_default();
    status.observed_generation = object.metadata.generation;
    status.vip = vip;
    status.active_service_engines = active.to_vec();
    if resources.is_some() {
        status.resources = resources;
    }
    apply_phase(&mut status.conditions, &phase, object.metadata.generation);
    write_status(api, object, object.status.as_ref(), &status).await?;
    Ok(())
}

async fn cleanup(object: &VirtualService, ctx: &Context) -> Result<Action, Error> {
    super::apply::cleanup(ctx, object, &object.spec.cloud_ref, &owner(ctx, object)).await
}
