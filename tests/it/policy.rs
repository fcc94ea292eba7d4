//! Management policies on the real pieces: Observe shows a plan and writes only what an
//! approval lets through, once; a plan that changed after its approval writes nothing; Paused
//! leaves GCP as it is, deletion included; switching a cloud to Observe mid-rollout stops its
//! writes at once; `adc-operator plan` prints what would change and writes nothing. The operator
//! and its rate windows run at a tenth of real time, so a rollout held back by
//! `rateLimit.writesPerMinute` spans a few seconds of windows.

use crate::support;

use std::sync::OnceLock;
use std::time::Duration;

use adc_operator::api::VirtualService;
use adc_testenv::{EmulatorProcess, emulator_binary};
use kube::Client;
use kube::api::{Api, DeleteParams};
use serde_json::{Value, json};
use support::Plane;
use support::operator::{
    Suite, WORLD, apply, cloud_manifest, condition, status_of, tenant, virtual_service, wait_ready,
};

const PLANE: Plane = Plane::Policy;
/// The operator's notion of time: a rate window is 6 s.
const SCALE: &str = "0.1";

pub(crate) fn fixture() -> &'static Suite {
    static FIXTURE: OnceLock<Suite> = OnceLock::new();
    FIXTURE
        .get_or_init(|| Suite::start(PLANE, WORLD, "policy-cluster", &["--gcp-time-scale", SCALE]))
}

pub(crate) fn url() -> &'static str {
    &fixture().emulator.base_url
}

pub(crate) async fn setup(prefix: &str, spec: Value) -> (Client, String, String) {
    let fixture = fixture();
    let client = PLANE.admin_client().await;
    let mut spec = spec;
    spec["resyncInterval"] = json!("2s");
    let (namespace, cloud) = tenant(&client, &fixture.emulator.base_url, prefix, spec).await;
    (client, namespace, cloud)
}

/// A VirtualService manifest on engines `engines` (zone a or b by number), with annotations.
fn service(name: &str, cloud: &str, vip: &str, engines: &[&str], annotations: Value) -> Value {
    let engines: Vec<(&str, &str)> = engines
        .iter()
        .map(|e| {
            let zone = match *e {
                "se-1" | "se-4" | "se-7" => "us-central1-a",
                "se-2" | "se-6" | "se-8" => "us-central1-b",
                "se-3" => "us-central1-c",
                _ => "us-central1-f",
            };
            (*e, zone)
        })
        .collect();
    let mut manifest = virtual_service(name, cloud, vip, &engines, "ActiveActive");
    manifest["metadata"]["annotations"] = annotations;
    manifest
}

/// The routes to `vip`/32 as their next hops, sorted.
async fn hops(vip: &str) -> Vec<String> {
    let mut hops: Vec<String> = support::operator::routes_to(url(), &format!("{vip}/32"))
        .await
        .into_iter()
        .map(|r| r.1)
        .collect();
    hops.sort();
    hops
}

async fn rules(vip: &str) -> usize {
    support::operator::firewalls_to(url(), &format!("{vip}/32"))
        .await
        .len()
}

