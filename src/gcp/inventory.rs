//! What exists in GCP for one project: the operator's routes, firewall rules, addresses,
//! forwarding rules and target instances (by its name prefix), and the instances routes point
//! to. Loaded by paged list calls (500 per page) and kept current from completed operations in
//! between, so reconciles never GET one object at a time.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use reqwest::Method;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::broadcast;

use super::budget::RateGroup;
use super::client::Call;
use super::engine::Shared;
use super::error::GcpError;
use super::target::{Change, Collection, Mutation, Target};
use super::types::{
    Address, Firewall, ForwardingRule, Instance, ListPage, Route, TargetInstance, last_segment,
};

/// Resources keyed by (location, name); location is empty for global ones.
pub type ByLocation<T> = BTreeMap<(String, String), T>;

/// One consistent view of the project.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub routes: BTreeMap<String, Route>,
    pub firewalls: BTreeMap<String, Firewall>,
    pub addresses: ByLocation<Address>,
    pub forwarding_rules: ByLocation<ForwardingRule>,
    pub target_instances: ByLocation<TargetInstance>,
    /// Every instance of the zones asked for, keyed by (zone, name).
    pub instances: ByLocation<Instance>,
    /// Whether a full refresh has completed.
    pub loaded: bool,
}

impl Snapshot {
    /// An instance by zone and name.
    pub fn instance(&self, zone: &str, name: &str) -> Option<&Instance> {
        self.instances.get(&(zone.to_string(), name.to_string()))
    }
}

/// Something the inventory saw change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InventoryEvent {
    /// A full refresh finished.
    Refreshed,
    /// A resource of the operator's appeared, disappeared or changed (drift, or our own work).
    Resource(Target),
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

    /// Records a mutation whose operation completed successfully.
    pub(crate) fn apply(&self, mutation: &Mutation) {
        let target = &mutation.target;
        let key = (target.location.clone(), target.name.clone());
        self.update(|snapshot| match &mutation.change {
            Change::Insert(body) => match target.collection {
                Collection::Routes => insert(&mut snapshot.routes, target.name.clone(), body),
                Collection::Firewalls => insert(&mut snapshot.firewalls, target.name.clone(), body),
                Collection::GlobalAddresses | Collection::Addresses => {
                    insert(&mut snapshot.addresses, key, body)
                }
                Collection::ForwardingRules => insert(&mut snapshot.forwarding_rules, key, body),
                Collection::TargetInstances => insert(&mut snapshot.target_instances, key, body),
            },
            Change::Delete => match target.collection {
                Collection::Routes => {
                    snapshot.routes.remove(&target.name);
                }
                Collection::Firewalls => {
                    snapshot.firewalls.remove(&target.name);
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
            },
        });
        let _ = self.events.send(InventoryEvent::Resource(target.clone()));
    }

    /// Replaces the view with a fresh full load and announces what changed.
    fn replace(&self, fresh: Snapshot) {
        let mut guard = match self.current.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let previous = &*guard;
        let mut events = Vec::new();
        for ((zone, name), instance) in &fresh.instances {
            let before = previous
                .instances
                .get(&(zone.clone(), name.clone()))
                .map(|i| i.status.as_str());
            if before != Some(instance.status.as_str()) {
                events.push(InventoryEvent::Instance {
                    zone: zone.clone(),
                    name: name.clone(),
                    status: instance.status.clone(),
                });
            }
        }
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
        *guard = fresh;
        drop(guard);
        for event in events {
            let _ = self.events.send(event);
        }
        let _ = self.events.send(InventoryEvent::Refreshed);
    }
}

fn insert<K: Ord, T: DeserializeOwned>(map: &mut BTreeMap<K, T>, key: K, body: &Value) {
    if let Ok(resource) = serde_json::from_value(body.clone()) {
        map.insert(key, resource);
    }
}

fn diff_keys<K: Ord, T: PartialEq>(
    before: &BTreeMap<K, T>,
    after: &BTreeMap<K, T>,
    target: impl Fn(&K) -> Target,
    events: &mut Vec<InventoryEvent>,
) {
    for (key, value) in after {
        if before.get(key) != Some(value) {
            events.push(InventoryEvent::Resource(target(key)));
        }
    }
    for key in before.keys().filter(|k| !after.contains_key(*k)) {
        events.push(InventoryEvent::Resource(target(key)));
    }
}

/// A regular expression matching names that start with `prefix`.
fn prefix_filter(prefix: &str) -> String {
    let escaped: String = prefix
        .chars()
        .flat_map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                vec![c]
            } else {
                vec!['\\', c]
            }
        })
        .collect();
    format!("name eq {escaped}.*")
}

/// One paged list in progress.
struct Listing {
    path: String,
    location: String,
    filtered: bool,
    method_name: &'static str,
    token: Option<String>,
    items: Vec<Value>,
    done: bool,
}

