//! What exists in GCP for one project: the operator's routes, firewall rules, addresses,
//! forwarding rules and target instances (by its name prefix), and the instances routes point
//! to. Loaded by paged list calls (`refresh.rs`) and kept current from completed operations in
//! between, so reconciles never GET one object at a time. Instance status is also re-read on its
//! own, more often than the full load, so that a stopped service engine is noticed quickly. A
//! data store: reconciles ask it questions (`owned_by`, `network_of`, `subnets`…) and never
//! index its maps.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::broadcast;

use super::types::{
    Address, Firewall, ForwardingRule, Instance, Route, Subnetwork, TargetInstance,
};
use crate::plan::owner::Owner;
use crate::plan::resource::{Change, Collection, Mutation, Target, last_segment};

/// Resources keyed by (location, name); location is empty for global ones.
pub type ByLocation<T> = BTreeMap<(String, String), T>;

/// One consistent view of the project.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub(crate) routes: BTreeMap<String, Arc<Route>>,
    pub(crate) firewalls: BTreeMap<String, Arc<Firewall>>,
    pub(crate) addresses: ByLocation<Address>,
    pub(crate) forwarding_rules: ByLocation<ForwardingRule>,
    pub(crate) target_instances: ByLocation<TargetInstance>,
    /// ILB mode's instance groups, health checks and backend services (by their prefix), as
    /// Compute returned them: one or two per ILB VirtualService, few enough to keep whole.
    pub(crate) balancers: BTreeMap<Target, Value>,
    /// Every instance of the zones asked for, keyed by (zone, name).
    pub(crate) instances: ByLocation<Instance>,
    /// Every subnetwork of the cloud's regions (any network), keyed by (region, name).
    pub(crate) subnetworks: ByLocation<Subnetwork>,
    /// Firewall rules named outside the resource prefix that carry an ownership marker: the
    /// adopted ones, which keep the name they were made with (`owned_by` finds them here).
    pub(crate) adopted_firewalls: std::collections::BTreeSet<String>,
    /// Whether a full refresh has completed.
    pub(crate) loaded: bool,
}

impl Snapshot {
    /// An instance by zone and name.
    pub fn instance(&self, zone: &str, name: &str) -> Option<&Instance> {
        self.instances.get(&(zone.to_string(), name.to_string()))
    }

    /// Whether the inventory holds anything under `target` (no copy made).
    pub fn holds(&self, target: &Target) -> bool {
        let key = || (target.location.clone(), target.name.clone());
        match target.collection {
            Collection::Routes => self.routes.contains_key(&target.name),
            Collection::Firewalls => self.firewalls.contains_key(&target.name),
            Collection::Addresses | Collection::GlobalAddresses => {
                self.addresses.contains_key(&key())
            }
            Collection::ForwardingRules => self.forwarding_rules.contains_key(&key()),
            Collection::TargetInstances => self.target_instances.contains_key(&key()),
            Collection::InstanceGroups | Collection::HealthChecks | Collection::BackendServices => {
                self.balancers.contains_key(target)
            }
        }
    }

    /// What the inventory holds under `target`, as JSON; None when it holds nothing there.
    pub fn json_of(&self, target: &Target) -> Option<Value> {
        let key = || (target.location.clone(), target.name.clone());
        let value = match target.collection {
            Collection::Routes => serde_json::to_value(self.routes.get(&target.name)?),
            Collection::Firewalls => serde_json::to_value(self.firewalls.get(&target.name)?),
            Collection::Addresses | Collection::GlobalAddresses => {
                serde_json::to_value(self.addresses.get(&key())?)
            }
            Collection::ForwardingRules => serde_json::to_value(self.forwarding_rules.get(&key())?),
            Collection::TargetInstances => serde_json::to_value(self.target_instances.get(&key())?),
            Collection::InstanceGroups | Collection::HealthChecks | Collection::BackendServices => {
                Ok(self.balancers.get(target)?.clone())
            }
        };
        value.ok()
    }
}

