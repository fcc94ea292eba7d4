//! Taking over a brownfield project on the real pieces (the policy suite's control plane,
//! emulator and operator): a project pre-filled by another "owner" with 200 VIP routes and 100
//! firewall rules in the shape an ADC controller makes them; `adc-operator import` writes the
//! manifests, `adc-operator plan` shows only adoptions, the objects wait under Observe, an
//! approval of each plan lets it through, and the cloud goes to Full. Every VIP's effective
//! routes (computed from the emulator's route table by Compute's rule: longest prefix, then
//! the smallest priority value, ECMP among equals) and its firewall opening are sampled
//! throughout and must never change; the writes are exactly the adoptions.

use crate::policy::{run_operator, run_plan, setup, url};
use crate::support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use adc_operator::api::VirtualService;
use ipnet::Ipv4Net;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};
use support::operator::{
    apply, cloud_manifest, compute, effective, emulator_collection, status_of,
};

const VIPS: u8 = 100;
/// The foreign owner's names.
const FOREIGN: &str = "avi-bf-";

fn vip(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, 0, i)
}

/// What the ADC controller made for VIP `i`: a route to se-1 and one to se-2 (even VIPs
/// ActiveActive at 900, odd ones ActiveStandby with se-2 at 901), and a rule opening 443 (and
/// 80 for every third) from 10.0.0.0/8.
fn foreign(i: u8) -> (Vec<Value>, Value) {
    let hop = |zone: &str, se: &str| {
        format!(
            "https://www.googleapis.com/compute/v1/projects/demo-project/zones/{zone}/instances/{se}"
        )
    };
    let routes = vec![
        json!({"name": format!("{FOREIGN}{i}-se-1"), "network": "global/networks/default",
               "destRange": format!("{}/32", vip(i)), "priority": 900,
               "nextHopInstance": hop("us-central1-a", "se-1"),
               "description": "Created by the Avi Controller"}),
        json!({"name": format!("{FOREIGN}{i}-se-2"), "network": "global/networks/default",
               "destRange": format!("{}/32", vip(i)), "priority": if i.is_multiple_of(2) { 900 } else { 901 },
               "nextHopInstance": hop("us-central1-b", "se-2"),
               "description": "Created by the Avi Controller"}),
    ];
    let ports: Vec<&str> = if i.is_multiple_of(3) {
        vec!["80", "443"]
    } else {
        vec!["443"]
    };
    let rule = json!({"name": format!("{FOREIGN}fw-{i}"), "network": "global/networks/default",
        "direction": "INGRESS", "priority": 1000, "sourceRanges": ["10.0.0.0/8"],
        "destinationRanges": [format!("{}/32", vip(i))],
        "allowed": [{"IPProtocol": "tcp", "ports": ports}],
        "description": "Created by the Avi Controller"});
    (routes, rule)
}

/// What every VIP reaches: its engines by Compute's rule, and whether 443 is open to it.
async fn traffic() -> BTreeMap<u8, (BTreeSet<String>, bool)> {
    let routes: Vec<Value> = emulator_collection(url(), "routes")
        .await
        .into_iter()
        .filter(|r| {
            r["selfLink"]
                .as_str()
                .is_some_and(|l| l.contains("/projects/demo-project/"))
        })
        .collect();
    let rules: Vec<Value> = emulator_collection(url(), "firewalls").await;
    let mut out = BTreeMap::new();
    for i in 1..=VIPS {
        let address = vip(i);
        let engines = effective(&routes, address);
        let open = rules.iter().any(|f| {
            f["disabled"] != true
                && f["destinationRanges"].as_array().is_some_and(|ranges| {
                    ranges
                        .iter()
                        .filter_map(|r| r.as_str()?.parse::<Ipv4Net>().ok())
                        .any(|n| n.contains(&address))
                })
                && f["allowed"].as_array().is_some_and(|allowed| {
                    allowed.iter().any(|a| {
                        a["ports"]
                            .as_array()
                            .is_some_and(|p| p.contains(&json!("443")))
                    })
                })
        });
        out.insert(i, (engines, open));
    }
    out
}

