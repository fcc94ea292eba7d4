//! VIP pools on real parts: kube-apiserver + etcd, gce-emulator as a process with Compute's
//! default resource quotas (reference §11: ROUTES 250, STATIC_ROUTES_PER_NETWORK 200, FIREWALLS
//! 200), and the adc-operator binary. Every check of traffic computes each VIP's effective
//! routes from the emulator's route table by Compute's rule (longest prefix, then the smallest
//! priority value, ECMP among equals), independently of the operator's own code, and samples it
//! while layouts change, not only at the end.

use crate::support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use adc_operator::api::VirtualService;
use ipnet::Ipv4Net;
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams};
use serde_json::{Value, json};
use support::Plane;
use support::operator::{
    Suite, apply, cloud_manifest, effective, emulator_collection, label_tenant, wait_ready,
    wait_stalled,
};

const PLANE: Plane = Plane::Pools;

/// Compute's default quotas (§11), a subnet, and ten engines over two zones; and a project
/// with room for four routes.
const WORLD: &str = "projects:
  - id: demo-project
    quotas: {ROUTES: 250, STATIC_ROUTES_PER_NETWORK: 200, FIREWALLS: 200, STATIC_ADDRESSES: 8}
    networks:
      - name: default
        subnetworks:
          - {name: default, region: us-central1, ipCidrRange: 10.128.0.0/20}
    instances:
      - {name: se-1, zone: us-central1-a, networkIP: 10.128.0.10, canIpForward: true}
      - {name: se-2, zone: us-central1-b, networkIP: 10.128.0.11, canIpForward: true}
      - {name: se-3, zone: us-central1-a, networkIP: 10.128.0.12, canIpForward: true}
      - {name: se-4, zone: us-central1-b, networkIP: 10.128.0.13, canIpForward: true}
      - {name: se-5, zone: us-central1-a, networkIP: 10.128.0.14, canIpForward: true}
      - {name: se-6, zone: us-central1-b, networkIP: 10.128.0.15, canIpForward: true}
      - {name: se-7, zone: us-central1-a, networkIP: 10.128.0.16, canIpForward: true}
      - {name: se-8, zone: us-central1-b, networkIP: 10.128.0.17, canIpForward: true}
      - {name: se-9, zone: us-central1-a, networkIP: 10.128.0.18, canIpForward: true}
      - {name: se-10, zone: us-central1-b, networkIP: 10.128.0.19, canIpForward: true}
  - id: tight-project
    quotas: {ROUTES: 4, STATIC_ROUTES_PER_NETWORK: 4, FIREWALLS: 10, STATIC_ADDRESSES: 8}
    networks:
      - name: default
        subnetworks:
          - {name: default, region: us-central1, ipCidrRange: 10.128.0.0/20}
    instances:
      - {name: se-1, zone: us-central1-a, networkIP: 10.128.0.10, canIpForward: true}
      - {name: se-2, zone: us-central1-b, networkIP: 10.128.0.11, canIpForward: true}
";

fn fixture() -> &'static Suite {
    static FIXTURE: OnceLock<Suite> = OnceLock::new();
    FIXTURE.get_or_init(|| Suite::start(PLANE, WORLD, "pools-cluster", &[]))
}

fn url() -> &'static str {
    &fixture().emulator.base_url
}

/// A tenant namespace and a Ready GcpCloud with `spec` merged in.
async fn setup(prefix: &str, spec: Value) -> (Client, String, String) {
    let fixture = fixture();
    let client = PLANE.admin_client().await;
    let namespace = support::test_namespace(&client, prefix).await;
    label_tenant(&client, &namespace).await;
    let cloud = format!("cloud-{namespace}");
    let mut spec = spec;
    spec["resyncInterval"] = json!("5s");
    spec["instancePollInterval"] = json!("1s");
    apply(
        &client,
        cloud_manifest(&cloud, &fixture.emulator.base_url, &spec),
        None,
    )
    .await;
    wait_ready::<adc_operator::api::GcpCloud>(&client, None, &cloud).await;
    (client, namespace, cloud)
}

