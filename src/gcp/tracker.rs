//! Operations in flight, polled together. Every poll costs operation-read quota, and at fleet
//! scale the work needs as many operations as writes, so the tracker reads them in bulk: while
//! several are pending in a scope it lists that scope's operations that are DONE since the oldest
//! pending one was inserted (one read per 500 operations, results and errors included), and falls
//! back to batched `operations.get` for a few pending ones or one the list did not show. The poll
//! interval follows how long operations have been taking. It reads through the engine's one
//! read path ([`Reader`]) and hands each DONE operation's outcome back through a channel.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

use super::budget::RateGroup;
use super::client::Call;
use super::error::GcpError;
use super::queue::Dispatch;
use super::reader::Reader;
use super::types::{ListPage, Operation};

/// A sent mutation's outcome, once its operation is DONE (or cannot be read any more).
pub type Outcome = (Dispatch, Result<(), GcpError>);

/// Below this many pending operations in a scope, individual gets cost no more than a list.
const LIST_FROM: usize = 4;

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

    pub(crate) fn track(&self, op: Operation, dispatch: Dispatch) {
        let insert_time = op.insert_time.clone();
        self.lock().ops.insert(
            (op.scope(), op.name),
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
            let took = tracked.since.elapsed().as_secs_f64();
            state.typical = Some(state.typical.map_or(took, |t| 0.8 * t + 0.2 * took));
        }
        tracked
    }

    /// Operations being waited for.
    pub fn pending(&self) -> usize {
        self.lock().ops.len()
    }
}

fn get_call(project: &str, scope: &str, name: &str) -> Call {
    let method_name = if scope.starts_with("zones/") {
        "compute.zoneOperations.get"
    } else if scope.starts_with("regions/") {
        "compute.regionOperations.get"
    } else {
        "compute.globalOperations.get"
    };
    Call {
        method: Method::GET,
        path: format!("projects/{project}/{scope}/operations/{name}"),
        query: Vec::new(),
        body: None,
        group: RateGroup::OperationRead,
        method_name,
    }
}

fn list_done_call(project: &str, scope: &str, since: &str, page_token: Option<&str>) -> Call {
    let method_name = if scope.starts_with("zones/") {
        "compute.zoneOperations.list"
    } else if scope.starts_with("regions/") {
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
        path: format!("projects/{project}/{scope}/operations"),
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
    /// The tracker's loop: poll, deliver, sleep as long as operations typically take.
    pub(crate) async fn run(self) {
        let initial = self.reader.scaled(Duration::from_millis(500));
        let floor = Duration::from_millis(5);
        loop {
            if self.reader.is_stopped() || self.done.is_closed() {
                return;
            }
            let (pending, typical) = {
                let state = self.tracker.lock();
                (state.ops.len(), state.typical)
            };
            self.reader
                .metrics
                .operations_pending
                .set(i64::try_from(pending).unwrap_or(i64::MAX));
            if pending == 0 {
                self.tracker.wake.notified().await;
                continue;
            }
            let interval = typical
                .map_or(initial, |t| Duration::from_secs_f64(t / 4.0))
                .clamp(floor, self.reader.scaled(Duration::from_secs(5)).max(floor));
            tokio::time::sleep(interval).await;
            self.poll_once().await;
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

    async fn poll_once(&self) {
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
        for (scope, pending) in by_scope {
            let since = pending.iter().filter_map(|(_, t, _)| t.clone()).min();
            match since.filter(|_| pending.len() >= LIST_FROM) {
                Some(since) => match done_since(reader, project, &scope, &since).await {
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
            return;
        }
        // Paced: a round never takes a whole window's budget at once, so no window of GCP's
        // receives more than its quota even when the round straddles a boundary.
        let now = Instant::now();
        let granted = reader
            .budget
            .take(RateGroup::OperationRead, "", to_get.len(), true, now);
        if granted == 0 {
            tokio::time::sleep_until(reader.budget.next_chance(
                RateGroup::OperationRead,
                "",
                true,
                now,
            ))
            .await;
            reader
                .metrics
                .rate_wait("operation_read", now.elapsed().as_secs_f64());
            return;
        }
        to_get.truncate(granted);
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
    }
}

/// The scope's operations that are DONE and were inserted at or after `since`, by pages.
async fn done_since(
    reader: &Reader,
    project: &str,
    scope: &str,
    since: &str,
) -> Result<Vec<Operation>, GcpError> {
    let mut done = Vec::new();
    let mut token: Option<String> = None;
    loop {
        reader.budget.acquire(RateGroup::OperationRead, "", 1).await;
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
