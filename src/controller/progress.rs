//! Fleet progress: how far the objects of each GcpCloud are and how much GCP work is still
//! queued for them, in `GcpCloud.status.progress` (so `kubectl get gcpcloud -w` reads as a
//! progress bar) and in the `adc_operator_objects` and `adc_operator_cloud_eta_seconds` metrics.
//!
//! What is counted and estimated is decided by the pure functions at the top ([`tally`],
//! [`time_left`], [`progress`]); the task at the bottom only feeds them every few seconds and
//! writes the status when it changed.

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::Store;

use super::context::{CloudRuntime, Context};
use super::metrics::ControllerMetrics;
use crate::api::conditions::{ObjectState, object_state};
use crate::api::{CloudProgress, Condition, FleetObject, GcpCloud, VirtualService, VpcRoute};
use crate::gcp::engine::EngineProgress;

/// How often a cloud's progress is looked at. A status write happens only when what it shows
/// changed, so an idle fleet costs no write at all.
pub const PROGRESS_PERIOD: Duration = Duration::from_secs(5);

/// The field manager of the progress writes: the GcpCloud reconcile's own status apply never
/// lists `status.progress`, so neither removes what the other wrote.
const FIELD_MANAGER: &str = "adc-operator-progress";

/// How long an operation is taken to last before one was seen DONE (Compute's typical route
/// and firewall operations take 5–15 s).
const ASSUMED_OPERATION: Duration = Duration::from_secs(10);

/// Objects of one cloud by kind, state and reason.
pub type Tally = BTreeMap<(&'static str, ObjectState, String), u32>;

/// Counts objects by kind, state and reason; `objects` yields `(kind, conditions, generation)`.
pub fn tally<'a>(
    objects: impl IntoIterator<Item = (&'static str, &'a [Condition], Option<i64>)>,
) -> Tally {
    let mut tally = Tally::new();
    for (kind, conditions, generation) in objects {
        let (state, reason) = object_state(conditions, generation);
        *tally.entry((kind, state, reason.to_string())).or_default() += 1;
    }
    tally
}

/// The time the queued and in-flight GCP work needs at least, from the bound Compute's fixed
/// per-minute write windows give: queued writes that fit in what is left of the current window
/// go at once; the rest go at the start of later windows, the last one in window
/// ⌈(queued − left) / writesPerMinute⌉ after this one. Then one operation's duration. `None`
/// when no work is queued or in flight.
pub fn time_left(work: &EngineProgress) -> Option<Duration> {
    if work.queued == 0 && work.in_flight == 0 {
        return None;
    }
    let scale = work.time_scale.clamp(1e-6, 1.0e3);
    let window = Duration::from_secs(60).mul_f64(scale);
    let queued = work.queued as u64;
    let sending = if queued <= work.writes_left_in_window {
        Duration::ZERO
    } else {
        let later = (queued - work.writes_left_in_window).div_ceil(work.writes_per_minute.max(1));
        work.window_left + window * u32::try_from(later.saturating_sub(1)).unwrap_or(u32::MAX)
    };
    let operation = work
        .typical_operation
        .unwrap_or_else(|| ASSUMED_OPERATION.mul_f64(scale));
    Some(sending + operation)
}

/// Rounds an estimate up to a step that keeps the status from changing every second: 5 s under
/// two minutes, 30 s under an hour, then 5 minutes.
pub fn coarse(estimate: Duration) -> Duration {
    let seconds = estimate.as_secs_f64().ceil() as u64;
    let step = match seconds {
        0..120 => 5,
        120..3600 => 30,
        _ => 300,
    };
    Duration::from_secs(seconds.div_ceil(step).max(1) * step)
}

/// `1h5m`, `2m30s`, `45s`.
pub fn format_duration(duration: Duration) -> String {
    let total = duration.as_secs();
    let (hours, minutes, seconds) = (total / 3600, total % 3600 / 60, total % 60);
    let mut text = String::new();
    if hours > 0 {
        text.push_str(&format!("{hours}h"));
    }
    if minutes > 0 {
        text.push_str(&format!("{minutes}m"));
    }
    if seconds > 0 || text.is_empty() {
        text.push_str(&format!("{seconds}s"));
    }
    text
}

