//! Sharding by cloud (`--sharding`): every replica runs, and each GcpCloud, with all its
//! VirtualServices and VpcRoutes and its engine, is reconciled by exactly one of them: the
//! holder of the cloud's Lease (`{lease}-cloud-{cloud}` in the release namespace).
//!
//! - **Membership.** Each replica renews a Lease of its own (`{lease}-member-{identity}`);
//!   the live ones are the replicas the clouds are spread over.
//! - **Balance** ([`balance`]): a replica contends (with kube-lease-manager, one manager per
//!   cloud) for free clouds up to `ceil(clouds / live replicas)`, and hands one back at a time
//!   when it holds more while another replica has room.
//! - **Hand-back.** Reconciles of the cloud stop, its engine drops what it has not sent and
//!   waits until Compute has answered what it did send (no operation left unaccounted for),
//!   then the engine stops and the Lease is released. The next holder's first refresh settles
//!   on what is left, as after a leader's takeover.
//! - **Fence, per cloud.** One list of the namespace's Leases each fence period judges every
//!   held cloud as the leader's fence judges its Lease ([`crate::leader::judge`]): a cloud whose
//!   Lease names someone else, or whose renewal is not seen in time, is dropped at once. Its
//!   engine also carries a [`WriteGate`] that this loop moves forward with every renewal seen:
//!   if the loop itself stalls, the engine stops writing by itself before the Lease lapses.
//!
//! Like the election, this runs on a thread and a Kubernetes client of its own, so that a
//! controller busy with thousands of objects cannot hold up its renewals or its fence.

pub mod balance;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use tokio::sync::{mpsc, oneshot, watch};

use crate::api::GcpCloud;
use crate::gcp::WriteGate;
use crate::leader::{LeadershipLost, LeaseSettings, judge};

/// The longest a hand-back waits for its engine's operations before it releases the Lease
/// anyway (the next holder's settling refresh accounts for what is still running).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a lapsed membership Lease stays before a replica deletes it.
const MEMBER_GC_AFTER: Duration = Duration::from_secs(600);

/// What the shard loop tells the controllers.
#[derive(Debug)]
pub enum ShardEvent {
    /// This replica holds the cloud now: reconcile it (it builds the engine, refreshes, and
    /// then reconciles its objects).
    Acquired(String),
    /// The cloud's Lease is lost (taken over or not renewed in time): its engine must stop.
    Lost(String),
    /// The clouds and the replicas were read for the first time: from now on the stores can
    /// tell this replica's clouds from the others'.
    Listed,
    /// Hand the cloud back: stop its engine once nothing it sent is unaccounted for, then
    /// answer on `done`.
    Release {
        cloud: String,
        done: oneshot::Sender<()>,
    },
}

/// How this replica takes part.
#[derive(Debug, Clone)]
pub struct ShardSettings {
    /// The start of every Lease name (the chart's `leaderElection.leaseName`).
    pub lease_prefix: String,
    /// The release namespace.
    pub namespace: String,
    /// This replica's identity (the pod's name).
    pub identity: String,
    /// Seconds a cloud's Lease lasts without renewal.
    pub duration_seconds: u64,
}

impl ShardSettings {
    /// The Lease of a cloud.
    pub fn cloud_lease(&self, cloud: &str) -> String {
        lease_name(&self.lease_prefix, "cloud", cloud)
    }

    /// The membership Lease of a replica.
    pub fn member_lease(&self, identity: &str) -> String {
        lease_name(&self.lease_prefix, "member", identity)
    }

    fn lease_settings(&self, name: String) -> LeaseSettings {
        LeaseSettings {
            name,
            namespace: self.namespace.clone(),
            identity: self.identity.clone(),
            duration_seconds: self.duration_seconds,
        }
    }
}

/// `{prefix}-{kind}-{name}`, a valid Lease name: lowercase, other characters than letters,
/// digits, '-' and '.' replaced by '-', and a name too long for 253 characters shortened with
/// a hash of the whole.
pub fn lease_name(prefix: &str, kind: &str, name: &str) -> String {
    let whole = format!("{prefix}-{kind}-{name}");
    let clean: String = whole
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    if clean.len() <= 253 {
        return clean;
    }
    let hash = balance::weight(&whole, "");
    format!("{}-{hash:016x}", &clean[..236])
}

