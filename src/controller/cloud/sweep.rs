//! The deletion sweep: a deleted GcpCloud has no finalizer, so its engine is stopped here.

use std::sync::{Arc, Weak};
use std::time::Duration;

use kube::runtime::reflector::{ObjectRef, Store};

use crate::api::GcpCloud;
use crate::controller::context::{CloudRuntime, Context};

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