/// Resource counts of a snapshot (what `GcpCloud.status.inventory` shows).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub routes: usize,
    pub firewalls: usize,
    pub addresses: usize,
    pub forwarding_rules: usize,
    pub instances: usize,
}

/// The questions reconciles ask of the inventory. Callers never index its maps or parse links.
impl Snapshot {
    /// The routes, by name.
    pub fn routes(&self) -> &BTreeMap<String, Arc<Route>> {
        &self.routes
    }

    /// The firewall rules, by name.
    pub fn firewalls(&self) -> &BTreeMap<String, Arc<Firewall>> {
        &self.firewalls
    }

    /// Whether it is the result of a full refresh (not the empty view before the first one).
    pub fn is_loaded(&self) -> bool {
        self.loaded
    }

    /// How many resources of each kind it holds.
    pub fn counts(&self) -> Counts {
        Counts {
            routes: self.routes.len(),
            firewalls: self.firewalls.len(),
            addresses: self.addresses.len(),
            forwarding_rules: self.forwarding_rules.len(),
            instances: self.instances.len(),
        }
    }

    /// The description of a route, firewall rule or address (where ownership markers live).
    pub fn description_of(&self, target: &Target) -> Option<&str> {
        match target.collection {
            Collection::Routes => self
                .routes
                .get(&target.name)
                .map(|r| r.description.as_str()),
            Collection::Firewalls => self
                .firewalls
                .get(&target.name)
                .map(|f| f.description.as_str()),
            Collection::Addresses | Collection::GlobalAddresses => self
                .addresses
                .get(&(target.location.clone(), target.name.clone()))
                .map(|a| a.description.as_str()),
            Collection::ForwardingRules => self
                .forwarding_rules
                .get(&(target.location.clone(), target.name.clone()))
                .map(|f| f.description.as_str()),
            Collection::InstanceGroups | Collection::HealthChecks | Collection::BackendServices => {
                self.balancers.get(target)?["description"].as_str()
            }
            Collection::TargetInstances => None,
        }
    }

    /// The VPC network (its name) a route or firewall rule is on.
    pub fn network_of(&self, target: &Target) -> Option<String> {
        let link = match target.collection {
            Collection::Routes => self.routes.get(&target.name)?.network.as_str(),
            Collection::Firewalls => self.firewalls.get(&target.name)?.network.as_str(),
            _ => return None,
        };
        Some(last_segment(link).to_string())
    }

    /// Routes and firewall rules on `network` that carry no ownership marker of any cluster and
    /// are not named with `resource_prefix`: what adoption may take over. Routes named with the
    /// prefix (the fleet's own, most of the map) are skipped by range, not scanned.
    pub fn foreign(&self, resource_prefix: &str, network: &str) -> Vec<(Target, Value)> {
        use std::ops::Bound::{Excluded, Unbounded};
        let after = format!("{resource_prefix}\u{10ffff}");
        let on_network = |link: &str| last_segment(link) == network;
        let unmarked = |description: &str| crate::plan::owner::marker(description).is_none();
        let mut found = Vec::new();
        let routes = self
            .routes
            .range::<str, _>((Unbounded, Excluded(resource_prefix)))
            .chain(
                self.routes
                    .range::<str, _>((Excluded(after.as_str()), Unbounded)),
            );
        for (name, route) in routes {
            if on_network(&route.network) && unmarked(&route.description) {
                found.push((
                    Target::route(name.clone()),
                    serde_json::to_value(route).unwrap_or(Value::Null),
                ));
            }
        }
        for (name, firewall) in &self.firewalls {
            if !name.starts_with(resource_prefix)
                && on_network(&firewall.network)
                && unmarked(&firewall.description)
            {
                found.push((
                    Target::firewall(name.clone()),
                    serde_json::to_value(firewall).unwrap_or(Value::Null),
                ));
            }
        }
        found
    }

