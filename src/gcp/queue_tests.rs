//! The queue's behaviour, step by step: no runtime, no sleeps. Time is an `Instant` the test
//! moves by hand; the budget is anchored a second into a rate window, where bulk work may send.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

use super::*;
use crate::gcp::budget::{Budget, RateLimits};

const WINDOW: Duration = Duration::from_secs(60);
/// Bulk work sends nothing in a window's first and last second.
const GUARD: Duration = Duration::from_secs(1);
const OURS: &str =
    "adc.dev/owner=c1/cloud/VirtualService/team-a/web (managed by adc-operator; do not edit)";

fn settings() -> QueueSettings {
    QueueSettings {
        host_scope: None,
        max_attempts: 4,
        time_scale: 1.0,
        quota_probe: Duration::from_secs(30),
    }
}

#[test]
fn a_shared_vpc_hosts_writes_are_budgeted_apart() {
    let route = Target::route("adc-r");
    let address = Target {
        collection: Collection::Addresses,
        location: "us-central1".into(),
        name: "adc-a".into(),
    };
    let host = Some("projects/net-host".to_string());
    assert_eq!(
        Queue::write_group(&host, &route),
        (RateGroup::Write, "projects/net-host".to_string())
    );
    assert_eq!(
        Queue::write_group(&host, &Target::firewall("adc-f")),
        (RateGroup::Write, "projects/net-host".to_string())
    );
    assert_eq!(
        Queue::write_group(&host, &address),
        (RateGroup::RegionalWrite, "us-central1".to_string()),
        "the service project's own"
    );
    assert_eq!(
        Queue::write_group(&None, &route),
        (RateGroup::Write, String::new())
    );
}

fn queue() -> Queue {
    Queue::new(settings(), 7)
}

fn budget(t0: Instant, writes_per_minute: u64) -> Budget {
    // A tenth kept for urgent work (the figures below follow from it).
    let limits = RateLimits {
        writes_per_minute,
        urgent_reserve: crate::gcp::budget::Reserve::Percent(10),
        ..RateLimits::default()
    };
    Budget::anchored(limits, WINDOW, t0, GUARD.as_millis())
}

fn body(i: usize) -> Value {
    json!({"name": format!("adc-{i}"), "network": "global/networks/vpc",
        "destRange": format!("10.0.0.{i}/32"), "priority": 2000, "description": OURS})
}

fn insert(i: usize) -> Mutation {
    Mutation::insert(Target::route(format!("adc-{i}")), body(i))
}

fn delete(i: usize) -> Mutation {
    Mutation::delete(Target::route(format!("adc-{i}")), Some("vpc".into()))
}

fn nothing(_: &Target) -> Option<Value> {
    None
}

fn api(status: u16, reason: &str) -> GcpError {
    GcpError::Api {
        status,
        reason: reason.into(),
        message: "m".into(),
        retry_after: None,
    }
}

fn operation_error(code: &str) -> GcpError {
    GcpError::Operation {
        code: code.into(),
        message: "m".into(),
        http_status: None,
    }
}

/// The answers among the effects, as (waiters, outcome label).
fn answers(effects: &[Effect]) -> Vec<(Vec<WaiterId>, Result<(), String>)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Answer { waiters, outcome } => {
                Some((waiters.clone(), outcome.clone().map_err(|err| err.label())))
            }
            _ => None,
        })
        .collect()
}

fn applied(effects: &[Effect]) -> Vec<Target> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Apply(m) => Some(m.target.clone()),
            _ => None,
        })
        .collect()
}

fn announced(effects: &[Effect]) -> Vec<Target> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Announce(t) => Some(t.clone()),
            _ => None,
        })
        .collect()
}

fn names(ready: &Ready) -> Vec<&str> {
    ready
        .dispatches
        .iter()
        .map(|d| d.target.name.as_str())
        .collect()
}

#[test]
fn identical_work_is_joined_and_answered_once_done() {
    let t0 = Instant::now();
    let budget = budget(t0, 1500);
    let mut q = queue();
    assert!(
        q.enqueue(insert(1), Lane::Bulk, Waiter::Caller(1), nothing, t0)
            .is_empty()
    );
    assert!(
        q.enqueue(insert(1), Lane::Bulk, Waiter::Caller(2), nothing, t0)
            .is_empty()
    );
    assert_eq!(q.pending(), 1, "joined, not queued twice");
    let ready = q.take_ready(10, &budget, t0);
    assert_eq!(names(&ready), ["adc-1"]);
    // Joining the one in flight.
    q.enqueue(insert(1), Lane::Bulk, Waiter::Caller(3), nothing, t0);
    let effects = q.finish(&ready.dispatches[0], Ok(()), &budget, t0);
    assert_eq!(answers(&effects), [(vec![1, 2, 3], Ok(()))]);
    assert_eq!(applied(&effects), [Target::route("adc-1")]);
    assert_eq!(q.pending(), 0);
    assert!(!q.is_pending(&Target::route("adc-1")));
}

