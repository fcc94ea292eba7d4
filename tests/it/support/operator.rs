//! The operator binary and the objects tests give it: starting it against an emulator, a tenant
//! namespace with its GcpCloud, applying manifests, reading conditions and the emulator's state.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use adc_operator::api::{GcpCloud, VirtualService, VpcRoute};
use adc_testenv::EmulatorProcess;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Namespace;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};

use super::eventually;

/// The project of every test world.
pub const PROJECT: &str = "demo-project";

/// The emulator's world of the operator, bad-input and security tests: one project, a
/// default network with its subnet, six service engines over four zones.
pub const WORLD: &str = "projects:
  - id: demo-project
    quotas: {ROUTES: 10000, STATIC_ROUTES_PER_NETWORK: 10000, FIREWALLS: 10000, STATIC_ADDRESSES: 1000}
    networks:
      - name: default
        subnetworks:
          - {name: default, region: us-central1, ipCidrRange: 10.128.0.0/20}
    instances:
      - {name: se-1, zone: us-central1-a, networkIP: 10.128.0.10, canIpForward: true}
      - {name: se-2, zone: us-central1-b, networkIP: 10.128.0.11, canIpForward: true}
      - {name: se-3, zone: us-central1-c, networkIP: 10.128.0.12, canIpForward: true}
      - {name: se-4, zone: us-central1-a, networkIP: 10.128.0.13, canIpForward: true}
      - {name: se-5, zone: us-central1-f, networkIP: 10.128.0.14, canIpForward: true}
      - {name: se-6, zone: us-central1-b, networkIP: 10.128.0.15, canIpForward: true}
      - {name: se-7, zone: us-central1-a, networkIP: 10.128.0.16, canIpForward: true}
      - {name: se-8, zone: us-central1-b, networkIP: 10.128.0.17, canIpForward: true}
";

/// How to start one operator process.
#[derive(Debug, Clone)]
pub struct OperatorSpec {
    /// Kubeconfig the operator talks to the API server with.
    pub kubeconfig: std::path::PathBuf,
    /// The emulator, as the GKE metadata server (Workload Identity tokens).
    pub metadata_host: String,
    /// `--cluster-id`.
    pub cluster_id: String,
    /// Further arguments of `adc-operator run`.
    pub args: Vec<String>,
    /// Further environment.
    pub env: Vec<(String, String)>,
    /// `RUST_LOG`.
    pub log: String,
}

impl OperatorSpec {
    /// The operator of the suite's shared control plane `plane`, against `emulator`.
    pub fn shared(plane: super::Plane, emulator: &EmulatorProcess, cluster_id: &str) -> Self {
        Self::new(&plane.get().kubeconfig, emulator, cluster_id)
    }

    pub fn new(kubeconfig: &Path, emulator: &EmulatorProcess, cluster_id: &str) -> Self {
        Self {
            kubeconfig: kubeconfig.to_path_buf(),
            metadata_host: emulator.base_url.trim_start_matches("http://").to_string(),
            cluster_id: cluster_id.to_string(),
            args: vec!["--metrics-addr".into(), "127.0.0.1:0".into()],
            env: Vec::new(),
            // ADC_TEST_LOG=debug (for instance) when a test needs the operator's story.
            log: std::env::var("ADC_TEST_LOG").unwrap_or_else(|_| "warn".into()),
        }
    }

    /// A replica under leader election on the Lease `default/{lease}` of `seconds`, as pod
    /// `pod`.
    pub fn leader_elected(mut self, pod: &str, lease: &str, seconds: u64) -> Self {
        self.args.extend([
            "--leader-election".into(),
            "--lease-namespace".into(),
            "default".into(),
            "--lease-name".into(),
            lease.into(),
            "--lease-duration".into(),
            seconds.to_string(),
        ]);
        self.env.push(("POD_NAME".into(), pod.into()));
        self
    }

    /// Serves /metrics on `127.0.0.1:{port}` instead of a port of its own choosing.
    pub fn metrics_port(mut self, port: u16) -> Self {
        if let Some(at) = self.args.iter().position(|a| a == "--metrics-addr") {
            self.args[at + 1] = format!("127.0.0.1:{port}");
        }
        self
    }

