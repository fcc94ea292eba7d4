//! What exists in GCP for one project: the operator's routes, firewall rules, addresses,
//! forwarding rules and target instances (by its name prefix), and the instances routes point
//! to. Loaded by paged list calls (500 per page) and kept current from completed operations in
//! between, so reconciles never GET one object at a time. Instance status is also re-read on its
//! own, more often than the full load, so that a stopped service engine is noticed quickly.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};

use reqwest::Method;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::broadcast;

use super::budget::RateGroup;
use super::client::{Answer, Call};
use super::engine::Shared;
use super::error::GcpError;
use super::target::{Change, Collection, Mutation, Target};
use super::types::{
    Address, Firewall, ForwardingRule, Instance, ListPage, Route, Subnetwork, TargetInstance,
    last_segment,
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
    /// Every subnetwork of the cloud's regions (any network), keyed by (region, name).
    pub subnetworks: ByLocation<Subnetwork>,
    /// Whether a full refresh has completed.
    pub loaded: bool,
}

impl Snapshot {
    /// An instance by zone and name.
    pub fn instance(&self, zone: &str, name: &str) -> Option<&Instance> {
        self.instances.get(&(zone.to_string(), name.to_string()))
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
        };
        value.ok()
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
            .send(InventoryEvent::Resource(mutation.target.clone()));
    }

    /// Replaces the view with a fresh full load and announces what changed.
    fn replace(&self, mut fresh: Snapshot, ticket: &RefreshTicket<'_>) {
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
        *guard = fresh;
        drop(guard);
        events.push(InventoryEvent::Refreshed);
        self.announce(events);
    }

    /// Replaces the instances of `zones` with a fresh load of them and announces every instance
    /// whose status changed. Instances of other zones and every other collection stay as they
    /// are; this is not a full refresh, so [`InventoryEvent::Refreshed`] is not sent.
    fn replace_instances(&self, zones: &[String], fresh: ByLocation<Instance>) {
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
    }
}