#[test]
fn an_insert_of_what_the_inventory_holds_is_done_at_once() {
    let t0 = Instant::now();
    let mut q = queue();
    let mut held = body(1);
    held["id"] = json!("123");
    held["network"] = json!("https://www.googleapis.com/compute/v1/projects/p/global/networks/vpc");
    let effects = q.enqueue(insert(1), Lane::Bulk, Waiter::Caller(1), |_| Some(held), t0);
    assert_eq!(answers(&effects), [(vec![1], Ok(()))]);
    assert_eq!(q.pending(), 0);
    // Other content is not done: it is queued.
    let mut other = body(1);
    other["priority"] = json!(1000);
    q.enqueue(
        insert(1),
        Lane::Bulk,
        Waiter::Caller(2),
        |_| Some(other),
        t0,
    );
    assert_eq!(q.pending(), 1);
}

#[test]
fn an_unsent_insert_and_its_delete_cancel_but_a_sent_one_is_followed() {
    let t0 = Instant::now();
    let budget = budget(t0, 1500);
    let mut q = queue();
    q.enqueue(insert(1), Lane::Bulk, Waiter::Caller(1), nothing, t0);
    let effects = q.enqueue(delete(1), Lane::Urgent, Waiter::Caller(2), nothing, t0);
    assert_eq!(
        answers(&effects),
        [(vec![1], Err("superseded".to_string())), (vec![2], Ok(()))]
    );
    assert_eq!(q.pending(), 0);
    assert!(q.take_ready(10, &budget, t0).dispatches.is_empty());

    // Once the insert is sent, the delete waits behind it and goes next.
    q.enqueue(insert(2), Lane::Bulk, Waiter::Caller(3), nothing, t0);
    let sent = q.take_ready(10, &budget, t0);
    q.enqueue(delete(2), Lane::Urgent, Waiter::Caller(4), nothing, t0);
    assert_eq!(q.pending(), 2);
    assert!(
        q.take_ready(10, &budget, t0).dispatches.is_empty(),
        "one call per resource in flight"
    );
    let effects = q.finish(&sent.dispatches[0], Ok(()), &budget, t0);
    assert_eq!(answers(&effects), [(vec![3], Ok(()))]);
    let next = q.take_ready(10, &budget, t0);
    assert_eq!(next.dispatches.len(), 1);
    assert!(!next.dispatches[0].mutation.is_insert());
    // A delete of what is already gone is done.
    let effects = q.finish(&next.dispatches[0], Err(api(404, "notFound")), &budget, t0);
    assert_eq!(answers(&effects), [(vec![4], Ok(()))]);
    assert_eq!(applied(&effects), [Target::route("adc-2")]);
}

#[test]
fn urgent_work_goes_first_and_joining_it_promotes_bulk_work() {
    let t0 = Instant::now();
    let budget = budget(t0, 1500);
    let mut q = queue();
    for i in 1..=3 {
        q.enqueue(insert(i), Lane::Bulk, Waiter::Caller(i as u64), nothing, t0);
    }
    q.enqueue(delete(9), Lane::Urgent, Waiter::Caller(9), nothing, t0);
    assert_eq!(names(&q.take_ready(1, &budget, t0)), ["adc-9"]);
    // The same insert asked for urgently: it jumps the bulk line.
    q.enqueue(insert(3), Lane::Urgent, Waiter::Caller(30), nothing, t0);
    assert_eq!(names(&q.take_ready(1, &budget, t0)), ["adc-3"]);
    assert_eq!(names(&q.take_ready(5, &budget, t0)), ["adc-1", "adc-2"]);
    assert_eq!(q.depth(), [(Lane::Urgent, 0), (Lane::Bulk, 0)]);
}

