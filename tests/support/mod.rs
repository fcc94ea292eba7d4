//! Shared pieces of the integration tests: the per-binary control plane and per-test namespaces.
#![allow(dead_code)]

pub mod operator;

use std::sync::atomic::{AtomicU32, Ordering};

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

/// A client with cluster-admin rights on this test binary's control plane.
pub async fn admin_client() -> Client {
    let plane = adc_testenv::shared().unwrap_or_else(|err| panic!("control plane: {err}"));
    client_for(&plane.kubeconfig).await
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
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let mut last = String::new();
    for _ in 0..300 {
        match check().await {
            Ok(()) => return,
            Err(why) => last = why,
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    panic!("{what} did not happen within 60 s: {last}");
}

/// Installs the checked-in CRDs with kubectl (server-side apply) and waits until they are
/// Established.
pub fn install_crds() {
    let plane = adc_testenv::shared().unwrap_or_else(|err| panic!("control plane: {err}"));
    install_crds_into(&plane.binaries.kubectl, &plane.kubeconfig);
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

/// A free loopback port (for an operator's --metrics-addr).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("binding a free loopback port")
        .local_addr()
        .expect("reading the bound port")
        .port()
}

/// A kubeconfig for this binary's control plane that authenticates with `token` (a
/// ServiceAccount's), written to `path`.
pub fn token_kubeconfig(token: &str, path: &std::path::Path) {
    let plane = adc_testenv::shared().expect("control plane");
    let admin: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(&plane.kubeconfig).expect("reading the kubeconfig"),
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