/// What the controllers ask of the shards: which clouds are this replica's.
#[derive(Debug)]
pub struct Shards {
    settings: ShardSettings,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Clouds this replica holds and reconciles, with their engines' write gates.
    held: BTreeMap<String, WriteGate>,
    /// Live replicas.
    members: BTreeSet<String>,
    /// Every GcpCloud, as last listed.
    clouds: BTreeSet<String>,
    /// Whether the clouds and the members were read at least once: until then this replica
    /// speaks for no cloud (at start every cloud would look missing).
    known: bool,
}

impl Shards {
    fn new(settings: ShardSettings) -> Self {
        let mut state = State::default();
        state.members.insert(settings.identity.clone());
        Self {
            settings,
            state: Mutex::new(state),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Whether this replica reconciles `cloud` (and every object that names it). A cloud that
    /// does not exist has no Lease: one live replica (by rendezvous weight) speaks for it, so
    /// that the objects naming it still say so in their status. `exists` is whether the
    /// caller's own view (the controller's watch) holds the cloud: a cloud is missing only when
    /// neither that view nor the shard loop's last list has it, so that a cloud just created is
    /// never taken for a missing one by a replica that has not listed it yet.
    pub fn holds(&self, cloud: &str, exists: bool) -> bool {
        let state = self.state();
        if state.held.contains_key(cloud) {
            return true;
        }
        !exists
            && state.known
            && !state.clouds.contains(cloud)
            && balance::speaker(cloud, &state.members) == Some(self.settings.identity.as_str())
    }

    /// Whether `cloud` exists and another replica reconciles it: the stores keep only stubs
    /// of its objects (`controller::slim`).
    pub fn elsewhere(&self, cloud: &str) -> bool {
        let state = self.state();
        state.known && !state.held.contains_key(cloud) && state.clouds.contains(cloud)
    }

    /// The write gate of a held cloud's engine.
    pub fn gate(&self, cloud: &str) -> Option<WriteGate> {
        self.state().held.get(cloud).cloned()
    }

    /// The clouds this replica holds.
    pub fn held(&self) -> Vec<String> {
        self.state().held.keys().cloned().collect()
    }

    /// This replica's identity.
    pub fn identity(&self) -> &str {
        &self.settings.identity
    }
}

/// The shard loop could not start.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error("starting the shard thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error("the shard loop's Kubernetes client: {0}")]
    Client(#[source] kube::Error),
}

/// Starts the shard loop on a thread of its own. `on_stopped` runs on that thread if the loop
/// ends (its runtime failed): the process must exit, since nothing renews its Leases any more
/// (the write gates close by themselves before they lapse).
pub fn start(
    config: kube::Config,
    settings: ShardSettings,
    held_gauge: prometheus_client::metrics::gauge::Gauge,
    on_stopped: impl FnOnce(String) + Send + 'static,
) -> Result<(Arc<Shards>, mpsc::UnboundedReceiver<ShardEvent>), ShardError> {
    let client = Client::try_from(config).map_err(ShardError::Client)?;
    let shards = Arc::new(Shards::new(settings));
    let (events, receiver) = mpsc::unbounded_channel();
    let looped = Arc::clone(&shards);
    std::thread::Builder::new()
        .name("shards".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(err) => {
                    on_stopped(format!("the shard loop's runtime: {err}"));
                    return;
                }
            };
            runtime.block_on(Loop::new(client, looped, events, held_gauge).run());
            on_stopped("the shard loop stopped".into());
        })
        .map_err(ShardError::Thread)?;
    Ok((shards, receiver))
}

/// A kube-lease-manager contending for (or holding) one cloud's Lease.
struct Contender {
    /// What the manager says: whether this replica holds the Lease.
    holding: watch::Receiver<bool>,
    /// Stops the manager; it releases the Lease if this replica holds it.
    stop: Option<oneshot::Sender<()>>,
    /// When the manager first said it holds the Lease.
    since: Option<SystemTime>,
}

