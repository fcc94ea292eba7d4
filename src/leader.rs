//! Leader election on a coordination.k8s.io Lease: one replica reconciles and talks to GCP, the
//! others stand by.
//!
//! The lease manager renews the Lease `grace` seconds before it lapses, but it does not stop a
//! leader whose renewal is late: a slow or unreachable API server would leave it reconciling
//! after a standby took over. So a fence watches the Lease from the leader's side as well, and
//! the leader steps down (the process exits; the pod restarts as a standby) as soon as the Lease
//! names someone else, or shortly before it would lapse without a renewal seen (client-go's
//! renew deadline). A standby takes over only after the lapse. The election runs on a thread
//! and a client of its own, so that a controller busy with thousands of objects cannot hold up
//! its renewals or its fence.

use std::future::Future;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};

/// The exit status of a replica that stepped down (lost or could not keep its lease): the pod
/// restarts as a standby. Distinct from 1 (an error) and 101 (a panic).
pub const STEP_DOWN_EXIT_CODE: i32 = 3;

/// What the election exports on /metrics: whether this replica leads, and how often the Lease
/// changed hands (its `spec.leaseTransitions`, as the leader's fence last read it; standbys do
/// not read the Lease and leave it at 0). With sharding every replica leads the clouds it holds
/// (`clouds_held`) and `sharding` is 1.
#[derive(Debug, Default)]
pub struct LeaderMetrics {
    pub leader: prometheus_client::metrics::gauge::Gauge,
    pub lease_transitions: prometheus_client::metrics::gauge::Gauge,
    /// With sharding: how many GcpClouds this replica holds.
    pub clouds_held: prometheus_client::metrics::gauge::Gauge,
    /// 1 when the replicas shard the clouds (every replica leads its own).
    pub sharding: prometheus_client::metrics::gauge::Gauge,
}

impl LeaderMetrics {
    /// Registers `leader` and `lease_transitions`.
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "leader",
            "1 on the replica that leads (reconciles and talks to GCP), 0 on a standby",
            self.leader.clone(),
        );
        registry.register(
            "lease_transitions",
            "How often the leader Lease changed hands (spec.leaseTransitions as the leader last read it)",
            self.lease_transitions.clone(),
        );
        registry.register(
            "clouds_held",
            "With sharding: the GcpClouds this replica holds the Lease of and reconciles",
            self.clouds_held.clone(),
        );
        registry.register(
            "sharding",
            "1 when the clouds are sharded over the replicas (each leads the clouds it holds), 0 under one leader",
            self.sharding.clone(),
        );
    }
}

/// How this replica takes part in the election.
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    /// The Lease's name.
    pub name: String,
    /// The Lease's namespace.
    pub namespace: String,
    /// This replica's identity (the pod's name).
    pub identity: String,
    /// Seconds a lease lasts without renewal.
    pub duration_seconds: u64,
}

impl LeaseSettings {
    /// Seconds before the lapse at which the leader renews: half the lease, so that a renewal
    /// held up by a busy process or a slow API server still has time to land.
    pub fn grace_seconds(&self) -> u64 {
        (self.duration_seconds / 2).max(1)
    }

    pub(crate) fn duration_seconds_at_least_2(&self) -> u64 {
        self.duration_seconds.max(2)
    }

    /// How long before the lapse the leader gives up if no renewal was seen: a quarter of the
    /// grace (the rest is the renewal's own time), within 250 ms to 2 s. It covers the clocks
    /// of two nodes disagreeing; a standby acts only after the lapse, and only after two calls.
    pub(crate) fn margin(&self) -> Duration {
        (Duration::from_secs(self.grace_seconds()) / 4)
            .clamp(Duration::from_millis(250), Duration::from_secs(2))
    }

    /// How often the fence reads the Lease: twice within the margin, at most once a second.
    pub(crate) fn fence_period(&self) -> Duration {
        (self.margin() / 2).min(Duration::from_secs(1))
    }
}

/// Why a leader stopped leading.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeadershipLost {
    /// The Lease names another holder (or none).
    #[error("the Lease is held by {0} now")]
    TakenOver(String),
    /// No renewal was seen in time: the Lease would lapse before one could land.
    #[error("the Lease was not renewed in time (it lapses in {0:?})")]
    NotRenewed(Duration),
    /// The lease manager stopped reporting.
    #[error("the lease manager stopped")]
    ManagerStopped,
}

