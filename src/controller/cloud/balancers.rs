//! ILB mode's cloud-wide pieces: one task per cloud keeps an instance group per engine that an
//! ILB VirtualService uses (made, holding its engine, removed once no backend service names
//! it) and the probe rule for Google's health checks, and reads every backend service's
//! health each instance poll interval (`getHealth`, batched), requeueing the objects whose
//! engines' health changed. The objects' own pieces (health check, backend services,
//! forwarding rules) are their reconciles' work (`plan::ilb`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use kube::runtime::reflector::ObjectRef;

use crate::api::{GcpCloudSpec, HealthState, VipMode, VirtualService};
use crate::controller::apply::{delete_of, waiting_to_retry};
use crate::controller::context::{CloudRuntime, Context, Triggers};
use crate::gcp::{Change, Collection, InventoryEvent, Lane, Mutation, Snapshot, Target};
use crate::plan::ilb;
use crate::plan::owner::Owner;
use crate::plan::resource::{last_segment, same_content};

/// The mode an object's VIP is carried in: its own `vipMode`, else the cloud's default.
pub fn vip_mode(object: &VirtualService, cloud: &GcpCloudSpec) -> VipMode {
    object.spec.vip_mode.unwrap_or(cloud.default_vip_mode)
}

/// What one backend service reports: each instance, as (zone, name), and its state.
pub type Report = BTreeMap<(String, String), HealthState>;

/// What the cloud's backend services last reported of their engines.
#[derive(Debug, Default)]
pub struct IlbHealth {
    /// By backend service name: each instance (zone, name) and its state.
    by_service: Mutex<BTreeMap<String, Report>>,
}

impl IlbHealth {
    /// What `service` last reported, by (zone, instance); empty before the first read.
    pub fn of(&self, service: &str) -> Report {
        match self.by_service.lock() {
            Ok(guard) => guard.get(service).cloned().unwrap_or_default(),
            Err(poisoned) => poisoned
                .into_inner()
                .get(service)
                .cloned()
                .unwrap_or_default(),
        }
    }

    /// Stores a read; returns the services whose report changed.
    fn store(&self, fresh: BTreeMap<String, Report>) -> Vec<String> {
        let mut guard = match self.by_service.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let changed = fresh
            .iter()
            .filter(|(name, report)| guard.get(*name) != Some(report))
            .map(|(name, _)| name.clone())
            .chain(guard.keys().filter(|n| !fresh.contains_key(*n)).cloned())
            .collect();
        *guard = fresh;
        changed
    }
}

/// (zone, instance) of an instance link.
fn zone_and_instance(link: &str) -> (String, String) {
    let mut parts = link.rsplit('/');
    let instance = parts.next().unwrap_or_default().to_string();
    let _ = parts.next();
    let zone = parts.next().unwrap_or_default().to_string();
    (zone, instance)
}

/// Starts the cloud's ILB task. It holds only a weak reference to the runtime: it ends when
/// the runtime is replaced or its engine shut down.
pub(super) fn run_balancers(ctx: &Context, runtime: &Arc<CloudRuntime>) {
    let triggers = ctx.triggers();
    let weak = Arc::downgrade(runtime);
    let mut events = runtime.engine.inventory().subscribe();
    let period =
        super::instances::instance_poll_period(&runtime.spec, runtime.engine.settings().time_scale);
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let read_health = tokio::select! {
                _ = ticks.tick() => true,
                event = events.recv() => match event {
                    Ok(InventoryEvent::Resource(target) | InventoryEvent::Completed(target)) if !matches!(target.collection,
                        Collection::InstanceGroups | Collection::BackendServices
                        | Collection::ForwardingRules | Collection::Firewalls) => continue,
                    Ok(InventoryEvent::Instance { .. }) => true,
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => false,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
            };
            let Some(runtime) = weak.upgrade() else {
                return;
            };
            if runtime.engine.is_shut_down() {
                return;
            }
            if !runtime.ready.load(std::sync::atomic::Ordering::Relaxed)
                || !runtime.engine.inventory().read(Snapshot::is_loaded)
            {
                continue;
            }
            pass(&runtime, &triggers);
            if read_health {
                read(&runtime, &triggers).await;
            }
        }
    });
}