/// A VirtualService on `engines` with ports `ports`, its VIP from `vip` (a JSON `vip` field).
fn service(
    name: &str,
    cloud: &str,
    vip: Value,
    engines: &[&str],
    standby: bool,
    ports: &[u16],
) -> Value {
    json!({
        "apiVersion": "adc.dev/v1alpha1", "kind": "VirtualService", "metadata": {"name": name},
        "spec": {"cloudRef": cloud, "vip": vip,
                 "ports": ports.iter().map(|p| json!({"port": p})).collect::<Vec<_>>(),
                 "sourceRanges": ["10.0.0.0/8"],
                 "mode": if standby { "ActiveStandby" } else { "ActiveActive" },
                 "serviceEngines": engines.iter().map(|e| json!({"name": e, "zone": zone(e)})).collect::<Vec<_>>()}
    })
}

fn zone(engine: &str) -> &'static str {
    let n: u32 = engine.trim_start_matches("se-").parse().unwrap_or(1);
    if n % 2 == 1 {
        "us-central1-a"
    } else {
        "us-central1-b"
    }
}

/// Whether a firewall rule allows exactly `ports` (TCP) from 10.0.0.0/8 to `vip`.
fn opened(firewalls: &[Value], vip: Ipv4Addr, ports: &[u16]) -> bool {
    let mut wanted: Vec<String> = ports.iter().map(ToString::to_string).collect();
    wanted.sort();
    firewalls.iter().any(|f| {
        f["sourceRanges"] == json!(["10.0.0.0/8"])
            && f["allowed"] == json!([{"IPProtocol": "tcp", "ports": wanted}])
            && f["destinationRanges"].as_array().is_some_and(|ranges| {
                ranges
                    .iter()
                    .filter_map(|r| r.as_str()?.parse::<Ipv4Net>().ok())
                    .any(|n| n.contains(&vip))
            })
    })
}

/// What each VirtualService of `namespace` should reach: (VIP, engines that carry it, every
/// engine of its spec, ports). `down` engines carry nothing.
async fn expectations(
    client: &Client,
    namespace: &str,
    down: &BTreeSet<String>,
) -> Vec<(
    String,
    Ipv4Addr,
    BTreeSet<String>,
    BTreeSet<String>,
    Vec<u16>,
)> {
    let api: Api<VirtualService> = Api::namespaced(client.clone(), namespace);
    let mut out = Vec::new();
    for vs in api.list(&ListParams::default()).await.unwrap() {
        let Some(vip) = vs
            .status
            .as_ref()
            .and_then(|s| s.vip.as_deref())
            .and_then(|v| v.parse().ok())
        else {
            continue;
        };
        let all: BTreeSet<String> = vs
            .spec
            .service_engines
            .iter()
            .map(|e| e.name.clone())
            .collect();
        let running: Vec<String> = vs
            .spec
            .service_engines
            .iter()
            .map(|e| e.name.clone())
            .filter(|e| !down.contains(e))
            .collect();
        let carry: BTreeSet<String> = match vs.spec.mode {
            adc_operator::api::HaMode::ActiveActive => running.into_iter().collect(),
            adc_operator::api::HaMode::ActiveStandby => running.into_iter().take(1).collect(),
        };
        let ports = vs.spec.ports.iter().map(|p| p.port).collect();
        out.push((
            vs.metadata.name.clone().unwrap_or_default(),
            vip,
            carry,
            all,
            ports,
        ));
    }
    out
}

/// Every VIP reaches exactly the engines that should carry it and its ports are open.
async fn exact(client: &Client, namespace: &str, down: &BTreeSet<String>) -> Result<(), String> {
    let routes = emulator_collection(url(), "routes").await;
    let firewalls = emulator_collection(url(), "firewalls").await;
    for (name, vip, carry, _, ports) in expectations(client, namespace, down).await {
        let reached = effective(&routes, vip);
        if reached != carry {
            return Err(format!(
                "{name} ({vip}) reaches {reached:?}, wants {carry:?}"
            ));
        }
        if !opened(&firewalls, vip, &ports) {
            return Err(format!("{name} ({vip}): no rule opens {ports:?}"));
        }
    }
    Ok(())
}

