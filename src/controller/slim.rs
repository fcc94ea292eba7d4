//! What the fleet kinds' stores keep of each object.
//!
//! - Never `managedFields` or kubectl's `last-applied-configuration` annotation: nothing reads
//!   them, and they are most of an object's bytes (the annotation repeats the whole spec of an
//!   object applied with client-side `kubectl apply`, as Argo CD does by default).
//! - Under `--sharding`, only a stub of an object whose cloud another replica holds: its
//!   identity, its finalizers and deletion, and `spec.cloudRef`. A replica then keeps whole only
//!   the objects it reconciles, and its memory follows its share of the fleet, not the fleet.
//!
//! A stub is marked ([`STUB`]) and never acted on: a reconcile of one waits, and a cloud whose
//! objects are still stubs in the store (just acquired) builds nothing until a re-list has
//! brought them whole ([`Relist`]; the fleet index counts stubs per cloud).

use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use kube::Resource;
use kube::api::Api;
use kube::runtime::watcher;
use tokio::sync::Notify;

use crate::api::{VirtualService, VpcRoute};

/// The annotation a stored stub carries (only in this process's store: nothing is written).
pub const STUB: &str = "adc.dev/stub-of-another-replicas-cloud";

/// kubectl's client-side apply record.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// A fleet kind, as the stores slim it.
pub trait Slim: Resource {
    /// `spec.cloudRef`.
    fn cloud(&self) -> &str;
    /// Drops everything but what a stub keeps.
    fn to_stub(&mut self);
}

impl Slim for VirtualService {
    fn cloud(&self) -> &str {
        &self.spec.cloud_ref
    }
    fn to_stub(&mut self) {
        stub_meta(self);
        let spec = &mut self.spec;
        spec.vip = Default::default();
        spec.ports = Vec::new();
        spec.source_ranges = Vec::new();
        spec.service_engines = Vec::new();
        spec.health_check = None;
        self.status = None;
    }
}

impl Slim for VpcRoute {
    fn cloud(&self) -> &str {
        &self.spec.cloud_ref
    }
    fn to_stub(&mut self) {
        stub_meta(self);
        let spec = &mut self.spec;
        spec.dest_range = String::new();
        spec.tags = Vec::new();
        spec.next_hop = Default::default();
        self.status = None;
    }
}

fn stub_meta<K: Resource>(object: &mut K) {
    let meta = object.meta_mut();
    meta.labels = None;
    meta.owner_references = None;
    meta.annotations = Some([(STUB.to_string(), "true".to_string())].into());
}

/// Whether `object` is a stub.
pub fn is_stub<K: Resource>(object: &K) -> bool {
    object
        .meta()
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(STUB))
}

/// What every stored object loses, and a stub of those `slim` says (by cloud) are another
/// replica's.
pub fn trim<K: Slim>(object: &mut K, slim: impl Fn(&str) -> bool) {
    let meta = object.meta_mut();
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
    }
    if slim(object.cloud()) {
        object.to_stub();
    }
}

/// Asks the fleet kinds' watches to list again, so that their stores follow the clouds this
/// replica holds: an acquired cloud's objects arrive whole, a lost one's become stubs. Requests
/// close together make one re-list.
#[derive(Clone, Default)]
pub struct Relist {
    requested: Arc<Notify>,
    kinds: Arc<Vec<Arc<Notify>>>,
}

impl Relist {
    /// A re-list of every watch registered (see [`Relist::watch`]), soon.
    pub fn request(&self) {
        self.requested.notify_one();
    }

