//! The instance poll: the status of the instances objects route to, re-read every
//! `spec.instancePollInterval` with one `instances.aggregatedList` for all zones of the instances
//! that are not RUNNING (and a read by name of those the list leaves open), so that a stopped
//! service engine is noticed between full inventory refreshes.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use crate::api::parse_duration;
use crate::controller::context::{CloudRuntime, Context, Triggers};

/// Used when `instancePollInterval` does not parse.
pub(super) const DEFAULT_INSTANCE_POLL: Duration = Duration::from_secs(5);
/// Polls closer together than this would only spend the read budget reconciles need.
pub(super) const MIN_INSTANCE_POLL: Duration = Duration::from_secs(1);
/// Beyond this the inventory resync sees the instances anyway (and a timer stays in range).
pub(super) const MAX_INSTANCE_POLL: Duration = Duration::from_secs(24 * 3600);

/// The poll period `spec.instancePollInterval` asks for. The floor is in GCP time: under
/// `--gcp-time-scale` (a compressed emulator) it shrinks with the scale.
pub(super) fn instance_poll_period(spec: &crate::api::GcpCloudSpec, time_scale: f64) -> Duration {
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
pub(super) fn poll_instances(ctx: &Context, runtime: &Arc<CloudRuntime>) {
    let triggers = ctx.triggers();
    let period = instance_poll_period(&runtime.spec, runtime.engine.settings().time_scale);
    let cloud = runtime.view.cloud.clone();
    let weak = Arc::downgrade(runtime);
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        let mut cached: Option<(u64, Vec<String>)> = None;
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
            // The names change far less often than the poll runs.
            let version = triggers.index.instances_version();
            let names = match &cached {
                Some((at, names)) if *at == version => names,
                _ => {
                    &cached
                        .insert((version, engines_in_use(&triggers, &cloud)))
                        .1
                }
            };
            match engine.poll_instances(&zones, names).await {
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

/// The names of the instances the objects of `cloud` use, sorted (from the fleet index: the
/// poll runs every interval at every N).
fn engines_in_use(triggers: &Triggers, cloud: &str) -> Vec<String> {
    let names: BTreeSet<String> = triggers
        .index
        .instances_of(cloud)
        .into_iter()
        .map(|(_, name)| name)
        .collect();
    names.into_iter().collect()
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
