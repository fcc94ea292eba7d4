//! GcpCloud: builds and keeps the GCP engine of each cloud, refreshes its inventory every resync
//! interval and the status of the instances in use every instance poll interval,
//! garbage-collects resources of this cluster that no object desires, and reports whether the
//! cloud is reachable.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};

use super::context::{CloudRuntime, Context};
use super::error::Error;
use super::status::{Phase, apply_phase, write_status};
use crate::api::{GcpCloud, GcpCloudStatus, InventoryCounts, QuotaStatus, parse_duration};
use crate::gcp::{Credentials, EngineSettings, InventoryEvent, Lane, Mutation, RateLimits};
use crate::plan::CloudView;
use crate::plan::owner::Owner;

/// The default Compute endpoint.
pub const COMPUTE_ENDPOINT: &str = "https://compute.googleapis.com";

async fn credentials(ctx: &Context, cloud: &GcpCloud) -> Result<Credentials, Error> {
    let spec = &cloud.spec.credentials;
    if let Some(secret_ref) = &spec.secret_ref {
        let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &secret_ref.namespace);
        let secret = secrets.get(&secret_ref.name).await.map_err(|err| {
            Error::Config(format!(
                "spec.credentials.secretRef: cannot read Secret {}/{}: {err}",
                secret_ref.namespace, secret_ref.name
            ))
        })?;
        let data = secret
            .data
            .as_ref()
            .and_then(|d| d.get(&secret_ref.key))
            .ok_or_else(|| {
                Error::Config(format!(
                    "spec.credentials.secretRef: Secret {}/{} has no key '{}'",
                    secret_ref.namespace, secret_ref.name, secret_ref.key
                ))
            })?;
        let json = String::from_utf8(data.0.clone()).map_err(|_| {
            Error::Config(format!(
                "spec.credentials.secretRef: key '{}' is not UTF-8 JSON",
                secret_ref.key
            ))
        })?;
        return Credentials::from_service_account_json(&json)
            .map_err(|err| Error::Config(format!("spec.credentials.secretRef: {err}")));
    }
    Ok(Credentials::metadata_server())
}

fn fingerprint(cloud: &GcpCloud) -> String {
    serde_json::to_string(&cloud.spec).unwrap_or_default()
}

async fn build_runtime(ctx: &Context, cloud: &GcpCloud) -> Result<Arc<CloudRuntime>, Error> {
    let spec = &cloud.spec;
    let credentials = credentials(ctx, cloud).await?;
    let endpoint = spec
        .endpoint
        .clone()
        .unwrap_or_else(|| COMPUTE_ENDPOINT.to_string());
    let mut settings = EngineSettings::new(&spec.project, &endpoint);
    settings.dispatch = ctx.settings.dispatch;
    settings.time_scale = ctx.settings.gcp_time_scale;
    settings.max_calls_per_batch = spec.batching.max_calls_per_batch as usize;
    settings.max_in_flight = spec.batching.max_batches_in_flight as usize;
    settings.linger = parse_duration(&spec.batching.linger).unwrap_or(Duration::from_millis(50));
    settings.rate_limits = RateLimits {
        reads_per_minute: u64::from(spec.rate_limit.reads_per_minute),
        writes_per_minute: u64::from(spec.rate_limit.writes_per_minute),
        operation_reads_per_minute: u64::from(spec.rate_limit.operation_reads_per_minute),
        regional_writes_per_minute: u64::from(spec.rate_limit.writes_per_minute),
    };
    settings.resource_prefix = spec.resource_prefix.clone();
    settings.regions = vec![spec.region.clone()];
    let engine = crate::gcp::Engine::start(settings, credentials, Arc::clone(&ctx.metrics))?;
    let runtime = Arc::new(CloudRuntime {
        view: CloudView {
            cluster_id: ctx.settings.cluster_id.clone(),
            cloud: cloud.name_any(),
            project: spec.project.clone(),
            network: spec.network.clone(),
            region: spec.region.clone(),
            resource_prefix: spec.resource_prefix.clone(),
        },
        spec: spec.clone(),
        fingerprint: fingerprint(cloud),
        zones: Default::default(),
        adding_zones: Default::default(),
        ready: Default::default(),
        refresh_failures: Default::default(),
        settling: std::sync::atomic::AtomicBool::new(true),
        engine,
    });
    forward_inventory_events(ctx, &runtime);
    poll_instances(&runtime);
    Ok(runtime)
}

