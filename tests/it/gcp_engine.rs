//! The GCP engine against the emulator process: every dispatch mode reaches the same end state,
//! batching keeps HTTP requests few, the rate budget keeps a binding write quota unspent by
//! refusals, faults lose and duplicate nothing, resource quotas are reported.

use std::sync::Arc;
use std::time::Duration;

use adc_operator::gcp::{
    Change, Credentials, DispatchMode, Engine, EngineSettings, GcpMetrics, Lane, Mutation,
    RateLimits, Target,
};
use adc_testenv::{EmulatorProcess, emulator_binary};
use serde_json::{Value, json};

const PROJECT: &str = "engine-project";

fn world(routes_quota: u64, rate_limits: &str) -> String {
    format!(
        "projects:
  - id: {PROJECT}
    quotas: {{ROUTES: {routes_quota}, STATIC_ROUTES_PER_NETWORK: {routes_quota}, FIREWALLS: 1000}}
    {rate_limits}
    networks:
      - name: default
        subnetworks:
          - {{name: default, region: us-central1, ipCidrRange: 10.128.0.0/20}}
    instances:
      - {{name: se-1, zone: us-central1-a, networkIP: 10.128.0.10, canIpForward: true}}
"
    )
}

/// Stops or starts (`verb`) an instance through the emulator's Compute API.
async fn power(emulator: &EmulatorProcess, zone: &str, instance: &str, verb: &str) {
    let answer = reqwest::Client::new()
        .post(format!(
            "{}/compute/v1/projects/{PROJECT}/zones/{zone}/instances/{instance}/{verb}",
            emulator.base_url
        ))
        .send()
        .await
        .unwrap();
    assert!(
        answer.status().is_success(),
        "{verb} {instance}: {answer:?}"
    );
}

fn start(world_yaml: &str, args: &[&str]) -> EmulatorProcess {
    let binary = emulator_binary().expect("gce-emulator binary");
    let mut all = vec!["--auth", "none"];
    all.extend_from_slice(args);
    EmulatorProcess::start(&binary, world_yaml, &all).expect("starting gce-emulator")
}

fn engine(
    emulator: &EmulatorProcess,
    dispatch: DispatchMode,
    tune: impl FnOnce(&mut EngineSettings),
) -> (Engine, Arc<GcpMetrics>) {
    let mut settings = EngineSettings::new(PROJECT, &emulator.base_url);
    settings.dispatch = dispatch;
    settings.linger = Duration::from_millis(5);
    settings.rate_limits = RateLimits {
        reads_per_minute: 1_000_000,
        writes_per_minute: 1_000_000,
        operation_reads_per_minute: 1_000_000,
        regional_writes_per_minute: 1_000_000,
        ..RateLimits::default()
    };
    tune(&mut settings);
    let metrics = Arc::new(GcpMetrics::default());
    let engine =
        Engine::start(settings, Credentials::anonymous(), Arc::clone(&metrics)).expect("engine");
    (engine, metrics)
}

fn route(i: usize) -> Mutation {
    let name = format!("adc-r-{i:05}");
    Mutation::insert(
        Target::route(name.clone()),
        json!({
            "name": name,
            "description": "adc.dev/owner=test",
            "network": "global/networks/default",
            "destRange": format!("172.{}.{}.{}/32", 16 + (i >> 16), (i >> 8) & 255, i & 255),
            "priority": 2000,
            "nextHopInstance": "zones/us-central1-a/instances/se-1",
        }),
    )
}

async fn admin(emulator: &EmulatorProcess, path: &str) -> Value {
    adc_testenv::emulator_admin(&emulator.base_url, path)
        .await
        .unwrap()
}

/// The emulator's route table as sorted (name, destRange, nextHopInstance, priority).
async fn route_table(emulator: &EmulatorProcess) -> Vec<(String, String, String, u64)> {
    let state = admin(emulator, "state").await;
    let routes = state["projects"][PROJECT]["resources"]
        [format!("projects/{PROJECT}/global/routes")]
    .as_array()
    .cloned()
    .unwrap_or_default();
    let mut table: Vec<_> = routes
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap().to_string(),
                r["destRange"].as_str().unwrap().to_string(),
                r["nextHopInstance"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                r["priority"].as_u64().unwrap(),
            )
        })
        .collect();
    table.sort();
    table
}

