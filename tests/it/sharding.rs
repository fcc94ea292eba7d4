//! Sharding by cloud (issue 18) on real parts only: kube-apiserver + etcd of the test's own (a
//! sharded replica takes every GcpCloud it sees), gce-emulator with three projects as a
//! process, and three `adc-operator run --sharding` replicas, one of them reaching the API
//! server only through a proxy the test can cut.
//!
//! One scenario, in four acts, each checked against the emulator's exact state:
//! 1. six clouds over three projects spread two per replica, every object converges;
//! 2. the proxied replica is cut off from the API server: it stops writing for its clouds
//!    before their Leases lapse (its per-cloud fence; the process keeps running), and the other
//!    two take them over;
//! 3. one of those is killed with SIGKILL mid-rollout: the last one takes every cloud, and
//!    inserts sent stay within the resources needed plus the operations in flight at the cut
//!    and the kill;
//! 4. both come back: clouds are handed back until each replica holds two, without a write.

use crate::support;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Child;
use std::time::{Duration, Instant, SystemTime};

use adc_operator::api::{GcpCloud, VirtualService};
use adc_testenv::{EmulatorProcess, emulator_binary};
use k8s_openapi::api::coordination::v1::Lease;
use kube::Client;
use kube::api::{Api, ListParams};
use serde_json::Value;
use support::operator::{
    OperatorSpec, apply, cloud_manifest, condition, emulator_collection, emulator_stats, kill9,
    label_tenant, virtual_service,
};

const LEASE: &str = "adc-shard";
const LEASE_SECONDS: u64 = 6;
const CLUSTER: &str = "shards";
const PROJECTS: [&str; 3] = ["shard-proj-a", "shard-proj-b", "shard-proj-c"];
const CLOUDS: usize = 6;
const REPLICAS: [&str; 3] = ["replica-a", "replica-b", "replica-c"];

/// Three projects, each with its network and two engines.
fn world() -> String {
    let mut world = String::from("projects:\n");
    for project in PROJECTS {
        world.push_str(&format!(
            "  - id: {project}
    quotas: {{ROUTES: 10000, STATIC_ROUTES_PER_NETWORK: 10000, FIREWALLS: 10000}}
    networks:
      - name: default
        subnetworks:
          - {{name: default, region: us-central1, ipCidrRange: 10.128.0.0/20}}
    instances:
      - {{name: se-1, zone: us-central1-a, networkIP: 10.128.0.10, canIpForward: true}}
      - {{name: se-2, zone: us-central1-b, networkIP: 10.128.0.11, canIpForward: true}}
"
        ));
    }
    world
}

fn cloud_name(i: usize) -> String {
    format!("shard-{i}")
}

fn project_of(cloud: usize) -> &'static str {
    PROJECTS[cloud % PROJECTS.len()]
}

/// One VirtualService: cloud `cloud`, number `n`, two routes and a firewall rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Object {
    cloud: usize,
    n: usize,
}

impl Object {
    fn name(self) -> String {
        format!("c{}-vs-{:03}", self.cloud, self.n)
    }
    fn vip(self) -> String {
        format!("10.60.{}.{}", self.cloud, self.n + 1)
    }
    fn manifest(self) -> Value {
        virtual_service(
            &self.name(),
            &cloud_name(self.cloud),
            &self.vip(),
            &[("se-1", "us-central1-a"), ("se-2", "us-central1-b")],
            "ActiveActive",
        )
    }
}

/// The project a resource's network URL names.
fn project_in(url: &str) -> String {
    url.split("/projects/")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_default()
        .to_string()
}

