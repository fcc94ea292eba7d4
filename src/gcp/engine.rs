//! The engine of one GCP project: every reconcile's mutations go through it. It coalesces them
//! into batches, spends the project's rate budget, keeps each VPC network at the concurrency it
//! accepts, retries what is worth retrying with the same `requestId`, and hands the operations to
//! the tracker. Urgent work (failover, deletes) is always taken before bulk creation.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore, oneshot};
use tokio::time::Instant;

use super::auth::Credentials;
use super::budget::{Budget, RateLimits};
use super::client::{Answer, Call, ComputeClient, Transport};
use super::error::GcpError;
use super::inventory::Inventory;
use super::metrics::GcpMetrics;
use super::target::{Change, Collection, Mutation, Target, same_content};
use super::tracker::Tracker;
use super::types::Operation;

/// Which queue a mutation waits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lane {
    /// Failover and deletes: sent before any bulk work.
    Urgent,
    /// Bulk creation: paced across the rate window.
    Bulk,
}

impl Lane {
    fn label(self) -> &'static str {
        match self {
            Lane::Urgent => "urgent",
            Lane::Bulk => "bulk",
        }
    }
}

/// How calls reach Compute (`--gcp-dispatch`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DispatchMode {
    /// Batches of up to `max_calls_per_batch`, operations polled together (the default).
    Batched,
    /// The same engine, one HTTP request per call.
    Concurrent,
    /// What most controllers do: K workers, each sends one call, waits on its operation with
    /// `operations.wait`, then reads the resource back.
    PerObject { workers: usize },
}

/// How the engine of one project is set up.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    pub project: String,
    /// `https://compute.googleapis.com` or an emulator.
    pub endpoint: String,
    pub dispatch: DispatchMode,
    /// Inner calls per batch, at most 1000.
    pub max_calls_per_batch: usize,
    /// How long the dispatcher waits for more work to coalesce (scaled like every engine duration).
    pub linger: Duration,
    /// Batches (or, in concurrent mode, requests) in flight at once.
    pub max_in_flight: usize,
    pub rate_limits: RateLimits,
    /// Multiplies the engine's notion of time (rate window, backoff, polling): 1.0 against real
    /// GCP; the emulator's `--time-scale` in benchmarks.
    pub time_scale: f64,
    /// Every resource the operator creates starts with it; the inventory lists by it.
    pub resource_prefix: String,
    /// Regions whose addresses and forwarding rules the inventory loads.
    pub regions: Vec<String>,
    /// Attempts per mutation before its error is final.
    pub max_attempts: u32,
}

impl EngineSettings {
    /// Defaults for a project at an endpoint.
    pub fn new(project: impl Into<String>, endpoint: impl Into<String>) -> Self {
        Self {
            project: project.into(),
            endpoint: endpoint.into(),
            dispatch: DispatchMode::Batched,
            max_calls_per_batch: 500,
            linger: Duration::from_millis(50),
            max_in_flight: 4,
            rate_limits: RateLimits::default(),
            time_scale: 1.0,
            resource_prefix: "adc-".into(),
            regions: Vec::new(),
            max_attempts: 12,
        }
    }

    pub(crate) fn scaled(&self, duration: Duration) -> Duration {
        duration.mul_f64(self.time_scale.max(1e-6))
    }
}

type Waiter = oneshot::Sender<Result<(), GcpError>>;

#[derive(Debug)]
struct Work {
    mutation: Mutation,
    lane: Lane,
    request_id: String,
    attempts: u32,
    waiters: Vec<Waiter>,
}

#[derive(Debug, Default)]
struct Slot {
    works: VecDeque<Work>,
    in_flight: bool,
}

#[derive(Debug, Default)]
struct NetworkState {
    /// Learned from resourceNotReady; None = no limit seen.
    limit: Option<u32>,
    in_flight: u32,
    successes_at_limit: u32,
    waiting: VecDeque<Target>,
}

#[derive(Debug, Default)]
struct Queues {
    /// Ordered, so the work of one object (its names share a prefix) is a range.
    slots: std::collections::BTreeMap<Target, Slot>,
    urgent: VecDeque<Target>,
    bulk: VecDeque<Target>,
    delayed: BinaryHeap<Reverse<(Instant, u64, Target)>>,
    delayed_seq: u64,
    networks: HashMap<String, NetworkState>,
    /// Since when work of a rate group (and region) has waited for budget: the wait is counted
    /// in `adc_operator_gcp_rate_wait_seconds_total` when the group sends again.
    waiting_for_budget: HashMap<(super::budget::RateGroup, String), Instant>,
}

/// A mutation taken for sending.
#[derive(Debug, Clone)]
pub(crate) struct Dispatch {
    pub target: Target,
    pub mutation: Mutation,
    pub request_id: String,
}

