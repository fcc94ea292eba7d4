//! GcpCloud: builds and keeps the GCP engine of each cloud, refreshes its inventory every resync
//! interval and the status of the instances in use every instance poll interval,
//! garbage-collects resources of this cluster that no object desires, and reports whether the
//! cloud is reachable.
//!
//! Each job has a file: `runtime` (credentials, engine), `inventory` (refreshes, zones),
//! `instances` (the instance poll), `events` (inventory changes to reconciles), `garbage`
//! (orphan collection), `sweep` (deleted clouds); this file is the reconcile and its status.

mod balancers;
mod events;
mod garbage;
mod instances;
mod inventory;
mod layout;
mod runtime;
mod sweep;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action;

use crate::api::{GcpCloud, GcpCloudStatus, InventoryCounts, QuotaStatus, parse_duration};
use crate::controller::context::Context;
use crate::controller::error::Error;
use crate::controller::status::{Phase, apply_phase, write_status};

use balancers::*;
pub use balancers::{IlbHealth, vip_mode};

/// The instance poll period of a cloud's runtime (wall time).
pub fn instance_poll_period_of(runtime: &crate::controller::context::CloudRuntime) -> Duration {
    instance_poll_period(&runtime.spec, runtime.engine.settings().time_scale)
}
use events::*;
use garbage::*;
use instances::*;
use inventory::*;
pub use inventory::{ensure_zones, refresh_inventory};
pub(crate) use layout::planned as planned_layout;
use layout::*;
use runtime::*;
pub use runtime::{COMPUTE_ENDPOINT, read_only_runtime};
pub use sweep::forget_deleted;

