//! ILB mode on real parts: kube-apiserver + etcd, gce-emulator as a process (its ILB
//! collections and its health model: an engine is HEALTHY while RUNNING and the probe ranges
//! may reach it), and the adc-operator binary. Whether a VIP is served is computed from the
//! emulator alone: by Compute's route selection for a VIP carried by routes, and for a VIP
//! carried by a load balancer by its forwarding rule and the backend service's own
//! `getHealth` answer.

use crate::support;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use adc_operator::api::{HealthState, VipMode, VirtualService};
use kube::Client;
use kube::api::{Api, DeleteParams};
use serde_json::{Value, json};
use support::Plane;
use support::operator::{
    Suite, apply, cloud_manifest, effective, emulator_collection, label_tenant, wait_ready,
};

const PLANE: Plane = Plane::Ilb;

/// A subnetwork for ILB VIPs, and engines over two zones. Each test has engines of its own:
/// Compute lets an instance be in one load-balanced group only, and each test's cloud makes
/// its own groups.
const WORLD: &str = "projects:
  - id: demo-project
    networks:
      - name: default
        subnetworks:
          - {name: default, region: us-central1, ipCidrRange: 10.128.0.0/20}
    instances:
      - {name: se-1, zone: us-central1-a, networkIP: 10.128.0.10, canIpForward: true}
      - {name: se-2, zone: us-central1-b, networkIP: 10.128.0.11, canIpForward: true}
      - {name: se-3, zone: us-central1-a, networkIP: 10.128.0.12, canIpForward: true}
      - {name: se-4, zone: us-central1-a, networkIP: 10.128.0.13, canIpForward: true}
      - {name: se-5, zone: us-central1-b, networkIP: 10.128.0.14, canIpForward: true}
      - {name: se-6, zone: us-central1-a, networkIP: 10.128.0.15, canIpForward: true}
      - {name: se-7, zone: us-central1-b, networkIP: 10.128.0.16, canIpForward: true}
  - id: net-host
    networks:
      - name: shared
        subnetworks:
          - {name: shared-sub, region: us-central1, ipCidrRange: 10.140.0.0/20}
  - id: svc-project
    networkProject: net-host
    instances:
      - {name: xpn-1, zone: us-central1-a, network: shared, networkIP: 10.140.0.10, canIpForward: true}
      - {name: xpn-2, zone: us-central1-a, network: shared, networkIP: 10.140.0.11, canIpForward: true}
";

/// The instance poll interval of the tests' clouds: health is read this often.
const POLL: Duration = Duration::from_secs(2);

fn fixture() -> &'static Suite {
    static FIXTURE: OnceLock<Suite> = OnceLock::new();
    FIXTURE.get_or_init(|| Suite::start(PLANE, WORLD, "ilb-cluster", &[]))
}

fn url() -> &'static str {
    &fixture().emulator.base_url
}

async fn compute(method: reqwest::Method, path: &str, body: Value) -> Value {
    support::operator::compute(url(), method, path, body).await
}

/// A tenant namespace and a Ready GcpCloud.
async fn setup(prefix: &str) -> (Client, String, String) {
    let fixture = fixture();
    let client = PLANE.admin_client().await;
    let namespace = support::test_namespace(&client, prefix).await;
    label_tenant(&client, &namespace).await;
    let cloud = format!("cloud-{namespace}");
    let spec =
        json!({"resyncInterval": "30s", "instancePollInterval": format!("{}s", POLL.as_secs())});
    apply(
        &client,
        cloud_manifest(&cloud, &fixture.emulator.base_url, &spec),
        None,
    )
    .await;
    wait_ready::<adc_operator::api::GcpCloud>(&client, None, &cloud).await;
    (client, namespace, cloud)
}

fn zone(engine: &str) -> &'static str {
    if ["se-2", "se-5", "se-7"].contains(&engine) {
        "us-central1-b"
    } else {
        "us-central1-a"
    }
}

/// A VirtualService in `mode` (`ILB` or `Routes`) on `engines`, port 443.
fn service(
    name: &str,
    cloud: &str,
    vip: &str,
    engines: &[&str],
    mode: &str,
    standby: bool,
) -> Value {
    json!({
        "apiVersion": "adc.dev/v1alpha1", "kind": "VirtualService", "metadata": {"name": name},
        "spec": {"cloudRef": cloud, "vip": {"address": vip}, "vipMode": mode,
                 "ports": [{"port": 443}], "sourceRanges": ["10.0.0.0/8"],
                 "mode": if standby { "ActiveStandby" } else { "ActiveActive" },
                 "serviceEngines": engines.iter().map(|e| json!({"name": e, "zone": zone(e)})).collect::<Vec<_>>()}
    })
}

