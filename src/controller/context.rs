//! What every reconcile shares: the Kubernetes client, one GCP engine per GcpCloud, the stores of
//! every kind, the event recorder, and the triggers that turn inventory changes into reconciles.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::Client;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use tokio::sync::mpsc;

use crate::api::{VirtualService, VpcRoute};
use crate::gcp::{DispatchMode, Engine, GcpMetrics};
use crate::plan::CloudView;
use crate::plan::owner::Owner;

/// How the operator runs.
#[derive(Debug, Clone)]
pub struct OperatorSettings {
    /// Written into every ownership marker: two clusters sharing a project never touch each
    /// other's resources.
    pub cluster_id: String,
    pub dispatch: DispatchMode,
    /// 1.0 against GCP; the emulator's `--time-scale` in benchmarks.
    pub gcp_time_scale: f64,
    /// Reconciles of one kind running at once, at most. kube-runtime polls every running
    /// reconcile whenever one of them wakes, so without a bound a fleet's backlog costs
    /// quadratic CPU (and a future per object in memory).
    pub reconcile_concurrency: u16,
    /// This replica's identity (the pod's name): what `status.holder` of the clouds it
    /// reconciles says.
    pub identity: String,
}

/// The GCP side of one GcpCloud.
pub struct CloudRuntime {
    pub engine: Engine,
    pub view: CloudView,
    pub spec: crate::api::GcpCloudSpec,
    /// Serialized spec the engine was built from: a change rebuilds it.
    pub fingerprint: String,
    /// Zones whose instances the inventory lists.
    pub zones: RwLock<BTreeSet<String>>,
    /// Held while zones are added, so that objects arriving together load a new zone once.
    pub adding_zones: tokio::sync::Mutex<()>,
    /// Whether the network check and the first inventory load succeeded.
    pub ready: std::sync::atomic::AtomicBool,
    /// Inventory refreshes that failed in a row since the last one that succeeded.
    pub refresh_failures: std::sync::atomic::AtomicU32,
    /// Operations this engine did not send may still run on the operator's resources (a
    /// former leader's, or this process's before a restart): until a refresh sees none, the
    /// inventory is refreshed again soon, so that what they make is collected or adopted.
    pub settling: std::sync::atomic::AtomicBool,
    /// Whether the last settling refresh saw no such operation. Settling ends only after two
    /// such refreshes in a row: the pages of one refresh travel together, so a resource page
    /// read just before an operation finished and the operations page read just after it
    /// would show neither the resource nor the operation.
    pub quiet_once: std::sync::atomic::AtomicBool,
    /// The cloud's VIP pools, their addresses and the shared layout's wake-up.
    pub pools: super::pools::Pools,
    /// ILB mode: what the cloud's backend services last reported of their engines.
    pub ilb: super::cloud::IlbHealth,
    /// The cloud's `spec.managementPolicy`, current (objects may override it).
    pub policy: RwLock<crate::api::ManagementPolicy>,
}

impl CloudRuntime {
    /// The cloud's management policy.
    pub fn policy(&self) -> crate::api::ManagementPolicy {
        match self.policy.read() {
            Ok(guard) => *guard,
            Err(poisoned) => *poisoned.into_inner(),
        }
    }

    /// Whether the cloud itself may write (its shared layout, its orphan collection).
    pub fn writes(&self) -> bool {
        self.policy() == crate::api::ManagementPolicy::Full
    }

    /// Takes the cloud's policy from its spec. Leaving Full stops the writes at once: the
    /// engine drops every mutation it has not sent (an object allowed to write, by its
    /// annotation or an approval, hands its work over again on its next reconcile). Returns
    /// whether the policy changed.
    pub fn set_policy(&self, policy: crate::api::ManagementPolicy) -> bool {
        let was = {
            let mut guard = match self.policy.write() {
                Ok(guard) => guard,
                Err(poisoned) => poisoned.into_inner(),
            };
            std::mem::replace(&mut *guard, policy)
        };
        if was == crate::api::ManagementPolicy::Full && policy != was {
            let dropped = self.engine.withhold(|_| true);
            tracing::info!(cloud = %self.view.cloud, %policy, dropped, "writes stopped by the management policy");
        }
        was != policy
    }
}