/// What the fence concludes from one look at the Lease (`None` if it could not be read) and the
/// latest lapse time it has seen: go on (with the lapse time to remember) or step down.
pub fn judge(
    settings: &LeaseSettings,
    lease: Option<&Lease>,
    known_lapse: SystemTime,
    now: SystemTime,
) -> Result<SystemTime, LeadershipLost> {
    let mut lapse = known_lapse;
    if let Some(spec) = lease.and_then(|l| l.spec.as_ref()) {
        if spec.holder_identity.as_deref() != Some(settings.identity.as_str()) {
            let holder = spec.holder_identity.as_deref().unwrap_or("nobody");
            return Err(LeadershipLost::TakenOver(format!("{holder:?}")));
        }
        if let Some(renewed) = &spec.renew_time {
            let seconds = spec
                .lease_duration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .unwrap_or(settings.duration_seconds_at_least_2());
            let seen = SystemTime::from(renewed.0) + Duration::from_secs(seconds);
            lapse = lapse.max(seen);
        }
    }
    let left = lapse.duration_since(now).unwrap_or(Duration::ZERO);
    if left <= settings.margin() {
        return Err(LeadershipLost::NotRenewed(left));
    }
    Ok(lapse)
}

/// The election could not take place.
#[derive(Debug, thiserror::Error)]
pub enum ElectionError {
    #[error("starting the election's thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error("the election's Kubernetes client: {0}")]
    Client(#[source] kube::Error),
    #[error("setting up the Lease {lease}: {source}")]
    Setup {
        lease: String,
        #[source]
        source: kube_lease_manager::LeaseManagerError,
    },
    #[error("the lease manager stopped before this replica led")]
    WatchEnded,
}

/// Stands by until this replica holds the Lease, then runs `work`.
///
/// The election runs on a thread and a Kubernetes client of its own, so that a controller busy
/// with thousands of objects cannot hold up its renewals or its fence. When leadership is lost
/// `on_lost` runs on that thread; it must stop the work at once (the operator exits, and its
/// pod restarts as a standby).
pub async fn lead<F: Future>(
    config: kube::Config,
    settings: LeaseSettings,
    metrics: std::sync::Arc<LeaderMetrics>,
    on_lost: impl FnOnce(LeadershipLost) + Send + 'static,
    work: F,
) -> Result<F::Output, ElectionError> {
    let (leading_tx, leading_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("leader-election".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(err) => {
                    let _ = leading_tx.send(Err(ElectionError::Thread(err)));
                    return;
                }
            };
            if let Some(lost) = runtime.block_on(elect(config, &settings, &metrics, leading_tx)) {
                metrics.leader.set(0);
                on_lost(lost);
            }
        })
        .map_err(ElectionError::Thread)?;
    leading_rx.await.map_err(|_| ElectionError::WatchEnded)??;
    Ok(work.await)
}

/// The election itself, on its own thread: stands by, announces leadership through `leading`
/// (or why there is none), then watches until leadership is lost.
async fn elect(
    config: kube::Config,
    settings: &LeaseSettings,
    metrics: &LeaderMetrics,
    leading: tokio::sync::oneshot::Sender<Result<(), ElectionError>>,
) -> Option<LeadershipLost> {
    let client = match Client::try_from(config) {
        Ok(client) => client,
        Err(err) => {
            let _ = leading.send(Err(ElectionError::Client(err)));
            return None;
        }
    };
    let lease = kube_lease_manager::LeaseManagerBuilder::new(client.clone(), &settings.name)
        .with_namespace(&settings.namespace)
        .with_identity(&settings.identity)
        .with_duration(settings.duration_seconds_at_least_2())
        .with_grace(settings.grace_seconds())
        .with_field_manager("adc-operator")
        .build()
        .await;
    let lease = match lease {
        Ok(lease) => lease,
        Err(source) => {
            let _ = leading.send(Err(ElectionError::Setup {
                lease: format!("{}/{}", settings.namespace, settings.name),
                source,
            }));
            return None;
        }
    };
    let (mut leader, _renewal) = lease.watch().await;
    tracing::info!(identity = %settings.identity, lease = %format!("{}/{}", settings.namespace, settings.name), "standing by for leadership");
    while !*leader.borrow_and_update() {
        if leader.changed().await.is_err() {
            let _ = leading.send(Err(ElectionError::WatchEnded));
            return None;
        }
    }
    let mut fence = Fence::new(client, settings, metrics);
    // Two replicas that both found the Lease free may both have written it (the lease manager's
    // takeover is not a conditional update): the later write wins. Let such a write land, and
    // read who won, before leading.
    tokio::time::sleep(settings.margin()).await;
    if let Err(lost) = fence.check().await {
        return Some(lost);
    }
    tracing::info!(identity = %settings.identity, "leading: starting the controllers");
    metrics.leader.set(1);
    let _ = leading.send(Ok(()));
    let watched = async {
        loop {
            if leader.changed().await.is_err() {
                return LeadershipLost::ManagerStopped;
            }
            if !*leader.borrow_and_update() {
                return LeadershipLost::TakenOver("another replica".into());
            }
        }
    };
    tokio::select! {
        lost = watched => Some(lost),
        lost = fence.run() => Some(lost),
    }
}

