//! The engine's work queue, as a plain state machine: no runtime, no locks, no clock. Every
//! method takes the time it is called at (`now`) and returns what should happen as values
//! ([`Effect`]s): answer a waiter, apply a mutation to the inventory, announce a resource,
//! verify a taken name. The engine (`engine.rs`) is the async shell that holds it behind a
//! mutex, carries the effects out and sends what [`Queue::take_ready`] hands it.
//!
//! It is one file of about 750 lines on purpose: it is one state machine, and every transition
//! below reads and writes the same slots, lanes, gates and retry heap. Its tests are in
//! `queue_tests.rs`.
//!
//! What it decides:
//! - **Joins.** One slot per resource; work identical to the last queued (or the one in flight)
//!   is joined, not queued twice. An insert of what the inventory already holds, with nothing
//!   pending before it, is done at once.
//! - **Cancellation.** An unsent insert followed by a delete of the same resource: both are moot.
//! - **Lanes.** Urgent work (failover, deletes) is always taken before bulk work; joining urgent
//!   work promotes a bulk one that is not yet sent.
//! - **Budget.** A mutation is taken only when its rate group has budget ([`Budget`]): bulk work
//!   bursts up to the window's urgent reserve, urgent work may spend the reserve too; behind a
//!   spent group, only a little further is looked for other groups' work.
//! - **Networks.** A VPC network that answered `resourceNotReady` gets no more than it ran; the
//!   limit is probed upwards after enough successes.
//! - **Resource quotas.** Once an insert met `QUOTA_EXCEEDED`, inserts of that collection fail at
//!   once except one probe per interval ([`QuotaGates`]); room again re-announces the refused.
//! - **Retries.** Retryable errors are retried up to `max_attempts` with the same `requestId`
//!   (a new one after a failed operation, which answers its id forever), after a jittered
//!   backoff, the budget's next chance (rate limits) or a short pause (network not ready).
//! - **Taken names.** An insert answered 409 is verified ([`Effect::Verify`], then
//!   [`Queue::settle`] with [`judge_existing`]'s verdict): ours and the same is done, a resource
//!   not yet readable is being created (retried), someone else's is never touched.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use tokio::time::Instant;

pub use super::budget::Lane;
use super::budget::{Budget, RateGroup};
use super::calls::CollectionCalls;
use super::error::GcpError;
use super::quota::{Admission, QuotaGates};
use super::settings::scaled;
use crate::plan::resource::{Change, Collection, Mutation, Target, same_content};

/// A caller waiting for its mutation's outcome; the engine maps it to a channel.
pub type WaiterId = u64;

/// Who is told a mutation's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waiter {
    /// A caller waiting for the answer.
    Caller(WaiterId),
    /// Nobody waits ([`Queue::begin`]): a final error is kept as the target's [`Failure`] and
    /// announced.
    Detached,
}

/// A mutation started with `begin` that failed for good.
#[derive(Debug, Clone)]
pub struct Failure {
    pub error: GcpError,
    /// When it failed, to space out retries.
    pub at: Instant,
}

/// A mutation taken for sending.
#[derive(Debug, Clone, PartialEq)]
pub struct Dispatch {
    pub target: Target,
    pub mutation: Mutation,
    pub request_id: String,
}

/// What the shell must do after a step of the queue.
#[derive(Debug, Clone)]
pub enum Effect {
    /// Tell these callers the outcome.
    Answer {
        waiters: Vec<WaiterId>,
        outcome: Result<(), GcpError>,
    },
    /// The mutation is done: the inventory holds (or no longer holds) its resource.
    Apply(Mutation),
    /// The resource's object should look again (a failure to show, a retry, room again).
    Announce(Target),
    /// A call failed and will be retried (counted by the error's label).
    Retried(GcpError),
    /// An insert found its name taken: read what is there, then [`Queue::settle`] with
    /// [`judge_existing`]'s verdict (or [`GcpError::BeingCreated`] when it cannot be read).
    Verify(Dispatch),
    /// Work of a rate group waited this long for budget before it was sent.
    RateWaited { group: RateGroup, waited: Duration },
    /// A spent resource quota has room again; `waiting` refused objects were announced.
    QuotaReopened {
        collection: Collection,
        location: String,
        waiting: usize,
    },
}