async fn insert_all(engine: &Engine, count: usize) -> Vec<Result<(), adc_operator::gcp::GcpError>> {
    let receivers: Vec<_> = (0..count)
        .map(|i| engine.submit(route(i), Lane::Bulk))
        .collect();
    let mut outcomes = Vec::with_capacity(count);
    for receiver in receivers {
        outcomes.push(
            tokio::time::timeout(Duration::from_secs(300), receiver)
                .await
                .expect("in time")
                .expect("answered"),
        );
    }
    outcomes
}

// One thread: the engine's tasks run only once every route is submitted, so the batches are
// full whatever the machine's load (which calls travel together is the queue's unit tests'
// business; this test is about the transport and the end state).
#[tokio::test]
async fn every_dispatch_mode_reaches_the_same_route_table() {
    const N: usize = 5000;
    let mut tables = Vec::new();
    for (mode, label) in [
        (DispatchMode::Batched, "batched"),
        (DispatchMode::Concurrent, "concurrent"),
        (DispatchMode::PerObject { workers: 10 }, "per-object"),
    ] {
        let emulator = start(&world(100_000, ""), &[]);
        let (engine, _) = engine(&emulator, mode, |s| s.max_calls_per_batch = 500);
        let outcomes = insert_all(&engine, N).await;
        let failed: Vec<_> = outcomes.iter().filter(|o| o.is_err()).collect();
        assert!(
            failed.is_empty(),
            "{label}: {} failed, first {:?}",
            failed.len(),
            failed.first()
        );
        let stats = admin(&emulator, "stats").await;
        assert_eq!(
            stats["callsByMethod"]["compute.routes.insert"], N,
            "{label}: one insert per route"
        );
        if mode == DispatchMode::Batched {
            let requests = stats["httpRequests"].as_u64().unwrap();
            // The probe of the window the engine started in (`PROBE_CALLS` inserts), then the
            // other 4,995 in full batches of 500; the operations were DONE in their answers.
            assert_eq!(requests, 1 + 10, "{label}: HTTP requests");
        }
        tables.push((label, route_table(&emulator).await));
        engine.shutdown();
    }
    assert_eq!(tables[0].1.len(), N);
    for (label, table) in &tables[1..] {
        assert!(table == &tables[0].1, "{label} differs from batched");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binding_write_quota_is_spent_on_needed_writes_only() {
    // 300 writes per (scaled) minute of 0.6 s; 1,500 inserts need five windows.
    const N: usize = 1500;
    let emulator = start(
        &world(
            100_000,
            "rateLimits: {writesPerMinute: 300, readsPerMinute: 100000, operationReadsPerMinute: 100000}",
        ),
        &["--profile", "gcp", "--time-scale", "0.01"],
    );
    let (engine, _) = engine(&emulator, DispatchMode::Batched, |s| {
        s.time_scale = 0.01;
        s.rate_limits.writes_per_minute = 300;
    });
    let outcomes = insert_all(&engine, N).await;
    assert!(
        outcomes.iter().all(Result::is_ok),
        "{:?}",
        outcomes.iter().find(|o| o.is_err())
    );
    let stats = admin(&emulator, "stats").await;
    let attempted = stats["callsByMethod"]["compute.routes.insert"]
        .as_u64()
        .unwrap();
    let limited = stats["rateLimited"].as_u64().unwrap();
    assert!(
        attempted as f64 <= 1.02 * N as f64,
        "attempted {attempted} writes for {N} needed ({limited} rate-limited)"
    );
    assert!(
        limited as f64 <= 0.02 * N as f64,
        "{limited} rateLimitExceeded"
    );
    assert_eq!(route_table(&emulator).await.len(), N);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_lose_and_duplicate_nothing() {
    const N: usize = 1000;
    let emulator = start(
        &world(100_000, ""),
        &[
            "--faults",
            "http500=0.05,http503=0.05,ratelimit=0.05,reset=0.02,opfail=0.02",
            "--rng-seed",
            "7",
        ],
    );
    let (engine, metrics) = engine(&emulator, DispatchMode::Batched, |s| {
        s.max_calls_per_batch = 100;
        s.time_scale = 0.01;
    });
    let outcomes = insert_all(&engine, N).await;
    let failed: Vec<_> = outcomes
        .iter()
        .enumerate()
        .filter(|(_, o)| o.is_err())
        .collect();
    assert!(failed.is_empty(), "every insert converges: {failed:?}");
    // Delete every other route under the same faults.
    let receivers: Vec<_> = (0..N)
        .step_by(2)
        .map(|i| {
            engine.submit(
                Mutation::delete(
                    Target::route(format!("adc-r-{i:05}")),
                    Some("default".into()),
                ),
                Lane::Urgent,
            )
        })
        .collect();
    for receiver in receivers {
        receiver.await.unwrap().expect("delete converges");
    }
    let table = route_table(&emulator).await;
    let expected: Vec<String> = (1..N).step_by(2).map(|i| format!("adc-r-{i:05}")).collect();
    let names: Vec<String> = table.iter().map(|r| r.0.clone()).collect();
    assert_eq!(
        names, expected,
        "exactly the desired routes, no duplicate, none missing"
    );
    assert!(
        metrics.retried("backendError") > 0,
        "the backend errors were retried"
    );
    // The inventory the engine keeps agrees with GCP.
    let snapshot = engine.inventory().snapshot();
    assert_eq!(
        snapshot.routes().keys().cloned().collect::<Vec<_>>(),
        expected
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_quota_failures_are_final_and_reported() {
    let emulator = start(&world(100, ""), &[]);
    let (engine, _) = engine(&emulator, DispatchMode::Batched, |_| {});
    let outcomes = insert_all(&engine, 150).await;
    let ok = outcomes.iter().filter(|o| o.is_ok()).count();
    let quota: Vec<_> = outcomes.iter().filter_map(|o| o.as_ref().err()).collect();
    assert_eq!(ok, 100);
    assert_eq!(quota.len(), 50);
    assert!(
        quota.iter().all(|e| e.is_quota_exceeded()),
        "{:?}",
        quota[0]
    );
    assert!(
        quota[0].to_string().contains("Quota 'ROUTES' exceeded"),
        "{}",
        quota[0]
    );
    let stats = admin(&emulator, "stats").await;
    assert_eq!(
        stats["callsByMethod"]["compute.routes.insert"], 150,
        "a quota error is not retried"
    );
}

// One thread: nothing is sent before the test's first await, so the insert and its delete
// meet unsent in the queue (each step of joining and cancelling is a unit test of the queue;
// this is the engine's wiring of it, with no linger to wait out).
#[tokio::test]
async fn insert_then_delete_before_sending_cancels_both_and_inventory_pages() {
    let emulator = start(&world(100_000, ""), &[]);
    let (engine, _) = engine(&emulator, DispatchMode::Batched, |_| {});
    let insert = engine.submit(route(1), Lane::Bulk);
    let delete = engine.submit(
        Mutation::delete(Target::route("adc-r-00001"), Some("default".into())),
        Lane::Urgent,
    );
    let same = engine.submit(route(2), Lane::Bulk);
    let joined = engine.submit(route(2), Lane::Bulk);
    let inserted = insert.await.unwrap();
    assert!(
        matches!(inserted, Err(adc_operator::gcp::GcpError::Superseded)),
        "{inserted:?}"
    );
    delete.await.unwrap().unwrap();
    same.await.unwrap().unwrap();
    joined.await.unwrap().unwrap();
    let stats = admin(&emulator, "stats").await;
    assert_eq!(
        stats["callsByMethod"]["compute.routes.insert"], 1,
        "the identical insert was sent once"
    );
    assert!(
        stats["callsByMethod"]["compute.routes.delete"].is_null(),
        "the moot delete was never sent"
    );

    // The inventory pages through 1,200 routes in three pages and sees the instance.
    let outcomes = insert_all(&engine, 1200).await;
    assert!(outcomes.iter().all(Result::is_ok));
    let before = admin(&emulator, "stats").await["callsByMethod"]["compute.routes.list"]
        .as_u64()
        .unwrap_or(0);
    engine
        .refresh_inventory(&["us-central1-a".to_string()])
        .await
        .unwrap();
    let snapshot = engine.inventory().snapshot();
    assert_eq!(snapshot.routes().len(), 1200);
    assert!(
        snapshot
            .instance("us-central1-a", "se-1")
            .unwrap()
            .is_running()
    );
    let after = admin(&emulator, "stats").await["callsByMethod"]["compute.routes.list"]
        .as_u64()
        .unwrap();
    assert_eq!(after - before, 3, "1,200 routes in pages of 500");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_a_lost_answer_acts_once() {
    const N: usize = 60;
    let emulator = start(
        &world(100_000, ""),
        // Half the answers lost would exhaust a call's 12 attempts about once in 60 runs.
        &["--faults", "reset=0.3", "--rng-seed", "3"],
    );
    // Small batches: 30-odd HTTP requests, so that fewer than 3 lost answers (the check below)
    // has odds of about 1 in 10,000 rather than the 1 in 10 of 16 requests.
    let (engine, _) = engine(&emulator, DispatchMode::Batched, |s| {
        s.max_calls_per_batch = 2;
        s.time_scale = 0.01;
    });
    let outcomes = insert_all(&engine, N).await;
    assert!(
        outcomes.iter().all(Result::is_ok),
        "{:?}",
        outcomes.iter().find(|o| o.is_err())
    );
    let stats = admin(&emulator, "stats").await;
    assert!(
        stats["connectionResets"].as_u64().unwrap() >= 3,
        "answers were lost: {stats}"
    );
    assert!(
        stats["callsByMethod"]["compute.routes.insert"]
            .as_u64()
            .unwrap()
            > N as u64,
        "and the calls were sent again"
    );
    assert_eq!(
        stats["operationsCreated"], N,
        "yet each route was acted on once: the requestId held"
    );
    assert_eq!(route_table(&emulator).await.len(), N);
}

/// Sends the insert of [`route`] `i` straight to the emulator's API, as another client would.
async fn post_route(
    http: &reqwest::Client,
    emulator: &EmulatorProcess,
    i: usize,
) -> reqwest::Response {
    let Change::Insert(body) = route(i).change else {
        unreachable!("route() is an insert")
    };
    http.post(format!(
        "{}/compute/v1/projects/{PROJECT}/global/routes",
        emulator.base_url
    ))
    .json(&body)
    .send()
    .await
    .unwrap()
}

/// Inserts routes as a former leader would have: straight to the API, their operations left
/// running (the emulator's `gcp` profile must be on).
async fn insert_behind_the_engines_back(
    emulator: &EmulatorProcess,
    routes: std::ops::Range<usize>,
) {
    let http = reqwest::Client::new();
    for i in routes {
        let answer = post_route(&http, emulator, i).await;
        assert!(answer.status().is_success(), "{:?}", answer.text().await);
        let op: Value = answer.json().await.unwrap();
        assert_ne!(
            op["status"], "DONE",
            "the former leader's insert is still running"
        );
    }
}

/// After a restart or a takeover, the inventory cannot list what a former leader's operations
/// are still inserting: the settling refresh counts those operations (and not the engine's
/// own), so that the caller refreshes again until they are done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settling_refresh_counts_the_operations_sent_before_the_engine_started() {
    // Route operations of 2.5-7.5 s.
    let emulator = start(
        &world(1_000, ""),
        &["--profile", "gcp", "--time-scale", "0.5"],
    );
    insert_behind_the_engines_back(&emulator, 0..3).await;
    // Operation times have millisecond resolution: the engine starts strictly after them.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (engine, _) = engine(&emulator, DispatchMode::Batched, |s| s.time_scale = 0.5);
    let own = engine.submit(route(10), Lane::Bulk);
    let zones = ["us-central1-a".to_string()];
    let counted = engine.refresh_inventory_settling(&zones).await.unwrap();
    assert_eq!(
        counted, 3,
        "the former leader's three inserts, not the engine's own"
    );
    assert!(
        engine.inventory().snapshot().routes().is_empty(),
        "nothing of theirs is listed yet"
    );
    own.await.unwrap().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let counted = engine.refresh_inventory_settling(&zones).await.unwrap();
        if counted == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "their operations never finished"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let listed: Vec<String> = engine
        .inventory()
        .snapshot()
        .routes()
        .keys()
        .cloned()
        .collect();
    assert_eq!(
        listed,
        ["adc-r-00000", "adc-r-00001", "adc-r-00002", "adc-r-00010"],
        "once they are done, the refresh lists what they made"
    );
}

/// What a standby meets when it takes over: the former leader's inserts still running. Their
/// names are taken (409) but the routes cannot be read yet (404); the engine retries until the
/// routes are there and counts them as done, never as a refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_insert_meeting_another_ones_operation_in_flight_waits_for_it() {
    const N: usize = 6;
    // Route operations of 2.5-7.5 s: long enough that the engine's inserts meet them running.
    let emulator = start(
        &world(1_000, ""),
        &["--profile", "gcp", "--time-scale", "0.5"],
    );
    insert_behind_the_engines_back(&emulator, 0..N).await;
    let (engine, metrics) = engine(&emulator, DispatchMode::Batched, |s| s.time_scale = 0.5);
    let outcomes = insert_all(&engine, N).await;
    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
    assert!(
        metrics.retried("being_created") >= 1,
        "the engine met routes still being created"
    );
    let stats = admin(&emulator, "stats").await;
    assert_eq!(
        stats["operationsCreated"], N,
        "only the former leader's inserts made anything"
    );
    assert_eq!(route_table(&emulator).await.len(), N);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serialised_network_is_learned_and_kept_busy_without_flooding() {
    let emulator = start(
        &world(100_000, ""),
        &[
            "--profile",
            "gcp",
            "--time-scale",
            "0.002",
            "--network-concurrency",
            "1",
            "--network-busy",
            "refuse",
        ],
    );
    let (engine, _) = engine(&emulator, DispatchMode::Batched, |s| s.time_scale = 0.002);
    let refused = || async {
        admin(&emulator, "stats").await["errorsByReason"]["resourceNotReady"]
            .as_u64()
            .unwrap_or(0)
    };
    // The first wave finds the limit: one runs, the rest of that batch is refused.
    let first: Vec<_> = (0..20)
        .map(|i| engine.submit(route(i), Lane::Bulk))
        .collect();
    for receiver in first {
        receiver.await.unwrap().unwrap();
    }
    let learning = refused().await;
    assert!(learning >= 1, "the network refused at least once");
    // The second wave runs one at a time: only the occasional upward probe is refused.
    let second: Vec<_> = (20..100)
        .map(|i| engine.submit(route(i), Lane::Bulk))
        .collect();
    for receiver in second {
        receiver.await.unwrap().unwrap();
    }
    let later = refused().await - learning;
    eprintln!(
        "serialised network: {learning} refusals while learning, {later} for the next 80 inserts"
    );
    assert!(
        later <= 10,
        "{later} resourceNotReady after the limit was learned"
    );
    assert_eq!(route_table(&emulator).await.len(), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_instance_poll_reads_only_instances_and_sees_a_stop() {
    let emulator = start(&world(1000, ""), &[]);
    let (engine, _) = engine(&emulator, DispatchMode::Batched, |_| {});
    engine.apply(route(0), Lane::Bulk).await.unwrap();
    let zones = ["us-central1-a".to_string()];
    engine.refresh_inventory(&zones).await.unwrap();
    let before = engine.inventory().snapshot();
    let mut events = engine.inventory().subscribe();

    power(&emulator, "us-central1-a", "se-1", "stop").await;
    let calls = |stats: &Value, method: &str| stats["callsByMethod"][method].as_u64().unwrap_or(0);
    let stats_before = admin(&emulator, "stats").await;
    engine.refresh_instances(&zones).await.unwrap();
    let stats_after = admin(&emulator, "stats").await;
    assert_eq!(
        calls(&stats_after, "compute.instances.list")
            - calls(&stats_before, "compute.instances.list"),
        1,
        "one list per zone"
    );
    for other in [
        "routes",
        "firewalls",
        "addresses",
        "forwardingRules",
        "targetInstances",
    ] {
        let method = format!("compute.{other}.list");
        assert_eq!(
            calls(&stats_after, &method),
            calls(&stats_before, &method),
            "{method} is not the poll's business"
        );
    }

    let after = engine.inventory().snapshot();
    let polled = after.instance("us-central1-a", "se-1").unwrap();
    assert!(!polled.is_running(), "{polled:?}");
    // The trimmed answer holds every field an instance is read for: it decodes to what the
    // whole resource decodes to.
    let state = admin(&emulator, "state").await;
    let raw = state["projects"][PROJECT]["resources"]
        [format!("projects/{PROJECT}/zones/us-central1-a/instances")]
    .as_array()
    .unwrap()
    .iter()
    .find(|i| i["name"] == "se-1")
    .cloned()
    .unwrap();
    let whole: adc_operator::gcp::types::Instance = serde_json::from_value(raw).unwrap();
    assert!(
        whole.can_ip_forward && whole.self_link.is_some(),
        "{whole:?}"
    );
    assert_eq!(*polled, whole);
    assert_eq!(
        *before.instance("us-central1-a", "se-1").unwrap(),
        adc_operator::gcp::types::Instance {
            status: "RUNNING".into(),
            ..whole
        }
    );
    assert_eq!(
        after.routes(),
        before.routes(),
        "the routes are left as they were"
    );
    assert_eq!(
        events.try_recv().unwrap(),
        adc_operator::gcp::InventoryEvent::Instance {
            zone: "us-central1-a".into(),
            name: "se-1".into(),
            status: polled.status.clone(),
        }
    );
    assert!(events.try_recv().is_err(), "no Refreshed after a poll");

    engine.shutdown();
    assert!(matches!(
        engine.refresh_instances(&zones).await,
        Err(adc_operator::gcp::GcpError::Shutdown)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_instance_poll_is_one_aggregated_list_for_every_zone() {
    // Engines in three zones and a VM in use by nobody.
    let world = format!(
        "projects:
  - id: {PROJECT}
    networks:
      - name: default
        subnetworks:
          - {{name: default, region: us-central1, ipCidrRange: 10.128.0.0/20}}
    instances:
      - {{name: se-1, zone: us-central1-a, networkIP: 10.128.0.10, canIpForward: true}}
      - {{name: se-2, zone: us-central1-b, networkIP: 10.128.0.11, canIpForward: true}}
      - {{name: se-3, zone: us-central1-c, networkIP: 10.128.0.12, canIpForward: true}}
      - {{name: bystander, zone: us-central1-a, networkIP: 10.128.0.13}}
"
    );
    let emulator = start(&world, &[]);
    let (engine, _) = engine(&emulator, DispatchMode::Batched, |_| {});
    let zones: Vec<String> = ["us-central1-a", "us-central1-b", "us-central1-c"]
        .map(String::from)
        .into();
    engine.refresh_inventory(&zones).await.unwrap();
    let mut events = engine.inventory().subscribe();
    power(&emulator, "us-central1-b", "se-2", "stop").await;

    let calls = |stats: &Value, method: &str| stats["callsByMethod"][method].as_u64().unwrap_or(0);
    let before = admin(&emulator, "stats").await;
    let engines: Vec<String> = ["se-1", "se-2", "se-3"].map(String::from).into();
    engine.poll_instances(&zones, &engines).await.unwrap();
    let after = admin(&emulator, "stats").await;
    let new = |method: &str| calls(&after, method) - calls(&before, method);
    assert_eq!(
        new("compute.instances.aggregatedList"),
        1,
        "one call for three zones"
    );
    assert_eq!(new("compute.instances.list"), 0, "no list per zone");

    let snapshot = engine.inventory().snapshot();
    assert!(
        !snapshot
            .instance("us-central1-b", "se-2")
            .unwrap()
            .is_running()
    );
    assert!(
        snapshot
            .instance("us-central1-a", "se-1")
            .unwrap()
            .is_running()
    );
    assert!(
        snapshot.instance("us-central1-a", "bystander").is_some(),
        "an instance the poll did not ask for stays as the refresh loaded it"
    );
    assert_eq!(
        events.try_recv().unwrap(),
        adc_operator::gcp::InventoryEvent::Instance {
            zone: "us-central1-b".into(),
            name: "se-2".into(),
            status: snapshot
                .instance("us-central1-b", "se-2")
                .unwrap()
                .status
                .clone(),
        }
    );
    assert!(
        events.try_recv().is_err(),
        "only the stopped engine changed"
    );

    // Nothing changed: one call, the list of what is down.
    let before = admin(&emulator, "stats").await;
    engine.poll_instances(&zones, &engines).await.unwrap();
    let after = admin(&emulator, "stats").await;
    assert_eq!(
        calls(&after, "compute.instances.aggregatedList")
            - calls(&before, "compute.instances.aggregatedList"),
        1
    );
    assert!(events.try_recv().is_err(), "nothing changed");

    // se-2 starts again: it leaves the down list, and one read by name confirms it RUNNING.
    power(&emulator, "us-central1-b", "se-2", "start").await;
    let before = admin(&emulator, "stats").await;
    engine.poll_instances(&zones, &engines).await.unwrap();
    let after = admin(&emulator, "stats").await;
    assert_eq!(
        calls(&after, "compute.instances.aggregatedList")
            - calls(&before, "compute.instances.aggregatedList"),
        2,
        "the down list and one confirmation by name"
    );
    let snapshot = engine.inventory().snapshot();
    assert!(
        snapshot
            .instance("us-central1-b", "se-2")
            .unwrap()
            .is_running()
    );
    assert!(matches!(
        events.try_recv().unwrap(),
        adc_operator::gcp::InventoryEvent::Instance { ref name, ref status, .. }
            if name == "se-2" && status == "RUNNING"
    ));
}

/// A resync between whole lists reads the project's operations log, not its routes and rules:
/// a route deleted and one added behind the engine's back, and a rule added, are read back by
/// name, and the inventory ends as Compute has it; a resync with nothing new lists neither.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resync_reads_back_only_what_the_operations_log_names() {
    let emulator = start(&world(100_000, ""), &[]);
    let (engine, _) = engine(&emulator, DispatchMode::Batched, |_| {});
    let zones = ["us-central1-a".to_string()];
    // More than a page of routes: reading two by name is one call, listing whole two.
    let outcomes = insert_all(&engine, 600).await;
    assert!(outcomes.iter().all(Result::is_ok));
    let calls = |stats: &Value, method: &str| stats["callsByMethod"][method].as_u64().unwrap_or(0);
    let first = admin(&emulator, "stats").await;
    engine.refresh_inventory(&zones).await.unwrap();
    let listed = admin(&emulator, "stats").await;
    assert_eq!(
        calls(&listed, "compute.routes.list") - calls(&first, "compute.routes.list"),
        2,
        "the first resync lists whole"
    );

    // Behind the engine's back: one of its routes deleted, a route and a rule with its prefix
    // added, all through Compute (each an operation in the log).
    let http = reqwest::Client::new();
    let base = format!("{}/compute/v1/projects/{PROJECT}/global", emulator.base_url);
    let sent = [
        http.delete(format!("{base}/routes/adc-r-00007")),
        http.post(format!("{base}/routes")).json(&json!({
            "name": "adc-r-by-hand", "network": "global/networks/default",
            "destRange": "172.31.0.1/32", "priority": 1000, "nextHopIp": "10.128.0.10",
        })),
        http.post(format!("{base}/firewalls")).json(&json!({
            "name": "adc-fw-by-hand", "network": "global/networks/default",
            "allowed": [{"IPProtocol": "tcp", "ports": ["443"]}],
            "sourceRanges": ["0.0.0.0/0"],
        })),
    ];
    for request in sent {
        let answer = request.send().await.unwrap();
        assert!(answer.status().is_success(), "{:?}", answer.text().await);
    }
    eventually_quiet(&emulator).await;

    let before = admin(&emulator, "stats").await;
    engine.refresh_inventory(&zones).await.unwrap();
    let after = admin(&emulator, "stats").await;
    let new = |method: &str| calls(&after, method) - calls(&before, method);
    assert_eq!(
        new("compute.globalOperations.list"),
        1,
        "one page of the log"
    );
    assert_eq!(new("compute.routes.list"), 1, "two routes read by name");
    assert_eq!(new("compute.firewalls.list"), 1, "one rule read by name");
    let snapshot = engine.inventory().snapshot();
    let held: Vec<String> = snapshot.routes().keys().cloned().collect();
    let mut table: Vec<String> = route_table(&emulator)
        .await
        .into_iter()
        .map(|r| r.0)
        .collect();
    table.sort();
    assert_eq!(held, table, "the inventory holds the routes Compute has");
    assert_eq!(held.len(), 600);
    assert!(!snapshot.routes().contains_key("adc-r-00007"));
    assert!(snapshot.routes().contains_key("adc-r-by-hand"));
    assert!(snapshot.firewalls().contains_key("adc-fw-by-hand"));

    // Nothing new: the log's page says so, and neither collection is listed.
    let before = admin(&emulator, "stats").await;
    engine.refresh_inventory(&zones).await.unwrap();
    let after = admin(&emulator, "stats").await;
    let new = |method: &str| calls(&after, method) - calls(&before, method);
    assert_eq!(new("compute.globalOperations.list"), 1);
    assert_eq!(new("compute.routes.list"), 0);
    assert_eq!(new("compute.firewalls.list"), 0);
    assert_eq!(engine.inventory().snapshot().routes().len(), 600);
}

/// Waits until the emulator has no operation pending.
async fn eventually_quiet(emulator: &EmulatorProcess) {
    for _ in 0..200 {
        if admin(emulator, "stats").await["operationsPending"].as_u64() == Some(0) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("operations still pending after 10 s");
}

/// A takeover in a window the former holder spent: the new engine's writes probe the window
/// with a few calls, their refusals close it, and the rest goes in the next window instead of
/// being refused too (`Budget::probing_first_window`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_started_in_a_spent_window_probes_it_before_bursting() {
    const QUOTA: u64 = 100;
    const N: usize = 60;
    // Windows of 6 s, aligned to the wall clock like Compute's.
    const SCALE: f64 = 0.1;
    let window_ms: u128 = 6_000;
    let emulator = start(
        &world(
            100_000,
            &format!(
                "rateLimits: {{writesPerMinute: {QUOTA}, readsPerMinute: 100000, operationReadsPerMinute: 100000}}"
            ),
        ),
        &["--profile", "gcp", "--time-scale", &SCALE.to_string()],
    );
    // The former holder's burst, at the start of a window: until the window refuses.
    let unix_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
    };
    let into = unix_ms() % window_ms;
    tokio::time::sleep(Duration::from_millis(
        u64::try_from(window_ms - into).unwrap() + 200,
    ))
    .await;
    let spent_in = unix_ms() / window_ms;
    let http = reqwest::Client::new();
    let mut theirs = 0;
    loop {
        let answer = post_route(&http, &emulator, 1000 + theirs).await;
        if !answer.status().is_success() {
            break;
        }
        theirs += 1;
    }
    assert_eq!(theirs as u64, QUOTA, "the former holder spent the window");
    let before = admin(&emulator, "stats").await;
    let refused_before = before["rateLimited"].as_u64().unwrap();

    let (engine, _) = engine(&emulator, DispatchMode::Batched, |s| {
        s.time_scale = SCALE;
        s.rate_limits.writes_per_minute = QUOTA;
    });
    assert_eq!(
        unix_ms() / window_ms,
        spent_in,
        "the engine starts in the window the former holder spent"
    );
    let outcomes = insert_all(&engine, N).await;
    assert!(
        outcomes.iter().all(Result::is_ok),
        "{:?}",
        outcomes.iter().find(|o| o.is_err())
    );
    let after = admin(&emulator, "stats").await;
    let refused = after["rateLimited"].as_u64().unwrap() - refused_before;
    let attempted = after["callsByMethod"]["compute.routes.insert"]
        .as_u64()
        .unwrap()
        - before["callsByMethod"]["compute.routes.insert"]
            .as_u64()
            .unwrap();
    assert!(
        refused <= adc_operator::gcp::PROBE_CALLS,
        "{refused} of the engine's writes refused (a probe is {})",
        adc_operator::gcp::PROBE_CALLS
    );
    assert_eq!(
        attempted,
        N as u64 + refused,
        "one accepted insert per route"
    );
    assert_eq!(route_table(&emulator).await.len(), N + theirs);
}