/// Failed inventory refreshes in a row a Ready cloud stays Ready through (each retried in 30 s);
/// the next one makes it not Ready, and its objects wait.
const STALE_REFRESHES_TOLERATED: u32 = 3;
/// How soon the inventory is refreshed again while operations this engine did not send still
/// run (see `CloudRuntime::settling`).
const SETTLING_REFRESH: Duration = Duration::from_secs(5);

/// Used when `instancePollInterval` does not parse.
const DEFAULT_INSTANCE_POLL: Duration = Duration::from_secs(5);
/// Polls closer together than this would only spend the read budget reconciles need.
const MIN_INSTANCE_POLL: Duration = Duration::from_secs(1);
/// Beyond this the inventory resync sees the instances anyway (and a timer stays in range).
const MAX_INSTANCE_POLL: Duration = Duration::from_secs(24 * 3600);

/// The poll period `spec.instancePollInterval` asks for. The floor is in GCP time: under
/// `--gcp-time-scale` (a compressed emulator) it shrinks with the scale.
fn instance_poll_period(spec: &crate::api::GcpCloudSpec, time_scale: f64) -> Duration {
    let floor = MIN_INSTANCE_POLL.mul_f64(time_scale.clamp(0.001, 1.0));
    parse_duration(&spec.instance_poll_interval)
        .unwrap_or(DEFAULT_INSTANCE_POLL)
        .clamp(floor, MAX_INSTANCE_POLL)
}

/// Reads the status of the instances in the zones in use every `instancePollInterval`, so an
/// engine that stops is noticed (and its routes withdrawn through [`forward_inventory_events`])
/// without waiting for the inventory resync. The task holds only a weak reference: it ends when
/// the runtime is dropped or its engine shut down. A failing poll changes no condition (the
/// resync reports reachability); it is logged once when it starts failing and when it recovers.
fn poll_instances(runtime: &Arc<CloudRuntime>) {
    let period = instance_poll_period(&runtime.spec, runtime.engine.settings().time_scale);
    let cloud = runtime.view.cloud.clone();
    let weak = Arc::downgrade(runtime);
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            ticks.tick().await;
            let Some(runtime) = weak.upgrade() else {
                return;
            };
            if runtime.engine.is_shut_down() {
                return;
            }
            // Empty until the first full refresh has loaded them.
            let zones: Vec<String> = match runtime.zones.read() {
                Ok(guard) => guard.iter().cloned().collect(),
                Err(poisoned) => poisoned.into_inner().iter().cloned().collect(),
            };
            // The runtime is not kept alive across the poll: a replaced one goes at once.
            let engine = runtime.engine.clone();
            drop(runtime);
            if zones.is_empty() {
                continue;
            }
            match engine.refresh_instances(&zones).await {
                Ok(()) => {
                    if std::mem::take(&mut failing) {
                        tracing::info!(cloud = %cloud, "instance status poll recovered");
                    }
                }
                Err(crate::gcp::GcpError::Shutdown) => return,
                Err(err) if failing => {
                    tracing::debug!(cloud = %cloud, error = %err, "instance status poll failed");
                }
                Err(err) => {
                    failing = true;
                    tracing::warn!(cloud = %cloud, error = %err, "instance status poll failed; retrying every poll interval");
                }
            }
        }
    });
}