/// The operations the emulator ran on the names of this test (the foreign ones and the
/// cloud's `bf-` ones), by type.
async fn writes() -> BTreeMap<String, usize> {
    let state = adc_testenv::emulator_admin(url(), "state")
        .await
        .expect("reading the emulator's state");
    let mut counts = BTreeMap::new();
    for op in state["projects"]["demo-project"]["operations"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let target = op["targetLink"]
            .as_str()
            .unwrap_or_default()
            .rsplit('/')
            .next()
            .unwrap_or_default();
        if target.starts_with(FOREIGN) || target.starts_with("bf-") {
            *counts
                .entry(op["operationType"].as_str().unwrap_or_default().to_string())
                .or_insert(0) += 1;
        }
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_brownfield_project_is_imported_planned_approved_and_adopted_without_a_gap() {
    let (client, namespace, cloud) = setup(
        "adopt",
        json!({"resourcePrefix": "bf-", "managementPolicy": "Observe",
               "adoption": {"enabled": true}}),
    )
    .await;
    // The other owner's routes and rules.
    for i in 1..=VIPS {
        let (routes, rule) = foreign(i);
        for route in routes {
            compute(url(), reqwest::Method::POST, "global/routes", route).await;
        }
        compute(url(), reqwest::Method::POST, "global/firewalls", rule).await;
    }
    let before = traffic().await;
    for (i, (engines, open)) in &before {
        let expected: BTreeSet<String> = if i.is_multiple_of(2) {
            ["se-1", "se-2"].map(String::from).into()
        } else {
            ["se-1"].map(String::from).into()
        };
        assert_eq!(engines, &expected, "VIP {i} before");
        assert!(open, "VIP {i} open before");
    }
    let seeded = writes().await;
    assert_eq!(seeded.get("insert"), Some(&300), "{seeded:?}");

    // Sample every VIP's traffic until the end: it must never change.
    let stop = Arc::new(AtomicBool::new(false));
    let problems = Arc::new(Mutex::new(Vec::<String>::new()));
    let samples = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let sampler = {
        let (stop, problems, samples, before) = (
            Arc::clone(&stop),
            Arc::clone(&problems),
            Arc::clone(&samples),
            before.clone(),
        );
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let now = traffic().await;
                for (i, seen) in &now {
                    if before.get(i) != Some(seen) {
                        problems
                            .lock()
                            .unwrap()
                            .push(format!("VIP {}: {seen:?}", vip(*i)));
                    }
                }
                samples.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    // import → manifests for every VIP, nothing unmapped.
    let (code, yaml, stderr) = run_operator(
        &support::Plane::Policy.get().kubeconfig,
        "import",
        &[
            "--cloud",
            &cloud,
            "--namespace",
            &namespace,
            "--name-prefix",
            FOREIGN,
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("100 manifest(s) own 300 resource(s); 0 not mapped"),
        "{stderr}"
    );
    let manifests: Vec<Value> = serde_yaml::Deserializer::from_str(&yaml)
        .map(|doc| <Value as serde::Deserialize>::deserialize(doc).unwrap())
        .filter(|m| !m.is_null())
        .collect();
    assert_eq!(manifests.len(), 100);
    let file = std::env::temp_dir().join(format!("{namespace}-import.yaml"));
    std::fs::write(&file, &yaml).unwrap();

    // plan → only adoptions: 200 routes twinned, 100 rules patched.
    let (code, out, err) = run_plan(&[
        "--cloud",
        &cloud,
        "-f",
        file.to_str().unwrap(),
        "-o",
        "json",
    ]);
    assert_eq!(code, 2, "{err}");
    let plan: Value = serde_json::from_str(&out).unwrap();
    let changes = plan["clouds"][0]["changes"].as_array().unwrap();
    let ops: BTreeSet<&str> = changes.iter().filter_map(|c| c["op"].as_str()).collect();
    assert_eq!(ops, BTreeSet::from(["adopt"]), "{out}");
    assert_eq!(changes.len(), 300);
    assert!(
        plan["clouds"][0]["refused"].as_array().unwrap().is_empty(),
        "{out}"
    );
    let (_, table, _) = run_plan(&["--cloud", &cloud, "-f", file.to_str().unwrap()]);
    assert!(
        table.contains("Plan: 0 to insert, 0 to replace, 0 to delete, 300 to adopt."),
        "{table}"
    );

    // Applied under Observe: every object waits with its adoptions, nothing is written.
    for manifest in &manifests {
        apply(&client, manifest.clone(), Some(&namespace)).await;
    }
    let api: Api<VirtualService> = Api::namespaced(client.clone(), &namespace);
    let mut hashes = BTreeMap::new();
    for manifest in &manifests {
        let name = manifest["metadata"]["name"].as_str().unwrap().to_string();
        let mut hash = String::new();
        support::eventually_within(&format!("{name} awaiting approval"), 120, || async {
            let status = status_of(&api, &name).await;
            match support::operator::condition(&status, "Ready") {
                Some((_, reason, _))
                    if reason == "AwaitingApproval" && status["plan"]["adoptions"] == 3 =>
                {
                    Ok(())
                }
                other => Err(format!("{other:?} {}", status["plan"])),
            }
        })
        .await;
        let status = status_of(&api, &name).await;
        hash.push_str(status["plan"]["hash"].as_str().unwrap());
        assert_eq!(status["plan"]["inserts"], 0, "{name}: {}", status["plan"]);
        hashes.insert(name, hash);
    }
    assert_eq!(writes().await, seeded, "Observe wrote before an approval");

    // Approve every plan, then the cloud goes to Full.
    for (name, hash) in &hashes {
        api.patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"adc.dev/approved-plan": hash}}})),
        )
        .await
        .unwrap();
    }
    for name in hashes.keys() {
        support::eventually_within(&format!("{name} adopted"), 180, || async {
            let status = status_of(&api, name).await;
            match support::operator::condition(&status, "Ready") {
                Some((s, _, _)) if s == "True" => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
    }
    apply(
        &client,
        cloud_manifest(
            &cloud,
            url(),
            &json!({"resourcePrefix": "bf-", "managementPolicy": "Full",
                    "adoption": {"enabled": true}, "resyncInterval": "2s"}),
        ),
        None,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.store(true, Ordering::Relaxed);
    sampler.await.unwrap();

    // The status names the adopted rule by the name it kept.
    let status = status_of(&api, "vip-10-77-0-1").await;
    assert_eq!(
        status["resources"]["firewall"],
        format!("{FOREIGN}fw-1"),
        "{status}"
    );

    // Every resource carries the marker; the foreign routes are gone; the rules kept their names.
    let routes = emulator_collection(url(), "routes").await;
    let foreign_left: Vec<&str> = routes
        .iter()
        .filter_map(|r| r["name"].as_str())
        .filter(|n| n.starts_with(FOREIGN))
        .collect();
    assert!(foreign_left.is_empty(), "{foreign_left:?}");
    let marker = format!("adc.dev/owner=policy-cluster/{cloud}/VirtualService/{namespace}/");
    let ours = routes
        .iter()
        .filter(|r| r["name"].as_str().is_some_and(|n| n.starts_with("bf-")))
        .filter(|r| {
            r["description"]
                .as_str()
                .is_some_and(|d| d.contains(&marker))
        })
        .count();
    assert_eq!(ours, 200);
    let rules = emulator_collection(url(), "firewalls").await;
    let adopted = rules
        .iter()
        .filter(|r| r["name"].as_str().is_some_and(|n| n.starts_with(FOREIGN)))
        .filter(|r| {
            r["description"]
                .as_str()
                .is_some_and(|d| d.contains(&marker))
        })
        .count();
    assert_eq!(adopted, 100);
    assert!(
        !rules
            .iter()
            .any(|r| r["name"].as_str().is_some_and(|n| n.starts_with("bf-"))),
        "no rule was inserted beside an adopted one"
    );

    // Writes: exactly the adoptions (200 twins, 200 originals deleted, 100 patches).
    let after = writes().await;
    let delta = |op: &str| after.get(op).unwrap_or(&0) - seeded.get(op).unwrap_or(&0);
    assert_eq!(
        (delta("insert"), delta("delete"), delta("patch")),
        (200, 200, 100),
        "{after:?}"
    );
    let problems = problems.lock().unwrap().clone();
    assert!(
        samples.load(Ordering::Relaxed) >= 10,
        "too few samples to say anything"
    );
    assert!(
        problems.is_empty(),
        "traffic changed: {:?}",
        &problems[..problems.len().min(10)]
    );
}