async fn eventually<F, Fut>(what: &str, check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    support::eventually_within(what, 120, check).await;
}

async fn status_of(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Option<adc_operator::api::VirtualServiceStatus> {
    let api: Api<VirtualService> = Api::namespaced(client.clone(), namespace);
    api.get(name).await.ok().and_then(|vs| vs.status)
}

/// Whether the Ready condition is True for the current generation.
async fn ready(client: &Client, namespace: &str, name: &str) -> bool {
    let api: Api<VirtualService> = Api::namespaced(client.clone(), namespace);
    api.get(name).await.ok().is_some_and(|vs| {
        vs.status.as_ref().is_some_and(|s| {
            s.conditions.iter().any(|c| {
                c.type_ == "Ready"
                    && c.status == "True"
                    && c.observed_generation == vs.metadata.generation
            })
        })
    })
}

/// The ILB resources of one object's marker in the emulator, by collection.
async fn owned(collection: &str, marker: &str) -> Vec<Value> {
    emulator_collection(url(), collection)
        .await
        .into_iter()
        .filter(|r| {
            r["description"]
                .as_str()
                .is_some_and(|d| d.contains(marker))
        })
        .collect()
}

/// The usage of a quota `metric` in `project`: project-wide (`projects.get`), or in the
/// cloud's region (`regions.get`).
async fn quota_usage(project: &str, regional: bool, metric: &str) -> f64 {
    let path = if regional { "regions/us-central1" } else { "" };
    let answer =
        support::operator::compute_in(url(), project, reqwest::Method::GET, path, json!({})).await;
    answer["quotas"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|q| q["metric"] == metric)
        .and_then(|q| q["usage"].as_f64())
        .unwrap_or(-1.0)
}

/// The engines a load balancer sends `vip`'s traffic to, by the emulator alone: the internal
/// forwarding rules holding the VIP, their backend services, and what `getHealth` says of each
/// backend group's instances.
async fn balanced(vip: Ipv4Addr) -> BTreeSet<String> {
    let rules = emulator_collection(url(), "forwardingRules").await;
    let services = emulator_collection(url(), "backendServices").await;
    let mut healthy = BTreeSet::new();
    for rule in rules.iter().filter(|r| {
        r["IPAddress"] == json!(vip.to_string()) && r["loadBalancingScheme"] == "INTERNAL"
    }) {
        let Some(service_link) = rule["backendService"].as_str() else {
            continue;
        };
        let Some(service) = services
            .iter()
            .find(|s| s["selfLink"].as_str() == Some(service_link))
        else {
            continue;
        };
        let (project, path) = service_link
            .split("/projects/")
            .nth(1)
            .and_then(|rest| rest.split_once('/'))
            .unwrap_or_default();
        for backend in service["backends"].as_array().into_iter().flatten() {
            let group = backend["group"].as_str().unwrap_or_default();
            let health = support::operator::compute_in(
                url(),
                project,
                reqwest::Method::POST,
                &format!("{path}/getHealth"),
                json!({"group": group}),
            )
            .await;
            for status in health["healthStatus"].as_array().into_iter().flatten() {
                if status["healthState"] == "HEALTHY" {
                    healthy.insert(
                        status["instance"]
                            .as_str()
                            .unwrap_or_default()
                            .rsplit('/')
                            .next()
                            .unwrap_or_default()
                            .to_string(),
                    );
                }
            }
        }
    }
    healthy
}

/// The region's operations (every page) whose target is one of `names`.
async fn operations_on(names: &[String]) -> usize {
    let mut count = 0;
    let mut token = String::new();
    loop {
        let page = compute(
            reqwest::Method::GET,
            &format!("regions/us-central1/operations?maxResults=500&pageToken={token}"),
            json!({}),
        )
        .await;
        count += page["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|op| {
                let target = op["targetLink"].as_str().unwrap_or_default();
                names.iter().any(|n| target.ends_with(&format!("/{n}")))
            })
            .count();
        match page["nextPageToken"].as_str() {
            Some(next) if !next.is_empty() => token = next.to_string(),
            _ => return count,
        }
    }
}