    /// Starts the operator binary; stdout is dropped, stderr goes to `stderr`.
    pub fn start_with(&self, stderr: Stdio) -> Child {
        let mut command = Command::new(env!("CARGO_BIN_EXE_adc-operator"));
        command
            .args(["run", "--cluster-id", &self.cluster_id, "--kubeconfig"])
            .arg(&self.kubeconfig)
            .args(&self.args)
            .env("GCE_METADATA_HOST", &self.metadata_host)
            .env("RUST_LOG", &self.log)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        adc_testenv::spawn_for_process_lifetime(command).expect("starting adc-operator")
    }

    /// Starts the operator binary with its stderr in the test output.
    pub fn start(&self) -> Child {
        self.start_with(Stdio::inherit())
    }
}

/// The Compute and operator of a suite with a plane of its own: the CRDs installed on `plane`,
/// an emulator of `world` (token auth, its metadata server the operator's identity) and the
/// operator binary as `cluster_id`, with `args` added to `adc-operator run`.
pub struct Suite {
    pub emulator: EmulatorProcess,
    _operator: Child,
}

impl Suite {
    pub fn start(plane: super::Plane, world: &str, cluster_id: &str, args: &[&str]) -> Self {
        plane.install_crds();
        let emulator = EmulatorProcess::start(
            &adc_testenv::emulator_binary().expect("emulator"),
            world,
            &["--auth", "token"],
        )
        .expect("emulator");
        let mut spec = OperatorSpec::shared(plane, &emulator, cluster_id);
        spec.args.extend(args.iter().map(|a| a.to_string()));
        let operator = spec.start();
        Suite {
            emulator,
            _operator: operator,
        }
    }
}

/// Kills a process with SIGKILL and reaps it.
pub fn kill9(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Operator replicas run as a Deployment runs them: a replica that exits on its own (a leader
/// that lost its lease steps down by exiting) is started again, as the kubelet restarts its
/// container; a replica the test kills stays dead. The operations the emulator had in flight
/// at each such exit are counted: a successor may send those inserts again.
pub struct Replicas {
    members: Arc<Mutex<Vec<Replica>>>,
    in_flight_at_exits: Arc<AtomicU64>,
    supervisor: tokio::task::JoinHandle<()>,
}

struct Replica {
    name: String,
    spec: OperatorSpec,
    child: Option<Child>,
    restarts: u32,
    /// Exit statuses other than the step-down one.
    crashes: Vec<std::process::ExitStatus>,
}

impl Replicas {
    /// Starts one operator per (name, spec) and supervises them (needs a tokio runtime).
    pub fn start(specs: Vec<(String, OperatorSpec)>, emulator_url: &str) -> Self {
        let members: Vec<Replica> = specs
            .into_iter()
            .map(|(name, spec)| Replica {
                child: Some(spec.start()),
                name,
                spec,
                restarts: 0,
                crashes: Vec::new(),
            })
            .collect();
        let members = Arc::new(Mutex::new(members));
        let in_flight_at_exits = Arc::new(AtomicU64::new(0));
        let supervisor = tokio::spawn(supervise(
            Arc::clone(&members),
            Arc::clone(&in_flight_at_exits),
            emulator_url.to_string(),
        ));
        Self {
            members,
            in_flight_at_exits,
            supervisor,
        }
    }

    /// Kills a replica with SIGKILL; it is not started again.
    pub fn kill9(&self, name: &str) {
        let mut members = self.members.lock().unwrap();
        let replica = members
            .iter_mut()
            .find(|r| r.name == name)
            .unwrap_or_else(|| panic!("no replica {name}"));
        if let Some(mut child) = replica.child.take() {
            kill9(&mut child);
        }
    }

    /// How often replicas stepped down (exited with the step-down status) and were started
    /// again. Panics if one exited any other way: a crash is never taken for a step-down.
    pub fn restarts(&self) -> u32 {
        let members = self.members.lock().unwrap();
        for replica in members.iter() {
            assert!(
                replica.crashes.is_empty(),
                "replica {} exited other than by stepping down: {:?}",
                replica.name,
                replica.crashes
            );
        }
        members.iter().map(|r| r.restarts).sum()
    }

    /// The emulator's pending operations summed over every exit of a replica on its own.
    pub fn in_flight_at_exits(&self) -> u64 {
        self.in_flight_at_exits.load(Ordering::SeqCst)
    }
}

impl Drop for Replicas {
    fn drop(&mut self) {
        self.supervisor.abort();
        if let Ok(mut members) = self.members.lock() {
            for replica in members.iter_mut() {
                if let Some(mut child) = replica.child.take() {
                    kill9(&mut child);
                }
            }
        }
    }
}

async fn supervise(
    members: Arc<Mutex<Vec<Replica>>>,
    in_flight_at_exits: Arc<AtomicU64>,
    emulator_url: String,
) {
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let exits = {
            let mut members = members.lock().unwrap();
            let mut exits = 0;
            for replica in members.iter_mut() {
                let exited = replica
                    .child
                    .as_mut()
                    .and_then(|child| child.try_wait().ok().flatten());
                if let Some(status) = exited {
                    eprintln!(
                        "  replica {} exited on its own ({status}); starting it again",
                        replica.name
                    );
                    if status.code() != Some(adc_operator::leader::STEP_DOWN_EXIT_CODE) {
                        replica.crashes.push(status);
                    }
                    replica.child = Some(replica.spec.start());
                    replica.restarts += 1;
                    exits += 1;
                }
            }
            exits
        };
        if exits > 0 {
            let stats = emulator_stats(&emulator_url).await;
            let pending = stats["operationsPending"].as_u64().unwrap_or(0);
            in_flight_at_exits.fetch_add(pending, Ordering::SeqCst);
        }
    }
}

/// The Lease `default/{name}` of the replicas' election, if it exists.
pub async fn lease(client: &Client, name: &str) -> Option<LeaseSpec> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "default");
    leases.get_opt(name).await.expect("reading the Lease")?.spec
}

