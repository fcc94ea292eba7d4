//! The controllers: one per kind, glued to the pure planner and the GCP engine. Every trigger of
//! a reconcile is declared here, in one place.

pub mod apply;
pub mod claims;
pub mod cloud;
pub mod context;
pub mod error;
pub mod metrics;
pub mod pools;
pub mod progress;
pub mod reconcile;
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

/// What of a GcpCloud its objects and its own reconcile react to: everything but
/// `status.progress`, which the progress task rewrites every few seconds during a rollout and
/// which no reconcile reads. Without this filter each progress write would reconcile the cloud
/// (a full inventory refresh) and every object that uses it.
fn cloud_change(cloud: &GcpCloud) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut status = cloud.status.clone();
    if let Some(status) = status.as_mut() {
        status.progress = None;
    }
    let meta = &cloud.metadata;
    let seen = serde_json::to_string(&(
        meta.generation,
        &meta.deletion_timestamp,
        &meta.labels,
        &meta.annotations,
        &status,
    ))
    .ok()?;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    seen.hash(&mut hasher);
    Some(hasher.finish())
}

/// GcpCloud changes as triggers, without the progress-only ones ([`cloud_change`]). A deleted
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
    .predicate_filter(cloud_change, Default::default())
}

fn error_policy<K>(_object: Arc<K>, error: &Error, _ctx: Arc<Context>) -> Action {
    if let Error::Conflict(_) = error {
        // Expected while the watch catches up with the operator's own patch: try again soon.
        tracing::debug!(error = %error, "reconcile raced a newer version of the object");
        return Action::requeue(Duration::from_millis(500));
    }
    tracing::warn!(error = %error, kind = %error.label(), "reconcile failed");
    Action::requeue(Duration::from_secs(10))
}

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
            let outcome = reconcile(object, ctx).await;
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

/// Runs every controller until the process is told to stop.
pub async fn run(
    client: Client,
    settings: OperatorSettings,
    metrics: Arc<GcpMetrics>,
    reconcile_metrics: Arc<ControllerMetrics>,
) -> Result<(), Error> {
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

    let vs_controller = Controller::new(
        Api::<VirtualService>::all(client.clone()),
        watcher::Config::default(),
    );
    let vr_controller = Controller::new(
        Api::<VpcRoute>::all(client.clone()),
        watcher::Config::default(),
    );
    let (vs_tx, vs_rx) = mpsc::unbounded_channel::<ObjectRef<VirtualService>>();
    let (vr_tx, vr_rx) = mpsc::unbounded_channel::<ObjectRef<VpcRoute>>();
    let ctx = Arc::new(Context {
        recorder: Recorder::new(client.clone(), context::reporter()),
        virtual_services: vs_controller.store(),
        vpc_routes: vr_controller.store(),
        namespaces: ns_store,
        clouds: Default::default(),
        vs_trigger: vs_tx,
        vr_trigger: vr_tx,
        client: client.clone(),
        settings,
        metrics,
        reconcile_metrics: Arc::clone(&reconcile_metrics),
    });

    let vs = run_kind(vs_controller, vs_rx, &client, &ctx, &reconcile_metrics);
    let vr = run_kind(vr_controller, vr_rx, &client, &ctx, &reconcile_metrics);

    let (cloud_store, cloud_writer) = reflector::store::<GcpCloud>();
    let cloud_stream = watcher(
        Api::<GcpCloud>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(cloud_writer)
    .applied_objects()
    .predicate_filter(cloud_change, Default::default());
    let cloud_controller = Controller::for_stream(cloud_stream, cloud_store.clone());
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
