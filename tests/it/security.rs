//! Security on real parts (kube-apiserver with RBAC, the gce-emulator process, the operator
//! binary installed by the Helm chart's RBAC):
//!
//! - the operator's credentials (a service-account key from a Secret, every access token the
//!   emulator issued, its own Kubernetes token) never appear in its debug/trace log, in any Event,
//!   in any object's status or in /metrics, through a lifecycle with failures;
//! - the chart's RBAC: a tenant with namespace-scoped rights cannot create or edit GcpClouds (but
//!   can manage VirtualServices), and the operator's ServiceAccount reads only the key Secrets it
//!   is given;
//! - a GCP resource without this object's ownership marker is never adopted, modified or deleted,
//!   even when it holds the very name the operator wants: the object goes Stalled instead.
//!
//! One emulator and one operator (run with the chart's ServiceAccount token) for the suite; each
//! test works in its own namespaces.

use crate::support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use adc_operator::api::{GcpCloud, VirtualService, VirtualServiceSpec, VpcRoute};
use adc_operator::gcp::{
    Credentials, Engine, EngineSettings, GcpError, GcpMetrics, Lane, Mutation, RateLimits, Target,
};
use adc_operator::plan::{CloudView, EngineHealth};
use adc_testenv::{EmulatorProcess, emulator_binary};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::api::rbac::v1::{ClusterRole, RoleBinding};
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::{Value, json};
use support::eventually;
use support::operator::{
    OperatorSpec, PROJECT, WORLD, apply, condition, emulator_collection, status_of, tenant,
    virtual_service, wait_ready, wait_stalled,
};
use support::{Plane, assert_forbidden};

/// This suite's control plane, shared with no other suite: a Helm release with cluster-wide RBAC
/// and an operator that reconciles every GcpCloud of the cluster.
const PLANE: Plane = Plane::Security;

const CLUSTER_ID: &str = "sec-cluster";
/// The Google service account of the operator's key (the emulator's world knows its public key).
const EMAIL: &str = "adc-operator@demo-project.iam.gserviceaccount.com";
/// The chart's release: its full name (ServiceAccount, ClusterRole) is the release name.
const RELEASE: &str = "adc-operator-sec";

// ---------------------------------------------------------------------------------------------
// Keys and the strings that would betray them
// ---------------------------------------------------------------------------------------------

/// A service-account key in Google's JSON format, as `gce-emulator keygen` writes it.
struct Key {
    json: Value,
    /// The world entry keygen printed (its public key).
    world_entry: String,
}

impl Key {
    fn generate(dir: &Path, file: &str) -> Key {
        let out = dir.join(file);
        let output = Command::new(emulator_binary().expect("gce-emulator binary"))
            .args(["keygen", "--client-email", EMAIL, "--out"])
            .arg(&out)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "keygen: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let json = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
        // The key lives in the Secret and in memory only.
        std::fs::remove_file(&out).unwrap();
        Key {
            json,
            world_entry: String::from_utf8(output.stdout).unwrap(),
        }
    }

    fn retarget(&mut self, base_url: &str) {
        self.json["token_uri"] = json!(format!("{base_url}/token"));
    }

    fn text(&self) -> String {
        self.json.to_string()
    }

    /// The base64 lines of the PEM body.
    fn pem_lines(&self) -> Vec<String> {
        self.json["private_key"]
            .as_str()
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with("-----") && !l.trim().is_empty())
            .map(str::to_string)
            .collect()
    }

    /// What must never appear anywhere: `(what, needle)`.
    fn needles(&self, name: &str) -> Vec<(String, String)> {
        let lines = self.pem_lines();
        assert!(
            lines.len() > 20,
            "a 2048-bit key: {} PEM lines",
            lines.len()
        );
        let mut needles: Vec<(String, String)> = lines
            .iter()
            .enumerate()
            .filter(|(_, line)| line.len() >= 32)
            .map(|(i, line)| (format!("{name}: PEM line {i}"), line.clone()))
            .collect();
        let middle = &lines[lines.len() / 2];
        needles.push((
            format!("{name}: 32 base64 characters of the private key"),
            middle[16..48].to_string(),
        ));
        needles.push((
            format!("{name}: private_key_id"),
            self.json["private_key_id"].as_str().unwrap().to_string(),
        ));
        // The Secret's data as the API server serves it: base64 of the whole key file.
        let encoded = base64(self.text().as_bytes(), STANDARD);
        let at = encoded.len() / 2 / 4 * 4;
        needles.push((
            format!("{name}: 48 characters of the Secret's base64 data"),
            encoded[at..at + 48].to_string(),
        ));
        needles
    }
}