/// The engines ILB objects of the cloud use that exist, and the ports their checks probe.
fn wanted(
    runtime: &CloudRuntime,
    triggers: &Triggers,
) -> (BTreeMap<Target, (String, String)>, BTreeSet<u16>, usize) {
    let view = &runtime.view;
    let mut groups = BTreeMap::new();
    let mut ports = BTreeSet::new();
    let mut objects = 0;
    // The candidates come from the fleet index: a cloud without ILB objects reads none.
    let candidates = triggers
        .index
        .ilb_candidates(&view.cloud, runtime.spec.default_vip_mode);
    if candidates.is_empty() {
        return (groups, ports, objects);
    }
    runtime.engine.inventory().read(|snapshot| {
        let objects_of = candidates.iter().filter_map(|(_, namespace, name)| {
            triggers
                .virtual_services
                .get(&ObjectRef::new(name).within(namespace))
        });
        for object in objects_of {
            if object.spec.cloud_ref != view.cloud
                || object.metadata.deletion_timestamp.is_some()
                || vip_mode(&object, &runtime.spec) != VipMode::Ilb
            {
                continue;
            }
            // Only once its reconcile has judged this generation, and not stalled: nothing is
            // made for an object its guard rails refuse.
            let status = object.status.as_ref();
            let judged = status.and_then(|s| s.observed_generation) == object.metadata.generation;
            if !judged || status.is_some_and(|s| crate::controller::claims::stalled(&s.conditions))
            {
                continue;
            }
            objects += 1;
            ports.insert(ilb::health_check_port(&object.spec));
            for engine in &object.spec.service_engines {
                if snapshot.instance(&engine.zone, &engine.name).is_some() {
                    groups.insert(
                        ilb::group_target(view, &engine.zone, &engine.name),
                        (engine.zone.clone(), engine.name.clone()),
                    );
                }
            }
        }
    });
    (groups, ports, objects)
}

/// One pass over the cloud's groups and probe rule: what is missing is made, what no object
/// wants and no backend service names goes.
fn pass(runtime: &CloudRuntime, triggers: &Triggers) {
    let engine = &runtime.engine;
    let view = &runtime.view;
    let (groups, ports, objects) = wanted(runtime, triggers);
    let prefix = ilb::name_prefix(view);
    let (held_groups, named_groups, held_any, probe_rule) = engine.inventory().read(|s| {
        let held: Vec<(Target, bool)> = s
            .balancers(Collection::InstanceGroups)
            .filter(|(t, _)| t.name.starts_with(&prefix))
            .map(|(t, _)| (t.clone(), s.group_ready(t)))
            .collect();
        // Groups a backend service of this cloud names: they cannot go yet (and the probe
        // rule stays while there is any). Other clouds of the project have their own groups.
        let ours = |body: &serde_json::Value| {
            body["description"]
                .as_str()
                .and_then(Owner::parse)
                .is_some_and(|o| o.cluster_id == view.cluster_id && o.cloud == view.cloud)
        };
        let named: BTreeSet<String> = s
            .balancers(Collection::BackendServices)
            .filter(|(_, body)| ours(body))
            .flat_map(|(_, body)| {
                body["backends"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|b| b["group"].as_str().map(|g| last_segment(g).to_string()))
                    .collect::<Vec<_>>()
            })
            .collect();
        let any = s.balancers(Collection::InstanceGroups).next().is_some()
            || s.balancers(Collection::BackendServices).next().is_some()
            || s.balancers(Collection::HealthChecks).next().is_some();
        let target = ilb::health_firewall_target(view);
        let rule = s.json_of(&target).map(|body| (target, body));
        (held, named, any, rule)
    });
    engine.list_balancers(objects > 0 || held_any);

    let mut work: Vec<(Mutation, Lane)> = Vec::new();
    for (target, (zone, name)) in &groups {
        match held_groups.iter().find(|(t, _)| t == target) {
            None => {
                // The insert and the engine's joining share the group's queue, in this order.
                work.push((
                    Mutation::insert(target.clone(), ilb::group_body(view, target)),
                    Lane::Bulk,
                ));
                work.push((join(view, target, zone, name), Lane::Bulk));
            }
            Some((_, false)) => work.push((join(view, target, zone, name), Lane::Bulk)),
            Some((_, true)) => {}
        }
    }
    for (target, _) in &held_groups {
        if !groups.contains_key(target) && !named_groups.contains(&target.name) {
            work.push((delete_of(engine, target), Lane::Bulk));
        }
    }
    match (ilb::health_firewall(view, &ports), probe_rule) {
        (Some(want), None) => work.push((Mutation::insert(want.target, want.body), Lane::Bulk)),
        (Some(want), Some((_, have))) if !same_content(&want.body, &have) => {
            let fields = serde_json::json!({
                "sourceRanges": want.body["sourceRanges"],
                "allowed": want.body["allowed"],
            });
            work.push((
                Mutation::patch(want.target.clone(), fields, Some(view.network.clone())),
                Lane::Bulk,
            ));
        }
        // Kept while a backend service of the cloud may still probe.
        (None, Some((target, _))) if named_groups.is_empty() => {
            work.push((delete_of(engine, &target), Lane::Bulk));
        }
        _ => {}
    }
    if !runtime.writes() {
        return;
    }
    let mut started = 0;
    for (mutation, lane) in work {
        if waiting_to_retry(engine, &mutation.target).is_none() && engine.begin(mutation, lane) {
            started += 1;
        }
    }
    if started > 0 {
        tracing::info!(cloud = %view.cloud, started, groups = groups.len(), "ILB groups and probe rule: changes handed to the engine");
    }
}

