//! The pools suite (bench/README.md, "VIP pools at default quotas"): N VirtualServices whose
//! VIPs come from one `GcpCloud.spec.vipPools` pool, in a project with Compute's default
//! resource quotas (ROUTES 250, STATIC_ROUTES_PER_NETWORK 200, FIREWALLS 200) and 20 engines;
//! a rollout of all N at once, then the failover of one engine and its return.
//!
//! Per size: a fresh emulator and operator (batched, the default). Every check of traffic
//! computes each VIP's engines from the emulator's route table by Compute's rule (longest
//! prefix, then the smallest priority value, ECMP among equals) and its openings from the
//! firewall rules, independently of the operator's code.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use adc_operator::api::{GcpCloud, VirtualService};
use anyhow::{Context as _, bail};
use futures::StreamExt as _;
use kube::api::Api;
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Client, ResourceExt as _};
use serde_json::{Value, json};

use crate::bounds::{
    OPERATION_SECONDS, QUOTA_PER_MINUTE, ROUND_TRIP_SECONDS, bound_for_writes, window_offset,
    windowed_bound,
};
use crate::cluster;
use crate::config::{Config, Mode};
use crate::fleet::{Fleet, PROJECT, next_hop_filter};
use crate::probe::EmulatorCounts;
use crate::scenarios::{Measure, Run, print_measure};

/// Engine pairs; VirtualService `i` is served by pair `i % PAIRS` (engines `2p` and `2p + 1`).
const PAIRS: usize = 10;
const ENGINES: usize = 2 * PAIRS;
const POOL_NAME: &str = "vips";
const POOL_CIDR: &str = "10.64.0.0/16";
/// Compute's default resource quotas (emulator model, docs/compute-api.md §11).
const ROUTES_LIMIT: u64 = 250;
const STATIC_ROUTES_PER_NETWORK_LIMIT: u64 = 200;
const FIREWALLS_LIMIT: u64 = 200;
/// The engine the failover stops (pair 0's first).
const STOPPED_ENGINE: usize = 0;
/// Port templates, (port, protocol); VirtualService `i` uses template `(i / 100) % 4`.
const TEMPLATES: [&[(u16, &str)]; 4] = [
    &[(443, "TCP")],
    &[(80, "TCP"), (443, "TCP")],
    &[(8443, "TCP")],
    &[(53, "UDP"), (53, "TCP")],
];
/// The layout is quiet once nothing changed in the emulator for this long (GCP seconds): the
/// slowest route or firewall operation.
const QUIET_GCP_SECONDS: f64 = 15.0;

fn pair(i: usize) -> usize {
    i % PAIRS
}

fn standby(i: usize) -> bool {
    (i / 10).is_multiple_of(10)
}

fn template(i: usize) -> &'static [(u16, &'static str)] {
    TEMPLATES[(i / 100) % TEMPLATES.len()]
}

/// The engines of VirtualService `i`, in the order of its spec (ActiveStandby: primary first).
fn engines_of(i: usize) -> [usize; 2] {
    let p = pair(i);
    [2 * p, 2 * p + 1]
}

fn engine_name(fleet: &Fleet, j: usize) -> String {
    fleet.engine(j).name
}

/// The world: one project at Compute's default quotas, its subnet and the 20 engines.
fn world(fleet: &Fleet) -> String {
    let mut text = format!(
        "projects:
  - id: {PROJECT}
    quotas: {{ROUTES: {ROUTES_LIMIT}, STATIC_ROUTES_PER_NETWORK: {STATIC_ROUTES_PER_NETWORK_LIMIT}, FIREWALLS: {FIREWALLS_LIMIT}}}
    networks:
      - name: default
        subnetworks:
          - {{name: default, region: us-central1, ipCidrRange: 10.128.0.0/20}}
    instances:
"
    );
    for j in 0..fleet.engines {
        let engine = fleet.engine(j);
        text.push_str(&format!(
            "      - {{name: {}, zone: {}, networkIP: 10.128.0.{}, canIpForward: true}}\n",
            engine.name,
            engine.zone,
            j + 10
        ));
    }
    text
}

/// VirtualService `i` of the pool fleet.
fn virtual_service(fleet: &Fleet, i: usize, cloud: &str) -> Value {
    let engines: Vec<Value> = engines_of(i)
        .iter()
        .map(|j| {
            let engine = fleet.engine(*j);
            json!({"name": engine.name, "zone": engine.zone})
        })
        .collect();
    let ports: Vec<Value> = template(i)
        .iter()
        .map(|(port, protocol)| json!({"port": port, "protocol": protocol}))
        .collect();
    json!({
        "apiVersion": "adc.dev/v1alpha1",
        "kind": "VirtualService",
        "metadata": {"name": Fleet::object_name(i)},
        "spec": {
            "cloudRef": cloud,
            "vip": {"allocate": {"pool": POOL_NAME}},
            "ports": ports,
            "sourceRanges": ["10.0.0.0/8"],
            "mode": if standby(i) { "ActiveStandby" } else { "ActiveActive" },
            "serviceEngines": engines,
        }
    })
}

/// The engines that must carry VirtualService `i`'s traffic while `down` engines are stopped:
/// ActiveActive every running engine, ActiveStandby the first running one.
fn carriers(fleet: &Fleet, i: usize, down: &BTreeSet<String>) -> BTreeSet<String> {
    let running = engines_of(i)
        .into_iter()
        .map(|j| engine_name(fleet, j))
        .filter(|name| !down.contains(name));
    if standby(i) {
        running.take(1).collect()
    } else {
        running.collect()
    }
}

