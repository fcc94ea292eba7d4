//! The Kubernetes side: CRDs, the tenant namespace and its GcpCloud, applying the fleet with
//! server-side apply, and a watch that knows at every moment how many objects are Ready for their
//! current generation.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use adc_operator::api::{FleetObject, GcpCloud, VirtualService};
use anyhow::{Context as _, bail};
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::core::NamespaceResourceScope;
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Client, ResourceExt as _};
use serde_json::{Value, json};

const MANAGER: &str = "adc-bench";

pub async fn install_crds(client: &Client) -> anyhow::Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in adc_operator::api::crds() {
        crds.patch(
            &crd.name_any(),
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&crd),
        )
        .await?;
    }
    let vs: Api<VirtualService> = Api::all(client.clone());
    let deadline = Instant::now() + Duration::from_secs(30);
    while vs.list(&ListParams::default().limit(1)).await.is_err() {
        if Instant::now() > deadline {
            bail!("the VirtualService API is not served 30 s after installing the CRDs");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// A fresh tenant namespace and a GcpCloud for it, pointing at `endpoint`, with the fields of
/// `extra_spec` (a JSON object, e.g. `vipPools`) added to its spec; waits until the cloud is
/// Ready.
pub async fn tenant(
    client: &Client,
    name: &str,
    endpoint: &str,
    resync: &str,
    instance_poll: &str,
    extra_spec: &Value,
) -> anyhow::Result<()> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .patch(
            name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": name, "labels": {"adc.dev/tenant": "bench"}}})),
        )
        .await?;
    let clouds: Api<GcpCloud> = Api::all(client.clone());
    let mut manifest = json!({
        "apiVersion": "adc.dev/v1alpha1", "kind": "GcpCloud", "metadata": {"name": name},
        "spec": {"project": crate::fleet::PROJECT, "network": "default", "region": "us-central1",
                 "credentials": {"workloadIdentity": {}}, "endpoint": endpoint,
                 "allowedNamespaces": {"matchLabels": {"kubernetes.io/metadata.name": name}},
                 "allowedDestinationRanges": ["10.0.0.0/8"],
                 "resyncInterval": resync, "instancePollInterval": instance_poll}
    });
    for (field, value) in extra_spec.as_object().into_iter().flatten() {
        manifest["spec"][field] = value.clone();
    }
    clouds
        .patch(
            name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(manifest),
        )
        .await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let cloud = clouds.get(name).await?;
        let ready = cloud.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        });
        if ready {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "GcpCloud {name} not Ready after 60 s: {:?}",
                cloud.status.map(|s| s.conditions)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The operator's object kinds, as the benchmark applies and watches them.
pub trait Object:
    FleetObject<Scope = NamespaceResourceScope>
    + Clone
    + std::fmt::Debug
    + serde::de::DeserializeOwned
    + Send
    + Sync
    + 'static
{
}

impl<K> Object for K where
    K: FleetObject<Scope = NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static
{
}

/// Ready for its current generation.
fn is_ready(object: &impl FleetObject) -> bool {
    object.observed_generation().is_some()
        && object.observed_generation() == object.meta().generation
        && object
            .conditions()
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// Applies every manifest (objects of kind `K`) with server-side apply, `concurrency` at a time,
/// in order.
pub async fn apply_all<K: Object>(
    client: Client,
    namespace: String,
    manifests: Vec<Value>,
    concurrency: usize,
) -> anyhow::Result<()> {
    let api: Api<K> = Api::namespaced(client, &namespace);
    let namespace = &namespace;
    futures::stream::iter(manifests)
        .map(|manifest| {
            let api = api.clone();
            async move {
                let name = manifest["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                let mut attempt = 0;
                loop {
                    attempt += 1;
                    let result = api
                        .patch(
                            &name,
                            &PatchParams::apply(MANAGER).force(),
                            &Patch::Apply(&manifest),
                        )
                        .await;
                    match result {
                        Ok(_) => return Ok(()),
                        // A loaded kube-apiserver times out (500 "resource quota evaluation
                        // timed out", 504) or drops a connection: the apply is idempotent.
                        Err(err) if attempt < 10 && transient(&err) => {
                            tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                        }
                        Err(err) => {
                            return Err(anyhow::Error::new(err)).with_context(|| {
                                format!("applying {} {namespace}/{name}", K::kind(&()))
                            });
                        }
                    }
                }
            }
        })
        .buffer_unordered(concurrency)
        .try_for_each(|_| async { Ok(()) })
        .await
}

/// An error a retry may not meet: the kube-apiserver overloaded or the connection lost.
fn transient(err: &kube::Error) -> bool {
    match err {
        kube::Error::Api(status) => status.code == 429 || status.code >= 500,
        kube::Error::HyperError(_) | kube::Error::Service(_) => true,
        _ => false,
    }
}

/// Deletes the named objects of kind `K`, `concurrency` at a time (one missing already is
/// fine): thousands of objects with finalizers outlast the kube-apiserver's request timeout in
/// one `deletecollection`.
pub async fn delete_each<K: Object>(
    client: &Client,
    namespace: &str,
    names: Vec<String>,
    concurrency: usize,
) -> anyhow::Result<()> {
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    futures::stream::iter(names)
        .map(|name| {
            let api = api.clone();
            async move {
                let mut attempt = 0;
                loop {
                    attempt += 1;
                    match api.delete(&name, &DeleteParams::default()).await {
                        Ok(_) => return Ok(()),
                        Err(kube::Error::Api(status)) if status.code == 404 => return Ok(()),
                        Err(err) if attempt < 10 && transient(&err) => {
                            tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                        }
                        Err(err) => {
                            return Err(anyhow::Error::new(err)).with_context(|| {
                                format!("deleting {} {namespace}/{name}", K::kind(&()))
                            });
                        }
                    }
                }
            }
        })
        .buffer_unordered(concurrency)
        .try_for_each(|()| async { Ok(()) })
        .await
}

/// Objects Ready for their current generation, kept current by a watch.
#[derive(Clone, Default)]
pub struct Readiness {
    inner: Arc<Mutex<ReadinessState>>,
}

#[derive(Default)]
struct ReadinessState {
    /// Every object the watch has seen, and whether it is Ready at its generation.
    objects: HashMap<String, bool>,
    ready: usize,
    /// Times an object that was Ready stopped being Ready (deletions aside), by object.
    lost_ready: HashMap<String, usize>,
}

impl Readiness {
    /// Starts watching the namespace's objects of kind `K`; the task ends with the runtime.
    pub fn watch<K: Object>(client: &Client, namespace: &str) -> Self {
        let readiness = Self::default();
        let api: Api<K> = Api::namespaced(client.clone(), namespace);
        let state = Arc::clone(&readiness.inner);
        tokio::spawn(async move {
            let mut events = watcher(api, watcher::Config::default())
                .default_backoff()
                .boxed();
            while let Some(event) = events.next().await {
                let Ok(event) = event else { continue };
                let mut state = match state.lock() {
                    Ok(guard) => guard,
                    Err(poisoned) => poisoned.into_inner(),
                };
                match event {
                    watcher::Event::Apply(object) | watcher::Event::InitApply(object) => {
                        state.set(object.name_any(), Some(is_ready(&object)));
                    }
                    watcher::Event::Delete(object) => state.set(object.name_any(), None),
                    watcher::Event::Init | watcher::Event::InitDone => {}
                }
            }
        });
        readiness
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ReadinessState> {
        match self.inner.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// (objects Ready, objects that exist)
    pub fn counts(&self) -> (usize, usize) {
        let state = self.lock();
        (state.ready, state.objects.len())
    }

    /// How many times each object that was Ready stopped being Ready, since the watch started.
    pub fn lost_ready(&self) -> HashMap<String, usize> {
        self.lock().lost_ready.clone()
    }
}

impl ReadinessState {
    fn set(&mut self, name: String, ready: Option<bool>) {
        let before = match ready {
            Some(ready) => self.objects.insert(name.clone(), ready),
            None => self.objects.remove(&name),
        };
        if before == Some(true) {
            self.ready -= 1;
            if ready == Some(false) {
                *self.lost_ready.entry(name).or_default() += 1;
            }
        }
        if ready == Some(true) {
            self.ready += 1;
        }
    }
}