/// The objects of the stores by the object hash their GCP names carry, so the owner of a
/// resource that vanished is one lookup away, not a hash of every object per event.
#[derive(Default)]
struct ObjectIndex {
    virtual_services: std::collections::HashMap<String, ObjectRef<crate::api::VirtualService>>,
    vpc_routes: std::collections::HashMap<String, ObjectRef<crate::api::VpcRoute>>,
    built: Option<std::time::Instant>,
}

impl ObjectIndex {
    /// Rebuilds from the stores when `hash` is unknown and the index may be out of date (the
    /// stores changed size, or it is over a second old): names of objects already deleted
    /// miss for good and must not rebuild it on every event.
    fn refresh_if_missing(
        &mut self,
        hash: &str,
        cluster: &str,
        virtual_services: &Store<crate::api::VirtualService>,
        vpc_routes: &Store<crate::api::VpcRoute>,
    ) {
        if hash.is_empty()
            || self.virtual_services.contains_key(hash)
            || self.vpc_routes.contains_key(hash)
        {
            return;
        }
        let vs = virtual_services.state();
        let vr = vpc_routes.state();
        let fresh = self
            .built
            .is_some_and(|at| at.elapsed() < Duration::from_secs(1))
            && vs.len() == self.virtual_services.len()
            && vr.len() == self.vpc_routes.len();
        if fresh {
            return;
        }
        let key = |kind: &str, namespace: Option<String>, name: String| {
            crate::plan::names::object_hash(cluster, kind, &namespace.unwrap_or_default(), &name)
        };
        self.virtual_services = vs
            .iter()
            .map(|o| {
                let hash = key(
                    crate::plan::virtualservice::KIND,
                    o.namespace(),
                    o.name_any(),
                );
                (hash, ObjectRef::from_obj(&**o))
            })
            .collect();
        self.vpc_routes = vr
            .iter()
            .map(|o| {
                let hash = key(crate::plan::vpcroute::KIND, o.namespace(), o.name_any());
                (hash, ObjectRef::from_obj(&**o))
            })
            .collect();
        self.built = Some(std::time::Instant::now());
    }
}

/// Turns the inventory's changes into reconciles of the objects they concern.
fn forward_inventory_events(ctx: &Context, runtime: &Arc<CloudRuntime>) {
    let mut events = runtime.engine.inventory().subscribe();
    let weak = Arc::downgrade(runtime);
    let vs = ctx.vs_trigger.clone();
    let vr = ctx.vr_trigger.clone();
    let cluster = ctx.settings.cluster_id.clone();
    let vs_store = ctx.virtual_services.clone();
    let vr_store = ctx.vpc_routes.clone();
    tokio::spawn(async move {
        let mut index = ObjectIndex::default();
        loop {
            let event = match events.recv().await {
                Ok(event) => event,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                    // Events were lost: look at every object of the cloud again rather than
                    // leave one waiting for a change it will not hear about.
                    let Some(runtime) = weak.upgrade() else {
                        return;
                    };
                    let cloud = &runtime.view.cloud;
                    tracing::warn!(%cloud, missed, "inventory events overflowed; requeueing every object of the cloud");
                    super::context::requeue_users(cloud, (&vs_store, &vs), (&vr_store, &vr));
                    continue;
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            };
            let Some(runtime) = weak.upgrade() else {
                return;
            };
            match event {
                InventoryEvent::Instance { zone, name, .. } => {
                    for object in vs_store.state() {
                        if object
                            .spec
                            .service_engines
                            .iter()
                            .any(|e| e.zone == zone && e.name == name)
                        {
                            let _ = vs.send(ObjectRef::from_obj(&*object));
                        }
                    }
                    for object in vr_store.state() {
                        if object
                            .spec
                            .next_hop
                            .instance
                            .as_ref()
                            .is_some_and(|i| i.zone == zone && i.name == name)
                        {
                            let _ = vr.send(ObjectRef::from_obj(&*object));
                        }
                    }
                }
                InventoryEvent::Resource(target) => {
                    // The owner of a resource that exists says itself; one that vanished is
                    // found among the objects that reference this cloud by their planned names.
                    let description = runtime
                        .engine
                        .inventory()
                        .read(|s| s.description_of(&target).map(str::to_string));
                    match description.as_deref().and_then(Owner::parse) {
                        Some(owner) if owner.cluster_id == cluster => match owner.kind.as_str() {
                            crate::plan::virtualservice::KIND => {
                                let _ =
                                    vs.send(ObjectRef::new(&owner.name).within(&owner.namespace));
                            }
                            crate::plan::vpcroute::KIND => {
                                let _ =
                                    vr.send(ObjectRef::new(&owner.name).within(&owner.namespace));
                            }
                            _ => {}
                        },
                        Some(_) => {}
                        None if description.is_none() => {
                            // Gone: its owner is found by the object hash in its name.
                            let hash = target
                                .name
                                .strip_prefix(&runtime.view.resource_prefix)
                                .and_then(|rest| rest.split('-').next())
                                .unwrap_or_default();
                            index.refresh_if_missing(hash, &cluster, &vs_store, &vr_store);
                            if let Some(object) = index.virtual_services.get(hash) {
                                let _ = vs.send(object.clone());
                            }
                            if let Some(object) = index.vpc_routes.get(hash) {
                                let _ = vr.send(object.clone());
                            }
                        }
                        None => {}
                    }
                }
                InventoryEvent::Refreshed => {}
            }
        }
    });
}