impl Contender {
    fn start(client: Client, settings: &ShardSettings, cloud: &str) -> Self {
        let (holding_tx, holding) = watch::channel(false);
        let (stop, stopped) = oneshot::channel::<()>();
        let lease = settings.cloud_lease(cloud);
        let namespace = settings.namespace.clone();
        let identity = settings.identity.clone();
        let duration = settings.duration_seconds.max(2);
        let grace = (duration / 2).max(1);
        tokio::spawn(async move {
            let manager = kube_lease_manager::LeaseManagerBuilder::new(client, &lease)
                .with_namespace(&namespace)
                .with_identity(&identity)
                .with_duration(duration)
                .with_grace(grace)
                .with_field_manager("adc-operator")
                .build()
                .await;
            let manager = match manager {
                Ok(manager) => manager,
                Err(err) => {
                    tracing::warn!(%lease, error = %err, "setting up a cloud's Lease failed; trying again");
                    return;
                }
            };
            let (mut leading, handle) = manager.watch().await;
            let forward = async {
                while leading.changed().await.is_ok() {
                    let now = *leading.borrow_and_update();
                    if holding_tx.send(now).is_err() {
                        return;
                    }
                }
            };
            tokio::select! {
                _ = stopped => {}
                () = forward => {}
            }
            // Dropping the receiver ends the manager's loop, which releases the Lease if held.
            drop(leading);
            match tokio::time::timeout(Duration::from_secs(5), handle).await {
                Ok(Ok(Err(err))) => {
                    tracing::warn!(%lease, error = %err, "releasing a cloud's Lease failed")
                }
                Ok(_) => {}
                Err(_) => tracing::warn!(%lease, "releasing a cloud's Lease took over 5 s"),
            }
            let _ = holding_tx.send(false);
        });
        Self {
            holding,
            stop: Some(stop),
            since: None,
        }
    }

    /// Whether the manager's task has ended (its setup failed, or it was stopped).
    fn ended(&self) -> bool {
        self.holding.has_changed().is_err()
    }

    fn says_held(&self) -> bool {
        *self.holding.borrow()
    }
}

impl Drop for Contender {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A cloud being handed back.
struct Handing {
    done: oneshot::Receiver<()>,
    since: Instant,
}

/// The shard loop's own state.
struct Loop {
    client: Client,
    shards: Arc<Shards>,
    events: mpsc::UnboundedSender<ShardEvent>,
    held_gauge: prometheus_client::metrics::gauge::Gauge,
    leases: Api<Lease>,
    contenders: BTreeMap<String, Contender>,
    /// When each held (or handed-back) cloud's Lease lapses, by the latest renewal seen.
    lapses: BTreeMap<String, SystemTime>,
    handing: BTreeMap<String, Handing>,
    /// Gates of clouds being handed back: open until their Lease is released.
    handing_gates: BTreeMap<String, WriteGate>,
    member_renewed: Option<Instant>,
    /// When the loop started: it decides nothing before replicas started with it have
    /// announced themselves, so that the first one up does not take every cloud only to hand
    /// most of them back.
    started: Instant,
    /// Every GcpCloud and the live members, as last read.
    clouds: Option<BTreeSet<String>>,
}

impl Loop {
    fn new(
        client: Client,
        shards: Arc<Shards>,
        events: mpsc::UnboundedSender<ShardEvent>,
        held_gauge: prometheus_client::metrics::gauge::Gauge,
    ) -> Self {
        let leases = Api::namespaced(client.clone(), &shards.settings.namespace);
        Self {
            client,
            shards,
            events,
            held_gauge,
            leases,
            contenders: BTreeMap::new(),
            lapses: BTreeMap::new(),
            handing: BTreeMap::new(),
            handing_gates: BTreeMap::new(),
            member_renewed: None,
            started: Instant::now(),
            clouds: None,
        }
    }

    fn settings(&self) -> &ShardSettings {
        &self.shards.settings
    }

    fn lease_settings(&self, cloud: &str) -> LeaseSettings {
        self.settings()
            .lease_settings(self.settings().cloud_lease(cloud))
    }