    /// The IP address reserved for `owner`, if the inventory holds one.
    pub fn address_of(&self, owner: &Owner) -> Option<&str> {
        self.addresses
            .values()
            .find(|a| Owner::parse(&a.description).as_ref() == Some(owner))
            .and_then(|a| a.address.as_deref())
    }

    /// The subnet ranges (primary and secondary) of `network`, as (subnetwork, range): a route
    /// may not point into one.
    pub fn subnets(&self, network: &str) -> Vec<(String, String)> {
        self.subnetworks
            .values()
            .filter(|s| last_segment(&s.network) == network)
            .flat_map(|s| {
                std::iter::once((s.name.clone(), s.ip_cidr_range.clone())).chain(
                    s.secondary_ip_ranges.iter().map(|r| {
                        (
                            format!("{}/{}", s.name, r.range_name),
                            r.ip_cidr_range.clone(),
                        )
                    }),
                )
            })
            .collect()
    }

    /// Whether subnetwork `name` of `region` exists on `network`.
    pub fn has_subnetwork(&self, region: &str, name: &str, network: &str) -> bool {
        self.subnetworks
            .get(&(region.to_string(), name.to_string()))
            .is_some_and(|s| last_segment(&s.network) == network)
    }

    /// Every resource whose ownership marker names `owner`, as (target, JSON).
    pub fn owned_by(&self, owner: &Owner, resource_prefix: &str) -> Vec<(Target, Value)> {
        let mine = |description: &str| Owner::parse(description).as_ref() == Some(owner);
        // Every name planned for the owner starts with its prefix (and the inventory lists only
        // names with the cloud's resource prefix): a range of the sorted maps, not a scan of the
        // whole fleet's resources on every reconcile.
        let start = owner.name_prefix(resource_prefix);
        let named = |name: &String| name.starts_with(&start);
        let mut owned = Vec::new();
        for (name, route) in self
            .routes
            .range(start.clone()..)
            .take_while(|(n, _)| named(n))
        {
            if mine(&route.description) {
                owned.push((
                    Target::route(name.clone()),
                    serde_json::to_value(route).unwrap_or(Value::Null),
                ));
            }
        }
        for (name, firewall) in self
            .firewalls
            .range(start.clone()..)
            .take_while(|(n, _)| named(n))
        {
            if mine(&firewall.description) {
                owned.push((
                    Target::firewall(name.clone()),
                    serde_json::to_value(firewall).unwrap_or(Value::Null),
                ));
            }
        }
        for name in &self.adopted_firewalls {
            if let Some(firewall) = self.firewalls.get(name)
                && mine(&firewall.description)
            {
                owned.push((
                    Target::firewall(name.clone()),
                    serde_json::to_value(firewall).unwrap_or(Value::Null),
                ));
            }
        }
        for ((location, name), address) in &self.addresses {
            if mine(&address.description) {
                owned.push((
                    address_target(location, name),
                    serde_json::to_value(address).unwrap_or(Value::Null),
                ));
            }
        }
        for ((location, name), rule) in &self.forwarding_rules {
            if mine(&rule.description) {
                owned.push((
                    Target {
                        collection: Collection::ForwardingRules,
                        location: location.clone(),
                        name: name.clone(),
                    },
                    serde_json::to_value(rule).unwrap_or(Value::Null),
                ));
            }
        }
        for (target, body) in &self.balancers {
            if body["description"].as_str().is_some_and(mine) {
                owned.push((target.clone(), body.clone()));
            }
        }
        owned
    }

    /// ILB mode's pieces the inventory holds of `collection` (instance groups, health checks,
    /// backend services), as Compute returned them.
    pub fn balancers(&self, collection: Collection) -> impl Iterator<Item = (&Target, &Value)> {
        self.balancers
            .iter()
            .filter(move |(t, _)| t.collection == collection)
    }