/// Waits until a reflector store holds its first full list; false when its writer is gone.
///
/// kube-runtime's `Store::wait_until_ready` sits on a oneshot channel that keeps only the waker
/// of the last task to poll it: of several reconciles waiting at once (several GcpClouds at
/// start-up), the others would never wake. Polling again every 100 ms re-registers each waiter.
pub async fn store_ready<K>(store: &Store<K>) -> bool
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    loop {
        match tokio::time::timeout(Duration::from_millis(100), store.wait_until_ready()).await {
            Ok(ready) => return ready.is_ok(),
            Err(_elapsed) => continue,
        }
    }
}

/// Shared by every reconcile.
pub struct Context {
    pub client: Client,
    pub settings: OperatorSettings,
    pub metrics: Arc<GcpMetrics>,
    /// The controllers' own metrics (reconciles, objects by state, progress).
    pub reconcile_metrics: Arc<super::ControllerMetrics>,
    pub clouds: RwLock<HashMap<String, Arc<CloudRuntime>>>,
    /// Publishes Warning events, counting repeats into a series.
    pub recorder: Recorder,
    pub virtual_services: Store<VirtualService>,
    pub vpc_routes: Store<VpcRoute>,
    /// What the objects name (addresses, instances, modes, stubs), kept from the same watch
    /// streams as the stores.
    pub index: Arc<super::index::FleetIndex>,
    /// Re-lists the fleet kinds' watches (with `--sharding`, when the clouds held change).
    pub relist: super::slim::Relist,
    pub namespaces: Store<Namespace>,
    pub vs_trigger: mpsc::UnboundedSender<ObjectRef<VirtualService>>,
    pub vr_trigger: mpsc::UnboundedSender<ObjectRef<VpcRoute>>,
    /// With `--sharding`: which clouds this replica holds. None: it reconciles every cloud.
    pub shards: Option<Arc<crate::shard::Shards>>,
    /// The GcpClouds, as the cloud controller's watch sees them.
    pub gcp_clouds: Store<crate::api::GcpCloud>,
    /// Finalizers this replica added that its store has not shown yet.
    pub finalizing: super::reconcile::Finalizing,
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    match lock.read() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

impl Context {
    /// The runtime of a GcpCloud, once its engine is built.
    pub fn cloud(&self, name: &str) -> Option<Arc<CloudRuntime>> {
        read(&self.clouds).get(name).cloned()
    }

    /// Whether this replica reconciles `cloud` and the objects that name it: always, unless
    /// sharding gives the cloud to another replica.
    pub fn holds(&self, cloud: &str) -> bool {
        self.shards
            .as_ref()
            .is_none_or(|s| s.holds(cloud, self.gcp_clouds.get(&ObjectRef::new(cloud)).is_some()))
    }

    /// Stops and forgets a cloud's engine (its Lease was lost or handed back).
    pub fn drop_cloud(&self, cloud: &str) {
        let runtime = match self.clouds.write() {
            Ok(mut guard) => guard.remove(cloud),
            Err(poisoned) => poisoned.into_inner().remove(cloud),
        };
        if let Some(runtime) = runtime {
            runtime.engine.shutdown();
        }
    }

