//! The controllers: one per kind, glued to the pure planner and the GCP engine. Every trigger of
//! a reconcile is declared here, in one place.

pub mod apply;
pub mod claims;
pub mod cloud;
pub mod context;
pub mod error;
mod ilb;
pub mod index;
pub mod metrics;
pub mod pools;
pub mod preview;
pub mod progress;
pub mod reconcile;
pub mod slim;
pub mod status;
pub mod virtualservice;
pub mod vpcroute;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::Recorder;
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;

pub use context::{Context, OperatorSettings};
pub use error::Error;
pub use metrics::ControllerMetrics;

use crate::api::{GcpCloud, VirtualService, VpcRoute};
use crate::gcp::GcpMetrics;

/// What of a GcpCloud its own reconcile reacts to: what people change (spec, labels,
/// annotations) and its deletion, never its status. The status is the reconcile's own output:
/// inventory counts and quota figures change with every refresh during a rollout, and reacting
/// to them would refresh the inventory again at once, in a loop.
fn cloud_change(cloud: &GcpCloud) -> Option<u64> {
    let meta = &cloud.metadata;
    hash_of(&(
        meta.generation,
        &meta.deletion_timestamp,
        &meta.labels,
        &meta.annotations,
    ))
}

/// What of a GcpCloud its objects react to: [`cloud_change`] and whether it is Ready (an object
/// that waits for its cloud shows the cloud's own reason). Not the rest of its status: every
/// write of it would reconcile every object of the cloud, 50,000 of them at fleet scale.
fn cloud_change_for_objects(cloud: &GcpCloud) -> Option<u64> {
    let ready = cloud
        .status
        .as_ref()
        .and_then(|s| {
            crate::api::conditions::find_condition(&s.conditions, crate::api::conditions::READY)
        })
        .map(|c| (&c.status, &c.reason, &c.message, c.observed_generation));
    hash_of(&(cloud_change(cloud), ready))
}

fn hash_of(seen: &impl serde::Serialize) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let seen = serde_json::to_string(seen).ok()?;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    seen.hash(&mut hasher);
    Some(hasher.finish())
}

/// GcpCloud changes as triggers of its objects ([`cloud_change_for_objects`]). A deleted
/// cloud's last state hashes like its state before, so this stream may drop the deletion: the
/// sweep that stops a deleted cloud's engine requeues its objects instead.
fn cloud_triggers(
    client: &Client,
) -> impl futures::Stream<Item = Result<GcpCloud, watcher::Error>> + Send + 'static {
    watcher(
        Api::<GcpCloud>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .touched_objects()
    .predicate_filter(cloud_change_for_objects, Default::default())
}

fn error_policy<K>(_object: Arc<K>, error: &Error, _ctx: Arc<Context>) -> Action {
    if let Error::Conflict(_) = error {
        // Expected while the watch catches up with the operator's own patch: try again soon.
        tracing::debug!(error = %error, "reconcile raced a newer version of the object");
        return Action::requeue(Duration::from_secs(2));
    }
    tracing::warn!(error = %error, kind = %error.label(), "reconcile failed");
    Action::requeue(Duration::from_secs(10))
}

/// The longest a reconcile may run before it is given up and retried (after the error
/// policy's delay). A deletion that waits for its GCP deletes may take longer under load: it
/// then resumes where the engine is (its work stays queued), at no extra cost.
pub const RECONCILE_TIMEOUT: Duration = Duration::from_secs(60);

/// Wraps a reconcile function so that every run is counted and timed under `kind`.
fn measured<K, F, Fut>(
    kind: &'static str,
    metrics: Arc<ControllerMetrics>,
    reconcile: F,
) -> impl FnMut(Arc<K>, Arc<Context>) -> futures::future::BoxFuture<'static, Result<Action, Error>>
where
    K: Send + Sync + 'static,
    F: Fn(Arc<K>, Arc<Context>) -> Fut + Copy + Send + 'static,
    Fut: std::future::Future<Output = Result<Action, Error>> + Send + 'static,
{
    move |object, ctx| {
        let metrics = Arc::clone(&metrics);
        Box::pin(async move {
            let start = std::time::Instant::now();
            // A reconcile hands GCP work to the engine and returns; one that hangs (a request
            // on a connection the API server dropped without a word) would never be retried.
            let outcome = tokio::time::timeout(RECONCILE_TIMEOUT, reconcile(object, ctx))
                .await
                .unwrap_or(Err(Error::Timeout(RECONCILE_TIMEOUT)));
            metrics.observe(kind, start, &outcome);
            outcome
        })
    }
}