#[test]
fn a_spent_rate_group_waits_for_its_window_and_says_how_long() {
    let t0 = Instant::now();
    let budget = budget(t0, 2);
    let mut q = queue();
    for i in 1..=3 {
        q.enqueue(
            delete(i),
            Lane::Urgent,
            Waiter::Caller(i as u64),
            nothing,
            t0,
        );
    }
    let first = q.take_ready(10, &budget, t0);
    assert_eq!(names(&first), ["adc-1", "adc-2"]);
    let later = t0 - GUARD + WINDOW;
    assert_eq!(first.next, Some(later), "the next window");
    let second = q.take_ready(10, &budget, later);
    assert_eq!(names(&second), ["adc-3"]);
    assert!(matches!(
        second.effects.as_slice(),
        [Effect::RateWaited { group: RateGroup::Write, waited }] if *waited == later - t0
    ));
}

/// Queues `count` bulk inserts numbered from `from`.
fn bulk(q: &mut Queue, from: usize, count: usize, now: Instant) {
    for i in from..from + count {
        q.enqueue(
            insert(i),
            Lane::Bulk,
            Waiter::Caller(i as u64),
            nothing,
            now,
        );
    }
}

/// Takes batches of `max` until nothing more may go at `now`; the sizes of the batches.
fn drain(
    q: &mut Queue,
    max: usize,
    budget: &Budget,
    now: Instant,
) -> (Vec<usize>, Option<Instant>) {
    let mut sizes = Vec::new();
    loop {
        let ready = q.take_ready(max, budget, now);
        if ready.dispatches.is_empty() {
            return (sizes, ready.next);
        }
        sizes.push(ready.dispatches.len());
    }
}

#[test]
fn a_change_that_fits_the_window_goes_at_once_in_full_batches() {
    // Ten seconds into a window: no pacing, the whole change leaves now.
    let t0 = Instant::now();
    let budget = Budget::anchored(RateLimits::default(), WINDOW, t0, 10_000);
    let mut q = queue();
    bulk(&mut q, 0, 1000, t0);
    let (sizes, next) = drain(&mut q, 500, &budget, t0);
    assert_eq!(sizes, [500, 500], "two full batches");
    assert_eq!(next, None, "nothing left waiting");
}

#[test]
fn bulk_work_leaves_the_reserve_to_a_failover_until_the_window_ends() {
    // 1,500 writes a window, a tenth of them kept for urgent work.
    let t0 = Instant::now();
    let budget = budget(t0, 1500);
    let start = t0 - GUARD;
    let mut q = queue();
    bulk(&mut q, 0, 3000, t0);
    let (sizes, next) = drain(&mut q, 500, &budget, t0);
    assert_eq!(
        sizes,
        [500, 500, 350],
        "the window less its reserve, at once"
    );
    let release = start + WINDOW - WINDOW / 30;
    assert_eq!(next, Some(release), "bulk work waits for the release");

    // A failover in the middle of the window: its withdrawals go at once, before any bulk work.
    let mid = start + Duration::from_secs(30);
    for i in 5000..5100 {
        q.enqueue(
            delete(i),
            Lane::Urgent,
            Waiter::Caller(i as u64),
            nothing,
            mid,
        );
    }
    let ready = q.take_ready(500, &budget, mid);
    assert_eq!(ready.dispatches.len(), 100);
    assert!(ready.dispatches.iter().all(|d| !d.mutation.is_insert()));
    assert_eq!(ready.next, Some(release));

    // At the release bulk work spends what the failover left, and no more.
    let (sizes, next) = drain(&mut q, 500, &budget, release);
    assert_eq!(sizes, [50]);
    let next_window = start + WINDOW + GUARD;
    assert_eq!(
        next,
        Some(next_window),
        "then a second into the next window"
    );

    // The next window: another burst up to the reserve.
    let (sizes, _) = drain(&mut q, 500, &budget, next_window);
    assert_eq!(sizes.iter().sum::<usize>(), 1350);
}

#[test]
fn a_rate_limit_refusal_still_closes_the_group_for_bulk_and_urgent_work() {
    let t0 = Instant::now();
    let budget = budget(t0, 1500);
    let start = t0 - GUARD;
    let mut q = queue();
    bulk(&mut q, 0, 10, t0);
    let sent = q.take_ready(500, &budget, t0).dispatches;
    assert_eq!(sent.len(), 10);
    // Someone else spent the window: most of our calls come back refused.
    for dispatch in &sent[..5] {
        q.finish(dispatch, Err(api(403, "rateLimitExceeded")), &budget, t0);
    }
    q.enqueue(delete(99), Lane::Urgent, Waiter::Caller(99), nothing, t0);
    for at in [
        t0,
        start + WINDOW / 2,
        start + WINDOW - Duration::from_millis(1),
    ] {
        let ready = q.take_ready(500, &budget, at);
        assert!(ready.dispatches.is_empty(), "closed for urgent work too");
    }
    // The next window (plus at most 2 % of jitter): the urgent delete first, then the refused
    // inserts again.
    let ready = q.take_ready(500, &budget, start + WINDOW + WINDOW / 50);
    assert_eq!(names(&ready)[0], "adc-99");
    assert_eq!(ready.dispatches.len(), 6);
}