    async fn run(mut self) {
        let period = self.lease_settings("").fence_period();
        tracing::info!(identity = %self.settings().identity, namespace = %self.settings().namespace, "sharding: contending for clouds");
        loop {
            self.tick().await;
            tokio::time::sleep(period).await;
        }
    }

    /// One look: renew membership, read the Leases and the clouds, fence, confirm, decide.
    async fn tick(&mut self) {
        self.renew_membership().await;
        let leases = self.read_leases().await;
        let now = SystemTime::now();
        self.fence(leases.as_deref(), now);
        if let Some(leases) = &leases {
            self.confirm(leases, now);
        }
        self.read_clouds().await;
        self.finish_hand_backs();
        if let (Some(leases), Some(clouds)) = (&leases, self.clouds.clone()) {
            self.balance(leases, &clouds, now);
            self.collect(leases, &clouds, now).await;
        }
        let held = self.shards.state().held.len();
        self.held_gauge.set(i64::try_from(held).unwrap_or(i64::MAX));
    }

    async fn renew_membership(&mut self) {
        let every = Duration::from_secs(self.settings().duration_seconds.max(3) / 3);
        if self.member_renewed.is_some_and(|at| at.elapsed() < every) {
            return;
        }
        let settings = self.settings();
        let name = settings.member_lease(&settings.identity);
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(
                    [
                        (
                            "app.kubernetes.io/managed-by".to_string(),
                            "adc-operator".to_string(),
                        ),
                        ("adc.dev/lease".to_string(), "member".to_string()),
                    ]
                    .into(),
                ),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(settings.identity.clone()),
                lease_duration_seconds: i32::try_from(settings.duration_seconds).ok(),
                renew_time: Some(MicroTime(k8s_openapi::jiff::Timestamp::now())),
                ..LeaseSpec::default()
            }),
        };
        let params = PatchParams::apply("adc-operator-shards").force();
        let patched = tokio::time::timeout(
            Duration::from_secs(5),
            self.leases.patch(&name, &params, &Patch::Apply(&lease)),
        )
        .await;
        match patched {
            Ok(Ok(_)) => self.member_renewed = Some(Instant::now()),
            Ok(Err(err)) => {
                tracing::warn!(lease = %name, error = %err, "renewing this replica's membership failed")
            }
            Err(_) => tracing::warn!(lease = %name, "renewing this replica's membership timed out"),
        }
    }

    /// Every Lease of the namespace, or None if they could not be read before the first held
    /// cloud's fence would give up anyway.
    async fn read_leases(&self) -> Option<Vec<Lease>> {
        let now = SystemTime::now();
        let margin = self.lease_settings("").margin();
        let patience = self
            .lapses
            .values()
            .min()
            .map(|lapse| {
                lapse
                    .duration_since(now)
                    .unwrap_or(Duration::ZERO)
                    .saturating_sub(margin)
            })
            .unwrap_or(Duration::from_secs(5))
            .max(Duration::from_millis(100));
        match tokio::time::timeout(patience, self.leases.list(&ListParams::default())).await {
            Ok(Ok(list)) => Some(list.items),
            Ok(Err(err)) => {
                tracing::warn!(error = %err, "reading the Leases failed");
                None
            }
            Err(_) => None,
        }
    }

    async fn read_clouds(&mut self) {
        let api: Api<GcpCloud> = Api::all(self.client.clone());
        let listed = tokio::time::timeout(
            Duration::from_secs(5),
            api.list_metadata(&ListParams::default()),
        )
        .await;
        if let Ok(Ok(list)) = listed {
            let clouds: BTreeSet<String> = list
                .items
                .into_iter()
                .filter(|c| c.metadata.deletion_timestamp.is_none())
                .filter_map(|c| c.metadata.name)
                .collect();
            self.shards.state().clouds = clouds.clone();
            self.clouds = Some(clouds);
        }
    }

    fn find<'a>(&self, leases: &'a [Lease], name: &str) -> Option<&'a Lease> {
        leases
            .iter()
            .find(|l| l.metadata.name.as_deref() == Some(name))
    }

    /// Judges every held (and handed-back) cloud by its Lease; drops those lost.
    fn fence(&mut self, leases: Option<&[Lease]>, now: SystemTime) {
        let watched: Vec<String> = self.lapses.keys().cloned().collect();
        for cloud in watched {
            let settings = self.lease_settings(&cloud);
            let lease = leases.and_then(|l| self.find(l, &settings.name));
            let verdict = match (leases, lease) {
                // Listed, and the Lease is gone: nobody holds it.
                (Some(_), None) => Err(LeadershipLost::TakenOver("nobody".into())),
                _ => judge(&settings, lease, self.lapses[&cloud], now),
            };
            let verdict = verdict.and_then(|lapse| match self.contenders.get(&cloud) {
                Some(c) if c.says_held() => Ok(lapse),
                _ => Err(LeadershipLost::ManagerStopped),
            });
            match verdict {
                Ok(lapse) => {
                    self.lapses.insert(cloud.clone(), lapse);
                    let deadline = lapse - settings.margin();
                    if let Some(gate) = self.gate_of(&cloud) {
                        gate.open_until(deadline);
                    }
                }
                Err(lost) => self.lose(&cloud, &lost),
            }
        }
    }

    fn gate_of(&self, cloud: &str) -> Option<WriteGate> {
        self.shards
            .state()
            .held
            .get(cloud)
            .cloned()
            .or_else(|| self.handing_gates.get(cloud).cloned())
    }

    fn lose(&mut self, cloud: &str, lost: &LeadershipLost) {
        tracing::error!(%cloud, reason = %lost, "lost the cloud's Lease: its engine stops writing");
        if let Some(gate) = self.shards.state().held.remove(cloud) {
            gate.close();
        }
        if let Some(gate) = self.handing_gates.remove(cloud) {
            gate.close();
        }
        self.handing.remove(cloud);
        self.lapses.remove(cloud);
        self.contenders.remove(cloud);
        let _ = self.events.send(ShardEvent::Lost(cloud.to_string()));
    }

    /// Managers that say they hold a Lease become held clouds once a margin later the Lease
    /// still names this replica: two replicas that both found a Lease free may both have
    /// written it (kube-lease-manager's takeover is not a conditional update), and the later
    /// write wins.
    fn confirm(&mut self, leases: &[Lease], now: SystemTime) {
        let margin = self.lease_settings("").margin();
        let identity = self.settings().identity.clone();
        let mut confirmed = Vec::new();
        let mut beaten = Vec::new();
        for (cloud, contender) in &mut self.contenders {
            if self.lapses.contains_key(cloud) {
                continue;
            }
            if contender.ended() {
                beaten.push(cloud.clone());
                continue;
            }
            if !contender.says_held() {
                contender.since = None;
                continue;
            }
            let since = *contender.since.get_or_insert(now);
            if now.duration_since(since).unwrap_or_default() < margin {
                continue;
            }
            let name = self.shards.settings.cloud_lease(cloud);
            let spec = leases
                .iter()
                .find(|l| l.metadata.name.as_deref() == Some(name.as_str()))
                .and_then(|l| l.spec.as_ref());
            match spec {
                Some(spec) if spec.holder_identity.as_deref() == Some(identity.as_str()) => {
                    let seconds = spec
                        .lease_duration_seconds
                        .and_then(|s| u64::try_from(s).ok())
                        .unwrap_or(self.shards.settings.duration_seconds);
                    let renewed = spec
                        .renew_time
                        .as_ref()
                        .map(|t| SystemTime::from(t.0))
                        .unwrap_or(since);
                    confirmed.push((cloud.clone(), renewed + Duration::from_secs(seconds)));
                }
                _ => beaten.push(cloud.clone()),
            }
        }
        for cloud in beaten {
            self.contenders.remove(&cloud);
        }
        for (cloud, lapse) in confirmed {
            let settings = self.lease_settings(&cloud);
            let left = lapse.duration_since(now).unwrap_or_default();
            if left <= settings.margin() {
                // Held, but too close to the lapse to start writing: the next renewal decides.
                continue;
            }
            let gate = WriteGate::new();
            gate.open_until(lapse - settings.margin());
            self.shards.state().held.insert(cloud.clone(), gate);
            self.lapses.insert(cloud.clone(), lapse);
            tracing::info!(%cloud, "holding the cloud's Lease: reconciling it");
            let _ = self.events.send(ShardEvent::Acquired(cloud));
        }
    }

    /// Hand-backs whose engine drained (or took too long) release their Lease.
    fn finish_hand_backs(&mut self) {
        let mut finished = Vec::new();
        for (cloud, handing) in &mut self.handing {
            let answered = !matches!(
                handing.done.try_recv(),
                Err(oneshot::error::TryRecvError::Empty)
            );
            if answered || handing.since.elapsed() > DRAIN_TIMEOUT {
                finished.push(cloud.clone());
            }
        }
        for cloud in finished {
            tracing::info!(%cloud, "handing the cloud back: releasing its Lease");
            self.handing.remove(&cloud);
            if let Some(gate) = self.handing_gates.remove(&cloud) {
                gate.close();
            }
            self.lapses.remove(&cloud);
            // Stopping the manager releases the Lease.
            self.contenders.remove(&cloud);
        }
    }

    fn balance(&mut self, leases: &[Lease], clouds: &BTreeSet<String>, now: SystemTime) {
        let settings = self.shards.settings.clone();
        let live = |lease: &Lease| -> Option<String> {
            let spec = lease.spec.as_ref()?;
            let holder = spec.holder_identity.clone().filter(|h| !h.is_empty())?;
            let renewed = SystemTime::from(spec.renew_time.as_ref()?.0);
            let seconds = u64::try_from(spec.lease_duration_seconds?).ok()?;
            (renewed + Duration::from_secs(seconds) > now).then_some(holder)
        };
        let member_prefix = settings.member_lease("");
        let mut members: BTreeSet<String> = leases
            .iter()
            .filter(|l| {
                l.metadata
                    .name
                    .as_deref()
                    .is_some_and(|n| n.starts_with(&member_prefix))
            })
            .filter_map(live)
            .collect();
        members.insert(settings.identity.clone());
        let mut holders: BTreeMap<String, String> = BTreeMap::new();
        for cloud in clouds {
            if let Some(holder) = self
                .find(leases, &settings.cloud_lease(cloud))
                .and_then(live)
            {
                holders.insert(cloud.clone(), holder);
            }
        }
        // What this replica holds or hands back is its own, whatever the list said.
        for cloud in self.lapses.keys() {
            holders.insert(cloud.clone(), settings.identity.clone());
        }
        {
            let mut state = self.shards.state();
            state.members = members.clone();
            if !std::mem::replace(&mut state.known, true) {
                let _ = self.events.send(ShardEvent::Listed);
            }
        }
        let settle = Duration::from_secs(settings.duration_seconds / 3)
            .clamp(Duration::from_secs(1), Duration::from_secs(5));
        if self.started.elapsed() < settle {
            return;
        }
        let decision = balance::decide(balance::View {
            me: &settings.identity,
            clouds,
            members: &members,
            holders: &holders,
        });
        // Contend for what the decision names; stop contending for the rest not yet held.
        let idle: Vec<String> = self
            .contenders
            .iter()
            .filter(|(c, contender)| {
                !self.lapses.contains_key(*c)
                    && !decision.contend.contains(*c)
                    // Held, waiting to be confirmed: it counts as this replica's already.
                    && !contender.says_held()
            })
            .map(|(c, _)| c.clone())
            .collect();
        for cloud in idle {
            self.contenders.remove(&cloud);
        }
        for cloud in &decision.contend {
            if !self.contenders.contains_key(cloud) {
                tracing::debug!(%cloud, "contending for the cloud's Lease");
                let contender = Contender::start(self.client.clone(), &settings, cloud);
                self.contenders.insert(cloud.clone(), contender);
            }
        }
        // Clouds deleted while held: let them go (their engine stops with the deletion).
        let gone: Vec<String> = self
            .shards
            .state()
            .held
            .keys()
            .filter(|c| !clouds.contains(*c))
            .cloned()
            .collect();
        for cloud in gone {
            self.hand_back(&cloud);
        }
        if let Some(cloud) = decision.release
            && self.handing.is_empty()
        {
            self.hand_back(&cloud);
        }
    }

    fn hand_back(&mut self, cloud: &str) {
        let Some(gate) = self.shards.state().held.remove(cloud) else {
            return;
        };
        tracing::info!(%cloud, "handing the cloud back to balance the replicas: draining its engine");
        self.handing_gates.insert(cloud.to_string(), gate);
        let (done, answer) = oneshot::channel();
        self.handing.insert(
            cloud.to_string(),
            Handing {
                done: answer,
                since: Instant::now(),
            },
        );
        let _ = self.events.send(ShardEvent::Release {
            cloud: cloud.to_string(),
            done,
        });
    }

    /// Deletes membership Leases lapsed long ago (pods come and go with new names) and the
    /// free Leases of clouds that no longer exist. Best effort, by the replica that speaks for
    /// the namespace.
    async fn collect(&self, leases: &[Lease], clouds: &BTreeSet<String>, now: SystemTime) {
        let settings = self.settings();
        let members = self.shards.state().members.clone();
        if balance::speaker("", &members) != Some(settings.identity.as_str()) {
            return;
        }
        let member_prefix = settings.member_lease("");
        let cloud_prefix = settings.cloud_lease("");
        for lease in leases {
            let Some(name) = lease.metadata.name.as_deref() else {
                continue;
            };
            let spec = lease.spec.as_ref();
            let lapsed_for = spec
                .and_then(|s| {
                    let renewed = SystemTime::from(s.renew_time.as_ref()?.0);
                    let seconds = u64::try_from(s.lease_duration_seconds?).ok()?;
                    now.duration_since(renewed + Duration::from_secs(seconds))
                        .ok()
                })
                .unwrap_or_default();
            let stale_member = name.starts_with(&member_prefix) && lapsed_for > MEMBER_GC_AFTER;
            let free = spec.is_none_or(|s| s.holder_identity.as_deref().is_none_or(str::is_empty))
                || lapsed_for > Duration::ZERO;
            let orphan_cloud = name.starts_with(&cloud_prefix)
                && free
                && !clouds.iter().any(|c| settings.cloud_lease(c) == name);
            if stale_member || orphan_cloud {
                match self.leases.delete(name, &DeleteParams::default()).await {
                    Ok(_) => tracing::info!(lease = %name, "deleted a Lease nobody uses"),
                    Err(err) => {
                        tracing::debug!(lease = %name, error = %err, "deleting an unused Lease failed")
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_names_are_valid_and_distinct() {
        assert_eq!(
            lease_name("adc-operator", "cloud", "prod"),
            "adc-operator-cloud-prod"
        );
        assert_eq!(
            lease_name("adc-operator", "member", "Pod_A"),
            "adc-operator-member-pod-a"
        );
        let long = "x".repeat(300);
        let name = lease_name("adc-operator", "cloud", &long);
        assert_eq!(name.len(), 253);
        assert_ne!(
            name,
            lease_name("adc-operator", "cloud", &format!("{long}y"))
        );
    }

    #[test]
    fn a_replica_holds_only_its_clouds_and_speaks_for_missing_ones() {
        let shards = Shards::new(ShardSettings {
            lease_prefix: "adc-operator".into(),
            namespace: "ops".into(),
            identity: "a".into(),
            duration_seconds: 15,
        });
        {
            let mut state = shards.state();
            state.clouds = ["mine".to_string(), "theirs".to_string()].into();
            state.members = ["a".to_string(), "b".to_string()].into();
            state.held.insert("mine".into(), WriteGate::new());
        }
        assert!(
            !shards.holds("missing", false),
            "nothing is spoken for before the first read"
        );
        shards.state().known = true;
        assert!(shards.holds("mine", true));
        assert!(!shards.holds("theirs", true));
        let members = shards.state().members.clone();
        let speaks = balance::speaker("missing", &members) == Some("a");
        assert_eq!(shards.holds("missing", false), speaks);
        // Created a moment ago: the controller sees it, the shard loop has not listed it yet.
        assert!(!shards.holds("missing", true));
        assert_eq!(shards.held(), vec!["mine".to_string()]);
    }
}