/// The engines `vip` reaches now, by routes or by a load balancer.
async fn served(vip: Ipv4Addr) -> BTreeSet<String> {
    let routes = emulator_collection(url(), "routes").await;
    let mut engines = effective(&routes, vip);
    engines.extend(balanced(vip).await);
    engines
}

#[tokio::test]
async fn an_ilb_virtual_service_converges_shares_groups_and_leaves_nothing() {
    let (client, ns, cloud) = setup("ilb-converge").await;
    apply(
        &client,
        service(
            "web",
            &cloud,
            "10.128.0.100",
            &["se-1", "se-2"],
            "ILB",
            false,
        ),
        Some(&ns),
    )
    .await;
    apply(
        &client,
        service(
            "api",
            &cloud,
            "10.128.0.101",
            &["se-1", "se-3"],
            "ILB",
            false,
        ),
        Some(&ns),
    )
    .await;
    eventually("both Ready", || async {
        for name in ["web", "api"] {
            if !ready(&client, &ns, name).await {
                return Err(format!(
                    "{name} not Ready: {:?}",
                    status_of(&client, &ns, name).await.map(|s| s.conditions)
                ));
            }
        }
        Ok(())
    })
    .await;
    let marker = |name: &str| format!("/{cloud}/VirtualService/{ns}/{name} ");
    for name in ["web", "api"] {
        let m = marker(name);
        assert_eq!(
            owned("healthChecks", &m).await.len(),
            1,
            "{name}: one health check"
        );
        let services = owned("backendServices", &m).await;
        assert_eq!(services.len(), 1, "{name}: one backend service");
        assert_eq!(services[0]["loadBalancingScheme"], "INTERNAL");
        assert_eq!(services[0]["backends"].as_array().map(Vec::len), Some(2));
        let rules = owned("forwardingRules", &m).await;
        assert_eq!(rules.len(), 1, "{name}: one forwarding rule");
        assert_eq!(rules[0]["ports"], json!(["443"]));
        assert_eq!(
            owned("firewalls", &m).await.len(),
            1,
            "{name}: its VIP's rule"
        );
        let status = status_of(&client, &ns, name).await.unwrap();
        assert_eq!(status.vip_mode, Some(VipMode::Ilb));
        assert!(
            status
                .engine_health
                .iter()
                .all(|e| e.state == HealthState::Healthy),
            "{:?}",
            status.engine_health
        );
        assert_eq!(status.active_service_engines.len(), 2);
        assert!(
            status
                .resources
                .as_ref()
                .is_some_and(|r| r.forwarding_rules.len() == 1 && r.instance_groups.len() == 2)
        );
    }
    // One group per engine, shared: se-1's serves both objects.
    let cloud_marker = format!("/{cloud}/GcpCloud/ilb/{cloud} ");
    let groups = owned("instanceGroups", &cloud_marker).await;
    assert_eq!(groups.len(), 3, "se-1, se-2, se-3: {groups:#?}");
    assert!(groups.iter().all(|g| g["size"] == 1));
    let probe = owned("firewalls", &cloud_marker).await;
    assert_eq!(probe.len(), 1);
    assert_eq!(
        probe[0]["sourceRanges"],
        json!(["35.191.0.0/16", "130.211.0.0/22"])
    );
    assert_eq!(
        served("10.128.0.100".parse().unwrap()).await,
        ["se-1".to_string(), "se-2".to_string()].into()
    );
    let routes = owned("routes", &format!("/{cloud}/")).await;
    assert!(routes.is_empty(), "ILB mode makes no route: {routes:#?}");

    // web goes: its pieces and se-2's group; se-1's group stays for api.
    let api: Api<VirtualService> = Api::namespaced(client.clone(), &ns);
    api.delete("web", &DeleteParams::default()).await.unwrap();
    eventually("web's pieces and se-2's group gone", || async {
        let m = marker("web");
        for collection in [
            "healthChecks",
            "backendServices",
            "forwardingRules",
            "firewalls",
        ] {
            let left = owned(collection, &m).await;
            if !left.is_empty() {
                return Err(format!("{collection}: {} left", left.len()));
            }
        }
        let groups = owned("instanceGroups", &cloud_marker).await;
        if groups.len() != 2 {
            return Err(format!("{} groups", groups.len()));
        }
        Ok(())
    })
    .await;
    assert!(ready(&client, &ns, "api").await);
    assert_eq!(
        served("10.128.0.101".parse().unwrap()).await,
        ["se-1".to_string(), "se-3".to_string()].into()
    );

    api.delete("api", &DeleteParams::default()).await.unwrap();
    eventually("nothing left", || async {
        let mut left = Vec::new();
        for collection in [
            "healthChecks",
            "backendServices",
            "forwardingRules",
            "instanceGroups",
        ] {
            left.extend(
                emulator_collection(url(), collection)
                    .await
                    .into_iter()
                    .filter(|r| {
                        r["description"]
                            .as_str()
                            .is_some_and(|d| d.contains(&format!("/{cloud}/")))
                    }),
            );
        }
        left.extend(owned("firewalls", &format!("/{cloud}/")).await);
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{} left: {:?}",
                left.len(),
                left.iter().map(|r| &r["name"]).collect::<Vec<_>>()
            ))
        }
    })
    .await;
}