#[test]
fn retries_keep_the_request_id_until_an_operation_failed() {
    let t0 = Instant::now();
    let budget = budget(t0, 1500);
    let mut q = queue();
    q.enqueue(insert(1), Lane::Urgent, Waiter::Caller(1), nothing, t0);
    let first = q.take_ready(10, &budget, t0).dispatches.remove(0);

    // A lost answer: retried with the same requestId, so GCP acts once.
    let effects = q.finish(
        &first,
        Err(GcpError::Transport("reset".into())),
        &budget,
        t0,
    );
    assert!(answers(&effects).is_empty(), "nobody is answered yet");
    assert!(matches!(
        effects[0],
        Effect::Retried(GcpError::Transport(_))
    ));
    assert_eq!(
        announced(&effects),
        [Target::route("adc-1")],
        "shown while retried"
    );
    assert!(q.retrying(&Target::route("adc-1")).is_some());
    let waiting = q.take_ready(10, &budget, t0);
    assert!(waiting.dispatches.is_empty());
    let due = waiting.next.expect("a retry time");
    // attempt 1: between half and all of 0.5 s.
    assert!(due >= t0 + Duration::from_millis(250) && due <= t0 + Duration::from_millis(500));
    let second = q.take_ready(10, &budget, due).dispatches.remove(0);
    assert_eq!(second.request_id, first.request_id);

    // An operation that failed retryably answers its id forever: the next try gets a new one.
    let effects = q.finish(
        &second,
        Err(operation_error("INTERNAL_ERROR")),
        &budget,
        due,
    );
    assert!(
        announced(&effects).is_empty(),
        "announced once per retry spell"
    );
    let due = q.take_ready(10, &budget, due).next.expect("a retry time");
    let third = q.take_ready(10, &budget, due).dispatches.remove(0);
    assert_ne!(third.request_id, first.request_id);
    let effects = q.finish(&third, Ok(()), &budget, due);
    assert_eq!(answers(&effects), [(vec![1], Ok(()))]);
    assert!(q.retrying(&Target::route("adc-1")).is_none());
    assert_eq!(
        announced(&effects),
        [Target::route("adc-1")],
        "the end of the spell is shown too"
    );
}

#[test]
fn retries_run_out_and_final_errors_are_not_retried() {
    let t0 = Instant::now();
    let budget = budget(t0, 1500);
    let mut q = queue();
    q.enqueue(insert(1), Lane::Urgent, Waiter::Caller(1), nothing, t0);
    let mut now = t0;
    let mut sent = 0;
    let effects = loop {
        let ready = q.take_ready(10, &budget, now);
        let Some(dispatch) = ready.dispatches.first() else {
            now = ready.next.expect("a retry time");
            continue;
        };
        sent += 1;
        let effects = q.finish(dispatch, Err(api(503, "backendError")), &budget, now);
        if !answers(&effects).is_empty() || sent > 10 {
            break effects;
        }
    };
    assert_eq!(sent, settings().max_attempts);
    assert_eq!(
        answers(&effects),
        [(vec![1], Err("backendError".to_string()))]
    );
    assert!(matches!(
        &effects.last(),
        Some(Effect::Answer {
            outcome: Err(GcpError::Exhausted { attempts: 4, .. }),
            ..
        })
    ));

    q.enqueue(insert(2), Lane::Urgent, Waiter::Caller(2), nothing, now);
    let dispatch = q.take_ready(10, &budget, now).dispatches.remove(0);
    let effects = q.finish(&dispatch, Err(api(400, "invalid")), &budget, now);
    assert_eq!(answers(&effects), [(vec![2], Err("invalid".to_string()))]);
    assert_eq!(q.pending(), 0);
}