/// Makes `namespace` a tenant: a namespace every test cloud selects.
pub async fn label_tenant(client: &Client, namespace: &str) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .patch(
            namespace,
            &PatchParams::apply("test").force(),
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": namespace, "labels": {"adc.dev/tenant": "true"}}})),
        )
        .await
        .expect("labelling the tenant namespace");
}

/// The GcpCloud manifest every test starts from, with `spec` merged into its spec.
pub fn cloud_manifest(name: &str, emulator_url: &str, spec: &Value) -> Value {
    let mut manifest = json!({
        "apiVersion": "adc.dev/v1alpha1", "kind": "GcpCloud", "metadata": {"name": name},
        "spec": {"project": PROJECT, "network": "default", "region": "us-central1",
                 "credentials": {"workloadIdentity": {}}, "endpoint": emulator_url,
                 "allowedNamespaces": {"matchLabels": {"adc.dev/tenant": "true"}},
                 "allowedDestinationRanges": ["10.0.0.0/8"]}
    });
    for (key, value) in spec.as_object().into_iter().flatten() {
        manifest["spec"][key] = value.clone();
    }
    manifest
}

/// A fresh tenant namespace and a Ready GcpCloud `cloud-<namespace>` for it on `emulator_url`,
/// with `spec` merged into the cloud's spec.
pub async fn tenant(
    client: &Client,
    emulator_url: &str,
    prefix: &str,
    spec: Value,
) -> (String, String) {
    let namespace = super::test_namespace(client, prefix).await;
    label_tenant(client, &namespace).await;
    let cloud = format!("cloud-{namespace}");
    apply(client, cloud_manifest(&cloud, emulator_url, &spec), None).await;
    wait_ready::<GcpCloud>(client, None, &cloud).await;
    (namespace, cloud)
}

/// Server-side applies a GcpCloud, VirtualService or VpcRoute manifest as field manager "test".
pub async fn apply(client: &Client, manifest: Value, namespace: Option<&str>) {
    try_apply(client, &manifest, namespace)
        .await
        .unwrap_or_else(|err| {
            panic!(
                "applying {}/{}: {err}",
                manifest["kind"], manifest["metadata"]["name"]
            )
        });
}