/// Shuts down and forgets the runtime of every GcpCloud that no longer exists. A GcpCloud has no
/// finalizer, so a deleted one is never reconciled: without this sweep its engine and its
/// instance poll would run on until the operator restarts.
///
/// It does not wait for the store to be ready: a runtime exists only once the controller has
/// reconciled its cloud, which it does only from a ready store (and a ready store never empties
/// on a re-list). Waiting would also be a second waiter on the store's readiness, whose wake-up
/// kube-runtime hands to one waiter only: the controller's own reconciles would stall.
pub async fn forget_deleted(ctx: Weak<Context>, clouds: Store<GcpCloud>) {
    let mut ticks = tokio::time::interval(Duration::from_secs(10));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(ctx) = ctx.upgrade() else {
            return;
        };
        let deleted = |name: &String| clouds.get(&ObjectRef::new(name)).is_none();
        let gone: Vec<(String, Arc<CloudRuntime>)> = {
            let mut guard = match ctx.clouds.write() {
                Ok(guard) => guard,
                Err(poisoned) => poisoned.into_inner(),
            };
            let names: Vec<String> = guard.keys().filter(|n| deleted(n)).cloned().collect();
            names
                .into_iter()
                .filter_map(|name| guard.remove(&name).map(|runtime| (name, runtime)))
                .collect()
        };
        for (name, runtime) in gone {
            tracing::info!(cloud = %name, "GcpCloud deleted: its engine stops");
            runtime.engine.shutdown();
            // Their cloud is gone: they say so (CloudNotFound) rather than wait for a resync.
            ctx.requeue_users_of(&name);
        }
    }
}

/// Zones whose instances the objects of `cloud` use.
fn zones_in_use(ctx: &Context, cloud: &str, region: &str) -> BTreeSet<String> {
    let mut zones = BTreeSet::new();
    for vs in ctx.virtual_services.state() {
        if vs.spec.cloud_ref == cloud {
            zones.extend(vs.spec.service_engines.iter().map(|e| e.zone.clone()));
        }
    }
    for vr in ctx.vpc_routes.state() {
        if vr.spec.cloud_ref == cloud
            && let Some(instance) = &vr.spec.next_hop.instance
        {
            zones.insert(instance.zone.clone());
        }
    }
    if zones.is_empty() {
        zones.insert(format!("{region}-a"));
    }
    zones
}