/// Waits until the object's Ready condition has `reason`; returns its status.
async fn wait_reason(api: &Api<VirtualService>, name: &str, reason: &str) -> Value {
    let found = std::sync::Mutex::new(Value::Null);
    support::eventually(&format!("{name} Ready reason {reason}"), || async {
        let status = status_of(api, name).await;
        match condition(&status, "Ready") {
            Some((s, r, _)) if s == "False" && r == reason => {
                *found.lock().unwrap() = status;
                Ok(())
            }
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    found.into_inner().unwrap()
}

fn hash(status: &Value) -> String {
    status["plan"]["hash"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Nothing is written for `vip` over `seconds` (a few resyncs and rate windows).
async fn stays(vip: &str, routes: &[&str], rule_count: usize, seconds: u64) {
    for _ in 0..seconds * 4 {
        assert_eq!(hops(vip).await, routes, "routes to {vip} changed");
        assert_eq!(rules(vip).await, rule_count, "rules of {vip} changed");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observe_shows_the_plan_and_an_approval_lets_it_through_once() {
    let (client, ns, cloud) = setup("obs", json!({"managementPolicy": "Observe"})).await;
    let api: Api<VirtualService> = Api::namespaced(client.clone(), &ns);
    let vip = "10.31.0.1";
    apply(
        &client,
        service("web", &cloud, vip, &["se-1", "se-2"], json!({})),
        Some(&ns),
    )
    .await;
    let status = wait_reason(&api, "web", "AwaitingApproval").await;
    let first = hash(&status);
    assert_eq!(first.len(), 16, "{status}");
    assert_eq!(
        (&status["plan"]["inserts"], &status["plan"]["deletes"]),
        (&json!(3), &json!(0)),
        "two routes and a rule: {status}"
    );
    let items = status["plan"]["items"].as_array().unwrap();
    assert!(
        items.iter().any(|i| i
            .as_str()
            .unwrap()
            .contains("10.31.0.1/32 via se-1 priority")),
        "{items:?}"
    );
    let message = condition(&status, "Ready").unwrap().2;
    assert!(
        message.contains(&format!("adc.dev/approved-plan={first}")),
        "{message}"
    );
    let reconciling = condition(&status, "Reconciling").unwrap();
    let stalled = condition(&status, "Stalled").unwrap();
    assert_eq!(
        (reconciling.0.as_str(), stalled.0.as_str()),
        ("False", "False")
    );
    stays(vip, &[], 0, 3).await;

    // Approved: exactly that plan is applied, and the approval is recorded as used.
    apply(
        &client,
        service(
            "web",
            &cloud,
            vip,
            &["se-1", "se-2"],
            json!({"adc.dev/approved-plan": first}),
        ),
        Some(&ns),
    )
    .await;
    wait_ready::<VirtualService>(&client, Some(&ns), "web").await;
    assert_eq!(hops(vip).await, ["se-1", "se-2"]);
    assert_eq!(rules(vip).await, 1);
    let status = status_of(&api, "web").await;
    assert_eq!(status["plan"]["applied"], json!(first), "{status}");
    assert_eq!(status["plan"]["inserts"], json!(0));

    // Drift: a route goes behind the operator's back. Repairing it is a new plan with a new
    // hash; the approval on the object is used, so nothing is written.
    let gone = support::operator::routes_to(url(), &format!("{vip}/32")).await[0]
        .0
        .clone();
    support::operator::compute(
        url(),
        reqwest::Method::DELETE,
        &format!("global/routes/{gone}"),
        json!({}),
    )
    .await;
    let status = wait_reason(&api, "web", "PlanChanged").await;
    let second = hash(&status);
    assert_ne!(second, first);
    assert_eq!(status["plan"]["inserts"], json!(1), "{status}");
    stays(vip, &["se-2"], 1, 3).await;
    apply(
        &client,
        service(
            "web",
            &cloud,
            vip,
            &["se-1", "se-2"],
            json!({"adc.dev/approved-plan": second}),
        ),
        Some(&ns),
    )
    .await;
    support::eventually("the repair applied", || async {
        let hops = hops(vip).await;
        if hops == ["se-1", "se-2"] {
            Ok(())
        } else {
            Err(format!("{hops:?}"))
        }
    })
    .await;
    wait_ready::<VirtualService>(&client, Some(&ns), "web").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_that_changed_after_its_approval_writes_nothing() {
    // Full cloud; the object asks for Observe itself.
    let (client, ns, cloud) = setup("changed", json!({})).await;
    let api: Api<VirtualService> = Api::namespaced(client.clone(), &ns);
    let vip = "10.32.0.1";
    let observe = json!({"adc.dev/management-policy": "Observe"});
    apply(
        &client,
        service("api", &cloud, vip, &["se-1"], observe.clone()),
        Some(&ns),
    )
    .await;
    let first = hash(&wait_reason(&api, "api", "AwaitingApproval").await);
    // The spec changes before the approval arrives: the approval names the old plan.
    apply(
        &client,
        service("api", &cloud, vip, &["se-1", "se-2"], observe.clone()),
        Some(&ns),
    )
    .await;
    let mut annotations = observe.clone();
    annotations["adc.dev/approved-plan"] = json!(first);
    apply(
        &client,
        service("api", &cloud, vip, &["se-1", "se-2"], annotations.clone()),
        Some(&ns),
    )
    .await;
    let status = wait_reason(&api, "api", "PlanChanged").await;
    let second = hash(&status);
    assert_ne!(second, first);
    let message = condition(&status, "Ready").unwrap().2;
    assert!(
        message.contains(&first) && message.contains(&second),
        "{message}"
    );
    stays(vip, &[], 0, 3).await;
    annotations["adc.dev/approved-plan"] = json!(second);
    apply(
        &client,
        service("api", &cloud, vip, &["se-1", "se-2"], annotations),
        Some(&ns),
    )
    .await;
    wait_ready::<VirtualService>(&client, Some(&ns), "api").await;
    assert_eq!(hops(vip).await, ["se-1", "se-2"]);
    // A policy the annotation cannot name stalls with the annotation's name.
    apply(
        &client,
        service(
            "api",
            &cloud,
            vip,
            &["se-1", "se-2"],
            json!({"adc.dev/management-policy": "observe"}),
        ),
        Some(&ns),
    )
    .await;
    let message =
        support::operator::wait_stalled::<VirtualService>(&client, Some(&ns), "api").await;
    assert!(
        message.contains("adc.dev/management-policy") && message.contains("'observe'"),
        "{message}"
    );
    assert_eq!(
        hops(vip).await,
        ["se-1", "se-2"],
        "a bad annotation touches nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_leaves_gcp_as_it_is_and_holds_the_deletion() {
    let (client, ns, cloud) = setup("paused", json!({})).await;
    let api: Api<VirtualService> = Api::namespaced(client.clone(), &ns);
    let vip = "10.33.0.1";
    apply(
        &client,
        service("db", &cloud, vip, &["se-1", "se-2"], json!({})),
        Some(&ns),
    )
    .await;
    wait_ready::<VirtualService>(&client, Some(&ns), "db").await;
    let paused = json!({"adc.dev/management-policy": "Paused"});
    // Paused, then the spec moves the VIP to another engine: nothing follows it.
    apply(
        &client,
        service("db", &cloud, vip, &["se-1", "se-2"], paused.clone()),
        Some(&ns),
    )
    .await;
    let status = wait_reason(&api, "db", "Paused").await;
    assert_eq!(status["vip"], json!(vip), "the status keeps what it showed");
    apply(
        &client,
        service("db", &cloud, vip, &["se-3"], paused.clone()),
        Some(&ns),
    )
    .await;
    stays(vip, &["se-1", "se-2"], 1, 3).await;
    // Deleted while Paused: the finalizer stays, and so do the resources.
    api.delete("db", &DeleteParams::default()).await.unwrap();
    support::eventually("the deletion shown as held", || async {
        let status = status_of(&api, "db").await;
        match condition(&status, "Ready") {
            Some((_, r, m)) if r == "Paused" && m.starts_with("deletion waits") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    stays(vip, &["se-1", "se-2"], 1, 3).await;
    assert!(api.get_opt("db").await.unwrap().is_some());
    // Unpaused: the deletion goes through and takes the resources with it.
    apply(
        &client,
        service(
            "db",
            &cloud,
            vip,
            &["se-3"],
            json!({"adc.dev/management-policy": "Full"}),
        ),
        Some(&ns),
    )
    .await;
    support::eventually("the object and its resources gone", || async {
        let left = api.get_opt("db").await.map_err(|e| e.to_string())?;
        let hops = hops(vip).await;
        if left.is_none() && hops.is_empty() && rules(vip).await == 0 {
            Ok(())
        } else {
            Err(format!("object {}, routes {hops:?}", left.is_some()))
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_to_observe_mid_rollout_stops_the_writes_at_once() {
    // Six writes per (6 s) window: ten objects' thirty writes take five windows.
    let spec = json!({"rateLimit": {"writesPerMinute": 6}});
    let (client, ns, cloud) = setup("midway", spec.clone()).await;
    let vips: Vec<String> = (1..=10).map(|i| format!("10.34.0.{i}")).collect();
    for (i, vip) in vips.iter().enumerate() {
        apply(
            &client,
            service(
                &format!("vs-{i}"),
                &cloud,
                vip,
                &["se-1", "se-2"],
                json!({}),
            ),
            Some(&ns),
        )
        .await;
    }
    let written = || async {
        let routes = support::operator::emulator_collection(url(), "routes").await;
        let rules = support::operator::emulator_collection(url(), "firewalls").await;
        let in_range = |v: &Value, key: &str| {
            v[key]
                .as_str()
                .or_else(|| v[key][0].as_str())
                .is_some_and(|d| d.starts_with("10.34.0."))
        };
        routes.iter().filter(|r| in_range(r, "destRange")).count()
            + rules
                .iter()
                .filter(|r| in_range(r, "destinationRanges"))
                .count()
    };
    support::eventually("the rollout under way", || async {
        match written().await {
            n if n >= 2 => Ok(()),
            n => Err(format!("{n} written")),
        }
    })
    .await;
    let mut observe = spec.clone();
    observe["managementPolicy"] = json!("Observe");
    observe["resyncInterval"] = json!("2s");
    apply(&client, cloud_manifest(&cloud, url(), &observe), None).await;
    // What Compute already runs finishes; nothing after it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let at_switch = written().await;
    assert!(at_switch < 30, "the rollout finished before the switch");
    for _ in 0..60 {
        assert_eq!(
            written().await,
            at_switch,
            "a write after the switch to Observe"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let api: Api<VirtualService> = Api::namespaced(client.clone(), &ns);
    let waiting = api
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|vs| {
            vs.status.as_ref().is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.reason == "AwaitingApproval")
            })
        })
        .count();
    assert!(waiting > 0, "no object waits for approval");
    // Back to Full: the rest of the rollout goes through.
    let mut full = spec;
    full["resyncInterval"] = json!("2s");
    apply(&client, cloud_manifest(&cloud, url(), &full), None).await;
    support::eventually_within("every object Ready", 120, || async {
        let list = api
            .list(&Default::default())
            .await
            .map_err(|e| e.to_string())?;
        let ready = list
            .items
            .iter()
            .filter(|vs| {
                vs.status.as_ref().is_some_and(|s| {
                    s.conditions
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True")
                })
            })
            .count();
        if ready == vips.len() && written().await == 30 {
            Ok(())
        } else {
            Err(format!("{ready} Ready"))
        }
    })
    .await;
}

/// Runs `adc-operator plan` against this plane; returns (exit code, stdout, stderr).
pub(crate) fn run_plan(args: &[&str]) -> (i32, String, String) {
    run_plan_as(&PLANE.get().kubeconfig, args)
}

/// [`run_plan`] with the rights of `kubeconfig`.
fn run_plan_as(kubeconfig: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    run_operator(kubeconfig, "plan", args)
}

/// Runs `adc-operator COMMAND` (plan, import) against this plane with the rights of
/// `kubeconfig`, as the suite's cluster, reading GCP with the emulator's metadata-server
/// identity; returns (exit code, stdout, stderr).
pub(crate) fn run_operator(
    kubeconfig: &std::path::Path,
    command: &str,
    args: &[&str],
) -> (i32, String, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_adc-operator"))
        .arg(command)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["--cluster-id", "policy-cluster"])
        .args(args)
        .env("GCE_METADATA_HOST", url().trim_start_matches("http://"))
        .env_remove("GOOGLE_APPLICATION_CREDENTIALS")
        .output()
        .expect("running adc-operator");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_prints_the_changes_writes_nothing_and_exits_by_them() {
    // A Compute of this test's own, so that its counters see only this cloud.
    let own = EmulatorProcess::start(
        &emulator_binary().expect("emulator"),
        WORLD,
        &["--auth", "any"],
    )
    .expect("emulator");
    let fixture = fixture();
    let client = PLANE.admin_client().await;
    let (ns, cloud) = tenant(
        &client,
        &own.base_url,
        "plan",
        json!({"resyncInterval": "2s"}),
    )
    .await;
    let _ = fixture;
    let vip = "10.35.0.1";
    apply(
        &client,
        service("shown", &cloud, vip, &["se-1"], json!({})),
        Some(&ns),
    )
    .await;
    wait_ready::<VirtualService>(&client, Some(&ns), "shown").await;
    let stats = || async {
        let stats = support::operator::emulator_stats(&own.base_url).await;
        (
            stats["operationsCreated"].clone(),
            stats["operationsPending"].clone(),
        )
    };
    support::eventually("the cloud quiet", || async {
        match stats().await {
            (_, pending) if pending == json!(0) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let before = stats().await;

    // Converged: no change, exit 0.
    let (code, out, err) = run_plan(&["--cloud", &cloud]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("no changes"), "{out}");
    assert!(
        out.contains("Plan: 0 to insert, 0 to replace, 0 to delete, 0 to adopt."),
        "{out}"
    );

    // What if: the object moves to two engines, a new one arrives, and one asks for a VIP inside
    // the subnetwork.
    let dir = std::env::temp_dir().join(format!("adc-plan-it-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut manifests = String::new();
    for (name, address, engines) in [
        ("shown", vip, vec!["se-1", "se-2"]),
        ("extra", "10.35.0.2", vec!["se-1"]),
        ("inside", "10.128.0.99", vec!["se-1"]),
    ] {
        let mut manifest = service(name, &cloud, address, &engines, json!({}));
        manifest["metadata"]["namespace"] = json!(ns);
        manifests.push_str(&serde_yaml::to_string(&manifest).unwrap());
        manifests.push_str("---\n");
    }
    std::fs::write(dir.join("what-if.yaml"), manifests).unwrap();
    let file = dir.join("what-if.yaml");
    // As a ServiceAccount that may only get and list: a write would be refused (and fail the
    // plan), so the plan's success shows it needs none.
    let kubectl = |args: &[&str]| {
        let plane = PLANE.get();
        let output = std::process::Command::new(&plane.binaries.kubectl)
            .args(args)
            .env("KUBECONFIG", &plane.kubeconfig)
            .output()
            .expect("running kubectl");
        assert!(
            output.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let reader = format!("planner-{ns}");
    kubectl(&["create", "serviceaccount", "planner", "-n", &ns]);
    kubectl(&[
        "create",
        "clusterrole",
        &reader,
        "--verb=get,list",
        "--resource=gcpclouds.adc.dev,virtualservices.adc.dev,vpcroutes.adc.dev,namespaces",
    ]);
    kubectl(&[
        "create",
        "clusterrolebinding",
        &reader,
        "--clusterrole",
        &reader,
        "--serviceaccount",
        &format!("{ns}:planner"),
    ]);
    let token = kubectl(&["create", "token", "planner", "-n", &ns, "--duration", "1h"]);
    let read_only = dir.join("planner.kubeconfig");
    PLANE.token_kubeconfig(token.trim(), &read_only);
    let (code, out, err) = run_plan_as(
        &read_only,
        &[
            "--cloud",
            &cloud,
            "-f",
            file.to_str().unwrap(),
            "-o",
            "json",
        ],
    );
    assert_eq!(code, 2, "{out}\n{err}");
    let plan: Value = serde_json::from_str(&out).unwrap();
    let cloud_plan = &plan["clouds"][0];
    let changes = cloud_plan["changes"].as_array().unwrap();
    let lines: Vec<String> = changes
        .iter()
        .map(|c| format!("{} {} {}", c["op"], c["detail"], c["owner"]))
        .collect();
    // shown: a route to se-2; extra: its route and its rule.
    assert_eq!(changes.len(), 3, "{lines:#?}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("10.35.0.1/32 via se-2") && l.contains("shown")),
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("10.35.0.2/32 via se-1") && l.contains("extra")),
        "{lines:#?}"
    );
    let refused = cloud_plan["refused"].as_array().unwrap();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(
        refused[0]["object"].as_str().unwrap().ends_with("/inside")
            && refused[0]["reason"]
                .as_str()
                .unwrap()
                .contains("inside subnetwork 'default'"),
        "{refused:?}"
    );
    let routes = cloud_plan["quota"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["metric"] == "ROUTES")
        .cloned()
        .unwrap();
    assert_eq!(
        routes["after"].as_f64().unwrap() - routes["usage"].as_f64().unwrap(),
        2.0,
        "{routes}"
    );
    assert!(cloud_plan["estimatedSeconds"].as_f64().unwrap() > 8.0);
    // The table and YAML say the same.
    let (code, out, _) = run_plan(&["--cloud", &cloud, "-f", file.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(
        out.contains("Plan: 3 to insert, 0 to replace, 0 to delete, 0 to adopt."),
        "{out}"
    );
    assert!(out.contains("refused  VirtualService"), "{out}");
    let (code, out, _) = run_plan(&[
        "--cloud",
        &cloud,
        "-f",
        file.to_str().unwrap(),
        "-o",
        "yaml",
    ]);
    assert_eq!(code, 2);
    assert!(serde_yaml::from_str::<Value>(&out).unwrap()["clouds"][0]["changes"].is_array());

    // It wrote nothing: not to Compute, not to the cluster.
    assert_eq!(stats().await, before, "plan wrote to Compute");
    let api: Api<VirtualService> = Api::namespaced(client.clone(), &ns);
    assert!(api.get_opt("extra").await.unwrap().is_none());
    let shown = api.get("shown").await.unwrap();
    assert_eq!(
        shown.spec.service_engines.len(),
        1,
        "plan changed the object"
    );
    // An error exits 1 with the reason.
    let (code, _, err) = run_plan(&["--cloud", "no-such-cloud"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("GcpCloud 'no-such-cloud' does not exist"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A stopped engine's routes go for an object under Full; an object under Observe keeps them
/// until its plan is approved: the direct withdrawal of a failover (which does not wait for
/// the objects' reconciles) asks each object's policy too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_leaves_an_observed_object_as_it_is() {
    let (client, ns, cloud) = setup("fo", json!({"instancePollInterval": "1s"})).await;
    let api: Api<VirtualService> = Api::namespaced(client.clone(), &ns);
    let (free, held) = ("10.36.0.1", "10.36.0.2");
    for (name, vip) in [("free", free), ("held", held)] {
        apply(
            &client,
            service(name, &cloud, vip, &["se-7", "se-8"], json!({})),
            Some(&ns),
        )
        .await;
    }
    for name in ["free", "held"] {
        wait_ready::<VirtualService>(&client, Some(&ns), name).await;
    }
    api.patch(
        "held",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(
            json!({"metadata": {"annotations": {"adc.dev/management-policy": "Observe"}}}),
        ),
    )
    .await
    .unwrap();
    support::eventually("held under Observe", || async {
        let status = status_of(&api, "held").await;
        if status["plan"]["hash"].is_string() {
            Ok(())
        } else {
            Err(status.to_string())
        }
    })
    .await;
    assert_eq!(hops(free).await, ["se-7", "se-8"]);
    assert_eq!(hops(held).await, ["se-7", "se-8"]);

    let power = |verb: &'static str| async move {
        support::operator::compute(
            url(),
            reqwest::Method::POST,
            &format!("zones/us-central1-a/instances/se-7/{verb}"),
            json!({}),
        )
        .await
    };
    power("stop").await;
    support::eventually("the free VIP's route to se-7 withdrawn", || async {
        match hops(free).await.as_slice() {
            [only] if only == "se-8" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let status = wait_reason(&api, "held", "AwaitingApproval").await;
    assert_eq!(status["plan"]["deletes"], 1, "{status}");
    stays(held, &["se-7", "se-8"], 1, 3).await;
    power("start").await;
    support::eventually("the free VIP back on both engines", || async {
        match hops(free).await.as_slice() {
            [a, b] if a == "se-7" && b == "se-8" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
}