/// The leader's own watch on the Lease.
struct Fence<'a> {
    leases: Api<Lease>,
    settings: &'a LeaseSettings,
    metrics: &'a LeaderMetrics,
    /// When the Lease lapses, by the latest renewal seen.
    lapse: SystemTime,
}

impl<'a> Fence<'a> {
    fn new(client: Client, settings: &'a LeaseSettings, metrics: &'a LeaderMetrics) -> Self {
        Self {
            leases: Api::namespaced(client, &settings.namespace),
            settings,
            metrics,
            // Just acquired: the lease runs at least until its first renewal is due.
            lapse: SystemTime::now() + Duration::from_secs(settings.duration_seconds_at_least_2())
                - Duration::from_secs(settings.grace_seconds()),
        }
    }

    /// Reads the Lease once and judges. A slow read is waited for until the moment the leader
    /// would step down anyway, so that a busy API server's late answer still counts.
    async fn check(&mut self) -> Result<(), LeadershipLost> {
        let patience = self
            .lapse
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO)
            .saturating_sub(self.settings.margin());
        let read = tokio::time::timeout(patience, self.leases.get(&self.settings.name));
        let lease = match read.await {
            Ok(Ok(lease)) => Some(lease),
            Ok(Err(err)) => {
                tracing::warn!(error = %err, "reading the Lease failed");
                None
            }
            Err(_) => None,
        };
        if let Some(transitions) = lease
            .as_ref()
            .and_then(|l| l.spec.as_ref())
            .and_then(|s| s.lease_transitions)
        {
            self.metrics.lease_transitions.set(i64::from(transitions));
        }
        self.lapse = judge(self.settings, lease.as_ref(), self.lapse, SystemTime::now())?;
        Ok(())
    }

    /// Checks every fence period until `judge` says to step down.
    async fn run(mut self) -> LeadershipLost {
        loop {
            if let Err(lost) = self.check().await {
                return lost;
            }
            tokio::time::sleep(self.settings.fence_period()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

    fn settings() -> LeaseSettings {
        LeaseSettings {
            name: "adc-operator".into(),
            namespace: "default".into(),
            identity: "pod-a".into(),
            duration_seconds: 15,
        }
    }

    fn lease(holder: &str, renewed: SystemTime) -> Lease {
        Lease {
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.into()),
                lease_duration_seconds: Some(15),
                renew_time: Some(MicroTime(
                    k8s_openapi::jiff::Timestamp::try_from(renewed).unwrap(),
                )),
                ..LeaseSpec::default()
            }),
            ..Lease::default()
        }
    }

    #[test]
    fn a_fresh_renewal_extends_the_lease() {
        let now = SystemTime::now();
        let seen = judge(&settings(), Some(&lease("pod-a", now)), now, now).unwrap();
        assert_eq!(seen, now + Duration::from_secs(15));
    }

    #[test]
    fn another_holder_means_stepping_down() {
        let now = SystemTime::now();
        assert_eq!(
            judge(&settings(), Some(&lease("pod-b", now)), now, now),
            Err(LeadershipLost::TakenOver("\"pod-b\"".into()))
        );
    }

    #[test]
    fn a_late_renewal_means_stepping_down_before_the_lapse() {
        // grace 7 s: the renewal is due 7 s before the lapse; without one seen by 1.75 s
        // before it, the leader steps down.
        let renewed = SystemTime::now();
        let lapse = renewed + Duration::from_secs(15);
        let s = settings();
        let on_time = lapse - Duration::from_secs(2);
        assert_eq!(
            judge(&s, Some(&lease("pod-a", renewed)), lapse, on_time),
            Ok(lapse)
        );
        let late = lapse - Duration::from_secs(1);
        assert!(matches!(
            judge(&s, Some(&lease("pod-a", renewed)), lapse, late),
            Err(LeadershipLost::NotRenewed(_))
        ));
    }

    #[test]
    fn an_unreadable_lease_counts_on_the_last_renewal_seen() {
        let now = SystemTime::now();
        let lapse = now + Duration::from_secs(10);
        assert_eq!(judge(&settings(), None, lapse, now), Ok(lapse));
        assert!(matches!(
            judge(&settings(), None, lapse, lapse - Duration::from_millis(500)),
            Err(LeadershipLost::NotRenewed(_))
        ));
    }

    #[test]
    fn an_older_read_never_shortens_what_was_seen() {
        let now = SystemTime::now();
        let lapse = now + Duration::from_secs(14);
        let stale = lease("pod-a", now - Duration::from_secs(10));
        assert_eq!(judge(&settings(), Some(&stale), lapse, now), Ok(lapse));
    }
}
