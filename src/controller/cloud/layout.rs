//! The shared layout of a cloud's VIP pools: one task per cloud keeps the cloud's aggregated
//! routes and shared firewall rules (`plan::shared`) in step with its pool VIPs and the
//! engines' state, and requeues the VirtualServices whose carriage changed.
//!
//! A pass plans the layout from every pool member (the VirtualServices holding a pool address)
//! and the inventory, then:
//! - withdraws at once, on the urgent lane, every shared route to an engine that is not
//!   RUNNING: the remaining routes still give every VIP exactly its remaining engines, so a
//!   failover never waits for a re-layout (plan::shared's property test);
//! - inserts what the new layout adds, on the bulk lane, once the members have been still for
//!   two seconds (or a change has waited thirty) and no insert of an earlier pass is still
//!   pending (passes follow the operations, not every reconcile), routes of the
//!   longest missing prefix length first (`plan::shared::next_inserts`): a wider route never
//!   reaches a VIP before the narrower route the layout gives it exists;
//! - deletes a resource of the old layout only once every pool VIP it covers is carried
//!   exactly by resources of the new layout that exist (make before break, resource by
//!   resource, so a rollout that keeps adding VIPs still cleans up as it goes).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::Ipv4Net;
use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};

use crate::controller::apply::{delete_of as delete, waiting_to_retry};
use crate::controller::claims::stalled;
use crate::controller::context::{CloudRuntime, Context, Triggers};
use crate::controller::pools::{Membership, SharedView, key};
use crate::controller::status::ready_for_generation;
use crate::gcp::{Collection, InventoryEvent, Lane, Mutation, Snapshot, Target};
use crate::plan::resource::{last_segment, same_content};
use crate::plan::shared::{self, Member, Rule};
use crate::plan::virtualservice::{Hop, Opening, hops, opening};
use crate::plan::{DesiredResource, EngineHealth};

/// How long a pass waits for more changes to arrive before it plans (in GCP time).
const COALESCE: Duration = Duration::from_millis(100);
/// A pass runs at least this often, whatever happens.
const IDLE_PASS: Duration = Duration::from_secs(30);

