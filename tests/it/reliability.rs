//! Issue 8's reliability suite, on real parts only: kube-apiserver + etcd, gce-emulator as a
//! process, the adc-operator binary. Each scenario runs a fleet of VirtualServices through a
//! fault — GCP errors, operator crashes, a restarted or cut-off API server, a killed leader, a
//! leader cut off from the API server, a spent quota — and then demands the emulator's state equal the desired state exactly: every
//! route and firewall rule the fleet wants, once, and nothing else.
//!
//! `make test` runs the sizes below; `make soak` runs the `soak_*` variants (ignored here):
//! 5,000 objects under GCP faults with the `gcp` latency profile, 15 kills over 3,000 objects, a
//! leader killed under 2,000, a leader cut off under 1,500 and the control-plane faults under
//! 1,500, bounded to ten minutes.
//! Every scenario prints one `reliability |` line (fault, runs, objects, mismatches, time) for
//! the table.

use crate::support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use adc_operator::api::VirtualService;
use adc_testenv::{EmulatorProcess, emulator_binary};
use futures::StreamExt;
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams};
use serde_json::{Value, json};
use support::operator::{
    OperatorSpec, Replicas, condition, emulator_collection, emulator_stats, kill9, lease, tenant,
    try_apply, virtual_service,
};

/// Eight engines over four zones.
const ENGINES: [(&str, &str); 8] = [
    ("se-1", "us-central1-a"),
    ("se-2", "us-central1-b"),
    ("se-3", "us-central1-c"),
    ("se-4", "us-central1-f"),
    ("se-5", "us-central1-a"),
    ("se-6", "us-central1-b"),
    ("se-7", "us-central1-c"),
    ("se-8", "us-central1-f"),
];

/// The emulator's world: the [`ENGINES`] on one network, a ROUTES quota of `routes_quota` and
/// every other quota far above any fleet here.
fn world(routes_quota: u64) -> String {
    let mut world = format!(
        "projects:
  - id: demo-project
    quotas: {{ROUTES: {routes_quota}, STATIC_ROUTES_PER_NETWORK: 100000, FIREWALLS: 100000}}
    networks:
      - name: default
        subnetworks:
          - {{name: default, region: us-central1, ipCidrRange: 10.128.0.0/20}}
    instances:
"
    );
    for (i, (name, zone)) in ENGINES.iter().enumerate() {
        world.push_str(&format!(
            "      - {{name: {name}, zone: {zone}, networkIP: 10.128.0.{}, canIpForward: true}}\n",
            10 + i
        ));
    }
    world
}

/// The emulator's `gcp` profile (docs/compute-api.md §11: latencies, operation durations and
/// rate quotas) at this time scale: operations take 0.25-0.75 s and a rate window lasts 3 s.
const GCP_PROFILE: [&str; 4] = ["--profile", "gcp", "--time-scale", "0.05"];

/// An operator whose budget windows and backoffs match [`GCP_PROFILE`]'s scale.
fn scaled(mut spec: OperatorSpec) -> OperatorSpec {
    spec.args
        .extend(["--gcp-time-scale", GCP_PROFILE[3]].map(String::from));
    spec
}

/// The fault mix of the issue.
const GCP_FAULTS: &str =
    "http500=0.05,http503=0.05,ratelimit=0.05,reset=0.02,opfail=0.02,slow=0.05:2s";

/// A small deterministic generator (xorshift64*): seeded runs repeat exactly.
struct Rng(u64);
impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in [low, high).
    fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low).max(1)
    }
}

fn seed() -> u64 {
    std::env::var("RELIABILITY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8)
}

/// What one VirtualService of a fleet wants: its VIP and its two engines.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Member {
    name: String,
    vip: String,
    engines: [usize; 2],
}

impl Member {
    fn new(i: usize) -> Self {
        Self {
            name: format!("vs-{i:05}"),
            vip: format!("10.40.{}.{}", i / 250, 1 + i % 250),
            engines: [i % ENGINES.len(), (i + 3) % ENGINES.len()],
        }
    }

    fn manifest(&self, cloud: &str) -> Value {
        let engines: Vec<_> = self.engines.iter().map(|&e| ENGINES[e]).collect();
        virtual_service(&self.name, cloud, &self.vip, &engines, "ActiveActive")
    }
}

/// A fleet in one tenant namespace: the members that should exist now.
struct Fleet {
    client: Client,
    ns: String,
    cloud: String,
    members: BTreeMap<String, Member>,
}

impl Fleet {
    /// An empty fleet in a fresh tenant namespace of the control plane of `kubeconfig`, with
    /// a Ready GcpCloud on `emulator_url` (`spec` merged into the cloud's spec).
    async fn new(kubeconfig: &Path, emulator_url: &str, prefix: &str, spec: Value) -> Self {
        let client = support::client_for(kubeconfig).await;
        let (ns, cloud) = tenant(&client, emulator_url, prefix, spec).await;
        Self {
            client,
            ns,
            cloud,
            members: BTreeMap::new(),
        }
    }