pub(crate) struct Shared {
    pub settings: EngineSettings,
    /// When this engine started: operations inserted before it are not its own.
    pub started: std::time::SystemTime,
    pub client: ComputeClient,
    pub budget: Budget,
    pub metrics: Arc<GcpMetrics>,
    pub transport: Transport,
    pub inventory: Inventory,
    pub tracker: Tracker,
    queues: std::sync::Mutex<Queues>,
    wake: Notify,
    slots: Arc<Semaphore>,
    pub stopped: AtomicBool,
    /// The final error of the last mutation started (not awaited) per resource.
    failures: std::sync::Mutex<HashMap<Target, Failure>>,
    /// Resource quotas GCP said are spent.
    quota: super::quota::QuotaGates,
    /// The last error of work being retried, per resource, until it settles.
    retrying: std::sync::Mutex<HashMap<Target, GcpError>>,
}

/// A mutation started with [`Engine::begin`] that failed for good.
#[derive(Debug, Clone)]
pub struct Failure {
    pub error: GcpError,
    /// When it failed, to space out retries.
    pub at: Instant,
}

/// The engine of one GCP project. Cheap to clone; shared by every reconcile.
#[derive(Clone)]
pub struct Engine {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("project", &self.shared.settings.project)
            .finish_non_exhaustive()
    }
}

/// How often an insert probes a resource quota GCP said is spent.
const QUOTA_PROBE_INTERVAL: Duration = Duration::from_secs(30);

pub(crate) fn backoff(attempt: u32, scale: f64) -> Duration {
    let base = 0.25 * 2f64.powi(attempt.min(8) as i32);
    let capped = base.min(32.0);
    // Full jitter between half and all of it.
    let seconds = capped * (0.5 + rand::random::<f64>() * 0.5);
    Duration::from_secs_f64(seconds * scale.max(1e-6))
}

impl Engine {
    /// Starts the engine's tasks (dispatcher or workers, operation tracker).
    pub fn start(
        settings: EngineSettings,
        credentials: Credentials,
        metrics: Arc<GcpMetrics>,
    ) -> Result<Engine, GcpError> {
        let client = ComputeClient::new(&settings.endpoint, credentials, Arc::clone(&metrics))?;
        let transport = match settings.dispatch {
            DispatchMode::Batched => Transport::Batch {
                max_calls: settings.max_calls_per_batch.clamp(1, 1000),
            },
            DispatchMode::Concurrent | DispatchMode::PerObject { .. } => Transport::Single,
        };
        let in_flight = match settings.dispatch {
            DispatchMode::Batched => settings.max_in_flight.max(1),
            DispatchMode::Concurrent => (settings.max_in_flight * 8).max(1),
            DispatchMode::PerObject { workers } => workers.max(1),
        };
        let window = settings.scaled(Duration::from_secs(60));
        let shared = Arc::new(Shared {
            started: std::time::SystemTime::now(),
            budget: Budget::new(settings.rate_limits, window),
            inventory: Inventory::new(),
            tracker: Tracker::new(),
            queues: std::sync::Mutex::new(Queues::default()),
            wake: Notify::new(),
            slots: Arc::new(Semaphore::new(in_flight)),
            stopped: AtomicBool::new(false),
            failures: Default::default(),
            quota: super::quota::QuotaGates::new(settings.scaled(QUOTA_PROBE_INTERVAL)),
            retrying: Default::default(),
            client,
            transport,
            metrics,
            settings,
        });
        match shared.settings.dispatch {
            DispatchMode::PerObject { workers } => {
                for _ in 0..workers.max(1) {
                    tokio::spawn(per_object_worker(Arc::clone(&shared)));
                }
            }
            _ => {
                tokio::spawn(dispatcher(Arc::clone(&shared)));
                tokio::spawn(super::tracker::run(Arc::clone(&shared)));
            }
        }
        Ok(Engine { shared })
    }

    /// The project this engine serves.
    pub fn project(&self) -> &str {
        &self.shared.settings.project
    }

    /// What GCP holds, as last read and updated from completed operations.
    pub fn inventory(&self) -> &Inventory {
        &self.shared.inventory
    }

    /// The settings it runs with.
    pub fn settings(&self) -> &EngineSettings {
        &self.shared.settings
    }

    /// Reloads the inventory by paged list calls.
    pub async fn refresh_inventory(&self, zones: &[String]) -> Result<(), GcpError> {
        super::inventory::refresh(&self.shared, zones, false)
            .await
            .map(|_| ())
    }

    /// A full refresh that also counts the operations still running on the operator's resources
    /// that were sent before this engine started (a former leader's, or this process's before a
    /// restart):
    /// what they insert is listed only once they finish, so while the count is not 0 the
    /// caller refreshes again soon.
    pub async fn refresh_inventory_settling(&self, zones: &[String]) -> Result<usize, GcpError> {
        super::inventory::refresh(&self.shared, zones, true).await
    }

    /// Reloads only the instances of `zones` (one paged `instances.list` per zone, trimmed with
    /// `fields`) and announces each one whose status changed; the rest of the inventory stays as
    /// it is. [`GcpError::Shutdown`] once the engine is shut down.
    pub async fn refresh_instances(&self, zones: &[String]) -> Result<(), GcpError> {
        super::inventory::refresh_instances(&self.shared, zones).await
    }