/// Every difference between the emulator and what `objects` want: per project, two routes
/// (se-1, se-2 at 2000) and one firewall rule per VIP, each with the marker of its cloud; and
/// nothing else.
async fn mismatches(emulator_url: &str, objects: &BTreeSet<Object>) -> Vec<String> {
    let mut want: BTreeMap<(String, String), (String, Vec<String>)> = BTreeMap::new();
    for object in objects {
        want.insert(
            (
                project_of(object.cloud).to_string(),
                format!("{}/32", object.vip()),
            ),
            (
                format!("adc.dev/owner={CLUSTER}/{}/", cloud_name(object.cloud)),
                vec!["se-1".into(), "se-2".into()],
            ),
        );
    }
    let mut problems = Vec::new();
    let mut routes: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for route in emulator_collection(emulator_url, "routes").await {
        let key = (
            project_in(route["network"].as_str().unwrap_or_default()),
            route["destRange"].as_str().unwrap_or_default().to_string(),
        );
        let description = route["description"].as_str().unwrap_or_default();
        match want.get(&key) {
            Some((marker, _)) if description.contains(marker.as_str()) => {}
            _ => problems.push(format!("route {} {key:?}: {description}", route["name"])),
        }
        if route["priority"].as_u64() != Some(2000) {
            problems.push(format!("route {} at {}", route["name"], route["priority"]));
        }
        let hop = route["nextHopInstance"].as_str().unwrap_or_default();
        routes
            .entry(key)
            .or_default()
            .push(hop.rsplit('/').next().unwrap_or_default().to_string());
    }
    let mut firewalls: BTreeMap<(String, String), usize> = BTreeMap::new();
    for rule in emulator_collection(emulator_url, "firewalls").await {
        let key = (
            project_in(rule["network"].as_str().unwrap_or_default()),
            rule["destinationRanges"][0]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
        let description = rule["description"].as_str().unwrap_or_default();
        match want.get(&key) {
            Some((marker, _)) if description.contains(marker.as_str()) => {}
            _ => problems.push(format!("firewall {} {key:?}: {description}", rule["name"])),
        }
        *firewalls.entry(key).or_default() += 1;
    }
    for (key, (_, hops)) in &want {
        let mut have = routes.get(key).cloned().unwrap_or_default();
        have.sort();
        if &have != hops {
            problems.push(format!("routes to {key:?}: want {hops:?}, have {have:?}"));
        }
        if firewalls.get(key) != Some(&1) {
            problems.push(format!(
                "firewall rules to {key:?}: {:?}",
                firewalls.get(key)
            ));
        }
    }
    problems
}

/// Inserts, deletes and patches the emulator served.
async fn writes(emulator_url: &str) -> (u64, u64) {
    let stats = emulator_stats(emulator_url).await;
    let count = |suffix: &str| {
        stats["callsByMethod"]
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(method, _)| method.ends_with(suffix))
            .map(|(_, n)| n.as_u64().unwrap_or(0))
            .sum::<u64>()
    };
    (
        count(".insert"),
        count(".insert") + count(".delete") + count(".patch"),
    )
}

/// A replica's own metric (summed over its label sets), from its /metrics.
async fn metric(port: u16, name: &str, filter: impl Fn(&str) -> bool) -> Option<f64> {
    let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    Some(
        text.lines()
            .filter(|l| l.starts_with(name) && (l[name.len()..].starts_with(['{', ' '])))
            .filter(|l| filter(l))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum(),
    )
}

async fn write_calls(port: u16) -> Option<f64> {
    metric(port, "adc_operator_gcp_calls_total", |l| {
        [".insert\"", ".delete\"", ".patch\""]
            .iter()
            .any(|m| l.contains(m))
    })
    .await
}