fn insert<K: Ord, T: DeserializeOwned>(map: &mut BTreeMap<K, T>, key: K, body: &Value) {
    if let Ok(resource) = serde_json::from_value(body.clone()) {
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
            (Ok(before), Ok(after)) => super::target::same_content(&before, &after),
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

/// What an instance list asks for: every field [`Instance`] reads, and nothing else (an
/// instance's disks, metadata and tags are most of its size).
const INSTANCE_FIELDS: &str = "items(name,zone,status,canIpForward,selfLink,networkInterfaces(network,subnetwork,networkIP)),nextPageToken";

/// One paged list in progress.
struct Listing {
    path: String,
    location: String,
    /// Only resources whose name starts with the resource prefix.
    filtered: bool,
    /// A partial-response `fields` selection.
    fields: Option<&'static str>,
    method_name: &'static str,
    /// A 404 means an empty listing (a zone no object should name), not a failed refresh.
    missing_ok: bool,
    /// A filter of its own instead of the resource-prefix one.
    own_filter: Option<&'static str>,
    token: Option<String>,
    items: Vec<Value>,
    done: bool,
}

impl Listing {
    fn new(path: String, location: &str, filtered: bool, method_name: &'static str) -> Self {
        Self {
            path,
            location: location.to_string(),
            filtered,
            fields: None,
            method_name,
            missing_ok: false,
            own_filter: None,
            token: None,
            items: Vec::new(),
            done: false,
        }
    }

    /// Every instance of `zone`, whatever its name.
    fn instances(project: &str, zone: &str) -> Self {
        Self {
            fields: Some(INSTANCE_FIELDS),
            ..Self::new(
                format!("projects/{project}/zones/{zone}/instances"),
                zone,
                false,
                "compute.instances.list",
            )
        }
    }

    fn call(&self, filter: &str) -> Call {
        let mut query = vec![("maxResults".to_string(), "500".to_string())];
        if let Some(own) = self.own_filter {
            query.push(("filter".to_string(), own.to_string()));
        } else if self.filtered {
            query.push(("filter".to_string(), filter.to_string()));
        }
        if let Some(fields) = self.fields {
            query.push(("fields".to_string(), fields.to_string()));
        }
        if let Some(token) = &self.token {
            query.push(("pageToken".to_string(), token.clone()));
        }
        Call {
            method: Method::GET,
            path: self.path.clone(),
            query,
            body: None,
            group: RateGroup::Read,
            method_name: self.method_name,
        }
    }
}

/// Whether an operation was inserted before `started` (by its `insertTime`). One without a
/// readable insertTime counts as earlier: a spare refresh costs less than a missed one.
fn sent_before(operation: &Value, started: std::time::SystemTime) -> bool {
    operation
        .get("insertTime")
        .and_then(Value::as_str)
        .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok())
        .is_none_or(|inserted| std::time::SystemTime::from(inserted) < started)
}

/// Operations not DONE yet, of one scope (`global` or `regions/{region}`).
fn operations_in_flight(project: &str, scope: &str, location: &str) -> Listing {
    let method_name = if scope == "global" {
        "compute.globalOperations.list"
    } else {
        "compute.regionOperations.list"
    };
    Listing {
        own_filter: Some("status != DONE"),
        ..Listing::new(
            format!("projects/{project}/{scope}/operations"),
            location,
            false,
            method_name,
        )
    }
}

/// Loads every collection by pages; the pages of all collections travel together, a round at a
/// time. With `operations`, also counts the operations still running on resources of the
/// operator's prefix that were sent before this engine started (a former leader's or
/// incarnation's): a resource they insert is not listed until they finish, so the caller
/// refreshes again soon.
pub(crate) async fn refresh(
    shared: &Arc<Shared>,
    zones: &[String],
    operations: bool,
) -> Result<usize, GcpError> {
    let project = &shared.settings.project;
    let mut listings = vec![
        Listing::new(
            format!("projects/{project}/global/routes"),
            "",
            true,
            "compute.routes.list",
        ),
        Listing::new(
            format!("projects/{project}/global/firewalls"),
            "",
            true,
            "compute.firewalls.list",
        ),
        Listing::new(
            format!("projects/{project}/global/addresses"),
            "",
            true,
            "compute.globalAddresses.list",
        ),
    ];
    for region in &shared.settings.regions {
        listings.push(Listing::new(
            format!("projects/{project}/regions/{region}/addresses"),
            region,
            true,
            "compute.addresses.list",
        ));
        listings.push(Listing::new(
            format!("projects/{project}/regions/{region}/forwardingRules"),
            region,
            true,
            "compute.forwardingRules.list",
        ));
        // Not the operator's: the guard rails keep routes out of their ranges.
        listings.push(Listing::new(
            format!("projects/{project}/regions/{region}/subnetworks"),
            region,
            false,
            "compute.subnetworks.list",
        ));
    }
    for zone in zones {
        // Zones come from what objects name; one object's unknown zone must not fail the
        // refresh of the whole cloud.
        listings.push(Listing {
            missing_ok: true,
            ..Listing::new(
                format!("projects/{project}/zones/{zone}/targetInstances"),
                zone,
                true,
                "compute.targetInstances.list",
            )
        });
        listings.push(Listing {
            missing_ok: true,
            ..Listing::instances(project, zone)
        });
    }
    if operations {
        listings.push(operations_in_flight(project, "global", ""));
        for region in &shared.settings.regions {
            listings.push(operations_in_flight(
                project,
                &format!("regions/{region}"),
                region,
            ));
        }
    }
    let ticket = shared.inventory.begin_refresh();
    let mut in_flight = 0;
    let fresh = load(
        shared,
        listings,
        Snapshot {
            loaded: true,
            ..Snapshot::default()
        },
        &mut in_flight,
    )
    .await?;
    shared.inventory.replace(fresh, &ticket);
    Ok(in_flight)
}

/// Reloads only the instances of `zones` (one paged, trimmed list per zone) and announces the
/// ones whose status changed: how a stopped service engine is noticed between full refreshes.
pub(crate) async fn refresh_instances(
    shared: &Arc<Shared>,
    zones: &[String],
) -> Result<(), GcpError> {
    let project = &shared.settings.project;
    let listings = zones
        .iter()
        .map(|zone| Listing::instances(project, zone))
        .collect();
    let fresh = load(shared, listings, Snapshot::default(), &mut 0).await?;
    shared.inventory.replace_instances(zones, fresh.instances);
    Ok(())
}

/// What a failed read (a GET or a list page) does next: try again after the returned pause
/// (none: a rate limit, the budget decides when), or give up with the error. A retryable error
/// counts toward the engine's `max_attempts`.
fn after_read_failure(
    shared: &Shared,
    err: GcpError,
    failures: &mut u32,
) -> Result<Option<std::time::Duration>, GcpError> {
    if err.is_rate_limited() {
        shared
            .budget
            .penalize(RateGroup::Read, "", err.retry_after());
        return Ok(None);
    }
    if !err.is_retryable() {
        return Err(err);
    }
    *failures += 1;
    if *failures >= shared.settings.max_attempts.max(1) {
        return Err(GcpError::Exhausted {
            attempts: *failures,
            last: Box::new(err),
        });
    }
    Ok(Some(super::engine::backoff(
        *failures - 1,
        shared.settings.time_scale,
    )))
}

/// One read (a GET) through the read budget, retried like list pages. The final error (e.g.
/// 404) is returned as it came.
pub(crate) async fn read(shared: &Arc<Shared>, call: &Call) -> Result<Answer, GcpError> {
    let mut failures = 0u32;
    loop {
        if shared.stopped.load(Ordering::Relaxed) {
            return Err(GcpError::Shutdown);
        }
        shared.budget.acquire(RateGroup::Read, "", 1).await;
        match shared.client.send(call).await {
            Ok(answer) => return Ok(answer),
            Err(err) => {
                if let Some(pause) = after_read_failure(shared, err, &mut failures)? {
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }
}

/// Runs `listings` to their last page, through the read budget and the client's batching, and
/// files what they found into `into`.
async fn load(
    shared: &Arc<Shared>,
    mut listings: Vec<Listing>,
    mut into: Snapshot,
    operations_in_flight: &mut usize,
) -> Result<Snapshot, GcpError> {
    let filter = prefix_filter(&shared.settings.resource_prefix);
    // Consecutive failed attempts at the page each listing is on.
    let mut failures = vec![0u32; listings.len()];
    while listings.iter().any(|l| !l.done) {
        if shared.stopped.load(Ordering::Relaxed) {
            return Err(GcpError::Shutdown);
        }
        let open: Vec<usize> = (0..listings.len()).filter(|i| !listings[*i].done).collect();
        let granted = shared.budget.acquire(RateGroup::Read, "", open.len()).await;
        let round: Vec<usize> = open.into_iter().take(granted).collect();
        let calls: Vec<Call> = round.iter().map(|i| listings[*i].call(&filter)).collect();
        let answers = shared.client.exchange(shared.transport, calls).await;
        let mut pause = None;
        for (index, answer) in round.into_iter().zip(answers) {
            let listing = &mut listings[index];
            match answer {
                Ok(answer) => {
                    failures[index] = 0;
                    let page: ListPage<Value> = serde_json::from_slice(&answer.body)
                        .map_err(|err| GcpError::Decode(format!("{}: {err}", listing.path)))?;
                    listing.items.extend(page.items);
                    match page.next_page_token {
                        Some(token) if !token.is_empty() => listing.token = Some(token),
                        _ => listing.done = true,
                    }
                }
                Err(err) if err.is_not_found() && listing.missing_ok => {
                    // A zone Compute does not know (an object's typo) holds nothing: the
                    // object that names it stalls on its own, the cloud's inventory goes on.
                    failures[index] = 0;
                    listing.done = true;
                }
                Err(err) => {
                    // The round's pause is its longest one.
                    let wait = after_read_failure(shared, err, &mut failures[index])?;
                    pause = pause.max(wait);
                }
            }
        }
        if let Some(pause) = pause {
            tokio::time::sleep(pause).await;
        }
    }
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
                "routes" => insert(&mut into.routes, name, &item),
                "firewalls" => insert(&mut into.firewalls, name, &item),
                "addresses" => insert(&mut into.addresses, key, &item),
                "forwardingRules" => insert(&mut into.forwarding_rules, key, &item),
                "targetInstances" => insert(&mut into.target_instances, key, &item),
                "subnetworks" => insert(&mut into.subnetworks, key, &item),
                "operations" => {
                    let target = item
                        .get("targetLink")
                        .and_then(Value::as_str)
                        .map(last_segment)
                        .unwrap_or_default();
                    if target.starts_with(&shared.settings.resource_prefix)
                        && sent_before(&item, shared.started)
                    {
                        *operations_in_flight += 1;
                    }
                }
                "instances" => {
                    let zone = item
                        .get("zone")
                        .and_then(Value::as_str)
                        .map_or(listing.location.clone(), |z| last_segment(z).to_string());
                    insert(&mut into.instances, (zone, name), &item);
                }
                _ => {}
            }
        }
    }
    Ok(into)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_count_as_earlier_by_their_insert_time() {
        let started =
            std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
        // 2027-01-15T08:00:00Z is 1_800_000_000 s after the epoch.
        let op = |time: &str| serde_json::json!({"insertTime": time});
        assert!(sent_before(&op("2027-01-15T00:59:59.000-07:00"), started));
        assert!(!sent_before(&op("2027-01-15T01:00:01.000-07:00"), started));
        assert!(
            sent_before(&serde_json::json!({}), started),
            "unreadable: earlier"
        );
    }

    #[test]
    fn prefix_filter_is_an_anchored_regex() {
        assert_eq!(prefix_filter("adc-"), "name eq adc-.*");
        assert_eq!(prefix_filter("a.b"), "name eq a\\.b.*");
    }

    #[test]
    fn a_listed_resource_equals_the_insert_it_came_from() {
        let sent: crate::gcp::types::Route = serde_json::from_value(serde_json::json!({"name": "adc-r", "network": "global/networks/default", "destRange": "10.0.0.5/32", "priority": 2000, "nextHopInstance": "zones/z-a/instances/se-1"})).unwrap();
        let listed: crate::gcp::types::Route = serde_json::from_value(serde_json::json!({"name": "adc-r", "network": "https://www.googleapis.com/compute/v1/projects/p/global/networks/default", "destRange": "10.0.0.5/32", "priority": 2000, "nextHopInstance": "https://www.googleapis.com/compute/v1/projects/p/zones/z-a/instances/se-1", "selfLink": "https://www.googleapis.com/compute/v1/projects/p/global/routes/adc-r"})).unwrap();
        assert!(unchanged(&sent, &listed));
        let drifted: crate::gcp::types::Route = serde_json::from_value(serde_json::json!({"name": "adc-r", "network": "global/networks/default", "destRange": "10.0.0.5/32", "priority": 100, "nextHopInstance": "zones/z-a/instances/se-1"})).unwrap();
        assert!(!unchanged(&sent, &drifted));
    }

    #[test]
    fn a_refresh_keeps_what_finished_while_it_was_listing() {
        let inventory = Inventory::new();
        let body = |name: &str| serde_json::json!({"name": name, "network": "global/networks/default", "destRange": "10.0.0.5/32", "priority": 2000, "nextHopIp": "10.0.0.9"});
        inventory.apply(&Mutation::insert(Target::route("adc-old"), body("adc-old")));
        // Before the refresh: not replayed (the listing saw it, or it was deleted since).
        inventory.apply(&Mutation::insert(
            Target::route("adc-before"),
            body("adc-before"),
        ));
        let ticket = inventory.begin_refresh();
        // The listing (below, `fresh`) was read before these two finished.
        inventory.apply(&Mutation::insert(Target::route("adc-new"), body("adc-new")));
        inventory.apply(&Mutation::delete(Target::route("adc-old"), None));
        let mut fresh = Snapshot::default();
        for name in ["adc-old", "adc-listed"] {
            insert(&mut fresh.routes, name.to_string(), &body(name));
        }
        let mut events = inventory.subscribe();
        inventory.replace(fresh, &ticket);
        drop(ticket);
        let names: Vec<String> = inventory.snapshot().routes.into_keys().collect();
        assert_eq!(names, ["adc-listed", "adc-new"]);
        // Only real differences are announced: adc-before vanished, adc-listed appeared.
        let mut announced = Vec::new();
        while let Ok(InventoryEvent::Resource(target)) = events.try_recv() {
            announced.push(target.name);
        }
        announced.sort();
        assert_eq!(announced, ["adc-before", "adc-listed"]);
        assert!(
            inventory.journal().applied.is_empty(),
            "cleared after the last refresh"
        );
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

    fn instance(zone: &str, name: &str, status: &str) -> ((String, String), Instance) {
        (
            (zone.to_string(), name.to_string()),
            Instance {
                name: name.to_string(),
                zone: zone.to_string(),
                status: status.to_string(),
                ..Instance::default()
            },
        )
    }

    fn drain(events: &mut broadcast::Receiver<InventoryEvent>) -> Vec<InventoryEvent> {
        std::iter::from_fn(|| events.try_recv().ok()).collect()
    }

    #[test]
    fn replacing_instances_announces_status_changes_and_touches_nothing_else() {
        let inventory = Inventory::new();
        let route = serde_json::json!({"name": "adc-r", "network": "global/networks/default", "destRange": "10.0.0.5/32", "priority": 2000, "nextHopIp": "10.0.0.9"});
        inventory.replace(
            Snapshot {
                routes: BTreeMap::from([(
                    "adc-r".to_string(),
                    serde_json::from_value(route).unwrap(),
                )]),
                instances: BTreeMap::from([
                    instance("z-a", "se-1", "RUNNING"),
                    instance("z-a", "se-2", "RUNNING"),
                    instance("z-b", "se-3", "RUNNING"),
                ]),
                loaded: true,
                ..Snapshot::default()
            },
            &inventory.begin_refresh(),
        );
        let before = inventory.snapshot();
        let mut events = inventory.subscribe();

        // se-1 stopped, se-2 unchanged, se-4 new; zone z-b was not polled.
        inventory.replace_instances(
            &["z-a".to_string()],
            BTreeMap::from([
                instance("z-a", "se-1", "STOPPING"),
                instance("z-a", "se-2", "RUNNING"),
                instance("z-a", "se-4", "RUNNING"),
            ]),
        );
        assert_eq!(
            drain(&mut events),
            [
                InventoryEvent::Instance {
                    zone: "z-a".into(),
                    name: "se-1".into(),
                    status: "STOPPING".into()
                },
                InventoryEvent::Instance {
                    zone: "z-a".into(),
                    name: "se-4".into(),
                    status: "RUNNING".into()
                },
            ],
            "one event per changed status, and no Refreshed"
        );
        let after = inventory.snapshot();
        assert!(!after.instance("z-a", "se-1").unwrap().is_running());
        assert!(after.instance("z-a", "se-4").unwrap().is_running());
        assert!(
            after.instance("z-b", "se-3").unwrap().is_running(),
            "a zone that was not polled keeps its instances"
        );
        assert_eq!(after.routes, before.routes);
        assert_eq!(after.firewalls, before.firewalls);
        assert_eq!(after.addresses, before.addresses);
        assert_eq!(after.forwarding_rules, before.forwarding_rules);
        assert_eq!(after.target_instances, before.target_instances);
        assert!(after.loaded);

        // An instance gone from a polled zone is dropped; the same statuses again are silent.
        inventory.replace_instances(
            &["z-a".to_string()],
            BTreeMap::from([
                instance("z-a", "se-1", "STOPPING"),
                instance("z-a", "se-4", "RUNNING"),
            ]),
        );
        assert_eq!(drain(&mut events), []);
        assert!(inventory.snapshot().instance("z-a", "se-2").is_none());
    }

    #[test]
    fn a_full_refresh_announces_instance_status_changes_too() {
        let inventory = Inventory::new();
        inventory.replace(
            Snapshot {
                instances: BTreeMap::from([instance("z-a", "se-1", "RUNNING")]),
                ..Snapshot::default()
            },
            &inventory.begin_refresh(),
        );
        let mut events = inventory.subscribe();
        inventory.replace(
            Snapshot {
                instances: BTreeMap::from([instance("z-a", "se-1", "TERMINATED")]),
                ..Snapshot::default()
            },
            &inventory.begin_refresh(),
        );
        assert_eq!(
            drain(&mut events),
            [
                InventoryEvent::Instance {
                    zone: "z-a".into(),
                    name: "se-1".into(),
                    status: "TERMINATED".into()
                },
                InventoryEvent::Refreshed,
            ]
        );
    }

    #[test]
    fn instance_lists_ask_for_every_field_an_instance_reads() {
        let listing = Listing::instances("p", "z-a");
        let call = listing.call("name eq adc-.*");
        assert_eq!(call.path, "projects/p/zones/z-a/instances");
        assert!(
            !call.query.iter().any(|(k, _)| k == "filter"),
            "every instance, whatever its name"
        );
        let fields = call
            .query
            .iter()
            .find(|(k, _)| k == "fields")
            .map(|(_, v)| v.as_str());
        assert_eq!(fields, Some(INSTANCE_FIELDS));
        let full = serde_json::json!({"kind": "compute#instance", "id": "1", "name": "se-1",
            "zone": "https://compute.googleapis.com/compute/v1/projects/p/zones/z-a", "status": "RUNNING",
            "canIpForward": true, "machineType": "zones/z-a/machineTypes/e2-standard-4",
            "networkInterfaces": [{"name": "nic0", "network": "global/networks/default", "networkIP": "10.0.0.2"}],
            "selfLink": "projects/p/zones/z-a/instances/se-1"});
        // What Compute's partial response keeps of it decodes to the same instance.
        let trimmed = serde_json::json!({"name": "se-1",
            "zone": "https://compute.googleapis.com/compute/v1/projects/p/zones/z-a", "status": "RUNNING",
            "canIpForward": true,
            "networkInterfaces": [{"network": "global/networks/default", "networkIP": "10.0.0.2"}],
            "selfLink": "projects/p/zones/z-a/instances/se-1"});
        assert_eq!(
            serde_json::from_value::<Instance>(trimmed).unwrap(),
            serde_json::from_value::<Instance>(full).unwrap()
        );
    }
}
