//! Operations in flight, polled together. Every poll costs operation-read quota, and at fleet
//! scale the work needs as many operations as writes, so the tracker reads them in bulk: while
//! several are pending in a scope it lists that scope's operations that are DONE since the oldest
//! pending one was inserted (one read per 500 operations, results and errors included), and falls
//! back to batched `operations.get` for a few pending ones or one the list did not show.
//!
//! When to poll ([`next_poll`]): an operation cannot finish before the shortest one seen so far
//! took, so nothing is read before then; from then on the tracker polls every half second (GCP
//! time), so an operation's DONE reaches its object about a second later at most, but never
//! spends more than half the operation-read quota on it. It reads through the engine's one read
//! path ([`Reader`]) and hands each DONE operation's outcome back through a channel.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

use super::budget::{Lane, RateGroup};
use super::client::Call;
use super::error::GcpError;
use super::queue::Dispatch;
use super::reader::Reader;
use super::types::{ListPage, Operation};

/// A sent mutation's outcome, once its operation is DONE (or cannot be read any more).
pub type Outcome = (Dispatch, Result<(), GcpError>);

/// Below this many pending operations in a scope, individual gets cost no more than a list.
const LIST_FROM: usize = 4;

/// How often operations are polled once one of them may be DONE (GCP time).
pub const FAST_POLL: Duration = Duration::from_millis(500);

/// The share of the operation-read quota polling may spend: 1 / this.
const POLL_SHARE: u32 = 2;

/// When the tracker should poll next, for operations pending since `oldest` at the earliest,
/// when the shortest operation seen took `shortest` (unknown before the first is DONE). Polls
/// are `fast` apart from the moment the oldest may be DONE (a poll early, so one finishing at
/// the shortest duration is seen at once), and at least `spacing` apart (what the quota allows
/// for a poll that cost what the last one did).
pub fn next_poll(
    now: Instant,
    oldest: Instant,
    shortest: Option<Duration>,
    fast: Duration,
    spacing: Duration,
) -> Instant {
    let soonest = now + fast.max(spacing);
    match shortest {
        Some(shortest) => (oldest + shortest.saturating_sub(fast)).max(soonest),
        None => soonest,
    }
}

#[derive(Debug)]
struct Tracked {
    dispatch: Dispatch,
    since: Instant,
    /// The operation's insertTime as the server wrote it (the list filter compares on it).
    insert_time: Option<String>,
}

#[derive(Debug, Default)]
struct TrackerState {
    /// By (scope, operation name).
    ops: HashMap<(String, String), Tracked>,
    /// Smoothed operation duration, seconds.
    typical: Option<f64>,
    /// The shortest an operation took from being tracked to being seen DONE.
    shortest: Option<Duration>,
}

/// The set of operations being waited for.
#[derive(Debug, Default)]
pub struct Tracker {
    state: std::sync::Mutex<TrackerState>,
    wake: Notify,
}

