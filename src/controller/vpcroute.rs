//! VpcRoute: one static route, with the same guard rails, make-before-break and cleanup as a
//! VirtualService.

use std::sync::Arc;
use std::time::Duration;

use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};

use super::apply::{advance, superseded_inserts};
use super::context::Context;
use super::error::Error;
use super::status::{Phase, apply_phase, write_status};
use super::virtualservice::{
    Claim, FINALIZER, address_claimed_by, cloud_not_ready, zones_not_found,
};
use crate::api::conditions::{STALLED, condition_true};
use crate::api::{GcpCloud, VpcRoute, VpcRouteStatus};
use crate::plan::guard::{Surroundings, check_vpc_route};
use crate::plan::owner::Owner;
use crate::plan::{diff::diff, vpcroute};

/// Reconciles one VpcRoute.
pub async fn reconcile(object: Arc<VpcRoute>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = object.namespace().unwrap_or_default();
    let api: Api<VpcRoute> = Api::namespaced(ctx.client.clone(), &namespace);
    let outcome = finalizer(&api, FINALIZER, object, |event| async {
        match event {
            Finalizer::Apply(object) => apply_object(&api, &object, &ctx).await,
            Finalizer::Cleanup(object) => cleanup(&object, &ctx).await,
        }
    })
    .await;
    super::error::finalizer_outcome(outcome)
}

fn owner(ctx: &Context, object: &VpcRoute) -> Owner {
    Owner::new(
        &ctx.settings.cluster_id,
        &object.spec.cloud_ref,
        vpcroute::KIND,
        &object.namespace().unwrap_or_default(),
        &object.name_any(),
    )
}