/// What [`Queue::take_ready`] hands out.
#[derive(Debug, Default)]
pub struct Ready {
    /// Mutations to send now.
    pub dispatches: Vec<Dispatch>,
    /// When to look again (delayed work due, or budget expected), if anything waits.
    pub next: Option<Instant>,
    pub effects: Vec<Effect>,
}

/// How the queue is set up.
#[derive(Debug, Clone)]
pub struct QueueSettings {
    /// With Shared VPC, the budget scope of the host project: its routes' and firewall rules'
    /// writes are charged there, apart from the service project's.
    pub host_scope: Option<String>,
    /// Attempts per mutation before its error is final.
    pub max_attempts: u32,
    /// Multiplies backoffs and pauses (1.0 against GCP).
    pub time_scale: f64,
    /// How often an insert probes a resource quota GCP said is spent.
    pub quota_probe: Duration,
}

/// A mutation as the queue keeps it: the body of an insert or a patch as its compact JSON text
/// (a JSON tree is about three times its text), the rest as is. A rollout queues tens of
/// thousands of them; each is read back whole only when it is sent or applied.
#[derive(Debug)]
struct Stored {
    /// The mutation, with the body taken out (`Value::Null`) when `body` holds it.
    head: Mutation,
    body: Option<Box<serde_json::value::RawValue>>,
}

impl Stored {
    fn new(mut head: Mutation) -> Self {
        let mut body = None;
        if let Change::Insert(value) | Change::Patch(value) = &mut head.change
            && let Ok(raw) = serde_json::value::to_raw_value(value)
        {
            *value = Value::Null;
            body = Some(raw);
        }
        Self { head, body }
    }

    /// The whole mutation.
    fn full(&self) -> Mutation {
        let mut mutation = self.head.clone();
        if let (Some(body), Change::Insert(value) | Change::Patch(value)) =
            (&self.body, &mut mutation.change)
        {
            // The queue's own serialization of a JSON value: it always reads back.
            *value = serde_json::from_str(body.get()).unwrap_or(Value::Null);
        }
        mutation
    }

    /// Whether it is `other` (the same target, network and change).
    fn is(&self, other: &Mutation) -> bool {
        self.head.target == other.target
            && self.head.network == other.network
            && match (&self.head.change, &other.change, &self.body) {
                (Change::Insert(_), Change::Insert(value), Some(body))
                | (Change::Patch(_), Change::Patch(value), Some(body)) => {
                    serde_json::to_string(value).is_ok_and(|text| text == body.get())
                }
                (mine, theirs, _) => mine == theirs,
            }
    }

    fn target(&self) -> &Target {
        &self.head.target
    }

    fn network(&self) -> Option<&String> {
        self.head.network.as_ref()
    }

    fn is_insert(&self) -> bool {
        self.head.is_insert()
    }
}

#[derive(Debug)]
struct Work {
    mutation: Stored,
    lane: Lane,
    request_id: String,
    attempts: u32,
    waiters: Vec<WaiterId>,
    /// Started by `begin`: a final error becomes the target's [`Failure`].
    detached: bool,
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
    /// Targets held back while the network runs its limit, per lane (urgent first), each in
    /// the order it was held.
    waiting: [VecDeque<Target>; 2],
}

impl NetworkState {
    fn waiting_in(&mut self, lane: Lane) -> &mut VecDeque<Target> {
        match lane {
            Lane::Urgent => &mut self.waiting[0],
            Lane::Bulk => &mut self.waiting[1],
        }
    }

    /// The held targets, urgent ones first.
    fn next_waiting(&mut self) -> Option<Target> {
        self.waiting[0]
            .pop_front()
            .or_else(|| self.waiting[1].pop_front())
    }
}

/// How far past work of a spent rate group a lane is looked into for other groups' work.
const LOOK_PAST_SPENT: usize = 64;

