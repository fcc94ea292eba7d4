//! From inventory changes to reconciles: which objects a changed resource or instance concerns
//! (through an index of the objects by the hash their GCP names carry).

use std::sync::Arc;
use std::time::Duration;

use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};

use crate::controller::context::{CloudRuntime, Context};
use crate::gcp::InventoryEvent;
use crate::plan::owner::Owner;

/// The objects of the stores by the object hash their GCP names carry, so the owner of a
/// resource that vanished is one lookup away, not a hash of every object per event.
#[derive(Default)]
pub(super) struct ObjectIndex {
    virtual_services: std::collections::HashMap<String, ObjectRef<crate::api::VirtualService>>,
    vpc_routes: std::collections::HashMap<String, ObjectRef<crate::api::VpcRoute>>,
    built: Option<std::time::Instant>,
}

impl ObjectIndex {
    /// Rebuilds from the stores when `hash` is unknown and the index may be out of date (the
    /// stores changed size, or it is over a second old): names of objects already deleted
    /// miss for good and must not rebuild it on every event.
    fn refresh_if_missing(
        &mut self,
        hash: &str,
        cluster: &str,
        virtual_services: &Store<crate::api::VirtualService>,
        vpc_routes: &Store<crate::api::VpcRoute>,
    ) {
        if hash.is_empty()
            || self.virtual_services.contains_key(hash)
            || self.vpc_routes.contains_key(hash)
        {
            return;
        }
        let vs = virtual_services.state();
        let vr = vpc_routes.state();
        let fresh = self
            .built
            .is_some_and(|at| at.elapsed() < Duration::from_secs(1))
            && vs.len() == self.virtual_services.len()
            && vr.len() == self.vpc_routes.len();
        if fresh {
            return;
        }
        let key = |kind: &str, namespace: Option<String>, name: String| {
            crate::plan::names::object_hash(cluster, kind, &namespace.unwrap_or_default(), &name)
        };
        self.virtual_services = vs
            .iter()
            .map(|o| {
                let hash = key(
                    crate::plan::virtualservice::KIND,
                    o.namespace(),
                    o.name_any(),
                );
                (hash, ObjectRef::from_obj(&**o))
            })
            .collect();
        self.vpc_routes = vr
            .iter()
            .map(|o| {
                let hash = key(crate::plan::vpcroute::KIND, o.namespace(), o.name_any());
                (hash, ObjectRef::from_obj(&**o))
            })
            .collect();
        self.built = Some(std::time::Instant::now());
    }
}

