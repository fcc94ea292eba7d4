//! Operations in flight, polled together. Each round costs operation-read quota, so the tracker
//! picks the cheaper of: one batched `operations.get` per pending operation, or the pages of one
//! filtered `operations.list` (`status != DONE`) plus a get for each operation that left it. The
//! poll interval follows how long operations have been taking.

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

#[derive(Debug)]
struct Tracked {
    dispatch: Dispatch,
    since: Instant,
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

    fn lock(&self) -> std::sync::MutexGuard<'_, TrackerState> {
        match self.state.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    pub(crate) fn track(&self, op: Operation, dispatch: Dispatch) {
        self.lock().ops.insert(
            (op.scope(), op.name),
            Tracked {
                dispatch,
                since: Instant::now(),
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

fn list_call(project: &str, scope: &str, page_token: Option<&str>) -> Call {
    let mut query = vec![
        ("filter".to_string(), "status != DONE".to_string()),
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
        method_name: "compute.operations.list",
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
        let oldest = shared.tracker.lock().ops.values().map(|t| t.since).min();
        // Never poll an operation younger than a quarter of the typical duration.
        let due = oldest.map_or(Instant::now(), |since| since + interval);
        tokio::time::sleep_until(due.max(Instant::now() + floor)).await;
        poll_once(&shared).await;
    }
}

async fn poll_once(shared: &Arc<Shared>) {
    let project = shared.settings.project.clone();
    let mut by_scope: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (scope, name) in shared.tracker.lock().ops.keys() {
        by_scope
            .entry(scope.clone())
            .or_default()
            .push(name.clone());
    }
    let mut to_get: Vec<(String, String)> = Vec::new();
    for (scope, names) in by_scope {
        let pages = names.len().div_ceil(500);
        // A list pays for its pages and then a get per finished operation; gets pay one per
        // pending operation. The list wins when many are pending.
        if names.len() > 2 * pages + 8 {
            match still_running(shared, &project, &scope).await {
                Ok(running) => to_get.extend(
                    names
                        .into_iter()
                        .filter(|n| !running.contains(n))
                        .map(|n| (scope.clone(), n)),
                ),
                Err(_) => to_get.extend(names.into_iter().map(|n| (scope.clone(), n))),
            }
        } else {
            to_get.extend(names.into_iter().map(|n| (scope.clone(), n)));
        }
    }
    if to_get.is_empty() {
        return;
    }
    let granted = shared
        .budget
        .take(RateGroup::OperationRead, "", to_get.len(), false);
    if granted == 0 {
        let wait_from = Instant::now();
        tokio::time::sleep_until(
            shared
                .budget
                .next_chance(RateGroup::OperationRead, "", false),
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
        let op = match answer {
            Ok(answer) => match serde_json::from_slice::<Operation>(&answer.body) {
                Ok(op) => op,
                Err(_) => continue,
            },
            Err(err) if err.is_rate_limited() => {
                shared
                    .budget
                    .penalize(RateGroup::OperationRead, "", err.retry_after());
                continue;
            }
            Err(err) if err.is_not_found() => {
                // The operation record is gone (deleted or past retention): the inventory's next
                // refresh settles it; the caller sees the error and its reconcile retries.
                if let Some(tracked) = shared.tracker.lock().ops.remove(&(scope, name)) {
                    shared.finish(&tracked.dispatch, Err(err));
                }
                continue;
            }
            Err(_) => continue,
        };
        if !op.is_done() {
            continue;
        }
        let tracked = {
            let mut state = shared.tracker.lock();
            let tracked = state.ops.remove(&(scope, name));
            if let Some(tracked) = &tracked {
                let took = tracked.since.elapsed().as_secs_f64();
                state.typical = Some(state.typical.map_or(took, |t| 0.8 * t + 0.2 * took));
            }
            tracked
        };
        if let Some(tracked) = tracked {
            let outcome = op.failure().map_or(Ok(()), Err);
            shared.finish(&tracked.dispatch, outcome);
        }
    }
}

/// Names of the scope's operations that are not DONE, by the pages of one filtered list.
async fn still_running(
    shared: &Arc<Shared>,
    project: &str,
    scope: &str,
) -> Result<std::collections::HashSet<String>, GcpError> {
    let mut running = std::collections::HashSet::new();
    let mut token: Option<String> = None;
    loop {
        shared.budget.acquire(RateGroup::OperationRead, "", 1).await;
        let answer = shared
            .client
            .send(&list_call(project, scope, token.as_deref()))
            .await?;
        let page: ListPage<Operation> = serde_json::from_slice(&answer.body)
            .map_err(|err| GcpError::Decode(format!("operations list: {err}")))?;
        running.extend(
            page.items
                .into_iter()
                .filter(|op| !op.is_done())
                .map(|op| op.name),
        );
        match page.next_page_token {
            Some(next) if !next.is_empty() => token = Some(next),
            _ => return Ok(running),
        }
    }
}