/// The targets waiting in one lane, in order, and what its last look found.
#[derive(Debug, Default)]
struct LaneQueue {
    targets: VecDeque<Target>,
    /// Set when a look found nothing more to send before this instant: every target it reached
    /// waits for a spent rate group. Cleared when a target is put where that look reached (the
    /// front, or anywhere in a lane shorter than the look). While it stands, another look would
    /// only find the same, so none is made: at 10,000 objects, looking again at each wake of
    /// the dispatcher was a tenth of the operator's CPU.
    stalled_until: Option<Instant>,
}

impl LaneQueue {
    fn push_front(&mut self, target: Target) {
        self.stalled_until = None;
        self.targets.push_front(target);
    }

    fn push_back(&mut self, target: Target) {
        if self.targets.len() < LOOK_PAST_SPENT {
            self.stalled_until = None;
        }
        self.targets.push_back(target);
    }

    fn pop_front(&mut self) -> Option<Target> {
        self.targets.pop_front()
    }

    fn len(&self) -> usize {
        self.targets.len()
    }

    fn clear(&mut self) {
        self.targets.clear();
        self.stalled_until = None;
    }

    /// Until when a look is known to find nothing to send.
    fn stalled(&self, now: Instant) -> Option<Instant> {
        self.stalled_until.filter(|until| *until > now)
    }
}

/// The work of one project.
#[derive(Debug)]
pub struct Queue {
    settings: QueueSettings,
    /// Ordered, so the work of one object (its names share a prefix) is a range.
    slots: BTreeMap<Target, Slot>,
    urgent: LaneQueue,
    bulk: LaneQueue,
    delayed: BinaryHeap<Reverse<(Instant, u64, Target)>>,
    delayed_seq: u64,
    networks: HashMap<String, NetworkState>,
    /// Since when work of a rate group (and region) has waited for budget.
    waiting_for_budget: HashMap<(RateGroup, String), Instant>,
    /// The final error of the last mutation begun (not awaited) per resource.
    failures: HashMap<Target, Failure>,
    /// The last error of work being retried, per resource, until it settles.
    retrying: HashMap<Target, GcpError>,
    quota: QuotaGates,
    /// Jitter and request ids; seeded, so a test replays exactly.
    rng: StdRng,
}

/// A retry delay: exponential from 250 ms, capped at 32 s, full jitter between half and all of
/// it (`jitter` in 0..1), times the time scale.
pub fn backoff(attempt: u32, scale: f64, jitter: f64) -> Duration {
    let base = 0.25 * 2f64.powi(attempt.min(8) as i32);
    let capped = base.min(32.0);
    let seconds = capped * (0.5 + jitter.clamp(0.0, 1.0) * 0.5);
    scaled(Duration::from_secs_f64(seconds), scale)
}

impl Queue {
    /// An empty queue; `seed` drives its jitter and request ids.
    /// The budget group and scope a write of `target` is charged to: its collection's, in the
    /// host project's own scope for a Shared VPC network's routes and firewall rules.
    pub(crate) fn write_group(host_scope: &Option<String>, target: &Target) -> (RateGroup, String) {
        let (group, region) = target.collection.write_group(&target.location);
        match host_scope {
            Some(host) if target.collection.in_network_project() => (group, host.clone()),
            _ => (group, region),
        }
    }

    pub fn new(settings: QueueSettings, seed: u64) -> Self {
        let quota_probe = scaled(settings.quota_probe, settings.time_scale);
        Self {
            settings,
            slots: BTreeMap::new(),
            urgent: LaneQueue::default(),
            bulk: LaneQueue::default(),
            delayed: BinaryHeap::new(),
            delayed_seq: 0,
            networks: HashMap::new(),
            waiting_for_budget: HashMap::new(),
            failures: HashMap::new(),
            retrying: HashMap::new(),
            quota: QuotaGates::new(quota_probe),
            rng: StdRng::seed_from_u64(seed),
        }
    }