/// `[#######...] 70% 700/1000`: ten cells, the percentage rounded down so that 100% means all;
/// `no objects` for a cloud nothing uses yet.
pub fn summary(ready: u32, objects: u32) -> String {
    if objects == 0 {
        return "no objects".to_string();
    }
    let percent = u64::from(ready) * 100 / u64::from(objects);
    let cells = (percent / 10) as usize;
    format!(
        "[{}{}] {percent}% {ready}/{objects}",
        "#".repeat(cells),
        ".".repeat(10 - cells)
    )
}

/// The status block for a cloud's tally and its engine's work (`None` before the engine exists).
pub fn progress(tally: &Tally, work: Option<&EngineProgress>) -> CloudProgress {
    let count = |wanted: Option<ObjectState>| -> u32 {
        tally
            .iter()
            .filter(|((_, state, _), _)| wanted.is_none_or(|w| w == *state))
            .map(|(_, n)| *n)
            .sum()
    };
    let objects = count(None);
    let ready = count(Some(ObjectState::Ready));
    CloudProgress {
        objects,
        ready,
        stalled: count(Some(ObjectState::Stalled)),
        writes_queued: work.map_or(0, |w| u32::try_from(w.queued).unwrap_or(u32::MAX)),
        operations_in_flight: work.map_or(0, |w| u32::try_from(w.in_flight).unwrap_or(u32::MAX)),
        estimated_time_left: work
            .and_then(time_left)
            .map(|left| format_duration(coarse(left))),
        summary: summary(ready, objects),
    }
}

/// The tally of the objects that name `cloud`.
fn tally_of(cloud: &str, vs: &Store<VirtualService>, vr: &Store<VpcRoute>) -> Tally {
    let (virtual_services, vpc_routes) = (vs.state(), vr.state());
    tally(using(cloud, &virtual_services).chain(using(cloud, &vpc_routes)))
}

/// `(kind, conditions, generation)` of the objects of one kind that name `cloud`.
fn using<'a, K: FleetObject>(
    cloud: &'a str,
    objects: &'a [Arc<K>],
) -> impl Iterator<Item = (&'static str, &'a [Condition], Option<i64>)> + 'a {
    objects
        .iter()
        .filter(move |o| o.cloud_ref() == cloud)
        .map(|o| (K::KIND, o.conditions(), o.meta().generation))
}

/// Looks at a cloud's progress every [`PROGRESS_PERIOD`] while its runtime lives: sets the
/// metrics and writes `status.progress` when it differs from what was last written (at first,
/// `stored`: what the cloud's status held when the runtime was built). Holds only weak
/// references.
pub fn watch(ctx: &Arc<Context>, runtime: &Arc<CloudRuntime>, stored: Option<CloudProgress>) {
    let weak_ctx: Weak<Context> = Arc::downgrade(ctx);
    let weak_runtime = Arc::downgrade(runtime);
    let cloud = runtime.view.cloud.clone();
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(PROGRESS_PERIOD);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut written = stored;
        let mut series: Vec<(&'static str, ObjectState, String)> = Vec::new();
        loop {
            ticks.tick().await;
            let (Some(ctx), Some(runtime)) = (weak_ctx.upgrade(), weak_runtime.upgrade()) else {
                break;
            };
            if runtime.engine.is_shut_down() {
                break;
            }
            let tally = tally_of(&cloud, &ctx.virtual_services, &ctx.vpc_routes);
            let work = runtime.engine.progress();
            drop(runtime);
            let progress = progress(&tally, Some(&work));
            export(&ctx.reconcile_metrics, &cloud, &tally, &work, &mut series);
            if written.as_ref() == Some(&progress) {
                continue;
            }
            let api: Api<GcpCloud> = Api::all(ctx.client.clone());
            let patch = serde_json::json!({"status": {"progress": &progress}});
            let params = PatchParams {
                field_manager: Some(FIELD_MANAGER.to_string()),
                ..PatchParams::default()
            };
            match super::status::patch_status(&api, &cloud, &params, &Patch::Merge(&patch)).await {
                Ok(_) => written = Some(progress),
                Err(kube::Error::Api(status)) if status.code == 404 => break,
                Err(err) => {
                    tracing::debug!(%cloud, error = %err, "progress status write failed; trying again at the next tick");
                }
            }
        }
        // A runtime replaced by a new one (the cloud's spec changed) leaves the series to the
        // new runtime's task; a cloud that is gone takes them along.
        if let Some(ctx) = weak_ctx.upgrade()
            && ctx.cloud(&cloud).is_none()
        {
            forget(&ctx.reconcile_metrics, &cloud, &mut series);
        }
    });
}