/// Waits until every replica's store keeps whole exactly the VirtualServices of the clouds it
/// holds and only stubs of the others (`adc_operator_stored_objects`), and says what each keeps.
async fn stores_follow_holders(
    ports: &[u16],
    holders: &BTreeMap<String, String>,
    objects: &BTreeSet<Object>,
    within: Duration,
) -> Vec<(f64, f64)> {
    let deadline = Instant::now() + within;
    loop {
        let mut seen = Vec::new();
        let mut wrong = Vec::new();
        for (i, port) in ports.iter().enumerate() {
            let form = |form: &'static str| {
                move |l: &str| {
                    l.contains("kind=\"VirtualService\"") && l.contains(&format!("form=\"{form}\""))
                }
            };
            let whole = metric(*port, "adc_operator_stored_objects", form("whole")).await;
            let stubs = metric(*port, "adc_operator_stored_objects", form("stub")).await;
            let own = objects
                .iter()
                .filter(|o| {
                    holders.get(&cloud_name(o.cloud)).map(String::as_str) == Some(REPLICAS[i])
                })
                .count() as f64;
            let expected = (own, objects.len() as f64 - own);
            let got = (whole.unwrap_or(-1.0), stubs.unwrap_or(-1.0));
            if got != expected {
                wrong.push(format!(
                    "{}: (whole, stubs) {got:?}, expected {expected:?}",
                    REPLICAS[i]
                ));
            }
            seen.push(got);
        }
        if wrong.is_empty() {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "the stores do not follow the clouds held: {wrong:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Each cloud's Lease holder (live Leases only).
async fn holders(client: &Client) -> BTreeMap<String, String> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "default");
    let now = SystemTime::now();
    let mut held = BTreeMap::new();
    for lease in leases.list(&ListParams::default()).await.unwrap().items {
        let name = lease.metadata.name.unwrap_or_default();
        let Some(cloud) = name.strip_prefix(&format!("{LEASE}-cloud-")) else {
            continue;
        };
        let Some(spec) = lease.spec else { continue };
        let (Some(holder), Some(renewed), Some(seconds)) = (
            spec.holder_identity,
            spec.renew_time,
            spec.lease_duration_seconds,
        ) else {
            continue;
        };
        if SystemTime::from(renewed.0) + Duration::from_secs(seconds as u64) > now {
            held.insert(cloud.to_string(), holder);
        }
    }
    held
}

/// When each of `holder`'s clouds' Leases lapses, by their last renewal.
async fn lapses_of(client: &Client, holder: &str) -> Vec<SystemTime> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "default");
    leases
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|l| {
            l.metadata
                .name
                .as_deref()
                .is_some_and(|n| n.starts_with(&format!("{LEASE}-cloud-")))
        })
        .filter_map(|l| l.spec)
        .filter(|s| s.holder_identity.as_deref() == Some(holder))
        .filter_map(|s| {
            Some(
                SystemTime::from(s.renew_time?.0)
                    + Duration::from_secs(s.lease_duration_seconds? as u64),
            )
        })
        .collect()
}

/// Clouds per holder.
fn counts(holders: &BTreeMap<String, String>) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for holder in holders.values() {
        *counts.entry(holder.clone()).or_default() += 1;
    }
    counts
}