#[test]
fn a_taken_name_is_verified_and_only_our_own_counts_as_done() {
    let t0 = Instant::now();
    let budget = budget(t0, 1500);
    let mut q = queue();
    q.enqueue(insert(1), Lane::Urgent, Waiter::Caller(1), nothing, t0);
    let dispatch = q.take_ready(10, &budget, t0).dispatches.remove(0);
    let effects = q.finish(&dispatch, Err(api(409, "alreadyExists")), &budget, t0);
    let [Effect::Verify(verify)] = effects.as_slice() else {
        panic!("{effects:?}");
    };
    assert_eq!(verify, &dispatch);
    // Not readable yet: an operation in flight creates it, so it is retried.
    let effects = q.settle(
        &dispatch,
        Err(GcpError::BeingCreated(dispatch.target.to_string())),
        &budget,
        t0,
    );
    assert!(matches!(
        effects[0],
        Effect::Retried(GcpError::BeingCreated(_))
    ));
    let due = q.take_ready(10, &budget, t0).next.expect("a retry time");
    let again = q.take_ready(10, &budget, due).dispatches.remove(0);
    assert_eq!(again.request_id, dispatch.request_id);
    // Readable now, ours and the same: done.
    let mut actual = body(1);
    actual["id"] = json!("5");
    let verdict = match &again.mutation.change {
        Change::Insert(desired) => judge_existing(&again.target, desired, &actual),
        Change::Delete | Change::Patch(_) | Change::AddInstances(_) => panic!("an insert"),
    };
    let effects = q.settle(&again, verdict, &budget, due);
    assert_eq!(answers(&effects), [(vec![1], Ok(()))]);
    assert_eq!(applied(&effects), [Target::route("adc-1")]);
}

#[test]
fn someone_elses_resource_fails_the_insert_and_cancels_the_deletes_behind_it() {
    let t0 = Instant::now();
    let budget = budget(t0, 1500);
    let mut q = queue();
    q.enqueue(insert(1), Lane::Urgent, Waiter::Caller(1), nothing, t0);
    let dispatch = q.take_ready(10, &budget, t0).dispatches.remove(0);
    q.enqueue(delete(1), Lane::Urgent, Waiter::Caller(2), nothing, t0);
    let verdict = judge_existing(
        &dispatch.target,
        &body(1),
        &json!({"name": "adc-1", "description": "made by hand"}),
    );
    let effects = q.settle(&dispatch, verdict, &budget, t0);
    assert_eq!(
        answers(&effects),
        [(vec![2], Ok(())), (vec![1], Err("not_owned".to_string()))]
    );
    assert_eq!(q.pending(), 0, "the delete is never sent");
}

#[test]
fn a_spent_resource_quota_answers_at_once_and_probes_until_room_again() {
    let t0 = Instant::now();
    let budget = budget(t0, 1500);
    let mut q = queue();
    // Two begun inserts (nobody waits); the first meets QUOTA_EXCEEDED.
    let (new, _) = q.begin(insert(1), Lane::Bulk, nothing, t0);
    assert!(new);
    let dispatch = q.take_ready(10, &budget, t0).dispatches.remove(0);
    let effects = q.finish(
        &dispatch,
        Err(operation_error("QUOTA_EXCEEDED")),
        &budget,
        t0,
    );
    assert_eq!(announced(&effects), [Target::route("adc-1")]);
    assert!(
        q.failure(&Target::route("adc-1"))
            .is_some_and(|f| f.error.is_quota_exceeded())
    );
    // The gate is closed: the next insert is refused without a call.
    let effects = q.enqueue(insert(2), Lane::Bulk, Waiter::Caller(2), nothing, t0);
    assert_eq!(
        answers(&effects),
        [(vec![2], Err("QUOTA_EXCEEDED".to_string()))]
    );
    let (_, effects) = q.begin(insert(3), Lane::Bulk, nothing, t0);
    assert_eq!(announced(&effects), [Target::route("adc-3")]);
    assert_eq!(q.pending(), 0);
    // After the probe interval one insert goes through as a probe; its success reopens the
    // gate and the refused objects are told.
    let later = t0 + settings().quota_probe;
    q.enqueue(insert(4), Lane::Bulk, Waiter::Caller(4), nothing, later);
    let probe = q.take_ready(10, &budget, later).dispatches.remove(0);
    let effects = q.enqueue(insert(5), Lane::Bulk, Waiter::Caller(5), nothing, later);
    assert_eq!(
        answers(&effects),
        [(vec![5], Err("QUOTA_EXCEEDED".to_string()))],
        "one probe at a time"
    );
    let effects = q.finish(&probe, Ok(()), &budget, later);
    assert!(effects.iter().any(|e| matches!(
        e,
        Effect::QuotaReopened {
            collection: Collection::Routes,
            waiting: 2,
            ..
        }
    )));
    let mut told = announced(&effects);
    told.sort();
    assert_eq!(told, [Target::route("adc-1"), Target::route("adc-3")]);
    assert!(q.failure(&Target::route("adc-1")).is_none());
}