#[tokio::test]
async fn a_stopped_engine_shows_unhealthy_with_no_write_and_the_standby_takes_over() {
    let (client, ns, cloud) = setup("ilb-health").await;
    apply(
        &client,
        service(
            "pair",
            &cloud,
            "10.128.0.110",
            &["se-4", "se-5"],
            "ILB",
            true,
        ),
        Some(&ns),
    )
    .await;
    eventually("pair Ready", || async {
        if ready(&client, &ns, "pair").await {
            Ok(())
        } else {
            Err(format!(
                "not Ready: {:?}",
                status_of(&client, &ns, "pair").await
            ))
        }
    })
    .await;
    let services = owned(
        "backendServices",
        &format!("/{cloud}/VirtualService/{ns}/pair "),
    )
    .await;
    let backends = services[0]["backends"].as_array().unwrap().clone();
    assert_eq!(backends.len(), 2);
    assert_eq!(
        backends[0].get("failover"),
        None,
        "se-4 primary: {backends:?}"
    );
    assert_eq!(backends[1]["failover"], true, "se-5 stands by");
    assert!(services[0].get("failoverPolicy").is_some());

    // Its forwarding rule and backend service: what a failover must not write to.
    let resources = status_of(&client, &ns, "pair")
        .await
        .unwrap()
        .resources
        .unwrap();
    let pieces: Vec<String> = resources
        .forwarding_rules
        .iter()
        .chain(&resources.backend_services)
        .cloned()
        .collect();
    assert_eq!(pieces.len(), 2, "{resources:?}");
    let before = operations_on(&pieces).await;
    compute(
        reqwest::Method::POST,
        "zones/us-central1-a/instances/se-4/stop",
        json!({}),
    )
    .await;
    let stopped = Instant::now();
    eventually("se-4 UNHEALTHY in the status", || async {
        let status = status_of(&client, &ns, "pair").await.unwrap_or_default();
        match status.engine_health.iter().find(|e| e.name == "se-4") {
            Some(e) if e.state == HealthState::Unhealthy => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let took = stopped.elapsed();
    eprintln!(
        "ilb failover: se-4 UNHEALTHY in the status {took:?} after its stop was sent (poll {POLL:?})"
    );
    // The stop's operation, one poll, one reconcile and its status patch: two intervals and a
    // margin for two suites on two cores.
    assert!(
        took <= 2 * POLL + Duration::from_secs(4),
        "the status said so after {took:?}"
    );
    let status = status_of(&client, &ns, "pair").await.unwrap();
    assert_eq!(status.active_service_engines, ["se-5"]);
    assert!(ready(&client, &ns, "pair").await, "the standby serves");
    assert_eq!(
        served("10.128.0.110".parse().unwrap()).await,
        ["se-5".to_string()].into()
    );
    assert_eq!(
        operations_on(&pieces).await,
        before,
        "no rule or service write on a failover"
    );
    assert!(
        owned("routes", &format!("/{cloud}/")).await.is_empty(),
        "no route"
    );

    compute(
        reqwest::Method::POST,
        "zones/us-central1-b/instances/se-5/stop",
        json!({}),
    )
    .await;
    eventually("Ready=False NoHealthyEngine", || async {
        let status = status_of(&client, &ns, "pair").await.unwrap_or_default();
        let condition = status.conditions.iter().find(|c| c.type_ == "Ready");
        match condition {
            Some(c) if c.status == "False" && c.reason == "NoHealthyEngine" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    for (zone, engine) in [("us-central1-a", "se-4"), ("us-central1-b", "se-5")] {
        compute(
            reqwest::Method::POST,
            &format!("zones/{zone}/instances/{engine}/start"),
            json!({}),
        )
        .await;
    }
    eventually("both HEALTHY again", || async {
        let status = status_of(&client, &ns, "pair").await.unwrap_or_default();
        if status
            .engine_health
            .iter()
            .all(|e| e.state == HealthState::Healthy)
            && ready(&client, &ns, "pair").await
        {
            Ok(())
        } else {
            Err(format!("{:?}", status.engine_health))
        }
    })
    .await;
    assert_eq!(operations_on(&pieces).await, before);
    assert!(owned("routes", &format!("/{cloud}/")).await.is_empty());
}

#[tokio::test]
async fn switching_routes_to_ilb_and_back_keeps_the_service_reachable() {
    let (client, ns, cloud) = setup("ilb-switch").await;
    // Routes mode needs a VIP outside every subnetwork, ILB one inside: the switch moves it.
    let routed: Ipv4Addr = "10.50.0.5".parse().unwrap();
    let balanced_vip: Ipv4Addr = "10.128.0.120".parse().unwrap();
    apply(
        &client,
        service(
            "flip",
            &cloud,
            &routed.to_string(),
            &["se-6", "se-7"],
            "Routes",
            false,
        ),
        Some(&ns),
    )
    .await;
    eventually("Ready in Routes mode", || async {
        if ready(&client, &ns, "flip").await {
            Ok(())
        } else {
            Err("not Ready".into())
        }
    })
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let stop = Arc::clone(&stop);
        let client = client.clone();
        let ns = ns.clone();
        tokio::spawn(async move {
            let (mut samples, mut violations) = (0usize, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                samples += 1;
                let status_vip = status_of(&client, &ns, "flip").await.and_then(|s| s.vip);
                let a = served(routed).await;
                let b = served(balanced_vip).await;
                if a.is_empty() && b.is_empty() {
                    violations.push(format!("sample {samples}: neither {routed} nor {balanced_vip} is served (status.vip {status_vip:?})"));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (samples, violations)
        })
    };
    apply(
        &client,
        service(
            "flip",
            &cloud,
            &balanced_vip.to_string(),
            &["se-6", "se-7"],
            "ILB",
            false,
        ),
        Some(&ns),
    )
    .await;
    eventually("Ready in ILB mode, the routes gone", || async {
        let status = status_of(&client, &ns, "flip").await.unwrap_or_default();
        let routes = emulator_collection(url(), "routes").await;
        if ready(&client, &ns, "flip").await
            && status.vip_mode == Some(VipMode::Ilb)
            && routes.is_empty()
        {
            Ok(())
        } else {
            Err(format!(
                "mode {:?}, {} routes",
                status.vip_mode,
                routes.len()
            ))
        }
    })
    .await;
    assert_eq!(served(balanced_vip).await.len(), 2);
    apply(
        &client,
        service(
            "flip",
            &cloud,
            &routed.to_string(),
            &["se-6", "se-7"],
            "Routes",
            false,
        ),
        Some(&ns),
    )
    .await;
    eventually("Ready in Routes mode again, the balancer gone", || async {
        let status = status_of(&client, &ns, "flip").await.unwrap_or_default();
        let rules = owned("forwardingRules", &format!("/{cloud}/")).await;
        let services = owned("backendServices", &format!("/{cloud}/")).await;
        if ready(&client, &ns, "flip").await
            && status.vip_mode == Some(VipMode::Routes)
            && rules.is_empty()
            && services.is_empty()
        {
            Ok(())
        } else {
            Err(format!(
                "mode {:?}, {} rules, {} services",
                status.vip_mode,
                rules.len(),
                services.len()
            ))
        }
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let (samples, violations) = sampler.await.unwrap();
    eprintln!(
        "ilb switch: {samples} samples, {} violations",
        violations.len()
    );
    assert!(samples >= 5, "only {samples} samples");
    assert!(violations.is_empty(), "{violations:#?}");
    assert_eq!(
        effective(&emulator_collection(url(), "routes").await, routed).len(),
        2
    );
}

#[tokio::test]
async fn a_shared_vpc_cloud_converges_in_both_modes_and_charges_each_project() {
    let client = PLANE.admin_client().await;
    let ns = support::test_namespace(&client, "ilb-xpn").await;
    label_tenant(&client, &ns).await;
    let cloud = format!("cloud-{ns}");
    let mut manifest = cloud_manifest(
        &cloud,
        url(),
        &json!({"resyncInterval": "30s", "instancePollInterval": format!("{}s", POLL.as_secs())}),
    );
    manifest["spec"]["project"] = json!("svc-project");
    manifest["spec"]["networkProject"] = json!("net-host");
    manifest["spec"]["network"] = json!("shared");
    apply(&client, manifest, None).await;
    wait_ready::<adc_operator::api::GcpCloud>(&client, None, &cloud).await;
    let routes_before = quota_usage("net-host", false, "ROUTES").await;
    let rules_before = quota_usage("svc-project", true, "FORWARDING_RULES").await;

    let engines = ["xpn-1", "xpn-2"];
    apply(
        &client,
        service("routed", &cloud, "10.60.0.5", &engines, "Routes", false),
        Some(&ns),
    )
    .await;
    apply(
        &client,
        service("balanced", &cloud, "10.140.0.100", &engines, "ILB", false),
        Some(&ns),
    )
    .await;
    eventually("both Ready", || async {
        for name in ["routed", "balanced"] {
            if !ready(&client, &ns, name).await {
                return Err(format!("{name}: {:?}", status_of(&client, &ns, name).await));
            }
        }
        Ok(())
    })
    .await;

    // Routes mode: the host's routes reach the engines by their addresses.
    let marker = format!("/{cloud}/VirtualService/{ns}/routed ");
    let routes = owned("routes", &marker).await;
    assert_eq!(routes.len(), 2, "{routes:#?}");
    let mut hops: Vec<&str> = routes
        .iter()
        .filter_map(|r| r["nextHopIp"].as_str())
        .collect();
    hops.sort_unstable();
    assert_eq!(hops, ["10.140.0.10", "10.140.0.11"]);
    for route in &routes {
        assert!(route.get("nextHopInstance").is_none(), "{route}");
        assert!(
            route["selfLink"]
                .as_str()
                .unwrap()
                .contains("/projects/net-host/global/routes/")
        );
    }
    for rule in owned("firewalls", &format!("/{cloud}/")).await {
        assert!(
            rule["selfLink"]
                .as_str()
                .unwrap()
                .contains("/projects/net-host/"),
            "{rule}"
        );
    }
    // ILB mode: the balancer in the service project, on the host's subnetwork.
    let balanced_marker = format!("/{cloud}/VirtualService/{ns}/balanced ");
    let rules = owned("forwardingRules", &balanced_marker).await;
    assert_eq!(rules.len(), 1);
    assert!(
        rules[0]["selfLink"]
            .as_str()
            .unwrap()
            .contains("/projects/svc-project/")
    );
    assert!(
        rules[0]["subnetwork"]
            .as_str()
            .unwrap()
            .contains("/projects/net-host/regions/us-central1/subnetworks/shared-sub")
    );
    for collection in ["backendServices", "healthChecks"] {
        let pieces = owned(collection, &balanced_marker).await;
        assert_eq!(pieces.len(), 1, "{collection}");
        assert!(
            pieces[0]["selfLink"]
                .as_str()
                .unwrap()
                .contains("/projects/svc-project/")
        );
    }
    assert_eq!(
        balanced("10.140.0.100".parse().unwrap()).await,
        ["xpn-1".to_string(), "xpn-2".to_string()].into()
    );

    // Each project is charged for what lives in it.
    assert_eq!(
        quota_usage("net-host", false, "ROUTES").await,
        routes_before + 2.0
    );
    assert_eq!(quota_usage("svc-project", false, "ROUTES").await, 0.0);
    assert_eq!(
        quota_usage("svc-project", true, "FORWARDING_RULES").await,
        rules_before + 1.0
    );
    assert_eq!(quota_usage("net-host", true, "FORWARDING_RULES").await, 0.0);

    let api: Api<VirtualService> = Api::namespaced(client.clone(), &ns);
    for name in ["routed", "balanced"] {
        api.delete(name, &DeleteParams::default()).await.unwrap();
    }
    eventually("nothing of the cloud left in either project", || async {
        let mut left = 0;
        for collection in [
            "routes",
            "firewalls",
            "forwardingRules",
            "backendServices",
            "healthChecks",
            "instanceGroups",
        ] {
            left += owned(collection, &format!("/{cloud}/")).await.len();
        }
        if left == 0 {
            Ok(())
        } else {
            Err(format!("{left} left"))
        }
    })
    .await;
}