/// Samples every 100 ms, until stopped, the engines each VIP of `watched` reaches by
/// Compute's route selection (from the emulator's routes, every project): a shard move must
/// never take a converged VIP off its two engines. Returns the samples taken and what differed.
fn sample_reachability(
    emulator_url: String,
    watched: std::sync::Arc<std::sync::Mutex<BTreeSet<Object>>>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<(usize, Vec<String>)> {
    tokio::spawn(async move {
        let want: BTreeSet<String> = ["se-1".to_string(), "se-2".to_string()].into();
        let (mut samples, mut problems) = (0, Vec::new());
        while !*stop.borrow() {
            let routes = emulator_collection(&emulator_url, "routes").await;
            let objects = watched.lock().unwrap().clone();
            for object in objects {
                let vip = object.vip().parse().unwrap();
                let reached = support::operator::effective(&routes, vip);
                if reached != want && problems.len() < 20 {
                    problems.push(format!(
                        "sample {samples}: {} reaches {reached:?}",
                        object.vip()
                    ));
                }
            }
            samples += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        (samples, problems)
    })
}

struct Scene<'a> {
    client: Client,
    emulator: &'a EmulatorProcess,
    namespace: String,
    objects: BTreeSet<Object>,
}

impl Scene<'_> {
    async fn apply(&mut self, objects: impl IntoIterator<Item = Object>) {
        for object in objects {
            apply(&self.client, object.manifest(), Some(&self.namespace)).await;
            self.objects.insert(object);
        }
    }

    /// (Ready objects, the first few that are not).
    async fn readiness(&self) -> (usize, Vec<String>) {
        let api: Api<VirtualService> = Api::namespaced(self.client.clone(), &self.namespace);
        let items = api.list(&ListParams::default()).await.unwrap().items;
        let mut ready = 0;
        let mut pending = Vec::new();
        for vs in &items {
            let status = serde_json::to_value(&vs.status).unwrap_or_default();
            let current = vs
                .status
                .as_ref()
                .is_some_and(|s| s.observed_generation == vs.metadata.generation);
            match condition(&status, "Ready") {
                Some((s, _, _)) if s == "True" && current => ready += 1,
                other => pending.push(format!(
                    "{}: {other:?}",
                    vs.metadata.name.clone().unwrap_or_default()
                )),
            }
        }
        if items.len() < self.objects.len() {
            pending.push(format!("{} of {} exist", items.len(), self.objects.len()));
        }
        (ready, pending)
    }

    /// Waits until every object is Ready and the emulator, idle, holds exactly what they want.
    async fn converge(&self, what: &str, within: Duration) {
        let started = Instant::now();
        loop {
            let (ready, pending) = self.readiness().await;
            let idle = emulator_stats(&self.emulator.base_url).await["operationsPending"].as_u64()
                == Some(0);
            if pending.is_empty() && idle {
                let problems = mismatches(&self.emulator.base_url, &self.objects).await;
                if problems.is_empty() {
                    eprintln!(
                        "sharding | {what} | objects {} | end-state mismatches 0 | converged in {:.1} s",
                        self.objects.len(),
                        started.elapsed().as_secs_f64()
                    );
                    return;
                }
                assert!(
                    started.elapsed() < within,
                    "{what}: {} mismatches, first: {:#?}",
                    problems.len(),
                    &problems[..problems.len().min(8)]
                );
            }
            assert!(
                started.elapsed() < within,
                "{what}: {ready}/{} Ready after {:?}; not yet: {:?}",
                self.objects.len(),
                started.elapsed(),
                &pending[..pending.len().min(5)]
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Waits until every cloud is held, by the replicas `among` only, at most `most` each, and
    /// each cloud's `status.holder` names its Lease's holder; returns the holders.
    async fn spread(
        &self,
        among: &[&str],
        most: usize,
        within: Duration,
    ) -> BTreeMap<String, String> {
        let started = Instant::now();
        loop {
            let held = holders(&self.client).await;
            let clouds: Api<GcpCloud> = Api::all(self.client.clone());
            let statuses: BTreeMap<String, Option<String>> = clouds
                .list(&ListParams::default())
                .await
                .unwrap()
                .items
                .into_iter()
                .map(|c| {
                    (
                        c.metadata.name.clone().unwrap_or_default(),
                        c.status.and_then(|s| s.holder),
                    )
                })
                .collect();
            let counts = counts(&held);
            let done = held.len() == CLOUDS
                && held.values().all(|h| among.contains(&h.as_str()))
                && counts.values().all(|n| *n <= most)
                && held
                    .iter()
                    .all(|(cloud, holder)| statuses.get(cloud) == Some(&Some(holder.clone())));
            if done {
                return held;
            }
            assert!(
                started.elapsed() < within,
                "clouds not spread over {among:?} (at most {most} each) after {:?}: leases {held:?}, status.holder {statuses:?}",
                started.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[test]
fn clouds_spread_over_replicas_move_when_one_is_cut_off_or_killed_and_come_back() {
    let plane = adc_testenv::ControlPlane::start().expect("control plane");
    support::install_crds_into(&plane.binaries().kubectl, plane.kubeconfig());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let server: std::net::SocketAddr = plane
        .server()
        .trim_start_matches("https://")
        .parse()
        .unwrap();
    // replica-c reaches kube-apiserver only through a proxy the test can cut.
    let proxy = adc_testenv::TcpProxy::start(server).unwrap();
    let via_proxy = plane.dir().join("kubeconfig-via-proxy");
    plane
        .write_kubeconfig_via(&format!("https://{}", proxy.addr()), &via_proxy)
        .unwrap();
    runtime.block_on(async {
        let emulator = EmulatorProcess::start(
            &emulator_binary().expect("emulator"),
            &world(),
            &["--auth", "token", "--profile", "gcp", "--time-scale", "0.05"],
        )
        .expect("emulator");
        let client = support::client_for(plane.kubeconfig()).await;
        let ports: Vec<u16> = REPLICAS
            .iter()
            .map(|_| adc_testenv::free_port().unwrap())
            .collect();
        let spec = |i: usize| {
            let kubeconfig = if i == 2 { &via_proxy } else { plane.kubeconfig() };
            let mut spec = OperatorSpec::new(kubeconfig, &emulator, CLUSTER).metrics_port(ports[i]);
            spec.args.extend(
                [
                    "--gcp-time-scale",
                    "0.05",
                    "--sharding",
                    "--lease-namespace",
                    "default",
                    "--lease-name",
                    LEASE,
                    "--lease-duration",
                    &LEASE_SECONDS.to_string(),
                ]
                .map(String::from),
            );
            spec.env.push(("POD_NAME".into(), REPLICAS[i].into()));
            spec
        };
        let mut children: Vec<Option<Child>> = (0..3).map(|i| Some(spec(i).start())).collect();

        let namespace = support::test_namespace(&client, "shards").await;
        label_tenant(&client, &namespace).await;
        for i in 0..CLOUDS {
            let manifest = cloud_manifest(
                &cloud_name(i),
                &emulator.base_url,
                &serde_json::json!({"project": project_of(i), "resyncInterval": "20s"}),
            );
            apply(&client, manifest, None).await;
        }
        let mut scene = Scene {
            client: client.clone(),
            emulator: &emulator,
            namespace,
            objects: BTreeSet::new(),
        };
        let url = scene.emulator.base_url.clone();

        // Act 1: six clouds, two per replica; everything converges.
        scene
            .apply((0..CLOUDS).flat_map(|cloud| (0..8).map(move |n| Object { cloud, n })))
            .await;
        let held = scene
            .spread(&REPLICAS, 2, Duration::from_secs(90))
            .await;
        eprintln!("  act 1: clouds held {held:?}");
        scene.converge("three replicas, six clouds over three projects", Duration::from_secs(120)).await;
        let counts1 = counts(&holders(&client).await);
        assert_eq!(counts1.len(), 3, "every replica holds clouds: {counts1:?}");
        assert!(counts1.values().all(|n| *n == 2), "two clouds each: {counts1:?}");
        // Each replica keeps whole only its own clouds' objects.
        let stored = stores_follow_holders(&ports, &holders(&client).await, &scene.objects, Duration::from_secs(30)).await;
        eprintln!("  act 1: (whole, stub) VirtualServices per replica {stored:?}");

        // From here on every converged VIP is sampled while clouds move between replicas.
        let watched = std::sync::Arc::new(std::sync::Mutex::new(scene.objects.clone()));
        let (stop_sampling, stop) = tokio::sync::watch::channel(false);
        let sampler = sample_reachability(url.clone(), std::sync::Arc::clone(&watched), stop);

        // Act 2: replica-c is cut off from kube-apiserver while its clouds have work.
        let c_clouds: Vec<usize> = (0..CLOUDS)
            .filter(|i| held.get(&cloud_name(*i)).map(String::as_str) == Some(REPLICAS[2]))
            .collect();
        scene
            .apply(c_clouds.iter().flat_map(|&cloud| (8..20).map(move |n| Object { cloud, n })))
            .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        proxy.set_refusing(true);
        let cut = proxy.cut();
        let in_flight_at_cut = emulator_stats(&url).await["operationsPending"]
            .as_u64()
            .unwrap_or(0);
        // No renewal of replica-c can land any more: its Leases' lapses are fixed.
        let mut lapses = lapses_of(&client, REPLICAS[2]).await;
        lapses.sort();
        assert!(!lapses.is_empty(), "replica-c holds clouds");
        // Each cloud is judged by its own Lease: the k-th cloud dropped (the gauge going down
        // by one) must go before the k-th lapse.
        let mut drops: Vec<SystemTime> = Vec::new();
        while drops.len() < lapses.len() {
            let held = metric(ports[2], "adc_operator_clouds_held", |_| true).await;
            if let Some(held) = held {
                let now = SystemTime::now();
                while drops.len() < lapses.len().saturating_sub(held as usize) {
                    drops.push(now);
                }
            }
            assert!(
                SystemTime::now() < lapses[lapses.len() - 1] + Duration::from_secs(20),
                "replica-c still holds {held:?} clouds 20 s after its Leases lapsed"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let writes_at_drop = write_calls(ports[2]).await.expect("replica-c's metrics");
        let mut early = Vec::new();
        for (k, (dropped, lapse)) in drops.iter().zip(&lapses).enumerate() {
            match lapse.duration_since(*dropped) {
                Ok(before) => early.push(before),
                Err(_) => panic!(
                    "replica-c let go of its cloud #{} {:?} after its Lease lapsed",
                    k + 1,
                    dropped.duration_since(*lapse).unwrap_or_default()
                ),
            }
        }
        eprintln!(
            "  act 2: cut {cut} connections; replica-c dropped each of its clouds before its Lease lapsed ({early:?} before), {in_flight_at_cut} operations in flight"
        );
        let held = scene
            .spread(&REPLICAS[..2], 3, Duration::from_secs(60))
            .await;
        eprintln!("  act 2: clouds held {held:?}");
        scene.converge("replica cut off from kube-apiserver: its clouds move", Duration::from_secs(120)).await;
        *watched.lock().unwrap() = scene.objects.clone();
        assert_eq!(
            write_calls(ports[2]).await,
            Some(writes_at_drop),
            "replica-c wrote to Compute after it dropped its clouds"
        );
        assert!(
            children[2].as_mut().unwrap().try_wait().unwrap().is_none(),
            "a replica that loses its clouds keeps running"
        );

        // Act 3: replica-b is killed mid-rollout; replica-a takes every cloud.
        let (inserts_before, _) = writes(&url).await;
        scene
            .apply((0..CLOUDS).flat_map(|cloud| (20..30).map(move |n| Object { cloud, n })))
            .await;
        let wanted = scene.objects.len();
        while scene.readiness().await.0 < wanted - 50 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let in_flight_at_kill = emulator_stats(&url).await["operationsPending"]
            .as_u64()
            .unwrap_or(0);
        kill9(children[1].as_mut().unwrap());
        children[1] = None;
        let killed = Instant::now();
        let held = scene
            .spread(&REPLICAS[..1], CLOUDS, Duration::from_secs(60))
            .await;
        eprintln!(
            "  act 3: killed replica-b with {in_flight_at_kill} operations in flight; replica-a holds all six {:.1} s later: {held:?}",
            killed.elapsed().as_secs_f64()
        );
        scene.converge("replica killed mid-rollout: its clouds move", Duration::from_secs(120)).await;
        *watched.lock().unwrap() = scene.objects.clone();
        let (inserts, _) = writes(&url).await;
        let needed = 3 * scene.objects.len() as u64;
        eprintln!(
            "  inserts sent {inserts} ({} in act 3), resources needed {needed}, in flight at the cut {in_flight_at_cut} and the kill {in_flight_at_kill}",
            inserts - inserts_before
        );
        assert!(
            inserts <= needed + in_flight_at_cut + in_flight_at_kill,
            "{inserts} inserts for {needed} resources: more duplicated than the {} in flight",
            in_flight_at_cut + in_flight_at_kill
        );

        // Act 4: replica-c's connection comes back and replica-b starts again: clouds are
        // handed back until each holds two, and nothing is written.
        let (_, writes_before) = writes(&url).await;
        proxy.set_refusing(false);
        children[1] = Some(spec(1).start());
        let returned = Instant::now();
        let held = scene.spread(&REPLICAS, 2, Duration::from_secs(90)).await;
        eprintln!(
            "  act 4: balanced again {:.1} s after the return: {held:?}",
            returned.elapsed().as_secs_f64()
        );
        scene.converge("replicas return: clouds rebalance", Duration::from_secs(60)).await;
        let stored = stores_follow_holders(&ports, &holders(&client).await, &scene.objects, Duration::from_secs(30)).await;
        eprintln!("  act 4: (whole, stub) VirtualServices per replica {stored:?}");
        stop_sampling.send(true).unwrap();
        let (samples, unreachable) = sampler.await.unwrap();
        eprintln!("  reachability: {samples} samples of every converged VIP through acts 2-4");
        assert!(samples > 10, "the sampler ran {samples} times");
        assert!(
            unreachable.is_empty(),
            "a VIP lost an engine while clouds moved: {unreachable:#?}"
        );
        let (_, writes_after) = writes(&url).await;
        assert_eq!(
            writes_after,
            writes_before,
            "rebalancing wrote to Compute ({} writes); calls now: {}",
            writes_after - writes_before,
            emulator_stats(&url).await["callsByMethod"]
        );
        for child in children.iter_mut().flatten() {
            assert!(child.try_wait().unwrap().is_none(), "a replica exited");
            kill9(child);
        }
    });
}