/// Starts the layout task of a cloud. It holds only a weak reference to the runtime: it ends
/// when the runtime is replaced or its engine shut down.
pub(super) fn run_layout(ctx: &Context, runtime: &Arc<CloudRuntime>) {
    let triggers = ctx.triggers();
    let weak = Arc::downgrade(runtime);
    let wake = Arc::clone(&runtime.pools.wake);
    let mut events = runtime.engine.inventory().subscribe();
    let prefix = shared::name_prefix(&runtime.view);
    let scale = runtime.engine.settings().time_scale.clamp(0.001, 1.0);
    tokio::spawn(async move {
        let mut state = LayoutState::default();
        let mut again = IDLE_PASS.mul_f64(scale);
        loop {
            tokio::select! {
                () = wake.notified() => {}
                event = events.recv() => match event {
                    Ok(InventoryEvent::Resource(target) | InventoryEvent::Completed(target))
                        if !target.name.starts_with(&prefix) => continue,
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
                () = tokio::time::sleep(again) => {}
            }
            tokio::time::sleep(COALESCE.mul_f64(scale)).await;
            while events.try_recv().is_ok() {}
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
            again = pass(&runtime, &triggers, &mut state)
                .unwrap_or(IDLE_PASS)
                .mul_f64(scale);
        }
    });
}

/// What a cloud's layout task remembers between passes.
#[derive(Debug, Default)]
pub(crate) struct LayoutState {
    /// Whether each member was carried exactly at the last pass, and whether its status said
    /// so then (by namespace/name).
    reported: std::collections::HashMap<String, (bool, bool)>,
    /// A digest of the members (VIPs, routes, openings) at the last pass, and when it changed.
    digest: u64,
    changed_at: Option<std::time::Instant>,
    /// The first change not yet made into the layout.
    unmade_since: Option<std::time::Instant>,
}

/// A layout change waits until the members have been still this long (GCP time)…
const QUIET: Duration = Duration::from_secs(2);
/// …or a change has waited this long: a rollout that keeps adding VIPs is laid out in a few
/// rounds, not one per reconcile (each round rewrites the rules whose VIPs changed).
const MAX_HOLD: Duration = Duration::from_secs(30);

/// A pool member as the pass sees it.
struct Seen {
    object: ObjectRef<crate::api::VirtualService>,
    member: Member,
    /// Ready for its generation (the status says the VIP is carried).
    ready: bool,
}

/// Plans the shared layout once and hands its changes to the engine; when a change is held
/// back (the members are still moving), how soon to look again (GCP time).
pub(crate) fn pass(
    runtime: &CloudRuntime,
    triggers: &Triggers,
    state: &mut LayoutState,
) -> Option<Duration> {
    let scale = runtime.engine.settings().time_scale.clamp(0.001, 1.0);
    let reported = &mut state.reported;
    let engine = &runtime.engine;
    let view = &runtime.view;
    let cloud = &view.cloud;
    let Gathered {
        seen,
        others,
        inventory_view,
        owned,
        down,
    } = gather(runtime, &triggers.virtual_services);
    let members: Vec<Member> = seen.iter().map(|s| s.member.clone()).collect();
    let digest = {
        use std::hash::{Hash, Hasher};
        let mut sorted: Vec<&Member> = members.iter().collect();
        sorted.sort_unstable_by_key(|m| m.vip);
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        for m in sorted {
            (m.vip, &m.hops, &m.opening).hash(&mut hasher);
        }
        hasher.finish()
    };
    let now = std::time::Instant::now();
    if digest != state.digest {
        state.digest = digest;
        state.changed_at = Some(now);
        state.unmade_since.get_or_insert(now);
    }
    let layout = shared::layout(view, &runtime.pools.blocks(), &members);

    // What exists and is desired: the new layout as far as it is made.
    let desired_names: BTreeSet<&str> = layout
        .desired
        .iter()
        .map(|d| d.target.name.as_str())
        .collect();
    let made = SharedView::new(
        inventory_view
            .routes
            .iter()
            .filter(|(_, _, name)| desired_names.contains(name.as_str()))
            .cloned()
            .collect(),
        inventory_view
            .rules
            .iter()
            .filter(|(_, name)| desired_names.contains(name.as_str()))
            .cloned()
            .collect(),
    );
    // Each member once, sorted by VIP: carried exactly by what exists of the new layout?
    let mut by_new: Vec<(Ipv4Addr, bool)> = members
        .iter()
        .map(|m| (m.vip, made.carries(m.vip, &m.hops, &m.opening).exact))
        .collect();
    by_new.sort_unstable();

    let mut work: Vec<(Mutation, Lane)> = Vec::new();
    // 1. Routes to engines that are down go at once.
    let withdrawals: Vec<Target> = owned
        .iter()
        .filter(|(target, body)| {
            target.collection == Collection::Routes
                && body["nextHopInstance"]
                    .as_str()
                    .is_some_and(|hop| down.contains(hop))
        })
        .map(|(target, _)| target.clone())
        .collect();
    for target in &withdrawals {
        work.push((delete(engine, target), Lane::Urgent));
    }
    // 2. The new layout's resources, once the last pass's are made.
    let shared_prefix = shared::name_prefix(view);
    let pending = [Collection::Routes, Collection::Firewalls]
        .into_iter()
        .flat_map(|c| engine.pending_inserts(c, &shared_prefix))
        .collect::<Vec<_>>();
    let still = state
        .changed_at
        .is_none_or(|at| now.duration_since(at) >= QUIET.mul_f64(scale));
    let held_long = state
        .unmade_since
        .is_some_and(|at| now.duration_since(at) >= MAX_HOLD.mul_f64(scale));
    let mut look_again = None;
    if pending.is_empty() && !(still || held_long) {
        // The members are still moving: lay them out together a moment later.
        let quiet_at = state.changed_at.map_or(now, |at| at + QUIET.mul_f64(scale));
        look_again = Some(quiet_at.saturating_duration_since(now).div_f64(scale));
    } else if pending.is_empty() {
        state.unmade_since = None;
        let mut missing = Vec::new();
        for resource in &layout.desired {
            match owned.iter().find(|(t, _)| t == &resource.target) {
                None => missing.push(resource),
                Some((_, have)) if same_content(&resource.body, have) => {}
                // Changed behind the operator's back: put back as planned.
                Some(_) => {
                    work.push((delete(engine, &resource.target), Lane::Urgent));
                    work.push((insert(resource), Lane::Urgent));
                }
            }
        }
        // Longest prefixes first: a wider route never reaches VIPs before the narrower routes
        // the layout puts under it exist.
        for resource in shared::next_inserts(&missing) {
            work.push((insert(resource), Lane::Bulk));
        }
    } else if !withdrawals.is_empty() {
        // Inserts of an earlier pass that the layout no longer wants (a route to the engine
        // that just stopped): a delete cancels an unsent insert or follows a running one.
        for target in pending
            .iter()
            .filter(|t| !desired_names.contains(t.name.as_str()))
        {
            work.push((delete(engine, target), Lane::Urgent));
        }
    }
    // 3. The old layout's resources, each once everything it covers is carried by the new.
    for (target, body) in &owned {
        if desired_names.contains(target.name.as_str()) || withdrawals.contains(target) {
            continue;
        }
        let ranges: Vec<Ipv4Net> = match target.collection {
            Collection::Routes => body["destRange"]
                .as_str()
                .and_then(|r| r.parse().ok())
                .into_iter()
                .collect(),
            _ => body["destinationRanges"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| r.as_str()?.parse().ok())
                .collect(),
        };
        let covers = |vip: Ipv4Addr| ranges.iter().any(|n| n.contains(&vip));
        // The members inside each range, found in the sorted list.
        let all_carried = ranges.iter().all(|net| {
            let start = by_new.partition_point(|(vip, _)| *vip < net.network());
            by_new[start..]
                .iter()
                .take_while(|(vip, _)| *vip <= net.broadcast())
                .all(|(_, carried)| *carried)
        });
        let leaving: Vec<Ipv4Addr> = others.iter().copied().filter(|v| covers(*v)).collect();
        if all_carried
            && (leaving.is_empty()
                || engine.inventory().read(|s| {
                    leaving
                        .iter()
                        .all(|v| carried_elsewhere(s, target, *v, &shared_prefix))
                }))
        {
            work.push((delete(engine, target), Lane::Bulk));
        }
    }
    let failed = layout
        .desired
        .iter()
        .filter(|d| !owned.iter().any(|(t, _)| t == &d.target))
        .find_map(|d| engine.failure(&d.target).map(|f| f.error));
    *match runtime.pools.error.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    } = failed;
    // Under Observe or Paused the cloud's shared layout is planned (the forecast, what carries
    // whom) and never written.
    let work = if runtime.writes() { work } else { Vec::new() };
    let mut started = 0usize;
    for (mutation, lane) in work {
        if waiting_to_retry(engine, &mutation.target).is_some() {
            continue;
        }
        if engine.begin(mutation, lane) {
            started += 1;
        }
    }
    if started > 0 {
        tracing::info!(%cloud, started, withdrawals = withdrawals.len(), members = members.len(), routes = layout.table.len(), "shared layout: changes handed to the engine");
    }

    // Released addresses no rule opens any more may be handed out again.
    let open: Vec<Ipv4Net> = inventory_view
        .rules
        .iter()
        .flat_map(|(r, _)| r.ranges.iter().copied())
        .collect();
    runtime
        .pools
        .settle(|address| open.iter().any(|n| n.contains(&address)));
    runtime
        .pools
        .set_forecast(forecast(runtime, triggers, &layout));
    let inventory_view = Arc::new(inventory_view);
    runtime.pools.set_view(Arc::clone(&inventory_view));
    // The objects whose carriage does not match their status are reconciled again (after the
    // view is published: they read it), once for each change of either: a status written
    // after the last pass from an older view (a rebuilt runtime) is as stale as a new carriage.
    let mut current = std::collections::HashMap::with_capacity(seen.len());
    for s in &seen {
        let carried = inventory_view
            .carries(s.member.vip, &s.member.hops, &s.member.opening)
            .exact;
        let object_key = key(
            s.object.namespace.as_deref().unwrap_or_default(),
            &s.object.name,
        );
        let seen_now = (carried, s.ready);
        if carried != s.ready && reported.get(&object_key) != Some(&seen_now) {
            triggers.requeue_virtual_service(s.object.clone());
        }
        current.insert(object_key, seen_now);
    }
    *reported = current;
    look_again
}

