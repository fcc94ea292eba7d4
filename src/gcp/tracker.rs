//! Operations in flight, polled together. Every poll costs operation-read quota, and at fleet
//! scale the work needs as many operations as writes, so the tracker reads them in bulk: while
//! several are pending in a scope it lists that scope's operations that are DONE since the oldest
//! pending one was inserted (one read per 500 operations, results and errors included), and falls
//! back to batched `operations.get` for a few pending ones or one the list did not show. The poll
//! interval follows how long operations have been taking.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use reqwest::Method;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::budget::RateGroup;
use super::client::Call;
use super::engine::{Dispatch, Shared};
use super::error::GcpError;
use super::types::{ListPage, Operation};

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

/// The tracker's loop: poll, deliver, sleep as long as operations typically take.
pub(crate) async fn run(shared: Arc<Shared>) {
    let initial = shared.settings.scaled(Duration::from_millis(500));
    let floor = Duration::from_millis(5);
    loop {
        if shared.stopped.load(Ordering::Relaxed) {
            return;
        }
        let (pending, typical) = {
            let state = shared.tracker.lock();
            (state.ops.len(), state.typical)
        };
        shared
            .metrics
            .operations_pending
            .set(i64::try_from(pending).unwrap_or(i64::MAX));
        if pending == 0 {
            shared.tracker.wake.notified().await;
            continue;
        }
        let interval = typical
            .map_or(initial, |t| Duration::from_secs_f64(t / 4.0))
            .clamp(
                floor,
                shared.settings.scaled(Duration::from_secs(5)).max(floor),
            );
        tokio::time::sleep(interval).await;
        poll_once(&shared).await;
    }
}

/// Hands a DONE operation's outcome to its caller.
fn deliver(shared: &Arc<Shared>, scope: String, op: &Operation) {
    let tracked = {
        let mut state = shared.tracker.lock();
        let tracked = state.ops.remove(&(scope, op.name.clone()));
        if let Some(tracked) = &tracked {
            let took = tracked.since.elapsed().as_secs_f64();
            state.typical = Some(state.typical.map_or(took, |t| 0.8 * t + 0.2 * took));
        }
        tracked
    };
    if let Some(tracked) = tracked {
        let outcome = op.failure().map_or(Ok(()), Err);
        shared.metrics.operation(&outcome);
        shared.finish(&tracked.dispatch, outcome);
    }
}

async fn poll_once(shared: &Arc<Shared>) {
    let project = shared.settings.project.clone();
    let (by_scope, typical) = {
        let state = shared.tracker.lock();
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
        Duration::from_secs_f64(typical.map_or(30.0 * shared.settings.time_scale, |t| 3.0 * t));
    let mut to_get: Vec<(String, String)> = Vec::new();
    for (scope, pending) in by_scope {
        let since = pending.iter().filter_map(|(_, t, _)| t.clone()).min();
        match since.filter(|_| pending.len() >= LIST_FROM) {
            Some(since) => match done_since(shared, &project, &scope, &since).await {
                Ok(done) => {
                    for op in &done {
                        deliver(shared, scope.clone(), op);
                    }
                    let still = shared.tracker.lock();
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
    let granted = shared
        .budget
        .take(RateGroup::OperationRead, "", to_get.len(), true);
    if granted == 0 {
        let wait_from = Instant::now();
        tokio::time::sleep_until(
            shared
                .budget
                .next_chance(RateGroup::OperationRead, "", true),
        )
        .await;
        shared
            .metrics
            .rate_wait("operation_read", wait_from.elapsed().as_secs_f64());
        return;
    }
    to_get.truncate(granted);
    let calls: Vec<Call> = to_get
        .iter()
        .map(|(scope, name)| get_call(&project, scope, name))
        .collect();
    let answers = shared.client.exchange(shared.transport, calls).await;
    for ((scope, name), answer) in to_get.into_iter().zip(answers) {
        match answer {
            Ok(answer) => {
                if let Ok(op) = serde_json::from_slice::<Operation>(&answer.body)
                    && op.is_done()
                {
                    deliver(shared, scope, &op);
                }
            }
            Err(err) if err.is_rate_limited() => {
                shared
                    .budget
                    .penalize(RateGroup::OperationRead, "", err.retry_after());
            }
            Err(err) if err.is_not_found() => {
                // The operation record is gone (deleted or past retention): the caller sees the
                // error and its reconcile retries against a fresh inventory.
                let tracked = shared.tracker.lock().ops.remove(&(scope, name));
                if let Some(tracked) = tracked {
                    shared.finish(&tracked.dispatch, Err(err));
                }
            }
            Err(_) => {}
        }
    }
}

/// The scope's operations that are DONE and were inserted at or after `since`, by pages.
async fn done_since(
    shared: &Arc<Shared>,
    project: &str,
    scope: &str,
    since: &str,
) -> Result<Vec<Operation>, GcpError> {
    let mut done = Vec::new();
    let mut token: Option<String> = None;
    loop {
        shared.budget.acquire(RateGroup::OperationRead, "", 1).await;
        let answer = shared
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