const STANDARD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const URL_SAFE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Base64 without padding.
fn base64(bytes: &[u8], alphabet: &[u8; 64]) -> String {
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..=chunk.len() {
            out.push(char::from(alphabet[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

/// The `what` of every needle found in `haystack`.
fn leaks<'a>(haystack: &str, needles: &'a [(String, String)]) -> Vec<&'a str> {
    needles
        .iter()
        .filter(|(_, needle)| haystack.contains(needle.as_str()))
        .map(|(what, _)| what.as_str())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The fixture: emulator, chart release, key Secrets, operator
// ---------------------------------------------------------------------------------------------

struct Fixture {
    emulator: EmulatorProcess,
    good: Key,
    stranger: Key,
    broken: Key,
    release_ns: String,
    creds_ns: String,
    /// The operator's Kubernetes token (TokenRequest of the chart's ServiceAccount).
    kube_token: String,
    log: PathBuf,
    metrics_port: u16,
    operator: Mutex<Child>,
}

/// A directory inside the control plane's, which is removed when the test binary exits.
fn scratch() -> PathBuf {
    let plane = PLANE.get();
    let dir = plane
        .kubeconfig
        .parent()
        .expect("the control plane's directory")
        .join("security");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn helm(args: &[&str]) -> String {
    let plane = PLANE.get();
    let output = Command::new(&plane.binaries.helm)
        .args(args)
        .env("KUBECONFIG", &plane.kubeconfig)
        .stdin(Stdio::null())
        .output()
        .expect("running helm");
    assert!(
        output.status.success(),
        "helm {}: {}\n{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn kubectl(args: &[&str]) -> String {
    let plane = PLANE.get();
    let output = Command::new(&plane.binaries.kubectl)
        .args(args)
        .env("KUBECONFIG", &plane.kubeconfig)
        .stdin(Stdio::null())
        .output()
        .expect("running kubectl");
    assert!(
        output.status.success(),
        "kubectl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

async fn create_secret(client: &Client, namespace: &str, name: &str, data: &[(&str, &str)]) {
    let string_data: serde_json::Map<String, Value> = data
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    Api::<Secret>::namespaced(client.clone(), namespace)
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": name}, "stringData": string_data}))
                .unwrap(),
        )
        .await
        .unwrap();
}

/// Starts everything once for this suite. Nothing in it belongs to a test's runtime (no client,
/// no task): only processes, which die with the test binary, and data.
async fn fixture() -> &'static Fixture {
    static FIXTURE: tokio::sync::OnceCell<Fixture> = tokio::sync::OnceCell::const_new();
    FIXTURE
        .get_or_init(|| async {
            PLANE.install_crds();
            let dir = scratch();
            let mut good = Key::generate(&dir, "good.json");
            let mut stranger = Key::generate(&dir, "stranger.json");
            let mut broken = Key::generate(&dir, "broken.json");
            // Only the good key's public half is in the world: the stranger's grant is refused.
            let world = format!("{WORLD}serviceAccounts:\n{}", good.world_entry);
            let emulator = EmulatorProcess::start(
                &emulator_binary().expect("emulator"),
                &world,
                &["--auth", "token"],
            )
            .expect("emulator");
            for key in [&mut good, &mut stranger, &mut broken] {
                key.retarget(&emulator.base_url);
            }
            // PEM framing intact, DER inside cut short: a key the operator cannot parse.
            let pem = broken.json["private_key"].as_str().unwrap().to_string();
            let mut lines: Vec<&str> = pem.lines().collect();
            lines.remove(lines.len() / 2);
            broken.json["private_key"] = json!(lines.join("\n") + "\n");

            let admin = PLANE.admin_client().await;
            let release_ns = support::test_namespace(&admin, "sec-system").await;
            let creds_ns = support::test_namespace(&admin, "sec-creds").await;
            for (name, key) in [
                ("gcp-key", &good),
                ("stranger-key", &stranger),
                ("broken-key", &broken),
            ] {
                create_secret(&admin, &creds_ns, name, &[("key.json", &key.text())]).await;
            }
            create_secret(&admin, &creds_ns, "unrelated", &[("password", "hunter2")]).await;

            let chart = adc_testenv::repo_root().join("charts/adc-operator");
            let mut args = vec![
                "install".to_string(),
                RELEASE.into(),
                chart.to_str().unwrap().into(),
                "--namespace".into(),
                release_ns.clone(),
                "--set".into(),
                "replicas=1".into(),
                "--set".into(),
                "leaderElection.enabled=false".into(),
                "--set".into(),
                format!("clusterId={CLUSTER_ID}"),
            ];
            for (i, name) in ["gcp-key", "stranger-key", "broken-key"].iter().enumerate() {
                args.push("--set".into());
                args.push(format!(
                    "credentialSecrets[{i}].namespace={creds_ns},credentialSecrets[{i}].name={name}"
                ));
            }
            helm(&args.iter().map(String::as_str).collect::<Vec<_>>());

            let kube_token = kubectl(&[
                "create",
                "token",
                RELEASE,
                "-n",
                &release_ns,
                "--duration",
                "1h",
            ])
            .trim()
            .to_string();
            let kubeconfig = dir.join("operator.kubeconfig");
            PLANE.token_kubeconfig(&kube_token, &kubeconfig);

            let log = dir.join("operator.log");
            let metrics_port = adc_testenv::free_port().expect("a free loopback port");
            let mut spec = OperatorSpec::new(&kubeconfig, &emulator, CLUSTER_ID);
            spec.args = vec!["--metrics-addr".into(), format!("127.0.0.1:{metrics_port}")];
            // Everything at debug, the operator's own crate and the clients at trace.
            spec.log = "debug,adc_operator=trace,kube=trace,gcp_auth=trace,reqwest=trace".into();
            let operator = spec.start_with(Stdio::from(std::fs::File::create(&log).unwrap()));
            eventually("the operator's metrics port", || async {
                match reqwest::get(format!("http://127.0.0.1:{metrics_port}/healthz")).await {
                    Ok(r) if r.status().is_success() => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            })
            .await;
            // It has read its kubeconfig (the metrics port comes after the client).
            std::fs::remove_file(&kubeconfig).unwrap();
            Fixture {
                emulator,
                good,
                stranger,
                broken,
                release_ns,
                creds_ns,
                kube_token,
                log,
                metrics_port,
                operator: Mutex::new(operator),
            }
        })
        .await
}

impl Fixture {
    fn url(&self) -> &str {
        &self.emulator.base_url
    }

    fn secret_ref(&self, name: &str, key: &str) -> Value {
        json!({"secretRef": {"namespace": self.creds_ns, "name": name, "key": key}})
    }

    /// A fresh tenant namespace and a Ready GcpCloud reading the good key from its Secret.
    async fn tenant(&self, client: &Client, prefix: &str) -> (String, String) {
        tenant(
            client,
            self.url(),
            prefix,
            json!({"credentials": self.secret_ref("gcp-key", "key.json"), "resyncInterval": "1s"}),
        )
        .await
    }

    fn operator_note(&self) -> String {
        let state = match self.operator.lock().unwrap().try_wait() {
            Ok(Some(exit)) => format!("the operator exited ({exit})"),
            _ => "the operator runs".to_string(),
        };
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: String = log
            .chars()
            .skip(log.chars().count().saturating_sub(3000))
            .collect();
        format!("{state}; its log ends with:\n{tail}")
    }
}

/// A client of this control plane acting as `user` in `groups` (impersonation by the admin).
async fn client_as(user: &str, groups: &[&str]) -> Client {
    let plane = PLANE.get();
    let kubeconfig = Kubeconfig::read_from(&plane.kubeconfig).unwrap();
    let mut config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    config.auth_info.impersonate = Some(user.to_string());
    config.auth_info.impersonate_groups = Some(groups.iter().map(|g| g.to_string()).collect());
    Client::try_from(config).unwrap()
}

/// Whether a watch is refused with 403 (the refusal comes with the first answer).
async fn watch_forbidden<K>(api: &Api<K>) -> bool
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    match api.watch(&WatchParams::default().timeout(1), "0").await {
        Err(kube::Error::Api(status)) => status.code == 403,
        Err(other) => panic!("watch: {other:?}"),
        Ok(stream) => {
            let mut stream = Box::pin(stream);
            match stream.next().await {
                Some(Ok(WatchEvent::Error(status))) => status.code == 403,
                _ => false,
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Credentials never leak
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_never_appear_in_logs_events_status_or_metrics() {
    let f = fixture().await;
    let client = PLANE.admin_client().await;
    let (ns, cloud) = f.tenant(&client, "sec-leak").await;

    // A normal lifecycle: three VirtualServices Ready, one deleted again.
    for (i, name) in ["web", "api", "db"].iter().enumerate() {
        apply(
            &client,
            virtual_service(
                name,
                &cloud,
                &format!("10.40.0.{}", i + 1),
                &[("se-1", "us-central1-a"), ("se-2", "us-central1-b")],
                "ActiveActive",
            ),
            Some(&ns),
        )
        .await;
    }
    for name in ["web", "api", "db"] {
        wait_ready::<VirtualService>(&client, Some(&ns), name).await;
    }

    // Failures that produce errors, events and status messages:
    // a GCP error (the route's next hop does not exist: 404 on insert),
    apply(
        &client,
        json!({"apiVersion": "adc.dev/v1alpha1", "kind": "VpcRoute", "metadata": {"name": "to-nowhere"},
               "spec": {"cloudRef": cloud, "destRange": "10.40.1.0/24",
                        "nextHop": {"ilb": format!("projects/{PROJECT}/regions/us-central1/forwardingRules/nope")}}}),
        Some(&ns),
    )
    .await;
    let gcp_error = wait_stalled::<VpcRoute>(&client, Some(&ns), "to-nowhere").await;
    // a guard rail,
    apply(
        &client,
        virtual_service(
            "outside",
            &cloud,
            "192.168.40.1",
            &[("se-1", "us-central1-a")],
            "ActiveActive",
        ),
        Some(&ns),
    )
    .await;
    wait_stalled::<VirtualService>(&client, Some(&ns), "outside").await;
    // and clouds whose credentials fail: a key the token endpoint refuses (invalid_grant), a key
    // that does not parse, a Secret without the key, and a Secret the chart gives no access to.
    let tenant_secret = "tenant-key";
    create_secret(
        &client,
        &ns,
        tenant_secret,
        &[("key.json", &f.stranger.text())],
    )
    .await;
    let failing = [
        (
            "refused",
            f.secret_ref("stranger-key", "key.json"),
            "invalid_grant",
        ),
        (
            "broken",
            f.secret_ref("broken-key", "key.json"),
            "private_key",
        ),
        (
            "no-key",
            f.secret_ref("gcp-key", "nope"),
            "has no key 'nope'",
        ),
        (
            "forbidden",
            json!({"secretRef": {"namespace": ns, "name": tenant_secret, "key": "key.json"}}),
            "forbidden",
        ),
    ];
    let clouds: Api<GcpCloud> = Api::all(client.clone());
    for (suffix, credentials, _) in &failing {
        apply(
            &client,
            support::operator::cloud_manifest(
                &format!("{cloud}-{suffix}"),
                f.url(),
                &json!({"credentials": credentials}),
            ),
            None,
        )
        .await;
    }
    for (suffix, _, expected) in &failing {
        let name = format!("{cloud}-{suffix}");
        eventually(&format!("{name} not Ready: {expected}"), || async {
            let status = status_of(&clouds, &name).await;
            match condition(&status, "Ready") {
                Some((s, _, m)) if s == "False" && m.contains(expected) => Ok(()),
                other => Err(format!("{other:?}; {}", f.operator_note())),
            }
        })
        .await;
    }
    // A delete.
    let services: Api<VirtualService> = Api::namespaced(client.clone(), &ns);
    services
        .delete("db", &DeleteParams::default())
        .await
        .unwrap();
    eventually("db gone", || async {
        match services.get_opt("db").await.unwrap() {
            None => Ok(()),
            Some(_) => Err("still there".into()),
        }
    })
    .await;

    // Everything the operator wrote or said.
    let log = std::fs::read_to_string(&f.log).unwrap();
    let events_v1 = Api::<k8s_openapi::api::events::v1::Event>::all(client.clone())
        .list(&ListParams::default())
        .await
        .unwrap();
    let events_core = Api::<k8s_openapi::api::core::v1::Event>::all(client.clone())
        .list(&ListParams::default())
        .await
        .unwrap();
    let events = format!(
        "{}\n{}",
        serde_json::to_string(&events_v1).unwrap(),
        serde_json::to_string(&events_core).unwrap()
    );
    let objects = format!(
        "{}\n{}\n{}",
        serde_json::to_string(&clouds.list(&ListParams::default()).await.unwrap()).unwrap(),
        serde_json::to_string(
            &Api::<VirtualService>::all(client.clone())
                .list(&ListParams::default())
                .await
                .unwrap()
        )
        .unwrap(),
        serde_json::to_string(
            &Api::<VpcRoute>::all(client.clone())
                .list(&ListParams::default())
                .await
                .unwrap()
        )
        .unwrap(),
    );
    let metrics = reqwest::get(format!("http://127.0.0.1:{}/metrics", f.metrics_port))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();

    // What must not be in them: the keys, every token the emulator issued, the operator's
    // Kubernetes token, and any JWT (a signed grant assertion is as good as a token for an hour).
    let mut needles = f.good.needles("good key");
    needles.extend(f.stranger.needles("refused key"));
    needles.extend(f.broken.needles("broken key"));
    let issued: Value = reqwest::get(format!("{}/_emulator/tokens", f.url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let tokens: Vec<String> = issued["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["accessToken"].as_str().unwrap().to_string())
        .collect();
    assert!(
        issued["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["principal"] == EMAIL),
        "the emulator issued tokens for the key: {issued}"
    );
    for (i, token) in tokens.iter().enumerate() {
        assert!(token.len() > 40, "{i}");
        needles.push((
            format!("access token {i} issued by the emulator"),
            token.clone(),
        ));
    }
    assert!(f.kube_token.len() > 100);
    needles.push((
        "the operator's Kubernetes token".into(),
        f.kube_token.clone(),
    ));
    let jwt = base64(br#"{"alg":"RS256","#, URL_SAFE);
    assert_eq!(jwt, "eyJhbGciOiJSUzI1NiIs");
    needles.push(("a JWT (RS256 header)".into(), jwt));

    // The grep can fail: each haystack holds what it must, and a planted secret is found.
    assert!(
        log.contains("fetched an access token")
            && log.contains(&format!("service-account:{EMAIL}")),
        "the log shows the key's token fetches:\n{}",
        f.operator_note()
    );
    assert!(
        failing
            .iter()
            .all(|(suffix, _, _)| log.contains(&format!("{cloud}-{suffix}"))),
        "the log shows the failing clouds' reconciles"
    );
    assert!(
        log.contains(r#"cannot get resource \"secrets\""#),
        "the log shows the API server's refusal of the Secret outside credentialSecrets"
    );
    assert!(
        log.lines().count() > 200,
        "a debug/trace log: {} lines",
        log.lines().count()
    );
    assert!(
        events.contains("Applying") && events.contains(&ns),
        "the tenant's events were read"
    );
    assert!(
        objects.contains("invalid_grant") && objects.contains("forbidden"),
        "the failing clouds' statuses were read"
    );
    assert!(
        metrics.contains("adc_operator_"),
        "the operator's metrics were read"
    );
    assert!(
        gcp_error.contains("nope"),
        "the VpcRoute's GCP error names the missing forwarding rule: {gcp_error}"
    );
    for (what, needle) in &needles {
        assert!(
            !leaks(&format!("{log}{needle}"), &needles).is_empty(),
            "the grep finds {what}"
        );
    }

    for (place, haystack) in [
        ("the operator's log", &log),
        ("the cluster's Events", &events),
        ("the GcpClouds, VirtualServices and VpcRoutes", &objects),
        ("/metrics", &metrics),
    ] {
        let found = leaks(haystack, &needles);
        assert!(found.is_empty(), "{place} contains {found:?}");
    }
    eprintln!(
        "credentials: {} needles ({} tokens) absent from {} log lines, {} Events, objects and /metrics",
        needles.len(),
        tokens.len(),
        log.lines().count(),
        events_v1.items.len() + events_core.items.len(),
    );
}

// ---------------------------------------------------------------------------------------------
// 2. The chart's RBAC
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_cannot_touch_gcpclouds_and_the_operator_reads_only_its_keys() {
    let f = fixture().await;
    let admin = PLANE.admin_client().await;
    let (tenant_ns, cloud) = f.tenant(&admin, "sec-rbac").await;
    let other_ns = support::test_namespace(&admin, "sec-other").await;

    // Alice is what `admin` of her namespace makes her in a real cluster. This control plane runs
    // no controller-manager, so nothing aggregates ClusterRoles into `admin`: she is bound to
    // every ClusterRole labelled aggregate-to-admin instead, which is what the aggregation
    // controller would put into it — including the chart's tenant role, found by its label.
    let aggregated = Api::<ClusterRole>::all(admin.clone())
        .list(&ListParams::default().labels("rbac.authorization.k8s.io/aggregate-to-admin=true"))
        .await
        .unwrap();
    let names: Vec<String> = aggregated
        .items
        .iter()
        .map(|r| r.metadata.name.clone().unwrap())
        .collect();
    let tenant_role = format!("{RELEASE}-tenant-edit");
    assert!(names.contains(&tenant_role), "{names:?}");
    assert!(
        names.iter().any(|n| n == "system:aggregate-to-admin"),
        "{names:?}"
    );
    for role in &aggregated.items {
        let rules = serde_json::to_string(&role.rules).unwrap();
        assert!(
            !rules.contains("gcpclouds"),
            "{:?} grants GcpCloud rights to namespace admins: {rules}",
            role.metadata.name
        );
    }
    let bindings: Api<RoleBinding> = Api::namespaced(admin.clone(), &tenant_ns);
    for (i, name) in names.iter().enumerate() {
        bindings
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({
                    "metadata": {"name": format!("alice-admin-{i}")},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
                    "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "alice"}]
                }))
                .unwrap(),
            )
            .await
            .unwrap();
    }
    let alice = client_as("alice", &["tenants"]).await;

    // What she may do: VirtualServices in her namespace (so the 403s below are about GcpCloud).
    let her_services: Api<VirtualService> = Api::namespaced(alice.clone(), &tenant_ns);
    let manifest = virtual_service(
        "alice-web",
        &cloud,
        "10.42.0.1",
        &[("se-1", "us-central1-a")],
        "ActiveActive",
    );
    her_services
        .create(
            &PostParams::default(),
            &serde_json::from_value(manifest.clone()).unwrap(),
        )
        .await
        .expect("a tenant creates a VirtualService in her namespace");
    her_services
        .patch(
            "alice-web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"routePriority": 2100}})),
        )
        .await
        .expect("and changes it");
    wait_ready::<VirtualService>(&admin, Some(&tenant_ns), "alice-web").await;
    her_services
        .delete("alice-web", &DeleteParams::default())
        .await
        .expect("and deletes it");

    // What she may not: any write to a GcpCloud, existing or new.
    let her_clouds: Api<GcpCloud> = Api::all(alice.clone());
    let new_cloud: GcpCloud = serde_json::from_value(support::operator::cloud_manifest(
        &format!("{cloud}-alice"),
        f.url(),
        &json!({"allowedDestinationRanges": ["0.0.0.0/0"]}),
    ))
    .unwrap();
    assert_forbidden(
        her_clouds.create(&PostParams::default(), &new_cloud).await,
        "a tenant creating a GcpCloud",
    );
    assert_forbidden(
        her_clouds
            .patch(
                &cloud,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"allowedDestinationRanges": ["0.0.0.0/0"]}})),
            )
            .await,
        "a tenant patching a GcpCloud",
    );
    assert_forbidden(
        her_clouds
            .patch(
                &cloud,
                &PatchParams::apply("alice").force(),
                &Patch::Apply(json!({"apiVersion": "adc.dev/v1alpha1", "kind": "GcpCloud",
                    "metadata": {"name": cloud}, "spec": {"allowedDestinationRanges": ["0.0.0.0/0"]}})),
            )
            .await,
        "a tenant server-side applying a GcpCloud",
    );
    let mut existing = Api::<GcpCloud>::all(admin.clone())
        .get(&cloud)
        .await
        .unwrap();
    existing.spec.allowed_destination_ranges = vec!["0.0.0.0/0".into()];
    assert_forbidden(
        her_clouds
            .replace(&cloud, &PostParams::default(), &existing)
            .await,
        "a tenant updating a GcpCloud",
    );
    assert_forbidden(
        her_clouds
            .patch_status(
                &cloud,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"conditions": []}})),
            )
            .await,
        "a tenant patching a GcpCloud's status",
    );
    assert_forbidden(
        her_clouds.delete(&cloud, &DeleteParams::default()).await,
        "a tenant deleting a GcpCloud",
    );
    assert_forbidden(
        her_clouds
            .delete_collection(&DeleteParams::default(), &ListParams::default())
            .await,
        "a tenant deleting every GcpCloud",
    );
    // Nor can she grant herself the rights: RBAC refuses to bind what she does not hold (the
    // operator's ClusterRole can patch GcpClouds), and a RoleBinding never reaches a
    // cluster-scoped kind anyway.
    assert_forbidden(
        Api::<RoleBinding>::namespaced(alice.clone(), &tenant_ns)
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({
                    "metadata": {"name": "alice-escalates"},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": RELEASE},
                    "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "alice"}]
                }))
                .unwrap(),
            )
            .await,
        "a tenant binding the operator's ClusterRole",
    );
    // Her rights end at her namespace: no VirtualService elsewhere, no key Secret.
    assert_forbidden(
        Api::<VirtualService>::namespaced(alice.clone(), &other_ns)
            .create(
                &PostParams::default(),
                &serde_json::from_value(manifest.clone()).unwrap(),
            )
            .await,
        "a tenant creating a VirtualService in another namespace",
    );
    assert_forbidden(
        Api::<Secret>::namespaced(alice.clone(), &f.creds_ns)
            .get("gcp-key")
            .await,
        "a tenant reading the operator's key",
    );
    let after = Api::<GcpCloud>::all(admin.clone())
        .get(&cloud)
        .await
        .unwrap();
    assert_eq!(
        after.spec.allowed_destination_ranges,
        ["10.0.0.0/8"],
        "the cloud is as the platform team made it"
    );
    assert!(
        Api::<GcpCloud>::all(admin.clone())
            .get_opt(&format!("{cloud}-alice"))
            .await
            .unwrap()
            .is_none()
    );

    // The operator's ServiceAccount: only the key Secrets it was given, get only.
    let sa_user = format!("system:serviceaccount:{}:{RELEASE}", f.release_ns);
    let sa_ns_group = format!("system:serviceaccounts:{}", f.release_ns);
    let operator = client_as(
        &sa_user,
        &[
            "system:serviceaccounts",
            &sa_ns_group,
            "system:authenticated",
        ],
    )
    .await;
    create_secret(&admin, &tenant_ns, "tenant-secret", &[("token", "tenant")]).await;
    let system_secret = format!("sec-test-{}", std::process::id());
    create_secret(
        &admin,
        "kube-system",
        &system_secret,
        &[("token", "system")],
    )
    .await;
    let creds: Api<Secret> = Api::namespaced(operator.clone(), &f.creds_ns);
    let key = creds
        .get("gcp-key")
        .await
        .expect("the operator reads a key Secret it was given");
    assert_eq!(
        key.data.unwrap()["key.json"].0,
        f.good.text().as_bytes(),
        "the key it reads is the one in the Secret"
    );
    creds
        .get("stranger-key")
        .await
        .expect("every Secret of credentialSecrets");
    assert_forbidden(
        creds.get("unrelated").await,
        "the operator reading another Secret in the credentials namespace",
    );
    assert_forbidden(
        creds.list(&ListParams::default()).await,
        "the operator listing the credentials namespace's Secrets",
    );
    assert!(
        watch_forbidden(&creds).await,
        "the operator watching the credentials namespace's Secrets"
    );
    assert_forbidden(
        creds
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": "planted"}})).unwrap(),
            )
            .await,
        "the operator creating a Secret",
    );
    assert_forbidden(
        creds
            .patch(
                "gcp-key",
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}})),
            )
            .await,
        "the operator changing its key Secret",
    );
    assert_forbidden(
        creds.delete("gcp-key", &DeleteParams::default()).await,
        "the operator deleting its key Secret",
    );
    assert_forbidden(
        Api::<Secret>::namespaced(operator.clone(), &tenant_ns)
            .get("tenant-secret")
            .await,
        "the operator reading a tenant's Secret",
    );
    assert_forbidden(
        Api::<Secret>::namespaced(operator.clone(), "kube-system")
            .get(&system_secret)
            .await,
        "the operator reading a kube-system Secret",
    );
    assert_forbidden(
        Api::<Secret>::namespaced(operator.clone(), "kube-system")
            .list(&ListParams::default())
            .await,
        "the operator listing kube-system's Secrets",
    );
    // Helm's own release record (the rendered values) lives in the release namespace.
    let release_secret = format!("sh.helm.release.v1.{RELEASE}.v1");
    Api::<Secret>::namespaced(admin.clone(), &f.release_ns)
        .get(&release_secret)
        .await
        .expect("helm's release Secret exists");
    assert_forbidden(
        Api::<Secret>::namespaced(operator.clone(), &f.release_ns)
            .get(&release_secret)
            .await,
        "the operator reading Helm's release Secret",
    );
    let everywhere: Api<Secret> = Api::all(operator.clone());
    assert_forbidden(
        everywhere.list(&ListParams::default()).await,
        "the operator listing Secrets cluster-wide",
    );
    assert!(
        watch_forbidden(&everywhere).await,
        "the operator watching Secrets cluster-wide"
    );
    // ... and it is the same identity the running operator has: what it did not need it could
    // not do (the 'forbidden' cloud of the credentials test is refused by the API server, not
    // by the operator), and what it needs works (this test's cloud is Ready with the key).
    let status = status_of(&Api::<GcpCloud>::all(admin.clone()), &cloud).await;
    assert_eq!(
        condition(&status, "Ready").map(|c| c.0),
        Some("True".into())
    );
    let namespaces: Api<Namespace> = Api::all(operator.clone());
    namespaces
        .get(&tenant_ns)
        .await
        .expect("the operator reads namespaces (allowedNamespaces)");
}