/// Every VIP reaches some of its own engines (none outside its spec) and its ports are open.
async fn reachable(client: &Client, namespace: &str) -> Result<(), String> {
    let routes = emulator_collection(url(), "routes").await;
    let firewalls = emulator_collection(url(), "firewalls").await;
    for (name, vip, _, all, ports) in expectations(client, namespace, &BTreeSet::new()).await {
        let reached = effective(&routes, vip);
        if reached.is_empty() || !reached.is_subset(&all) {
            return Err(format!(
                "{name} ({vip}) reaches {reached:?}, its engines are {all:?}"
            ));
        }
        if !opened(&firewalls, vip, &ports) {
            return Err(format!("{name} ({vip}): no rule opens {ports:?}"));
        }
    }
    Ok(())
}

/// What a sample asks of every VIP.
#[derive(Debug, Clone, Copy)]
enum Check {
    /// [`exact`]: exactly the engines that should carry it.
    Exact,
    /// [`reachable`]: some of its own engines, none else.
    Reachable,
}

/// Samples every VIP of `namespace` every 50 ms until `stop`; returns the samples taken and
/// the violations seen.
fn sample(
    client: Client,
    namespace: String,
    stop: Arc<AtomicBool>,
    check: Check,
) -> tokio::task::JoinHandle<(usize, Vec<String>)> {
    tokio::spawn(async move {
        let mut samples = 0;
        let mut violations = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            samples += 1;
            let verdict = match check {
                Check::Exact => exact(&client, &namespace, &BTreeSet::new()).await,
                Check::Reachable => reachable(&client, &namespace).await,
            };
            if let Err(why) = verdict {
                violations.push(format!("sample {samples}: {why}"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (samples, violations)
    })
}

/// As `support::eventually`, with three minutes: a layout is made in rounds (the longest
/// prefixes first), each an operation long, and CI runs two suites at once on two cores.
async fn eventually<F, Fut>(what: &str, check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    support::eventually_within(what, 180, check).await;
}

async fn all_ready(client: &Client, namespace: &str, count: usize) {
    let api: Api<VirtualService> = Api::namespaced(client.clone(), namespace);
    eventually(&format!("{count} VirtualServices Ready"), || async {
        let list = api
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?;
        let ready = list
            .items
            .iter()
            .filter(|vs| {
                vs.status.as_ref().is_some_and(|s| {
                    s.conditions.iter().any(|c| {
                        c.type_ == "Ready"
                            && c.status == "True"
                            && c.observed_generation == vs.metadata.generation
                    })
                })
            })
            .count();
        if ready == count && list.items.len() == count {
            Ok(())
        } else {
            let waiting: Vec<String> = list
                .items
                .iter()
                .filter(|vs| {
                    !vs.status.as_ref().is_some_and(|s| {
                        s.conditions
                            .iter()
                            .any(|c| c.type_ == "Ready" && c.status == "True")
                    })
                })
                .take(3)
                .map(|vs| format!("{:?}", vs.status.as_ref().map(|s| &s.conditions)))
                .collect();
            Err(format!(
                "{ready} of {} Ready; e.g. {waiting:?}",
                list.items.len()
            ))
        }
    })
    .await;
}

/// The operator's resources in the emulator: (routes, firewall rules) whose marker names `cloud`.
async fn footprint(cloud: &str) -> (Vec<Value>, Vec<Value>) {
    let marker = |r: &Value| {
        r["description"]
            .as_str()
            .is_some_and(|d| d.contains(&format!("/{cloud}/")))
    };
    (
        emulator_collection(url(), "routes")
            .await
            .into_iter()
            .filter(marker)
            .collect(),
        emulator_collection(url(), "firewalls")
            .await
            .into_iter()
            .filter(marker)
            .collect(),
    )
}

async fn compute(method: reqwest::Method, path: &str) -> Value {
    support::operator::compute(url(), method, path, json!({})).await
}

/// Global delete operations since `since` (an operation insertTime), as (insertTime, route name).
async fn route_deletes_since(since: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = compute(
            reqwest::Method::GET,
            &format!("global/operations?maxResults=500&pageToken={token}"),
        )
        .await;
        for op in page["items"].as_array().into_iter().flatten() {
            let target = op["targetLink"].as_str().unwrap_or_default();
            let at = op["insertTime"].as_str().unwrap_or_default();
            if op["operationType"] == "delete" && target.contains("/global/routes/") && at >= since
            {
                out.push((
                    at.to_string(),
                    target.rsplit('/').next().unwrap_or_default().to_string(),
                ));
            }
        }
        match page["nextPageToken"].as_str() {
            Some(next) if !next.is_empty() => token = next.to_string(),
            _ => break,
        }
    }
    out.sort();
    out
}

const PAIRS: [[&str; 2]; 4] = [
    ["se-1", "se-2"],
    ["se-3", "se-4"],
    ["se-5", "se-6"],
    ["se-7", "se-8"],
];
const TEMPLATES: [&[u16]; 3] = [&[443], &[8443], &[80, 443]];

/// 240 VirtualServices from a pool on four engine pairs (every tenth ActiveStandby), ports from
/// three templates, at Compute's default quotas: one route per engine and VIP would need 480
/// routes and 240 firewall rules, beyond ROUTES 250 and FIREWALLS 200. Every VIP reaches
/// exactly its engines; an engine stop withdraws only that engine's routes while every VIP keeps
/// reaching its remaining engines (sampled); deletions free addresses and close their ports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_fleet_at_default_quotas_is_exact_and_fails_over() {
    let (client, ns, cloud) = setup(
        "pool-fleet",
        json!({"vipPools": [{"name": "vips", "cidr": "10.200.0.0/20"}]}),
    )
    .await;
    let count = 240;
    let manifests: Vec<Value> = (0..count)
        .map(|i| {
            service(
                &format!("vs-{i}"),
                &cloud,
                json!({"allocate": {"pool": "vips"}}),
                &PAIRS[i % 4],
                i % 10 == 9,
                TEMPLATES[i % 3],
            )
        })
        .collect();
    for chunk in manifests.chunks(24) {
        futures::future::join_all(chunk.iter().map(|m| apply(&client, m.clone(), Some(&ns)))).await;
    }
    all_ready(&client, &ns, count).await;
    let none = BTreeSet::new();
    eventually("every VIP exact", || exact(&client, &ns, &none)).await;
    let clouds: Api<adc_operator::api::GcpCloud> = Api::all(client.clone());
    // The layout may still be compacting after the last VIP joined: read it with the forecast.
    eventually("the forecast counts the shared layout", || async {
        let (routes, rules) = footprint(&cloud).await;
        let status = support::operator::status_of(&clouds, &cloud).await;
        let quota = status["quota"].as_array().cloned().unwrap_or_default();
        let needed = |metric: &str| {
            quota
                .iter()
                .find(|q| q["metric"] == metric)
                .and_then(|q| q["needed"].as_f64())
        };
        let warning = support::operator::condition(&status, "QuotaWarning");
        if needed("ROUTES") == Some(routes.len() as f64)
            && needed("FIREWALLS") == Some(rules.len() as f64)
            && warning.as_ref().is_some_and(|w| w.0 == "False")
            && status["routes"]
                .as_str()
                .is_some_and(|r| r.ends_with("/250"))
        {
            Ok(())
        } else {
            Err(format!(
                "{} routes, {} rules; {quota:?} {warning:?} {}",
                routes.len(),
                rules.len(),
                status["routes"]
            ))
        }
    })
    .await;
    let (routes, rules) = footprint(&cloud).await;
    eprintln!(
        "pool fleet: {count} VirtualServices carried by {} routes and {} firewall rules",
        routes.len(),
        rules.len()
    );
    // 4 pairs plus ActiveStandby exceptions: a few dozen routes at most, far below 480.
    assert!(routes.len() <= 40, "{} routes: {routes:#?}", routes.len());
    assert!(rules.len() <= 6, "{} rules", rules.len());
    assert!(
        routes
            .iter()
            .all(|r| r["description"].as_str().unwrap().contains("/GcpCloud//"))
    );
    // Addresses are unique, inside the pool, and kept in status.
    let listed = expectations(&client, &ns, &BTreeSet::new()).await;
    let vips: BTreeSet<Ipv4Addr> = listed.iter().map(|e| e.1).collect();
    assert_eq!(vips.len(), count);
    let pool: Ipv4Net = "10.200.0.0/20".parse().unwrap();
    assert!(vips.iter().all(|v| pool.contains(v)));
    let vs0: VirtualService = Api::namespaced(client.clone(), &ns)
        .get("vs-0")
        .await
        .unwrap();
    let resources = vs0.status.unwrap().resources.unwrap();
    assert!(
        resources.shared && resources.routes.len() == 2 && resources.firewall.is_some(),
        "{resources:?}"
    );

    // An engine stops: only its routes go first, and every VIP keeps reaching its engines.
    let before: BTreeMap<String, String> = routes
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap().to_string(),
                r["nextHopInstance"]
                    .as_str()
                    .unwrap()
                    .rsplit('/')
                    .next()
                    .unwrap()
                    .to_string(),
            )
        })
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample(
        client.clone(),
        ns.clone(),
        Arc::clone(&stop),
        Check::Reachable,
    );
    let stopped = compute(
        reqwest::Method::POST,
        "zones/us-central1-a/instances/se-1/stop",
    )
    .await;
    let since = stopped["insertTime"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let down: BTreeSet<String> = ["se-1".to_string()].into();
    eventually("se-1 withdrawn, every VIP exact", || {
        exact(&client, &ns, &down)
    })
    .await;
    let deletes: Vec<(String, String)> = route_deletes_since(&since)
        .await
        .into_iter()
        .filter(|(_, name)| before.contains_key(name))
        .collect();
    let last_withdrawal = deletes
        .iter()
        .filter(|(_, n)| before[n] == "se-1")
        .map(|d| &d.0)
        .max();
    let first_other = deletes
        .iter()
        .filter(|(_, n)| before[n] != "se-1")
        .map(|d| &d.0)
        .min();
    assert!(
        last_withdrawal.is_some(),
        "no route to se-1 was deleted: {deletes:?}"
    );
    if let (Some(last), Some(first)) = (last_withdrawal, first_other) {
        assert!(
            last <= first,
            "a route to a running engine went before se-1's were withdrawn: {deletes:?}"
        );
    }
    compute(
        reqwest::Method::POST,
        "zones/us-central1-a/instances/se-1/start",
    )
    .await;
    eventually("se-1 back, every VIP exact", || exact(&client, &ns, &none)).await;
    stop.store(true, Ordering::Relaxed);
    let (samples, violations) = sampler.await.unwrap();
    eprintln!(
        "pool fleet failover: {samples} samples, {} route deletes after the stop, {} of them to se-1 first",
        deletes.len(),
        deletes.iter().filter(|(_, n)| before[n] == "se-1").count()
    );
    assert!(samples >= 3, "only {samples} samples");
    assert!(
        violations.is_empty(),
        "{} violations in {samples} samples: {:?}",
        violations.len(),
        &violations[..violations.len().min(10)]
    );

    // Deleting the objects of one pair: their ports close, the rest stay exact.
    let api: Api<VirtualService> = Api::namespaced(client.clone(), &ns);
    let gone: Vec<(String, Ipv4Addr)> = listed
        .iter()
        .filter(|e| e.3.contains("se-7"))
        .map(|e| (e.0.clone(), e.1))
        .collect();
    for (name, _) in &gone {
        api.delete(name, &DeleteParams::default()).await.unwrap();
    }
    all_ready(&client, &ns, count - gone.len()).await;
    eventually("the deleted VIPs closed, the rest exact", || async {
        exact(&client, &ns, &BTreeSet::new()).await?;
        let firewalls = emulator_collection(url(), "firewalls").await;
        match gone
            .iter()
            .find(|(_, vip)| TEMPLATES.iter().any(|t| opened(&firewalls, *vip, t)))
        {
            Some((name, vip)) => Err(format!("{name}'s {vip} still open")),
            None => Ok(()),
        }
    })
    .await;
}