    /// Whether an instance group exists and holds at least one instance (ILB mode's groups
    /// hold one engine each).
    pub fn group_ready(&self, target: &Target) -> bool {
        self.balancers
            .get(target)
            .is_some_and(|g| g["size"].as_u64().unwrap_or(0) > 0)
    }

    /// The internal forwarding rules of the project (any owner), as (target, rule): what an
    /// ILB VIP must not collide with.
    pub fn forwarding_rules(&self) -> impl Iterator<Item = (Target, &ForwardingRule)> {
        self.forwarding_rules
            .iter()
            .map(|((location, name), rule)| {
                (
                    Target {
                        collection: Collection::ForwardingRules,
                        location: location.clone(),
                        name: name.clone(),
                    },
                    rule,
                )
            })
    }

    /// Every owner of `cluster_id` named in the markers of routes, firewall rules and
    /// addresses, with the resource that names it.
    pub fn owners(&self, cluster_id: &str) -> Vec<(Owner, Target)> {
        let mut found = Vec::new();
        let mut push = |description: &str, target: Target| {
            if let Some(owner) = Owner::parse(description).filter(|o| o.cluster_id == cluster_id) {
                found.push((owner, target));
            }
        };
        for (name, route) in &self.routes {
            push(&route.description, Target::route(name.clone()));
        }
        for (name, firewall) in &self.firewalls {
            push(&firewall.description, Target::firewall(name.clone()));
        }
        for ((location, name), address) in &self.addresses {
            push(&address.description, address_target(location, name));
        }
        for ((location, name), rule) in &self.forwarding_rules {
            push(
                &rule.description,
                Target {
                    collection: Collection::ForwardingRules,
                    location: location.clone(),
                    name: name.clone(),
                },
            );
        }
        for (target, body) in &self.balancers {
            if let Some(description) = body["description"].as_str() {
                push(description, target.clone());
            }
        }
        found
    }
}

fn address_target(location: &str, name: &str) -> Target {
    Target {
        collection: if location.is_empty() {
            Collection::GlobalAddresses
        } else {
            Collection::Addresses
        },
        location: location.to_string(),
        name: name.to_string(),
    }
}

/// Something the inventory saw change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InventoryEvent {
    /// A full refresh finished.
    Refreshed,
    /// A resource of the operator's appeared, disappeared or changed (drift found by a refresh),
    /// or work for it failed or waits (announced by the engine).
    Resource(Target),
    /// A mutation of the operator's completed: the inventory holds its result.
    Completed(Target),
    /// An instance's status changed (a service engine stopped or came back).
    Instance {
        zone: String,
        name: String,
        status: String,
    },
}

/// The inventory of one project. Updated in place (a completed operation costs one map
/// insert, not a copy of the whole view); readers look through [`Inventory::read`].
#[derive(Debug)]
pub struct Inventory {
    current: RwLock<Snapshot>,
    events: broadcast::Sender<InventoryEvent>,
    /// Mutations completed while a full refresh was listing. A page listed before an operation
    /// finished does not show it: they are replayed onto the refresh's result, or every
    /// operation finishing during a resync would look like drift and be redone.
    journal: std::sync::Mutex<Journal>,
}

#[derive(Debug, Default)]
struct Journal {
    /// Full refreshes in progress.
    active: usize,
    /// The sequence number of the last mutation recorded.
    sequence: u64,
    applied: Vec<(u64, Mutation)>,
}

/// A full refresh in progress; the journal is kept until the last one ends.
pub(crate) struct RefreshTicket<'a> {
    inventory: &'a Inventory,
    /// Mutations recorded after this sequence number finished after the refresh began.
    since: u64,
}

impl Drop for RefreshTicket<'_> {
    fn drop(&mut self) {
        let mut journal = self.inventory.journal();
        journal.active = journal.active.saturating_sub(1);
        if journal.active == 0 {
            journal.applied.clear();
        }
    }
}

impl Default for Inventory {
    fn default() -> Self {
        Self::new()
    }
}

