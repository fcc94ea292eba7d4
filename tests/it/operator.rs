//! The whole loop on real parts: kube-apiserver + etcd, gce-emulator as a process, and the
//! adc-operator binary. One operator and one emulator per test binary; every test works in its
//! own namespace with its own GcpCloud and its own VIPs.

use crate::support;

use std::process::{Child, Command};
use std::sync::OnceLock;
use std::time::Duration;

use adc_operator::api::{VirtualService, VpcRoute};
use adc_testenv::{EmulatorProcess, emulator_binary};
use kube::Client;
use kube::api::{Api, DeleteParams};
use serde_json::{Value, json};
use support::Plane;
use support::eventually;
use support::operator::{
    OperatorSpec, PROJECT, WORLD, apply, tenant, virtual_service, wait_ready, wait_stalled,
};

/// This suite's control plane, shared with no other suite: its operator reconciles every GcpCloud
/// of the cluster.
const PLANE: Plane = Plane::Operator;

struct Fixture {
    emulator: EmulatorProcess,
    operator: std::sync::Mutex<Child>,
}

/// Starts the operator binary against the shared control plane and this emulator.
fn start_operator(emulator: &EmulatorProcess) -> Child {
    OperatorSpec::shared(PLANE, emulator, "test-cluster").start()
}

/// Applies the CRDs, starts the emulator and the operator once for this suite. Statics
/// are never dropped: every process is spawned to die with the test binary (parent-death
/// signal), also when it panics or is killed.
fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        PLANE.install_crds();

        let emulator = EmulatorProcess::start(
            &emulator_binary().expect("emulator"),
            WORLD,
            &["--auth", "token"],
        )
        .expect("emulator");
        let operator = start_operator(&emulator);
        Fixture {
            operator: std::sync::Mutex::new(operator),
            emulator,
        }
    })
}

async fn setup(prefix: &str) -> (Client, String, String) {
    setup_with(prefix, json!({"resyncInterval": "1s"})).await
}

/// A fresh tenant namespace and a Ready GcpCloud for it, with `spec` merged into the cloud's
/// spec.
async fn setup_with(prefix: &str, spec: Value) -> (Client, String, String) {
    let fixture = fixture();
    let client = PLANE.admin_client().await;
    let (namespace, cloud) = tenant(&client, &fixture.emulator.base_url, prefix, spec).await;
    (client, namespace, cloud)
}

/// The emulator's routes whose destRange is `dest`, as (name, nextHop instance, priority).
async fn routes_to(dest: &str) -> Vec<(String, String, u64)> {
    support::operator::routes_to(&fixture().emulator.base_url, dest).await
}

async fn firewalls_to(dest: &str) -> Vec<Value> {
    support::operator::firewalls_to(&fixture().emulator.base_url, dest).await
}

