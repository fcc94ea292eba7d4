//! Shared pieces of the integration tests: the per-binary control plane and per-test namespaces.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU32, Ordering};

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

/// A client with cluster-admin rights on this test binary's control plane.
pub async fn admin_client() -> Client {
    let plane = adc_testenv::shared().unwrap_or_else(|err| panic!("control plane: {err}"));
    let kubeconfig = Kubeconfig::read_from(&plane.kubeconfig).expect("reading the kubeconfig");
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