    fn api(&self) -> Api<VirtualService> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// Applies members (16 in flight), retrying what the API server refuses for a while (it
    /// may be restarting), and records them as wanted.
    async fn apply(&mut self, members: impl IntoIterator<Item = Member>) {
        let members: Vec<Member> = members.into_iter().collect();
        let (client, ns, cloud) = (&self.client, &self.ns, &self.cloud);
        futures::stream::iter(members.iter())
            .for_each_concurrent(16, |member| async move {
                let manifest = member.manifest(cloud);
                let mut attempts = 0;
                while let Err(err) = try_apply(client, &manifest, Some(ns)).await {
                    attempts += 1;
                    assert!(attempts < 60, "applying {}: {err}", member.name);
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            })
            .await;
        for member in members {
            self.members.insert(member.name.clone(), member);
        }
    }

    /// Deletes members; they are no longer wanted.
    async fn delete(&mut self, names: &[String]) {
        let api = self.api();
        for name in names {
            api.delete(name, &DeleteParams::default()).await.unwrap();
            self.members.remove(name);
        }
    }

    /// Waits until exactly the wanted members exist, each Ready for its current generation;
    /// returns how long that took. Fails after `timeout` naming what is not there yet.
    async fn converge(&self, timeout: Duration) -> Duration {
        let started = Instant::now();
        let mut last_report = Instant::now();
        loop {
            let (ready, pending) = match self.api().list(&ListParams::default()).await {
                Ok(list) => readiness(&list.items, &self.members),
                Err(err) => (0, vec![format!("listing: {err}")]),
            };
            if pending.is_empty() {
                return started.elapsed();
            }
            if started.elapsed() > timeout {
                panic!(
                    "{}/{} Ready after {:?}; not yet: {}",
                    ready,
                    self.members.len(),
                    started.elapsed(),
                    pending
                        .iter()
                        .take(5)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join("; ")
                );
            }
            if last_report.elapsed() > Duration::from_secs(15) {
                eprintln!(
                    "  {}: {ready}/{} Ready after {:.0?}",
                    self.ns,
                    self.members.len(),
                    started.elapsed()
                );
                last_report = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// How many wanted members are Ready now.
    async fn ready_count(&self) -> usize {
        match self.api().list(&ListParams::default()).await {
            Ok(list) => readiness(&list.items, &self.members).0,
            Err(_) => 0,
        }
    }
}

/// (Ready members, a description of everything else: missing, not Ready, unwanted leftovers).
fn readiness(items: &[VirtualService], wanted: &BTreeMap<String, Member>) -> (usize, Vec<String>) {
    let mut ready = 0;
    let mut pending = Vec::new();
    let mut seen = BTreeSet::new();
    for vs in items {
        let name = vs.metadata.name.clone().unwrap_or_default();
        seen.insert(name.clone());
        if !wanted.contains_key(&name) {
            pending.push(format!("{name} still exists"));
            continue;
        }
        let status = serde_json::to_value(&vs.status).unwrap_or_default();
        let current = vs
            .status
            .as_ref()
            .is_some_and(|s| s.observed_generation == vs.metadata.generation);
        match condition(&status, "Ready") {
            Some((s, _, _)) if s == "True" && current => ready += 1,
            other => pending.push(format!("{name}: {other:?}")),
        }
    }
    for name in wanted.keys().filter(|n| !seen.contains(*n)) {
        pending.push(format!("{name} missing"));
    }
    (ready, pending)
}

/// Every difference between the emulator's routes, firewall rules, addresses and forwarding
/// rules and what `members` want: missing, extra, duplicated, wrong next hop or priority, a
/// resource without this cluster's ownership marker.
async fn mismatches(emulator_url: &str, cluster_id: &str, members: &[Member]) -> Vec<String> {
    let mut problems = Vec::new();
    let marker = format!("adc.dev/owner={cluster_id}/");
    let mut want_routes: BTreeMap<String, Vec<(String, u64)>> = BTreeMap::new();
    let mut want_firewalls: BTreeMap<String, usize> = BTreeMap::new();
    for member in members {
        let dest = format!("{}/32", member.vip);
        let mut hops: Vec<_> = member
            .engines
            .iter()
            .map(|&e| (ENGINES[e].0.to_string(), 2000))
            .collect();
        hops.sort();
        want_routes.insert(dest.clone(), hops);
        want_firewalls.insert(dest, 1);
    }

    let mut have_routes: BTreeMap<String, Vec<(String, u64)>> = BTreeMap::new();
    for route in emulator_collection(emulator_url, "routes").await {
        let name = route["name"].as_str().unwrap_or_default();
        if !route["description"]
            .as_str()
            .is_some_and(|d| d.contains(&marker))
        {
            problems.push(format!("route {name} lacks the ownership marker"));
        }
        let hop = route["nextHopInstance"]
            .as_str()
            .unwrap_or_default()
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_string();
        have_routes
            .entry(route["destRange"].as_str().unwrap_or_default().to_string())
            .or_default()
            .push((hop, route["priority"].as_u64().unwrap_or_default()));
    }
    for hops in have_routes.values_mut() {
        hops.sort();
    }
    for (dest, want) in &want_routes {
        match have_routes.get(dest) {
            Some(have) if have == want => {}
            have => problems.push(format!("routes to {dest}: want {want:?}, have {have:?}")),
        }
    }
    for (dest, have) in &have_routes {
        if !want_routes.contains_key(dest) {
            problems.push(format!("extra routes to {dest}: {have:?}"));
        }
    }

    let mut have_firewalls: BTreeMap<String, usize> = BTreeMap::new();
    for firewall in emulator_collection(emulator_url, "firewalls").await {
        let dest = firewall["destinationRanges"][0]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let allowed = &firewall["allowed"];
        if allowed != &json!([{"IPProtocol": "tcp", "ports": ["443"]}]) {
            problems.push(format!("firewall to {dest} allows {allowed}"));
        }
        *have_firewalls.entry(dest).or_default() += 1;
    }
    for (dest, count) in &have_firewalls {
        match want_firewalls.get(dest) {
            Some(1) if *count == 1 => {}
            Some(_) => problems.push(format!("{count} firewall rules to {dest}")),
            None => problems.push(format!("extra firewall rule to {dest}")),
        }
    }
    for dest in want_firewalls.keys() {
        if !have_firewalls.contains_key(dest) {
            problems.push(format!("no firewall rule to {dest}"));
        }
    }
    for collection in ["addresses", "forwardingRules"] {
        let extra = emulator_collection(emulator_url, collection).await;
        if !extra.is_empty() {
            problems.push(format!("{} unexpected {collection}", extra.len()));
        }
    }
    problems
}

/// Waits until the emulator runs no operation and then holds exactly what the fleet wants, for
/// at most `within` (the caller asserts the exact state afterwards).
async fn settle(emulator_url: &str, cluster_id: &str, fleet: &Fleet, within: Duration) {
    let members: Vec<Member> = fleet.members.values().cloned().collect();
    let started = Instant::now();
    while started.elapsed() < within {
        let idle = emulator_stats(emulator_url).await["operationsPending"].as_u64() == Some(0);
        if idle
            && mismatches(emulator_url, cluster_id, &members)
                .await
                .is_empty()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Asserts the exact end state and prints the scenario's line for the table.
async fn assert_exact(
    fault: &str,
    runs: usize,
    emulator_url: &str,
    cluster_id: &str,
    fleet: &Fleet,
    took: Duration,
) {
    let members: Vec<Member> = fleet.members.values().cloned().collect();
    let problems = mismatches(emulator_url, cluster_id, &members).await;
    eprintln!(
        "reliability | {fault} | runs {runs} | objects {} | end-state mismatches {} | converged in {:.1} s",
        members.len(),
        problems.len(),
        took.as_secs_f64()
    );
    assert!(
        problems.is_empty(),
        "{fault}: {} mismatches, first: {:#?}",
        problems.len(),
        &problems[..problems.len().min(10)]
    );
}

/// Compute calls the emulator served, by method (e.g. `compute.routes.insert`).
async fn calls(emulator_url: &str, method: &str) -> u64 {
    emulator_stats(emulator_url).await["callsByMethod"][method]
        .as_u64()
        .unwrap_or(0)
}

/// A control plane of the scenario's own, so that no other test's operator sees (and fights
/// over) its objects, and a runtime to drive it. Started from the test's thread, outside any
/// runtime: its processes die with that thread.
struct Rig {
    plane: adc_testenv::ControlPlane,
    runtime: tokio::runtime::Runtime,
}

impl Rig {
    fn new() -> Self {
        let plane = adc_testenv::ControlPlane::start().expect("control plane");
        support::install_crds_into(&plane.binaries().kubectl, plane.kubeconfig());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        Self { plane, runtime }
    }

    fn kubeconfig(&self) -> std::path::PathBuf {
        self.plane.kubeconfig().to_path_buf()
    }
}

fn start_emulator(args: &[&str]) -> EmulatorProcess {
    start_emulator_in(&world(100_000), args)
}

/// An emulator of `world` with token auth and `args`.
fn start_emulator_in(world: &str, args: &[&str]) -> EmulatorProcess {
    let mut all = vec!["--auth", "token"];
    all.extend_from_slice(args);
    EmulatorProcess::start(&emulator_binary().expect("emulator"), world, &all).expect("emulator")
}

/// A converge deadline that grows with the fleet (two cores, shared with other tests).
fn deadline_for(objects: usize) -> Duration {
    Duration::from_secs(120) + Duration::from_millis(150) * objects as u32
}

// ---------------------------------------------------------------------------------------------
// GCP faults

async fn gcp_faults(kubeconfig: &Path, objects: usize, profile: &[&str], cloud_spec: Value) {
    let seed = seed().to_string();
    let mut args = vec!["--faults", GCP_FAULTS, "--rng-seed", &seed];
    args.extend_from_slice(profile);
    let emulator = start_emulator(&args);
    let cluster = "faults";
    let mut spec = OperatorSpec::new(kubeconfig, &emulator, cluster);
    if profile == GCP_PROFILE {
        spec = scaled(spec);
    }
    let mut operator = spec.start();
    let mut fleet = Fleet::new(kubeconfig, &emulator.base_url, "rel-faults", cloud_spec).await;

    // Watch what objects say while GCP misbehaves: a GCP error must read as one.
    let seen = std::sync::Arc::new(std::sync::Mutex::new(BTreeSet::new()));
    let watcher = tokio::spawn(watch_errors(fleet.api(), std::sync::Arc::clone(&seen)));
    let started = Instant::now();
    fleet.apply((0..objects).map(Member::new)).await;
    fleet.converge(deadline_for(objects)).await;
    let took = started.elapsed();
    assert_exact(
        &format!("GCP faults ({GCP_FAULTS}): rollout"),
        1,
        &emulator.base_url,
        cluster,
        &fleet,
        took,
    )
    .await;

    // A tenth of the fleet goes away under the same faults: nothing of it stays, nothing
    // else is touched.
    let doomed: Vec<String> = fleet.members.keys().step_by(10).cloned().collect();
    let started = Instant::now();
    fleet.delete(&doomed).await;
    fleet.converge(deadline_for(doomed.len())).await;
    assert_exact(
        &format!("GCP faults ({GCP_FAULTS}): delete a tenth"),
        1,
        &emulator.base_url,
        cluster,
        &fleet,
        started.elapsed(),
    )
    .await;

    watcher.abort();
    let seen = seen.lock().unwrap().len();
    eprintln!("  objects seen Ready=False with the GCP error they were retrying: {seen}");
    assert!(
        seen > 0,
        "objects whose work GCP failed say so (Ready=False, reason GcpError) until they heal"
    );
    let stats = emulator_stats(&emulator.base_url).await;
    let requests = stats["httpRequests"].as_u64().unwrap_or(0);
    let resets = stats["connectionResets"].as_u64().unwrap_or(0);
    eprintln!(
        "  faults served: errors {}, connection resets {resets} over {requests} HTTP requests",
        stats["errorsByReason"]
    );
    // Errors are drawn per call (thousands of draws): they must all have been served.
    for reason in ["backendError", "rateLimitExceeded"] {
        assert!(
            stats["errorsByReason"][reason].as_u64().unwrap_or(0) > 0,
            "the {reason} faults were really injected: {stats}"
        );
    }
    // Resets are drawn per HTTP request, and batching keeps those few (200-400 for 2,000
    // objects, where no reset at all has odds of up to 1 in 65): demanded only where their
    // absence would be a 1-in-10,000 event. The engine's handling of lost answers is proven
    // at a high reset rate in tests/it/gcp_engine.rs.
    if requests >= 460 {
        assert!(resets > 0, "the reset faults were really injected: {stats}");
    }
    assert!(
        operator.try_wait().unwrap().is_none(),
        "the operator never exits"
    );
    kill9(&mut operator);
}

/// Every Ready=False message seen that claims a GCP error must carry Google's reason; the
/// objects seen so are collected in `seen`.
async fn watch_errors(
    api: Api<VirtualService>,
    seen: std::sync::Arc<std::sync::Mutex<BTreeSet<String>>>,
) {
    loop {
        if let Ok(list) = api.list(&ListParams::default()).await {
            for vs in list.items {
                let status = serde_json::to_value(&vs.status).unwrap_or_default();
                if let Some((s, reason, message)) = condition(&status, "Ready")
                    && s == "False"
                    && reason == "GcpError"
                {
                    assert!(
                        [
                            "backendError",
                            "INTERNAL_ERROR",
                            "rateLimitExceeded",
                            "transport"
                        ]
                        .iter()
                        .any(|r| message.contains(r))
                            || message.contains("connection"),
                        "a GCP error in status names Google's reason: {message}"
                    );
                    seen.lock()
                        .unwrap()
                        .insert(vs.metadata.name.clone().unwrap_or_default());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[test]
fn gcp_faults_rollout_converges_to_the_exact_state() {
    let objects = std::env::var("RELIABILITY_FAULT_OBJECTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2000);
    // The emulator's instant profile has no rate quotas: the operator's budget must not be
    // what the run measures.
    let rig = Rig::new();
    rig.runtime.block_on(gcp_faults(
        &rig.kubeconfig(),
        objects,
        &[],
        json!({"resyncInterval": "30s", "rateLimit": {"readsPerMinute": 60000,
               "writesPerMinute": 60000, "operationReadsPerMinute": 60000}}),
    ));
}

#[test]
#[ignore = "soak: make soak"]
fn soak_gcp_faults_with_gcp_latencies() {
    // The gcp profile enforces the default quotas, and so does the operator's default budget.
    let rig = Rig::new();
    rig.runtime.block_on(gcp_faults(
        &rig.kubeconfig(),
        5000,
        &GCP_PROFILE,
        json!({"resyncInterval": "30s"}),
    ));
}

// ---------------------------------------------------------------------------------------------
// Operator crashes

async fn operator_crashes(kubeconfig: &Path, objects: usize, kills: usize) {
    // Operations take 0.25-0.75 s: every kill lands with work in flight.
    let emulator = start_emulator(&GCP_PROFILE);
    let cluster = "crashes";
    let spec = scaled(OperatorSpec::new(kubeconfig, &emulator, cluster));
    let mut operator = spec.start();
    // A resync too rare to help: what operations of a killed incarnation make after its
    // successor listed the inventory must be found by the successor's settling refreshes.
    let mut fleet = Fleet::new(
        kubeconfig,
        &emulator.base_url,
        "rel-crash",
        json!({"resyncInterval": "300s"}),
    )
    .await;
    let mut rng = Rng::new(seed());
    let started = Instant::now();
    // The fleet arrives in as many parts as there are kills, so the kills fall all along the
    // rollout rather than after the last apply.
    let part = objects.div_ceil(kills.max(1));
    for kill in 0..kills {
        let from = (kill * part).min(objects);
        fleet
            .apply((from..(from + part).min(objects)).map(Member::new))
            .await;
        tokio::time::sleep(Duration::from_millis(rng.between(100, 1500))).await;
        kill9(&mut operator);
        eprintln!(
            "  kill -9 #{} at {:.1} s, {} Ready",
            kill + 1,
            started.elapsed().as_secs_f64(),
            fleet.ready_count().await
        );
        // While it is down, the fleet changes: some objects move to other engines, some go.
        match kill % 3 {
            0 => {
                let moved: Vec<Member> = fleet
                    .members
                    .values()
                    .filter(|_| rng.between(0, 10) == 0)
                    .map(|m| Member {
                        engines: [(m.engines[0] + 1) % 8, (m.engines[1] + 1) % 8],
                        ..m.clone()
                    })
                    .collect();
                fleet.apply(moved).await;
            }
            1 => {
                let doomed: Vec<String> = fleet
                    .members
                    .keys()
                    .filter(|_| rng.between(0, 20) == 0)
                    .cloned()
                    .collect();
                fleet.delete(&doomed).await;
            }
            _ => {}
        }
        operator = spec.start();
    }
    fleet.converge(deadline_for(objects)).await;
    // Objects deleted while the operator was down have no status to wait for: their resources
    // must be gone soon after the last operations of the killed incarnations finish (at most
    // two settling refreshes later; 45 s is the margin of a loaded CI, not the expectation).
    settle(&emulator.base_url, cluster, &fleet, Duration::from_secs(45)).await;
    assert_exact(
        &format!("operator kill -9 at seeded random points (seed {})", seed()),
        kills,
        &emulator.base_url,
        cluster,
        &fleet,
        started.elapsed(),
    )
    .await;
    kill9(&mut operator);
}

#[test]
fn operator_killed_at_random_points_ends_exact() {
    let rig = Rig::new();
    rig.runtime
        .block_on(operator_crashes(&rig.kubeconfig(), 400, 5));
}

#[test]
#[ignore = "soak: make soak"]
fn soak_operator_killed_at_random_points() {
    let rig = Rig::new();
    rig.runtime
        .block_on(operator_crashes(&rig.kubeconfig(), 3000, 15));
}

// ---------------------------------------------------------------------------------------------
// HA: the leader dies mid-rollout

/// A replica of the HA scenarios: leader election on its own Lease, lease of 6 s.
fn replica(
    kubeconfig: &Path,
    emulator: &EmulatorProcess,
    cluster: &str,
    name: &str,
) -> OperatorSpec {
    scaled(OperatorSpec::new(kubeconfig, emulator, cluster)).leader_elected(name, LEASE, 6)
}

const LEASE: &str = "adc-operator-reliability";

async fn leader_killed(kubeconfig: &Path, objects: usize) {
    let emulator = start_emulator(&GCP_PROFILE);
    let cluster = "ha";
    let replica = |name: &str| replica(kubeconfig, &emulator, cluster, name);
    let replicas = Replicas::start(
        ["replica-a", "replica-b"]
            .iter()
            .map(|name| (name.to_string(), replica(name)))
            .collect(),
        &emulator.base_url,
    );
    let mut fleet = Fleet::new(
        kubeconfig,
        &emulator.base_url,
        "rel-ha",
        json!({"resyncInterval": "20s"}),
    )
    .await;
    let started = Instant::now();
    // Half the fleet, and the kill while its rollout is young; the other half arrives after
    // the kill, for the standby alone.
    fleet.apply((0..objects / 2).map(Member::new)).await;
    while fleet.ready_count().await < objects / 20 {
        assert!(started.elapsed() < deadline_for(objects), "no progress");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let leader = lease(&fleet.client, LEASE)
        .await
        .unwrap()
        .holder_identity
        .unwrap();
    let before = emulator_stats(&emulator.base_url).await;
    let in_flight = before["operationsPending"].as_u64().unwrap_or(0);
    replicas.kill9(&leader);
    let ready_at_kill = fleet.ready_count().await;
    eprintln!(
        "  killed leader {leader} at {:.1} s: {ready_at_kill}/{objects} Ready, {in_flight} operations in flight",
        started.elapsed().as_secs_f64()
    );
    fleet.apply((objects / 2..objects).map(Member::new)).await;
    fleet.converge(deadline_for(objects)).await;
    assert_exact(
        "leader killed mid-rollout (two replicas)",
        1,
        &emulator.base_url,
        cluster,
        &fleet,
        started.elapsed(),
    )
    .await;
    // Duplicated work: inserts beyond one per resource. Only operations in flight when a leader
    // died may be sent again (its successor cannot see a resource that is still being
    // created): at the kill, and at any step-down of a leader that could not renew in time.
    let inserts = calls(&emulator.base_url, "compute.routes.insert").await
        + calls(&emulator.base_url, "compute.firewalls.insert").await;
    let needed = 3 * objects as u64;
    let stepped_down = replicas.in_flight_at_exits();
    eprintln!(
        "  inserts sent {inserts}, resources needed {needed}, in flight at the kill {in_flight}, \
         restarts after a step-down {} ({stepped_down} in flight then)",
        replicas.restarts()
    );
    assert!(
        inserts <= needed + in_flight + stepped_down,
        "{inserts} inserts for {needed} resources: more duplicated than the {} in flight",
        in_flight + stepped_down
    );
}

/// The leader's own connections to kube-apiserver are cut and refused: it can no longer renew
/// its Lease, so it must stop before the Lease lapses and a standby may take it, or two
/// replicas would reconcile at once. The standby then finishes the rollout.
fn cut_off_leader(objects: usize) {
    let Rig { plane, runtime } = Rig::new();
    let server: std::net::SocketAddr = plane
        .server()
        .trim_start_matches("https://")
        .parse()
        .unwrap();
    let proxy = adc_testenv::TcpProxy::start(server).unwrap();
    let via_proxy = plane.dir().join("kubeconfig-via-proxy");
    plane
        .write_kubeconfig_via(&format!("https://{}", proxy.addr()), &via_proxy)
        .unwrap();
    runtime.block_on(async {
        let emulator = start_emulator(&GCP_PROFILE);
        let cluster = "fence";
        let mut cut_off = replica(&via_proxy, &emulator, cluster, "replica-cut-off").start();
        let mut fleet = Fleet::new(
            plane.kubeconfig(),
            &emulator.base_url,
            "rel-fence",
            json!({"resyncInterval": "20s"}),
        )
        .await;
        let started = Instant::now();
        fleet.apply((0..objects / 2).map(Member::new)).await;
        while fleet.ready_count().await < objects / 10 {
            assert!(started.elapsed() < deadline_for(objects), "no progress");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            lease(&fleet.client, LEASE).await.unwrap().holder_identity.as_deref(),
            Some("replica-cut-off")
        );
        // A standby beside it, from now on (started earlier, it might have led first).
        let standby = Replicas::start(
            vec![(
                "replica-standby".into(),
                replica(plane.kubeconfig(), &emulator, cluster, "replica-standby"),
            )],
            &emulator.base_url,
        );
        proxy.set_refusing(true);
        let cut = proxy.cut();
        // The last renewal that landed fixes the lapse; none can land any more.
        let held = lease(&fleet.client, LEASE).await.unwrap();
        let lapse = std::time::SystemTime::from(held.renew_time.unwrap().0)
            + Duration::from_secs(held.lease_duration_seconds.unwrap() as u64);
        let exited = loop {
            if let Some(status) = cut_off.try_wait().unwrap() {
                break (std::time::SystemTime::now(), status);
            }
            assert!(
                std::time::SystemTime::now() < lapse + Duration::from_secs(30),
                "the cut-off leader is still running 30 s after its Lease lapsed"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let Ok(early) = lapse.duration_since(exited.0) else {
            panic!(
                "the cut-off leader exited {:?} after its Lease lapsed: a standby could already lead",
                exited.0.duration_since(lapse).unwrap_or_default()
            )
        };
        eprintln!(
            "  cut {cut} connections; the cut-off leader exited ({}) {early:?} before its Lease lapsed",
            exited.1
        );
        assert_eq!(
            exited.1.code(),
            Some(adc_operator::leader::STEP_DOWN_EXIT_CODE),
            "a step-down exits with its own status"
        );
        fleet.apply((objects / 2..objects).map(Member::new)).await;
        let took = fleet.converge(deadline_for(objects)).await;
        let taken = lease(&fleet.client, LEASE).await.unwrap();
        assert_eq!(taken.holder_identity.as_deref(), Some("replica-standby"));
        let acquired = std::time::SystemTime::from(taken.acquire_time.unwrap().0);
        assert!(
            acquired > exited.0,
            "the standby led from {acquired:?}, before the cut-off leader stopped at {:?}",
            exited.0
        );
        assert_exact(
            "leader cut off from kube-apiserver steps down before its Lease lapses",
            1,
            &emulator.base_url,
            cluster,
            &fleet,
            took,
        )
        .await;
        // Panics if the standby crashed rather than stepped down.
        eprintln!("  standby restarts after a step-down: {}", standby.restarts());
    });
}

#[test]
fn a_leader_cut_off_from_the_api_server_steps_down_before_its_lease_lapses() {
    cut_off_leader(200);
}

#[test]
#[ignore = "soak: make soak"]
fn soak_a_leader_cut_off_from_the_api_server_steps_down_before_its_lease_lapses() {
    cut_off_leader(1500);
}

#[test]
fn the_standby_finishes_a_rollout_when_the_leader_dies() {
    let rig = Rig::new();
    rig.runtime.block_on(leader_killed(&rig.kubeconfig(), 400));
}

#[test]
#[ignore = "soak: make soak"]
fn soak_the_standby_finishes_a_rollout_when_the_leader_dies() {
    let rig = Rig::new();
    rig.runtime.block_on(leader_killed(&rig.kubeconfig(), 2000));
}

// ---------------------------------------------------------------------------------------------
// Control-plane faults: the operator's connection cut, kube-apiserver killed and restarted

/// Runs on the test's own thread, with a control plane of its own: kube-apiserver is restarted
/// from this thread (its processes die with the thread that started them).
fn control_plane_faults(objects: usize) {
    let Rig { mut plane, runtime } = Rig::new();
    let server: std::net::SocketAddr = plane
        .server()
        .trim_start_matches("https://")
        .parse()
        .unwrap();
    // The operator reaches kube-apiserver only through a proxy the test can cut.
    let proxy = adc_testenv::TcpProxy::start(server).unwrap();
    let via_proxy = plane.dir().join("kubeconfig-via-proxy");
    plane
        .write_kubeconfig_via(&format!("https://{}", proxy.addr()), &via_proxy)
        .unwrap();
    let emulator = start_emulator(&GCP_PROFILE);
    let cluster = "control-plane";
    let mut operator = scaled(OperatorSpec::new(&via_proxy, &emulator, cluster)).start();
    let started = Instant::now();
    // A third before the cut, a third between the cut and the restart, a third after it.
    let first = objects / 3;
    let second = objects * 2 / 3;
    let mut fleet = runtime.block_on(async {
        let mut fleet = Fleet::new(
            plane.kubeconfig(),
            &emulator.base_url,
            "rel-cp",
            json!({"resyncInterval": "20s"}),
        )
        .await;
        fleet.apply((0..first).map(Member::new)).await;
        while fleet.ready_count().await < first / 10 {
            assert!(started.elapsed() < deadline_for(objects), "no progress");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        fleet
    });

    // Every connection of the operator cut, and new ones refused for three seconds.
    proxy.set_refusing(true);
    let cut = proxy.cut();
    let ready_at_cut = runtime.block_on(fleet.ready_count());
    std::thread::sleep(Duration::from_secs(3));
    proxy.set_refusing(false);
    eprintln!(
        "  cut {cut} connections of the operator at {:.1} s ({ready_at_cut}/{first} Ready)",
        started.elapsed().as_secs_f64()
    );
    runtime.block_on(async {
        fleet.apply((first..second).map(Member::new)).await;
        while fleet.ready_count().await < second / 2 {
            assert!(
                started.elapsed() < deadline_for(objects),
                "no progress after the cut"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });

    // kube-apiserver killed with SIGKILL and started again on the same port and etcd.
    let restart = Instant::now();
    plane
        .restart_apiserver()
        .expect("restarting kube-apiserver");
    eprintln!(
        "  restarted kube-apiserver at {:.1} s (down {:.1} s)",
        started.elapsed().as_secs_f64(),
        restart.elapsed().as_secs_f64()
    );

    runtime.block_on(async {
        // Objects created after the restart converge only if the operator's watches resumed.
        fleet.apply((second..objects).map(Member::new)).await;
        fleet.converge(deadline_for(objects)).await;
        assert_exact(
            "kube-apiserver restarted and the operator's connections cut mid-rollout",
            1,
            &emulator.base_url,
            cluster,
            &fleet,
            started.elapsed(),
        )
        .await;
        // Nothing done was done again: one insert per resource, no delete.
        let inserts = calls(&emulator.base_url, "compute.routes.insert").await
            + calls(&emulator.base_url, "compute.firewalls.insert").await;
        let deletes = calls(&emulator.base_url, "compute.routes.delete").await
            + calls(&emulator.base_url, "compute.firewalls.delete").await;
        assert_eq!(
            (inserts, deletes),
            (3 * objects as u64, 0),
            "one insert per resource and no delete; the emulator's errors: {}",
            emulator_stats(&emulator.base_url).await["errors"]
        );
    });
    assert!(
        operator.try_wait().unwrap().is_none(),
        "the operator rides out control-plane faults without exiting"
    );
    kill9(&mut operator);
}

#[test]
fn watches_resume_after_an_apiserver_restart_and_a_cut_connection() {
    control_plane_faults(300);
}

#[test]
#[ignore = "soak: make soak"]
fn soak_watches_resume_after_an_apiserver_restart_and_a_cut_connection() {
    control_plane_faults(1500);
}

// ---------------------------------------------------------------------------------------------
// Quota exhaustion: more routes wanted than the ROUTES quota allows

async fn quota_exhaustion(kubeconfig: &Path) {
    const QUOTA: u64 = 40;
    const OBJECTS: usize = 30; // 60 routes wanted
    let emulator = start_emulator_in(&world(QUOTA), &[]);
    let cluster = "quota";
    let mut operator = OperatorSpec::new(kubeconfig, &emulator, cluster).start();
    let mut fleet = Fleet::new(
        kubeconfig,
        &emulator.base_url,
        "rel-quota",
        json!({"resyncInterval": "20s"}),
    )
    .await;
    let started = Instant::now();
    fleet.apply((0..OBJECTS).map(Member::new)).await;

    // The quota fills up; what does not fit is Stalled naming the quota, the rest Ready.
    let (ready, stalled) = loop {
        let list = fleet.api().list(&ListParams::default()).await.unwrap();
        let mut ready = 0;
        let mut stalled = Vec::new();
        for vs in &list.items {
            let status = serde_json::to_value(&vs.status).unwrap_or_default();
            if condition(&status, "Ready").is_some_and(|(s, _, _)| s == "True") {
                ready += 1;
            } else if let Some((s, reason, message)) = condition(&status, "Stalled")
                && s == "True"
            {
                stalled.push((reason, message));
            }
        }
        let routes = emulator_collection(&emulator.base_url, "routes")
            .await
            .len() as u64;
        if ready + stalled.len() == OBJECTS && routes == QUOTA {
            break (ready, stalled);
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "quota not filled and settled: {ready} Ready, {} Stalled, {routes} routes",
            stalled.len()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    eprintln!(
        "  quota {QUOTA} routes for {} wanted: {ready} Ready, {} Stalled, e.g. {:?}",
        2 * OBJECTS,
        stalled.len(),
        stalled.first()
    );
    assert!(ready >= (QUOTA as usize) / 2 - 1 && ready <= QUOTA as usize / 2);
    for (reason, message) in &stalled {
        assert_eq!(reason, "QuotaExceeded");
        assert!(
            message.contains("QUOTA_EXCEEDED") && message.contains("Quota 'ROUTES' exceeded"),
            "the message names the quota: {message}"
        );
    }
    // While the quota is spent the operator does not hammer GCP: over 10 s, at most a few
    // probing inserts.
    let before = calls(&emulator.base_url, "compute.routes.insert").await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let during = calls(&emulator.base_url, "compute.routes.insert").await - before;
    assert!(
        during <= 2,
        "{during} route inserts in 10 s against a spent quota"
    );

    // The quota is raised (a world change): everything converges, exactly.
    let raised = reqwest::Client::new()
        .post(format!("{}/_emulator/quotas", emulator.base_url))
        .json(&json!({"project": support::operator::PROJECT, "quotas": {"ROUTES": 1000}}))
        .send()
        .await
        .unwrap();
    assert!(raised.status().is_success());
    let raised_at = Instant::now();
    fleet.converge(deadline_for(OBJECTS)).await;
    eprintln!(
        "  converged {:.1} s after the quota was raised",
        raised_at.elapsed().as_secs_f64()
    );
    assert_exact(
        "ROUTES quota spent (40 of 60 wanted), then raised",
        1,
        &emulator.base_url,
        cluster,
        &fleet,
        started.elapsed(),
    )
    .await;
    kill9(&mut operator);
}

#[test]
fn a_spent_quota_stalls_the_excess_until_it_is_raised() {
    let rig = Rig::new();
    rig.runtime.block_on(quota_exhaustion(&rig.kubeconfig()));
}