/// What VirtualService `i`'s ports ask a firewall rule to allow: (protocol, port), lowercase.
fn wanted_opening(i: usize) -> Allowed {
    template(i)
        .iter()
        .map(|(port, protocol)| (protocol.to_lowercase(), port.to_string()))
        .collect()
}

/// An IPv4 prefix as (first, last) address.
fn parse_range(text: &str) -> Option<(u32, u32, u8)> {
    let (address, length) = text.split_once('/').unwrap_or((text, "32"));
    let address = u32::from(address.parse::<Ipv4Addr>().ok()?);
    let length: u8 = length.parse().ok()?;
    if length > 32 {
        return None;
    }
    let host_mask = if length == 0 {
        u32::MAX
    } else {
        (1u32 << (32 - u32::from(length))).wrapping_sub(1)
    };
    let first = address & !host_mask;
    Some((first, first | host_mask, length))
}

/// The emulator's routes of the default network, as Compute selects among them.
struct RouteTable {
    /// (first, last, prefix length, priority, engine name)
    routes: Vec<(u32, u32, u8, u64, String)>,
}

impl RouteTable {
    fn new(routes: &[Value]) -> Self {
        let routes = routes
            .iter()
            .filter(|r| {
                r["network"]
                    .as_str()
                    .is_some_and(|n| n.ends_with("/networks/default"))
            })
            .filter_map(|r| {
                let (first, last, length) = parse_range(r["destRange"].as_str()?)?;
                let engine = r["nextHopInstance"]
                    .as_str()?
                    .rsplit('/')
                    .next()?
                    .to_string();
                Some((
                    first,
                    last,
                    length,
                    r["priority"].as_u64().unwrap_or(1000),
                    engine,
                ))
            })
            .collect();
        Self { routes }
    }

    /// The engines a packet to `vip` is spread over: the routes of the longest prefix that
    /// contains it, then of the smallest priority value (ECMP among them).
    fn effective(&self, vip: Ipv4Addr) -> BTreeSet<String> {
        let vip = u32::from(vip);
        let matching: Vec<&(u32, u32, u8, u64, String)> = self
            .routes
            .iter()
            .filter(|r| r.0 <= vip && vip <= r.1)
            .collect();
        let Some(longest) = matching.iter().map(|r| r.2).max() else {
            return BTreeSet::new();
        };
        let best = matching
            .iter()
            .filter(|r| r.2 == longest)
            .map(|r| r.3)
            .min()
            .unwrap_or_default();
        matching
            .into_iter()
            .filter(|r| r.2 == longest && r.3 == best)
            .map(|r| r.4.clone())
            .collect()
    }
}

/// What a firewall rule allows: (protocol, port), lowercase.
type Allowed = BTreeSet<(String, String)>;

/// One firewall rule: what it allows, from which sources, to which ranges (sorted by first
/// address, as (first, last)).
type Rule = (Allowed, Vec<String>, Vec<(u32, u32)>);

/// The emulator's ingress firewall rules.
struct Rules {
    rules: Vec<Rule>,
}

impl Rules {
    fn new(rules: &[Value]) -> Self {
        let rules = rules
            .iter()
            .map(|rule| {
                let allowed = rule["allowed"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|a| {
                        let protocol = a["IPProtocol"].as_str().unwrap_or_default().to_lowercase();
                        a["ports"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|p| p.as_str())
                            .map(move |p| (protocol.clone(), p.to_string()))
                            .collect::<Vec<_>>()
                    })
                    .collect();
                let sources = rule["sourceRanges"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect();
                let mut ranges: Vec<(u32, u32)> = rule["destinationRanges"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|r| parse_range(r.as_str()?).map(|(a, b, _)| (a, b)))
                    .collect();
                ranges.sort_unstable();
                (allowed, sources, ranges)
            })
            .collect();
        Self { rules }
    }

    /// What the rules whose destination ranges contain `vip` open, with their sources.
    fn openings(&self, vip: Ipv4Addr) -> Vec<(&Allowed, &Vec<String>)> {
        let vip = u32::from(vip);
        self.rules
            .iter()
            .filter(|(_, _, ranges)| {
                // Ranges of one rule may nest (the operator's never do): look at every range
                // starting at or before the VIP only when the closest one misses.
                let end = ranges.partition_point(|(first, _)| *first <= vip);
                ranges[..end]
                    .iter()
                    .rev()
                    .any(|(first, last)| *first <= vip && vip <= *last)
            })
            .map(|(allowed, sources, _)| (allowed, sources))
            .collect()
    }
}

/// The status.vip of every VirtualService of a namespace, kept current by a watch.
#[derive(Clone, Default)]
struct Allocations {
    inner: Arc<Mutex<HashMap<String, Ipv4Addr>>>,
}

impl Allocations {
    fn watch(client: &Client, namespace: &str) -> Self {
        let allocations = Self::default();
        let api: Api<VirtualService> = Api::namespaced(client.clone(), namespace);
        let state = Arc::clone(&allocations.inner);
        tokio::spawn(async move {
            let mut events = watcher(api, watcher::Config::default())
                .default_backoff()
                .boxed();
            while let Some(event) = events.next().await {
                let Ok(event) = event else { continue };
                let mut state = match state.lock() {
                    Ok(guard) => guard,
                    Err(poisoned) => poisoned.into_inner(),
                };
                match event {
                    watcher::Event::Apply(object) | watcher::Event::InitApply(object) => {
                        let vip = object
                            .status
                            .as_ref()
                            .and_then(|s| s.vip.as_deref())
                            .and_then(|v| v.parse::<Ipv4Addr>().ok());
                        match vip {
                            Some(vip) => state.insert(object.name_any(), vip),
                            None => state.remove(&object.name_any()),
                        };
                    }
                    watcher::Event::Delete(object) => {
                        state.remove(&object.name_any());
                    }
                    watcher::Event::Init | watcher::Event::InitDone => {}
                }
            }
        });
        allocations
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Ipv4Addr>> {
        match self.inner.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn count(&self) -> usize {
        self.lock().len()
    }

    fn snapshot(&self) -> HashMap<String, Ipv4Addr> {
        self.lock().clone()
    }
}

/// The routes and firewall rules in the emulator: every one, those whose marker names the
/// cloud, and those of the cloud's shared layout (the GcpCloud is their owner).
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
struct Footprint {
    routes: usize,
    routes_of_cloud: usize,
    shared_routes: usize,
    firewalls: usize,
    firewalls_of_cloud: usize,
    shared_firewalls: usize,
    /// Destination ranges over every shared rule.
    shared_firewall_ranges: usize,
}

struct Pools<'a> {
    run: Run<'a>,
    allocations: Allocations,
    /// `adc.dev/owner=bench/CLOUD/`: the cloud's resources.
    marker: String,
    /// `adc.dev/owner=bench/CLOUD/GcpCloud//CLOUD`: its shared ones.
    shared_marker: String,
    /// When the run must give up (the rollout's deadline).
    deadline: Instant,
}

/// Where the routes and rules stand: their names, for noticing any change.
type Names = BTreeSet<String>;

impl Pools<'_> {
    fn n(&self) -> usize {
        self.run.fleet.objects
    }