impl Inventory {
    /// An empty inventory.
    pub fn new() -> Self {
        Self {
            current: RwLock::new(Snapshot::default()),
            events: broadcast::channel(4096).0,
            journal: Default::default(),
        }
    }

    fn journal(&self) -> std::sync::MutexGuard<'_, Journal> {
        match self.journal.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Starts recording completed mutations for a full refresh that begins now.
    pub(crate) fn begin_refresh(&self) -> RefreshTicket<'_> {
        let mut journal = self.journal();
        journal.active += 1;
        RefreshTicket {
            inventory: self,
            since: journal.sequence,
        }
    }

    /// Looks at the current view without copying it.
    pub fn read<R>(&self, look: impl FnOnce(&Snapshot) -> R) -> R {
        match self.current.read() {
            Ok(guard) => look(&guard),
            Err(poisoned) => look(&poisoned.into_inner()),
        }
    }

    /// A copy of the current view (costs a copy of every resource: for tests and tools).
    pub fn snapshot(&self) -> Snapshot {
        self.read(Snapshot::clone)
    }

    /// Changes as they are seen.
    pub fn subscribe(&self) -> broadcast::Receiver<InventoryEvent> {
        self.events.subscribe()
    }

    fn update(&self, change: impl FnOnce(&mut Snapshot)) {
        match self.current.write() {
            Ok(mut guard) => change(&mut guard),
            Err(poisoned) => change(&mut poisoned.into_inner()),
        }
    }

    /// Announces that something happened to `target` without changing the view (a mutation of
    /// it failed), so its owner looks again.
    pub(crate) fn announce_failure(&self, target: Target) {
        let _ = self.events.send(InventoryEvent::Resource(target));
    }

    /// Records a mutation whose operation completed successfully.
    pub(crate) fn apply(&self, mutation: &Mutation) {
        self.update(|snapshot| {
            apply_to(snapshot, mutation);
            // Under the view's lock, so a refresh swapping in its result either sees this in
            // the journal or had it applied to the view it replaces.
            let mut journal = self.journal();
            if journal.active > 0 {
                journal.sequence += 1;
                let sequence = journal.sequence;
                journal.applied.push((sequence, mutation.clone()));
            }
        });
        let _ = self
            .events
            .send(InventoryEvent::Completed(mutation.target.clone()));
    }

    /// Replaces the view with a fresh full load and announces what changed.
    pub(crate) fn replace(&self, mut fresh: Snapshot, ticket: &RefreshTicket<'_>) {
        let mut guard = match self.current.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        for (_, mutation) in self
            .journal()
            .applied
            .iter()
            .filter(|(sequence, _)| *sequence > ticket.since)
        {
            apply_to(&mut fresh, mutation);
        }
        let previous = &*guard;
        let mut events = Vec::new();
        diff_instance_status(&previous.instances, &fresh.instances, &mut events);
        diff_keys(
            &previous.routes,
            &fresh.routes,
            |name| Target::route(name.clone()),
            &mut events,
        );
        diff_keys(
            &previous.firewalls,
            &fresh.firewalls,
            |name| Target::firewall(name.clone()),
            &mut events,
        );
        let located = |collection: Collection| {
            move |(location, name): &(String, String)| Target {
                collection,
                location: location.clone(),
                name: name.clone(),
            }
        };
        diff_keys(
            &previous.forwarding_rules,
            &fresh.forwarding_rules,
            located(Collection::ForwardingRules),
            &mut events,
        );
        diff_keys(
            &previous.target_instances,
            &fresh.target_instances,
            located(Collection::TargetInstances),
            &mut events,
        );
        diff_keys(
            &previous.addresses,
            &fresh.addresses,
            located(Collection::Addresses),
            &mut events,
        );
        diff_keys(
            &previous.balancers,
            &fresh.balancers,
            Target::clone,
            &mut events,
        );
        *guard = fresh;
        drop(guard);
        events.push(InventoryEvent::Refreshed);
        self.announce(events);
    }

    /// Replaces the instances of `zones` with a fresh load of them and announces every instance
    /// whose status changed. Instances of other zones and every other collection stay as they
    /// are; this is not a full refresh, so [`InventoryEvent::Refreshed`] is not sent.
    /// What an instance poll found: `down`, every named instance of `zones` that is not
    /// RUNNING; `confirmed`, what a read by name found of the `unsure` ones (one it did not find
    /// no longer exists). The other instances stay as they are; each one whose status changed is
    /// announced.
    pub(crate) fn apply_poll(
        &self,
        zones: &[String],
        unsure: &[String],
        down: ByLocation<Instance>,
        confirmed: ByLocation<Instance>,
    ) {
        let mut events = Vec::new();
        self.update(|snapshot| {
            diff_instance_status(&snapshot.instances, &down, &mut events);
            diff_instance_status(&snapshot.instances, &confirmed, &mut events);
            snapshot.instances.retain(|(zone, name), _| {
                let keep = !(zones.contains(zone) && unsure.contains(name))
                    || confirmed.contains_key(&(zone.clone(), name.clone()));
                if !keep {
                    // Deleted: its users see it Missing.
                    events.push(InventoryEvent::Instance {
                        zone: zone.clone(),
                        name: name.clone(),
                        status: String::new(),
                    });
                }
                keep
            });
            snapshot.instances.extend(down);
            snapshot.instances.extend(confirmed);
        });
        self.announce(events);
    }

    pub(crate) fn replace_instances(&self, zones: &[String], fresh: ByLocation<Instance>) {
        let mut events = Vec::new();
        self.update(|snapshot| {
            diff_instance_status(&snapshot.instances, &fresh, &mut events);
            // Zones this load did not list keep their instances (a full refresh may have added
            // one meanwhile).
            snapshot
                .instances
                .retain(|(zone, _), _| !zones.contains(zone));
            snapshot.instances.extend(fresh);
        });
        self.announce(events);
    }

    fn announce(&self, events: Vec<InventoryEvent>) {
        for event in events {
            let _ = self.events.send(event);
        }
    }
}