    /// Whether [`Engine::shutdown`] was called.
    pub fn is_shut_down(&self) -> bool {
        self.shared.stopped.load(Ordering::Relaxed)
    }

    /// Submits a mutation; the receiver resolves when its operation is DONE (or its error is
    /// final). An identical pending mutation is joined; an unsent insert followed by a delete of
    /// the same resource cancels both.
    pub fn submit(
        &self,
        mutation: Mutation,
        lane: Lane,
    ) -> oneshot::Receiver<Result<(), GcpError>> {
        let (tx, rx) = oneshot::channel();
        if self.shared.stopped.load(Ordering::Relaxed) {
            let _ = tx.send(Err(GcpError::Shutdown));
            return rx;
        }
        self.shared.enqueue(mutation, lane, tx);
        rx
    }

    /// Starts a mutation without waiting for it: a reconcile hands its work over and returns,
    /// so a later change of the same object (a failover) is never stuck behind its own bulk
    /// work. The outcome shows in the inventory (done) or in [`Engine::failure`] (a final
    /// error); either way an [`InventoryEvent::Resource`](super::InventoryEvent) announces it.
    /// Identical pending work is joined. Returns whether the mutation was new work rather than
    /// joined to what was already pending for the resource.
    pub fn begin(&self, mutation: Mutation, lane: Lane) -> bool {
        let target = mutation.target.clone();
        let joined = self.is_pending(&target);
        lock_map(&self.shared.failures).remove(&target);
        let receiver = self.submit(mutation, lane);
        let shared = Arc::downgrade(&self.shared);
        tokio::spawn(async move {
            let outcome = receiver.await.unwrap_or(Err(GcpError::Shutdown));
            let Some(shared) = shared.upgrade() else {
                return;
            };
            match outcome {
                Ok(()) | Err(GcpError::Shutdown | GcpError::Superseded) => {}
                Err(error) => {
                    lock_map(&shared.failures).insert(
                        target.clone(),
                        Failure {
                            error,
                            at: Instant::now(),
                        },
                    );
                    shared.inventory.announce_failure(target);
                }
            }
        });
        !joined
    }

    /// The final error of the last mutation [`Engine::begin`]ed for `target`, until the next
    /// start.
    pub fn failure(&self, target: &Target) -> Option<Failure> {
        lock_map(&self.shared.failures).get(target).cloned()
    }

    /// Global resources of `collection` whose names start with `prefix` and whose insert is
    /// queued or in flight.
    pub fn pending_inserts(&self, collection: Collection, prefix: &str) -> Vec<Target> {
        let from = Target {
            collection,
            location: String::new(),
            name: prefix.to_string(),
        };
        self.shared
            .lock()
            .slots
            .range(from..)
            .take_while(|(t, _)| {
                t.collection == collection && t.location.is_empty() && t.name.starts_with(prefix)
            })
            .filter(|(_, slot)| slot.works.iter().any(|w| w.mutation.is_insert()))
            .map(|(t, _)| t.clone())
            .collect()
    }

    /// The last error of work for `target` that is being retried (still pending).
    pub fn retrying(&self, target: &Target) -> Option<GcpError> {
        lock_map(&self.shared.retrying).get(target).cloned()
    }

    /// Whether work for `target` is queued or in flight.
    pub fn is_pending(&self, target: &Target) -> bool {
        self.shared.lock().slots.contains_key(target)
    }

    /// Submits and waits.
    pub async fn apply(&self, mutation: Mutation, lane: Lane) -> Result<(), GcpError> {
        self.submit(mutation, lane)
            .await
            .unwrap_or(Err(GcpError::Shutdown))
    }

    /// Stops taking work; pending callers get [`GcpError::Shutdown`].
    pub fn shutdown(&self) {
        self.shared.stopped.store(true, Ordering::Relaxed);
        let mut queues = self.shared.lock();
        for (_, slot) in std::mem::take(&mut queues.slots) {
            for work in slot.works {
                for waiter in work.waiters {
                    let _ = waiter.send(Err(GcpError::Shutdown));
                }
            }
        }
        drop(queues);
        self.shared.wake.notify_waiters();
        self.shared.tracker.wake();
    }