/// Loads the inventory for every zone in use (and remembers them).
pub async fn refresh_inventory(
    ctx: &Context,
    name: &str,
    runtime: &CloudRuntime,
) -> Result<(), Error> {
    let zones = zones_in_use(ctx, name, &runtime.spec.region);
    let listed: Vec<String> = zones.iter().cloned().collect();
    if runtime.settling.load(Ordering::Relaxed) {
        let in_flight = runtime.engine.refresh_inventory_settling(&listed).await?;
        if in_flight > 0 {
            tracing::info!(cloud = %name, operations = in_flight, "operations sent before this engine started still run; refreshing again soon");
        }
        runtime.settling.store(in_flight > 0, Ordering::Relaxed);
    } else {
        runtime.engine.refresh_inventory(&listed).await?;
    }
    match runtime.zones.write() {
        Ok(mut guard) => *guard = zones,
        Err(poisoned) => *poisoned.into_inner() = zones,
    }
    Ok(())
}

/// Makes sure the inventory lists the instances of `needed` zones: a zone not seen yet costs one
/// paged `instances.list` (not a full refresh), once, however many objects ask at the same time.
pub async fn ensure_zones(runtime: &CloudRuntime, needed: &[&str]) -> Result<(), Error> {
    let missing = |runtime: &CloudRuntime| -> Vec<String> {
        let known = match runtime.zones.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        let mut missing: Vec<String> = needed
            .iter()
            .filter(|zone| !known.contains(**zone))
            .map(|zone| zone.to_string())
            .collect();
        missing.sort();
        missing.dedup();
        missing
    };
    if missing(runtime).is_empty() {
        return Ok(());
    }
    let _adding = runtime.adding_zones.lock().await;
    let zones = missing(runtime);
    if zones.is_empty() {
        // Another reconcile loaded them meanwhile.
        return Ok(());
    }
    runtime.engine.refresh_instances(&zones).await?;
    match runtime.zones.write() {
        Ok(mut guard) => guard.extend(zones),
        Err(poisoned) => poisoned.into_inner().extend(zones),
    }
    Ok(())
}