// ---------------------------------------------------------------------------------------------
// 3. A name collision with a foreign resource
// ---------------------------------------------------------------------------------------------

/// The route the operator will insert for a VirtualService with one engine, as it plans it.
fn planned_route(cloud: &str, namespace: &str, name: &str, manifest: &Value) -> Value {
    let spec: VirtualServiceSpec = serde_json::from_value(manifest["spec"].clone()).unwrap();
    let view = CloudView {
        cluster_id: CLUSTER_ID.into(),
        cloud: cloud.into(),
        project: PROJECT.into(),
        network_project: PROJECT.into(),
        network: "default".into(),
        region: "us-central1".into(),
        resource_prefix: "adc-".into(),
    };
    let plan = adc_operator::plan::virtualservice::plan(
        &view,
        namespace,
        name,
        &spec,
        None,
        |_, _| EngineHealth::Running,
        |_, _| None,
    );
    let routes: Vec<Value> = plan
        .desired
        .into_iter()
        .filter(|d| d.target.collection == adc_operator::gcp::Collection::Routes)
        .map(|d| d.body)
        .collect();
    assert_eq!(routes.len(), 1, "{routes:?}");
    routes[0].clone()
}

/// A route as the Compute API returns it.
async fn get_route(f: &Fixture, name: &str) -> Value {
    support::operator::compute(
        f.url(),
        reqwest::Method::GET,
        &format!("global/routes/{name}"),
        Value::Null,
    )
    .await
}

