//! The Helm chart (charts/adc-operator) on real parts: `helm lint` and `helm template` with the
//! values schema, `helm install` / `upgrade` / `uninstall` against this suite's kube-apiserver,
//! and the operator binary run out of cluster with the chart's ServiceAccount token, so that the
//! chart's RBAC is proven to be enough for the whole loop and to refuse everything else.
//!
//! The chart's Grafana dashboard and PrometheusRule are rendered and checked too: the rules and
//! the dashboard's queries with promtool (`check rules`, and `test rules` with
//! tests/fixtures/prometheus/alerts-test.yaml), every metric they name against the running
//! operator's /metrics.
//!
//! Every test installs its own release (the release name is also the name of the cluster-scoped
//! ClusterRole) into its own namespace; only one test starts an operator process.

use crate::support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use adc_operator::api::{GcpCloud, VirtualService};
use adc_testenv::{EmulatorProcess, emulator_binary};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Secret, Service, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde::Deserialize;
use serde_json::{Value, json};

const WORLD: &str = "projects:
  - id: helm-project
    quotas: {ROUTES: 1000, STATIC_ROUTES_PER_NETWORK: 1000, FIREWALLS: 1000, STATIC_ADDRESSES: 100}
    networks:
      - name: default
        subnetworks:
          - {name: default, region: us-central1, ipCidrRange: 10.128.0.0/20}
    instances:
      - {name: se-1, zone: us-central1-a, networkIP: 10.128.0.10, canIpForward: true}
      - {name: se-2, zone: us-central1-b, networkIP: 10.128.0.11, canIpForward: true}
";

const CRD_NAMES: [&str; 3] = [
    "gcpclouds.adc.dev",
    "virtualservices.adc.dev",
    "vpcroutes.adc.dev",
];

fn chart() -> PathBuf {
    adc_testenv::repo_root().join("charts/adc-operator")
}

fn helm_binary() -> PathBuf {
    adc_testenv::Binaries::locate()
        .expect("envtest binaries (make envtest)")
        .helm
}

/// Runs helm (against this suite's control plane when `cluster` is set).
fn helm(args: &[&str], cluster: bool) -> Output {
    let mut command = Command::new(helm_binary());
    command.args(args).stdin(Stdio::null());
    if cluster {
        let plane = PLANE.get();
        command.env("KUBECONFIG", &plane.kubeconfig);
    }
    command.output().expect("running helm")
}

/// Runs helm and fails the test with its output when it fails; returns stdout.
fn helm_ok(args: &[&str], cluster: bool) -> String {
    let output = helm(args, cluster);
    assert!(
        output.status.success(),
        "helm {}: {}\n{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn kubectl(args: &[&str], kubeconfig: &Path) -> Output {
    let plane = PLANE.get();
    Command::new(&plane.binaries.kubectl)
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .stdin(Stdio::null())
        .output()
        .expect("running kubectl")
}

fn kubectl_ok(args: &[&str]) -> String {
    let plane = PLANE.get();
    let output = kubectl(args, &plane.kubeconfig);
    assert!(
        output.status.success(),
        "kubectl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The objects of a multi-document YAML stream, as JSON values (empty documents dropped).
fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|document| serde_yaml::Value::deserialize(document).expect("valid YAML"))
        .filter(|value| !value.is_null())
        .map(|value| serde_json::to_value(value).expect("YAML as JSON"))
        .collect()
}

/// `helm template` of the chart as release `release` in `namespace` with `--set` values.
fn render(release: &str, namespace: &str, sets: &[&str]) -> Vec<Value> {
    let chart = chart();
    let mut args = vec![
        "template",
        release,
        chart.to_str().unwrap(),
        "--namespace",
        namespace,
    ];
    for set in sets {
        args.extend(["--set", set]);
    }
    documents(&helm_ok(&args, false))
}

fn kinds(objects: &[Value]) -> BTreeSet<String> {
    objects
        .iter()
        .map(|o| o["kind"].as_str().unwrap().to_string())
        .collect()
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind}/{name} in {:#?}", kinds(objects)))
}

fn all_of<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

/// A role's rules flattened to (apiGroup, resource, verb, resourceNames).
fn rule_set(role: &Value) -> BTreeSet<(String, String, String, String)> {
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect())
            .unwrap_or_default()
    };
    let mut set = BTreeSet::new();
    for rule in role["rules"].as_array().unwrap() {
        let names = strings(&rule["resourceNames"]).join(",");
        for group in strings(&rule["apiGroups"]) {
            for resource in strings(&rule["resources"]) {
                for verb in strings(&rule["verbs"]) {
                    set.insert((group.clone(), resource.clone(), verb, names.clone()));
                }
            }
        }
    }
    set
}

fn expand(rules: &[(&str, &[&str], &[&str], &str)]) -> BTreeSet<(String, String, String, String)> {
    let mut set = BTreeSet::new();
    for (group, resources, verbs, names) in rules {
        for resource in *resources {
            for verb in *verbs {
                set.insert((
                    group.to_string(),
                    resource.to_string(),
                    verb.to_string(),
                    names.to_string(),
                ));
            }
        }
    }
    set
}

fn cluster_role_rules() -> BTreeSet<(String, String, String, String)> {
    expand(&[
        (
            "adc.dev",
            &["gcpclouds", "virtualservices", "vpcroutes"],
            &["get", "list", "watch", "patch", "update"],
            "",
        ),
        (
            "adc.dev",
            &[
                "gcpclouds/status",
                "virtualservices/status",
                "vpcroutes/status",
            ],
            &["get", "patch", "update"],
            "",
        ),
        ("", &["namespaces"], &["get", "list", "watch"], ""),
        ("events.k8s.io", &["events"], &["create", "patch"], ""),
    ])
}

fn lease_role_rules(lease: &str) -> BTreeSet<(String, String, String, String)> {
    expand(&[
        ("coordination.k8s.io", &["leases"], &["create"], ""),
        (
            "coordination.k8s.io",
            &["leases"],
            &["get", "update", "patch"],
            lease,
        ),
    ])
}

fn secret_role_rules() -> BTreeSet<(String, String, String, String)> {
    expand(&[("", &["secrets"], &["get"], "")])
}

/// No rule of any Role or ClusterRole uses a wildcard.
fn assert_no_wildcards(objects: &[Value]) {
    for role in objects
        .iter()
        .filter(|o| o["kind"] == "Role" || o["kind"] == "ClusterRole")
    {
        for (group, resource, verb, names) in rule_set(role) {
            assert!(
                ![&group, &resource, &verb, &names]
                    .iter()
                    .any(|s| s.contains('*')),
                "wildcard in {}: {group} {resource} {verb} {names}",
                role["metadata"]["name"]
            );
        }
    }
}

fn container(deployment: &Value) -> &Value {
    &deployment["spec"]["template"]["spec"]["containers"][0]
}