    async fn state(&self) -> anyhow::Result<(Vec<Value>, Vec<Value>)> {
        Ok((
            self.run.emulator.collection("routes", None).await?,
            self.run.emulator.collection("firewalls", None).await?,
        ))
    }

    fn names(routes: &[Value], rules: &[Value]) -> Names {
        let named = |prefix: &'static str| {
            move |r: &Value| r["name"].as_str().map(|name| format!("{prefix}{name}"))
        };
        routes
            .iter()
            .filter_map(named("route/"))
            .chain(rules.iter().filter_map(named("firewall/")))
            .collect()
    }

    fn footprint(&self, routes: &[Value], rules: &[Value]) -> Footprint {
        let has = |r: &Value, marker: &str| {
            r["description"]
                .as_str()
                .is_some_and(|d| d.contains(marker))
        };
        let shared_rules: Vec<&Value> = rules
            .iter()
            .filter(|r| has(r, &self.shared_marker))
            .collect();
        Footprint {
            routes: routes.len(),
            routes_of_cloud: routes.iter().filter(|r| has(r, &self.marker)).count(),
            shared_routes: routes
                .iter()
                .filter(|r| has(r, &self.shared_marker))
                .count(),
            firewalls: rules.len(),
            firewalls_of_cloud: rules.iter().filter(|r| has(r, &self.marker)).count(),
            shared_firewalls: shared_rules.len(),
            shared_firewall_ranges: shared_rules
                .iter()
                .map(|r| r["destinationRanges"].as_array().map_or(0, Vec::len))
                .sum(),
        }
    }

    /// Every VIP against what it must get with `down` engines stopped: its engines by the route
    /// table, and (with `rules`) exactly its own opening from 10.0.0.0/8. Returns how many VIPs
    /// were checked and the first violations (with their count).
    fn check(
        &self,
        routes: &[Value],
        rules: Option<&[Value]>,
        down: &BTreeSet<String>,
    ) -> (usize, usize, Vec<String>) {
        let table = RouteTable::new(routes);
        let rules = rules.map(Rules::new);
        let vips = self.allocations.snapshot();
        let mut checked = 0;
        let mut violations = 0;
        let mut examples = Vec::new();
        let mut fail = |text: String| {
            violations += 1;
            if examples.len() < 10 {
                examples.push(text);
            }
        };
        for i in 0..self.n() {
            let name = Fleet::object_name(i);
            let Some(vip) = vips.get(&name).copied() else {
                fail(format!("{name}: no status.vip"));
                continue;
            };
            checked += 1;
            let reached = table.effective(vip);
            let wanted = carriers(&self.run.fleet, i, down);
            if reached != wanted {
                fail(format!(
                    "{name} ({vip}) reaches {reached:?}, wants {wanted:?}"
                ));
            }
            if let Some(rules) = &rules {
                let opening = wanted_opening(i);
                let openings = rules.openings(vip);
                let own = openings
                    .iter()
                    .any(|(allowed, sources)| **allowed == opening && **sources == ["10.0.0.0/8"]);
                let foreign = openings.iter().any(|(allowed, _)| **allowed != opening);
                if !own || foreign {
                    fail(format!(
                        "{name} ({vip}) is opened by {openings:?}, wants exactly {opening:?} from 10.0.0.0/8"
                    ));
                }
            }
        }
        // A VIP handed out twice would reach the engines of only one of its objects.
        let distinct: BTreeSet<Ipv4Addr> = vips.values().copied().collect();
        if distinct.len() != vips.len() {
            fail(format!(
                "{} VIPs for {} objects: an address was handed out twice",
                distinct.len(),
                vips.len()
            ));
        }
        (checked, violations, examples)
    }