    /// GETs one resource and records what GCP holds in the inventory (e.g. the IP GCP chose for
    /// a reserved address). Returns its JSON; `Ok(None)` when it does not exist.
    pub async fn read_back(&self, target: &Target) -> Result<Option<serde_json::Value>, GcpError> {
        let shared = &self.shared;
        match super::inventory::read(shared, &target.get_call(&shared.settings.project)).await {
            Ok(answer) => {
                let body: serde_json::Value = serde_json::from_slice(&answer.body)
                    .map_err(|err| GcpError::Decode(format!("{target}: {err}")))?;
                shared
                    .inventory
                    .apply(&Mutation::insert(target.clone(), body.clone()));
                Ok(Some(body))
            }
            Err(err) if err.is_not_found() => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// Checks that the credentials work and the VPC network exists (one GET).
    pub async fn check_network(&self, network: &str) -> Result<(), GcpError> {
        let shared = &self.shared;
        let call = Call {
            method: reqwest::Method::GET,
            path: format!(
                "projects/{}/global/networks/{network}",
                shared.settings.project
            ),
            query: Vec::new(),
            body: None,
            group: super::budget::RateGroup::Read,
            method_name: "compute.networks.get",
        };
        super::inventory::read(shared, &call).await.map(|_| ())
    }

    /// Reads the resource quotas Compute reports for the project (`projects.get`) and for each
    /// region of the engine (`regions.get`): one GET of the read group each. The quotas the
    /// operator's resources consume ([`super::types::QUOTA_METRICS`]) are recorded in the
    /// `adc_operator_gcp_quota_usage` / `_limit` metrics and returned.
    pub async fn read_quotas(&self) -> Result<Vec<super::types::QuotaUse>, GcpError> {
        let shared = &self.shared;
        let project = &shared.settings.project;
        let mut scopes = vec![(
            "global".to_string(),
            format!("projects/{project}"),
            "compute.projects.get",
        )];
        for region in &shared.settings.regions {
            scopes.push((
                region.clone(),
                format!("projects/{project}/regions/{region}"),
                "compute.regions.get",
            ));
        }
        let mut quotas = Vec::new();
        for (scope, path, method_name) in scopes {
            let call = Call {
                method: reqwest::Method::GET,
                path,
                query: vec![("fields".into(), "quotas".into())],
                body: None,
                group: super::budget::RateGroup::Read,
                method_name,
            };
            let answer = super::inventory::read(shared, &call).await?;
            let listed: super::types::QuotaList = serde_json::from_slice(&answer.body)
                .map_err(|err| GcpError::Decode(format!("{method_name}: {err}")))?;
            for quota in listed.quotas {
                if !super::types::QUOTA_METRICS.contains(&quota.metric.as_str()) {
                    continue;
                }
                shared
                    .metrics
                    .quota(project, &scope, &quota.metric, quota.usage, quota.limit);
                quotas.push(super::types::QuotaUse {
                    scope: scope.clone(),
                    metric: quota.metric,
                    usage: quota.usage,
                    limit: quota.limit,
                });
            }
        }
        Ok(quotas)
    }

    /// Mutations queued or in flight.
    pub fn pending(&self) -> usize {
        self.shared
            .lock()
            .slots
            .values()
            .map(|slot| slot.works.len())
            .sum()
    }

    /// How much work the engine holds now: what a progress report needs.
    pub fn progress(&self) -> EngineProgress {
        let pending = self.pending();
        let (in_flight, typical_operation) = self.shared.tracker.snapshot();
        EngineProgress {
            queued: pending.saturating_sub(in_flight),
            in_flight,
            typical_operation,
            writes_per_minute: self.shared.settings.rate_limits.writes_per_minute,
            time_scale: self.shared.settings.time_scale,
        }
    }
}

/// A snapshot of an engine's work, for progress reports.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EngineProgress {
    /// Mutations waiting to be sent (or being sent, their operation not yet known).
    pub queued: usize,
    /// Operations sent and not yet seen DONE.
    pub in_flight: usize,
    /// How long an operation typically takes here (smoothed), once one was seen DONE; in the
    /// engine's own time (scaled by `time_scale`).
    pub typical_operation: Option<Duration>,
    /// The write quota per minute the engine spends.
    pub writes_per_minute: u64,
    /// The engine's time scale (1.0 against GCP).
    pub time_scale: f64,
}

fn lock_map<K, V>(
    map: &std::sync::Mutex<HashMap<K, V>>,
) -> std::sync::MutexGuard<'_, HashMap<K, V>> {
    match map.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queues> {
        match self.queues.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn enqueue(&self, mutation: Mutation, lane: Lane, waiter: Waiter) {
        let mut queues = self.lock();
        let target = mutation.target.clone();
        let slot = queues.slots.entry(target.clone()).or_default();
        // Join identical work: the one in flight, or the last one queued.
        // An insert of what the inventory already holds, with nothing pending before it, is
        // done: its operation finished between the caller's look at the inventory and now.
        if slot.works.is_empty()
            && let Change::Insert(desired) = &mutation.change
            && self
                .inventory
                .read(|s| s.json_of(&target))
                .is_some_and(|held| same_content(desired, &held))
        {
            queues.slots.remove(&target);
            drop(queues);
            let _ = waiter.send(Ok(()));
            return;
        }
        if slot.works.is_empty()
            && mutation.is_insert()
            && let super::quota::Admission::Closed(err) = self.quota.admit(&target, Instant::now())
        {
            // The quota is spent: the answer GCP would give, without asking it again.
            queues.slots.remove(&target);
            drop(queues);
            let _ = waiter.send(Err(err));
            return;
        }
        let last_is_in_flight = slot.in_flight && slot.works.len() == 1;
        if let Some(last) = slot.works.back_mut()
            && last.mutation == mutation
        {
            last.waiters.push(waiter);
            if lane == Lane::Urgent && last.lane == Lane::Bulk && !last_is_in_flight {
                last.lane = Lane::Urgent;
                queues.urgent.push_front(target);
            }
            drop(queues);
            self.wake.notify_one();
            return;
        }
        // An unsent insert followed by a delete of the same resource: both are moot.
        let unsent_from = usize::from(slot.in_flight);
        if matches!(mutation.change, Change::Delete)
            && slot.works.len() > unsent_from
            && slot.works.back().is_some_and(|w| w.mutation.is_insert())
        {
            if let Some(insert) = slot.works.pop_back() {
                for waiter in insert.waiters {
                    let _ = waiter.send(Err(GcpError::Superseded));
                }
            }
            let _ = waiter.send(Ok(()));
            if slot.works.is_empty() {
                queues.slots.remove(&target);
            }
            self.update_depth(&queues);
            return;
        }
        let was_empty = slot.works.is_empty();
        slot.works.push_back(Work {
            mutation,
            lane,
            request_id: uuid::Uuid::new_v4().to_string(),
            attempts: 0,
            waiters: vec![waiter],
        });
        if was_empty {
            match lane {
                Lane::Urgent => queues.urgent.push_back(target),
                Lane::Bulk => queues.bulk.push_back(target),
            }
        }
        self.update_depth(&queues);
        drop(queues);
        self.wake.notify_one();
    }

    /// Sleeps until new work is submitted or `next` (when delayed work or budget is due).
    async fn wait_for_work(&self, next: Option<Instant>) {
        let notified = self.wake.notified();
        match next {
            Some(at) => {
                tokio::select! {
                    _ = notified => {}
                    _ = tokio::time::sleep_until(at) => {}
                }
            }
            None => notified.await,
        }
    }

    fn update_depth(&self, queues: &Queues) {
        self.metrics
            .queue_depth(Lane::Urgent.label(), queues.urgent.len());
        self.metrics
            .queue_depth(Lane::Bulk.label(), queues.bulk.len());
    }

    /// Takes up to `max` mutations that may be sent now; also returns when to look again.
    pub(crate) fn take_ready(&self, max: usize) -> (Vec<Dispatch>, Option<Instant>) {
        let now = Instant::now();
        let mut queues = self.lock();
        let queues = &mut *queues;
        while let Some(Reverse((at, _, _))) = queues.delayed.peek() {
            if *at > now {
                break;
            }
            if let Some(Reverse((_, _, target))) = queues.delayed.pop()
                && let Some(lane) = queues
                    .slots
                    .get(&target)
                    .and_then(|s| s.works.front())
                    .map(|w| w.lane)
            {
                match lane {
                    Lane::Urgent => queues.urgent.push_front(target),
                    Lane::Bulk => queues.bulk.push_front(target),
                }
            }
        }
        let mut taken = Vec::new();
        let mut next: Option<Instant> = queues.delayed.peek().map(|Reverse((at, _, _))| *at);
        for lane in [Lane::Urgent, Lane::Bulk] {
            let mut blocked_groups: Vec<(super::budget::RateGroup, String)> = Vec::new();
            let mut skipped = VecDeque::new();
            loop {
                if taken.len() >= max {
                    break;
                }
                let queue = match lane {
                    Lane::Urgent => &mut queues.urgent,
                    Lane::Bulk => &mut queues.bulk,
                };
                let Some(target) = queue.pop_front() else {
                    break;
                };
                let Some(slot) = queues.slots.get_mut(&target) else {
                    continue;
                };
                if slot.in_flight {
                    continue;
                }
                let Some(work) = slot.works.front() else {
                    continue;
                };
                if work.lane != lane {
                    continue;
                }
                let (group, region) = work
                    .mutation
                    .target
                    .collection
                    .write_group(&work.mutation.target.location);
                if blocked_groups.contains(&(group, region.clone())) {
                    skipped.push_back(target);
                    // Behind a spent group, look only a little further for other groups' work.
                    if skipped.len() >= 64 {
                        break;
                    }
                    continue;
                }
                if let Some(network) = &work.mutation.network {
                    let state = queues.networks.entry(network.clone()).or_default();
                    if state.limit.is_some_and(|limit| state.in_flight >= limit) {
                        state.waiting.push_back(target);
                        continue;
                    }
                }
                if self.budget.take(group, &region, 1, lane == Lane::Bulk) == 0 {
                    let chance = self.budget.next_chance(group, &region, lane == Lane::Bulk);
                    next = Some(next.map_or(chance, |n| n.min(chance)));
                    queues
                        .waiting_for_budget
                        .entry((group, region.clone()))
                        .or_insert(now);
                    blocked_groups.push((group, region));
                    skipped.push_back(target);
                    continue;
                }
                if let Some(since) = queues.waiting_for_budget.remove(&(group, region)) {
                    self.metrics
                        .rate_wait(group.label(), now.duration_since(since).as_secs_f64());
                }
                let Some(slot) = queues.slots.get_mut(&target) else {
                    continue;
                };
                slot.in_flight = true;
                let Some(work) = slot.works.front() else {
                    continue;
                };
                if let Some(network) = &work.mutation.network {
                    queues
                        .networks
                        .entry(network.clone())
                        .or_default()
                        .in_flight += 1;
                }
                taken.push(Dispatch {
                    target: target.clone(),
                    mutation: work.mutation.clone(),
                    request_id: work.request_id.clone(),
                });
            }
            let queue = match lane {
                Lane::Urgent => &mut queues.urgent,
                Lane::Bulk => &mut queues.bulk,
            };
            while let Some(target) = skipped.pop_back() {
                queue.push_front(target);
            }
        }
        self.update_depth(queues);
        (taken, next)
    }

    /// The outcome of a mutation that was sent: success, a retry, or a final error.
    pub(crate) fn finish(self: &Arc<Self>, dispatch: &Dispatch, outcome: Result<(), GcpError>) {
        let outcome = match outcome {
            Err(err) if dispatch.mutation.is_insert() && err.is_already_exists() => {
                // A retry after a lost answer without our requestId, or a restart: check it is
                // ours and the same, then count it as done.
                let shared = Arc::clone(self);
                let dispatch = dispatch.clone();
                tokio::spawn(async move {
                    let verdict = shared.verify_existing(&dispatch).await;
                    shared.settle(&dispatch, verdict);
                });
                return;
            }
            Err(err) if !dispatch.mutation.is_insert() && err.is_not_found() => Ok(()),
            other => other,
        };
        self.settle(dispatch, outcome);
    }

    async fn verify_existing(self: &Arc<Self>, dispatch: &Dispatch) -> Result<(), GcpError> {
        let Change::Insert(desired) = &dispatch.mutation.change else {
            return Ok(());
        };
        let call = dispatch.mutation.get_call(&self.settings.project);
        let answer = match super::inventory::read(self, &call).await {
            Err(err) if err.is_not_found() => {
                return Err(GcpError::BeingCreated(dispatch.target.to_string()));
            }
            other => other?,
        };
        let actual: serde_json::Value = serde_json::from_slice(&answer.body)
            .map_err(|err| GcpError::Decode(err.to_string()))?;
        judge_existing(&dispatch.target, desired, &actual)
    }

    fn settle(self: &Arc<Self>, dispatch: &Dispatch, outcome: Result<(), GcpError>) {
        if let Some((collection, location)) =
            self.quota
                .record(&dispatch.mutation, &outcome, Instant::now())
        {
            self.quota_reopened(collection, &location);
        }
        let mut queues = self.lock();
        let queues = &mut *queues;
        let network_freed = dispatch.mutation.network.clone();
        if let Some(network) = &network_freed
            && let Some(state) = queues.networks.get_mut(network)
        {
            if outcome.as_ref().err().is_some_and(GcpError::is_not_ready) {
                // The network refused: it takes no more than what it already runs.
                let running = state.in_flight.saturating_sub(1).max(1);
                state.limit = Some(state.limit.map_or(running, |l| l.min(running)));
                state.successes_at_limit = 0;
            } else if outcome.is_ok()
                && let Some(limit) = state.limit
            {
                // Probe upwards now and then, so a network that accepts more gets more.
                state.successes_at_limit += 1;
                if state.successes_at_limit >= 20 * limit {
                    state.limit = Some(limit + 1);
                    state.successes_at_limit = 0;
                }
            }
            state.in_flight = state.in_flight.saturating_sub(1);
            while let Some(target) = state.waiting.pop_front() {
                let lane = queues
                    .slots
                    .get(&target)
                    .and_then(|s| s.works.front())
                    .map(|w| w.lane);
                match lane {
                    Some(Lane::Urgent) => queues.urgent.push_front(target),
                    Some(Lane::Bulk) => queues.bulk.push_front(target),
                    None => {}
                }
            }
        }
        let Some(slot) = queues.slots.get_mut(&dispatch.target) else {
            return;
        };
        slot.in_flight = false;
        let retry = match &outcome {
            Err(err) if err.is_retryable() => slot
                .works
                .front()
                .is_some_and(|w| w.attempts + 1 < self.settings.max_attempts),
            _ => false,
        };
        if retry {
            let err = outcome
                .as_ref()
                .err()
                .cloned()
                .unwrap_or(GcpError::Shutdown);
            self.metrics.retry(&err.label());
            if lock_map(&self.retrying)
                .insert(dispatch.target.clone(), err.clone())
                .is_none()
            {
                // The object says so while its work is retried, not only when it gives up.
                self.inventory.announce_failure(dispatch.target.clone());
            }
            let Some(work) = slot.works.front_mut() else {
                return;
            };
            work.attempts += 1;
            if matches!(err, GcpError::Operation { .. }) {
                // The failed operation answers its requestId forever: a new try needs a new one.
                work.request_id = uuid::Uuid::new_v4().to_string();
            }
            let (group, region) = work
                .mutation
                .target
                .collection
                .write_group(&work.mutation.target.location);
            let at = if err.is_rate_limited() {
                self.budget.penalize(group, &region, err.retry_after());
                self.budget.next_chance(group, &region, false)
            } else if err.is_not_ready() {
                Instant::now() + self.settings.scaled(Duration::from_millis(100))
            } else {
                Instant::now() + backoff(work.attempts, self.settings.time_scale)
            };
            queues.delayed_seq += 1;
            let seq = queues.delayed_seq;
            queues
                .delayed
                .push(Reverse((at, seq, dispatch.target.clone())));
        } else {
            lock_map(&self.retrying).remove(&dispatch.target);
            let Some(work) = slot.works.pop_front() else {
                return;
            };
            let outcome = match outcome {
                Err(err) if err.is_retryable() => Err(GcpError::Exhausted {
                    attempts: work.attempts + 1,
                    last: Box::new(err),
                }),
                other => other,
            };
            if outcome.is_ok() {
                self.inventory.apply(&work.mutation);
            }
            if matches!(outcome, Err(GcpError::NotOwned { .. })) {
                // Deletes queued behind this insert were to take back what it would have made
                // (a plan that changed while it ran). It made nothing, and what holds the name
                // is someone else's: they are never sent.
                while slot.works.front().is_some_and(|w| !w.mutation.is_insert()) {
                    if let Some(cancelled) = slot.works.pop_front() {
                        for waiter in cancelled.waiters {
                            let _ = waiter.send(Ok(()));
                        }
                    }
                }
            }
            for waiter in work.waiters {
                let _ = waiter.send(outcome.clone());
            }
            match slot.works.front().map(|w| w.lane) {
                Some(Lane::Urgent) => queues.urgent.push_front(dispatch.target.clone()),
                Some(Lane::Bulk) => queues.bulk.push_back(dispatch.target.clone()),
                None => {
                    queues.slots.remove(&dispatch.target);
                }
            }
        }
        self.update_depth(queues);
        self.wake.notify_one();
    }

    /// A spent quota has room again: the objects whose inserts it refused retry now, not when
    /// their retry delay runs out.
    fn quota_reopened(&self, collection: super::target::Collection, location: &str) {
        let refused: Vec<Target> = {
            let mut failures = lock_map(&self.failures);
            let refused: Vec<Target> = failures
                .iter()
                .filter(|(target, failure)| {
                    target.collection == collection
                        && target.location == location
                        && failure.error.is_quota_exceeded()
                })
                .map(|(target, _)| target.clone())
                .collect();
            for target in &refused {
                failures.remove(target);
            }
            refused
        };
        tracing::info!(
            ?collection,
            location,
            waiting = refused.len(),
            "a spent resource quota has room again"
        );
        for target in refused {
            self.inventory.announce_failure(target);
        }
    }

    /// The answer to a mutation call: an operation to track, or an error.
    pub(crate) fn accepted(self: &Arc<Self>, dispatch: Dispatch, answer: Result<Answer, GcpError>) {
        match answer.and_then(|a| {
            serde_json::from_slice::<Operation>(&a.body)
                .map_err(|err| GcpError::Decode(format!("operation: {err}")))
        }) {
            Ok(op) if op.is_done() => {
                let outcome = op.failure().map_or(Ok(()), Err);
                self.finish(&dispatch, outcome);
            }
            Ok(op) => self.tracker.track(op, dispatch),
            Err(err) => self.finish(&dispatch, Err(err)),
        }
    }
}

/// The ownership marker token of a resource body's description (`adc.dev/owner=...` up to the
/// first blank), as written by `plan::owner`.
fn owner_marker(body: &serde_json::Value) -> Option<&str> {
    const MARKER: &str = "adc.dev/owner=";
    let description = body.get("description")?.as_str()?;
    let start = description.find(MARKER)?;
    description[start..].split_whitespace().next()
}

/// Whether an insert that found its name taken (409) may count as done: only when the resource
/// there carries the very ownership marker of the insert (it is ours: made by an earlier attempt
/// whose answer was lost, or before a restart) and holds what the insert asked for. A resource
/// without that marker is someone else's whatever its content: it is never adopted.
fn judge_existing(
    target: &Target,
    desired: &serde_json::Value,
    actual: &serde_json::Value,
) -> Result<(), GcpError> {
    let theirs = owner_marker(actual);
    match owner_marker(desired) {
        Some(ours) if theirs == Some(ours) => {
            if same_content(desired, actual) {
                Ok(())
            } else {
                Err(GcpError::Conflict(target.to_string()))
            }
        }
        _ => Err(GcpError::NotOwned {
            resource: target.to_string(),
            marker: theirs.map(str::to_string),
        }),
    }
}

async fn dispatcher(shared: Arc<Shared>) {
    let max = match shared.transport {
        Transport::Batch { max_calls } => max_calls,
        Transport::Single => shared.settings.max_calls_per_batch.max(1),
    };
    loop {
        // A free slot first: while every slot is busy, work and budget accumulate, so the next
        // batch is fuller instead of the pipe filling with tiny ones.
        let Ok(permit) = Arc::clone(&shared.slots).acquire_owned().await else {
            return;
        };
        let ready = loop {
            if shared.stopped.load(Ordering::Relaxed) {
                return;
            }
            let (ready, next) = shared.take_ready(max);
            if !ready.is_empty() {
                break ready;
            }
            shared.wait_for_work(next).await;
            // Let more work arrive so that it travels together.
            tokio::time::sleep(shared.settings.scaled(shared.settings.linger)).await;
        };
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let calls: Vec<Call> = ready
                .iter()
                .map(|d| d.mutation.call(&shared.settings.project, &d.request_id))
                .collect();
            let answers = shared.client.exchange(shared.transport, calls).await;
            drop(permit);
            for (dispatch, answer) in ready.into_iter().zip(answers) {
                shared.accepted(dispatch, answer);
            }
        });
    }
}