/// Announces every instance of `after` whose status is not the one it had in `before` (or that
/// `before` did not hold).
fn diff_instance_status(
    before: &ByLocation<Instance>,
    after: &ByLocation<Instance>,
    events: &mut Vec<InventoryEvent>,
) {
    for ((zone, name), instance) in after {
        let previous = before
            .get(&(zone.clone(), name.clone()))
            .map(|i| i.status.as_str());
        if previous != Some(instance.status.as_str()) {
            events.push(InventoryEvent::Instance {
                zone: zone.clone(),
                name: name.clone(),
                status: instance.status.clone(),
            });
        }
    }
}

/// Applies a completed mutation to a view.
fn apply_to(snapshot: &mut Snapshot, mutation: &Mutation) {
    let target = &mutation.target;
    let key = (target.location.clone(), target.name.clone());
    match &mutation.change {
        Change::Insert(body) => match target.collection {
            Collection::Routes => insert(&mut snapshot.routes, target.name.clone(), body),
            Collection::Firewalls => insert(&mut snapshot.firewalls, target.name.clone(), body),
            Collection::GlobalAddresses | Collection::Addresses => {
                insert(&mut snapshot.addresses, key, body)
            }
            Collection::ForwardingRules => insert(&mut snapshot.forwarding_rules, key, body),
            Collection::TargetInstances => insert(&mut snapshot.target_instances, key, body),
            Collection::InstanceGroups | Collection::HealthChecks | Collection::BackendServices => {
                snapshot.balancers.insert(target.clone(), body.clone());
            }
        },
        Change::AddInstances(instances) => {
            if let Some(Value::Object(group)) = snapshot.balancers.get_mut(target) {
                let size = group.get("size").and_then(Value::as_u64).unwrap_or(0);
                group.insert("size".into(), Value::from(size + instances.len() as u64));
            }
        }
        Change::Patch(fields) => match target.collection {
            Collection::Firewalls => {
                // The operator patches a firewall rule only to adopt it.
                if fields["description"]
                    .as_str()
                    .is_some_and(|d| crate::plan::owner::marker(d).is_some())
                {
                    snapshot.adopted_firewalls.insert(target.name.clone());
                }
                patch(&mut snapshot.firewalls, target.name.clone(), fields);
            }
            Collection::Routes => patch(&mut snapshot.routes, target.name.clone(), fields),
            Collection::GlobalAddresses | Collection::Addresses => {
                patch(&mut snapshot.addresses, key, fields)
            }
            Collection::ForwardingRules => patch(&mut snapshot.forwarding_rules, key, fields),
            Collection::TargetInstances => patch(&mut snapshot.target_instances, key, fields),
            Collection::InstanceGroups | Collection::HealthChecks | Collection::BackendServices => {
                if let (Some(Value::Object(held)), Value::Object(fields)) =
                    (snapshot.balancers.get_mut(target), fields)
                {
                    for (field, value) in fields {
                        held.insert(field.clone(), value.clone());
                    }
                }
            }
        },
        Change::Delete => match target.collection {
            Collection::Routes => {
                snapshot.routes.remove(&target.name);
            }
            Collection::Firewalls => {
                snapshot.firewalls.remove(&target.name);
                snapshot.adopted_firewalls.remove(&target.name);
            }
            Collection::GlobalAddresses | Collection::Addresses => {
                snapshot.addresses.remove(&key);
            }
            Collection::ForwardingRules => {
                snapshot.forwarding_rules.remove(&key);
            }
            Collection::TargetInstances => {
                snapshot.target_instances.remove(&key);
            }
            Collection::InstanceGroups | Collection::HealthChecks | Collection::BackendServices => {
                snapshot.balancers.remove(target);
            }
        },
    }
}