/// A cloud whose VirtualServices carry their own /32 routes gains a pool around their VIPs:
/// the shared layout takes over and their own routes and rules go, with every VIP reaching
/// exactly its engines and its ports open at every sample; then the pool is removed and on the
/// way back every VIP stays reachable and its ports open (exact again at the end).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrating_to_a_pool_loses_no_reachability() {
    let (client, ns, cloud) = setup("pool-migrate", json!({})).await;
    let count = 16;
    for i in 0..count {
        let vip = format!("10.201.0.{}", 10 + i);
        apply(
            &client,
            service(
                &format!("m-{i}"),
                &cloud,
                json!({"address": vip}),
                &["se-9", "se-10"],
                i % 4 == 3,
                TEMPLATES[i % 2],
            ),
            Some(&ns),
        )
        .await;
    }
    all_ready(&client, &ns, count).await;
    let (own_routes, own_rules) = footprint(&cloud).await;
    assert_eq!(own_routes.len(), 2 * count);
    assert_eq!(own_rules.len(), count);

    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample(client.clone(), ns.clone(), Arc::clone(&stop), Check::Exact);
    let mut manifest = cloud_manifest(
        &cloud,
        url(),
        &json!({"resyncInterval": "5s", "instancePollInterval": "1s"}),
    );
    manifest["spec"]["vipPools"] = json!([{"name": "legacy", "cidr": "10.201.0.0/24"}]);
    apply(&client, manifest, None).await;
    // VIPs join the pool one reconcile at a time, so the layout may pass through intermediate
    // ones (each made before the last goes): wait for the final one. One pair: the pool carries
    // the ActiveActive VIPs (2 routes); the four ActiveStandby VIPs sit apart between them,
    // 2 routes each. 10 instead of 32, and optimal.
    eventually(
        "own routes and rules replaced by the optimal shared ones",
        || async {
            let (routes, rules) = footprint(&cloud).await;
            let own = routes
                .iter()
                .chain(&rules)
                .filter(|r| {
                    r["description"]
                        .as_str()
                        .unwrap_or_default()
                        .contains("/VirtualService/")
                })
                .count();
            if own == 0 && routes.len() == 10 && rules.len() == 2 {
                Ok(())
            } else {
                Err(format!(
                    "{own} own resources left, {} routes, {} rules",
                    routes.len(),
                    rules.len()
                ))
            }
        },
    )
    .await;
    all_ready(&client, &ns, count).await;
    stop.store(true, Ordering::Relaxed);
    let (samples, violations) = sampler.await.unwrap();
    assert!(samples >= 3, "only {samples} samples");
    assert!(
        violations.is_empty(),
        "{} of {samples} samples inexact: {:?}",
        violations.len(),
        &violations[..violations.len().min(5)]
    );
    exact(&client, &ns, &BTreeSet::new()).await.unwrap();

    // And back: the pool goes, every VIP gets its own routes and rule again before the shared
    // ones go. Its own /32 routes win as soon as the first of them is made, so until the last
    // is, a VIP may reach fewer of its engines: reachable at every sample, exact at the end.
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample(
        client.clone(),
        ns.clone(),
        Arc::clone(&stop),
        Check::Reachable,
    );
    apply(
        &client,
        cloud_manifest(
            &cloud,
            url(),
            &json!({"resyncInterval": "5s", "instancePollInterval": "1s"}),
        ),
        None,
    )
    .await;
    eventually("shared routes and rules replaced by own ones", || async {
        let (routes, rules) = footprint(&cloud).await;
        let shared = routes
            .iter()
            .chain(&rules)
            .filter(|r| {
                r["description"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("/GcpCloud/")
            })
            .count();
        if shared == 0 && routes.len() == 2 * count && rules.len() == count {
            Ok(())
        } else {
            Err(format!(
                "{shared} shared left, {} routes, {} rules",
                routes.len(),
                rules.len()
            ))
        }
    })
    .await;
    all_ready(&client, &ns, count).await;
    stop.store(true, Ordering::Relaxed);
    let (samples, violations) = sampler.await.unwrap();
    exact(&client, &ns, &BTreeSet::new()).await.unwrap();
    assert!(samples >= 3, "only {samples} samples back");
    assert!(
        violations.is_empty(),
        "{} of {samples} samples inexact on the way back: {:?}",
        violations.len(),
        &violations[..violations.len().min(5)]
    );
}