/// Per-object mode: one call, one `operations.wait` loop, one read-back, per worker at a time.
async fn per_object_worker(shared: Arc<Shared>) {
    loop {
        if shared.stopped.load(Ordering::Relaxed) {
            return;
        }
        let (mut ready, next) = shared.take_ready(1);
        let Some(dispatch) = ready.pop() else {
            shared.wait_for_work(next).await;
            continue;
        };
        let outcome = per_object_call(&shared, &dispatch).await;
        shared.finish(&dispatch, outcome);
    }
}

async fn per_object_call(shared: &Shared, dispatch: &Dispatch) -> Result<(), GcpError> {
    let project = &shared.settings.project;
    let answer = shared
        .client
        .send(&dispatch.mutation.call(project, &dispatch.request_id))
        .await?;
    let mut op: Operation = serde_json::from_slice(&answer.body)
        .map_err(|err| GcpError::Decode(format!("operation: {err}")))?;
    while !op.is_done() {
        shared
            .budget
            .acquire(super::budget::RateGroup::OperationRead, "", 1)
            .await;
        let wait = Call {
            method: reqwest::Method::POST,
            path: format!(
                "projects/{project}/{}/operations/{}/wait",
                op.scope(),
                op.name
            ),
            query: Vec::new(),
            body: None,
            group: super::budget::RateGroup::OperationRead,
            method_name: "compute.operations.wait",
        };
        let answer = shared.client.send(&wait).await?;
        op = serde_json::from_slice(&answer.body)
            .map_err(|err| GcpError::Decode(format!("operation: {err}")))?;
    }
    if let Some(err) = op.failure() {
        return Err(err);
    }
    if dispatch.mutation.is_insert() {
        // Confirm, as controllers that trust nothing do.
        shared
            .budget
            .acquire(super::budget::RateGroup::Read, "", 1)
            .await;
        shared
            .client
            .send(&dispatch.mutation.get_call(project))
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const OURS: &str =
        "adc.dev/owner=c1/cloud/VirtualService/team-a/web (managed by adc-operator; do not edit)";

    fn route(description: Option<&str>) -> serde_json::Value {
        let mut body = json!({"name": "adc-1", "network": "global/networks/default",
            "destRange": "10.10.0.5/32", "priority": 2000,
            "nextHopInstance": "projects/p/zones/z/instances/se-1"});
        if let Some(description) = description {
            body["description"] = json!(description);
        }
        body
    }

    #[test]
    fn only_our_own_marker_adopts_an_existing_resource() {
        let target = Target::route("adc-1");
        let desired = route(Some(OURS));
        // Ours, as GCP shows it (output fields, full references): adopted.
        let mut actual = desired.clone();
        actual["id"] = json!("123");
        actual["network"] =
            json!("https://www.googleapis.com/compute/v1/projects/p/global/networks/default");
        assert!(judge_existing(&target, &desired, &actual).is_ok());
        // Ours, but other content: a conflict, not someone else's.
        let mut drifted = actual.clone();
        drifted["priority"] = json!(1000);
        assert!(matches!(
            judge_existing(&target, &desired, &drifted),
            Err(GcpError::Conflict(_))
        ));

        // Same content, no marker, or a hand-written description: never adopted.
        for description in [None, Some(""), Some("made by hand")] {
            let err = judge_existing(&target, &desired, &route(description)).unwrap_err();
            assert!(
                matches!(err, GcpError::NotOwned { ref resource, marker: None } if resource == "global/routes/adc-1"),
                "{err:?}"
            );
        }
        // Another object's, or another cluster's marker: never adopted, and named.
        for other in [
            "adc.dev/owner=c1/cloud/VirtualService/team-a/api",
            "adc.dev/owner=c2/cloud/VirtualService/team-a/web",
            "adc.dev/owner=c1/cloud/VirtualService/team-a/web-2 (managed by adc-operator)",
        ] {
            let err = judge_existing(&target, &desired, &route(Some(other))).unwrap_err();
            let marker = other.split_whitespace().next().map(str::to_string);
            assert!(
                matches!(&err, GcpError::NotOwned { marker: m, .. } if *m == marker),
                "{other}: {err:?}"
            );
        }
        // An insert without a marker proves no ownership of anything.
        assert!(matches!(
            judge_existing(&target, &route(None), &route(None)),
            Err(GcpError::NotOwned { .. })
        ));
    }
}
