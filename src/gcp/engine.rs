//! The engine of one GCP project: every reconcile's mutations go through it. It is the async
//! shell around three parts that each do one job: the work queue (`queue.rs`: joins, lanes,
//! the rate budget, network concurrency, retries with the same `requestId`, decided without a
//! clock), the read path (`reader.rs`: client, budget and retry policy for every GET and list)
//! and the operation tracker (`tracker.rs`: polls operations in bulk and hands their outcomes
//! back through a channel). The engine wires them: it sends what the queue hands out, carries
//! out the queue's effects and keeps the inventory (`inventory.rs`) current.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore, mpsc, oneshot};
use tokio::time::Instant;

use super::auth::Credentials;
use super::budget::{Budget, RateGroup};
use super::calls::{get_call, mutation_call};
use super::client::{Call, ComputeClient, Transport};
use super::error::GcpError;
use super::inventory::Inventory;
use super::metrics::GcpMetrics;
use super::queue::{Dispatch, Effect, Queue, QueueSettings, Waiter, WaiterId, judge_existing};
use super::reader::Reader;
use super::refresh::Source;
use super::settings::{DispatchMode, EngineSettings};
use super::tracker::{Outcome, Poller, Tracker};
use super::types::Operation;
use crate::plan::resource::{Change, Collection, Mutation, Target};

pub use super::queue::{Failure, Lane};

/// How often an insert probes a resource quota GCP said is spent (GCP time).
const QUOTA_PROBE_INTERVAL: Duration = Duration::from_secs(30);