    fn request_id(&mut self) -> String {
        uuid::Builder::from_random_bytes(self.rng.r#gen())
            .into_uuid()
            .to_string()
    }

    fn lane_queue(&mut self, lane: Lane) -> &mut LaneQueue {
        match lane {
            Lane::Urgent => &mut self.urgent,
            Lane::Bulk => &mut self.bulk,
        }
    }

    /// Adds a mutation. `held` says what the inventory holds under its target (asked only when
    /// nothing is pending for it).
    pub fn enqueue(
        &mut self,
        mutation: Mutation,
        lane: Lane,
        waiter: Waiter,
        held: impl FnOnce(&Target) -> Option<Value>,
        now: Instant,
    ) -> Vec<Effect> {
        let mut effects = Vec::new();
        let target = mutation.target.clone();
        let (waiters, detached) = match waiter {
            Waiter::Caller(id) => (vec![id], false),
            Waiter::Detached => (Vec::new(), true),
        };
        let slot_is_empty = self.slots.get(&target).is_none_or(|s| s.works.is_empty());
        if slot_is_empty {
            self.slots.remove(&target);
            // An insert of what the inventory already holds, with nothing pending before it,
            // is done: its operation finished between the caller's look and now.
            if let Change::Insert(desired) = &mutation.change
                && held(&target).is_some_and(|held| same_content(desired, &held))
            {
                answer(&mut effects, waiters, Ok(()));
                return effects;
            }
            if mutation.is_insert()
                && let Admission::Closed(err) = self.quota.admit(&target, now)
            {
                // The quota is spent: the answer GCP would give, without asking it again.
                self.conclude(&mut effects, &target, waiters, detached, Err(err), now);
                return effects;
            }
        }
        let slot = self.slots.entry(target.clone()).or_default();
        let last_is_in_flight = slot.in_flight && slot.works.len() == 1;
        if let Some(last) = slot.works.back_mut()
            && last.mutation.is(&mutation)
        {
            last.waiters.extend(waiters);
            last.detached |= detached;
            if lane == Lane::Urgent && last.lane == Lane::Bulk && !last_is_in_flight {
                last.lane = Lane::Urgent;
                self.urgent.push_front(target);
            }
            return effects;
        }
        // An unsent insert followed by a delete of the same resource: both are moot.
        let unsent_from = usize::from(slot.in_flight);
        if matches!(mutation.change, Change::Delete)
            && slot.works.len() > unsent_from
            && slot.works.back().is_some_and(|w| w.mutation.is_insert())
        {
            if let Some(insert) = slot.works.pop_back() {
                answer(&mut effects, insert.waiters, Err(GcpError::Superseded));
            }
            answer(&mut effects, waiters, Ok(()));
            if slot.works.is_empty() {
                self.slots.remove(&target);
            }
            return effects;
        }
        let was_empty = slot.works.is_empty();
        let request_id = self.request_id();
        let slot = self.slots.entry(target.clone()).or_default();
        // Most targets carry one piece of work at a time: room for one, not the four a first
        // push makes (at 25,000 queued targets that was 14 MB of empty room).
        slot.works.reserve_exact(1);
        slot.works.push_back(Work {
            mutation: Stored::new(mutation),
            lane,
            request_id,
            attempts: 0,
            waiters,
            detached,
        });
        if was_empty {
            self.lane_queue(lane).push_back(target);
        }
        effects
    }

    /// Whether nothing is queued or in flight for `target`.
    pub fn is_idle(&self, target: &Target) -> bool {
        self.slots
            .get(target)
            .is_none_or(|slot| slot.works.is_empty())
    }

    /// Starts a mutation nobody waits for: the outcome shows in the inventory (done) or in
    /// [`Queue::failure`] (a final error, announced). Clears the target's last failure. Returns
    /// whether it is new work rather than joined to work already pending for the resource.
    pub fn begin(
        &mut self,
        mutation: Mutation,
        lane: Lane,
        held: impl FnOnce(&Target) -> Option<Value>,
        now: Instant,
    ) -> (bool, Vec<Effect>) {
        let joined = self.is_pending(&mutation.target);
        self.failures.remove(&mutation.target);
        let effects = self.enqueue(mutation, lane, Waiter::Detached, held, now);
        (!joined, effects)
    }

    /// Takes up to `max` mutations that may be sent now, spending `budget`.
    pub fn take_ready(&mut self, max: usize, budget: &Budget, now: Instant) -> Ready {
        while let Some(Reverse((at, _, _))) = self.delayed.peek() {
            if *at > now {
                break;
            }
            if let Some(Reverse((_, _, target))) = self.delayed.pop()
                && let Some(lane) = self.front_lane(&target)
            {
                self.lane_queue(lane).push_front(target);
            }
        }
        let mut ready = Ready {
            next: self.delayed.peek().map(|Reverse((at, _, _))| *at),
            ..Ready::default()
        };
        for lane in [Lane::Urgent, Lane::Bulk] {
            if let Some(until) = self.lane_queue(lane).stalled(now) {
                ready.next = Some(ready.next.map_or(until, |n| n.min(until)));
                continue;
            }
            let mut blocked_groups: Vec<(RateGroup, String)> = Vec::new();
            let mut first_chance: Option<Instant> = None;
            let mut skipped = VecDeque::new();
            let mut filled = false;
            loop {
                if ready.dispatches.len() >= max {
                    filled = true;
                    break;
                }
                let Some(target) = self.lane_queue(lane).pop_front() else {
                    break;
                };
                let Some(slot) = self.slots.get(&target) else {
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
                let (group, region) =
                    Self::write_group(&self.settings.host_scope, work.mutation.target());
                if blocked_groups.contains(&(group, region.clone())) {
                    skipped.push_back(target);
                    // Behind a spent group, look only a little further for other groups' work.
                    if skipped.len() >= LOOK_PAST_SPENT {
                        break;
                    }
                    continue;
                }
                if let Some(network) = work.mutation.network() {
                    let state = self.networks.entry(network.clone()).or_default();
                    if state.limit.is_some_and(|limit| state.in_flight >= limit) {
                        state.waiting_in(lane).push_back(target);
                        continue;
                    }
                }
                if budget.take(group, &region, 1, lane, now) == 0 {
                    let chance = budget.next_chance(group, &region, lane, now);
                    ready.next = Some(ready.next.map_or(chance, |n| n.min(chance)));
                    first_chance = Some(first_chance.map_or(chance, |n| n.min(chance)));
                    self.waiting_for_budget
                        .entry((group, region.clone()))
                        .or_insert(now);
                    blocked_groups.push((group, region));
                    skipped.push_back(target);
                    continue;
                }
                if let Some(since) = self.waiting_for_budget.remove(&(group, region)) {
                    ready.effects.push(Effect::RateWaited {
                        group,
                        waited: now.saturating_duration_since(since),
                    });
                }
                let Some(slot) = self.slots.get_mut(&target) else {
                    continue;
                };
                slot.in_flight = true;
                let Some(work) = slot.works.front() else {
                    continue;
                };
                if let Some(network) = work.mutation.network() {
                    self.networks.entry(network.clone()).or_default().in_flight += 1;
                }
                ready.dispatches.push(Dispatch {
                    target: target.clone(),
                    mutation: work.mutation.full(),
                    request_id: work.request_id.clone(),
                });
            }
            let queue = self.lane_queue(lane);
            while let Some(target) = skipped.pop_back() {
                queue.targets.push_front(target);
            }
            // Not filled: the look ended at the lane's end or deep enough past spent groups, and
            // what it passed over is the lane's front again. Until the first of those groups may
            // spend, another look finds the same.
            if !filled {
                queue.stalled_until = first_chance.filter(|at| *at > now);
            }
        }
        ready
    }

    /// The outcome of a mutation that was sent. A 409 on an insert asks for
    /// [`Effect::Verify`]; a 404 on a delete is done; the rest settles.
    pub fn finish(
        &mut self,
        dispatch: &Dispatch,
        outcome: Result<(), GcpError>,
        budget: &Budget,
        now: Instant,
    ) -> Vec<Effect> {
        let outcome = match outcome {
            Err(err) if dispatch.mutation.is_insert() && err.is_already_exists() => {
                return vec![Effect::Verify(dispatch.clone())];
            }
            Err(err) if !dispatch.mutation.is_insert() && err.is_not_found() => Ok(()),
            other => other,
        };
        self.settle(dispatch, outcome, budget, now)
    }

    /// Settles a sent mutation: done, retried later, or failed for good.
    pub fn settle(
        &mut self,
        dispatch: &Dispatch,
        outcome: Result<(), GcpError>,
        budget: &Budget,
        now: Instant,
    ) -> Vec<Effect> {
        let mut effects = Vec::new();
        if let Some((collection, location)) = self.quota.record(&dispatch.mutation, &outcome, now) {
            self.quota_reopened(&mut effects, collection, location);
        }
        if let Some(network) = &dispatch.mutation.network {
            self.free_network(network, &outcome);
        }
        let Some(slot) = self.slots.get_mut(&dispatch.target) else {
            return effects;
        };
        slot.in_flight = false;
        let retry = match &outcome {
            Err(err) if err.is_retryable() => slot
                .works
                .front()
                .is_some_and(|w| w.attempts + 1 < self.settings.max_attempts),
            _ => false,
        };
        match outcome {
            Err(err) if retry => {
                self.retry_later(&mut effects, dispatch, err, budget, now);
            }
            outcome => {
                let was_retrying = self.retrying.remove(&dispatch.target).is_some();
                let Some(mut work) = slot.works.pop_front() else {
                    return effects;
                };
                if was_retrying && outcome.is_ok() {
                    // Its object showed the retry: it looks again even while more of its work
                    // waits (a plain completion requeues it only at its last).
                    effects.push(Effect::Announce(dispatch.target.clone()));
                }
                let outcome = match outcome {
                    Err(err) if err.is_retryable() => Err(GcpError::Exhausted {
                        attempts: work.attempts + 1,
                        last: Box::new(err),
                    }),
                    other => other,
                };
                if outcome.is_ok() {
                    effects.push(Effect::Apply(work.mutation.full()));
                }
                if matches!(outcome, Err(GcpError::NotOwned { .. })) {
                    // Deletes queued behind this insert were to take back what it would have
                    // made (a plan that changed while it ran). It made nothing, and what holds
                    // the name is someone else's: they are never sent.
                    while slot.works.front().is_some_and(|w| !w.mutation.is_insert()) {
                        if let Some(cancelled) = slot.works.pop_front() {
                            answer(&mut effects, cancelled.waiters, Ok(()));
                        }
                    }
                }
                let next_lane = slot.works.front().map(|w| w.lane);
                let waiters = std::mem::take(&mut work.waiters);
                self.conclude(
                    &mut effects,
                    &dispatch.target,
                    waiters,
                    work.detached,
                    outcome,
                    now,
                );
                match next_lane {
                    Some(Lane::Urgent) => self.urgent.push_front(dispatch.target.clone()),
                    Some(Lane::Bulk) => self.bulk.push_back(dispatch.target.clone()),
                    None => {
                        self.slots.remove(&dispatch.target);
                    }
                }
            }
        }
        effects
    }

    /// Drops the work not yet sent for the targets `which` picks (a management policy that
    /// stopped writing): what Compute already runs finishes and settles as usual; the dropped
    /// work's waiters are told [`GcpError::Superseded`]. Returns how many mutations it dropped.
    pub fn withhold(&mut self, which: impl Fn(&Target) -> bool) -> (usize, Vec<Effect>) {
        let mut effects = Vec::new();
        let mut dropped = 0;
        let mut emptied = Vec::new();
        for (target, slot) in self.slots.iter_mut().filter(|(t, _)| which(t)) {
            let keep = usize::from(slot.in_flight);
            while slot.works.len() > keep {
                if let Some(work) = slot.works.pop_back() {
                    dropped += 1;
                    answer(&mut effects, work.waiters, Err(GcpError::Superseded));
                }
            }
            if slot.works.is_empty() {
                emptied.push(target.clone());
            }
        }
        for target in emptied {
            // Lane and delay entries of an emptied slot are skipped when they come up.
            self.slots.remove(&target);
            self.retrying.remove(&target);
        }
        (dropped, effects)
    }

    /// Stops: every waiter still waiting, to be told [`GcpError::Shutdown`].
    pub fn shutdown(&mut self) -> Vec<WaiterId> {
        self.urgent.clear();
        self.bulk.clear();
        self.delayed.clear();
        std::mem::take(&mut self.slots)
            .into_values()
            .flat_map(|slot| slot.works)
            .flat_map(|work| work.waiters)
            .collect()
    }

    /// The final error of the last mutation begun for `target`, until the next begin.
    pub fn failure(&self, target: &Target) -> Option<&Failure> {
        self.failures.get(target)
    }

    /// The last error of work for `target` that is being retried (still pending).
    pub fn retrying(&self, target: &Target) -> Option<&GcpError> {
        self.retrying.get(target)
    }

    /// Whether work for `target` is queued or in flight.
    pub fn is_pending(&self, target: &Target) -> bool {
        self.slots.contains_key(target)
    }

    /// Global resources of `collection` whose names start with `prefix` and whose insert is
    /// queued or in flight.
    pub fn pending_inserts(&self, collection: Collection, prefix: &str) -> Vec<Target> {
        self.global_slots(collection, prefix)
            .filter(|(_, slot)| slot.works.iter().any(|w| w.mutation.is_insert()))
            .map(|(t, _)| t.clone())
            .collect()
    }

    /// The slots of global resources of `collection` whose names start with `prefix`: a range,
    /// since slots are ordered by collection, location and name.
    fn global_slots<'a>(
        &'a self,
        collection: Collection,
        prefix: &'a str,
    ) -> impl Iterator<Item = (&'a Target, &'a Slot)> {
        let from = Target {
            collection,
            location: String::new(),
            name: prefix.to_string(),
        };
        self.slots.range(from..).take_while(move |(t, _)| {
            t.collection == collection && t.location.is_empty() && t.name.starts_with(prefix)
        })
    }

    /// Whether any route or firewall rule whose name starts with `prefix` (one object's) has
    /// work queued or in flight.
    pub fn has_global_work(&self, prefix: &str) -> bool {
        [Collection::Routes, Collection::Firewalls]
            .into_iter()
            .any(|collection| self.global_slots(collection, prefix).next().is_some())
    }

    /// Mutations queued or in flight.
    pub fn pending(&self) -> usize {
        self.slots.values().map(|slot| slot.works.len()).sum()
    }

    /// Resources waiting in each lane (the queue-depth gauges), with those held back while
    /// their network runs its limit.
    pub fn depth(&self) -> [(Lane, usize); 2] {
        let held = |i: usize| -> usize { self.networks.values().map(|n| n.waiting[i].len()).sum() };
        [
            (Lane::Urgent, self.urgent.len() + held(0)),
            (Lane::Bulk, self.bulk.len() + held(1)),
        ]
    }

    fn front_lane(&self, target: &Target) -> Option<Lane> {
        self.slots
            .get(target)
            .and_then(|s| s.works.front())
            .map(|w| w.lane)
    }

    /// Tells a finished mutation's waiters; a detached one's final error is kept and announced.
    fn conclude(
        &mut self,
        effects: &mut Vec<Effect>,
        target: &Target,
        waiters: Vec<WaiterId>,
        detached: bool,
        outcome: Result<(), GcpError>,
        now: Instant,
    ) {
        if detached
            && let Err(error) = &outcome
            && !matches!(error, GcpError::Shutdown | GcpError::Superseded)
        {
            self.failures.insert(
                target.clone(),
                Failure {
                    error: error.clone(),
                    at: now,
                },
            );
            effects.push(Effect::Announce(target.clone()));
        }
        answer(effects, waiters, outcome);
    }

    /// A network's slot is free again; it learns from the outcome how much it takes.
    fn free_network(&mut self, network: &str, outcome: &Result<(), GcpError>) {
        let Some(state) = self.networks.get_mut(network) else {
            return;
        };
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
        // As many held targets go back to their lanes as the network has room for, urgent ones
        // first; the rest stay held. (Putting every held target back at each completion made
        // each completion cost the whole backlog: at 10,000 objects a rollout's largest cost.)
        let room = state.limit.map_or(usize::MAX, |limit| {
            limit.saturating_sub(state.in_flight) as usize
        });
        let mut released = Vec::new();
        while released.len() < room {
            let Some(state) = self.networks.get_mut(network) else {
                break;
            };
            let Some(target) = state.next_waiting() else {
                break;
            };
            // A target with nothing left to send (done or cancelled meanwhile) takes no room.
            if let Some(lane) = self.front_lane(&target) {
                released.push((lane, target));
            }
        }
        for (lane, target) in released.into_iter().rev() {
            self.lane_queue(lane).push_front(target);
        }
    }

    fn retry_later(
        &mut self,
        effects: &mut Vec<Effect>,
        dispatch: &Dispatch,
        err: GcpError,
        budget: &Budget,
        now: Instant,
    ) {
        effects.push(Effect::Retried(err.clone()));
        if self
            .retrying
            .insert(dispatch.target.clone(), err.clone())
            .is_none()
        {
            // The object says so while its work is retried, not only when it gives up.
            effects.push(Effect::Announce(dispatch.target.clone()));
        }
        let jitter: f64 = self.rng.r#gen();
        let pause = scaled(Duration::from_millis(100), self.settings.time_scale);
        let new_id = matches!(err, GcpError::Operation { .. }).then(|| self.request_id());
        let time_scale = self.settings.time_scale;
        let Some(work) = self
            .slots
            .get_mut(&dispatch.target)
            .and_then(|slot| slot.works.front_mut())
        else {
            return;
        };
        work.attempts += 1;
        if let Some(id) = new_id {
            // The failed operation answers its requestId forever: a new try needs a new one.
            work.request_id = id;
        }
        let (group, region) = Self::write_group(&self.settings.host_scope, work.mutation.target());
        let at = if err.is_rate_limited() {
            budget.penalize(group, &region, err.retry_after(), jitter, now);
            budget.next_chance(group, &region, work.lane, now)
        } else if err.is_not_ready() {
            now + pause
        } else {
            now + backoff(work.attempts, time_scale, jitter)
        };
        self.delayed_seq += 1;
        self.delayed
            .push(Reverse((at, self.delayed_seq, dispatch.target.clone())));
    }

    /// A spent quota has room again: the objects whose inserts it refused retry now, not when
    /// their retry delay runs out.
    fn quota_reopened(
        &mut self,
        effects: &mut Vec<Effect>,
        collection: Collection,
        location: String,
    ) {
        let refused: Vec<Target> = self
            .failures
            .iter()
            .filter(|(target, failure)| {
                target.collection == collection
                    && target.location == location
                    && failure.error.is_quota_exceeded()
            })
            .map(|(target, _)| target.clone())
            .collect();
        for target in &refused {
            self.failures.remove(target);
        }
        effects.push(Effect::QuotaReopened {
            collection,
            location,
            waiting: refused.len(),
        });
        effects.extend(refused.into_iter().map(Effect::Announce));
    }
}

fn answer(effects: &mut Vec<Effect>, waiters: Vec<WaiterId>, outcome: Result<(), GcpError>) {
    if !waiters.is_empty() {
        effects.push(Effect::Answer { waiters, outcome });
    }
}

/// The ownership marker token of a resource body's description.
fn owner_marker(body: &Value) -> Option<&str> {
    crate::plan::owner::marker(body.get("description")?.as_str()?)
}

/// Whether an insert that found its name taken (409) may count as done: only when the resource
/// there carries the very ownership marker of the insert (it is ours: made by an earlier attempt
/// whose answer was lost, or before a restart) and holds what the insert asked for. A resource
/// without that marker is someone else's whatever its content: it is never adopted.
pub fn judge_existing(target: &Target, desired: &Value, actual: &Value) -> Result<(), GcpError> {
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

#[cfg(test)]
#[path = "queue_tests.rs"]
mod tests;