/// Turns the inventory's changes into reconciles of the objects they concern.
pub(super) fn forward_inventory_events(ctx: &Context, runtime: &Arc<CloudRuntime>) {
    let mut events = runtime.engine.inventory().subscribe();
    let weak = Arc::downgrade(runtime);
    let triggers = ctx.triggers();
    let cluster = ctx.settings.cluster_id.clone();
    tokio::spawn(async move {
        let mut index = ObjectIndex::default();
        loop {
            let event = match events.recv().await {
                Ok(event) => event,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                    // Events were lost: look at every object of the cloud again rather than
                    // leave one waiting for a change it will not hear about.
                    let Some(runtime) = weak.upgrade() else {
                        return;
                    };
                    let cloud = &runtime.view.cloud;
                    tracing::warn!(%cloud, missed, "inventory events overflowed; requeueing every object of the cloud");
                    triggers.requeue_users(cloud);
                    continue;
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            };
            let Some(runtime) = weak.upgrade() else {
                return;
            };
            let completed = matches!(event, InventoryEvent::Completed(_));
            match event {
                InventoryEvent::Instance { zone, name, .. } => {
                    withdraw_at_once(&runtime, &triggers.virtual_services, &cluster, &zone, &name);
                    triggers.requeue_instance_users(&zone, &name);
                }
                InventoryEvent::Resource(target) | InventoryEvent::Completed(target) => {
                    if target.collection == crate::plan::resource::Collection::Routes {
                        withdraw_if_its_engine_stopped(
                            &runtime,
                            &triggers.virtual_services,
                            &cluster,
                            &target.name,
                        );
                    }
                    // The owner of a resource that exists says itself; one that vanished is
                    // found among the objects that reference this cloud by their planned names.
                    let description = runtime
                        .engine
                        .inventory()
                        .read(|s| s.description_of(&target).map(str::to_string));
                    let owner = description.as_deref().map(Owner::parse);
                    // Of an object's own work, only the last completion requeues it: each one
                    // before would be a reconcile that finds it half done (at 10,000 objects,
                    // most of a rollout's reconciles). Failures, retries and drift always do.
                    if completed
                        && runtime.engine.has_global_work(&owner_prefix(
                            &runtime.view.resource_prefix,
                            owner.as_ref().and_then(Option::as_ref),
                            &target.name,
                        ))
                    {
                        continue;
                    }
                    match owner {
                        Some(Some(owner)) => triggers.requeue_owner(&owner),
                        Some(None) => {}
                        None => {
                            // Gone: its owner is found by the object hash in its name.
                            let hash = object_hash(&runtime.view.resource_prefix, &target.name);
                            index.refresh_if_missing(
                                hash,
                                &cluster,
                                &triggers.virtual_services,
                                &triggers.vpc_routes,
                            );
                            if let Some(object) = index.virtual_services.get(hash) {
                                triggers.requeue_virtual_service(object.clone());
                            }
                            if let Some(object) = index.vpc_routes.get(hash) {
                                triggers.requeue_vpc_route(object.clone());
                            }
                        }
                    }
                }
                InventoryEvent::Refreshed => {}
            }
        }
    });
}

/// The name prefix of the object a resource belongs to: its owner's, or (a resource that
/// vanished) the one its own name carries.
fn owner_prefix(resource_prefix: &str, owner: Option<&Owner>, name: &str) -> String {
    match owner {
        Some(owner) => owner.name_prefix(resource_prefix),
        None => format!("{resource_prefix}{}-", object_hash(resource_prefix, name)),
    }
}

/// The object hash in a resource's name (`{prefix}{hash}-{suffix}`); empty for a name of
/// another form.
fn object_hash<'a>(resource_prefix: &str, name: &'a str) -> &'a str {
    name.strip_prefix(resource_prefix)
        .and_then(|rest| rest.split('-').next())
        .unwrap_or_default()
}

/// When the instance `zone/name` is not RUNNING, deletes at once (urgent lane) every route of a
/// VirtualService that sends a VIP to it, without waiting for the objects' reconciles: how fast
/// a VIP moves off a stopped engine does not depend on how many reconciles are queued
/// (`plan::failover` says which routes may go). Nothing is written while the cloud's policy, or
/// the object's, holds its writes.
fn withdraw_at_once(
    runtime: &CloudRuntime,
    virtual_services: &Store<crate::api::VirtualService>,
    cluster: &str,
    zone: &str,
    name: &str,
) {
    withdraw(runtime, virtual_services, cluster, zone, name, None);
}

/// When the route `route` has just appeared (an insert sent before its engine stopped, finished
/// since) and sends a VIP to an instance the inventory holds as not RUNNING, withdraws it at
/// once as [`withdraw_at_once`] did the routes that existed at the stop: the object's own
/// reconcile may be far behind in a rollout's backlog. An instance the inventory does not hold
/// is not taken for stopped.
fn withdraw_if_its_engine_stopped(
    runtime: &CloudRuntime,
    virtual_services: &Store<crate::api::VirtualService>,
    cluster: &str,
    route: &str,
) {
    let stopped = runtime.engine.inventory().read(|snapshot| {
        let link = snapshot.routes().get(route)?.next_hop_instance.as_deref()?;
        let (zone, instance) = zone_and_instance(link)?;
        let running = snapshot.instance(zone, instance)?.is_running();
        (!running).then(|| (zone.to_string(), instance.to_string()))
    });
    if let Some((zone, instance)) = stopped {
        withdraw(
            runtime,
            virtual_services,
            cluster,
            &zone,
            &instance,
            Some(route),
        );
    }
}

