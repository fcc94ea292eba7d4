//! Keeping a cloud's inventory loaded: the zones objects use, full refreshes, and the zones
//! a new object names.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::controller::context::{CloudRuntime, Context};
use crate::controller::error::Error;

/// Failed inventory refreshes in a row a Ready cloud stays Ready through (each retried in 30 s);
/// the next one makes it not Ready, and its objects wait.
pub(super) const STALE_REFRESHES_TOLERATED: u32 = 3;
/// How soon the inventory is refreshed again while operations this engine did not send still
/// run (see `CloudRuntime::settling`).
pub(super) const SETTLING_REFRESH: Duration = Duration::from_secs(5);

/// Zones whose instances the objects of `cloud` use.
pub(super) fn zones_in_use(ctx: &Context, cloud: &str, region: &str) -> BTreeSet<String> {
    let mut zones: BTreeSet<String> = ctx
        .index
        .instances_of(cloud)
        .into_iter()
        .map(|(zone, _)| zone)
        .collect();
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
        let was_quiet = runtime.quiet_once.swap(in_flight == 0, Ordering::Relaxed);
        runtime
            .settling
            .store(in_flight > 0 || !was_quiet, Ordering::Relaxed);
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