/// What stops a pool VIP says which field to fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_mistakes_stall_with_the_field() {
    let (client, ns, cloud) = setup(
        "pool-bad",
        json!({"vipPools": [{"name": "in-subnet", "cidr": "10.128.4.0/24"}, {"name": "tiny", "cidr": "10.202.0.0/28"}]}),
    )
    .await;
    apply(
        &client,
        service(
            "nopool",
            &cloud,
            json!({"allocate": {"pool": "nope"}}),
            &["se-9"],
            false,
            &[443],
        ),
        Some(&ns),
    )
    .await;
    let message = wait_stalled::<VirtualService>(&client, Some(&ns), "nopool").await;
    assert!(
        message.contains("spec.vip.allocate.pool")
            && message.contains("'nope'")
            && message.contains("in-subnet, tiny"),
        "{message}"
    );
    apply(
        &client,
        service(
            "subnet",
            &cloud,
            json!({"allocate": {"pool": "in-subnet"}}),
            &["se-9"],
            false,
            &[443],
        ),
        Some(&ns),
    )
    .await;
    let message = wait_stalled::<VirtualService>(&client, Some(&ns), "subnet").await;
    assert!(
        message.contains("overlaps subnetwork 'default'") && message.contains("spec.vipPools"),
        "{message}"
    );
    // The cloud says it too.
    wait_event(
        &client,
        &cloud,
        "PoolRefused",
        "'in-subnet' (10.128.4.0/24)",
    )
    .await;
    // A /28 has fourteen usable addresses (its first and last are never handed out).
    let names: Vec<String> = (1..=15).map(|i| format!("t{i}")).collect();
    for name in &names {
        apply(
            &client,
            service(
                name,
                &cloud,
                json!({"allocate": {"pool": "tiny"}}),
                &["se-9"],
                false,
                &[443],
            ),
            Some(&ns),
        )
        .await;
    }
    eventually("fourteen get an address, one stalls", || async {
        let api: Api<VirtualService> = Api::namespaced(client.clone(), &ns);
        let mut vips = BTreeSet::new();
        let mut exhausted = 0;
        for name in &names {
            let status = support::operator::status_of(&api, name).await;
            if let Some(vip) = status["vip"].as_str() {
                vips.insert(vip.to_string());
            }
            if support::operator::condition(&status, "Stalled")
                .is_some_and(|c| c.0 == "True" && c.2.contains("has no free address"))
            {
                exhausted += 1;
            }
        }
        let usable: BTreeSet<String> = (1..=14).map(|i| format!("10.202.0.{i}")).collect();
        if vips == usable && exhausted == 1 {
            Ok(())
        } else {
            Err(format!("{vips:?}, {exhausted} exhausted"))
        }
    })
    .await;
}

