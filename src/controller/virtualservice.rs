//! VirtualService: guard rails, plan, make-before-break apply, status and events; on deletion the
//! finalizer removes its GCP resources unless `adc.dev/deletion-policy: abandon`.

use std::sync::Arc;
use std::time::Duration;

use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::{Resource, ResourceExt};

use super::apply::{advance, superseded_inserts};
use super::context::{Context, owned_resources};
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
    finalizer(&api, FINALIZER, object, |event| async {
        match event {
            Finalizer::Apply(object) => apply_object(&api, &object, &ctx).await,
            Finalizer::Cleanup(object) => cleanup(&object, &ctx).await,
        }
    })
    .await
    .map_err(Error::from_finalizer)
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

/// The earliest-created other VirtualService on the same cloud with the same fixed VIP.
fn vip_claimed_by(ctx: &Context, object: &VirtualService) -> Option<String> {
    let vip = object.spec.vip.address.as_ref()?;
    let mine = (
        object.metadata.creation_timestamp.clone(),
        object.namespace(),
        object.name_any(),
    );
    ctx.virtual_services
        .state()
        .into_iter()
        .filter(|other| {
            other.spec.cloud_ref == object.spec.cloud_ref
                && other.spec.vip.address.as_ref() == Some(vip)
                && other.meta().uid != object.meta().uid
                && other.metadata.deletion_timestamp.is_none()
        })
        .filter(|other| {
            (
                other.metadata.creation_timestamp.clone(),
                other.namespace(),
                other.name_any(),
            ) < mine
        })
        .map(|other| {
            format!(
                "{}/{}",
                other.namespace().unwrap_or_default(),
                other.name_any()
            )
        })
        .next()
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
        if clouds.get_opt(cloud_name).await?.is_none() {
            let phase = Phase::stalled(
                "CloudNotFound",
                format!("GcpCloud '{cloud_name}' does not exist: create it or fix spec.cloudRef"),
            );
            report(api, object, phase, None, &[], None).await?;
            return Ok(Action::requeue(Duration::from_secs(60)));
        }
        // A restarted operator waits for its engine: that says nothing about the object, so a
        // Ready status stays as it is (no health flapping in Argo CD or Flux).
        if !super::status::ready_for_generation(
            object.status.as_ref().map(|s| &s.conditions[..]),
            object.metadata.generation,
        ) {
            let phase = Phase::progressing(
                "WaitingForCloud",
                format!("GcpCloud '{cloud_name}' is not Ready yet"),
            );
            report(api, object, phase, None, &[], None).await?;
        }
        return Ok(Action::requeue(Duration::from_secs(10)));
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
    super::cloud::ensure_zones(&runtime, &zones).await?;

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
        let allocated = snapshot
            .addresses
            .iter()
            .find(|((_, _), a)| Owner::parse(&a.description).as_ref() == Some(&owner))
            .and_then(|(_, a)| a.address.clone());
        (
            states,
            missing,
            allocated,
            owned_resources(snapshot, &owner, &runtime.view.resource_prefix),
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
        vip_claimed_by: vip_claimed_by(ctx, object),
        missing_engines: missing,
    };
    let problems = check_virtual_service(plan.vip.as_deref(), &around);
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
            Phase::progressing("Applying", "waiting for GCP operations to finish"),
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