/// Reconciles one GcpCloud.
pub async fn reconcile(cloud: Arc<GcpCloud>, ctx: Arc<Context>) -> Result<Action, Error> {
    let name = cloud.name_any();
    let api: Api<GcpCloud> = Api::all(ctx.client.clone());
    if cloud.metadata.deletion_timestamp.is_some() {
        if let Some(runtime) = match ctx.clouds.write() {
            Ok(mut guard) => guard.remove(&name),
            Err(poisoned) => poisoned.into_inner().remove(&name),
        } {
            runtime.engine.shutdown();
        }
        return Ok(Action::await_change());
    }
    if !ctx.holds(&name) {
        // Another replica holds the cloud's Lease; the shard loop requeues it when this one
        // takes it.
        return Ok(Action::await_change());
    }
    if ctx.index.has_stubs(&name) {
        // Just taken over: the stores hold stubs of some of its objects until the re-list
        // brings them whole. Zones, engines and layout are read from them: wait.
        ctx.relist.request();
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    let resync = parse_duration(&cloud.spec.resync_interval).unwrap_or(Duration::from_secs(300));
    let existing = ctx
        .cloud(&name)
        .filter(|r| r.fingerprint == fingerprint(&cloud) && !r.engine.is_shut_down());
    let runtime = match existing {
        Some(runtime) => runtime,
        None => match build_runtime(&ctx, &cloud).await {
            Ok(runtime) => {
                super::progress::watch(
                    &ctx,
                    &runtime,
                    cloud.status.as_ref().and_then(|s| s.progress.clone()),
                );
                let previous = match ctx.clouds.write() {
                    Ok(mut guard) => guard.insert(name.clone(), Arc::clone(&runtime)),
                    Err(poisoned) => poisoned
                        .into_inner()
                        .insert(name.clone(), Arc::clone(&runtime)),
                };
                if let Some(previous) = previous {
                    previous.engine.shutdown();
                }
                runtime
            }
            Err(err) => {
                let phase = Phase::stalled("InvalidCredentials", err.to_string());
                report(&api, &ctx.settings.identity, &cloud, phase, None, None).await?;
                return Ok(Action::requeue(Duration::from_secs(60)));
            }
        },
    };
    if runtime.set_policy(cloud.spec.management_policy) {
        // Objects judge their policy from the runtime: let them see the new one.
        ctx.requeue_users_of(&name);
    }
    let checked = match runtime.engine.check_network(&cloud.spec.network).await {
        Ok(()) => refresh_inventory(&ctx, &name, &runtime).await,
        Err(err) if err.is_not_found() => {
            let phase = Phase::stalled(
                "NetworkNotFound",
                match cloud.spec.network_project.as_deref() {
                    Some(host) if host != cloud.spec.project => format!(
                        "network '{}' does not exist in the Shared VPC host project '{host}': fix spec.network or spec.networkProject",
                        cloud.spec.network
                    ),
                    _ => format!(
                        "network '{}' does not exist in project '{}': fix spec.network or spec.project",
                        cloud.spec.network, cloud.spec.project
                    ),
                },
            );
            runtime.ready.store(false, Ordering::Relaxed);
            report(&api, &ctx.settings.identity, &cloud, phase, None, None).await?;
            return Ok(Action::requeue(Duration::from_secs(60)));
        }
        Err(err) => Err(err.into()),
    };
    if let Err(err) = checked {
        let failures = runtime.refresh_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if runtime.ready.load(Ordering::Relaxed) && failures < STALE_REFRESHES_TOLERATED {
            // One failed resync does not stop the fleet: objects keep working from the
            // inventory of the last refresh (their own mutations report their own errors).
            ctx.event(
                &*cloud,
                true,
                "InventoryRefreshFailed",
                "Resync",
                format!(
                    "inventory refresh failed ({failures} in a row), retrying in 30 s; objects work from the last inventory meanwhile: {err}"
                ),
            )
            .await;
            return Ok(Action::requeue(Duration::from_secs(30)));
        }
        runtime.ready.store(false, Ordering::Relaxed);
        let phase = match &err {
            // A key Google refuses (invalid_grant, unparsable) needs a person, not a retry.
            Error::Gcp(crate::gcp::GcpError::AuthRefused(_)) => Phase::stalled(
                "CredentialsRefused",
                format!(
                    "the credentials for project '{}' were refused: {err}; fix spec.credentials or the key",
                    cloud.spec.project
                ),
            ),
            _ => Phase::progressing(
                "GcpUnreachable",
                format!(
                    "cannot reach Compute for project '{}': {err}",
                    cloud.spec.project
                ),
            ),
        };
        report(&api, &ctx.settings.identity, &cloud, phase, None, None).await?;
        return Ok(Action::requeue(Duration::from_secs(30)));
    }
    runtime.refresh_failures.store(0, Ordering::Relaxed);
    let was_ready = runtime.ready.swap(true, Ordering::Relaxed);
    if !was_ready {
        // Objects waiting for this cloud can go now.
        ctx.requeue_users_of(&name);
    }
    // Read fresh: an abandon recorded a moment ago must already count.
    let abandoned = api
        .get(&name)
        .await?
        .status
        .map(|s| s.abandoned)
        .unwrap_or_default();
    for (pool, cidr) in &runtime.pools.pools {
        if let Some((subnet, range)) = crate::controller::pools::overlapped_subnet(&runtime, *cidr)
        {
            ctx.event(
                &*cloud,
                true,
                "PoolRefused",
                "Plan",
                format!(
                    "spec.vipPools '{pool}' ({cidr}) overlaps subnetwork '{subnet}' ({range}): the VirtualServices that use it stall; move the pool outside every subnetwork"
                ),
            )
            .await;
        }
    }
    // Orphans are collected only while the cloud may write.
    let collected = if runtime.writes() {
        collect_garbage(&ctx, &name, &abandoned, &runtime).await
    } else {
        0
    };
    if collected > 0 {
        ctx.event(
            &*cloud,
            false,
            "OrphansCollected",
            "Delete",
            format!("deleted {collected} GCP resource(s) of this cluster that no object desires"),
        )
        .await;
    }
    let counts = runtime.engine.inventory().read(|s| s.counts());
    let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    let counts = InventoryCounts {
        routes: count(counts.routes),
        firewalls: count(counts.firewalls),
        addresses: count(counts.addresses),
        forwarding_rules: count(counts.forwarding_rules),
        instances: count(counts.instances),
    };
    // The quotas are worth knowing, not worth stopping for (a role without compute.projects.get
    // still manages routes): a failed read keeps the last figures.
    let quota = match runtime.engine.read_quotas().await {
        Ok(quotas) => Some(quota_forecast(&ctx, &name, &runtime, quotas)),
        Err(err) => {
            tracing::warn!(cloud = %name, error = %err, "reading the project's resource quotas failed; keeping the last figures");
            None
        }
    };
    let phase = Phase::ready(
        "Connected",
        format!(
            "project '{}', network '{}' reachable; inventory refreshed",
            cloud.spec.project, cloud.spec.network
        ),
    );
    if let Some(warning) = report(
        &api,
        &ctx.settings.identity,
        &cloud,
        phase,
        Some(counts),
        quota,
    )
    .await?
    {
        ctx.event(&*cloud, true, "QuotaForecast", "Plan", warning)
            .await;
    }
    if runtime.settling.load(Ordering::Relaxed) {
        let soon = SETTLING_REFRESH.mul_f64(ctx.settings.gcp_time_scale.clamp(0.001, 1.0));
        return Ok(Action::requeue(resync.min(soon)));
    }
    Ok(Action::requeue(resync))
}

/// Hands a cloud back (sharding): its engine drops what it has not sent and stops once
/// Compute has answered everything it did send, so that no operation of the cloud is left
/// unaccounted for when the next holder takes over; within a minute at most (the next
/// holder's settling refresh still sees what runs then).
pub async fn drain(ctx: &Context, name: &str) {
    if let Some(runtime) = ctx.cloud(name) {
        let started = std::time::Instant::now();
        loop {
            // Reconciles of the cloud no longer start, but one running may still hand work over.
            runtime.engine.withhold(|_| true);
            if runtime.engine.pending() == 0 || started.elapsed() > Duration::from_secs(60) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tracing::info!(cloud = %name, left = runtime.engine.pending(), took = ?started.elapsed(), "drained the cloud's engine");
    }
    ctx.drop_cloud(name);
}

/// The quotas with what the cloud's objects need of them (from the last layout pass) and the
/// use once its plan is applied.
fn quota_forecast(
    ctx: &Context,
    name: &str,
    runtime: &crate::controller::context::CloudRuntime,
    quotas: Vec<crate::gcp::types::QuotaUse>,
) -> Vec<QuotaStatus> {
    use crate::plan::resource::Collection;
    let needed = runtime.pools.forecast().unwrap_or_default();
    let held = runtime.engine.inventory().read(|s| {
        let mut held = std::collections::BTreeMap::<&str, f64>::new();
        for (owner, target) in s.owners(&ctx.settings.cluster_id) {
            if owner.cloud != name {
                continue;
            }
            let metric = match target.collection {
                Collection::Routes => "ROUTES",
                Collection::Firewalls => "FIREWALLS",
                Collection::Addresses => "STATIC_ADDRESSES",
                _ => continue,
            };
            *held.entry(metric).or_default() += 1.0;
        }
        held
    });
    let global = |scope: &str| scope == "global" || scope == runtime.view.region;
    let figures: Vec<(String, String, f64, f64)> = quotas
        .into_iter()
        .map(|q| (q.metric, q.scope, q.usage, q.limit))
        .collect();
    crate::plan::quota::forecast(
        &figures,
        |metric| {
            needed
                .iter()
                .any(|(m, _)| m == metric)
                .then(|| held.get(metric).copied().unwrap_or(0.0))
        },
        |metric| needed.iter().find(|(m, _)| m == metric).map(|(_, n)| *n),
    )
    .into_iter()
    .map(|f| QuotaStatus {
        needed: f.needed.filter(|_| global(&f.scope)),
        projected: f.needed.filter(|_| global(&f.scope)).map(|_| f.projected),
        metric: f.metric,
        scope: f.scope,
        usage: f.usage,
        limit: f.limit,
    })
    .collect()
}

async fn report(
    api: &Api<GcpCloud>,
    holder: &str,
    cloud: &GcpCloud,
    phase: Phase,
    inventory: Option<InventoryCounts>,
    quota: Option<Vec<QuotaStatus>>,
) -> Result<Option<String>, Error> {
    let mut warned = None;
    let mut status = cloud.status.clone().unwrap_or_default();
    // Written by mark_abandoned and the progress task, never by this apply: leaving them out
    // keeps them.
    status.abandoned.clear();
    status.progress = None;
    let mut current = cloud.status.clone();
    if let Some(current) = current.as_mut() {
        current.abandoned.clear();
        current.progress = None;
    }
    status.observed_generation = cloud.metadata.generation;
    status.holder = Some(holder.to_string());
    apply_phase(&mut status.conditions, &phase, cloud.metadata.generation);
    if inventory.is_some() {
        status.inventory = inventory;
    }
    if let Some(quota) = quota {
        status.routes = quota
            .iter()
            .find(|q| q.metric == "ROUTES")
            .map(|q| format!("{:.0}/{:.0}", q.usage, q.limit));
        let forecasts: Vec<crate::plan::quota::Forecast> = quota
            .iter()
            .filter_map(|q| {
                Some(crate::plan::quota::Forecast {
                    metric: q.metric.clone(),
                    scope: q.scope.clone(),
                    usage: q.usage,
                    limit: q.limit,
                    needed: q.needed,
                    projected: q.projected?,
                })
            })
            .collect();
        let warning = crate::plan::quota::warning(&forecasts);
        let was = crate::api::conditions::condition_true(&status.conditions, QUOTA_WARNING);
        crate::api::conditions::set_condition(
            &mut status.conditions,
            QUOTA_WARNING,
            warning.is_some(),
            if warning.is_some() {
                "PlanNearLimit"
            } else {
                "WithinLimits"
            },
            warning
                .as_deref()
                .unwrap_or("the plan needs at most 90% of every resource quota"),
            cloud.metadata.generation,
            &k8s_openapi::jiff::Timestamp::now().to_string(),
        );
        status.quota = quota;
        if let Some(warning) = warning.filter(|_| !was) {
            warned = Some(warning);
        }
    }
    write_status::<GcpCloud, GcpCloudStatus>(api, cloud, current.as_ref(), &status).await?;
    Ok(warned)
}

/// A condition of its own beside kstatus's three: True while the plan needs more than 90 % of
/// a resource quota.
pub const QUOTA_WARNING: &str = "QuotaWarning";
