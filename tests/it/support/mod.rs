//! Shared pieces of the integration tests: the suites' control planes and per-test namespaces.
#![allow(dead_code)]

pub mod operator;

use std::sync::atomic::{AtomicU32, Ordering};

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

/// Held for writing while a test changes this process's environment, and for reading around
/// code that reads the environment through libc instead of std (Lua's package library):
/// std serialises only its own accesses, and every suite runs in this one process.
pub static LIBC_ENV: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// The shared control plane a suite runs on. A suite that runs an operator has a plane of its
/// own: an operator reconciles every GcpCloud of its cluster, and these suites count what their
/// operator writes, elect leaders on `default/adc-operator` or install cluster-wide RBAC. The
/// suites that only talk to the API server share [`Plane::Default`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plane {
    /// control_plane and crd_validation: no operator runs on it.
    Default,
    BadInput,
    Helm,
    Ilb,
    Leader,
    Operator,
    Policy,
    Pools,
    Security,
}

impl Plane {
    fn name(self) -> &'static str {
        match self {
            Plane::Default => adc_testenv::DEFAULT_SHARED,
            Plane::BadInput => "bad-input",
            Plane::Helm => "helm",
            Plane::Ilb => "ilb",
            Plane::Leader => "leader",
            Plane::Operator => "operator",
            Plane::Policy => "policy",
            Plane::Pools => "pools",
            Plane::Security => "security",
        }
    }

    /// The plane, started on first use.
    pub fn get(self) -> &'static adc_testenv::SharedControlPlane {
        adc_testenv::shared_named(self.name())
            .unwrap_or_else(|err| panic!("control plane {}: {err}", self.name()))
    }

    /// A client with cluster-admin rights on the plane.
    pub async fn admin_client(self) -> Client {
        client_for(&self.get().kubeconfig).await
    }

    /// Installs the checked-in CRDs with kubectl (server-side apply) and waits until they are
    /// Established.
    pub fn install_crds(self) {
        let plane = self.get();
        install_crds_into(&plane.binaries.kubectl, &plane.kubeconfig);
    }

    /// A kubeconfig for the plane that authenticates with `token` (a ServiceAccount's), written
    /// to `path`.
    pub fn token_kubeconfig(self, token: &str, path: &std::path::Path) {
        token_kubeconfig(&self.get().kubeconfig, token, path);
    }
}

/// A client with the rights of `kubeconfig` (e.g. a control plane of the test's own).
pub async fn client_for(kubeconfig: &std::path::Path) -> Client {
    let kubeconfig = Kubeconfig::read_from(kubeconfig).expect("reading the kubeconfig");
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("loading the kubeconfig");
    Client::try_from(config).expect("building the client")
}

/// Creates a fresh namespace for one test. Namespaces are never reused: this control plane has
/// no namespace controller, so a deleted one would stay Terminating.
pub async fn test_namespace(client: &Client, prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "{prefix}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let namespace = Namespace {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            labels: Some([("adc.dev/test".to_string(), prefix.to_string())].into()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await
        .expect("creating the test namespace");
    name
}

/// Polls until `check` holds, every 200 ms for at most 60 s (two cores are shared with other
/// tests), then fails with the last reason `check` gave.
pub async fn eventually<F, Fut>(what: &str, check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    eventually_within(what, 60, check).await;
}

/// [`eventually`] with a limit of `seconds`.
pub async fn eventually_within<F, Fut>(what: &str, seconds: u64, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let mut last = String::new();
    for _ in 0..seconds * 5 {
        match check().await {
            Ok(()) => return,
            Err(why) => last = why,
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    panic!("{what} did not happen within {seconds} s: {last}");
}

/// Installs the checked-in CRDs into the control plane of `kubeconfig` and waits until they are
/// Established.
pub fn install_crds_into(kubectl_binary: &std::path::Path, kubeconfig: &std::path::Path) {
    let kubectl = |args: &[&str]| {
        let output = std::process::Command::new(kubectl_binary)
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .output()
            .expect("running kubectl");
        assert!(
            output.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    let crds = adc_testenv::repo_root().join("crds");
    kubectl(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        crds.to_str().expect("UTF-8 path"),
    ]);
    kubectl(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/gcpclouds.adc.dev",
        "crd/virtualservices.adc.dev",
        "crd/vpcroutes.adc.dev",
    ]);
}

/// A kubeconfig for the control plane of the admin kubeconfig `admin_kubeconfig` that authenticates with
/// `token` (a ServiceAccount's), written to `path`.
fn token_kubeconfig(admin_kubeconfig: &std::path::Path, token: &str, path: &std::path::Path) {
    let admin: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(admin_kubeconfig).expect("reading the kubeconfig"),
    )
    .expect("the kubeconfig is YAML");
    let cluster = &admin["clusters"][0]["cluster"];
    let kubeconfig = serde_json::json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "adc-testenv", "cluster": {
            "server": cluster["server"].as_str().expect("a server"),
            "certificate-authority-data": cluster["certificate-authority-data"].as_str().expect("a CA"),
        }}],
        "users": [{"name": "operator", "user": {"token": token}}],
        "contexts": [{"name": "operator", "context": {"cluster": "adc-testenv", "user": "operator"}}],
        "current-context": "operator",
    });
    std::fs::write(
        path,
        serde_yaml::to_string(&kubeconfig).expect("serialising the kubeconfig"),
    )
    .expect("writing the kubeconfig");
}

/// Fails unless the API server refused the request with 403 Forbidden.
#[track_caller]
pub fn assert_forbidden<T: std::fmt::Debug>(result: Result<T, kube::Error>, what: &str) {
    match result {
        Err(kube::Error::Api(status)) if status.code == 403 => {}
        other => panic!("{what}: expected 403 Forbidden, got {other:?}"),
    }
}