/// An engine joining its group.
fn join(view: &crate::plan::CloudView, group: &Target, zone: &str, name: &str) -> Mutation {
    Mutation {
        target: group.clone(),
        change: Change::AddInstances(vec![ilb::engine_link(view, zone, name)]),
        network: None,
    }
}

/// Reads the health of every backend service of the cloud's objects, stores it, and requeues
/// the objects whose services' reports changed.
async fn read(runtime: &CloudRuntime, triggers: &Triggers) {
    let view = &runtime.view;
    let cluster = &view.cluster_id;
    let services: Vec<(Target, Owner, Vec<String>)> = runtime.engine.inventory().read(|s| {
        s.balancers(Collection::BackendServices)
            .filter(|(t, _)| t.name.starts_with(&view.resource_prefix))
            .filter_map(|(t, body)| {
                let owner = Owner::parse(body["description"].as_str()?)
                    .filter(|o| &o.cluster_id == cluster && o.cloud == view.cloud)?;
                let groups = body["backends"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|b| b["group"].as_str().map(str::to_string))
                    .collect();
                Some((t.clone(), owner, groups))
            })
            .collect()
    });
    let asked: Vec<(Target, String)> = services
        .iter()
        .flat_map(|(t, _, groups)| groups.iter().map(|g| (t.clone(), g.clone())))
        .collect();
    if asked.is_empty() && runtime.ilb.store(BTreeMap::new()).is_empty() {
        return;
    }
    let answers = runtime.engine.backend_health(&asked).await;
    let mut fresh: BTreeMap<String, Report> = services
        .iter()
        .map(|(t, _, _)| (t.name.clone(), BTreeMap::new()))
        .collect();
    for ((service, group), answer) in asked.iter().zip(answers) {
        match answer {
            Ok(instances) => {
                let report = fresh.entry(service.name.clone()).or_default();
                for instance in instances {
                    report.insert(zone_and_instance(&instance.instance), instance.state);
                }
            }
            Err(crate::gcp::GcpError::Shutdown) => return,
            Err(err) => {
                // The last report stands for this group: a failed read is not a failed engine.
                tracing::debug!(cloud = %view.cloud, service = %service.name, %group, error = %err, "getHealth failed");
                let last = runtime.ilb.of(&service.name);
                fresh.entry(service.name.clone()).or_default().extend(last);
            }
        }
    }
    for changed in runtime.ilb.store(fresh) {
        if let Some((_, owner, _)) = services.iter().find(|(t, _, _)| t.name == changed)
            && owner.kind == crate::plan::virtualservice::KIND
        {
            triggers.requeue_virtual_service(ObjectRef::new(&owner.name).within(&owner.namespace));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_links_give_zone_and_name() {
        assert_eq!(
            zone_and_instance(
                "https://www.googleapis.com/compute/v1/projects/p/zones/us-central1-a/instances/se-1"
            ),
            ("us-central1-a".to_string(), "se-1".to_string())
        );
    }

    #[test]
    fn a_stored_read_names_the_services_whose_report_changed() {
        let health = IlbHealth::default();
        let report = |state| BTreeMap::from([(("z".to_string(), "se-1".to_string()), state)]);
        let first = BTreeMap::from([("bs".to_string(), report(HealthState::Healthy))]);
        assert_eq!(health.store(first.clone()), ["bs"]);
        assert!(health.store(first).is_empty(), "the same report again");
        let stopped = BTreeMap::from([("bs".to_string(), report(HealthState::Unhealthy))]);
        assert_eq!(health.store(stopped), ["bs"]);
        assert_eq!(
            health.of("bs")[&("z".to_string(), "se-1".to_string())],
            HealthState::Unhealthy
        );
        assert_eq!(health.store(BTreeMap::new()), ["bs"], "a service that went");
        assert!(health.of("bs").is_empty());
    }
}
