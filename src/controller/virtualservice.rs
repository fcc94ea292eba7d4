//! VirtualService: guard rails, plan, make-before-break apply, status and events; on deletion the
//! finalizer removes its GCP resources unless `adc.dev/deletion-policy: abandon`.

use std::sync::Arc;
use std::time::Duration;

use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::{Resource, ResourceExt};

use super::apply::apply;
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
    .map_err(|err| Error::Finalizer(err.to_string()))
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
    let clouds: Api<GcpCloud> = Api::all(ctx.client.clone());
    let Some(cloud) = clouds.get_opt(cloud_name).await? else {
        let phase = Phase::stalled(
            "CloudNotFound",
            format!("GcpCloud '{cloud_name}' does not exist: create it or fix spec.cloudRef"),
        );
        report(api, object, phase, None, &[], None).await?;
        return Ok(Action::requeue(Duration::from_secs(60)));
    };
    let Some(runtime) = ctx
        .cloud(cloud_name)
        .filter(|r| r.ready.load(std::sync::atomic::Ordering::Relaxed))
    else {
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
    let engine = &runtime.engine;
    // An engine in a zone the inventory does not list yet: load it before judging.
    let known = match runtime.zones.read() {
        Ok(guard) => guard.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    };
    if object
        .spec
        .service_engines
        .iter()
        .any(|e| !known.contains(&e.zone))
    {
        super::cloud::refresh_inventory(ctx, cloud_name, &runtime).await?;
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
        let allocated = snapshot
            .addresses
            .iter()
            .find(|((_, _), a)| Owner::parse(&a.description).as_ref() == Some(&owner))
            .and_then(|(_, a)| a.address.clone());
        (
            states,
            missing,
            allocated,
            owned_resources(snapshot, &owner),
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
        namespace_allowed: ctx.namespace_allowed(&cloud, &object.namespace().unwrap_or_default()),
        allowed_ranges: cloud.spec.allowed_destination_ranges.clone(),
        allow_default_route: cloud.spec.allow_default_route,
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
    let failover = !plan.down_engines.is_empty()
        || changes
            .deletes
            .iter()
            .any(|t| t.collection == Collection::Routes);
    let applied = apply(engine, &changes, failover).await;
    if !applied.inserted.is_empty() || !applied.deleted.is_empty() {
        let reason = if failover { "Failover" } else { "Synced" };
        let note = format!(
            "created {} and deleted {} GCP resource(s)",
            applied.inserted.len(),
            applied.deleted.len()
        );
        tracing::info!(namespace = ?object.namespace(), name = %object.name_any(), inserted = applied.inserted.len(), deleted = applied.deleted.len(), "applied");
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
    if let Some(err) = applied.error {
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
        // The address exists now; read back the IP GCP chose, then plan the rest.
        if let Some(address) = &plan.address {
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
        return Ok(Action::requeue(Duration::from_millis(200)));
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