/// `(zone, instance)` of an instance reference (`…/zones/Z/instances/N`, full URL or not).
fn zone_and_instance(link: &str) -> Option<(&str, &str)> {
    let path = crate::plan::resource::normalize_reference(link);
    let rest = path.strip_prefix("zones/")?;
    let (zone, rest) = rest.split_once('/')?;
    let instance = rest.strip_prefix("instances/")?;
    (!zone.is_empty() && !instance.is_empty() && !instance.contains('/'))
        .then_some((zone, instance))
}

/// Deletes on the urgent lane the withdrawable routes to the stopped `zone/name` (only `only`,
/// when given).
fn withdraw(
    runtime: &CloudRuntime,
    virtual_services: &Store<crate::api::VirtualService>,
    cluster: &str,
    zone: &str,
    name: &str,
    only: Option<&str>,
) {
    if !runtime.writes() {
        return;
    }
    let engine = &runtime.engine;
    let cloud = &runtime.view.cloud;
    let cloud_policy = runtime.policy();
    let held = |owner: &Owner| {
        let object =
            ObjectRef::<crate::api::VirtualService>::new(&owner.name).within(&owner.namespace);
        let annotation = virtual_services.get(&object).and_then(|vs| {
            vs.annotations()
                .get(crate::api::policy::POLICY_ANNOTATION)
                .cloned()
        });
        crate::plan::policy::effective(cloud_policy, annotation.as_deref())
            != Ok(crate::api::ManagementPolicy::Full)
    };
    let gone = engine.inventory().read(|snapshot| {
        if snapshot
            .instance(zone, name)
            .is_some_and(|i| i.is_running())
        {
            return Vec::new();
        }
        // One route is looked up, not found by a scan of the fleet's routes.
        use std::ops::Bound::{Included, Unbounded};
        let bounds = only.map_or((Unbounded, Unbounded), |route| {
            (Included(route), Included(route))
        });
        let routes = snapshot.routes().range::<str, _>(bounds).map(|(_, r)| {
            crate::plan::failover::RouteView {
                name: &r.name,
                description: &r.description,
                next_hop_instance: r.next_hop_instance.as_deref(),
            }
        });
        crate::plan::failover::withdrawable(routes, zone, name, cluster, cloud, held)
    });
    if gone.is_empty() {
        return;
    }
    match only {
        None => {
            tracing::info!(%cloud, zone, instance = name, routes = gone.len(), "engine not RUNNING: withdrawing its VIP routes at once");
        }
        Some(route) => {
            tracing::info!(%cloud, zone, instance = name, route, "a route to an engine not RUNNING appeared: withdrawing it at once");
        }
    }
    for route in gone {
        let target = crate::gcp::Target::route(route);
        let delete = crate::controller::apply::delete_of(engine, &target);
        engine.begin(delete, crate::gcp::Lane::Urgent);
    }
}

#[cfg(test)]
mod tests {
    use super::zone_and_instance;

    #[test]
    fn an_instance_reference_gives_its_zone_and_name() {
        let full =
            "https://www.googleapis.com/compute/v1/projects/p/zones/us-central1-a/instances/se-1";
        assert_eq!(zone_and_instance(full), Some(("us-central1-a", "se-1")));
        assert_eq!(
            zone_and_instance("projects/p/zones/z/instances/se-2"),
            Some(("z", "se-2"))
        );
        assert_eq!(
            zone_and_instance("zones/z/instances/se-3"),
            Some(("z", "se-3"))
        );
        for bad in [
            "projects/p/global/networks/default",
            "zones/z/instances/",
            "zones//instances/se-1",
            "zones/z/instanceGroups/g",
            "zones/z/instances/se-1/extra",
        ] {
            assert_eq!(zone_and_instance(bad), None, "{bad}");
        }
    }
}