fn args(deployment: &Value) -> Vec<String> {
    container(deployment)["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

use support::eventually;
use support::{Plane, assert_forbidden};

/// This suite's control plane, shared with no other suite: the chart installs cluster-wide RBAC and
/// runs an operator.
const PLANE: Plane = Plane::Helm;

fn is_ready(status: &Value) -> bool {
    status["conditions"].as_array().is_some_and(|c| {
        c.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

#[test]
fn chart_lints_and_renders_with_the_schema() {
    let chart = chart();
    let chart = chart.to_str().unwrap();
    let lint = helm_ok(&["lint", "--strict", chart], false);
    assert!(lint.contains("0 chart(s) failed"), "{lint}");

    // The chart's CRDs are the generated ones, byte for byte.
    for name in CRD_NAMES {
        let file = format!("{name}.yaml");
        let generated = std::fs::read(adc_testenv::repo_root().join("crds").join(&file)).unwrap();
        let copied = std::fs::read(Path::new(chart).join("crds").join(&file)).unwrap();
        assert!(
            generated == copied,
            "charts/adc-operator/crds/{file} differs from crds/: run make crds"
        );
    }
    let with_crds = documents(&helm_ok(
        &["template", "adc-operator", chart, "--include-crds"],
        false,
    ));
    let crds: BTreeSet<_> = all_of(&with_crds, "CustomResourceDefinition")
        .iter()
        .map(|c| c["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(crds, CRD_NAMES.iter().map(|s| s.to_string()).collect());

    // Default values.
    let objects = render("adc-operator", "adc-system", &[]);
    assert_eq!(
        kinds(&objects),
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "Deployment",
            "PodDisruptionBudget",
            "Role",
            "RoleBinding",
            "Service",
            "ServiceAccount",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    );
    for object in &objects {
        if object["kind"] != "ClusterRole" && object["kind"] != "ClusterRoleBinding" {
            assert_eq!(object["metadata"]["namespace"], "adc-system", "{object}");
        }
    }
    assert_no_wildcards(&objects);
    assert_eq!(
        rule_set(find(&objects, "ClusterRole", "adc-operator")),
        cluster_role_rules()
    );
    let binding = find(&objects, "ClusterRoleBinding", "adc-operator");
    assert_eq!(binding["roleRef"]["name"], "adc-operator");
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": "adc-operator", "namespace": "adc-system"}])
    );
    let roles = all_of(&objects, "Role");
    assert_eq!(
        roles.len(),
        1,
        "only the leader-election Role without secretNamespaces"
    );
    assert_eq!(roles[0]["metadata"]["name"], "adc-operator-leader-election");
    assert_eq!(rule_set(roles[0]), lease_role_rules("adc-operator"));
    let service_account = find(&objects, "ServiceAccount", "adc-operator");
    assert!(
        service_account["metadata"]["annotations"].is_null(),
        "no Workload Identity annotation without gcp.serviceAccount: {service_account}"
    );

    let deployment = find(&objects, "Deployment", "adc-operator");
    assert_eq!(deployment["spec"]["replicas"], 2);
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "adc-operator");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["runAsUser"], 65532);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let c = container(deployment);
    assert_eq!(c["image"], "adc-operator:0.1.0");
    assert_eq!(
        c["securityContext"],
        json!({"runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532,
               "readOnlyRootFilesystem": true, "allowPrivilegeEscalation": false,
               "privileged": false, "capabilities": {"drop": ["ALL"]},
               "seccompProfile": {"type": "RuntimeDefault"}})
    );
    assert_eq!(
        c["resources"],
        json!({"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "1", "memory": "512Mi"}})
    );
    assert_eq!(
        c["ports"],
        json!([{"name": "metrics", "containerPort": 8080, "protocol": "TCP"}])
    );
    assert_eq!(
        c["livenessProbe"]["httpGet"],
        json!({"path": "/healthz", "port": "metrics"})
    );
    assert_eq!(
        c["readinessProbe"]["httpGet"],
        json!({"path": "/readyz", "port": "metrics"})
    );
    let env: BTreeSet<_> = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_string(),
                e["valueFrom"]["fieldRef"]["fieldPath"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect();
    assert!(
        env.contains(&("POD_NAME".into(), "metadata.name".into())),
        "{env:?}"
    );
    assert!(
        env.contains(&("POD_NAMESPACE".into(), "metadata.namespace".into())),
        "{env:?}"
    );
    assert_eq!(
        args(deployment),
        [
            "run",
            "--cluster-id=default",
            "--metrics-addr=0.0.0.0:8080",
            "--gcp-dispatch=batched",
            "--log-format=json",
            "--leader-election",
            "--lease-name=adc-operator",
            "--lease-namespace=adc-system",
            "--lease-duration=15",
        ]
    );
    let service = find(&objects, "Service", "adc-operator-metrics");
    assert_eq!(
        service["spec"]["ports"],
        json!([{"name": "metrics", "port": 8080, "targetPort": "metrics", "protocol": "TCP"}])
    );
    assert_eq!(
        service["spec"]["selector"],
        deployment["spec"]["selector"]["matchLabels"]
    );
    let pdb = find(&objects, "PodDisruptionBudget", "adc-operator");
    assert_eq!(pdb["spec"]["minAvailable"], 1);

    // Non-default values.
    let objects = render(
        "ops",
        "platform",
        &[
            "replicas=3",
            "metrics.serviceMonitor.enabled=true",
            "secretNamespaces={a,b}",
            "gcp.serviceAccount=adc@my-project.iam.gserviceaccount.com",
            "clusterId=prod-eu1",
            "gcpDispatch=per-object",
        ],
    );
    assert!(kinds(&objects).contains("ServiceMonitor"));
    assert_no_wildcards(&objects);
    let deployment = find(&objects, "Deployment", "ops-adc-operator");
    assert_eq!(deployment["spec"]["replicas"], 3);
    let deployment_args = args(deployment);
    for expected in [
        "--cluster-id=prod-eu1",
        "--gcp-dispatch=per-object",
        "--leader-election",
        "--lease-namespace=platform",
    ] {
        assert!(
            deployment_args.iter().any(|a| a == expected),
            "{expected} in {deployment_args:?}"
        );
    }
    assert_eq!(
        find(&objects, "ServiceAccount", "ops-adc-operator")["metadata"]["annotations"]["iam.gke.io/gcp-service-account"],
        "adc@my-project.iam.gserviceaccount.com"
    );
    let monitor = find(&objects, "ServiceMonitor", "ops-adc-operator");
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "metrics");
    assert_eq!(monitor["spec"]["endpoints"][0]["path"], "/metrics");
    let secret_roles: Vec<_> = all_of(&objects, "Role")
        .into_iter()
        .filter(|r| r["metadata"]["name"] == "ops-adc-operator-secrets")
        .collect();
    assert_eq!(
        secret_roles
            .iter()
            .map(|r| r["metadata"]["namespace"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["a", "b"],
        "one secrets Role per secretNamespaces entry"
    );
    for role in &secret_roles {
        assert_eq!(rule_set(role), secret_role_rules());
    }
    for namespace in ["a", "b"] {
        let binding = all_of(&objects, "RoleBinding")
            .into_iter()
            .find(|b| {
                b["metadata"]["name"] == "ops-adc-operator-secrets"
                    && b["metadata"]["namespace"] == namespace
            })
            .unwrap_or_else(|| panic!("no secrets RoleBinding in {namespace}"));
        assert_eq!(binding["roleRef"]["name"], "ops-adc-operator-secrets");
        assert_eq!(
            binding["subjects"],
            json!([{"kind": "ServiceAccount", "name": "ops-adc-operator", "namespace": "platform"}])
        );
    }
    // Secrets appear in no other rule of the chart.
    for role in all_of(&objects, "Role")
        .into_iter()
        .chain(all_of(&objects, "ClusterRole"))
    {
        if role["metadata"]["name"] != "ops-adc-operator-secrets" {
            assert!(
                rule_set(role)
                    .iter()
                    .all(|(_, resource, _, _)| resource != "secrets"),
                "{role}"
            );
        }
    }

    // One replica without leader election: no Lease Role, no PDB, no --leader-election.
    let objects = render(
        "adc-operator",
        "adc-system",
        &[
            "replicas=1",
            "leaderElection.enabled=false",
            "logFormat=text",
        ],
    );
    assert!(!kinds(&objects).contains("PodDisruptionBudget"));
    assert!(!kinds(&objects).contains("Role"));
    let single = args(find(&objects, "Deployment", "adc-operator"));
    assert!(
        !single
            .iter()
            .any(|a| a.starts_with("--lease") || a == "--leader-election"),
        "{single:?}"
    );
    assert!(
        single.iter().any(|a| a == "--log-format=text"),
        "{single:?}"
    );
    // ... but more than one replica always elects a leader.
    let objects = render(
        "adc-operator",
        "adc-system",
        &["replicas=2", "leaderElection.enabled=false"],
    );
    assert!(
        args(find(&objects, "Deployment", "adc-operator"))
            .iter()
            .any(|a| a == "--leader-election")
    );

    // Sharding replaces leader election: --sharding with the Lease flags, a Role over the
    // namespace's Leases (per-cloud names cannot be listed in resourceNames), no election Role.
    let objects = render("adc-operator", "adc-system", &["sharding.enabled=true"]);
    let sharded = args(find(&objects, "Deployment", "adc-operator"));
    assert!(sharded.iter().any(|a| a == "--sharding"), "{sharded:?}");
    assert!(
        !sharded.iter().any(|a| a == "--leader-election"),
        "{sharded:?}"
    );
    assert!(
        sharded.iter().any(|a| a == "--lease-namespace=adc-system"),
        "{sharded:?}"
    );
    let roles = all_of(&objects, "Role");
    assert_eq!(roles.len(), 1, "only the sharding Role: {roles:?}");
    assert_eq!(roles[0]["metadata"]["name"], "adc-operator-sharding");
    assert_eq!(
        rule_set(roles[0]),
        expand(&[(
            "coordination.k8s.io",
            &["leases"],
            &[
                "get", "list", "watch", "create", "update", "patch", "delete"
            ],
            "",
        )])
    );
    let output = helm(
        &[
            "template",
            "adc-operator",
            chart,
            "--set",
            "sharding.enabled=true",
            "--set",
            "replicas=1",
        ],
        false,
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "sharding with one replica rendered"
    );
    assert!(
        stderr.contains("sharding.enabled needs replicas >= 2"),
        "{stderr}"
    );

    // The schema refuses bad values and names them.
    for (set, names) in [
        ("replicas=0", "replicas"),
        ("gcpDispatch=bogus", "gcpDispatch"),
        ("logFormat=xml", "logFormat"),
        ("typo=1", "typo"),
        ("image.tga=1", "tga"),
        ("clusterId=", "clusterId"),
    ] {
        let output = helm(&["template", "adc-operator", chart, "--set", set], false);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "--set {set} rendered");
        assert!(stderr.contains(names), "--set {set}: {stderr}");
        assert!(stderr.contains("schema"), "--set {set}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_creates_every_object() {
    let client = PLANE.admin_client().await;
    let namespace = support::test_namespace(&client, "helm-install").await;
    let secrets_a = support::test_namespace(&client, "helm-sec-a").await;
    let secrets_b = support::test_namespace(&client, "helm-sec-b").await;
    let release = "adc-operator-install";
    let chart = chart();
    let notes = helm_ok(
        &[
            "install",
            release,
            chart.to_str().unwrap(),
            "--namespace",
            &namespace,
            "--set",
            &format!("secretNamespaces={{{secrets_a},{secrets_b}}}"),
            "--set",
            "gcp.serviceAccount=adc@helm-project.iam.gserviceaccount.com",
            "--set",
            "clusterId=helm-install",
        ],
        true,
    );
    assert!(notes.contains("kubectl get adc -A"), "{notes}");
    assert!(notes.contains("GcpCloud"), "{notes}");

    // Every object of the release's manifest exists (kubectl get fails on any missing one).
    let manifest = helm_ok(&["get", "manifest", release, "-n", &namespace], true);
    let rendered = documents(&manifest);
    let dir = tempdir("helm-install");
    let manifest_file = dir.join("manifest.yaml");
    std::fs::write(&manifest_file, &manifest).unwrap();
    let listed: Value = serde_json::from_str(&kubectl_ok(&[
        "get",
        "-f",
        manifest_file.to_str().unwrap(),
        "-o",
        "json",
    ]))
    .unwrap();
    let items = listed["items"].as_array().unwrap();
    assert_eq!(
        items.len(),
        rendered.len(),
        "{:?} vs {:?}",
        kinds(items),
        kinds(&rendered)
    );
    let _ = std::fs::remove_dir_all(&dir);

    // And with the expected content.
    let deployment = Api::<Deployment>::namespaced(client.clone(), &namespace)
        .get(release)
        .await
        .unwrap();
    assert_eq!(deployment.spec.as_ref().unwrap().replicas, Some(2));
    let service_account = Api::<ServiceAccount>::namespaced(client.clone(), &namespace)
        .get(release)
        .await
        .unwrap();
    assert_eq!(
        service_account
            .metadata
            .annotations
            .unwrap_or_default()
            .get("iam.gke.io/gcp-service-account")
            .map(String::as_str),
        Some("adc@helm-project.iam.gserviceaccount.com")
    );
    let service = Api::<Service>::namespaced(client.clone(), &namespace)
        .get(&format!("{release}-metrics"))
        .await
        .unwrap();
    let port = &service.spec.unwrap().ports.unwrap()[0];
    assert_eq!((port.name.as_deref(), port.port), (Some("metrics"), 8080));
    let pdb = Api::<PodDisruptionBudget>::namespaced(client.clone(), &namespace)
        .get(release)
        .await
        .unwrap();
    assert_eq!(
        pdb.spec.unwrap().min_available,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1))
    );
    let cluster_role = Api::<ClusterRole>::all(client.clone())
        .get(release)
        .await
        .unwrap();
    assert_eq!(
        rule_set(&serde_json::to_value(&cluster_role).unwrap()),
        cluster_role_rules()
    );
    let cluster_binding = Api::<ClusterRoleBinding>::all(client.clone())
        .get(release)
        .await
        .unwrap();
    let subject = &cluster_binding.subjects.unwrap()[0];
    assert_eq!(
        (subject.name.as_str(), subject.namespace.as_deref()),
        (release, Some(namespace.as_str()))
    );
    let lease_role = Api::<Role>::namespaced(client.clone(), &namespace)
        .get(&format!("{release}-leader-election"))
        .await
        .unwrap();
    assert_eq!(
        rule_set(&serde_json::to_value(&lease_role).unwrap()),
        lease_role_rules("adc-operator")
    );
    Api::<RoleBinding>::namespaced(client.clone(), &namespace)
        .get(&format!("{release}-leader-election"))
        .await
        .unwrap();
    for secrets in [&secrets_a, &secrets_b] {
        let role = Api::<Role>::namespaced(client.clone(), secrets)
            .get(&format!("{release}-secrets"))
            .await
            .unwrap();
        assert_eq!(
            rule_set(&serde_json::to_value(&role).unwrap()),
            secret_role_rules()
        );
        let binding = Api::<RoleBinding>::namespaced(client.clone(), secrets)
            .get(&format!("{release}-secrets"))
            .await
            .unwrap();
        assert_eq!(
            binding.subjects.unwrap()[0].namespace.as_deref(),
            Some(namespace.as_str())
        );
    }
    // The chart's crds/ are installed (or were already there: helm skips existing CRDs).
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for name in CRD_NAMES {
        crds.get(name).await.unwrap();
    }
    let status = helm_ok(&["status", release, "-n", &namespace, "-o", "json"], true);
    let status: Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["info"]["status"], "deployed");
}

/// A temporary directory of this test process (removed by the test that made it).
fn tempdir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("adc-helm-test-{}-{what}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_rbac_runs_the_operator_and_refuses_the_rest() {
    let admin = PLANE.admin_client().await;
    let namespace = support::test_namespace(&admin, "helm-rbac").await;
    let secrets_ns = support::test_namespace(&admin, "helm-creds").await;
    let other_ns = support::test_namespace(&admin, "helm-nocreds").await;
    let tenant = support::test_namespace(&admin, "helm-tenant").await;
    let release = "adc-operator-rbac";
    let chart = chart();
    helm_ok(
        &[
            "install",
            release,
            chart.to_str().unwrap(),
            "--namespace",
            &namespace,
            "--set",
            "replicas=1",
            "--set",
            &format!("secretNamespaces={{{secrets_ns}}}"),
        ],
        true,
    );
    kubectl_ok(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/gcpclouds.adc.dev",
        "crd/virtualservices.adc.dev",
        "crd/vpcroutes.adc.dev",
    ]);
    for ns in [&secrets_ns, &other_ns] {
        Api::<Secret>::namespaced(admin.clone(), ns)
            .create(
                &PostParams::default(),
                &serde_json::from_value(
                    json!({"metadata": {"name": "gcp-key"}, "stringData": {"key.json": "{}"}}),
                )
                .unwrap(),
            )
            .await
            .unwrap();
    }

    // The ServiceAccount's token through the TokenRequest API, in a kubeconfig of its own.
    let token = kubectl_ok(&[
        "create",
        "token",
        release,
        "-n",
        &namespace,
        "--duration",
        "1h",
    ]);
    let dir = tempdir("rbac");
    let kubeconfig = dir.join("operator.kubeconfig");
    PLANE.token_kubeconfig(token.trim(), &kubeconfig);
    let operator_client = support::client_for(&kubeconfig).await;

    // What the chart must refuse.
    assert_forbidden(
        Api::<Secret>::all(operator_client.clone())
            .list(&ListParams::default())
            .await,
        "listing Secrets cluster-wide",
    );
    assert_forbidden(
        Api::<Secret>::namespaced(operator_client.clone(), &other_ns)
            .get("gcp-key")
            .await,
        "reading a Secret outside secretNamespaces",
    );
    assert_forbidden(
        Api::<Secret>::namespaced(operator_client.clone(), &secrets_ns)
            .list(&ListParams::default())
            .await,
        "listing Secrets in a secretNamespaces entry (get only)",
    );
    assert_forbidden(
        Api::<Deployment>::namespaced(operator_client.clone(), &namespace)
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({
                    "metadata": {"name": "intruder"},
                    "spec": {"selector": {"matchLabels": {"app": "x"}},
                             "template": {"metadata": {"labels": {"app": "x"}},
                                          "spec": {"containers": [{"name": "x", "image": "x"}]}}}
                }))
                .unwrap(),
            )
            .await,
        "creating a Deployment",
    );
    assert_forbidden(
        Api::<GcpCloud>::all(operator_client.clone())
            .delete("anything", &DeleteParams::default())
            .await,
        "deleting a GcpCloud",
    );
    // ... and what it grants: a Secret in a secretNamespaces entry.
    Api::<Secret>::namespaced(operator_client.clone(), &secrets_ns)
        .get("gcp-key")
        .await
        .expect("get on a Secret in secretNamespaces");

    // The operator binary with nothing but that token.
    let emulator = EmulatorProcess::start(
        &emulator_binary().expect("emulator"),
        WORLD,
        &["--auth", "token"],
    )
    .expect("emulator");
    let binary = env!("CARGO_BIN_EXE_adc-operator");
    let pod_name = format!("{release}-0");
    let log_path = dir.join("operator.log");
    let metrics_port = adc_testenv::free_port().expect("a free loopback port");
    let mut command = Command::new(binary);
    command
        .args(["run", "--kubeconfig"])
        .arg(&kubeconfig)
        .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
        .args(["--cluster-id", "helm-test"]);
    // As the chart runs it: leader election with the Lease in the release namespace, under the
    // chart's Role.
    command.args([
        "--leader-election",
        "--lease-name",
        "adc-operator",
        "--lease-namespace",
        &namespace,
    ]);
    command
        .env(
            "GCE_METADATA_HOST",
            emulator.base_url.trim_start_matches("http://"),
        )
        .env("POD_NAME", &pod_name)
        .env("POD_NAMESPACE", &namespace)
        .env("RUST_LOG", "warn")
        .env_remove("KUBECONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap());
    let operator = std::sync::Mutex::new(
        adc_testenv::spawn_for_process_lifetime(command).expect("starting adc-operator"),
    );

    let cloud = format!("helm-cloud-{}", std::process::id());
    Api::<GcpCloud>::all(admin.clone())
        .patch(
            &cloud,
            &PatchParams::apply("test").force(),
            &Patch::Apply(json!({
                "apiVersion": "adc.dev/v1alpha1", "kind": "GcpCloud", "metadata": {"name": cloud},
                "spec": {"project": "helm-project", "network": "default", "region": "us-central1",
                         "credentials": {"workloadIdentity": {}}, "endpoint": emulator.base_url,
                         "allowedDestinationRanges": ["10.0.0.0/8"], "resyncInterval": "1s"}
            })),
        )
        .await
        .unwrap();
    let vs_name = "helm-web";
    let services: Api<VirtualService> = Api::namespaced(admin.clone(), &tenant);
    services
        .patch(
            vs_name,
            &PatchParams::apply("test").force(),
            &Patch::Apply(json!({
                "apiVersion": "adc.dev/v1alpha1", "kind": "VirtualService", "metadata": {"name": vs_name},
                "spec": {"cloudRef": cloud, "vip": {"address": "10.31.0.1"}, "ports": [{"port": 443}],
                         "sourceRanges": ["10.0.0.0/8"], "mode": "ActiveActive",
                         "serviceEngines": [{"name": "se-1", "zone": "us-central1-a"},
                                            {"name": "se-2", "zone": "us-central1-b"}]}
            })),
        )
        .await
        .unwrap();
    let clouds: Api<GcpCloud> = Api::all(admin.clone());
    // What a failed wait reports besides the object: whether the operator still runs, its log.
    let operator_note = || {
        let state = match operator.lock().unwrap().try_wait() {
            Ok(Some(exit)) => format!("the operator exited ({exit})"),
            _ => "the operator runs".to_string(),
        };
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        let tail: String = log
            .chars()
            .rev()
            .take(3000)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        format!("{state}; its log ends with:\n{tail}")
    };
    eventually("the GcpCloud Ready", || async {
        let status =
            serde_json::to_value(clouds.get(&cloud).await.unwrap()).unwrap()["status"].clone();
        if is_ready(&status) {
            Ok(())
        } else {
            Err(format!("{status}; {}", operator_note()))
        }
    })
    .await;
    eventually("the VirtualService Ready", || async {
        let status =
            serde_json::to_value(services.get(vs_name).await.unwrap()).unwrap()["status"].clone();
        if is_ready(&status) {
            Ok(())
        } else {
            Err(format!("{status}; {}", operator_note()))
        }
    })
    .await;
    let vs = services.get(vs_name).await.unwrap();
    assert!(
        vs.metadata
            .finalizers
            .as_ref()
            .is_some_and(|f| !f.is_empty()),
        "the operator added its finalizer (patch on the object)"
    );
    // Its event went through events.k8s.io/v1.
    let events: Api<Event> = Api::namespaced(admin.clone(), &tenant);
    eventually("the Applying event", || async {
        let list = events.list(&ListParams::default()).await.unwrap();
        if list.items.iter().any(|e| {
            e.reason.as_deref() == Some("Applying")
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(vs_name)
        }) {
            Ok(())
        } else {
            Err(format!("{} events; {}", list.items.len(), operator_note()))
        }
    })
    .await;
    let lease = Api::<Lease>::namespaced(admin.clone(), &namespace)
        .get("adc-operator")
        .await
        .unwrap();
    assert_eq!(
        lease.spec.and_then(|s| s.holder_identity).as_deref(),
        Some(pod_name.as_str()),
        "the operator holds the Lease in the release namespace"
    );

    // Every metric the chart's dashboard and alerts name is on the running operator's
    // /metrics (checked at the end, so that the rest of this test runs either way). A family
    // without series is not exposed at all (not even its `# TYPE`), and some get series only
    // once something happened (a retry, a refused call): a second VirtualService is made under
    // GCP faults while /metrics is read, then heals. The progress gauges are refreshed every
    // few seconds.
    let wanted = monitored_metric_names();
    let metrics_url = format!("http://127.0.0.1:{metrics_port}/metrics");
    let set_faults = |spec: &'static str| {
        let url = format!("{}/_emulator/faults", emulator.base_url);
        async move {
            let answer = reqwest::Client::new()
                .post(url)
                .json(&json!({"spec": spec}))
                .send()
                .await
                .expect("setting the emulator's faults");
            assert!(answer.status().is_success(), "{answer:?}");
        }
    };
    set_faults("http500=0.2,ratelimit=0.2,opfail=0.5").await;
    let faulted = "helm-faulted";
    services
        .patch(
            faulted,
            &PatchParams::apply("test").force(),
            &Patch::Apply(json!({
                "apiVersion": "adc.dev/v1alpha1", "kind": "VirtualService", "metadata": {"name": faulted},
                "spec": {"cloudRef": cloud, "vip": {"address": "10.31.0.2"}, "ports": [{"port": 443}],
                         "sourceRanges": ["10.0.0.0/8"], "mode": "ActiveActive",
                         "serviceEngines": [{"name": "se-1", "zone": "us-central1-a"},
                                            {"name": "se-2", "zone": "us-central1-b"}]}
            })),
        )
        .await
        .unwrap();
    let mut missing = Vec::new();
    let mut exposed = String::new();
    for _ in 0..90 {
        let text = reqwest::get(&metrics_url)
            .await
            .expect("scraping /metrics")
            .text()
            .await
            .unwrap();
        missing = missing_metrics(&text, &wanted);
        exposed = text
            .lines()
            .filter(|l| l.starts_with("# TYPE ") || l.contains("_total{"))
            .collect::<Vec<_>>()
            .join("\n");
        if missing.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    set_faults("").await;
    eventually("the VirtualService made under faults Ready", || async {
        let status =
            serde_json::to_value(services.get(faulted).await.unwrap()).unwrap()["status"].clone();
        if is_ready(&status) {
            Ok(())
        } else {
            Err(format!("{status}; {}", operator_note()))
        }
    })
    .await;
    services
        .delete(faulted, &DeleteParams::default())
        .await
        .unwrap();

    // Deleting the object: the finalizer's cleanup runs and removes the finalizer.
    services
        .delete(vs_name, &DeleteParams::default())
        .await
        .unwrap();
    eventually("the VirtualServices gone", || async {
        for name in [vs_name, faulted] {
            if let Some(vs) = services.get_opt(name).await.unwrap() {
                return Err(format!("{name}: {:?}", vs.metadata.finalizers));
            }
        }
        Ok(())
    })
    .await;
    clouds
        .delete(&cloud, &DeleteParams::default())
        .await
        .unwrap();

    let mut operator = operator.into_inner().unwrap();
    operator.kill().unwrap();
    operator.wait().unwrap();
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        !log.to_lowercase().contains("forbidden"),
        "the operator was refused something it needs:\n{log}"
    );

    // The same release with sharding: its Role lets the operator hold a Lease per cloud (and
    // its membership Lease) in the release namespace, and nothing elsewhere.
    helm_ok(
        &[
            "upgrade",
            release,
            chart.to_str().unwrap(),
            "--namespace",
            &namespace,
            "--reuse-values",
            "--set",
            "replicas=2",
            "--set",
            "sharding.enabled=true",
        ],
        true,
    );
    let roles: Api<Role> = Api::namespaced(admin.clone(), &namespace);
    assert!(
        roles
            .get_opt(&format!("{release}-sharding"))
            .await
            .unwrap()
            .is_some(),
        "the sharding Role is installed"
    );
    assert!(
        roles
            .get_opt(&format!("{release}-leader-election"))
            .await
            .unwrap()
            .is_none(),
        "sharding replaces leader election"
    );
    assert_forbidden(
        Api::<Lease>::namespaced(operator_client.clone(), &other_ns)
            .list(&ListParams::default())
            .await,
        "listing Leases outside the release namespace",
    );
    let shard_log = dir.join("operator-sharded.log");
    let mut command = Command::new(binary);
    command
        .args(["run", "--kubeconfig"])
        .arg(&kubeconfig)
        .args(["--metrics-addr", "127.0.0.1:0"])
        .args(["--cluster-id", "helm-test"])
        .args([
            "--sharding",
            "--lease-name",
            "adc-operator",
            "--lease-namespace",
            &namespace,
        ])
        .env(
            "GCE_METADATA_HOST",
            emulator.base_url.trim_start_matches("http://"),
        )
        .env("POD_NAME", &pod_name)
        .env("POD_NAMESPACE", &namespace)
        .env("RUST_LOG", "warn")
        .env_remove("KUBECONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&shard_log).unwrap());
    let mut sharded =
        adc_testenv::spawn_for_process_lifetime(command).expect("starting adc-operator --sharding");
    let shard_cloud = format!("helm-shard-{}", std::process::id());
    clouds
        .patch(
            &shard_cloud,
            &PatchParams::apply("test").force(),
            &Patch::Apply(json!({
                "apiVersion": "adc.dev/v1alpha1", "kind": "GcpCloud", "metadata": {"name": shard_cloud},
                "spec": {"project": "helm-project", "network": "default", "region": "us-central1",
                         "credentials": {"workloadIdentity": {}}, "endpoint": emulator.base_url}
            })),
        )
        .await
        .unwrap();
    let leases: Api<Lease> = Api::namespaced(admin.clone(), &namespace);
    eventually("the sharded operator holds the cloud", || async {
        let holder = clouds
            .get(&shard_cloud)
            .await
            .unwrap()
            .status
            .and_then(|s| s.holder);
        let lease = leases
            .get_opt(&format!("adc-operator-cloud-{shard_cloud}"))
            .await
            .unwrap()
            .and_then(|l| l.spec)
            .and_then(|s| s.holder_identity);
        let member = leases
            .get_opt(&format!("adc-operator-member-{pod_name}"))
            .await
            .unwrap()
            .is_some();
        if holder.as_deref() == Some(pod_name.as_str())
            && lease.as_deref() == Some(pod_name.as_str())
            && member
        {
            Ok(())
        } else {
            let log = std::fs::read_to_string(&shard_log).unwrap_or_default();
            Err(format!(
                "status.holder {holder:?}, Lease holder {lease:?}, membership Lease {member}; log:\n{log}"
            ))
        }
    })
    .await;
    clouds
        .delete(&shard_cloud, &DeleteParams::default())
        .await
        .unwrap();
    sharded.kill().unwrap();
    sharded.wait().unwrap();
    let log = std::fs::read_to_string(&shard_log).unwrap();
    assert!(
        !log.to_lowercase().contains("forbidden"),
        "the sharded operator was refused something it needs:\n{log}"
    );
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        missing.is_empty(),
        "the dashboard or the alerts name metrics the operator does not export: {missing:?} \
         (of {wanted:?}); its families and counters:\n{exposed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_changes_the_deployment_and_uninstall_keeps_the_crds() {
    let client = PLANE.admin_client().await;
    let namespace = support::test_namespace(&client, "helm-upgrade").await;
    let release = "adc-operator-upgrade";
    let chart = chart();
    let chart = chart.to_str().unwrap();
    helm_ok(
        &["install", release, chart, "--namespace", &namespace],
        true,
    );
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &namespace);
    let container_args = |d: &Deployment| -> Vec<String> {
        d.spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0]
            .args
            .clone()
            .unwrap()
    };
    let before = deployments.get(release).await.unwrap();
    assert_eq!(before.spec.as_ref().unwrap().replicas, Some(2));
    assert!(container_args(&before).contains(&"--log-format=json".to_string()));

    helm_ok(
        &[
            "upgrade",
            release,
            chart,
            "--namespace",
            &namespace,
            "--reuse-values",
            "--set",
            "replicas=3",
            "--set",
            "logFormat=text",
        ],
        true,
    );
    let after = deployments.get(release).await.unwrap();
    assert_eq!(after.spec.as_ref().unwrap().replicas, Some(3));
    let after_args = container_args(&after);
    assert!(
        after_args.contains(&"--log-format=text".to_string()),
        "{after_args:?}"
    );
    assert!(
        !after_args.contains(&"--log-format=json".to_string()),
        "{after_args:?}"
    );
    assert!(after.metadata.generation > before.metadata.generation);

    // A bad value is refused before anything changes.
    let refused = helm(
        &[
            "upgrade",
            release,
            chart,
            "--namespace",
            &namespace,
            "--reuse-values",
            "--set",
            "replicas=0",
        ],
        true,
    );
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("replicas"));
    assert_eq!(
        deployments
            .get(release)
            .await
            .unwrap()
            .spec
            .unwrap()
            .replicas,
        Some(3)
    );
    let history: Value = serde_json::from_str(&helm_ok(
        &["history", release, "-n", &namespace, "-o", "json"],
        true,
    ))
    .unwrap();
    assert_eq!(history.as_array().unwrap().len(), 2, "{history}");

    helm_ok(&["uninstall", release, "--namespace", &namespace], true);
    let lease_objects = format!("{release}-leader-election");
    let metrics = format!("{release}-metrics");
    eventually("the release's objects gone", || async {
        let mut left = Vec::new();
        if deployments.get_opt(release).await.unwrap().is_some() {
            left.push("Deployment");
        }
        if Api::<ServiceAccount>::namespaced(client.clone(), &namespace)
            .get_opt(release)
            .await
            .unwrap()
            .is_some()
        {
            left.push("ServiceAccount");
        }
        if Api::<Service>::namespaced(client.clone(), &namespace)
            .get_opt(&metrics)
            .await
            .unwrap()
            .is_some()
        {
            left.push("Service");
        }
        if Api::<PodDisruptionBudget>::namespaced(client.clone(), &namespace)
            .get_opt(release)
            .await
            .unwrap()
            .is_some()
        {
            left.push("PodDisruptionBudget");
        }
        if Api::<Role>::namespaced(client.clone(), &namespace)
            .get_opt(&lease_objects)
            .await
            .unwrap()
            .is_some()
        {
            left.push("Role");
        }
        if Api::<RoleBinding>::namespaced(client.clone(), &namespace)
            .get_opt(&lease_objects)
            .await
            .unwrap()
            .is_some()
        {
            left.push("RoleBinding");
        }
        if Api::<ClusterRole>::all(client.clone())
            .get_opt(release)
            .await
            .unwrap()
            .is_some()
        {
            left.push("ClusterRole");
        }
        if Api::<ClusterRoleBinding>::all(client.clone())
            .get_opt(release)
            .await
            .unwrap()
            .is_some()
        {
            left.push("ClusterRoleBinding");
        }
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("{left:?} left"))
        }
    })
    .await;
    let releases = helm_ok(&["list", "-n", &namespace, "-a", "-q"], true);
    assert!(releases.trim().is_empty(), "{releases}");
    // Helm never deletes the CRDs of a chart's crds/ (nor the objects of every other release).
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for name in CRD_NAMES {
        let crd = crds.get(name).await.unwrap();
        assert!(
            crd.metadata.deletion_timestamp.is_none(),
            "{name} is being deleted"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Monitoring: the Grafana dashboard and the PrometheusRule (metrics.dashboard,
// metrics.prometheusRule), checked with promtool and against a running operator's /metrics.

/// Values that switch the dashboard and the alerts on.
const MONITORING: [&str; 2] = [
    "metrics.dashboard.enabled=true",
    "metrics.prometheusRule.enabled=true",
];

/// Every alert of the chart (metrics.prometheusRule.alerts), by name.
const ALERTS: [&str; 14] = [
    "AdcOperatorDown",
    "AdcOperatorNoLeader",
    "AdcOperatorMultipleLeaders",
    "AdcOperatorLeaderFlapping",
    "AdcOperatorReconcileErrors",
    "AdcOperatorObjectsStalled",
    "AdcOperatorObjectsNotReady",
    "AdcOperatorGcpRateLimited",
    "AdcOperatorGcpRateBudgetSaturated",
    "AdcOperatorGcpRetries",
    "AdcOperatorGcpCallsFailing",
    "AdcOperatorGcpOperationsFailing",
    "AdcOperatorGcpQuotaNearLimit",
    "AdcOperatorGcpQuotaExhausted",
];

const RUNBOOK_BASE: &str =
    "https://github.com/adc-operator/adc-operator/blob/main/docs/operations.md";

/// The promtool unit tests of the alerts; `rule_files: [rules.yaml]` is the rendered rule.
const ALERT_TESTS: &str = "tests/fixtures/prometheus/alerts-test.yaml";

fn promtool_binary() -> PathBuf {
    adc_testenv::Binaries::locate()
        .expect("envtest binaries (make envtest)")
        .promtool
}

/// Runs promtool in `dir`.
fn promtool(args: &[&str], dir: &Path) -> Output {
    Command::new(promtool_binary())
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("running promtool (make envtest builds it)")
}

fn output_text(output: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The rendered PrometheusRule (release adc-operator in adc-system) with `sets` on top of the
/// monitoring values.
fn rendered_rule(sets: &[&str]) -> Value {
    let all: Vec<&str> = MONITORING.iter().chain(sets).copied().collect();
    find(
        &render("adc-operator", "adc-system", &all),
        "PrometheusRule",
        "adc-operator",
    )
    .clone()
}

/// The alerting rules of a PrometheusRule, every group's in order.
fn alert_rules(rule: &Value) -> Vec<&Value> {
    rule["spec"]["groups"]
        .as_array()
        .expect("spec.groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("a group's rules"))
        .collect()
}

fn alert<'a>(rule: &'a Value, name: &str) -> &'a Value {
    alert_rules(rule)
        .into_iter()
        .find(|r| r["alert"] == name)
        .unwrap_or_else(|| panic!("no alert {name}"))
}

/// The dashboard of the rendered ConfigMap, parsed.
fn rendered_dashboard(objects: &[Value], name: &str) -> Value {
    let config_map = find(objects, "ConfigMap", name);
    serde_json::from_str(
        config_map["data"]["adc-operator.json"]
            .as_str()
            .expect("the dashboard in data"),
    )
    .expect("the dashboard is JSON")
}

/// Every panel of a dashboard, rows' nested panels included.
fn dashboard_panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(panels: &'a Value, out: &mut Vec<&'a Value>) {
        for panel in panels.as_array().into_iter().flatten() {
            out.push(panel);
            walk(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// Every PromQL expression of a dashboard: the panels' targets and the query variables.
fn dashboard_exprs(dashboard: &Value) -> Vec<String> {
    let mut exprs: Vec<String> = dashboard_panels(dashboard)
        .into_iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().expect("a target's expr").to_string())
        .collect();
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        if variable["type"] == "query" {
            let query = &variable["query"];
            exprs.push(
                query["query"]
                    .as_str()
                    .or(query.as_str())
                    .expect("a variable's query")
                    .to_string(),
            );
        }
    }
    exprs
}

/// The metric names a PromQL expression names: identifiers starting with `adc_operator_` or
/// `process_`.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let name = regex::Regex::new(r"\b(?:adc_operator|process)_[a-zA-Z0-9_]*").unwrap();
    name.find_iter(expr)
        .map(|m| m.as_str().to_string())
        .collect()
}

/// Every metric name the chart's dashboard and alerts use.
fn monitored_metric_names() -> BTreeSet<String> {
    let objects = render("adc-operator", "adc-system", &MONITORING);
    let dashboard = rendered_dashboard(&objects, "adc-operator-dashboard");
    let rule = find(&objects, "PrometheusRule", "adc-operator");
    dashboard_exprs(&dashboard)
        .iter()
        .map(String::as_str)
        .chain(
            alert_rules(rule)
                .iter()
                .map(|r| r["expr"].as_str().unwrap()),
        )
        .flat_map(metric_names)
        .collect()
}

/// The names of `wanted` that a /metrics text does not expose, as a sample or as a `# TYPE`
/// family (`_total`, `_bucket`, `_sum`, `_count` name a counter's or histogram's samples).
fn missing_metrics(text: &str, wanted: &BTreeSet<String>) -> Vec<String> {
    let mut samples = BTreeSet::new();
    let mut families = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some(family) = rest.split_whitespace().next() {
                families.insert(family.to_string());
            }
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            samples.insert(line[..end].to_string());
        }
    }
    wanted
        .iter()
        .filter(|name| {
            !samples.contains(*name)
                && !families.contains(*name)
                && !["_total", "_bucket", "_sum", "_count"]
                    .iter()
                    .any(|suffix| {
                        name.strip_suffix(suffix)
                            .is_some_and(|f| families.contains(f))
                    })
        })
        .cloned()
        .collect()
}

/// GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces to hyphens.
fn heading_anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

#[test]
fn the_dashboard_and_alerts_render_only_when_enabled() {
    let chart = chart();
    let chart = chart.to_str().unwrap();
    // helm lint, with them off (the default) and on.
    for sets in [
        &[][..],
        &MONITORING[..],
        &[
            "metrics.dashboard.enabled=true",
            "metrics.dashboard.annotations.grafana_folder=ADC",
            "metrics.prometheusRule.enabled=true",
            "metrics.prometheusRule.labels.release=kube-prometheus-stack",
        ][..],
    ] {
        let mut args = vec!["lint", "--strict", chart];
        for set in sets {
            args.extend(["--set", set]);
        }
        let lint = helm_ok(&args, false);
        assert!(lint.contains("0 chart(s) failed"), "{sets:?}: {lint}");
    }

    // Neither by default.
    let objects = render("adc-operator", "adc-system", &[]);
    assert!(
        !kinds(&objects).contains("ConfigMap"),
        "{:?}",
        kinds(&objects)
    );
    assert!(!kinds(&objects).contains("PrometheusRule"));

    // Both when enabled, with the sidecar's label and the extra labels and annotations.
    let objects = render(
        "adc-operator",
        "adc-system",
        &[
            "metrics.dashboard.enabled=true",
            "metrics.dashboard.annotations.grafana_folder=ADC",
            "metrics.dashboard.labels.team=platform",
            "metrics.prometheusRule.enabled=true",
            "metrics.prometheusRule.labels.release=kube-prometheus-stack",
            "metrics.prometheusRule.alertLabels.team=platform",
        ],
    );
    let config_map = find(&objects, "ConfigMap", "adc-operator-dashboard");
    assert_eq!(config_map["metadata"]["namespace"], "adc-system");
    let labels = &config_map["metadata"]["labels"];
    assert_eq!(labels["grafana_dashboard"], "1", "{labels}");
    assert_eq!(labels["team"], "platform", "{labels}");
    assert_eq!(
        labels["app.kubernetes.io/instance"], "adc-operator",
        "{labels}"
    );
    assert_eq!(
        config_map["metadata"]["annotations"],
        json!({"grafana_folder": "ADC"})
    );
    // The ConfigMap carries the chart's file as it is.
    let file = std::fs::read_to_string(
        adc_testenv::repo_root().join("charts/adc-operator/dashboards/adc-operator.json"),
    )
    .unwrap();
    let dashboard = rendered_dashboard(&objects, "adc-operator-dashboard");
    assert_eq!(dashboard, serde_json::from_str::<Value>(&file).unwrap());
    assert_dashboard_is_valid(&dashboard);

    let rule = find(&objects, "PrometheusRule", "adc-operator");
    assert_eq!(rule["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(rule["metadata"]["namespace"], "adc-system");
    assert_eq!(
        rule["metadata"]["labels"]["release"], "kube-prometheus-stack",
        "{}",
        rule["metadata"]
    );
    assert_eq!(
        rule["metadata"]["labels"]["app.kubernetes.io/instance"],
        "adc-operator"
    );
    // The alerts pick the series of the job the ServiceMonitor scrapes: the metrics Service's
    // name, in the release namespace.
    let service = find(&objects, "Service", "adc-operator-metrics");
    let selector = format!(
        "job=\"{}\", namespace=\"adc-system\"",
        service["metadata"]["name"].as_str().unwrap()
    );
    let rules = alert_rules(rule);
    let names: Vec<&str> = rules.iter().map(|r| r["alert"].as_str().unwrap()).collect();
    assert_eq!(names, ALERTS, "every alert once, in order");
    let by = regex::Regex::new(r"\bby \(([^)]*)\)").unwrap();
    let templated = regex::Regex::new(r"\{\{ \$labels\.([a-z_]+) \}\}").unwrap();
    let duration = regex::Regex::new(r"^([0-9]+(ms|s|m|h|d|w|y))+$").unwrap();
    for rule in &rules {
        let name = rule["alert"].as_str().unwrap();
        let expr = rule["expr"].as_str().unwrap();
        assert!(expr.contains(&selector), "{name} picks {selector}: {expr}");
        assert!(
            duration.is_match(rule["for"].as_str().unwrap_or_default()),
            "{name}: for {}",
            rule["for"]
        );
        let severity = rule["labels"]["severity"].as_str().unwrap_or_default();
        assert!(
            ["warning", "critical"].contains(&severity),
            "{name}: severity {severity}"
        );
        assert_eq!(rule["labels"]["team"], "platform", "{name}: alertLabels");
        let annotations = &rule["annotations"];
        let summary = annotations["summary"].as_str().unwrap_or_default();
        let description = annotations["description"].as_str().unwrap_or_default();
        assert!(
            summary.len() > 10 && description.len() > summary.len(),
            "{name}: {annotations}"
        );
        assert_eq!(
            annotations["runbook_url"],
            format!("{RUNBOOK_BASE}#{}", name.to_lowercase()),
            "{name}"
        );
        // Every label the alert carries (its outermost aggregation's) is named in its text.
        let text = format!("{summary} {description}");
        let mentioned: BTreeSet<&str> = templated
            .captures_iter(&text)
            .map(|c| c.get(1).unwrap().as_str())
            .collect();
        if let Some(outer) = by.captures(expr) {
            for label in outer[1].split(',').map(str::trim) {
                assert!(
                    label == "namespace" || mentioned.contains(label),
                    "{name}: label {label} is not in its summary or description: {annotations}"
                );
            }
        }
    }
    assert_eq!(
        alert(rule, "AdcOperatorDown")["labels"]["severity"],
        "critical"
    );
    assert_eq!(
        alert(rule, "AdcOperatorDown")["expr"],
        "absent(up{job=\"adc-operator-metrics\", namespace=\"adc-system\"} == 1)"
    );
    assert_eq!(alert(rule, "AdcOperatorObjectsStalled")["for"], "15m");
    assert_eq!(
        alert(rule, "AdcOperatorObjectsStalled")["labels"]["severity"],
        "warning"
    );

    // Thresholds, durations, severities, the selector and the rates' window come from values;
    // a disabled alert is gone, and so is a group left without alerts.
    let rule = rendered_rule(&[
        "metrics.prometheusRule.alerts.objectsStalled.for=1h",
        "metrics.prometheusRule.alerts.objectsStalled.severity=critical",
        "metrics.prometheusRule.alerts.objectsNotReady.enabled=false",
        "metrics.prometheusRule.alerts.gcpRetries.ratio=0.25",
        "metrics.prometheusRule.alerts.quotaNearLimit.ratio=0.75",
        "metrics.prometheusRule.alerts.leaderFlapping.window=3h",
        "metrics.prometheusRule.alerts.operatorDown.enabled=false",
        "metrics.prometheusRule.rateInterval=5m",
        "metrics.prometheusRule.selector=job=\"adc\"",
        "metrics.prometheusRule.runbookUrl=https://wiki.example.com/adc",
    ]);
    let stalled = alert(&rule, "AdcOperatorObjectsStalled");
    assert_eq!(stalled["for"], "1h");
    assert_eq!(stalled["labels"]["severity"], "critical");
    assert!(
        stalled["annotations"]["description"]
            .as_str()
            .unwrap()
            .contains("for 1h"),
        "{stalled}"
    );
    assert_eq!(
        stalled["annotations"]["runbook_url"],
        "https://wiki.example.com/adc#adcoperatorobjectsstalled"
    );
    let names: BTreeSet<&str> = alert_rules(&rule)
        .iter()
        .map(|r| r["alert"].as_str().unwrap())
        .collect();
    assert!(!names.contains("AdcOperatorObjectsNotReady") && !names.contains("AdcOperatorDown"));
    assert_eq!(names.len(), ALERTS.len() - 2);
    let retries = alert(&rule, "AdcOperatorGcpRetries")["expr"]
        .as_str()
        .unwrap();
    assert!(retries.ends_with("> 0.25"), "{retries}");
    assert!(
        retries.contains("[5m]") && !retries.contains("[10m]"),
        "{retries}"
    );
    assert!(retries.contains("{job=\"adc\"}"), "{retries}");
    assert!(!retries.contains("adc-system"), "{retries}");
    let quota = alert(&rule, "AdcOperatorGcpQuotaNearLimit")["expr"]
        .as_str()
        .unwrap();
    assert!(quota.ends_with("> 0.75"), "{quota}");
    let flapping = alert(&rule, "AdcOperatorLeaderFlapping")["expr"]
        .as_str()
        .unwrap();
    assert!(flapping.contains("offset 3h"), "{flapping}");
    let rule = rendered_rule(&[
        "metrics.prometheusRule.alerts.objectsStalled.enabled=false",
        "metrics.prometheusRule.alerts.objectsNotReady.enabled=false",
    ]);
    let groups: Vec<&str> = rule["spec"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["name"].as_str().unwrap())
        .collect();
    assert_eq!(groups, ["adc-operator.operator", "adc-operator.gcp"]);

    // The sidecar's label and the ConfigMap's namespace are configurable; an extra label
    // cannot override the sidecar's.
    let objects = render(
        "ops",
        "platform",
        &[
            "metrics.dashboard.enabled=true",
            "metrics.dashboard.sidecarLabel=dashboards.example.com/grafana",
            "metrics.dashboard.sidecarLabelValue=yes",
            "metrics.dashboard.labels.dashboards\\.example\\.com/grafana=no",
            "metrics.dashboard.namespace=monitoring",
        ],
    );
    let config_map = find(&objects, "ConfigMap", "ops-adc-operator-dashboard");
    assert_eq!(config_map["metadata"]["namespace"], "monitoring");
    let labels = &config_map["metadata"]["labels"];
    assert_eq!(labels["dashboards.example.com/grafana"], "yes", "{labels}");
    assert!(labels["grafana_dashboard"].is_null(), "{labels}");
    assert!(!kinds(&objects).contains("PrometheusRule"));

    // The schema refuses unknown keys and bad values under both.
    for (set, names) in [
        ("metrics.dashboard.typo=1", "typo"),
        ("metrics.prometheusRule.alerts.bogus.enabled=true", "bogus"),
        (
            "metrics.prometheusRule.alerts.objectsStalled.severity=page",
            "severity",
        ),
        (
            "metrics.prometheusRule.alerts.objectsStalled.for=soon",
            "for",
        ),
        ("metrics.prometheusRule.alerts.gcpRetries.ratio=-1", "ratio"),
        ("metrics.prometheusRule.rateInterval=10", "rateInterval"),
    ] {
        let output = helm(&["template", "adc-operator", chart, "--set", set], false);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "--set {set} rendered");
        assert!(stderr.contains(names), "--set {set}: {stderr}");
        assert!(stderr.contains("schema"), "--set {set}: {stderr}");
    }
}

/// A Grafana dashboard the sidecar can load, with the panels and variables asked of it.
fn assert_dashboard_is_valid(dashboard: &Value) {
    let schema = dashboard["schemaVersion"].as_u64().expect("schemaVersion");
    assert!((36..=41).contains(&schema), "schemaVersion {schema}");
    let uid = dashboard["uid"].as_str().expect("uid");
    assert!(!uid.is_empty() && uid.len() <= 40, "uid {uid}");
    assert!(dashboard["title"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(dashboard["id"].is_null(), "no id: Grafana assigns it");

    // A data-source variable, and the namespace and job variables every query filters by.
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("templating");
    let variable = |name: &str| {
        variables
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no variable {name}"))
    };
    assert_eq!(variable("datasource")["type"], "datasource");
    assert_eq!(variable("datasource")["query"], "prometheus");
    for name in ["namespace", "job", "cloud"] {
        assert_eq!(variable(name)["type"], "query", "{name}");
        assert_eq!(
            variable(name)["datasource"]["uid"],
            "${datasource}",
            "{name}"
        );
    }

    let panels = dashboard_panels(dashboard);
    let mut ids = BTreeSet::new();
    for panel in &panels {
        let title = panel["title"].as_str().unwrap_or_default();
        assert!(!title.is_empty(), "a panel without a title: {panel}");
        assert!(
            ids.insert(panel["id"].as_u64().expect("a panel id")),
            "id of {title} twice"
        );
        let grid = &panel["gridPos"];
        let (x, w) = (grid["x"].as_u64().unwrap(), grid["w"].as_u64().unwrap());
        assert!(
            x + w <= 24 && grid["h"].as_u64().unwrap() > 0,
            "{title}: {grid}"
        );
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}");
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title} has no query");
        for target in targets {
            assert_eq!(target["datasource"]["uid"], "${datasource}", "{title}");
            let expr = target["expr"].as_str().unwrap_or_default();
            assert!(
                expr.contains("namespace=~\"$namespace\"") && expr.contains("job=~\"$job\""),
                "{title}: {expr} does not filter by $namespace and $job"
            );
        }
    }
    // The panels asked for: fleet progress, GCP calls, batching, queues, operations, rate
    // waits, retries, quotas, reconciles, leader election and the process.
    let named: BTreeSet<String> = dashboard_exprs(dashboard)
        .iter()
        .flat_map(|e| metric_names(e))
        .collect();
    for metric in [
        "adc_operator_objects",
        "adc_operator_cloud_eta_seconds",
        "adc_operator_gcp_calls_total",
        "adc_operator_gcp_http_requests_total",
        "adc_operator_gcp_batch_size_bucket",
        "adc_operator_gcp_queue_depth",
        "adc_operator_gcp_operations_pending",
        "adc_operator_gcp_operations_total",
        "adc_operator_gcp_rate_wait_seconds_total",
        "adc_operator_gcp_retries_total",
        "adc_operator_gcp_quota_usage",
        "adc_operator_gcp_quota_limit",
        "adc_operator_reconciles_total",
        "adc_operator_reconcile_failures_total",
        "adc_operator_reconcile_duration_seconds_bucket",
        "adc_operator_leader",
        "adc_operator_lease_transitions",
        "process_resident_memory_bytes",
        "process_cpu_seconds",
    ] {
        assert!(named.contains(metric), "no panel shows {metric}");
    }
}

#[test]
fn the_rendered_alerts_pass_promtool_and_their_unit_tests() {
    let dir = tempdir("promtool");
    let run = |args: &[&str]| -> Output { promtool(args, &dir) };

    // promtool check rules on the rendered rule's spec (a Prometheus rule file), lints fatal.
    let rule = rendered_rule(&[]);
    std::fs::write(
        dir.join("rules.yaml"),
        serde_yaml::to_string(&rule["spec"]).unwrap(),
    )
    .unwrap();
    let check = run(&["check", "rules", "--lint=all", "--lint-fatal", "rules.yaml"]);
    let text = output_text(&check);
    assert!(check.status.success(), "promtool check rules: {text}");
    assert!(
        text.contains(&format!("SUCCESS: {} rules found", ALERTS.len())),
        "{text}"
    );

    // The unit tests: each alert fires on series that should trigger it and stays silent on
    // healthy ones.
    let tests_file = adc_testenv::repo_root().join(ALERT_TESTS);
    let tests_text = std::fs::read_to_string(&tests_file).unwrap();
    std::fs::write(dir.join("alerts-test.yaml"), &tests_text).unwrap();
    let unit = run(&["test", "rules", "alerts-test.yaml"]);
    assert!(
        unit.status.success(),
        "promtool test rules {ALERT_TESTS}: {}",
        output_text(&unit)
    );
    // ... for every alert, both ways.
    let tests: Value = serde_yaml::from_str(&tests_text).unwrap();
    assert_eq!(tests["rule_files"], json!(["rules.yaml"]));
    let mut fires = BTreeSet::new();
    let mut silent = BTreeSet::new();
    for group in tests["tests"].as_array().unwrap() {
        for case in group["alert_rule_test"].as_array().unwrap() {
            let name = case["alertname"].as_str().unwrap().to_string();
            if case["exp_alerts"].as_array().is_some_and(|a| !a.is_empty()) {
                fires.insert(name);
            } else {
                silent.insert(name);
            }
        }
    }
    let all: BTreeSet<String> = ALERTS.iter().map(|s| s.to_string()).collect();
    assert_eq!(fires, all, "every alert has a case where it fires");
    assert_eq!(silent, all, "every alert has a case where it stays silent");

    // The unit tests can fail: with a threshold no input reaches, or an alert gone, they do.
    for set in [
        "metrics.prometheusRule.alerts.objectsStalled.threshold=100",
        "metrics.prometheusRule.alerts.operatorDown.enabled=false",
        "metrics.prometheusRule.alerts.gcpCallsFailing.ignoredOutcomes=ok",
    ] {
        let rule = rendered_rule(&[set]);
        std::fs::write(
            dir.join("rules.yaml"),
            serde_yaml::to_string(&rule["spec"]).unwrap(),
        )
        .unwrap();
        let unit = run(&["test", "rules", "alerts-test.yaml"]);
        assert!(
            !unit.status.success(),
            "--set {set}: the unit tests still pass: {}",
            output_text(&unit)
        );
    }

    // The dashboard's queries are PromQL too: promtool checks them as recording rules, with
    // Grafana's variables put in.
    let objects = render("adc-operator", "adc-system", &MONITORING);
    let dashboard = rendered_dashboard(&objects, "adc-operator-dashboard");
    let rules: Vec<Value> = dashboard_exprs(&dashboard)
        .iter()
        .filter(|e| !e.starts_with("label_values("))
        .enumerate()
        .map(|(i, expr)| {
            let expr = expr
                .replace("$__rate_interval", "2m")
                .replace("$__interval", "1m")
                .replace("$namespace", "adc-system")
                .replace("$job", "adc-operator-metrics")
                .replace("$cloud", ".*");
            json!({"record": format!("dashboard:query_{i}"), "expr": expr})
        })
        .collect();
    assert!(rules.len() > 30, "{} queries", rules.len());
    std::fs::write(
        dir.join("dashboard.yaml"),
        serde_yaml::to_string(&json!({"groups": [{"name": "dashboard", "rules": rules}]})).unwrap(),
    )
    .unwrap();
    let check = run(&["check", "rules", "dashboard.yaml"]);
    assert!(
        check.status.success(),
        "the dashboard's queries: {}",
        output_text(&check)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn every_alert_runbook_is_a_section_of_the_operations_guide() {
    let guide =
        std::fs::read_to_string(adc_testenv::repo_root().join("docs/operations.md")).unwrap();
    let anchors: BTreeSet<String> = guide
        .lines()
        .filter_map(|line| line.strip_prefix('#'))
        .map(|heading| heading_anchor(heading.trim_start_matches('#')))
        .collect();
    let rule = rendered_rule(&[]);
    let missing: Vec<String> = alert_rules(&rule)
        .iter()
        .map(|r| {
            let url = r["annotations"]["runbook_url"].as_str().unwrap();
            let (base, anchor) = url.split_once('#').unwrap();
            assert_eq!(base, RUNBOOK_BASE);
            anchor.to_string()
        })
        .filter(|anchor| !anchors.contains(anchor))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/operations.md has no section for the runbook anchors {missing:?}"
    );
}
