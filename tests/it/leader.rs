//! Two operator replicas with leader election against one control plane and one emulator:
//! exactly one talks to GCP; when it is killed, the other takes over within the lease duration
//! and finishes the rollout without duplicating anything.

use crate::support;

use std::time::{Duration, Instant};

use adc_operator::api::{GcpCloud, VirtualService};
use adc_testenv::{EmulatorProcess, emulator_binary};
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};
use support::Plane;
use support::operator::{OperatorSpec, Replicas, WORLD, lease};

/// This suite's control plane, shared with no other suite: its replicas elect a leader on
/// `default/adc-operator` and reconcile every GcpCloud of the cluster.
const PLANE: Plane = Plane::Leader;

const LEASE_SECONDS: u64 = 6;
const LEASE: &str = "adc-operator";

fn replica(name: &str, emulator: &EmulatorProcess, metrics_port: u16) -> (String, OperatorSpec) {
    let mut spec = OperatorSpec::shared(PLANE, emulator, "ha")
        .leader_elected(name, LEASE, LEASE_SECONDS)
        .metrics_port(metrics_port);
    spec.log = "error".into();
    (name.to_string(), spec)
}

/// Compute calls an operator replica made, from its own /metrics.
async fn gcp_calls(metrics_port: u16) -> u64 {
    let text = reqwest::get(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with("adc_operator_gcp_calls_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

async fn holder(client: &Client) -> Option<String> {
    lease(client, LEASE).await?.holder_identity
}

async fn all_ready(client: &Client, ns: &str, count: usize) -> bool {
    let api: Api<VirtualService> = Api::namespaced(client.clone(), ns);
    let list = api.list(&Default::default()).await.unwrap();
    list.items.len() == count
        && list.items.iter().all(|vs| {
            vs.status.as_ref().is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
            })
        })
}

async fn apply_services(client: &Client, ns: &str, range: std::ops::Range<usize>) {
    let api: Api<VirtualService> = Api::namespaced(client.clone(), ns);
    for i in range {
        let manifest = json!({
            "apiVersion": "adc.dev/v1alpha1", "kind": "VirtualService", "metadata": {"name": format!("vs-{i}")},
            "spec": {"cloudRef": "ha", "vip": {"address": format!("10.30.0.{}", i + 1)}, "ports": [{"port": 443}],
                     "sourceRanges": ["10.0.0.0/8"], "serviceEngines": [{"name": "se-1", "zone": "us-central1-a"}, {"name": "se-2", "zone": "us-central1-b"}]}
        });
        api.patch(
            &format!("vs-{i}"),
            &PatchParams::apply("test").force(),
            &Patch::Apply(&manifest),
        )
        .await
        .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_talks_to_gcp_and_a_standby_takes_over() {
    PLANE.install_crds();
    let emulator =
        EmulatorProcess::start(&emulator_binary().unwrap(), WORLD, &["--auth", "token"]).unwrap();
    let ports = [(); 2].map(|()| adc_testenv::free_port().expect("a free loopback port"));
    let replicas = Replicas::start(
        vec![
            replica("replica-a", &emulator, ports[0]),
            replica("replica-b", &emulator, ports[1]),
        ],
        &emulator.base_url,
    );

    let client = PLANE.admin_client().await;
    let ns = support::test_namespace(&client, "ha").await;
    let clouds: Api<GcpCloud> = Api::all(client.clone());
    let cloud = json!({"apiVersion": "adc.dev/v1alpha1", "kind": "GcpCloud", "metadata": {"name": "ha"},
        "spec": {"project": "demo-project", "network": "default", "region": "us-central1",
                 "credentials": {"workloadIdentity": {}}, "endpoint": emulator.base_url, "resyncInterval": "2s"}});
    clouds
        .patch(
            "ha",
            &PatchParams::apply("test").force(),
            &Patch::Apply(&cloud),
        )
        .await
        .unwrap();
    apply_services(&client, &ns, 0..10).await;

    let deadline = Instant::now() + Duration::from_secs(60);
    while !all_ready(&client, &ns, 10).await {
        assert!(Instant::now() < deadline, "first rollout not Ready in 60 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let leader = holder(&client).await.expect("a leader holds the lease");
    let (leader_index, standby_index) = if leader == "replica-a" {
        (0, 1)
    } else {
        (1, 0)
    };
    assert!(
        gcp_calls(ports[leader_index]).await > 0,
        "the leader talks to GCP"
    );
    let metrics = reqwest::get(format!("http://127.0.0.1:{}/metrics", ports[leader_index]))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for family in [
        "adc_operator_reconciles_total{kind=\"VirtualService\"}",
        "adc_operator_reconcile_duration_seconds_bucket{",
        "adc_operator_gcp_batch_size_bucket{",
        "adc_operator_gcp_calls_total{",
        "process_resident_memory_bytes ",
        "process_cpu_seconds ",
    ] {
        assert!(metrics.contains(family), "/metrics has {family}");
    }
    // The other replica has never led in its life: a leader that loses its lease exits (and
    // is started again as a standby, with fresh metrics).
    assert_eq!(
        gcp_calls(ports[standby_index]).await,
        0,
        "the standby never does"
    );

    // Kill the leader; the standby takes over within the lease duration and finishes the rollout.
    let killed_at = Instant::now();
    replicas.kill9(&leader);
    apply_services(&client, &ns, 10..20).await;
    let standby = if leader_index == 0 {
        "replica-b"
    } else {
        "replica-a"
    };
    while holder(&client).await.as_deref() != Some(standby) {
        assert!(
            killed_at.elapsed() < Duration::from_secs(3 * LEASE_SECONDS + 10),
            "no takeover"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let takeover = killed_at.elapsed();
    while !all_ready(&client, &ns, 20).await {
        assert!(
            killed_at.elapsed() < Duration::from_secs(90),
            "rollout not finished after the takeover"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "leader failover: lease taken over {takeover:?} after the kill (lease {LEASE_SECONDS} s); rollout finished {:?} after it; {} restarts after a step-down",
        killed_at.elapsed(),
        replicas.restarts()
    );
    assert!(
        takeover <= Duration::from_secs(2 * LEASE_SECONDS + 2),
        "takeover took {takeover:?}"
    );

    let state: Value = reqwest::get(format!("{}/_emulator/state", emulator.base_url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let routes =
        state["projects"]["demo-project"]["resources"]["projects/demo-project/global/routes"]
            .as_array()
            .cloned()
            .unwrap_or_default();
    for i in 0..20 {
        let dest = format!("10.30.0.{}/32", i + 1);
        let count = routes
            .iter()
            .filter(|r| r["destRange"] == dest.as_str())
            .count();
        assert_eq!(count, 2, "{dest}: one route per engine, no duplicate");
    }
}