/// Deletes resources carrying this cluster's marker whose owner object no longer exists.
async fn collect_garbage(
    ctx: &Context,
    cloud_name: &str,
    abandoned: &[String],
    runtime: &CloudRuntime,
) -> usize {
    // Never decide on an incomplete picture of the objects.
    if !super::context::store_ready(&ctx.virtual_services).await
        || !super::context::store_ready(&ctx.vpc_routes).await
    {
        return 0;
    }
    let owners = runtime
        .engine
        .inventory()
        .read(|s| s.owners(&ctx.settings.cluster_id));
    let mut receivers = Vec::new();
    for (owner, target) in owners {
        // Several clouds may share a project: each collects only what was made through it.
        if owner.cloud != cloud_name || abandoned.contains(&super::context::owner_key(&owner)) {
            continue;
        }
        let exists = match owner.kind.as_str() {
            crate::plan::virtualservice::KIND => ctx
                .virtual_services
                .get(&ObjectRef::new(&owner.name).within(&owner.namespace))
                .is_some_and(|o| o.spec.cloud_ref == cloud_name),
            crate::plan::vpcroute::KIND => ctx
                .vpc_routes
                .get(&ObjectRef::new(&owner.name).within(&owner.namespace))
                .is_some_and(|o| o.spec.cloud_ref == cloud_name),
            _ => true,
        };
        if !exists {
            let network = runtime.engine.inventory().read(|s| s.network_of(&target));
            tracing::info!(resource = %target, owner = %format!("{}/{}/{}", owner.kind, owner.namespace, owner.name), "collecting an orphan");
            receivers.push(
                runtime
                    .engine
                    .submit(Mutation::delete(target, network), Lane::Urgent),
            );
        }
    }
    let collected = receivers.len();
    for receiver in receivers {
        let _ = receiver.await;
    }
    collected
}

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
    let resync = parse_duration(&cloud.spec.resync_interval).unwrap_or(Duration::from_secs(300));
    let existing = ctx
        .cloud(&name)
        .filter(|r| r.fingerprint == fingerprint(&cloud));
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
                report(&api, &cloud, phase, None, None).await?;
                return Ok(Action::requeue(Duration::from_secs(60)));
            }
        },
    };
    let checked = match runtime.engine.check_network(&cloud.spec.network).await {
        Ok(()) => refresh_inventory(&ctx, &name, &runtime).await,
        Err(err) if err.is_not_found() => {
            let phase = Phase::stalled(
                "NetworkNotFound",
                format!(
                    "network '{}' does not exist in project '{}': fix spec.network or spec.project",
                    cloud.spec.network, cloud.spec.project
                ),
            );
            runtime.ready.store(false, Ordering::Relaxed);
            report(&api, &cloud, phase, None, None).await?;
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
        report(&api, &cloud, phase, None, None).await?;
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
    let collected = collect_garbage(&ctx, &name, &abandoned, &runtime).await;
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
        Ok(quotas) => Some(
            quotas
                .into_iter()
                .map(|q| QuotaStatus {
                    metric: q.metric,
                    scope: q.scope,
                    usage: q.usage,
                    limit: q.limit,
                })
                .collect(),
        ),
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
    report(&api, &cloud, phase, Some(counts), quota).await?;
    if runtime.settling.load(Ordering::Relaxed) {
        let soon = SETTLING_REFRESH.mul_f64(ctx.settings.gcp_time_scale.clamp(0.001, 1.0));
        return Ok(Action::requeue(resync.min(soon)));
    }
    Ok(Action::requeue(resync))
}

async fn report(
    api: &Api<GcpCloud>,
    cloud: &GcpCloud,
    phase: Phase,
    inventory: Option<InventoryCounts>,
    quota: Option<Vec<QuotaStatus>>,
) -> Result<(), Error> {
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
    apply_phase(&mut status.conditions, &phase, cloud.metadata.generation);
    if inventory.is_some() {
        status.inventory = inventory;
    }
    if let Some(quota) = quota {
        status.quota = quota;
    }
    write_status::<GcpCloud, GcpCloudStatus>(api, cloud, current.as_ref(), &status).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(instance_poll_interval: &str) -> crate::api::GcpCloudSpec {
        let mut spec: crate::api::GcpCloudSpec = serde_json::from_value(serde_json::json!({
            "project": "acme-prod",
            "network": "prod-vpc",
            "region": "us-central1",
            "credentials": {"workloadIdentity": {}},
        }))
        .unwrap();
        spec.instance_poll_interval = instance_poll_interval.to_string();
        spec
    }

    #[test]
    fn the_instance_poll_period_is_parsed_defaulted_and_kept_in_range() {
        assert_eq!(
            instance_poll_period(&spec("5s"), 1.0),
            Duration::from_secs(5)
        );
        assert_eq!(
            instance_poll_period(&spec("2m"), 1.0),
            Duration::from_secs(120)
        );
        assert_eq!(
            instance_poll_period(&spec("nonsense"), 1.0),
            DEFAULT_INSTANCE_POLL
        );
        assert_eq!(instance_poll_period(&spec("0s"), 1.0), MIN_INSTANCE_POLL);
        assert_eq!(instance_poll_period(&spec("10ms"), 1.0), MIN_INSTANCE_POLL);
        assert_eq!(
            instance_poll_period(&spec("9999999h"), 1.0),
            MAX_INSTANCE_POLL
        );
        // A compressed emulator: the one-second floor is in GCP time.
        assert_eq!(
            instance_poll_period(&spec("10ms"), 0.05),
            Duration::from_millis(50)
        );
    }
}