    /// Publishes a Kubernetes Event on `object` (best effort: a failed event is only logged).
    pub async fn event<K: Resource<DynamicType = ()>>(
        &self,
        object: &K,
        warning: bool,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let event = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.to_string(),
            note: Some(note),
            action: action.to_string(),
            secondary: None,
        };
        // kube-runtime's Recorder keeps every event it published for six minutes (to count a
        // repeat into the first one's series) and sweeps that cache on every publish: a
        // rollout's one-off Normal events (an `Applying` per object) made it the largest heap
        // consumer after the inventory (bench/README.md, "Footprint"), and its sweep quadratic.
        // Warnings repeat (a failing object retries), so they keep the series; Normal events
        // go through a recorder that keeps nothing.
        let published = if warning {
            self.recorder.publish(&event, &object.object_ref(&())).await
        } else {
            Recorder::new(self.client.clone(), reporter())
                .publish(&event, &object.object_ref(&()))
                .await
        };
        if let Err(err) = published {
            tracing::warn!(error = %err, reason, "publishing an event failed");
        }
    }

    /// Whether `cloud`'s allowedNamespaces selects `namespace`.
    pub fn namespace_allowed(&self, cloud: &crate::api::GcpCloudSpec, namespace: &str) -> bool {
        let Some(selector) = &cloud.allowed_namespaces else {
            return true;
        };
        let Some(ns) = self.namespaces.get(&ObjectRef::new(namespace)) else {
            return false;
        };
        selector_matches(selector, ns.labels())
    }

    /// Reconciles every object that references `cloud`.
    pub fn requeue_users_of(&self, cloud: &str) {
        self.triggers().requeue_users(cloud);
    }

    /// What turns GCP-side changes into reconciles, for a task of its own.
    pub fn triggers(&self) -> Triggers {
        Triggers {
            cluster_id: self.settings.cluster_id.clone(),
            virtual_services: self.virtual_services.clone(),
            vpc_routes: self.vpc_routes.clone(),
            index: Arc::clone(&self.index),
            vs: self.vs_trigger.clone(),
            vr: self.vr_trigger.clone(),
        }
    }
}

/// The stores and the controllers' triggers: requeues objects by what they reference.
#[derive(Clone)]
pub struct Triggers {
    cluster_id: String,
    pub virtual_services: Store<VirtualService>,
    pub vpc_routes: Store<VpcRoute>,
    /// What the objects of the stores name.
    pub index: Arc<super::index::FleetIndex>,
    vs: mpsc::UnboundedSender<ObjectRef<VirtualService>>,
    vr: mpsc::UnboundedSender<ObjectRef<VpcRoute>>,
}

impl Triggers {
    /// Requeues every object that references `cloud`.
    pub fn requeue_users(&self, cloud: &str) {
        for vs in self.virtual_services.state() {
            if vs.spec.cloud_ref == cloud {
                let _ = self.vs.send(ObjectRef::from_obj(&*vs));
            }
        }
        for vr in self.vpc_routes.state() {
            if vr.spec.cloud_ref == cloud {
                let _ = self.vr.send(ObjectRef::from_obj(&*vr));
            }
        }
    }

    /// Requeues the owner of a GCP resource (from its ownership marker), if it is this
    /// cluster's.
    pub fn requeue_owner(&self, owner: &Owner) {
        if owner.cluster_id != self.cluster_id {
            return;
        }
        match owner.kind.as_str() {
            crate::plan::virtualservice::KIND => {
                let _ = self
                    .vs
                    .send(ObjectRef::new(&owner.name).within(&owner.namespace));
            }
            crate::plan::vpcroute::KIND => {
                let _ = self
                    .vr
                    .send(ObjectRef::new(&owner.name).within(&owner.namespace));
            }
            _ => {}
        }
    }

    /// Requeues a VirtualService found by reference.
    pub fn requeue_virtual_service(&self, object: ObjectRef<VirtualService>) {
        let _ = self.vs.send(object);
    }

    /// Requeues a VpcRoute found by reference.
    pub fn requeue_vpc_route(&self, object: ObjectRef<VpcRoute>) {
        let _ = self.vr.send(object);
    }