#[test]
fn begin_reports_joins_and_a_new_begin_clears_the_last_failure() {
    let t0 = Instant::now();
    let budget = budget(t0, 1500);
    let mut q = queue();
    assert!(q.begin(insert(1), Lane::Bulk, nothing, t0).0);
    assert!(!q.begin(insert(1), Lane::Bulk, nothing, t0).0, "joined");
    let dispatch = q.take_ready(10, &budget, t0).dispatches.remove(0);
    let effects = q.finish(&dispatch, Err(api(400, "invalid")), &budget, t0);
    assert!(answers(&effects).is_empty(), "nobody waits on begun work");
    assert!(q.failure(&Target::route("adc-1")).is_some());
    q.begin(insert(1), Lane::Bulk, nothing, t0);
    assert!(q.failure(&Target::route("adc-1")).is_none());
    assert_eq!(
        q.pending_inserts(Collection::Routes, "adc-"),
        [Target::route("adc-1")]
    );
}

#[test]
fn a_network_that_is_not_ready_gets_no_more_than_it_ran() {
    let t0 = Instant::now();
    let budget = budget(t0, 1500);
    let mut q = queue();
    for i in 1..=3 {
        q.enqueue(
            insert(i),
            Lane::Urgent,
            Waiter::Caller(i as u64),
            nothing,
            t0,
        );
    }
    let sent = q.take_ready(10, &budget, t0).dispatches;
    assert_eq!(sent.len(), 3, "no limit known yet");
    // Two of three in flight when the network refused: it runs two.
    q.finish(&sent[0], Err(api(400, "resourceNotReady")), &budget, t0);
    q.finish(&sent[1], Ok(()), &budget, t0);
    q.finish(&sent[2], Ok(()), &budget, t0);
    let later = t0 + Duration::from_millis(100);
    for i in 4..=6 {
        q.enqueue(
            insert(i),
            Lane::Urgent,
            Waiter::Caller(i as u64),
            nothing,
            later,
        );
    }
    let ready = q.take_ready(10, &budget, later);
    assert_eq!(ready.dispatches.len(), 2, "{:?}", names(&ready));
    // A slot that frees lets the next one go.
    q.finish(&ready.dispatches[0], Ok(()), &budget, later);
    assert_eq!(q.take_ready(10, &budget, later).dispatches.len(), 1);
}

#[test]
fn a_network_at_its_limit_releases_held_work_by_room_urgent_first() {
    let t0 = Instant::now();
    let budget = budget(t0, 1500);
    let mut q = queue();
    for i in 1..=2 {
        q.enqueue(insert(i), Lane::Bulk, Waiter::Caller(i as u64), nothing, t0);
    }
    let sent = q.take_ready(10, &budget, t0).dispatches;
    // The network refuses the second: it runs one at a time from now on.
    q.finish(&sent[1], Err(api(400, "resourceNotReady")), &budget, t0);
    let later = t0 + Duration::from_millis(100);
    // Forty bulk inserts, then one urgent delete, all held behind the one in flight.
    for i in 10..50 {
        q.enqueue(
            insert(i),
            Lane::Bulk,
            Waiter::Caller(i as u64),
            nothing,
            later,
        );
    }
    assert!(q.take_ready(10, &budget, later).dispatches.is_empty());
    q.enqueue(delete(99), Lane::Urgent, Waiter::Caller(99), nothing, later);
    assert!(q.take_ready(10, &budget, later).dispatches.is_empty());
    let held: usize = q.depth().iter().map(|(_, n)| n).sum();
    assert!(
        held >= 41,
        "held work still counts in the depth gauges: {held}"
    );
    // The slot frees: one target goes back to its lane, and it is the urgent one.
    q.finish(&sent[0], Ok(()), &budget, later);
    let ready = q.take_ready(10, &budget, later);
    assert_eq!(names(&ready), ["adc-99"]);
    q.finish(&ready.dispatches[0], Ok(()), &budget, later);
    let ready = q.take_ready(10, &budget, later);
    assert_eq!(ready.dispatches.len(), 1, "{:?}", names(&ready));
}