/// Loads every collection by pages; the pages of all collections travel together, a round at a
/// time.
pub(crate) async fn refresh(shared: &Arc<Shared>, zones: &[String]) -> Result<(), GcpError> {
    let project = &shared.settings.project;
    let mut listings: Vec<Listing> = Vec::new();
    let mut add = |path: String, location: &str, filtered: bool, method_name: &'static str| {
        listings.push(Listing {
            path,
            location: location.to_string(),
            filtered,
            method_name,
            token: None,
            items: Vec::new(),
            done: false,
        });
    };
    add(
        format!("projects/{project}/global/routes"),
        "",
        true,
        "compute.routes.list",
    );
    add(
        format!("projects/{project}/global/firewalls"),
        "",
        true,
        "compute.firewalls.list",
    );
    add(
        format!("projects/{project}/global/addresses"),
        "",
        true,
        "compute.globalAddresses.list",
    );
    for region in &shared.settings.regions {
        add(
            format!("projects/{project}/regions/{region}/addresses"),
            region,
            true,
            "compute.addresses.list",
        );
        add(
            format!("projects/{project}/regions/{region}/forwardingRules"),
            region,
            true,
            "compute.forwardingRules.list",
        );
    }
    for zone in zones {
        add(
            format!("projects/{project}/zones/{zone}/targetInstances"),
            zone,
            true,
            "compute.targetInstances.list",
        );
        add(
            format!("projects/{project}/zones/{zone}/instances"),
            zone,
            false,
            "compute.instances.list",
        );
    }
    let filter = prefix_filter(&shared.settings.resource_prefix);
    while listings.iter().any(|l| !l.done) {
        let open: Vec<usize> = (0..listings.len()).filter(|i| !listings[*i].done).collect();
        let granted = shared.budget.acquire(RateGroup::Read, "", open.len()).await;
        let round: Vec<usize> = open.into_iter().take(granted).collect();
        let calls: Vec<Call> = round
            .iter()
            .map(|i| {
                let listing = &listings[*i];
                let mut query = vec![("maxResults".to_string(), "500".to_string())];
                if listing.filtered {
                    query.push(("filter".to_string(), filter.clone()));
                }
                if let Some(token) = &listing.token {
                    query.push(("pageToken".to_string(), token.clone()));
                }
                Call {
                    method: Method::GET,
                    path: listing.path.clone(),
                    query,
                    body: None,
                    group: RateGroup::Read,
                    method_name: listing.method_name,
                }
            })
            .collect();
        let answers = shared.client.exchange(shared.transport, calls).await;
        for (index, answer) in round.into_iter().zip(answers) {
            let listing = &mut listings[index];
            match answer {
                Ok(answer) => {
                    let page: ListPage<Value> = serde_json::from_slice(&answer.body)
                        .map_err(|err| GcpError::Decode(format!("{}: {err}", listing.path)))?;
                    listing.items.extend(page.items);
                    match page.next_page_token {
                        Some(token) if !token.is_empty() => listing.token = Some(token),
                        _ => listing.done = true,
                    }
                }
                Err(err) if err.is_rate_limited() => {
                    shared
                        .budget
                        .penalize(RateGroup::Read, "", err.retry_after());
                }
                Err(err) if err.is_retryable() => {}
                Err(err) => return Err(err),
            }
        }
    }
    let mut fresh = Snapshot {
        loaded: true,
        ..Snapshot::default()
    };
    for listing in listings {
        let collection = listing
            .path
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_string();
        for item in listing.items {
            let Some(name) = item.get("name").and_then(Value::as_str).map(str::to_string) else {
                continue;
            };
            let key = (listing.location.clone(), name.clone());
            match collection.as_str() {
                "routes" => insert(&mut fresh.routes, name, &item),
                "firewalls" => insert(&mut fresh.firewalls, name, &item),
                "addresses" => insert(&mut fresh.addresses, key, &item),
                "forwardingRules" => insert(&mut fresh.forwarding_rules, key, &item),
                "targetInstances" => insert(&mut fresh.target_instances, key, &item),
                "instances" => {
                    let zone = item
                        .get("zone")
                        .and_then(Value::as_str)
                        .map_or(listing.location.clone(), |z| last_segment(z).to_string());
                    insert(&mut fresh.instances, (zone, name), &item);
                }
                _ => {}
            }
        }
    }
    shared.inventory.replace(fresh);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_filter_is_an_anchored_regex() {
        assert_eq!(prefix_filter("adc-"), "name eq adc-.*");
        assert_eq!(prefix_filter("a.b"), "name eq a\\.b.*");
    }

    #[test]
    fn applied_mutations_update_the_view_and_announce_it() {
        let inventory = Inventory::new();
        let mut events = inventory.subscribe();
        let body = serde_json::json!({"name": "adc-r", "network": "global/networks/default", "destRange": "10.0.0.5/32", "priority": 2000, "nextHopIp": "10.0.0.9"});
        inventory.apply(&Mutation::insert(Target::route("adc-r"), body));
        assert_eq!(
            inventory.snapshot().routes["adc-r"].dest_range,
            "10.0.0.5/32"
        );
        assert_eq!(
            events.try_recv().unwrap(),
            InventoryEvent::Resource(Target::route("adc-r"))
        );
        inventory.apply(&Mutation::delete(Target::route("adc-r"), None));
        assert!(inventory.snapshot().routes.is_empty());
    }
}