/// The controller of one fleet kind: its own watch, every object that references a GcpCloud
/// when that cloud changes ([`cloud_triggers`]), and the inventory's changes and cloud readiness
/// sent on `requeues`; reconciled by the shared skeleton ([`reconcile::reconcile`]).
fn run_kind<K: reconcile::Kind>(
    controller: Controller<K>,
    requeues: mpsc::UnboundedReceiver<ObjectRef<K>>,
    client: &Client,
    ctx: &Arc<Context>,
    reconcile_metrics: &Arc<ControllerMetrics>,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let store = controller.store();
    controller
        .watches_stream(cloud_triggers(client), move |cloud: GcpCloud| {
            let name = cloud.name_any();
            store
                .state()
                .into_iter()
                .filter(|o| o.cloud_ref() == name)
                .map(|o| ObjectRef::from_obj(&*o))
                .collect::<Vec<_>>()
        })
        .reconcile_on(UnboundedReceiverStream::new(requeues))
        .shutdown_on_signal()
        .run(
            measured(
                K::KIND,
                Arc::clone(reconcile_metrics),
                reconcile::reconcile::<K>,
            ),
            error_policy,
            Arc::clone(ctx),
        )
        .for_each(|_| futures::future::ready(()))
}

/// The controller of a fleet kind as `Controller::new` makes it (a reflector over a watch of
/// every object, with the default backoff), with the address index kept from the same events.
fn indexed_controller<K>(
    client: &Client,
    index: &Arc<index::FleetIndex>,
    shards: Option<Arc<crate::shard::Shards>>,
    relist: &mut slim::Relist,
    metrics: &Arc<ControllerMetrics>,
    listed: &Arc<tokio::sync::Notify>,
) -> Controller<K>
where
    K: index::Indexed
        + slim::Slim
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store::<K>();
    let index = Arc::clone(index);
    let metrics = Arc::clone(metrics);
    let listed = Arc::clone(listed);
    let stream = relist
        .watch(Api::<K>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        // What the store keeps of each object (`slim`): never managedFields or kubectl's
        // last-applied record, and only a stub of an object of another replica's cloud.
        .modify(move |object: &mut K| {
            slim::trim(object, |cloud| {
                shards.as_ref().is_some_and(|s| s.elsewhere(cloud))
            });
        })
        .reflect(writer)
        .inspect(move |event| {
            if let Ok(event) = event {
                index.observe(event);
                let (whole, stubs) = index.stored(K::KIND);
                metrics.set_stored(K::KIND, whole, stubs);
                if matches!(event, watcher::Event::InitDone) {
                    listed.notify_one();
                }
            }
        })
        .applied_objects()
        .predicate_filter(object_change::<K>, Default::default());
    Controller::for_stream(stream, store)
}

/// What of a fleet object its own reconcile reacts to: its spec (generation), metadata people
/// and the finalizer helper change (annotations such as the management policy and approvals,
/// labels, finalizers), its deletion, and its identity (a new object under an old name). Not
/// its status: that is the reconcile's own output, and each write of it would reconcile the
/// object once more for nothing (at fleet scale, a reconcile per object and status write).
/// The reflector still applies every event, so reconciles read the current status.
fn object_change<K: kube::Resource>(object: &K) -> Option<u64> {
    let meta = object.meta();
    hash_of(&(
        &meta.uid,
        meta.generation,
        &meta.deletion_timestamp,
        &meta.finalizers,
        &meta.annotations,
        &meta.labels,
    ))
}