    /// The machine's one-minute load average (the benchmark shares its cores with whatever
    /// else runs).
    fn load() -> f64 {
        std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|text| text.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0)
    }

    fn progress(&self, label: &str, start: Instant, extra: &str) {
        let (ready, exist) = self.run.readiness.counts();
        let rss = self
            .run
            .operator
            .reading()
            .map(|r| r.rss_mib)
            .unwrap_or_default();
        println!(
            "  [pools n={} {label}] {exist} applied · {} with a VIP · {ready} Ready · operator {rss:.0} MiB · load {:.1} · {:.1} s wall · {:.0} s GCP{extra}",
            self.n(),
            self.allocations.count(),
            Self::load(),
            start.elapsed().as_secs_f64(),
            self.run.gcp(start.elapsed()),
        );
    }

    /// Until every object is Ready and carried as `down` wants, no operation is pending and no
    /// route or rule changed for [`QUIET_GCP_SECONDS`]; returns the time of the last change seen
    /// (`since` if none) and the final routes and rules.
    async fn quiet(
        &self,
        label: &str,
        since: Instant,
        deadline: Instant,
        down: &BTreeSet<String>,
    ) -> anyhow::Result<(Instant, Vec<Value>, Vec<Value>)> {
        let n = self.n();
        let stable = self
            .run
            .config
            .wall(QUIET_GCP_SECONDS)
            .max(Duration::from_secs(2));
        let mut last_change = since;
        let mut names: Option<Names> = None;
        let mut last_print = Instant::now();
        loop {
            let (routes, rules) = self.state().await?;
            let now_names = Self::names(&routes, &rules);
            if names.as_ref().is_some_and(|n| *n != now_names) {
                last_change = Instant::now();
            }
            names = Some(now_names);
            let stats = adc_testenv::emulator_admin(&self.run.emulator.base_url, "stats").await?;
            let pending = stats["operationsPending"].as_u64().unwrap_or(u64::MAX);
            let ready = self.run.readiness.counts() == (n, n);
            let why = if ready && pending == 0 && last_change.elapsed() >= stable {
                let (_, violations, examples) = self.check(&routes, Some(&rules), down);
                if violations == 0 {
                    return Ok((last_change, routes, rules));
                }
                format!("{violations} VIP(s) inexact, e.g. {examples:?}")
            } else {
                format!("ready {ready}, {pending} operations pending")
            };
            if Instant::now() > deadline {
                self.progress(label, since, " · GAVE UP");
                bail!(
                    "{label}: not quiet after {:.0} s wall: {why}",
                    since.elapsed().as_secs_f64()
                );
            }
            if last_print.elapsed() >= Duration::from_secs(5) {
                self.progress(label, since, &format!(" · {why}"));
                last_print = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Objects that stopped being Ready since `before` (a [`cluster::Readiness::lost_ready`]):
    /// how many times, how many objects, of which pair, a few names.
    fn lost_ready_since(&self, before: &HashMap<String, usize>) -> Value {
        let now = self.run.readiness.lost_ready();
        let mut objects: Vec<(&String, usize)> = now
            .iter()
            .map(|(name, times)| (name, times - before.get(name).copied().unwrap_or(0)))
            .filter(|(_, times)| *times > 0)
            .collect();
        objects.sort();
        let mut by_pair = BTreeMap::<usize, usize>::new();
        for (name, _) in &objects {
            if let Some(i) = name
                .strip_prefix("vs-")
                .and_then(|i| i.parse::<usize>().ok())
            {
                *by_pair.entry(pair(i)).or_default() += 1;
            }
        }
        json!({
            "times": objects.iter().map(|(_, times)| times).sum::<usize>(),
            "objects": objects.len(),
            "objects_by_pair": by_pair,
            "examples": objects.iter().take(5).map(|(name, _)| name).collect::<Vec<_>>(),
        })
    }

    /// Why the objects that are not Ready wait: counts by (has a VIP, Ready status and reason,
    /// Stalled reason, the start of the Ready message), the largest groups first.
    async fn waiting(&self) -> anyhow::Result<Value> {
        let api: Api<VirtualService> =
            Api::namespaced(self.run.client.clone(), &self.run.namespace);
        let mut groups = BTreeMap::<String, usize>::new();
        let mut params = kube::api::ListParams::default().limit(2000);
        loop {
            let page = api.list(&params).await?;
            for object in &page.items {
                let status = object.status.as_ref();
                let conditions = status.map(|s| s.conditions.as_slice()).unwrap_or_default();
                let find = |type_: &str| conditions.iter().find(|c| c.type_ == type_);
                let ready = find("Ready");
                if ready.is_some_and(|c| c.status == "True") {
                    continue;
                }
                let stalled = find("Stalled").filter(|c| c.status == "True");
                let message: String = ready
                    .map(|c| c.message.chars().take(100).collect())
                    .unwrap_or_default();
                let key = format!(
                    "vip {} · Ready {}/{} · Stalled {} · {message}",
                    status
                        .and_then(|s| s.vip.as_deref())
                        .map_or("none", |_| "set"),
                    ready.map_or("—", |c| c.status.as_str()),
                    ready.map_or("—", |c| c.reason.as_str()),
                    stalled.map_or("no", |c| c.reason.as_str()),
                );
                *groups.entry(key).or_default() += 1;
            }
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(token) => params = params.continue_token(&token),
                None => break,
            }
        }
        let mut groups: Vec<(String, usize)> = groups.into_iter().collect();
        groups.sort_by_key(|g| std::cmp::Reverse(g.1));
        Ok(json!(
            groups
                .iter()
                .take(8)
                .map(|(why, count)| json!({"objects": count, "why": why}))
                .collect::<Vec<_>>()
        ))
    }

    async fn errors(&self) -> anyhow::Result<BTreeMap<String, u64>> {
        let stats = adc_testenv::emulator_admin(&self.run.emulator.base_url, "stats").await?;
        Ok(stats["errorsByReason"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
            .collect())
    }

    async fn cloud_quota(&self) -> anyhow::Result<Value> {
        let clouds: Api<GcpCloud> = Api::all(self.run.client.clone());
        let cloud = clouds.get(&self.run.namespace).await?;
        Ok(json!({
            "quota": cloud.status.as_ref().map(|s| &s.quota),
            "routes": cloud.status.as_ref().and_then(|s| s.routes.clone()),
        }))
    }

    /// Step 3: all N applied at once; until the last is Ready, then until the layout is quiet.
    async fn rollout(&self, measures: &mut Vec<Measure>) -> anyhow::Result<()> {
        let n = self.n();
        let errors_before = self.errors().await?;
        let mark = self.run.mark().await?;
        let start = mark.at;
        let manifests: Vec<Value> = (0..n)
            .map(|i| virtual_service(&self.run.fleet, i, &self.run.namespace))
            .collect();
        let (client, namespace) = (self.run.client.clone(), self.run.namespace.clone());
        let mut apply = Some(tokio::spawn(async move {
            cluster::apply_all::<VirtualService>(client, namespace, manifests, 32)
                .await
                .map(|()| Instant::now())
        }));
        let lost_ready_before = self.run.readiness.lost_ready();
        let (mut peak_routes, mut peak_firewalls) = (0u64, 0u64);
        let mut last_peek = Instant::now();
        let mut loads: Vec<f64> = vec![Self::load()];
        let mut applied_at: Option<Instant> = None;
        let mut allocated_at: Option<Instant> = None;
        let mut points: Vec<(f64, usize)> = vec![(0.0, 0)];
        let mut last_print = Instant::now();
        let ready_at = loop {
            let (ready, exist) = self.run.readiness.counts();
            if points.last().is_none_or(|(_, r)| *r != ready) {
                points.push((self.run.gcp(start.elapsed()), ready));
            }
            if allocated_at.is_none() && self.allocations.count() == n {
                allocated_at = Some(Instant::now());
            }
            let mut apply_error = None;
            if let Some(handle) = apply.take_if(|h| h.is_finished()) {
                match handle.await? {
                    Ok(at) => applied_at = Some(at),
                    Err(err) => apply_error = Some(err),
                }
            }
            if (ready, exist) == (n, n) && applied_at.is_some() {
                break Instant::now();
            }
            // The most routes and rules (those being created included) at any moment.
            if last_peek.elapsed() >= Duration::from_millis(250) {
                let resources = self.run.emulator.resources().await?;
                peak_routes = peak_routes.max(resources.get("routes").copied().unwrap_or(0));
                peak_firewalls =
                    peak_firewalls.max(resources.get("firewalls").copied().unwrap_or(0));
                last_peek = Instant::now();
                loads.push(Self::load());
            }
            if Instant::now() > self.deadline || apply_error.is_some() {
                self.progress("rollout", start, " · GAVE UP");
                let reading = self.run.operator.reading()?;
                let waiting = self
                    .waiting()
                    .await
                    .unwrap_or_else(|err| json!(format!("{err:#}")));
                println!("  objects not Ready, by why: {waiting:#}");
                let mut measure = self
                    .run
                    .measure(
                        "pool-rollout",
                        &mark,
                        self.run.gcp(start.elapsed()),
                        false,
                        bound_for_writes(0),
                        0,
                        0,
                        json!({
                            "finished": false,
                            "not_ready_by_why": waiting,
                            "apply_error": apply_error.as_ref().map(|e| format!("{e:#}")),
                            "applied": exist,
                            "vip_allocated": self.allocations.count(),
                            "ready": ready,
                            "operator_rss_mib": reading.rss_mib,
                            "ready_lost": self.lost_ready_since(&lost_ready_before),
                            "load_average_1m": load_summary(&loads),
                            "applied_seconds": applied_at.map(|t| self.run.gcp(t - start)),
                            "vip_allocated_seconds": allocated_at.map(|t| self.run.gcp(t - start)),
                        }),
                    )
                    .await?;
                measure.writes_needed = measure.writes;
                measure.quota_efficiency = 1.0;
                print_measure(&measure);
                measures.push(measure);
                if let Some(err) = apply_error {
                    return Err(err.context(format!(
                        "pool rollout of {n}: {ready} Ready, {} with a VIP, {exist} applied after {:.0} s wall; operator RSS {:.0} MiB",
                        self.allocations.count(),
                        start.elapsed().as_secs_f64(),
                        reading.rss_mib
                    )));
                }
                bail!(
                    "pool rollout of {n}: {ready} Ready, {} with a VIP, {exist} applied after {:.0} s wall ({:.0} s GCP); operator RSS {:.0} MiB",
                    self.allocations.count(),
                    start.elapsed().as_secs_f64(),
                    self.run.gcp(start.elapsed()),
                    reading.rss_mib
                );
            }
            if last_print.elapsed() >= Duration::from_secs(5) {
                let writes = self
                    .run
                    .emulator
                    .counts()
                    .await?
                    .since(&mark.counts)
                    .group("write");
                let resources = self.run.emulator.resources().await?;
                self.progress(
                    "rollout",
                    start,
                    &format!(
                        " · {writes} GCP writes · {} routes, {} firewall rules",
                        resources.get("routes").copied().unwrap_or(0),
                        resources.get("firewalls").copied().unwrap_or(0)
                    ),
                );
                last_print = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let allocated_at = allocated_at.unwrap_or(ready_at);
        let applied_at = applied_at.unwrap_or(ready_at);
        println!(
            "  pool rollout of {n}: last apply returned at {:.1} s GCP, last VIP allocated at {:.1} s, last Ready at {:.1} s; waiting for a quiet layout",
            self.run.gcp(applied_at - start),
            self.run.gcp(allocated_at - start),
            self.run.gcp(ready_at - start)
        );
        let (quiet_at, routes, rules) = self
            .quiet("rollout quiet", ready_at, self.deadline, &BTreeSet::new())
            .await?;
        let footprint = self.footprint(&routes, &rules);
        let (checked, violations, examples) = self.check(&routes, Some(&rules), &BTreeSet::new());
        let errors = self.errors().await?;
        let errors: BTreeMap<&String, u64> = errors
            .iter()
            .map(|(k, v)| (k, v - errors_before.get(k).copied().unwrap_or(0)))
            .filter(|(_, v)| *v > 0)
            .collect();
        let needed = footprint.routes_of_cloud + footprint.firewalls_of_cloud;
        let counts = self.run.emulator.counts().await?.since(&mark.counts);
        let mut measure = self
            .run
            .measure(
                "pool-rollout",
                &mark,
                self.run.gcp(ready_at - start),
                false,
                bound_for_writes(needed),
                needed as u64,
                0,
                json!({
                    "finished": true,
                    "engines": ENGINES,
                    "pool": POOL_CIDR,
                    "active_standby": (0..n).filter(|i| standby(*i)).count(),
                    "applied_seconds": self.run.gcp(applied_at - start),
                    "vip_allocated_seconds": self.run.gcp(allocated_at - start),
                    "ready_seconds": self.run.gcp(ready_at - start),
                    "quiet_seconds": self.run.gcp(quiet_at.max(ready_at) - start),
                    "wall_seconds": {
                        "applied": (applied_at - start).as_secs_f64(),
                        "vip_allocated": (allocated_at - start).as_secs_f64(),
                        "ready": (ready_at - start).as_secs_f64(),
                    },
                    "footprint": footprint,
                    "peak_routes_during_rollout": peak_routes,
                    "peak_firewalls_during_rollout": peak_firewalls,
                    "ready_lost": self.lost_ready_since(&lost_ready_before),
                    "load_average_1m": load_summary(&loads),
                    "limits": {"ROUTES": ROUTES_LIMIT, "STATIC_ROUTES_PER_NETWORK": STATIC_ROUTES_PER_NETWORK_LIMIT, "FIREWALLS": FIREWALLS_LIMIT},
                    "route_calls": method_calls(&counts, "routes"),
                    "firewall_calls": method_calls(&counts, "firewalls"),
                    "errors_by_reason": errors,
                    "cloud_status": self.cloud_quota().await?,
                    "vips_checked": checked,
                    "vips_inexact": violations,
                    "inexact_examples": examples,
                    "ready_over_time": points,
                }),
            )
            .await?;
        let windows = window_offset(mark.unix_millis, self.run.config.scale);
        measure.window_offset_seconds = Some(windows);
        measure.set_windowed_bound(windowed_bound(needed, windows, QUOTA_PER_MINUTE as usize));
        measure.detail["writes_per_object"] = json!(measure.writes as f64 / n as f64);
        measure.detail["operator_cpu_ms_per_object"] =
            json!(measure.operator_cpu_seconds * 1000.0 / n as f64);
        print_measure(&measure);
        println!(
            "  pool footprint: {} routes ({} of the cloud, {} shared) of {ROUTES_LIMIT}, {} firewall rules ({} of the cloud, {} shared, {} ranges) of {FIREWALLS_LIMIT}; {} VIPs checked, {violations} inexact",
            footprint.routes,
            footprint.routes_of_cloud,
            footprint.shared_routes,
            footprint.firewalls,
            footprint.firewalls_of_cloud,
            footprint.shared_firewalls,
            footprint.shared_firewall_ranges,
            checked
        );
        measures.push(measure);
        if violations > 0 || checked != n {
            bail!(
                "after the rollout {violations} VIP(s) are inexact ({checked} of {n} checked): {examples:?}"
            );
        }
        Ok(())
    }

    /// Step 4: engine 0 stops; until no route points at it, then until the layout is quiet;
    /// then it starts again, until every VIP is exact again.
    async fn failover(&self, measures: &mut Vec<Measure>) -> anyhow::Result<()> {
        let engine = self.run.fleet.engine(STOPPED_ENGINE);
        let stopped = vec![engine.clone()];
        let filter = next_hop_filter(&stopped);
        let down: BTreeSet<String> = [engine.name.clone()].into();
        let none = BTreeSet::new();
        let to_stopped = self.run.emulator.routes(Some(&filter)).await?.len();
        let lost_ready_before = self.run.readiness.lost_ready();
        let mark = self.run.mark().await?;
        let start = Instant::now();
        self.run.emulator.set_engines(&stopped, "stop").await?;
        let deadline = Instant::now() + self.run.config.wall(600.0) + Duration::from_secs(60);
        let withdrawn_at = self
            .run
            .wait_for(
                "pool failover",
                start,
                deadline,
                Duration::from_millis(20),
                || async { Ok(self.run.emulator.routes(Some(&filter)).await?.is_empty()) },
            )
            .await?;
        // What the routes give at that moment: pair 0's VIPs exactly engine 1, the rest as
        // before (the withdrawal alone, before any re-layout, must do it).
        let routes = self.run.emulator.routes(None).await?;
        let (_, at_withdrawal, at_withdrawal_examples) = self.check(&routes, None, &down);
        let (quiet_at, routes, rules) = self
            .quiet("failover quiet", withdrawn_at, deadline, &down)
            .await?;
        let counts = self.run.emulator.counts().await?.since(&mark.counts);
        let route_calls = method_calls(&counts, "routes");
        let footprint = self.footprint(&routes, &rules);
        let (checked, at_quiet, _) = self.check(&routes, Some(&rules), &down);
        let mut measure = self
            .run
            .measure(
                "pool-failover-one-engine",
                &mark,
                self.run.gcp(withdrawn_at - start),
                false,
                ROUND_TRIP_SECONDS + OPERATION_SECONDS,
                to_stopped as u64,
                1,
                json!({
                    "engines_stopped": 1,
                    "engine": engine.name,
                    "routes_withdrawn": to_stopped,
                    "withdrawal_seconds": self.run.gcp(withdrawn_at - start),
                    "quiet_seconds": self.run.gcp(quiet_at.max(withdrawn_at) - start),
                    "routes_touched": route_calls["insert"] + route_calls["delete"],
                    "route_calls": route_calls,
                    "firewall_calls": method_calls(&counts, "firewalls"),
                    "vips_inexact_at_withdrawal": at_withdrawal,
                    "inexact_at_withdrawal_examples": at_withdrawal_examples,
                    "vips_checked": checked,
                    "vips_inexact_at_quiet": at_quiet,
                    "footprint_at_quiet": footprint,
                    "ready_lost": self.lost_ready_since(&lost_ready_before),
                }),
            )
            .await?;
        measure.n = self.n();
        print_measure(&measure);
        println!(
            "  pool failover: {to_stopped} routes to {} withdrawn in {:.1} s GCP, quiet {:.1} s after the stop, {} route inserts + {} deletes; {at_withdrawal} VIP(s) inexact at the withdrawal",
            engine.name,
            self.run.gcp(withdrawn_at - start),
            self.run.gcp(quiet_at.max(withdrawn_at) - start),
            route_calls["insert"],
            route_calls["delete"]
        );

        // The engine comes back (set_engines waits for its stop to be done first).
        let before_start = self.run.emulator.counts().await?;
        let lost_ready_before = self.run.readiness.lost_ready();
        self.run.emulator.set_engines(&stopped, "start").await?;
        let restart = Instant::now();
        let recovered = self
            .quiet(
                "recovery quiet",
                restart,
                restart + self.run.config.wall(600.0) + Duration::from_secs(60),
                &none,
            )
            .await;
        let counts = self.run.emulator.counts().await?.since(&before_start);
        let recovery_calls = method_calls(&counts, "routes");
        let outcome = match recovered {
            Ok((back_at, routes, rules)) => {
                measure.detail["recovery_seconds"] = json!(self.run.gcp(back_at - restart));
                measure.detail["footprint_after_recovery"] = json!(self.footprint(&routes, &rules));
                Ok(())
            }
            Err(err) => {
                measure.detail["recovery_failed"] = json!(format!("{err:#}"));
                Err(err)
            }
        };
        measure.detail["recovery_routes_touched"] =
            json!(recovery_calls["insert"] + recovery_calls["delete"]);
        measure.detail["recovery_ready_lost"] = self.lost_ready_since(&lost_ready_before);
        measures.push(measure);
        outcome?;
        if at_withdrawal > 0 {
            bail!(
                "at the withdrawal {at_withdrawal} VIP(s) were inexact: {at_withdrawal_examples:?}"
            );
        }
        Ok(())
    }

    /// Deletes every object (the finalizers free the VIPs and shrink the layout); until none is
    /// left and the cloud owns no route or rule. Not measured: it keeps the next size's operator
    /// from meeting this size's objects.
    async fn clean_up(&self) -> anyhow::Result<()> {
        let start = Instant::now();
        let names = (0..self.n()).map(Fleet::object_name).collect();
        cluster::delete_each::<VirtualService>(&self.run.client, &self.run.namespace, names, 32)
            .await?;
        let deadline = start + self.run.config.pool_deadline / 3;
        self.run
            .wait_for(
                "pool clean-up",
                start,
                deadline,
                Duration::from_millis(500),
                || async {
                    if self.run.readiness.counts().1 != 0 {
                        return Ok(false);
                    }
                    let (routes, rules) = self.state().await?;
                    let footprint = self.footprint(&routes, &rules);
                    Ok(footprint.routes_of_cloud + footprint.firewalls_of_cloud == 0)
                },
            )
            .await?;
        println!(
            "  pool clean-up of {}: every object and GCP resource gone in {:.1} s GCP",
            self.n(),
            self.run.gcp(start.elapsed())
        );
        Ok(())
    }
}

/// Mean and largest of the load-average samples.
fn load_summary(loads: &[f64]) -> Value {
    let mean = loads.iter().sum::<f64>() / loads.len().max(1) as f64;
    let max = loads.iter().copied().fold(0.0, f64::max);
    json!({"mean": mean, "max": max, "samples": loads.len()})
}

/// `compute.{collection}.insert`, `.delete` and `.patch` calls among `counts`.
fn method_calls(counts: &EmulatorCounts, collection: &str) -> BTreeMap<&'static str, u64> {
    ["insert", "delete", "patch", "update"]
        .into_iter()
        .map(|verb| {
            (
                verb,
                counts
                    .by_method
                    .get(&format!("compute.{collection}.{verb}"))
                    .copied()
                    .unwrap_or(0),
            )
        })
        .collect()
}

/// Runs the suite for every size of `BENCH_POOL_N`; each measure is added to `measures` as it
/// is taken. A size that fails is recorded and the next one still runs. Each size deletes its
/// objects at the end, but for the last one when no other suite runs after it.
pub async fn run(
    config: &Config,
    client: &Client,
    kubeconfig: &std::path::Path,
    measures: &mut Vec<Measure>,
) -> Vec<String> {
    let mut failures = Vec::new();
    let later_suite = config.suites.contains(&crate::config::Suite::SmallChange);
    for (k, n) in config.pool_sizes.iter().enumerate() {
        let clean_up = later_suite || k + 1 < config.pool_sizes.len();
        if let Err(err) = run_size(config, client, kubeconfig, *n, clean_up, measures).await {
            println!("!! pools, N={n}: {err:#}");
            failures.push(format!("pools N={n}: {err:#}"));
        }
    }
    failures
}

async fn run_size(
    config: &Config,
    client: &Client,
    kubeconfig: &std::path::Path,
    n: usize,
    clean_up: bool,
    measures: &mut Vec<Measure>,
) -> anyhow::Result<()> {
    let fleet = Fleet {
        objects: n,
        engines: ENGINES,
    };
    let namespace = format!("bench-pools-{n}");
    let log = config.results_dir.join(format!("operator-pools-{n}.log"));
    let spec = json!({"vipPools": [{"name": POOL_NAME, "cidr": POOL_CIDR}]});
    let (run, _emulator, mut child) = Run::start_in(
        config,
        client,
        kubeconfig,
        Mode::Batched,
        n,
        fleet,
        &world(&fleet),
        &spec,
        &namespace,
        &log,
    )
    .await?;
    println!(
        "== VIP pools at default quotas · N={n} · {ENGINES} engines in {PAIRS} pairs · pool {POOL_CIDR} · time scale {} · batched",
        config.scale
    );
    let cloud = namespace.clone();
    let pools = Pools {
        allocations: Allocations::watch(client, &namespace),
        marker: format!("adc.dev/owner=bench/{cloud}/"),
        shared_marker: format!("adc.dev/owner=bench/{cloud}/GcpCloud//{cloud}"),
        deadline: Instant::now() + config.pool_deadline,
        run,
    };
    let outcome = async {
        pools.rollout(measures).await?;
        pools.failover(measures).await?;
        anyhow::Ok(())
    }
    .await;
    // Whatever happened, the next size (and suite) must not meet these objects.
    let cleaned = if clean_up {
        pools.clean_up().await
    } else {
        Ok(())
    };
    let _ = child.kill();
    let _ = child.wait();
    outcome
        .and(cleaned)
        .with_context(|| format!("operator log: {}", log.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_follow_the_brief() {
        let fleet = Fleet {
            objects: 1000,
            engines: ENGINES,
        };
        let standby_count = (0..1000).filter(|i| standby(*i)).count();
        assert_eq!(standby_count, 100);
        assert_eq!(engines_of(13), [6, 7]);
        let vs = virtual_service(&fleet, 305, "c");
        assert_eq!(
            vs["spec"]["ports"],
            json!([{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}])
        );
        assert_eq!(vs["spec"]["mode"], "ActiveStandby");
        let down: BTreeSet<String> = [engine_name(&fleet, 0)].into();
        assert_eq!(carriers(&fleet, 0, &down), [engine_name(&fleet, 1)].into());
        assert_eq!(carriers(&fleet, 10, &down), [engine_name(&fleet, 1)].into());
        assert_eq!(carriers(&fleet, 1, &down).len(), 1);
        assert_eq!(carriers(&fleet, 11, &BTreeSet::new()).len(), 2);
    }

    #[test]
    fn compute_selects_the_longest_prefix_then_the_smallest_priority() {
        let route = |range: &str, priority: u64, engine: &str| {
            json!({"network": "projects/p/global/networks/default", "destRange": range,
                   "priority": priority, "nextHopInstance": format!("zones/z/instances/{engine}")})
        };
        let table = RouteTable::new(&[
            route("10.64.0.0/24", 1000, "a"),
            route("10.64.0.0/24", 1000, "b"),
            route("10.64.0.0/28", 1000, "c"),
            route("10.64.0.0/28", 1001, "d"),
        ]);
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap_or(Ipv4Addr::UNSPECIFIED);
        assert_eq!(table.effective(ip("10.64.0.3")), ["c".to_string()].into());
        assert_eq!(
            table.effective(ip("10.64.0.200")),
            ["a".to_string(), "b".to_string()].into()
        );
        assert!(table.effective(ip("10.65.0.1")).is_empty());
    }

    #[test]
    fn rules_open_what_their_ranges_cover() {
        let rules = Rules::new(&[json!({
            "sourceRanges": ["10.0.0.0/8"],
            "destinationRanges": ["10.64.0.8/29", "10.64.0.1/32"],
            "allowed": [{"IPProtocol": "tcp", "ports": ["443", "80"]}],
        })]);
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap_or(Ipv4Addr::UNSPECIFIED);
        assert_eq!(rules.openings(ip("10.64.0.9")).len(), 1);
        assert_eq!(rules.openings(ip("10.64.0.1")).len(), 1);
        assert!(rules.openings(ip("10.64.0.2")).is_empty());
        assert_eq!(*rules.openings(ip("10.64.0.15"))[0].0, wanted_opening(100));
    }
}