/// Every operation the emulator ran on the route `name`, as (type, status, error).
async fn operations_on(f: &Fixture, name: &str) -> Vec<(String, String, Value)> {
    let state: Value = reqwest::get(format!("{}/_emulator/state", f.url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    state["projects"][PROJECT]["operations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|op| {
            op["targetLink"]
                .as_str()
                .is_some_and(|l| l.ends_with(&format!("/global/routes/{name}")))
        })
        .map(|op| {
            (
                op["operationType"].as_str().unwrap_or_default().to_string(),
                op["status"].as_str().unwrap_or_default().to_string(),
                op["error"].clone(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_route_holding_a_desired_name_is_never_touched() {
    let f = fixture().await;
    let client = PLANE.admin_client().await;
    let (ns, cloud) = f.tenant(&client, "sec-clash").await;

    // Two VirtualServices whose route names are taken before they exist: one by a hand-made
    // route with other content, one by an exact copy of what the operator would insert but
    // without the ownership marker (a copy someone made, or a marker edited away).
    let cases = [
        ("other", "10.43.0.1", "a hand-made route"),
        ("copy", "10.43.0.2", "an unmarked copy"),
    ];
    let mut foreign = Vec::new();
    for (name, vip, _) in cases {
        let manifest = virtual_service(
            name,
            &cloud,
            vip,
            &[("se-1", "us-central1-a")],
            "ActiveActive",
        );
        let mut route = planned_route(&cloud, &ns, name, &manifest);
        let route_name = route["name"].as_str().unwrap().to_string();
        assert!(
            route["description"]
                .as_str()
                .unwrap()
                .contains("adc.dev/owner=")
        );
        if name == "other" {
            route["description"] = json!("network team: keep");
            route["destRange"] = json!("10.43.9.0/24");
            route["priority"] = json!(900);
            route["nextHopInstance"] = json!(format!(
                "projects/{PROJECT}/zones/us-central1-b/instances/se-2"
            ));
        } else {
            route.as_object_mut().unwrap().remove("description");
        }
        let op = support::operator::compute(f.url(), reqwest::Method::POST, "global/routes", route)
            .await;
        assert_eq!(op["status"], "DONE", "{op}");
        assert!(op["error"].is_null(), "{op}");
        let before = get_route(f, &route_name).await;
        assert_eq!(before["name"], route_name.as_str(), "{before}");
        foreign.push((name, vip, route_name, before, manifest));
    }

    for (_, _, _, _, manifest) in &foreign {
        apply(&client, manifest.clone(), Some(&ns)).await;
    }
    let services: Api<VirtualService> = Api::namespaced(client.clone(), &ns);
    for (name, _, route_name, _, _) in &foreign {
        let message = wait_stalled::<VirtualService>(&client, Some(&ns), name).await;
        assert!(
            message.contains(&format!("global/routes/{route_name}"))
                && message.contains("is taken by a GCP resource this cluster does not own"),
            "{name}: {message}"
        );
        let status = status_of(&services, name).await;
        assert_eq!(
            condition(&status, "Stalled").map(|c| c.1),
            Some("NameConflict".into()),
            "{status}"
        );
        assert_eq!(
            condition(&status, "Ready").map(|c| c.0),
            Some("False".into())
        );
        assert_eq!(
            status["resources"]["routes"],
            json!([route_name]),
            "the operator wanted the name the test predicted"
        );
    }

    // Nothing of the foreign routes changed, also after several inventory resyncs (1 s); the
    // objects stay Stalled; no other route reaches their VIPs.
    let unchanged = |when: &'static str| {
        let foreign = &foreign;
        async move {
            for (name, vip, route_name, before, _) in foreign {
                let now = get_route(f, route_name).await;
                assert_eq!(&now, before, "{name}: {route_name} {when}");
                let ops = operations_on(f, route_name).await;
                assert_eq!(
                    ops.iter().map(|o| o.0.as_str()).collect::<Vec<_>>(),
                    ["insert"],
                    "{name}: only the test's own insert ever ran on {route_name} ({when}): {ops:?}"
                );
                let to_vip: Vec<String> = emulator_collection(f.url(), "routes")
                    .await
                    .into_iter()
                    .filter(|r| r["destRange"] == format!("{vip}/32"))
                    .map(|r| r["name"].as_str().unwrap().to_string())
                    .collect();
                let expected: Vec<String> = if *name == "copy" {
                    vec![route_name.clone()]
                } else {
                    Vec::new()
                };
                assert_eq!(to_vip, expected, "{name}: routes to {vip} {when}");
            }
        }
    };
    unchanged("once stalled").await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    unchanged("after resyncs").await;
    for (name, _, _, _, _) in &foreign {
        let status = status_of(&services, name).await;
        assert_eq!(
            condition(&status, "Stalled").map(|c| (c.0, c.1)),
            Some(("True".into(), "NameConflict".into())),
            "{name} after resyncs: {status}"
        );
    }

    // Deleting the objects removes what they own (their firewall rules) and nothing else; the
    // cloud's garbage collection leaves unmarked routes alone.
    for (name, _, _, _, _) in &foreign {
        services
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
    }
    eventually("the VirtualServices gone", || async {
        let left = services
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len();
        if left == 0 {
            Ok(())
        } else {
            Err(format!("{left} left; {}", f.operator_note()))
        }
    })
    .await;
    for (_, vip, _, _, _) in &foreign {
        eventually("their firewall rules gone", || async {
            let left = support::operator::firewalls_to(f.url(), &format!("{vip}/32"))
                .await
                .len();
            if left == 0 {
                Ok(())
            } else {
                Err(format!("{left} firewall rules to {vip}"))
            }
        })
        .await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    unchanged("after the objects were deleted").await;
}

/// The engine on its own: a delete queued behind an insert that finds its name taken by someone
/// else's resource (what a plan change while the insert runs produces) is never sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_queued_behind_a_refused_insert_never_reaches_the_foreign_resource() {
    let emulator = EmulatorProcess::start(
        &emulator_binary().expect("emulator"),
        WORLD,
        &["--auth", "none"],
    )
    .expect("emulator");
    let http = reqwest::Client::new();
    let url = |path: &str| format!("{}/compute/v1/projects/{PROJECT}/{path}", emulator.base_url);
    let name = "adc-0123456789-abcdef01";
    let body = json!({"name": name, "network": "global/networks/default",
        "destRange": "10.44.0.1/32", "priority": 2000,
        "nextHopInstance": format!("projects/{PROJECT}/zones/us-central1-a/instances/se-1")});
    let mut foreign = body.clone();
    foreign["description"] = json!("made by hand");
    let op: Value = http
        .post(url("global/routes"))
        .json(&foreign)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(op["status"], "DONE", "{op}");
    let get = || async {
        http.get(url(&format!("global/routes/{name}")))
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    };
    let before = get().await;

    // Every answer held back 2 s: the insert is on the wire while the delete is queued.
    let faults = http
        .post(format!("{}/_emulator/faults", emulator.base_url))
        .json(&json!({"spec": "slow=1.0:2s"}))
        .send()
        .await
        .unwrap();
    assert!(faults.status().is_success());
    let mut settings = EngineSettings::new(PROJECT, &emulator.base_url);
    settings.linger = Duration::from_millis(5);
    settings.rate_limits = RateLimits {
        reads_per_minute: 1_000_000,
        writes_per_minute: 1_000_000,
        operation_reads_per_minute: 1_000_000,
        regional_writes_per_minute: 1_000_000,
        ..RateLimits::default()
    };
    let engine = Engine::start(
        settings,
        Credentials::anonymous(),
        std::sync::Arc::new(GcpMetrics::default()),
    )
    .unwrap();
    let target = Target::route(name);
    let mut ours = body.clone();
    ours["description"] = json!(format!(
        "adc.dev/owner={CLUSTER_ID}/cloud/VirtualService/team/web (managed by adc-operator; do not edit)"
    ));
    let insert = engine.submit(Mutation::insert(target.clone(), ours), Lane::Bulk);
    let stats = || async {
        http.get(format!("{}/_emulator/stats", emulator.base_url))
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    };
    // The test's own insert of the foreign route was the first.
    eventually("the engine's insert reached the emulator", || async {
        let stats = stats().await;
        if stats["callsByMethod"]["compute.routes.insert"] == 2 {
            Ok(())
        } else {
            Err(stats.to_string())
        }
    })
    .await;
    assert!(engine.is_pending(&target));
    let delete = engine.submit(
        Mutation::delete(target.clone(), Some("default".into())),
        Lane::Urgent,
    );
    let inserted = tokio::time::timeout(Duration::from_secs(30), insert)
        .await
        .unwrap()
        .unwrap();
    match &inserted {
        Err(GcpError::NotOwned { resource, marker }) => {
            assert_eq!(resource, &format!("global/routes/{name}"));
            assert_eq!(marker, &None);
        }
        other => panic!("the insert: {other:?}"),
    }
    let deleted = tokio::time::timeout(Duration::from_secs(30), delete)
        .await
        .unwrap()
        .unwrap();
    assert!(deleted.is_ok(), "{deleted:?}");
    // Had the delete gone out, it would be answered within 2 s more.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!engine.is_pending(&target));
    http.post(format!("{}/_emulator/faults", emulator.base_url))
        .json(&json!({"spec": ""}))
        .send()
        .await
        .unwrap();
    assert_eq!(get().await, before, "the foreign route is untouched");
    let stats = stats().await;
    assert!(
        stats["callsByMethod"]["compute.routes.delete"].is_null(),
        "no delete was ever sent: {stats}"
    );
    assert_eq!(
        stats["callsByMethod"]["compute.routes.insert"], 2,
        "the refused insert was not tried again: {stats}"
    );
    engine.shutdown();
}