/// Server-side applies a manifest of one of the operator's kinds; the API server's refusal is
/// returned, not a panic.
pub async fn try_apply(
    client: &Client,
    manifest: &Value,
    namespace: Option<&str>,
) -> Result<(), kube::Error> {
    let kind = manifest["kind"].as_str().unwrap_or_default().to_string();
    let name = manifest["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let params = PatchParams::apply("test").force();
    match (kind.as_str(), namespace) {
        ("GcpCloud", _) => Api::<GcpCloud>::all(client.clone())
            .patch(&name, &params, &Patch::Apply(manifest))
            .await
            .map(|_| ()),
        ("VirtualService", Some(ns)) => Api::<VirtualService>::namespaced(client.clone(), ns)
            .patch(&name, &params, &Patch::Apply(manifest))
            .await
            .map(|_| ()),
        ("VpcRoute", Some(ns)) => Api::<VpcRoute>::namespaced(client.clone(), ns)
            .patch(&name, &params, &Patch::Apply(manifest))
            .await
            .map(|_| ()),
        other => panic!("cannot apply {other:?}"),
    }
}

/// A VirtualService manifest with a fixed VIP, port 443 and the given engines (name, zone).
pub fn virtual_service(
    name: &str,
    cloud: &str,
    vip: &str,
    engines: &[(&str, &str)],
    mode: &str,
) -> Value {
    json!({
        "apiVersion": "adc.dev/v1alpha1", "kind": "VirtualService", "metadata": {"name": name},
        "spec": {"cloudRef": cloud, "vip": {"address": vip}, "ports": [{"port": 443}],
                 "sourceRanges": ["10.0.0.0/8"], "mode": mode,
                 "serviceEngines": engines.iter().map(|(n, z)| json!({"name": n, "zone": z})).collect::<Vec<_>>()}
    })
}

/// The object's status as JSON.
pub async fn status_of<K>(api: &Api<K>, name: &str) -> Value
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let object = api.get(name).await.expect("reading the object");
    serde_json::to_value(&object).expect("serialising the object")["status"].clone()
}

/// A condition of a status as (status, reason, message).
pub fn condition(status: &Value, type_: &str) -> Option<(String, String, String)> {
    status["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .map(|c| {
            (
                c["status"].as_str().unwrap_or_default().into(),
                c["reason"].as_str().unwrap_or_default().into(),
                c["message"].as_str().unwrap_or_default().into(),
            )
        })
}

/// Waits (60 s) until the object's Ready condition is True.
pub async fn wait_ready<K>(client: &Client, namespace: Option<&str>, name: &str)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
    K::Scope: ScopeApi,
{
    let api: Api<K> = K::Scope::api(client, namespace);
    eventually(&format!("{name} Ready"), || async {
        let status = status_of(&api, name).await;
        match condition(&status, "Ready") {
            Some((s, _, _)) if s == "True" => Ok(()),
            other => Err(format!("{other:?} {status}")),
        }
    })
    .await;
}