/// The quota forecast: `status.quota` says what the plan needs and the use it leads to,
/// `kubectl get gcpcloud` shows ROUTES used/limit, and `QuotaWarning` turns True (with a Warning
/// event) when the plan needs more than 90 % of a limit; the default project is far from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quota_forecast_warns_near_a_limit() {
    let (client, ns, cloud) = setup(
        "pool-quota",
        json!({"project": "tight-project", "vipPools": [{"name": "vips", "cidr": "10.203.0.0/24"}]}),
    )
    .await;
    for (i, standby) in [(0, false), (1, false), (2, true)] {
        apply(
            &client,
            service(
                &format!("q-{i}"),
                &cloud,
                json!({"allocate": {"pool": "vips"}}),
                &["se-1", "se-2"],
                standby,
                &[443],
            ),
            Some(&ns),
        )
        .await;
    }
    all_ready(&client, &ns, 3).await;
    let clouds: Api<adc_operator::api::GcpCloud> = Api::all(client.clone());
    eventually("QuotaWarning True, ROUTES 4/4", || async {
        let status = support::operator::status_of(&clouds, &cloud).await;
        let warning = support::operator::condition(&status, "QuotaWarning");
        let routes = status["quota"]
            .as_array()
            .and_then(|q| q.iter().find(|q| q["metric"] == "ROUTES").cloned())
            .unwrap_or_default();
        match warning {
            Some((s, reason, message))
                if s == "True"
                    && reason == "PlanNearLimit"
                    && message.contains("ROUTES (global): the plan needs 4 of 4 (100%)")
                    && status["routes"] == "4/4"
                    && routes["needed"] == 4.0
                    && routes["projected"] == 4.0 =>
            {
                Ok(())
            }
            other => Err(format!("{other:?} {routes} {}", status["routes"])),
        }
    })
    .await;
    let printed = std::process::Command::new(&PLANE.get().binaries.kubectl)
        .args(["get", "gcpcloud", &cloud])
        .env("KUBECONFIG", &PLANE.get().kubeconfig)
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&printed.stdout).to_string();
    assert!(
        printed.contains("ROUTES") && printed.contains("4/4"),
        "{printed}"
    );
    wait_event(&client, &cloud, "QuotaForecast", "ROUTES").await;

    // A change of the cloud's spec rebuilds its engine and pool state from the objects'
    // status: every VIP keeps its address.
    let api: Api<VirtualService> = Api::namespaced(client.clone(), &ns);
    let vips = || async {
        let mut vips = BTreeMap::new();
        for vs in api.list(&ListParams::default()).await.unwrap() {
            vips.insert(
                vs.metadata.name.clone().unwrap(),
                vs.status.and_then(|s| s.vip),
            );
        }
        vips
    };
    let before = vips().await;
    apply(
        &client,
        cloud_manifest(
            &cloud,
            url(),
            &json!({"project": "tight-project", "resyncInterval": "3s", "instancePollInterval": "1s",
                    "vipPools": [{"name": "vips", "cidr": "10.203.0.0/24"}]}),
        ),
        None,
    )
    .await;
    // A fourth VIP with a set of routes of its own needs two more routes than the project has:
    // it stalls with QuotaExceeded, and the others stay exactly as they are.
    apply(
        &client,
        service(
            "q-3",
            &cloud,
            json!({"allocate": {"pool": "vips"}}),
            &["se-2", "se-1"],
            true,
            &[443],
        ),
        Some(&ns),
    )
    .await;
    let message = eventually_stalled(&api, "q-3", "QuotaExceeded").await;
    assert!(message.contains("ROUTES"), "{message}");
    let after = vips().await;
    for (name, vip) in &before {
        assert!(vip.is_some(), "{name} had no VIP");
        assert_eq!(after.get(name), Some(vip), "{name} changed its VIP");
    }
    let held: Vec<&String> = after.values().flatten().collect();
    let distinct: BTreeSet<&&String> = held.iter().collect();
    assert_eq!(distinct.len(), held.len(), "{after:?}");
    for name in ["q-0", "q-1", "q-2"] {
        wait_ready::<VirtualService>(&client, Some(&ns), name).await;
    }
}

/// Waits until the GcpCloud `cloud` has an event `reason` whose note contains `note`.
async fn wait_event(client: &Client, cloud: &str, reason: &str, note: &str) {
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::all(client.clone());
    eventually(&format!("a {reason} event on {cloud}"), || async {
        let list = events
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?;
        list.items
            .iter()
            .find(|e| {
                e.reason.as_deref() == Some(reason)
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(cloud)
                    && e.note.as_deref().is_some_and(|n| n.contains(note))
            })
            .map(|_| ())
            .ok_or_else(|| "none yet".to_string())
    })
    .await;
}

/// Waits until `name` is Stalled with `reason`; its message.
async fn eventually_stalled(api: &Api<VirtualService>, name: &str, reason: &str) -> String {
    eventually(&format!("{name} stalled with {reason}"), || async {
        let status = support::operator::status_of(api, name).await;
        match support::operator::condition(&status, "Stalled") {
            Some((s, r, _)) if s == "True" && r == reason => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let status = support::operator::status_of(api, name).await;
    support::operator::condition(&status, "Stalled")
        .map(|c| c.2)
        .unwrap_or_default()
}