struct Shared {
    settings: EngineSettings,
    /// When this engine started: operations inserted before it are not its own.
    started: std::time::SystemTime,
    /// Whether refreshes list ILB mode's groups, health checks and backend services (three
    /// reads more, only while some object of the cloud uses ILB mode).
    list_balancers: std::sync::atomic::AtomicBool,
    reader: Arc<Reader>,
    inventory: Inventory,
    /// Where the next resync's read of the operations log starts (`changelog.rs`).
    changelog: Mutex<super::changelog::ChangeLog>,
    tracker: Arc<Tracker>,
    queue: Mutex<Queue>,
    /// The callers of [`Engine::submit`] still waiting, by the id the queue knows them by.
    waiters: Mutex<HashMap<WaiterId, oneshot::Sender<Result<(), GcpError>>>>,
    next_waiter: AtomicU64,
    /// Wakes the dispatcher: work was added or a slot freed.
    wake: Notify,
    /// Batches (or requests) in flight at once.
    slots: Arc<Semaphore>,
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

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
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
        // Made at start-up or at a takeover, in a window another replica (or the pod before this
        // one) may have spent: its writes probe that window first.
        let budget = Budget::new(
            settings.rate_limits,
            settings.scaled(Duration::from_secs(60)),
        )
        .probing_first_window();
        let reader = Arc::new(Reader::new(
            client,
            budget,
            metrics,
            transport,
            settings.max_attempts,
            settings.time_scale,
        ));
        let queue = Queue::new(
            QueueSettings {
                host_scope: settings.host_scope(),
                max_attempts: settings.max_attempts,
                time_scale: settings.time_scale,
                quota_probe: QUOTA_PROBE_INTERVAL,
            },
            rand::random(),
        );
        let shared = Arc::new(Shared {
            started: std::time::SystemTime::now(),
            list_balancers: std::sync::atomic::AtomicBool::new(false),
            reader,
            inventory: Inventory::new(),
            changelog: Mutex::default(),
            tracker: Arc::new(Tracker::new()),
            queue: Mutex::new(queue),
            waiters: Mutex::new(HashMap::new()),
            next_waiter: AtomicU64::new(0),
            wake: Notify::new(),
            slots: Arc::new(Semaphore::new(in_flight)),
            settings,
        });
        match shared.settings.dispatch {
            DispatchMode::PerObject { workers } => {
                for _ in 0..workers.max(1) {
                    tokio::spawn(per_object_worker(Arc::clone(&shared)));
                }
            }
            _ => {
                let (done, outcomes) = mpsc::unbounded_channel();
                tokio::spawn(dispatcher(Arc::clone(&shared)));
                tokio::spawn(settler(Arc::downgrade(&shared), outcomes));
                tokio::spawn(
                    Poller {
                        tracker: Arc::clone(&shared.tracker),
                        reader: Arc::clone(&shared.reader),
                        project: shared.settings.project.clone(),
                        done,
                    }
                    .run(),
                );
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

    fn source(&self) -> Source<'_> {
        Source {
            reader: &self.shared.reader,
            inventory: &self.shared.inventory,
            changelog: &self.shared.changelog,
            settings: &self.shared.settings,
            started: self.shared.started,
            balancers: self
                .shared
                .list_balancers
                .load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// Whether the next refreshes list ILB mode's pieces: on while any object of the cloud
    /// uses ILB mode or the inventory still holds one of them.
    pub fn list_balancers(&self, on: bool) {
        self.shared
            .list_balancers
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Reloads the inventory by paged list calls.
    pub async fn refresh_inventory(&self, zones: &[String]) -> Result<(), GcpError> {
        super::refresh::refresh(&self.source(), zones, false)
            .await
            .map(|_| ())
    }

    /// A full refresh that also counts the operations still running on the operator's resources
    /// that were sent before this engine started (a former leader's, or this process's before a
    /// restart): what they insert is listed only once they finish, so while the count is not 0
    /// the caller refreshes again soon.
    pub async fn refresh_inventory_settling(&self, zones: &[String]) -> Result<usize, GcpError> {
        super::refresh::refresh(&self.source(), zones, true).await
    }

    /// Reloads only the instances of `zones` (one paged `instances.list` per zone, trimmed with
    /// `fields`) and announces each one whose status changed; the rest of the inventory stays as
    /// it is. [`GcpError::Shutdown`] once the engine is shut down.
    pub async fn refresh_instances(&self, zones: &[String]) -> Result<(), GcpError> {
        super::refresh::refresh_instances(&self.source(), zones).await
    }

    /// The instance poll of the instances named in `names` that are in `zones`: one
    /// `instances.aggregatedList` of those not RUNNING for every zone, a read by name of the
    /// few it leaves open, and each one whose status changed announced.
    pub async fn poll_instances(&self, zones: &[String], names: &[String]) -> Result<(), GcpError> {
        super::refresh::poll_instances(&self.source(), zones, names).await
    }

    /// ILB mode: what each backend service reports of the instances of each group asked
    /// for, as (service, group link), in order (`regionBackendServices.getHealth`, batched).
    pub async fn backend_health(
        &self,
        asked: &[(Target, String)],
    ) -> Vec<Result<Vec<super::health::InstanceHealth>, GcpError>> {
        super::health::backend_health(&self.shared.reader, &self.shared.settings.project, asked)
            .await
    }

    /// Whether [`Engine::shutdown`] was called.
    pub fn is_shut_down(&self) -> bool {
        self.shared.reader.is_stopped()
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
        if self.is_shut_down() {
            let _ = tx.send(Err(GcpError::Shutdown));
            return rx;
        }
        if self.shared.settings.read_only {
            let _ = tx.send(Err(GcpError::ReadOnly(mutation.target.to_string())));
            return rx;
        }
        let shared = &self.shared;
        let id = shared.next_waiter.fetch_add(1, Ordering::Relaxed);
        lock(&shared.waiters).insert(id, tx);
        let effects = lock(&shared.queue).enqueue(
            mutation,
            lane,
            Waiter::Caller(id),
            |target| shared.inventory.read(|s| s.json_of(target)),
            Instant::now(),
        );
        shared.carry_out(effects);
        rx
    }

    /// Starts a mutation without waiting for it: a reconcile hands its work over and returns,
    /// so a later change of the same object (a failover) is never stuck behind its own bulk
    /// work. The outcome shows in the inventory (done) or in [`Engine::failure`] (a final
    /// error); [`InventoryEvent::Completed`](super::InventoryEvent) or
    /// [`InventoryEvent::Resource`](super::InventoryEvent) announces it.
    /// Identical pending work is joined. Returns whether the mutation was new work rather than
    /// joined to what was already pending for the resource.
    pub fn begin(&self, mutation: Mutation, lane: Lane) -> bool {
        let shared = &self.shared;
        if self.is_shut_down() || shared.settings.read_only {
            return false;
        }
        let (new, effects) = {
            let mut queue = lock(&shared.queue);
            // A delete of what nothing is doing and the inventory no longer holds is done:
            // two paths (a failover's withdrawal and a reconcile) may ask for the same one.
            if matches!(mutation.change, crate::plan::resource::Change::Delete)
                && queue.is_idle(&mutation.target)
                && !shared.inventory.read(|s| s.holds(&mutation.target))
            {
                return false;
            }
            queue.begin(
                mutation,
                lane,
                |target| shared.inventory.read(|s| s.json_of(target)),
                Instant::now(),
            )
        };
        shared.carry_out(effects);
        new
    }

    /// The final error of the last mutation [`Engine::begin`]ed for `target`, until the next
    /// start.
    pub fn failure(&self, target: &Target) -> Option<Failure> {
        lock(&self.shared.queue).failure(target).cloned()
    }

    /// Global resources of `collection` whose names start with `prefix` and whose insert is
    /// queued or in flight.
    pub fn pending_inserts(&self, collection: Collection, prefix: &str) -> Vec<Target> {
        lock(&self.shared.queue).pending_inserts(collection, prefix)
    }

    /// Whether any route or firewall rule named under `prefix` (one object's) has work queued
    /// or in flight.
    pub fn has_global_work(&self, prefix: &str) -> bool {
        lock(&self.shared.queue).has_global_work(prefix)
    }

    /// The last error of work for `target` that is being retried (still pending).
    pub fn retrying(&self, target: &Target) -> Option<GcpError> {
        lock(&self.shared.queue).retrying(target).cloned()
    }

    /// Whether work for `target` is queued or in flight.
    pub fn is_pending(&self, target: &Target) -> bool {
        lock(&self.shared.queue).is_pending(target)
    }

    /// Submits and waits.
    pub async fn apply(&self, mutation: Mutation, lane: Lane) -> Result<(), GcpError> {
        self.submit(mutation, lane)
            .await
            .unwrap_or(Err(GcpError::Shutdown))
    }

    /// Drops the work not yet sent for the targets `which` picks: a management policy that
    /// stopped writing stops them at once (what Compute already runs finishes). Returns how
    /// many mutations it dropped.
    pub fn withhold(&self, which: impl Fn(&Target) -> bool) -> usize {
        let (dropped, effects) = lock(&self.shared.queue).withhold(which);
        self.shared.carry_out(effects);
        dropped
    }

    /// Stops taking work; pending callers get [`GcpError::Shutdown`].
    pub fn shutdown(&self) {
        self.shared.stop();
    }

    /// GETs one resource and records what GCP holds in the inventory (e.g. the IP GCP chose for
    /// a reserved address). Returns its JSON; `Ok(None)` when it does not exist.
    pub async fn read_back(&self, target: &Target) -> Result<Option<serde_json::Value>, GcpError> {
        let shared = &self.shared;
        match shared
            .reader
            .get(&get_call(
                target,
                shared.settings.project_for(target.collection),
            ))
            .await
        {
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
                shared.settings.network_project()
            ),
            query: Vec::new(),
            body: None,
            group: RateGroup::Read,
            method_name: "compute.networks.get",
        };
        shared.reader.get(&call).await.map(|_| ())
    }

    /// Reads the resource quotas Compute reports for the project (`projects.get`) and for each
    /// region of the engine (`regions.get`): one GET of the read group each. The quotas the
    /// operator's resources consume ([`super::types::QUOTA_METRICS`]) are recorded in the
    /// `adc_operator_gcp_quota_usage` / `_limit` metrics and returned.
    pub async fn read_quotas(&self) -> Result<Vec<super::types::QuotaUse>, GcpError> {
        let shared = &self.shared;
        let project = &shared.settings.project;
        // Project-wide quotas (ROUTES, FIREWALLS) are the network's project's.
        let mut scopes = vec![(
            "global".to_string(),
            format!("projects/{}", shared.settings.network_project()),
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
            let answer = shared.reader.get(&call).await?;
            let listed: super::types::QuotaList = serde_json::from_slice(&answer.body)
                .map_err(|err| GcpError::Decode(format!("{method_name}: {err}")))?;
            for quota in listed.quotas {
                if !super::types::QUOTA_METRICS.contains(&quota.metric.as_str()) {
                    continue;
                }
                shared.reader.metrics.quota(
                    project,
                    &scope,
                    &quota.metric,
                    quota.usage,
                    quota.limit,
                );
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
        lock(&self.shared.queue).pending()
    }

    /// How much work the engine holds now: what a progress report needs.
    pub fn progress(&self) -> EngineProgress {
        let pending = self.pending();
        let (in_flight, typical_operation) = self.shared.tracker.snapshot();
        let budget = &self.shared.reader.budget;
        let now = Instant::now();
        EngineProgress {
            queued: pending.saturating_sub(in_flight),
            in_flight,
            typical_operation,
            writes_per_minute: self.shared.settings.rate_limits.writes_per_minute,
            writes_left_in_window: budget.bulk_room(RateGroup::Write, "", now),
            window_left: budget.window_end(now).saturating_duration_since(now),
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
    /// Global writes bulk work may still send in the current rate window.
    pub writes_left_in_window: u64,
    /// Until the current rate window ends (engine time).
    pub window_left: Duration,
    /// The engine's time scale (1.0 against GCP).
    pub time_scale: f64,
}

impl Shared {
    /// The write gate closed: this engine sends nothing more. It stops as
    /// [`Engine::shutdown`] stops it (the replica lost the cloud's Lease, or could not renew it
    /// in time); a new engine is built if the cloud is held again.
    fn gate_closed(&self) {
        tracing::warn!(project = %self.settings.project, "the cloud's write gate closed: this engine stops writing");
        self.stop();
    }

    /// Stops taking work; pending callers get [`GcpError::Shutdown`].
    fn stop(&self) {
        self.reader.stop();
        // Every caller still waiting is in the map: the queue's list of them adds nothing.
        drop(lock(&self.queue).shutdown());
        for (_, sender) in lock(&self.waiters).drain() {
            let _ = sender.send(Err(GcpError::Shutdown));
        }
        self.wake.notify_waiters();
        self.tracker.wake();
    }

    /// Answers waiting callers.
    fn answer(&self, waiters: Vec<WaiterId>, outcome: &Result<(), GcpError>) {
        let mut senders = lock(&self.waiters);
        for id in waiters {
            if let Some(sender) = senders.remove(&id) {
                let _ = sender.send(outcome.clone());
            }
        }
    }

    /// Does what the queue decided, then lets the dispatcher look again.
    fn carry_out(self: &Arc<Self>, effects: Vec<Effect>) {
        self.record(effects);
        self.wake.notify_one();
    }

    /// Does what the queue decided and updates the queue-depth gauges, without waking the
    /// dispatcher (what the dispatcher's own look at the queue uses).
    fn record(self: &Arc<Self>, effects: Vec<Effect>) {
        for effect in effects {
            match effect {
                Effect::Answer { waiters, outcome } => self.answer(waiters, &outcome),
                Effect::Apply(mutation) => {
                    if matches!(
                        mutation.target.collection,
                        Collection::Routes | Collection::Firewalls
                    ) {
                        lock(&self.changelog).completed_own();
                    }
                    self.inventory.apply(&mutation)
                }
                Effect::Announce(target) => self.inventory.announce_failure(target),
                Effect::Retried(err) => self.reader.metrics.retry(&err.label()),
                Effect::RateWaited { group, waited } => self
                    .reader
                    .metrics
                    .rate_wait(group.label(), waited.as_secs_f64()),
                Effect::QuotaReopened {
                    collection,
                    location,
                    waiting,
                } => tracing::info!(
                    ?collection,
                    location,
                    waiting,
                    "a spent resource quota has room again"
                ),
                Effect::Verify(dispatch) => {
                    // A retry after a lost answer without our requestId, or a restart: check it
                    // is ours and the same, then count it as done.
                    let shared = Arc::clone(self);
                    tokio::spawn(async move {
                        let verdict = shared.verify_existing(&dispatch).await;
                        let effects = {
                            let mut queue = lock(&shared.queue);
                            let effects = queue.settle(
                                &dispatch,
                                verdict,
                                &shared.reader.budget,
                                Instant::now(),
                            );
                            shared.apply_now(effects)
                        };
                        shared.carry_out(effects);
                    });
                }
            }
        }
        let depth = lock(&self.queue).depth();
        for (lane, depth) in depth {
            self.reader.metrics.queue_depth(lane.label(), depth);
        }
    }

    /// The outcome of a mutation that was sent. What it did is in the inventory before the
    /// queue is released: a reconcile never finds the resource idle in the queue and not yet
    /// changed in the inventory (and sends a delete of what is already gone).
    fn finish(self: &Arc<Self>, dispatch: &Dispatch, outcome: Result<(), GcpError>) {
        let effects = {
            let mut queue = lock(&self.queue);
            let effects = queue.finish(dispatch, outcome, &self.reader.budget, Instant::now());
            self.apply_now(effects)
        };
        self.carry_out(effects);
    }

    /// Applies the inventory changes among `effects` at once; the rest is returned.
    fn apply_now(&self, effects: Vec<Effect>) -> Vec<Effect> {
        effects
            .into_iter()
            .filter(|effect| match effect {
                Effect::Apply(mutation) => {
                    self.inventory.apply(mutation);
                    false
                }
                _ => true,
            })
            .collect()
    }

    /// Takes what may be sent now (and when to look again).
    fn take_ready(self: &Arc<Self>, max: usize) -> (Vec<Dispatch>, Option<Instant>) {
        let ready = lock(&self.queue).take_ready(max, &self.reader.budget, Instant::now());
        if !ready.effects.is_empty() || !ready.dispatches.is_empty() {
            self.record(ready.effects);
        }
        (ready.dispatches, ready.next)
    }

    /// Reads what holds a taken name, for [`judge_existing`].
    async fn verify_existing(&self, dispatch: &Dispatch) -> Result<(), GcpError> {
        let Change::Insert(desired) = &dispatch.mutation.change else {
            return Ok(());
        };
        let call = get_call(
            &dispatch.target,
            self.settings.project_for(dispatch.target.collection),
        );
        let answer = match self.reader.get(&call).await {
            Err(err) if err.is_not_found() => {
                return Err(GcpError::BeingCreated(dispatch.target.to_string()));
            }
            other => other?,
        };
        let actual: serde_json::Value = serde_json::from_slice(&answer.body)
            .map_err(|err| GcpError::Decode(err.to_string()))?;
        judge_existing(&dispatch.target, desired, &actual)
    }

    /// The answer to a mutation call: an operation to track, or an error.
    fn accepted(
        self: &Arc<Self>,
        dispatch: Dispatch,
        answer: Result<super::client::Answer, GcpError>,
    ) {
        self.confirm_window(&dispatch, answer.as_ref().err());
        match answer.and_then(|a| {
            serde_json::from_slice::<Operation>(&a.body)
                .map_err(|err| GcpError::Decode(format!("operation: {err}")))
        }) {
            Ok(op) if op.is_done() => {
                let outcome = op.failure().map_or(Ok(()), Err);
                self.finish(&dispatch, outcome);
            }
            Ok(op) => {
                let scope = op.scope_from(&self.settings.project);
                self.tracker.track(op, scope, dispatch);
            }
            Err(err) => self.finish(&dispatch, Err(err)),
        }
    }

    /// The write of `dispatch` was answered (`failed`: with that error): when it was answered
    /// without a rate limit, its group's window has room, and work held for the answer
    /// ([`Budget::confirm`]) may go now. Outside the window a budget probes, nothing to do.
    fn confirm_window(&self, dispatch: &Dispatch, failed: Option<&GcpError>) {
        let now = Instant::now();
        if !self.reader.budget.probes_at(now) || failed.is_some_and(|e| !e.answered_with_room()) {
            return;
        }
        let (group, region) =
            Queue::write_group(&self.settings.host_scope(), &dispatch.mutation.target);
        if self.reader.budget.confirm(group, &region, now) {
            self.wake.notify_one();
        }
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
}

/// Operation outcomes from the tracker, settled in the queue.
async fn settler(shared: std::sync::Weak<Shared>, mut outcomes: mpsc::UnboundedReceiver<Outcome>) {
    while let Some((dispatch, outcome)) = outcomes.recv().await {
        let Some(shared) = shared.upgrade() else {
            return;
        };
        shared.finish(&dispatch, outcome);
    }
}

async fn dispatcher(shared: Arc<Shared>) {
    let max = match shared.reader.transport {
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
            if shared.reader.is_stopped() {
                return;
            }
            if !shared.settings.may_write() {
                shared.gate_closed();
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
        if !shared.settings.may_write() {
            // The gate closed while the batch gathered: nothing of it goes.
            shared.gate_closed();
            return;
        }
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let calls: Vec<Call> = ready
                .iter()
                .map(|d| {
                    mutation_call(
                        &d.mutation,
                        shared.settings.project_for(d.mutation.target.collection),
                        &d.request_id,
                    )
                })
                .collect();
            let answers = shared.reader.exchange(calls).await;
            drop(permit);
            for (dispatch, answer) in ready.into_iter().zip(answers) {
                shared.accepted(dispatch, answer);
            }
        });
    }
}

async fn per_object_worker(shared: Arc<Shared>) {
    loop {
        if shared.reader.is_stopped() {
            return;
        }
        if !shared.settings.may_write() {
            shared.gate_closed();
            return;
        }
        let (mut ready, next) = shared.take_ready(1);
        let Some(dispatch) = ready.pop() else {
            shared.wait_for_work(next).await;
            continue;
        };
        let outcome = super::per_object::call(
            &shared.reader,
            shared.settings.project_for(dispatch.target.collection),
            &dispatch,
        )
        .await;
        shared.confirm_window(&dispatch, outcome.as_ref().err());
        shared.finish(&dispatch, outcome);
    }
}