/// Waits (30 s) until the object is Stalled and returns the Stalled message.
pub async fn wait_stalled<K>(client: &Client, namespace: Option<&str>, name: &str) -> String
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
    K::Scope: ScopeApi,
{
    let api: Api<K> = K::Scope::api(client, namespace);
    let mut last = String::new();
    for _ in 0..150 {
        let status = status_of(&api, name).await;
        match condition(&status, "Stalled") {
            Some((s, _, m)) if s == "True" => return m,
            other => last = format!("{other:?} {status}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("{name} did not stall within 30 s: {last}");
}

/// Namespaced or cluster-scoped Api construction.
pub trait ScopeApi {
    fn api<K: kube::Resource<Scope = Self, DynamicType = ()>>(
        client: &Client,
        namespace: Option<&str>,
    ) -> Api<K>;
}
impl ScopeApi for k8s_openapi::NamespaceResourceScope {
    fn api<K: kube::Resource<Scope = Self, DynamicType = ()>>(
        client: &Client,
        namespace: Option<&str>,
    ) -> Api<K> {
        Api::namespaced(client.clone(), namespace.unwrap_or("default"))
    }
}
impl ScopeApi for k8s_openapi::ClusterResourceScope {
    fn api<K: kube::Resource<Scope = Self, DynamicType = ()>>(
        client: &Client,
        _namespace: Option<&str>,
    ) -> Api<K> {
        Api::all(client.clone())
    }
}

/// Every resource of one collection (`routes`, `firewalls`, ...) in the emulator, every project.
pub async fn emulator_collection(emulator_url: &str, collection: &str) -> Vec<Value> {
    let state =
        adc_testenv::emulator_admin(emulator_url, &format!("state?collection={collection}"))
            .await
            .unwrap_or_else(|err| panic!("reading the emulator's state: {err}"));
    state["items"].as_array().cloned().unwrap_or_default()
}

/// The emulator's routes whose destRange is `dest`, as (name, nextHop instance, priority),
/// sorted by instance.
pub async fn routes_to(emulator_url: &str, dest: &str) -> Vec<(String, String, u64)> {
    let mut routes: Vec<_> = emulator_collection(emulator_url, "routes")
        .await
        .into_iter()
        .filter(|r| r["destRange"] == dest)
        .map(|r| {
            (
                r["name"].as_str().unwrap_or_default().to_string(),
                r["nextHopInstance"]
                    .as_str()
                    .unwrap_or_default()
                    .rsplit('/')
                    .next()
                    .unwrap_or_default()
                    .to_string(),
                r["priority"].as_u64().unwrap_or_default(),
            )
        })
        .collect();
    routes.sort_by(|a, b| a.1.cmp(&b.1));
    routes
}

/// The emulator's firewall rules whose first destination range is `dest`.
pub async fn firewalls_to(emulator_url: &str, dest: &str) -> Vec<Value> {
    emulator_collection(emulator_url, "firewalls")
        .await
        .into_iter()
        .filter(|f| f["destinationRanges"][0] == dest)
        .collect()
}

/// The emulator's counters (`GET /_emulator/stats`).
pub async fn emulator_stats(emulator_url: &str) -> Value {
    adc_testenv::emulator_admin(emulator_url, "stats")
        .await
        .unwrap_or_else(|err| panic!("reading the emulator's stats: {err}"))
}

/// One Compute call as the operator makes it (a metadata-server token), with a JSON body.
pub async fn compute(
    emulator_url: &str,
    method: reqwest::Method,
    path: &str,
    body: Value,
) -> Value {
    compute_in(emulator_url, PROJECT, method, path, body).await
}

/// [`compute`] in another project of the world.
pub async fn compute_in(
    emulator_url: &str,
    project: &str,
    method: reqwest::Method,
    path: &str,
    body: Value,
) -> Value {
    let token: Value = reqwest::Client::new()
        .get(format!(
            "{emulator_url}/computeMetadata/v1/instance/service-accounts/default/token"
        ))
        .header("Metadata-Flavor", "Google")
        .send()
        .await
        .expect("asking the metadata server for a token")
        .json()
        .await
        .expect("the token answer is JSON");
    reqwest::Client::new()
        .request(
            method,
            format!("{emulator_url}/compute/v1/projects/{project}/{path}"),
        )
        .bearer_auth(token["access_token"].as_str().unwrap_or_default())
        .json(&body)
        .send()
        .await
        .expect("calling Compute")
        .json()
        .await
        .unwrap_or(Value::Null)
}

/// The engines a packet to `vip` is spread over on the network `default`, by Compute's rule
/// (longest prefix, then the smallest priority value, ECMP among equals), from the emulator's
/// routes: independent of the operator's own code.
pub fn effective(routes: &[Value], vip: std::net::Ipv4Addr) -> std::collections::BTreeSet<String> {
    let matching: Vec<(u8, u64, String)> = routes
        .iter()
        .filter(|r| {
            r["network"]
                .as_str()
                .is_some_and(|n| n.ends_with("/networks/default"))
        })
        .filter_map(|r| {
            let range: ipnet::Ipv4Net = r["destRange"].as_str()?.parse().ok()?;
            range.contains(&vip).then(|| {
                (
                    range.prefix_len(),
                    r["priority"].as_u64().unwrap_or(1000),
                    r["nextHopInstance"]
                        .as_str()
                        .unwrap_or_default()
                        .rsplit('/')
                        .next()
                        .unwrap_or_default()
                        .to_string(),
                )
            })
        })
        .collect();
    let Some(longest) = matching.iter().map(|m| m.0).max() else {
        return std::collections::BTreeSet::new();
    };
    let best = matching
        .iter()
        .filter(|m| m.0 == longest)
        .map(|m| m.1)
        .min()
        .unwrap_or_default();
    matching
        .into_iter()
        .filter(|m| m.0 == longest && m.1 == best)
        .map(|m| m.2)
        .collect()
}