impl Tracker {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Operations being waited for, and how long one typically takes (smoothed), if any was
    /// seen DONE yet.
    pub(crate) fn snapshot(&self) -> (usize, Option<Duration>) {
        let state = self.lock();
        (state.ops.len(), state.typical.map(Duration::from_secs_f64))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TrackerState> {
        match self.state.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Tracks `op` under `scope` (its scope path, prefixed with its project when that is not
    /// the engine's own: [`Operation::scope_from`]).
    pub(crate) fn track(&self, op: Operation, scope: String, dispatch: Dispatch) {
        let insert_time = op.insert_time.clone();
        self.lock().ops.insert(
            (scope, op.name),
            Tracked {
                dispatch,
                since: Instant::now(),
                insert_time,
            },
        );
        self.wake.notify_one();
    }

    pub(crate) fn wake(&self) {
        self.wake.notify_waiters();
    }

    fn take(&self, scope: String, name: String) -> Option<Tracked> {
        let mut state = self.lock();
        let tracked = state.ops.remove(&(scope, name));
        if let Some(tracked) = &tracked {
            let took = tracked.since.elapsed();
            state.shortest = Some(state.shortest.map_or(took, |s| s.min(took)));
            let took = took.as_secs_f64();
            state.typical = Some(state.typical.map_or(took, |t| 0.8 * t + 0.2 * took));
        }
        tracked
    }

    /// Operations being waited for.
    pub fn pending(&self) -> usize {
        self.lock().ops.len()
    }
}

/// The path of a scope's operations: `projects/P/global`, or the scope itself when it names
/// its project (an operation of a Shared VPC host).
fn scope_path(project: &str, scope: &str) -> String {
    if scope.starts_with("projects/") {
        scope.to_string()
    } else {
        format!("projects/{project}/{scope}")
    }
}

fn get_call(project: &str, scope: &str, name: &str) -> Call {
    let method_name = if scope.contains("zones/") {
        "compute.zoneOperations.get"
    } else if scope.contains("regions/") {
        "compute.regionOperations.get"
    } else {
        "compute.globalOperations.get"
    };
    Call {
        method: Method::GET,
        path: format!("{}/operations/{name}", scope_path(project, scope)),
        query: Vec::new(),
        body: None,
        group: RateGroup::OperationRead,
        method_name,
    }
}

fn list_done_call(project: &str, scope: &str, since: &str, page_token: Option<&str>) -> Call {
    let method_name = if scope.contains("zones/") {
        "compute.zoneOperations.list"
    } else if scope.contains("regions/") {
        "compute.regionOperations.list"
    } else {
        "compute.globalOperations.list"
    };
    let mut query = vec![
        (
            "filter".to_string(),
            format!("(status = DONE) AND (insertTime >= \"{since}\")"),
        ),
        ("maxResults".to_string(), "500".to_string()),
    ];
    if let Some(token) = page_token {
        query.push(("pageToken".to_string(), token.to_string()));
    }
    Call {
        method: Method::GET,
        path: format!("{}/operations", scope_path(project, scope)),
        query,
        body: None,
        group: RateGroup::OperationRead,
        method_name,
    }
}

/// What the tracker's loop works with.
pub(crate) struct Poller {
    pub tracker: Arc<Tracker>,
    pub reader: Arc<Reader>,
    pub project: String,
    /// Where outcomes go; the loop ends when nobody listens or the reader stops.
    pub done: mpsc::UnboundedSender<Outcome>,
}

impl Poller {
    /// The tracker's loop: wait until an operation may be DONE ([`next_poll`]), poll, deliver.
    pub(crate) async fn run(self) {
        let fast = self.reader.scaled(FAST_POLL);
        let budget = &self.reader.budget;
        // What one call of polling may cost in time, at the share of the quota it may spend.
        let per_call = budget.window() * POLL_SHARE
            / u32::try_from(budget.limit(RateGroup::OperationRead)).unwrap_or(u32::MAX);
        let mut last_cost = 0u32;
        loop {
            if self.reader.is_stopped() || self.done.is_closed() {
                return;
            }
            let (pending, oldest, shortest) = {
                let state = self.tracker.lock();
                let oldest = state.ops.values().map(|t| t.since).min();
                (state.ops.len(), oldest, state.shortest)
            };
            self.reader
                .metrics
                .operations_pending
                .set(i64::try_from(pending).unwrap_or(i64::MAX));
            let Some(oldest) = oldest else {
                self.tracker.wake.notified().await;
                continue;
            };
            let at = next_poll(Instant::now(), oldest, shortest, fast, per_call * last_cost);
            tokio::time::sleep_until(at).await;
            last_cost = self.poll_once().await;
        }
    }

    /// Hands a DONE operation's outcome to the engine.
    fn deliver(&self, scope: String, op: &Operation) {
        if let Some(tracked) = self.tracker.take(scope, op.name.clone()) {
            let outcome = op.failure().map_or(Ok(()), Err);
            self.reader.metrics.operation(&outcome);
            let _ = self.done.send((tracked.dispatch, outcome));
        }
    }

    /// One poll of every scope with pending operations; returns the calls it cost.
    async fn poll_once(&self) -> u32 {
        let reader = &self.reader;
        let project = self.project.as_str();
        let (by_scope, typical) = {
            let state = self.tracker.lock();
            let mut by_scope: BTreeMap<String, Vec<(String, Option<String>, Instant)>> =
                BTreeMap::new();
            for ((scope, name), tracked) in &state.ops {
                by_scope.entry(scope.clone()).or_default().push((
                    name.clone(),
                    tracked.insert_time.clone(),
                    tracked.since,
                ));
            }
            (by_scope, state.typical)
        };
        // An operation the lists have not shown for this long is read on its own.
        let overdue =
            Duration::from_secs_f64(typical.map_or(30.0 * reader.time_scale(), |t| 3.0 * t));
        let mut to_get: Vec<(String, String)> = Vec::new();
        let mut cost = 0u32;
        for (scope, pending) in by_scope {
            let since = pending.iter().filter_map(|(_, t, _)| t.clone()).min();
            match since.filter(|_| pending.len() >= LIST_FROM) {
                Some(since) => match done_since(reader, project, &scope, &since, &mut cost).await {
                    Ok(done) => {
                        for op in &done {
                            self.deliver(scope.clone(), op);
                        }
                        let still = self.tracker.lock();
                        to_get.extend(
                            pending
                                .into_iter()
                                .filter(|(name, _, at)| {
                                    at.elapsed() > overdue
                                        && still.ops.contains_key(&(scope.clone(), name.clone()))
                                })
                                .map(|(name, _, _)| (scope.clone(), name)),
                        );
                    }
                    Err(_) => to_get.extend(
                        pending
                            .into_iter()
                            .map(|(name, _, _)| (scope.clone(), name)),
                    ),
                },
                None => to_get.extend(
                    pending
                        .into_iter()
                        .map(|(name, _, _)| (scope.clone(), name)),
                ),
            }
        }
        if to_get.is_empty() {
            return cost;
        }
        // As bulk work: a round leaves the window's urgent reserve unspent until its release.
        let now = Instant::now();
        let granted =
            reader
                .budget
                .take(RateGroup::OperationRead, "", to_get.len(), Lane::Bulk, now);
        if granted == 0 {
            tokio::time::sleep_until(reader.budget.next_chance(
                RateGroup::OperationRead,
                "",
                Lane::Bulk,
                now,
            ))
            .await;
            reader
                .metrics
                .rate_wait("operation_read", now.elapsed().as_secs_f64());
            return cost;
        }
        to_get.truncate(granted);
        cost += u32::try_from(granted).unwrap_or(u32::MAX);
        let calls: Vec<Call> = to_get
            .iter()
            .map(|(scope, name)| get_call(project, scope, name))
            .collect();
        let answers = reader.exchange(calls).await;
        for ((scope, name), answer) in to_get.into_iter().zip(answers) {
            match answer {
                Ok(answer) => {
                    if let Ok(op) = serde_json::from_slice::<Operation>(&answer.body)
                        && op.is_done()
                    {
                        self.deliver(scope, &op);
                    }
                }
                Err(err) if err.is_rate_limited() => {
                    reader.budget.penalize(
                        RateGroup::OperationRead,
                        "",
                        err.retry_after(),
                        rand::random(),
                        Instant::now(),
                    );
                }
                Err(err) if err.is_not_found() => {
                    // The operation record is gone (deleted or past retention): the caller sees
                    // the error and its reconcile retries against a fresh inventory.
                    if let Some(tracked) = self.tracker.lock().ops.remove(&(scope, name)) {
                        let _ = self.done.send((tracked.dispatch, Err(err)));
                    }
                }
                Err(_) => {}
            }
        }
        cost
    }
}

/// The scope's operations that are DONE and were inserted at or after `since`, by pages.
async fn done_since(
    reader: &Reader,
    project: &str,
    scope: &str,
    since: &str,
    cost: &mut u32,
) -> Result<Vec<Operation>, GcpError> {
    let mut done = Vec::new();
    let mut token: Option<String> = None;
    loop {
        reader
            .budget
            .acquire(RateGroup::OperationRead, "", 1, Lane::Bulk)
            .await;
        *cost += 1;
        let answer = reader
            .client
            .send(&list_done_call(project, scope, since, token.as_deref()))
            .await?;
        let page: ListPage<Operation> = serde_json::from_slice(&answer.body)
            .map_err(|err| GcpError::Decode(format!("operations list: {err}")))?;
        done.extend(page.items.into_iter().filter(Operation::is_done));
        match page.next_page_token {
            Some(next) if !next.is_empty() => token = Some(next),
            _ => return Ok(done),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAST: Duration = Duration::from_millis(500);

    #[test]
    fn nothing_is_polled_before_the_oldest_operation_may_be_done() {
        let t0 = Instant::now();
        let shortest = Some(Duration::from_secs(5));
        // Sent just now: the first poll half a second before it may be DONE.
        assert_eq!(
            next_poll(t0, t0, shortest, FAST, Duration::ZERO),
            t0 + Duration::from_millis(4500)
        );
        // Once it may be DONE: every half second.
        let later = t0 + Duration::from_secs(6);
        assert_eq!(
            next_poll(later, t0, shortest, FAST, Duration::ZERO),
            later + FAST
        );
    }

    #[test]
    fn before_any_operation_is_done_polls_are_fast() {
        let t0 = Instant::now();
        assert_eq!(next_poll(t0, t0, None, FAST, Duration::ZERO), t0 + FAST);
    }

    #[test]
    fn a_costly_poll_spaces_the_next_one_out() {
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(20);
        let spacing = Duration::from_secs(2);
        assert_eq!(
            next_poll(later, t0, Some(Duration::from_secs(5)), FAST, spacing),
            later + spacing
        );
    }
}