async fn apply_object(
    api: &Api<VpcRoute>,
    object: &VpcRoute,
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
            report(api, object, phase, None).await?;
            return Ok(Action::requeue(Duration::from_secs(60)));
        };
        if !super::status::ready_for_generation(
            object.status.as_ref().map(|s| &s.conditions[..]),
            object.metadata.generation,
        ) {
            let phase = Phase::progressing("WaitingForCloud", cloud_not_ready(&cloud));
            report(api, object, phase, None).await?;
        }
        // The cloud requeues its objects when it becomes Ready; this is only a safety net.
        return Ok(Action::requeue(Duration::from_secs(30)));
    };
    let cloud_spec = &runtime.spec;
    let engine = &runtime.engine;
    if let Some(instance) = &object.spec.next_hop.instance {
        let zones = [instance.zone.as_str()];
        if let Err(err) = super::cloud::ensure_zones(&runtime, &zones).await {
            // A zone Compute does not know is the spec's fault: retrying will not help.
            let Some(phase) = zones_not_found(&runtime, &zones, &err, "spec.nextHop.instance.zone")
            else {
                return Err(err);
            };
            report(api, object, phase, None).await?;
            return Ok(Action::requeue(Duration::from_secs(300)));
        }
    }
    let owner = owner(ctx, object);
    // A next-hop ILB of the cloud's own project must exist before the route is made. The
    // inventory lists only the operator's own forwarding rules: one GET tells.
    let missing_ilb = match object
        .spec
        .next_hop
        .ilb
        .as_deref()
        .and_then(|ilb| vpcroute::own_forwarding_rule(&runtime.view, ilb))
    {
        Some((region, name))
            if object
                .status
                .as_ref()
                .and_then(|s| s.route_name.as_ref())
                .is_none() =>
        {
            let rule = crate::gcp::Target {
                collection: crate::gcp::Collection::ForwardingRules,
                location: region.clone(),
                name: name.clone(),
            };
            match engine.read_back(&rule).await? {
                Some(_) => None,
                None => Some(format!("{region}/{name}")),
            }
        }
        _ => None,
    };
    let (missing, owned) = engine.inventory().read(|snapshot| {
        let missing: Vec<String> = object
            .spec
            .next_hop
            .instance
            .iter()
            .filter(|i| snapshot.instance(&i.zone, &i.name).is_none())
            .map(|i| format!("{}/{}", i.zone, i.name))
            .collect();
        (
            missing,
            snapshot.owned_by(&owner, &runtime.view.resource_prefix),
        )
    });
    let around = Surroundings {
        namespace_allowed: ctx
            .namespace_allowed(cloud_spec, &object.namespace().unwrap_or_default()),
        allowed_ranges: cloud_spec.allowed_destination_ranges.clone(),
        allow_default_route: cloud_spec.allow_default_route,
        // A /32 is a host route: one to another object's VIP would take its traffic.
        vip_claimed_by: object
            .spec
            .dest_range
            .strip_suffix("/32")
            .and_then(|address| {
                let holding = object.status.as_ref().is_some_and(|s| {
                    s.route_name.is_some() && !condition_true(&s.conditions, STALLED)
                });
                address_claimed_by(
                    ctx,
                    cloud_name,
                    address,
                    Claim::of(vpcroute::KIND, object, holding),
                )
            }),
        missing_engines: missing,
        subnet_ranges: engine
            .inventory()
            .read(|s| s.subnets(&runtime.view.network)),
        missing_subnetwork: None,
        missing_ilb,
    };
    let problems = check_vpc_route(&object.spec.dest_range, &around);
    if !problems.is_empty() {
        let message = problems.join("; ");
        if !matches!(object.status.as_ref().and_then(|s| s.conditions.iter().find(|c| c.type_ == "Stalled")), Some(c) if c.status == "True" && c.message == message)
        {
            ctx.event(object, true, "GuardRail", "Plan", message.clone())
                .await;
        }
        report(api, object, Phase::stalled("GuardRail", message), None).await?;
        return Ok(Action::requeue(Duration::from_secs(300)));
    }
    let desired = vpcroute::plan(
        &runtime.view,
        &object.namespace().unwrap_or_default(),
        &object.name_any(),
        &object.spec,
    );
    let route_name = desired.target.name.clone();
    let changes = diff(std::slice::from_ref(&desired), &owned);
    // A route already in place carries traffic: its replacement is urgent.
    let superseded = superseded_inserts(
        engine,
        &owner.name_prefix(&runtime.view.resource_prefix),
        std::slice::from_ref(&desired),
    );
    let progress = advance(engine, &changes, !owned.is_empty(), &[], &superseded);
    if progress.started > 0 {
        ctx.event(
            object,
            false,
            "Applying",
            "Apply",
            format!(
                "creating {} and deleting {} route(s)",
                progress.inserts, progress.deletes
            ),
        )
        .await;
    }
    if let Some(err) = progress.error {
        let (phase, retry) = super::apply::error_phase(&err);
        ctx.event(object, true, "GcpError", "Apply", err.to_string())
            .await;
        report(api, object, phase, Some(route_name)).await?;
        return Ok(Action::requeue(retry));
    }
    if !changes.is_empty() {
        // The inventory's events requeue the object as its operations finish.
        report(
            api,
            object,
            super::apply::applying_phase(&progress),
            Some(route_name),
        )
        .await?;
        return Ok(Action::requeue(Duration::from_secs(30)));
    }
    report(
        api,
        object,
        Phase::ready("Synced", format!("route {route_name} in place")),
        Some(route_name),
    )
    .await?;
    Ok(Action::requeue(Duration::from_secs(3600)))
}

async fn report(
    api: &Api<VpcRoute>,
    object: &VpcRoute,
    phase: Phase,
    route_name: Option<String>,
) -> Result<(), Error> {
    let mut status: VpcRouteStatus = object.status.clone().unwrap_or_default();
    status.observed_generation = object.metadata.generation;
    if route_name.is_some() {
        status.route_name = route_name;
    }
    apply_phase(&mut status.conditions, &phase, object.metadata.generation);
    write_status(api, object, object.status.as_ref(), &status).await?;
    Ok(())
}

async fn cleanup(object: &VpcRoute, ctx: &Context) -> Result<Action, Error> {
    super::apply::cleanup(ctx, object, &object.spec.cloud_ref, &owner(ctx, object)).await
}