/// What a layout pass starts from: the members, the VIPs leaving the pools, the shared
/// resources as a view and as bodies, and the hops of owned routes whose engine is down.
struct Gathered {
    seen: Vec<Seen>,
    others: Vec<Ipv4Addr>,
    inventory_view: SharedView,
    owned: Vec<(Target, serde_json::Value)>,
    down: BTreeSet<String>,
}

fn gather(runtime: &CloudRuntime, store: &Store<crate::api::VirtualService>) -> Gathered {
    let view = &runtime.view;
    let cloud = &view.cloud;
    let owner = shared::owner(view);
    runtime.engine.inventory().read(|snapshot| {
        let health = |zone: &str, name: &str| match snapshot.instance(zone, name) {
            Some(instance) if instance.is_running() => EngineHealth::Running,
            Some(_) => EngineHealth::Down,
            None => EngineHealth::Missing,
        };
        let mut seen = Vec::new();
        let mut others = Vec::new();
        for object in store.state() {
            if object.spec.cloud_ref != *cloud || object.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let Membership::Pool { cidr, .. } = runtime.pools.membership(&object.spec) else {
                // A VIP leaving the pools (a pool removed): the shared resources keep carrying
                // it until its own do.
                if let Some(vip) = object
                    .status
                    .as_ref()
                    .and_then(|s| s.vip.as_deref())
                    .and_then(|v| v.parse::<Ipv4Addr>().ok())
                {
                    others.push(vip);
                }
                continue;
            };
            let object_key = key(&object.namespace().unwrap_or_default(), &object.name_any());
            let Some(vip) = runtime
                .pools
                .address_of(cloud, store, &object_key)
                .filter(|ip| cidr.contains(ip))
            else {
                continue;
            };
            let ready = ready_for_generation(
                object.status.as_ref().map(|s| s.conditions.as_slice()),
                object.metadata.generation,
            ) && !stalled(
                object
                    .status
                    .as_ref()
                    .map(|s| s.conditions.as_slice())
                    .unwrap_or_default(),
            );
            seen.push(Seen {
                object: ObjectRef::from_obj(&*object),
                member: Member {
                    vip,
                    hops: hops(&object.spec, health).into_iter().collect(),
                    opening: opening(&object.spec),
                },
                ready,
            });
        }
        let owned = snapshot.owned_by(&owner, &view.resource_prefix);
        let down: BTreeSet<String> = owned
            .iter()
            .filter_map(|(_, body)| body["nextHopInstance"].as_str())
            .filter(|hop| {
                let (zone, name) = zone_and_name(hop);
                health(zone, name) != EngineHealth::Running
            })
            .map(str::to_string)
            .collect();
        Gathered {
            seen,
            others,
            inventory_view: shared_view(snapshot, &owner, &view.resource_prefix),
            owned,
            down,
        }
    })
}