/// After each complete list of a fleet kind, requeues the objects of the clouds this replica
/// holds that no reconcile has judged yet (no finalizer, or a generation not observed). An
/// object first seen in a re-list is in the list's buffer, not yet in the store, when the
/// controller asks for it, and the controller drops a request for an object its store lacks;
/// its next event may be far off.
async fn requeue_unjudged(ctx: std::sync::Weak<Context>, listed: Arc<tokio::sync::Notify>) {
    loop {
        listed.notified().await;
        let Some(ctx) = ctx.upgrade() else {
            return;
        };
        let triggers = ctx.triggers();
        for object in unjudged(&ctx, &ctx.virtual_services) {
            triggers.requeue_virtual_service(object);
        }
        for object in unjudged(&ctx, &ctx.vpc_routes) {
            triggers.requeue_vpc_route(object);
        }
    }
}

/// The objects of `store` in clouds this replica holds that no reconcile has judged yet: no
/// finalizer, or a generation the status has not observed (stubs and deletions aside).
fn unjudged<K>(ctx: &Context, store: &reflector::Store<K>) -> Vec<ObjectRef<K>>
where
    K: crate::api::FleetObject + Clone + 'static,
{
    store
        .state()
        .iter()
        .filter(|object| {
            let meta = object.meta();
            !slim::is_stub(&***object)
                && meta.deletion_timestamp.is_none()
                && ctx.holds(object.cloud_ref())
                && (!meta
                    .finalizers
                    .iter()
                    .flatten()
                    .any(|f| f == reconcile::FINALIZER)
                    || object.observed_generation() != meta.generation)
        })
        .map(|object| ObjectRef::from_obj(&**object))
        .collect()
}

/// Changes of the clouds held closer together than this make one re-list of the fleet kinds.
const RELIST_QUIET: Duration = Duration::from_secs(1);

/// With `--sharding`: which clouds this replica holds, and what the shard loop tells it.
pub struct Sharding {
    pub shards: Arc<crate::shard::Shards>,
    pub events: mpsc::UnboundedReceiver<crate::shard::ShardEvent>,
}