/// Merges the top-level `fields` of a completed patch into what the view holds (nothing when
/// it holds nothing there: the next refresh reads it).
fn patch<K: Ord, T: DeserializeOwned + serde::Serialize>(
    map: &mut BTreeMap<K, T>,
    key: K,
    fields: &Value,
) {
    let Some(Ok(Value::Object(mut held))) = map.get(&key).map(serde_json::to_value) else {
        return;
    };
    if let Value::Object(fields) = fields {
        for (field, value) in fields {
            held.insert(field.clone(), value.clone());
        }
    }
    insert(map, key, &Value::Object(held));
}

fn insert<K: Ord, T: DeserializeOwned>(map: &mut BTreeMap<K, T>, key: K, body: &Value) {
    if let Ok(resource) = T::deserialize(body) {
        map.insert(key, resource);
    }
}

/// Whether a resource as the view held it (perhaps recorded from the insert the operator sent)
/// and as a list returned it are the same resource: references compare by their path below the
/// project, fields the view did not hold are ignored. Otherwise every resource recorded from an
/// operation would look changed at the next resync.
fn unchanged<T: PartialEq + serde::Serialize>(before: &T, after: &T) -> bool {
    before == after
        || match (serde_json::to_value(before), serde_json::to_value(after)) {
            (Ok(before), Ok(after)) => crate::plan::resource::same_content(&before, &after),
            _ => false,
        }
}

fn diff_keys<K: Ord, T: PartialEq + serde::Serialize>(
    before: &BTreeMap<K, T>,
    after: &BTreeMap<K, T>,
    target: impl Fn(&K) -> Target,
    events: &mut Vec<InventoryEvent>,
) {
    for (key, value) in after {
        if !before.get(key).is_some_and(|old| unchanged(old, value)) {
            events.push(InventoryEvent::Resource(target(key)));
        }
    }
    for key in before.keys().filter(|k| !after.contains_key(*k)) {
        events.push(InventoryEvent::Resource(target(key)));
    }
}

#[cfg(test)]
#[path = "inventory_tests.rs"]
mod tests;