    /// Runs the debounce: at most one re-list per `quiet` of requests.
    pub fn spawn(&self, quiet: Duration) {
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                this.requested.notified().await;
                tokio::time::sleep(quiet).await;
                for kind in this.kinds.iter() {
                    kind.notify_one();
                }
            }
        });
    }

    /// A watch of `api` that starts over (a fresh list) whenever a re-list is due. The
    /// reflector keeps serving the old store until the new list is complete. A list in progress
    /// is never cut short: a re-list asked for meanwhile starts once it is complete (at 50,000
    /// objects a list takes seconds, and cutting it at every request would never finish one).
    pub fn watch<K>(
        &mut self,
        api: Api<K>,
        config: watcher::Config,
    ) -> impl Stream<Item = watcher::Result<watcher::Event<K>>> + Send + use<K>
    where
        K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
        K::DynamicType: Default + Eq + std::hash::Hash + Clone,
    {
        let signal = Arc::new(Notify::new());
        Arc::make_mut(&mut self.kinds).push(Arc::clone(&signal));
        let start = move |api: &Api<K>, config: &watcher::Config| {
            watcher(api.clone(), config.clone()).boxed()
        };
        let first = start(&api, &config);
        // (the watch, its api and config, the signal, whether a list is in progress, whether a
        // re-list waits for it)
        futures::stream::unfold(
            (first, api, config, signal, true, false),
            move |(mut inner, api, config, signal, mut listing, mut due)| async move {
                loop {
                    if due && !listing {
                        tracing::debug!("re-listing a fleet kind: the clouds held changed");
                        inner = start(&api, &config);
                        listing = true;
                        due = false;
                    }
                    tokio::select! {
                        () = signal.notified() => due = true,
                        item = inner.next() => {
                            if let Some(Ok(watcher::Event::InitDone)) = &item {
                                listing = false;
                            }
                            return item
                                .map(|item| (item, (inner, api, config, signal, listing, due)));
                        }
                    }
                }
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vs() -> VirtualService {
        serde_json::from_value(json!({
            "apiVersion": "adc.dev/v1alpha1", "kind": "VirtualService",
            "metadata": {"name": "web", "namespace": "team-a", "uid": "u-1",
                         "generation": 3, "finalizers": ["adc.dev/cleanup"],
                         "labels": {"app": "web"},
                         "annotations": {LAST_APPLIED: "{\"spec\":{}}", "adc.dev/approve": "h"},
                         "managedFields": [{"manager": "kubectl", "operation": "Apply"}]},
            "spec": {"cloudRef": "prod", "vip": {"address": "10.0.0.5"},
                     "ports": [{"port": 443}], "sourceRanges": ["10.0.0.0/8"],
                     "serviceEngines": [{"name": "se-1", "zone": "z"}]},
            "status": {"vip": "10.0.0.5"},
        }))
        .unwrap()
    }

    #[test]
    fn every_object_loses_managed_fields_and_the_last_applied_record() {
        let mut object = vs();
        trim(&mut object, |_| false);
        assert!(object.metadata.managed_fields.is_none());
        let annotations = object.metadata.annotations.clone().unwrap();
        assert!(!annotations.contains_key(LAST_APPLIED));
        assert_eq!(
            annotations["adc.dev/approve"], "h",
            "other annotations stay"
        );
        assert!(!is_stub(&object));
        assert_eq!(object.spec.service_engines.len(), 1);
        assert!(object.status.is_some());
    }

    #[test]
    fn a_stub_keeps_identity_finalizers_and_cloud_only() {
        let mut object = vs();
        trim(&mut object, |cloud| cloud == "prod");
        assert!(is_stub(&object));
        assert_eq!(object.metadata.name.as_deref(), Some("web"));
        assert_eq!(object.metadata.uid.as_deref(), Some("u-1"));
        assert_eq!(object.metadata.generation, Some(3));
        assert_eq!(
            object.metadata.finalizers.as_deref(),
            Some(&["adc.dev/cleanup".to_string()][..])
        );
        assert_eq!(object.spec.cloud_ref, "prod");
        assert!(object.spec.service_engines.is_empty() && object.spec.ports.is_empty());
        assert!(object.spec.vip.address.is_none());
        assert!(object.status.is_none() && object.metadata.labels.is_none());
        // Smaller than the whole object, as stored.
        let whole = serde_json::to_vec(&vs()).unwrap().len();
        assert!(serde_json::to_vec(&object).unwrap().len() < whole);
    }
}