    /// Requeues every object that uses instance `zone/name` as an engine or next hop.
    pub fn requeue_instance_users(&self, zone: &str, name: &str) {
        for vs in self.virtual_services.state() {
            if vs
                .spec
                .service_engines
                .iter()
                .any(|e| e.zone == zone && e.name == name)
            {
                let _ = self.vs.send(ObjectRef::from_obj(&*vs));
            }
        }
        for vr in self.vpc_routes.state() {
            if vr
                .spec
                .next_hop
                .instance
                .as_ref()
                .is_some_and(|i| i.zone == zone && i.name == name)
            {
                let _ = self.vr.send(ObjectRef::from_obj(&*vr));
            }
        }
    }
}

/// Whether a label selector selects `labels` (kube's own matcher). A selector kube cannot read
/// (an unknown operator) selects nothing: a namespace is never let in by a typo.
pub fn selector_matches(
    selector: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
    labels: &std::collections::BTreeMap<String, String>,
) -> bool {
    use kube::core::{Selector, SelectorExt};
    Selector::try_from(selector.clone()).is_ok_and(|selector| selector.matches(labels))
}

/// The reporter of the operator's events.
pub fn reporter() -> Reporter {
    Reporter {
        controller: "adc-operator".into(),
        instance: std::env::var("POD_NAME").ok(),
    }
}

/// Whether `object` asks to leave its GCP resources behind when deleted.
pub fn abandons<K: ResourceExt>(object: &K) -> bool {
    object
        .annotations()
        .get("adc.dev/deletion-policy")
        .is_some_and(|p| p == "abandon")
}

/// `Kind/namespace/name`, as GcpCloud `status.abandoned` lists owners.
pub fn owner_key(owner: &Owner) -> String {
    format!("{}/{}/{}", owner.kind, owner.namespace, owner.name)
}

/// Records in the GcpCloud's status that `owner`'s resources were abandoned, so garbage
/// collection leaves them alone for good (the status lives in etcd, across restarts). A JSON
/// merge patch guarded by the resourceVersion, retried on conflict; the status applies of the
/// cloud's reconcile never own this list, so they never drop it.
pub async fn mark_abandoned(ctx: &Context, cloud: &str, owner: &Owner) -> Result<(), kube::Error> {
    use kube::api::{Api, Patch, PatchParams};
    let api: Api<crate::api::GcpCloud> = Api::all(ctx.client.clone());
    let key = owner_key(owner);
    for _ in 0..10 {
        let Some(current) = api.get_opt(cloud).await? else {
            return Ok(());
        };
        let mut list = current
            .status
            .as_ref()
            .map(|s| s.abandoned.clone())
            .unwrap_or_default();
        if list.contains(&key) {
            return Ok(());
        }
        list.push(key.clone());
        let patch = serde_json::json!({
            "metadata": {"resourceVersion": current.resource_version()},
            "status": {"abandoned": list},
        });
        match super::status::patch_status(
            &api,
            cloud,
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(status)) if status.code == 409 => continue,
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
    use std::collections::BTreeMap;

    #[test]
    fn selectors_match_labels_and_expressions_and_a_bad_one_matches_nothing() {
        let labels = BTreeMap::from([("team".to_string(), "a".to_string())]);
        let expression = |operator: &str, values: &[&str]| LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "team".into(),
                operator: operator.into(),
                values: Some(values.iter().map(|v| v.to_string()).collect()),
            }]),
            match_labels: None,
        };
        assert!(selector_matches(&LabelSelector::default(), &labels));
        let by_label = LabelSelector {
            match_labels: Some(labels.clone()),
            match_expressions: None,
        };
        assert!(selector_matches(&by_label, &labels));
        assert!(!selector_matches(&by_label, &BTreeMap::new()));
        assert!(selector_matches(&expression("In", &["a", "b"]), &labels));
        assert!(!selector_matches(&expression("NotIn", &["a"]), &labels));
        assert!(selector_matches(&expression("Exists", &[]), &labels));
        assert!(!selector_matches(&expression("DoesNotExist", &[]), &labels));
        assert!(!selector_matches(&expression("Bogus", &["a"]), &labels));
    }
}