#[test]
fn queued_work_keeps_its_body_as_text_and_sends_it_whole() {
    let t0 = Instant::now();
    let budget = budget(t0, 1500);
    let mut q = queue();
    // The same insert twice joins one piece of work; a different body does not.
    q.enqueue(insert(1), Lane::Bulk, Waiter::Caller(1), nothing, t0);
    q.enqueue(insert(1), Lane::Bulk, Waiter::Caller(2), nothing, t0);
    assert_eq!(q.pending(), 1, "an identical insert joins the queued one");
    let mut other = insert(1);
    if let Change::Insert(body) = &mut other.change {
        body["priority"] = json!(1);
    }
    q.enqueue(other, Lane::Bulk, Waiter::Caller(3), nothing, t0);
    assert_eq!(q.pending(), 2, "another body is other work");
    let sent = q.take_ready(10, &budget, t0).dispatches;
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].mutation, insert(1), "sent whole, as it was queued");
}

#[test]
fn shutdown_hands_back_every_waiter() {
    let t0 = Instant::now();
    let mut q = queue();
    q.enqueue(insert(1), Lane::Bulk, Waiter::Caller(1), nothing, t0);
    q.enqueue(insert(1), Lane::Bulk, Waiter::Caller(2), nothing, t0);
    q.enqueue(delete(2), Lane::Urgent, Waiter::Caller(3), nothing, t0);
    let mut waiters = q.shutdown();
    waiters.sort();
    assert_eq!(waiters, [1, 2, 3]);
    assert_eq!(q.pending(), 0);
}

#[test]
fn the_same_seed_replays_the_same_request_ids() {
    let t0 = Instant::now();
    let run = || {
        let budget = budget(t0, 1500);
        let mut q = queue();
        q.enqueue(insert(1), Lane::Bulk, Waiter::Caller(1), nothing, t0);
        q.take_ready(10, &budget, t0)
            .dispatches
            .remove(0)
            .request_id
    };
    assert_eq!(run(), run());
}

#[test]
fn backoff_grows_is_capped_and_scaled() {
    assert_eq!(backoff(0, 1.0, 1.0), Duration::from_millis(250));
    assert_eq!(backoff(1, 1.0, 0.0), Duration::from_millis(250));
    assert_eq!(backoff(20, 1.0, 1.0), Duration::from_secs(32));
    assert_eq!(backoff(20, 0.5, 1.0), Duration::from_secs(16));
}