/// One Compute call as the operator makes it (a metadata-server token), with a JSON body.
async fn compute(method: reqwest::Method, path: &str, body: Value) -> Value {
    support::operator::compute(&fixture().emulator.base_url, method, path, body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn virtual_service_lifecycle() {
    let (client, ns, cloud) = setup("vs-life").await;
    let vip = "10.21.0.1";
    apply(
        &client,
        virtual_service(
            "web",
            &cloud,
            vip,
            &[("se-1", "us-central1-a"), ("se-2", "us-central1-b")],
            "ActiveActive",
        ),
        Some(&ns),
    )
    .await;
    wait_ready::<VirtualService>(&client, Some(&ns), "web").await;
    let routes = routes_to(&format!("{vip}/32")).await;
    assert_eq!(
        routes
            .iter()
            .map(|r| (r.1.as_str(), r.2))
            .collect::<Vec<_>>(),
        [("se-1", 2000), ("se-2", 2000)]
    );
    assert_eq!(firewalls_to(&format!("{vip}/32")).await.len(), 1);
    let api: Api<VirtualService> = Api::namespaced(client.clone(), &ns);
    let vs = api.get("web").await.unwrap();
    let status = vs.status.clone().unwrap();
    assert_eq!(status.vip.as_deref(), Some(vip));
    assert_eq!(status.active_service_engines, ["se-1", "se-2"]);
    assert_eq!(status.observed_generation, vs.metadata.generation);
    assert_eq!(status.resources.unwrap().routes.len(), 2);

    // kubectl wait understands the condition.
    let plane = PLANE.get();
    let waited = Command::new(&plane.binaries.kubectl)
        .args([
            "wait",
            "--for=condition=Ready",
            "--timeout=20s",
            "-n",
            &ns,
            "virtualservice/web",
        ])
        .env("KUBECONFIG", &plane.kubeconfig)
        .output()
        .unwrap();
    assert!(
        waited.status.success(),
        "{}",
        String::from_utf8_lossy(&waited.stderr)
    );

    // Applying the same manifest again changes nothing, and a converged object is not rewritten:
    // same generation, same status, and the operator's status write is the same as before.
    let operator_write = |vs: &VirtualService| {
        vs.metadata
            .managed_fields
            .as_ref()
            .and_then(|fields| {
                fields
                    .iter()
                    .find(|f| f.manager.as_deref() == Some("adc-operator"))
            })
            .map(|f| f.time.clone())
    };
    let before = api.get("web").await.unwrap();
    apply(
        &client,
        virtual_service(
            "web",
            &cloud,
            vip,
            &[("se-1", "us-central1-a"), ("se-2", "us-central1-b")],
            "ActiveActive",
        ),
        Some(&ns),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = api.get("web").await.unwrap();
    assert_eq!(
        after.metadata.generation, before.metadata.generation,
        "the spec did not change"
    );
    assert_eq!(after.status, before.status, "nor did the status");
    assert_eq!(
        operator_write(&after),
        operator_write(&before),
        "the operator wrote nothing"
    );

    // Update: drop an engine and change the port: the route and the firewall follow.
    let mut updated = virtual_service(
        "web",
        &cloud,
        vip,
        &[("se-2", "us-central1-b")],
        "ActiveActive",
    );
    updated["spec"]["ports"] = json!([{"port": 8443}]);
    apply(&client, updated, Some(&ns)).await;
    eventually("one route and the new firewall", || async {
        let routes = routes_to(&format!("{vip}/32")).await;
        let firewalls = firewalls_to(&format!("{vip}/32")).await;
        let ports = firewalls.first().map(|f| f["allowed"][0]["ports"].clone());
        if routes.len() == 1
            && routes[0].1 == "se-2"
            && firewalls.len() == 1
            && ports == Some(json!(["8443"]))
        {
            Ok(())
        } else {
            Err(format!("{routes:?} {firewalls:?}"))
        }
    })
    .await;

    // Delete: everything goes.
    api.delete("web", &DeleteParams::default()).await.unwrap();
    eventually("resources deleted", || async {
        let left = routes_to(&format!("{vip}/32")).await.len()
            + firewalls_to(&format!("{vip}/32")).await.len();
        if left == 0 && api.get_opt("web").await.unwrap().is_none() {
            Ok(())
        } else {
            Err(format!("{left} left"))
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_drift_and_recovery() {
    let (client, ns, cloud) = setup("vs-fail").await;
    let aa = "10.22.0.1";
    let standby = "10.22.0.2";
    apply(
        &client,
        virtual_service(
            "aa",
            &cloud,
            aa,
            &[("se-3", "us-central1-c"), ("se-4", "us-central1-a")],
            "ActiveActive",
        ),
        Some(&ns),
    )
    .await;
    apply(
        &client,
        virtual_service(
            "as",
            &cloud,
            standby,
            &[("se-3", "us-central1-c"), ("se-4", "us-central1-a")],
            "ActiveStandby",
        ),
        Some(&ns),
    )
    .await;
    wait_ready::<VirtualService>(&client, Some(&ns), "aa").await;
    wait_ready::<VirtualService>(&client, Some(&ns), "as").await;
    assert_eq!(
        routes_to(&format!("{standby}/32"))
            .await
            .iter()
            .map(|r| (r.1.as_str(), r.2))
            .collect::<Vec<_>>(),
        [("se-3", 2000), ("se-4", 2001)]
    );

    compute(
        reqwest::Method::POST,
        "zones/us-central1-c/instances/se-3/stop",
        json!({}),
    )
    .await;
    eventually("se-3 withdrawn, se-4 promoted", || async {
        let aa_routes = routes_to(&format!("{aa}/32")).await;
        let as_routes = routes_to(&format!("{standby}/32")).await;
        let aa_ok = aa_routes.iter().map(|r| r.1.as_str()).collect::<Vec<_>>() == ["se-4"];
        let as_ok = as_routes
            .iter()
            .map(|r| (r.1.as_str(), r.2))
            .collect::<Vec<_>>()
            == [("se-4", 2000)];
        if aa_ok && as_ok {
            Ok(())
        } else {
            Err(format!("{aa_routes:?} {as_routes:?}"))
        }
    })
    .await;

    compute(
        reqwest::Method::POST,
        "zones/us-central1-c/instances/se-3/start",
        json!({}),
    )
    .await;
    eventually("se-3 back", || async {
        let as_routes = routes_to(&format!("{standby}/32")).await;
        let mut engines: Vec<_> = routes_to(&format!("{aa}/32"))
            .await
            .into_iter()
            .map(|r| r.1)
            .collect();
        engines.sort();
        if engines == ["se-3", "se-4"] && as_routes.len() == 2 {
            Ok(())
        } else {
            Err(format!("{engines:?} {as_routes:?}"))
        }
    })
    .await;

    // Drift: a route deleted behind the operator's back comes back at the next resync.
    let victim = routes_to(&format!("{aa}/32")).await[0].0.clone();
    compute(
        reqwest::Method::DELETE,
        &format!("global/routes/{victim}"),
        json!({}),
    )
    .await;
    eventually("drifted route restored", || async {
        if routes_to(&format!("{aa}/32"))
            .await
            .iter()
            .any(|r| r.0 == victim)
        {
            Ok(())
        } else {
            Err("missing".into())
        }
    })
    .await;
}

/// Failover comes from the instance poll: the inventory resync is an hour away, yet the route to
/// a stopped engine goes within seconds and comes back when it starts. Only this test uses se-5
/// and se-6, and it leaves both running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_instance_poll_drives_failover_without_a_resync() {
    let (client, ns, cloud) = setup_with(
        "vs-poll",
        json!({"resyncInterval": "1h", "instancePollInterval": "1s"}),
    )
    .await;
    let vip = "10.27.0.1";
    let dest = format!("{vip}/32");
    apply(
        &client,
        virtual_service(
            "aa",
            &cloud,
            vip,
            &[("se-5", "us-central1-f"), ("se-6", "us-central1-b")],
            "ActiveActive",
        ),
        Some(&ns),
    )
    .await;
    wait_ready::<VirtualService>(&client, Some(&ns), "aa").await;
    let engines = || async {
        routes_to(&dest)
            .await
            .into_iter()
            .map(|r| r.1)
            .collect::<Vec<_>>()
    };
    assert_eq!(engines().await, ["se-5", "se-6"]);

    let stopped_at = std::time::Instant::now();
    compute(
        reqwest::Method::POST,
        "zones/us-central1-f/instances/se-5/stop",
        json!({}),
    )
    .await;
    eventually("se-5 withdrawn, se-6 kept", || async {
        match engines().await {
            e if e == ["se-6"] => Ok(()),
            e if e.contains(&"se-6".to_string()) => Err(format!("{e:?}")),
            e => panic!("the route to se-6 went too: {e:?}"),
        }
    })
    .await;
    let took = stopped_at.elapsed();
    assert!(
        took < Duration::from_secs(30),
        "withdrawn after {took:?}: the poll runs every second"
    );

    compute(
        reqwest::Method::POST,
        "zones/us-central1-f/instances/se-5/start",
        json!({}),
    )
    .await;
    eventually("se-5 back", || async {
        match engines().await {
            e if e == ["se-5", "se-6"] => Ok(()),
            e => Err(format!("{e:?}")),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphans_are_collected_and_foreign_routes_left_alone() {
    let (client, ns, cloud) = setup("vs-gc").await;
    // A route of this cluster for an object that does not exist, and a route of someone else.
    let orphan = json!({"name": "adc-orphan-0001", "network": "global/networks/default", "destRange": "10.23.0.1/32", "priority": 2000, "nextHopIp": "10.128.0.9",
                        "description": format!("adc.dev/owner=test-cluster/{cloud}/VirtualService/{ns}/gone")});
    let foreign = json!({"name": "adc-handmade-0001", "network": "global/networks/default", "destRange": "10.23.0.2/32", "priority": 2000, "nextHopIp": "10.128.0.9",
                         "description": "made by hand"});
    for body in [orphan, foreign] {
        let op = compute(reqwest::Method::POST, "global/routes", body).await;
        assert_eq!(op["kind"], "compute#operation", "{op}");
    }
    let _ = (&client, &cloud);
    eventually("orphan collected", || async {
        if routes_to("10.23.0.1/32").await.is_empty() {
            Ok(())
        } else {
            Err("orphan still there".into())
        }
    })
    .await;
    assert_eq!(
        routes_to("10.23.0.2/32").await.len(),
        1,
        "a route without this cluster's marker is never touched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guard_rails_stall_and_touch_nothing() {
    let (client, ns, cloud) = setup("vs-guard").await;
    apply(
        &client,
        virtual_service(
            "outside",
            &cloud,
            "192.168.50.1",
            &[("se-1", "us-central1-a")],
            "ActiveActive",
        ),
        Some(&ns),
    )
    .await;
    let message = wait_stalled::<VirtualService>(&client, Some(&ns), "outside").await;
    assert!(
        message.contains("outside the GcpCloud's allowedDestinationRanges"),
        "{message}"
    );
    apply(
        &client,
        virtual_service(
            "ghost",
            &cloud,
            "10.24.0.9",
            &[("se-9", "us-central1-a")],
            "ActiveActive",
        ),
        Some(&ns),
    )
    .await;
    let message = wait_stalled::<VirtualService>(&client, Some(&ns), "ghost").await;
    assert!(
        message.contains("se-9") && message.contains("do not exist"),
        "{message}"
    );
    apply(
        &client,
        virtual_service(
            "first",
            &cloud,
            "10.24.0.1",
            &[("se-1", "us-central1-a")],
            "ActiveActive",
        ),
        Some(&ns),
    )
    .await;
    wait_ready::<VirtualService>(&client, Some(&ns), "first").await;
    apply(
        &client,
        virtual_service(
            "second",
            &cloud,
            "10.24.0.1",
            &[("se-2", "us-central1-b")],
            "ActiveActive",
        ),
        Some(&ns),
    )
    .await;
    let message = wait_stalled::<VirtualService>(&client, Some(&ns), "second").await;
    assert!(message.contains(&format!("{ns}/first")), "{message}");
    // Nothing of the stalled objects reached GCP; the first keeps its route.
    assert!(routes_to("192.168.50.1/32").await.is_empty());
    assert!(routes_to("10.24.0.9/32").await.is_empty());
    assert_eq!(
        routes_to("10.24.0.1/32")
            .await
            .iter()
            .map(|r| r.1.as_str())
            .collect::<Vec<_>>(),
        ["se-1"]
    );

    // A namespace the cloud does not select.
    let outsider = support::test_namespace(&client, "vs-outsider").await;
    apply(
        &client,
        virtual_service(
            "web",
            &cloud,
            "10.24.0.7",
            &[("se-1", "us-central1-a")],
            "ActiveActive",
        ),
        Some(&outsider),
    )
    .await;
    let message = wait_stalled::<VirtualService>(&client, Some(&outsider), "web").await;
    assert!(message.contains("allowedNamespaces"), "{message}");
    assert!(routes_to("10.24.0.7/32").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vpc_route_and_abandon_policy() {
    let (client, ns, cloud) = setup("vr").await;
    apply(&client, json!({
        "apiVersion": "adc.dev/v1alpha1", "kind": "VpcRoute", "metadata": {"name": "onprem", "annotations": {"adc.dev/deletion-policy": "abandon"}},
        "spec": {"cloudRef": cloud, "destRange": "10.25.0.0/16", "nextHop": {"ip": "10.128.0.9"}}
    }), Some(&ns)).await;
    wait_ready::<VpcRoute>(&client, Some(&ns), "onprem").await;
    let api: Api<VpcRoute> = Api::namespaced(client.clone(), &ns);
    let route_name = api
        .get("onprem")
        .await
        .unwrap()
        .status
        .unwrap()
        .route_name
        .unwrap();
    let state: Value = reqwest::get(format!("{}/_emulator/state", fixture().emulator.base_url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let routes = state["projects"][PROJECT]["resources"]["projects/demo-project/global/routes"]
        .as_array()
        .unwrap()
        .clone();
    let route = routes
        .iter()
        .find(|r| r["name"] == route_name)
        .expect("the route exists");
    assert_eq!(route["destRange"], "10.25.0.0/16");
    assert_eq!(route["nextHopIp"], "10.128.0.9");
    api.delete("onprem", &DeleteParams::default())
        .await
        .unwrap();
    eventually("object gone", || async {
        if api.get_opt("onprem").await.unwrap().is_none() {
            Ok(())
        } else {
            Err("still there".into())
        }
    })
    .await;
    let state: Value = reqwest::get(format!("{}/_emulator/state", fixture().emulator.base_url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        state["projects"][PROJECT]["resources"]["projects/demo-project/global/routes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["name"] == route_name),
        "abandon leaves the route in GCP"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_killed_mid_rollout_leaves_no_duplicate_and_no_leak() {
    const N: usize = 40;
    let (client, ns, cloud) = setup("vs-crash").await;
    for i in 0..N {
        let vip = format!("10.26.{}.{}", i / 200, 1 + i % 200);
        apply(
            &client,
            virtual_service(
                &format!("vs-{i}"),
                &cloud,
                &vip,
                &[("se-1", "us-central1-a"), ("se-2", "us-central1-b")],
                "ActiveActive",
            ),
            Some(&ns),
        )
        .await;
    }
    // Kill -9 while the rollout is under way, then start a fresh operator.
    tokio::time::sleep(Duration::from_millis(300)).await;
    {
        let fixture = fixture();
        let mut operator = fixture.operator.lock().unwrap();
        operator.kill().unwrap();
        operator.wait().unwrap();
        *operator = start_operator(&fixture.emulator);
    }
    for i in 0..N {
        wait_ready::<VirtualService>(&client, Some(&ns), &format!("vs-{i}")).await;
    }
    for i in 0..N {
        let vip = format!("10.26.{}.{}/32", i / 200, 1 + i % 200);
        let routes = routes_to(&vip).await;
        assert_eq!(
            routes.iter().map(|r| r.1.as_str()).collect::<Vec<_>>(),
            ["se-1", "se-2"],
            "{vip}: exactly one route per engine"
        );
        assert_eq!(
            firewalls_to(&vip).await.len(),
            1,
            "{vip}: exactly one firewall rule"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_to_an_existing_ilb_is_made_and_to_a_missing_one_stalls() {
    let (client, ns, cloud) = setup("vr-ilb").await;
    // An internal passthrough load balancer as Compute wants it made: a group holding se-1, a
    // health check, a backend service, then the forwarding rule; each step once the one
    // before is DONE.
    let group = "https://www.googleapis.com/compute/v1/projects/demo-project/zones/us-central1-a/instanceGroups/ilb-ok-group";
    for (path, body) in [
        (
            "zones/us-central1-a/instanceGroups",
            json!({"name": "ilb-ok-group", "network": "global/networks/default"}),
        ),
        (
            "zones/us-central1-a/instanceGroups/ilb-ok-group/addInstances",
            json!({"instances": [{"instance": "zones/us-central1-a/instances/se-1"}]}),
        ),
        (
            "regions/us-central1/healthChecks",
            json!({"name": "ilb-ok-check", "type": "TCP", "tcpHealthCheck": {"port": 80}}),
        ),
        (
            "regions/us-central1/backendServices",
            json!({"name": "ilb-ok-service", "loadBalancingScheme": "INTERNAL", "protocol": "TCP",
                   "healthChecks": ["regions/us-central1/healthChecks/ilb-ok-check"],
                   "backends": [{"group": group}]}),
        ),
        (
            "regions/us-central1/forwardingRules",
            json!({"name": "ilb-ok", "loadBalancingScheme": "INTERNAL", "IPProtocol": "TCP",
                   "ports": ["80"], "network": "global/networks/default",
                   "subnetwork": "regions/us-central1/subnetworks/default",
                   "backendService": "regions/us-central1/backendServices/ilb-ok-service"}),
        ),
    ] {
        let op = compute(reqwest::Method::POST, path, body).await;
        assert_eq!(op["kind"], "compute#operation", "{path}: {op}");
        let scope = op["zone"]
            .as_str()
            .or(op["region"].as_str())
            .and_then(|link| link.split("/projects/demo-project/").nth(1))
            .unwrap_or("global")
            .to_string();
        let name = op["name"].as_str().unwrap_or_default();
        let mut done = op.clone();
        for _ in 0..100 {
            if done["status"] == "DONE" {
                break;
            }
            done = compute(
                reqwest::Method::POST,
                &format!("{scope}/operations/{name}/wait"),
                json!({}),
            )
            .await;
        }
        assert!(
            done["status"] == "DONE" && done.get("error").is_none(),
            "{path}: {done}"
        );
    }
    for (name, ilb, dest) in [
        ("to-ilb", "ilb-ok", "10.27.1.0/24"),
        ("to-nowhere", "ilb-gone", "10.27.2.0/24"),
    ] {
        apply(
            &client,
            json!({
                "apiVersion": "adc.dev/v1alpha1", "kind": "VpcRoute", "metadata": {"name": name},
                "spec": {"cloudRef": cloud, "destRange": dest, "nextHop": {"ilb": ilb}}
            }),
            Some(&ns),
        )
        .await;
    }
    wait_ready::<VpcRoute>(&client, Some(&ns), "to-ilb").await;
    let message = wait_stalled::<VpcRoute>(&client, Some(&ns), "to-nowhere").await;
    assert!(
        message.contains("us-central1/ilb-gone") && message.contains("spec.nextHop.ilb"),
        "{message}"
    );
    let routes =
        support::operator::emulator_collection(&fixture().emulator.base_url, "routes").await;
    let made: Vec<_> = routes
        .iter()
        .filter(|r| r["destRange"] == "10.27.1.0/24" || r["destRange"] == "10.27.2.0/24")
        .collect();
    assert_eq!(
        made.len(),
        1,
        "only the route to the ILB that exists: {made:?}"
    );
    assert!(
        made[0]["nextHopIlb"]
            .as_str()
            .is_some_and(|hop| hop.ends_with("/regions/us-central1/forwardingRules/ilb-ok"))
    );
}

/// The fleet's progress in GcpCloud.status.progress (and the printer columns), the quota use in
/// status.quota, writes only when something changed, and `kubectl adc status` found by kubectl
/// on PATH as a plugin, against the real API server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_progress_and_kubectl_adc_status() {
    use adc_operator::api::GcpCloud;

    // A resync every second: status.quota is read at each inventory refresh.
    let (client, ns, cloud) = setup("progress").await;
    let good: Vec<String> = (1..=12).map(|i| format!("web-{i}")).collect();
    for (i, name) in good.iter().enumerate() {
        apply(
            &client,
            virtual_service(
                name,
                &cloud,
                &format!("10.29.0.{}", i + 1),
                &[("se-1", "us-central1-a"), ("se-2", "us-central1-b")],
                "ActiveActive",
            ),
            Some(&ns),
        )
        .await;
    }
    // Outside the cloud's allowedDestinationRanges: Stalled (GuardRail).
    apply(
        &client,
        virtual_service(
            "outside",
            &cloud,
            "192.168.29.1",
            &[("se-1", "us-central1-a")],
            "ActiveActive",
        ),
        Some(&ns),
    )
    .await;
    apply(
        &client,
        json!({
            "apiVersion": "adc.dev/v1alpha1", "kind": "VpcRoute", "metadata": {"name": "onprem"},
            "spec": {"cloudRef": cloud, "destRange": "10.29.8.0/24",
                     "nextHop": {"instance": {"name": "se-3", "zone": "us-central1-c"}}}
        }),
        Some(&ns),
    )
    .await;
    for name in &good {
        wait_ready::<VirtualService>(&client, Some(&ns), name).await;
    }
    wait_ready::<VpcRoute>(&client, Some(&ns), "onprem").await;
    wait_stalled::<VirtualService>(&client, Some(&ns), "outside").await;

    // 14 objects, 13 Ready, 1 Stalled, nothing queued: the progress says so within a few
    // seconds (it is looked at every 5 s).
    let clouds: Api<GcpCloud> = Api::all(client.clone());
    eventually("the cloud's progress shows the settled fleet", || {
        let clouds = clouds.clone();
        let cloud = cloud.clone();
        async move {
            let status = clouds.get(&cloud).await.unwrap().status.unwrap_or_default();
            let progress = status.progress.ok_or("no progress yet")?;
            let seen = (
                progress.objects,
                progress.ready,
                progress.stalled,
                progress.writes_queued,
                progress.operations_in_flight,
                progress.estimated_time_left.clone(),
                progress.summary.clone(),
            );
            let want = (14, 13, 1, 0, 0, None, "[#########.] 92% 13/14".to_string());
            if seen == want {
                Ok(())
            } else {
                Err(format!("{seen:?}"))
            }
        }
    })
    .await;
    // This cloud's 25 routes at least (other tests share the project), at the next refresh.
    eventually("status.quota counts this cloud's routes", || {
        let clouds = clouds.clone();
        let cloud = cloud.clone();
        async move {
            let status = clouds.get(&cloud).await.unwrap().status.unwrap_or_default();
            match status
                .quota
                .iter()
                .find(|q| q.metric == "ROUTES" && q.scope == "global")
            {
                Some(q) if q.limit == 10000.0 && q.usage >= 25.0 => Ok(()),
                other => Err(format!("{other:?} in {:?}", status.quota)),
            }
        }
    })
    .await;
    let status = clouds.get(&cloud).await.unwrap().status.unwrap();
    assert!(
        status
            .quota
            .iter()
            .any(|q| q.metric == "STATIC_ADDRESSES" && q.scope == "us-central1"),
        "{:?}",
        status.quota
    );

    // The printer columns, as `kubectl get gcpcloud -w` prints them.
    let plane = PLANE.get();
    let kubectl = |args: &[&str], path: Option<&std::ffi::OsStr>| {
        let mut command = Command::new(&plane.binaries.kubectl);
        command.args(args).env("KUBECONFIG", &plane.kubeconfig);
        if let Some(path) = path {
            command.env("PATH", path);
        }
        let output = command.output().expect("running kubectl");
        assert!(
            output.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let table = kubectl(&["get", "gcpcloud", &cloud], None);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME", "PROJECT", "NETWORK", "READY", "ROUTES", "OBJECTS", "PROGRESS", "QUEUED",
            "LEFT", "HOLDER", "AGE"
        ]
    );
    assert!(table.contains("[#########.] 92% 13/14"), "{table}");
    // The replica that reconciles the cloud (the only one here, named by its host and pid).
    let holder = clouds
        .get(&cloud)
        .await
        .unwrap()
        .status
        .and_then(|s| s.holder)
        .expect("status.holder");
    assert!(
        !holder.is_empty() && table.contains(&holder),
        "{holder}: {table}"
    );

    // Nothing changes: no progress write. The progress task's own field manager records when
    // it last changed the object.
    let progress_written = |cloud: GcpCloud| {
        cloud
            .metadata
            .managed_fields
            .unwrap_or_default()
            .into_iter()
            .find(|m| m.manager.as_deref() == Some("adc-operator-progress"))
            .and_then(|m| m.time)
            .map(|t| t.0)
    };
    let before = progress_written(clouds.get(&cloud).await.unwrap());
    assert!(
        before.is_some(),
        "the progress was written by its own field manager"
    );
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_eq!(
        progress_written(clouds.get(&cloud).await.unwrap()),
        before,
        "an idle fleet's progress is not written again"
    );

    // The plugin: the operator's binary linked as kubectl-adc on PATH.
    let bin = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(
        env!("CARGO_BIN_EXE_adc-operator"),
        bin.path().join("kubectl-adc"),
    )
    .unwrap();
    let path = std::env::join_paths(std::iter::once(bin.path().to_path_buf()).chain(
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
    ))
    .unwrap();
    let plugins = kubectl(&["plugin", "list"], Some(&path));
    assert!(plugins.contains("kubectl-adc"), "{plugins}");
    let json_text = kubectl(&["adc", "status", &cloud, "-o", "json"], Some(&path));
    let summary: Value = serde_json::from_str(&json_text).unwrap();
    let clouds_seen = summary["clouds"].as_array().unwrap();
    assert_eq!(clouds_seen.len(), 1, "only the cloud asked for: {summary}");
    let mine = &clouds_seen[0];
    assert_eq!(mine["name"], cloud.as_str());
    assert_eq!(mine["project"], PROJECT);
    assert_eq!(mine["ready"]["status"], "True");
    let count = |kind: &str, state: &str| -> u64 {
        mine["objects"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["kind"] == kind && c["state"] == state)
            .map(|c| c["count"].as_u64().unwrap())
            .sum()
    };
    assert_eq!(count("VirtualService", "ready"), 12, "{mine}");
    assert_eq!(count("VirtualService", "stalled"), 1, "{mine}");
    assert_eq!(count("VpcRoute", "ready"), 1, "{mine}");
    let errors = mine["lastErrors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{mine}");
    assert_eq!(errors[0]["name"], "outside");
    assert_eq!(errors[0]["reason"], "GuardRail");
    assert_eq!(mine["progress"]["summary"], "[#########.] 92% 13/14");

    let text = kubectl(&["adc", "status", &cloud], Some(&path));
    for expected in [
        format!("GcpCloud {cloud}: project {PROJECT}, network default, region us-central1"),
        "Progress:  [#########.] 92% 13/14, 1 stalled; 0 GCP writes queued".to_string(),
        "  Quota:     ".to_string(),
        format!("VirtualService {ns}/outside  stalled GuardRail: "),
        // This suite's operator runs without leader election.
        "Leader: no leader Lease found".to_string(),
    ] {
        assert!(text.contains(&expected), "missing {expected:?} in:\n{text}");
    }
    let quota_line = text.lines().find(|l| l.starts_with("  Quota:")).unwrap();
    assert!(
        // Other tests of this suite share the project: the usage is theirs too.
        quota_line.contains("ROUTES ") && quota_line.contains("/10000 ("),
        "{quota_line}"
    );
}