/// The shared layout's end state, for `adc-operator plan`: what the cloud's pools want now
/// and what of its shared resources exists (no hold-down, nothing handed to the engine).
pub(crate) fn planned(
    runtime: &CloudRuntime,
    store: &Store<crate::api::VirtualService>,
) -> (Vec<DesiredResource>, Vec<(Target, serde_json::Value)>) {
    let gathered = gather(runtime, store);
    let members: Vec<Member> = gathered.seen.into_iter().map(|s| s.member).collect();
    let layout = shared::layout(&runtime.view, &runtime.pools.blocks(), &members);
    (layout.desired, gathered.owned)
}

/// What the cloud's objects need of the resource quotas: the shared layout plus every
/// object's own resources.
fn forecast(
    runtime: &CloudRuntime,
    triggers: &Triggers,
    layout: &shared::Layout,
) -> crate::controller::pools::Forecast {
    let cloud = &runtime.view.cloud;
    let shared_routes = layout.table.len();
    let shared_rules = layout
        .desired
        .iter()
        .filter(|d| d.target.collection == Collection::Firewalls)
        .count();
    let (mut routes, mut firewalls, mut external) = (shared_routes, shared_rules, 0usize);
    for object in triggers.virtual_services.state() {
        if object.spec.cloud_ref != *cloud {
            continue;
        }
        if runtime.pools.membership(&object.spec) != Membership::None {
            continue;
        }
        routes += object.spec.service_engines.len();
        firewalls += 1;
        if object
            .spec
            .vip
            .allocate
            .as_ref()
            .and_then(|a| a.r#type)
            .is_some_and(|t| t == crate::api::AllocationType::External)
        {
            external += 1;
        }
    }
    routes += triggers
        .vpc_routes
        .state()
        .iter()
        .filter(|r| r.spec.cloud_ref == *cloud)
        .count();
    vec![
        ("ROUTES".to_string(), routes as f64),
        ("FIREWALLS".to_string(), firewalls as f64),
        ("STATIC_ADDRESSES".to_string(), external as f64),
    ]
}

/// Whether `vip`, leaving the pools, is carried by something other than the shared layout
/// (names starting with `shared_prefix`): its own /32 route, or for a rule another rule that
/// opens it. Another shared resource does not count: they all go.
fn carried_elsewhere(
    snapshot: &Snapshot,
    target: &Target,
    vip: Ipv4Addr,
    shared_prefix: &str,
) -> bool {
    match target.collection {
        Collection::Routes => {
            let own = format!("{vip}/32");
            snapshot
                .routes()
                .values()
                .any(|r| r.dest_range == own && !r.name.starts_with(shared_prefix))
        }
        _ => snapshot.firewalls().iter().any(|(name, f)| {
            !name.starts_with(shared_prefix)
                && f.destination_ranges
                    .iter()
                    .any(|r| r.parse::<Ipv4Net>().is_ok_and(|n| n.contains(&vip)))
        }),
    }
}

fn insert(resource: &DesiredResource) -> Mutation {
    Mutation::insert(resource.target.clone(), resource.body.clone())
}

/// `zone` and instance name of a `…/zones/Z/instances/I` link.
fn zone_and_name(link: &str) -> (&str, &str) {
    let name = last_segment(link);
    let zone = link
        .rsplit_once("/instances/")
        .map(|(head, _)| last_segment(head))
        .unwrap_or_default();
    (zone, name)
}

/// The cloud's shared routes and rules as the inventory holds them.
pub(crate) fn shared_view(
    snapshot: &Snapshot,
    owner: &crate::plan::owner::Owner,
    resource_prefix: &str,
) -> SharedView {
    let (mut routes, mut rules) = (Vec::new(), Vec::new());
    for (target, body) in snapshot.owned_by(owner, resource_prefix) {
        match target.collection {
            Collection::Routes => {
                let (Some(range), Some(hop)) = (
                    body["destRange"]
                        .as_str()
                        .and_then(|r| r.parse::<Ipv4Net>().ok()),
                    body["nextHopInstance"].as_str(),
                ) else {
                    continue;
                };
                let (zone, instance) = zone_and_name(hop);
                routes.push((
                    range,
                    Hop {
                        zone: zone.to_string(),
                        instance: instance.to_string(),
                        priority: body["priority"].as_u64().unwrap_or(1000) as u32,
                    },
                    target.name,
                ));
            }
            Collection::Firewalls => {
                let strings = |field: &str| -> Vec<String> {
                    body[field]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(|v| v.as_str().map(str::to_string))
                                .collect()
                        })
                        .unwrap_or_default()
                };
                let allowed = body["allowed"]
                    .as_array()
                    .map(|entries| {
                        entries
                            .iter()
                            .map(|e| {
                                (
                                    e["IPProtocol"].as_str().unwrap_or_default().to_string(),
                                    e["ports"]
                                        .as_array()
                                        .map(|p| {
                                            p.iter()
                                                .filter_map(|v| v.as_str().map(str::to_string))
                                                .collect()
                                        })
                                        .unwrap_or_default(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                rules.push((
                    Rule {
                        opening: Opening {
                            allowed,
                            sources: strings("sourceRanges"),
                        },
                        ranges: strings("destinationRanges")
                            .iter()
                            .filter_map(|r| r.parse().ok())
                            .collect(),
                    },
                    target.name,
                ));
            }
            _ => {}
        }
    }
    SharedView::new(routes, rules)
}