#[test]
fn only_our_own_marker_adopts_an_existing_resource() {
    fn route(description: Option<&str>) -> Value {
        let mut body = json!({"name": "adc-1", "network": "global/networks/default",
            "destRange": "10.10.0.5/32", "priority": 2000,
            "nextHopInstance": "projects/p/zones/z/instances/se-1"});
        if let Some(description) = description {
            body["description"] = json!(description);
        }
        body
    }
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

#[test]
fn withheld_work_is_never_sent_and_what_runs_finishes() {
    let t0 = Instant::now();
    let budget = budget(t0, 1500);
    let mut q = queue();
    q.enqueue(insert(1), Lane::Bulk, Waiter::Caller(1), nothing, t0);
    let sent = q.take_ready(1, &budget, t0);
    assert_eq!(names(&sent), ["adc-1"]);
    // Behind the insert in flight, its delete; and two more inserts not sent yet.
    q.enqueue(delete(1), Lane::Urgent, Waiter::Caller(2), nothing, t0);
    q.enqueue(insert(2), Lane::Bulk, Waiter::Caller(3), nothing, t0);
    q.enqueue(insert(3), Lane::Bulk, Waiter::Caller(4), nothing, t0);
    let (dropped, effects) = q.withhold(|t| t.name != "adc-3");
    assert_eq!(
        dropped, 2,
        "the delete behind adc-1 and the insert of adc-2"
    );
    assert_eq!(
        answers(&effects),
        [
            (vec![2], Err("superseded".to_string())),
            (vec![3], Err("superseded".to_string()))
        ]
    );
    // Only the unpicked target is sent; the one in flight settles as usual.
    assert_eq!(names(&q.take_ready(10, &budget, t0)), ["adc-3"]);
    let effects = q.finish(&sent.dispatches[0], Ok(()), &budget, t0);
    assert_eq!(answers(&effects), [(vec![1], Ok(()))]);
    assert_eq!(q.pending(), 1, "adc-3 in flight");
    assert!(q.take_ready(10, &budget, t0).dispatches.is_empty());
}

#[test]
fn a_lane_stalled_on_a_spent_group_is_not_looked_at_again_until_something_may_go() {
    // 100 writes a window, 10 kept for urgent work: 90 bulk writes go, the rest wait.
    let t0 = Instant::now();
    let budget = budget(t0, 100);
    let start = t0 - GUARD;
    let release = start + WINDOW - WINDOW / 30;
    let mut q = queue();
    bulk(&mut q, 0, 200, t0);
    let (sizes, next) = drain(&mut q, 500, &budget, t0);
    assert_eq!(sizes, [90]);
    assert_eq!(next, Some(release));
    assert_eq!(
        q.bulk.stalled(t0),
        Some(release),
        "the look found only the spent group"
    );
    // Work of the spent group put at the back of a long lane changes nothing: a look stops 64
    // deep. The lane stays stalled and says when to look again.
    bulk(&mut q, 200, 5, t0);
    let later = t0 + Duration::from_secs(5);
    let ready = q.take_ready(500, &budget, later);
    assert!(ready.dispatches.is_empty());
    assert_eq!(ready.next, Some(release));
    assert_eq!(q.bulk.stalled(later), Some(release));

    // Urgent work is its own lane: it goes at once.
    q.enqueue(
        delete(900),
        Lane::Urgent,
        Waiter::Caller(900),
        nothing,
        later,
    );
    assert_eq!(names(&q.take_ready(500, &budget, later)), ["adc-900"]);

    // At the release the stall is over and bulk work spends what is left of the window.
    assert_eq!(q.bulk.stalled(release), None);
    let (sizes, _) = drain(&mut q, 500, &budget, release);
    assert_eq!(sizes, [9], "the reserve less the urgent delete");
}

#[test]
fn a_short_stalled_lane_looks_again_when_another_groups_work_arrives() {
    let t0 = Instant::now();
    let budget = budget(t0, 100);
    let mut q = queue();
    bulk(&mut q, 0, 100, t0);
    let (sizes, _) = drain(&mut q, 500, &budget, t0);
    assert_eq!(sizes, [90]);
    assert!(
        q.bulk.stalled(t0).is_some(),
        "10 routes wait for the window"
    );
    // A regional write is another rate group: in a lane shorter than a look, it is looked at
    // and goes, past the routes that still wait.
    let address = Mutation::insert(
        Target {
            collection: Collection::Addresses,
            location: "us-central1".into(),
            name: "adc-a".into(),
        },
        json!({"name": "adc-a", "description": OURS}),
    );
    q.enqueue(address, Lane::Bulk, Waiter::Caller(1000), nothing, t0);
    assert_eq!(
        q.bulk.stalled(t0),
        None,
        "something new within a look's reach"
    );
    assert_eq!(names(&q.take_ready(500, &budget, t0)), ["adc-a"]);
    assert!(q.bulk.stalled(t0).is_some(), "the routes still wait");

    // A retry put back at the front of the lane ends the stall as well.
    q.bulk.push_front(Target::route("adc-95"));
    assert_eq!(q.bulk.stalled(t0), None);
}

#[test]
fn an_objects_global_work_is_found_by_its_name_prefix() {
    let t0 = Instant::now();
    let mut q = queue();
    assert!(!q.has_global_work("adc-1"));
    q.enqueue(insert(12), Lane::Bulk, Waiter::Caller(1), nothing, t0);
    let rule = Mutation::insert(
        Target::firewall("adc-3-f"),
        json!({"name": "adc-3-f", "description": OURS}),
    );
    q.enqueue(rule, Lane::Bulk, Waiter::Caller(2), nothing, t0);
    assert!(q.has_global_work("adc-1"), "a route");
    assert!(q.has_global_work("adc-3-"), "a firewall rule");
    assert!(!q.has_global_work("adc-2"), "nothing of adc-2");
    assert!(
        !q.has_global_work("adc-13"),
        "a name that only shares a shorter prefix"
    );
    // Sent and done: nothing left.
    let budget = budget(t0, 1500);
    for dispatch in q.take_ready(10, &budget, t0).dispatches {
        q.finish(&dispatch, Ok(()), &budget, t0);
    }
    assert!(!q.has_global_work("adc-1"));
    assert!(!q.has_global_work("adc-3-"));
}