/// Carries out what the shard loop decides: a cloud acquired is reconciled at once (its
/// objects follow once its engine is ready), a cloud lost stops its engine, a cloud handed
/// back drains its engine first. Each change of the clouds held re-lists the fleet kinds, so
/// that the stores keep whole only this replica's objects.
async fn follow_shards(
    ctx: std::sync::Weak<Context>,
    mut events: mpsc::UnboundedReceiver<crate::shard::ShardEvent>,
    store: reflector::Store<GcpCloud>,
    clouds: mpsc::UnboundedSender<ObjectRef<GcpCloud>>,
) {
    use crate::shard::ShardEvent;
    while let Some(event) = events.recv().await {
        let Some(ctx) = ctx.upgrade() else {
            return;
        };
        match event {
            ShardEvent::Acquired(cloud) => {
                // Its objects are stubs in the stores until a re-list brings them whole.
                ctx.relist.request();
                // A request for an object the controller's store does not hold yet would be
                // dropped: the shard loop lists the clouds itself and may be ahead of the watch.
                let store = store.clone();
                let clouds = clouds.clone();
                tokio::spawn(async move {
                    let reference = ObjectRef::new(&cloud);
                    for _ in 0..600 {
                        if store.get(&reference).is_some() {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    let _ = clouds.send(reference);
                });
            }
            ShardEvent::Lost(cloud) => {
                ctx.drop_cloud(&cloud);
                ctx.relist.request();
            }
            ShardEvent::Listed => ctx.relist.request(),
            ShardEvent::Release { cloud, done } => {
                tokio::spawn(async move {
                    cloud::drain(&ctx, &cloud).await;
                    let _ = done.send(());
                    ctx.relist.request();
                });
            }
        }
    }
}

/// Runs every controller until the process is told to stop.
pub async fn run(
    client: Client,
    settings: OperatorSettings,
    metrics: Arc<GcpMetrics>,
    reconcile_metrics: Arc<ControllerMetrics>,
    sharding: Option<Sharding>,
) -> Result<(), Error> {
    let (shards, shard_events) = match sharding {
        Some(Sharding { shards, events }) => (Some(shards), Some(events)),
        None => (None, None),
    };
    let (ns_store, ns_writer) = reflector::store::<Namespace>();
    let namespaces = reflector::reflector(
        ns_writer,
        watcher(
            Api::<Namespace>::all(client.clone()),
            watcher::Config::default(),
        ),
    )
    // Without a backoff a lost API server turns the watch into a hot retry loop.
    .default_backoff()
    .applied_objects()
    .for_each(|_| futures::future::ready(()));
    tokio::spawn(namespaces);

    let (cloud_store, cloud_writer) = reflector::store::<GcpCloud>();
    let index = Arc::new(index::FleetIndex::default());
    let config =
        kube::runtime::controller::Config::default().concurrency(settings.reconcile_concurrency);
    let mut relist = slim::Relist::default();
    let listed = Arc::new(tokio::sync::Notify::new());
    let vs_controller = indexed_controller::<VirtualService>(
        &client,
        &index,
        shards.clone(),
        &mut relist,
        &reconcile_metrics,
        &listed,
    )
    .with_config(config.clone());
    let vr_controller = indexed_controller::<VpcRoute>(
        &client,
        &index,
        shards.clone(),
        &mut relist,
        &reconcile_metrics,
        &listed,
    )
    .with_config(config.clone());
    if shards.is_some() {
        relist.spawn(RELIST_QUIET);
    }
    let (vs_tx, vs_rx) = mpsc::unbounded_channel::<ObjectRef<VirtualService>>();
    let (vr_tx, vr_rx) = mpsc::unbounded_channel::<ObjectRef<VpcRoute>>();
    let ctx = Arc::new(Context {
        recorder: Recorder::new(client.clone(), context::reporter()),
        virtual_services: vs_controller.store(),
        vpc_routes: vr_controller.store(),
        index,
        relist,
        namespaces: ns_store,
        clouds: Default::default(),
        vs_trigger: vs_tx,
        vr_trigger: vr_tx,
        client: client.clone(),
        settings,
        metrics,
        reconcile_metrics: Arc::clone(&reconcile_metrics),
        shards,
        gcp_clouds: cloud_store.clone(),
        finalizing: Default::default(),
    });

    tokio::spawn(requeue_unjudged(Arc::downgrade(&ctx), listed));
    let vs = run_kind(vs_controller, vs_rx, &client, &ctx, &reconcile_metrics);
    let vr = run_kind(vr_controller, vr_rx, &client, &ctx, &reconcile_metrics);

    let cloud_stream = watcher(
        Api::<GcpCloud>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(cloud_writer)
    .applied_objects()
    .predicate_filter(cloud_change, Default::default());
    let (cloud_tx, cloud_rx) = mpsc::unbounded_channel::<ObjectRef<GcpCloud>>();
    if let Some(events) = shard_events {
        tokio::spawn(follow_shards(
            Arc::downgrade(&ctx),
            events,
            cloud_store.clone(),
            cloud_tx,
        ));
    }
    let cloud_controller = Controller::for_stream(cloud_stream, cloud_store.clone())
        .with_config(config)
        .reconcile_on(UnboundedReceiverStream::new(cloud_rx));
    // A deleted GcpCloud is never reconciled (it has no finalizer): its engine is stopped here.
    tokio::spawn(cloud::forget_deleted(Arc::downgrade(&ctx), cloud_store));
    let clouds = cloud_controller
        .shutdown_on_signal()
        .run(
            measured("GcpCloud", Arc::clone(&reconcile_metrics), cloud::reconcile),
            error_policy,
            Arc::clone(&ctx),
        )
        .for_each(|_| futures::future::ready(()));

    tokio::join!(vs, vr, clouds);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::conditions::{READY, set_condition};
    use crate::api::{GcpCloudStatus, InventoryCounts, QuotaStatus};

    fn cloud() -> GcpCloud {
        let mut cloud: GcpCloud = serde_json::from_value(serde_json::json!({
            "apiVersion": "adc.dev/v1alpha1", "kind": "GcpCloud",
            "metadata": {"name": "prod", "generation": 3},
            "spec": {"project": "acme-prod", "network": "prod-vpc", "region": "us-central1",
                     "credentials": {"workloadIdentity": {}}},
        }))
        .unwrap();
        let mut status = GcpCloudStatus::default();
        set_condition(
            &mut status.conditions,
            READY,
            true,
            "Connected",
            "reachable",
            Some(3),
            "2026-12-06T10:00:00Z",
        );
        cloud.status = Some(status);
        cloud
    }

    #[test]
    fn a_refresh_written_into_the_status_triggers_nothing() {
        let before = cloud();
        let mut after = before.clone();
        let status = after.status.as_mut().unwrap();
        status.inventory = Some(InventoryCounts {
            routes: 480,
            ..Default::default()
        });
        status.routes = Some("480/250".into());
        status.quota = vec![QuotaStatus {
            metric: "ROUTES".into(),
            scope: "global".into(),
            usage: 480.0,
            limit: 250.0,
            needed: Some(12.0),
            projected: Some(12.0),
        }];
        status.abandoned = vec!["r-1".into()];
        // The Ready condition rewritten with a new time only.
        set_condition(
            &mut status.conditions,
            READY,
            true,
            "Connected",
            "reachable",
            Some(3),
            "2026-12-06T11:00:00Z",
        );
        assert_eq!(cloud_change(&before), cloud_change(&after));
        assert_eq!(
            cloud_change_for_objects(&before),
            cloud_change_for_objects(&after)
        );
    }

    #[test]
    fn a_spec_change_triggers_the_cloud_and_its_objects() {
        let before = cloud();
        let mut after = before.clone();
        after.metadata.generation = Some(4);
        assert_ne!(cloud_change(&before), cloud_change(&after));
        assert_ne!(
            cloud_change_for_objects(&before),
            cloud_change_for_objects(&after)
        );
        let mut annotated = before.clone();
        annotated
            .metadata
            .annotations
            .get_or_insert_default()
            .insert("adc.dev/note".into(), "x".into());
        assert_ne!(cloud_change(&before), cloud_change(&annotated));
    }

    #[test]
    fn an_object_reacts_to_its_spec_metadata_and_identity_not_its_status() {
        let object: VirtualService = serde_json::from_value(serde_json::json!({
            "apiVersion": "adc.dev/v1alpha1", "kind": "VirtualService",
            "metadata": {"name": "web", "namespace": "shop", "uid": "u1", "generation": 1},
            "spec": {"cloudRef": "c", "vip": {"address": "10.1.0.5"}, "ports": [{"port": 443}],
                     "sourceRanges": ["10.0.0.0/8"],
                     "serviceEngines": [{"name": "se-1", "zone": "z"}]},
        }))
        .unwrap();
        let before = object_change(&object);
        let mut status_only = object.clone();
        status_only.status = Some(crate::api::VirtualServiceStatus {
            vip: Some("10.1.0.5".into()),
            ..Default::default()
        });
        assert_eq!(before, object_change(&status_only));
        let changed = |edit: &dyn Fn(&mut VirtualService)| {
            let mut edited = object.clone();
            edit(&mut edited);
            object_change(&edited)
        };
        assert_ne!(before, changed(&|o| o.metadata.generation = Some(2)));
        assert_ne!(
            before,
            changed(&|o| o.metadata.finalizers = Some(vec!["adc.dev/cleanup".into()]))
        );
        assert_ne!(
            before,
            changed(&|o| {
                o.metadata.annotations =
                    Some([("adc.dev/approved-plan".to_string(), "abc".to_string())].into())
            })
        );
        assert_ne!(before, changed(&|o| o.metadata.uid = Some("u2".into())));
    }

    #[test]
    fn readiness_triggers_the_objects_only() {
        let before = cloud();
        let mut after = before.clone();
        set_condition(
            &mut after.status.as_mut().unwrap().conditions,
            READY,
            false,
            "GcpUnreachable",
            "cannot reach Compute",
            Some(3),
            "2026-12-06T11:00:00Z",
        );
        assert_eq!(cloud_change(&before), cloud_change(&after));
        assert_ne!(
            cloud_change_for_objects(&before),
            cloud_change_for_objects(&after)
        );
    }
}