/// Sets the cloud's object and ETA gauges; series of (kind, state, reason) no longer present
/// are removed rather than left at their last value.
fn export(
    metrics: &ControllerMetrics,
    cloud: &str,
    tally: &Tally,
    work: &EngineProgress,
    series: &mut Vec<(&'static str, ObjectState, String)>,
) {
    for key in series.iter() {
        if !tally.contains_key(key) {
            metrics.remove_objects(cloud, key.0, key.1.label(), &key.2);
        }
    }
    series.clear();
    for ((kind, state, reason), count) in tally {
        metrics.set_objects(cloud, kind, state.label(), reason, *count);
        series.push((kind, *state, reason.clone()));
    }
    let eta = time_left(work).map_or(0.0, |d| d.as_secs_f64());
    metrics.set_eta(cloud, eta);
}

fn forget(
    metrics: &ControllerMetrics,
    cloud: &str,
    series: &mut Vec<(&'static str, ObjectState, String)>,
) {
    for (kind, state, reason) in series.drain(..) {
        metrics.remove_objects(cloud, kind, state.label(), &reason);
    }
    metrics.remove_eta(cloud);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::conditions::{READY, STALLED, set_condition};
    use proptest::prelude::*;

    const T0: &str = "2026-01-02T03:04:05Z";

    fn work(queued: usize, in_flight: usize) -> EngineProgress {
        EngineProgress {
            queued,
            in_flight,
            typical_operation: Some(Duration::from_secs(8)),
            writes_per_minute: 1500,
            writes_left_in_window: 0,
            window_left: Duration::from_secs(60),
            time_scale: 1.0,
        }
    }

    fn conditions(ready: bool, stalled: Option<&str>) -> Vec<Condition> {
        let mut conditions = Vec::new();
        set_condition(&mut conditions, READY, ready, "Synced", "", Some(1), T0);
        if let Some(reason) = stalled {
            set_condition(&mut conditions, STALLED, true, reason, "", Some(1), T0);
        }
        conditions
    }

    #[test]
    fn nothing_to_do_means_no_estimate() {
        assert_eq!(time_left(&work(0, 0)), None);
    }

    #[test]
    fn the_estimate_is_the_bound_of_the_rate_windows() {
        // 3,000 writes at 1,500 a minute, at the start of a spent window: the last goes at the
        // start of the second window after this one, then one operation.
        assert_eq!(
            time_left(&work(3000, 0)),
            Some(Duration::from_secs(60 + 60 + 8))
        );
        // 1,000 writes with 1,350 left in a window 20 s from its end: at once.
        let mut fits = work(1000, 0);
        fits.writes_left_in_window = 1350;
        fits.window_left = Duration::from_secs(20);
        assert_eq!(time_left(&fits), Some(Duration::from_secs(8)));
        // 2,000: the 650 that do not fit go when the window turns.
        fits.queued = 2000;
        assert_eq!(time_left(&fits), Some(Duration::from_secs(20 + 8)));
        // Only operations in flight: one operation's time.
        assert_eq!(time_left(&work(0, 40)), Some(Duration::from_secs(8)));
        // No operation seen yet: Compute's typical 10 s, in the engine's time.
        let mut scaled = work(150, 0);
        scaled.typical_operation = None;
        scaled.time_scale = 0.1;
        scaled.window_left = Duration::from_secs(6);
        assert_eq!(time_left(&scaled), Some(Duration::from_secs_f64(6.0 + 1.0)));
    }

    #[test]
    fn estimates_are_coarse_and_readable() {
        assert_eq!(coarse(Duration::from_millis(200)), Duration::from_secs(5));
        assert_eq!(coarse(Duration::from_secs(41)), Duration::from_secs(45));
        assert_eq!(coarse(Duration::from_secs(125)), Duration::from_secs(150));
        assert_eq!(coarse(Duration::from_secs(3601)), Duration::from_secs(3900));
        assert_eq!(format_duration(Duration::from_secs(45)), "45s");
        assert_eq!(format_duration(Duration::from_secs(150)), "2m30s");
        assert_eq!(format_duration(Duration::from_secs(3900)), "1h5m");
        assert_eq!(format_duration(Duration::ZERO), "0s");
    }

    #[test]
    fn the_summary_is_a_bar() {
        assert_eq!(summary(0, 0), "no objects");
        assert_eq!(summary(0, 10), "[..........] 0% 0/10");
        assert_eq!(summary(700, 1000), "[#######...] 70% 700/1000");
        assert_eq!(summary(999, 1000), "[#########.] 99% 999/1000");
    }

    #[test]
    fn progress_counts_by_state_and_reason() {
        let ready = conditions(true, None);
        let stalled = conditions(false, Some("QuotaExceeded"));
        let fresh: Vec<Condition> = Vec::new();
        let tally = tally([
            ("VirtualService", ready.as_slice(), Some(1)),
            ("VirtualService", ready.as_slice(), Some(1)),
            // Ready, but for an older generation: still to do.
            ("VirtualService", ready.as_slice(), Some(2)),
            ("VpcRoute", stalled.as_slice(), Some(1)),
            ("VpcRoute", fresh.as_slice(), Some(1)),
        ]);
        assert_eq!(
            tally.get(&("VirtualService", ObjectState::Ready, "Synced".into())),
            Some(&2)
        );
        assert_eq!(
            tally.get(&("VpcRoute", ObjectState::Stalled, "QuotaExceeded".into())),
            Some(&1)
        );
        assert_eq!(
            tally.get(&("VpcRoute", ObjectState::Reconciling, "Pending".into())),
            Some(&1)
        );
        let p = progress(&tally, Some(&work(1500, 20)));
        assert_eq!(
            (
                p.objects,
                p.ready,
                p.stalled,
                p.writes_queued,
                p.operations_in_flight
            ),
            (5, 2, 1, 1500, 20)
        );
        assert_eq!(p.estimated_time_left.as_deref(), Some("1m10s"));
        assert_eq!(p.summary, "[####......] 40% 2/5");
        // Idle: no estimate, and the same block every time (so no status write).
        let idle = progress(&tally, Some(&work(0, 0)));
        assert_eq!(idle.estimated_time_left, None);
        assert_eq!(idle, progress(&tally, Some(&work(0, 0))));
    }

    proptest! {
        #[test]
        fn more_work_never_shortens_the_estimate(
            queued in 0usize..100_000,
            more in 0usize..10_000,
            in_flight in 0usize..1_000,
            quota in 1u64..20_000,
        ) {
            let mut a = work(queued, in_flight);
            a.writes_per_minute = quota;
            let mut b = a;
            b.queued += more;
            let (ea, eb) = (time_left(&a), time_left(&b));
            prop_assert!(eb.unwrap_or_default() >= ea.unwrap_or_default());
            prop_assert!(coarse(eb.unwrap_or_default()) >= coarse(ea.unwrap_or_default()));
            // Never below the bound itself.
            if let Some(e) = ea {
                prop_assert!(coarse(e) >= e);
            }
        }

        #[test]
        fn progress_counts_add_up(states in proptest::collection::vec(0u8..3, 0..200)) {
            let ready = conditions(true, None);
            let stalled = conditions(false, Some("GuardRail"));
            let pending = conditions(false, None);
            let tally = tally(states.iter().map(|s| match s {
                0 => ("VirtualService", ready.as_slice(), Some(1)),
                1 => ("VirtualService", stalled.as_slice(), Some(1)),
                _ => ("VpcRoute", pending.as_slice(), Some(1)),
            }));
            let p = progress(&tally, None);
            prop_assert_eq!(p.objects as usize, states.len());
            prop_assert_eq!(p.ready as usize, states.iter().filter(|s| **s == 0).count());
            prop_assert_eq!(p.stalled as usize, states.iter().filter(|s| **s == 1).count());
            prop_assert!(p.ready + p.stalled <= p.objects);
        }
    }
}
