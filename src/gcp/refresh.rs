//! Loading the inventory: paged list calls (500 per page) of every collection the operator
//! writes (by its name prefix; firewall rules whole, and routes too when the cloud adopts;
//! between whole lists, only the routes and rules the operations log names, see
//! `changelog.rs`),
//! the subnetworks of its regions and the instances and target instances of the zones objects
//! name (one aggregated list each, for every zone), all through the read path, pages of every
//! collection travelling together.

use reqwest::Method;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::sync::Arc;

use super::budget::{Lane, RateGroup};
use super::changelog::{
    ChangeLog, Horizon, LogRead, Logged, MAX_LOG_PAGES, NAMES_PER_READ, Reread, Resync, reread,
};
use super::client::Call;
use super::error::GcpError;
use super::inventory::{ByLocation, Inventory, Snapshot};
use super::reader::Reader;
use super::settings::EngineSettings;
use crate::plan::resource::{Collection, Target};

use super::types::{
    Address, AggregatedPage, Firewall, ForwardingRule, Instance, RawPage, Route, Subnetwork,
    TargetInstance, last_segment,
};

/// What a refresh reads from and writes into.
pub(crate) struct Source<'a> {
    pub reader: &'a Reader,
    pub inventory: &'a Inventory,
    /// Where the next read of the operations log starts.
    pub changelog: &'a std::sync::Mutex<ChangeLog>,
    pub settings: &'a EngineSettings,
    /// When the engine started: operations inserted before it are not its own.
    pub started: std::time::SystemTime,
    /// Whether a full refresh lists ILB mode's groups, health checks and backend services.
    pub balancers: bool,
}

/// A regular expression matching names that start with `prefix`.
fn prefix_filter(prefix: &str) -> String {
    format!("name eq {}.*", escape_regex(prefix))
}

/// `text` as a literal in an RE2 expression (names are letters, digits and hyphens; anything
/// else is escaped).
fn escape_regex(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                vec![c]
            } else {
                vec!['\\', c]
            }
        })
        .collect()
}

/// What an instance list asks for: every field [`Instance`] reads, and nothing else (an
/// instance's disks, metadata and tags are most of its size).
const INSTANCE_FIELDS: &str = "items(name,zone,status,canIpForward,selfLink,networkInterfaces(network,subnetwork,networkIP)),nextPageToken";
/// The same for an `instances.aggregatedList` (`*` is every scope).
const AGGREGATED_INSTANCE_FIELDS: &str = "items/*/instances(name,zone,status,canIpForward,selfLink,networkInterfaces(network,subnetwork,networkIP)),nextPageToken";
/// The instances the poll lists every time: those not RUNNING (AIP-160).
const NOT_RUNNING: &str = "status != RUNNING";

/// `name eq (a|b|…)`: the instances named, as one anchored regular expression.
fn names_filter(names: &[String]) -> Option<String> {
    if names.is_empty() {
        return None;
    }
    let alternatives: Vec<String> = names.iter().map(|n| escape_regex(n)).collect();
    Some(format!("name eq ({})", alternatives.join("|")))
}

/// What a listing lists, which is how its items are filed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Listed {
    Routes,
    Firewalls,
    Addresses,
    ForwardingRules,
    TargetInstances,
    Subnetworks,
    Instances,
    /// ILB mode's instance groups, health checks or backend services: kept whole.
    Balancers(Collection),
    /// Operations in flight: counted, not kept.
    Operations,
    /// The operations log, newest first: read for what changed (`changelog.rs`).
    Log,
}

impl Listed {
    /// By the method that lists it.
    fn of(method_name: &str) -> Self {
        match method_name {
            "compute.routes.list" => Self::Routes,
            "compute.firewalls.list" => Self::Firewalls,
            "compute.addresses.list" | "compute.globalAddresses.list" => Self::Addresses,
            "compute.forwardingRules.list" => Self::ForwardingRules,
            "compute.targetInstances.list" | "compute.targetInstances.aggregatedList" => {
                Self::TargetInstances
            }
            "compute.subnetworks.list" => Self::Subnetworks,
            "compute.instances.list" | "compute.instances.aggregatedList" => Self::Instances,
            "compute.instanceGroups.aggregatedList" => Self::Balancers(Collection::InstanceGroups),
            "compute.regionHealthChecks.list" => Self::Balancers(Collection::HealthChecks),
            "compute.regionBackendServices.list" => Self::Balancers(Collection::BackendServices),
            "compute.globalOperations.list" => Self::Log,
            // compute.globalOperations.aggregatedList, the only other list a refresh makes.
            _ => Self::Operations,
        }
    }
}

/// One paged list in progress.
struct Listing {
    collection: Listed,
    path: String,
    location: String,
    /// Only resources whose name starts with the resource prefix.
    filtered: bool,
    /// A partial-response `fields` selection.
    fields: Option<&'static str>,
    method_name: &'static str,
    /// A filter of its own instead of the resource-prefix one.
    own_filter: Option<String>,
    /// An `aggregatedList`: its pages hold scoped lists, the items under this key.
    aggregated: Option<&'static str>,
    token: Option<String>,
    done: bool,
    /// The budget scope of its reads: the Shared VPC host's, or the project's (`""`).
    scope: String,
    /// Items of its pages that did not decode (skipped), and the first one's error.
    skipped: usize,
    first_skip: Option<String>,
    /// Items per page.
    max_results: usize,
    /// A read of the operations log: where it stops, and what it found.
    log: Option<Box<LogListing>>,
    /// The rate group its calls are charged to.
    group: RateGroup,
}

/// A read of the operations log in progress.
struct LogListing {
    horizon: Horizon,
    /// Pages read at most.
    max_pages: usize,
    read: LogRead,
}

/// What a read of the operations log asks for of each operation.
const LOG_FIELDS: &str = "items(name,targetLink,insertTime,status),nextPageToken";

impl Listing {
    fn new(path: String, location: &str, filtered: bool, method_name: &'static str) -> Self {
        Self {
            collection: Listed::of(method_name),
            path,
            location: location.to_string(),
            filtered,
            fields: None,
            method_name,
            own_filter: None,
            aggregated: None,
            token: None,
            done: false,
            scope: String::new(),
            skipped: 0,
            first_skip: None,
            max_results: 500,
            log: None,
            group: RateGroup::Read,
        }
    }

    /// The global operations of `project` newest first, back to `horizon` or `max_pages`
    /// pages: what changed routes and firewall rules.
    fn log(project: &str, horizon: Horizon, max_pages: usize) -> Self {
        Self {
            fields: Some(LOG_FIELDS),
            log: Some(Box::new(LogListing {
                horizon,
                max_pages,
                read: LogRead::default(),
            })),
            group: RateGroup::OperationRead,
            ..Self::new(
                format!("projects/{project}/global/operations"),
                "",
                false,
                "compute.globalOperations.list",
            )
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

    /// Every instance of the project in one paged `instances.aggregatedList` (all zones at
    /// once), only those named in `names` when given, trimmed like [`Listing::instances`].
    fn aggregated_instances(project: &str, names: Option<String>) -> Self {
        Self {
            fields: Some(AGGREGATED_INSTANCE_FIELDS),
            own_filter: names,
            aggregated: Some("instances"),
            ..Self::new(
                format!("projects/{project}/aggregated/instances"),
                "",
                false,
                "compute.instances.aggregatedList",
            )
        }
    }

    fn call(&self, filter: &str) -> Call {
        let mut query = vec![("maxResults".to_string(), self.max_results.to_string())];
        if self.log.is_some() {
            query.push(("orderBy".to_string(), "creationTimestamp desc".to_string()));
        }
        if let Some(own) = &self.own_filter {
            query.push(("filter".to_string(), own.clone()));
        } else if self.filtered {
            query.push(("filter".to_string(), filter.to_string()));
        }
        if let Some(fields) = self.fields {
            query.push(("fields".to_string(), fields.to_string()));
        }
        if self.aggregated.is_some() {
            // A scope Compute cannot reach is reported in `unreachables`, not an error.
            query.push(("returnPartialSuccess".to_string(), "true".to_string()));
        }
        if let Some(token) = &self.token {
            query.push(("pageToken".to_string(), token.clone()));
        }
        Call {
            method: Method::GET,
            path: self.path.clone(),
            query,
            body: None,
            group: self.group,
            method_name: self.method_name,
        }
    }
}

/// What the settling refresh reads of an operation in flight.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct OperationInFlight {
    #[serde(default)]
    target_link: String,
    #[serde(default)]
    insert_time: Option<String>,
}

/// Whether an operation was inserted before `started` (by its `insertTime`). One without a
/// readable insertTime counts as earlier: a spare refresh costs less than a missed one.
fn sent_before(insert_time: Option<&str>, started: std::time::SystemTime) -> bool {
    insert_time
        .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok())
        .is_none_or(|inserted| std::time::SystemTime::from(inserted) < started)
}

/// Operations not DONE yet, in every scope (global, regions, zones), in one paged
/// `globalOperations.aggregatedList` rather than one list per scope.
fn operations_in_flight(project: &str) -> Listing {
    Listing {
        own_filter: Some("status != DONE".to_string()),
        aggregated: Some("operations"),
        ..Listing::new(
            format!("projects/{project}/aggregated/operations"),
            "",
            false,
            "compute.globalOperations.aggregatedList",
        )
    }
}

/// Loads every collection by pages; the pages of all collections travel together, a round at a
/// time. Routes and firewall rules are listed whole when the change log says so
/// (`changelog.rs`: the first resync, every hour, after a busy spell); otherwise the project's
/// operations log, newest first, names the ones listed again (by name), and the rest are the
/// inventory's. With `operations`, also counts the operations still running on resources of the
/// operator's prefix that were sent before this engine started (a former leader's or
/// incarnation's): a resource they insert is not listed until they finish, so the caller
/// refreshes again soon.
pub(crate) async fn refresh(
    source: &Source<'_>,
    zones: &[String],
    operations: bool,
) -> Result<usize, GcpError> {
    let project = &source.settings.project;
    // The network's own collections live in its project (a Shared VPC host), read on its
    // budget.
    let host = source.settings.network_project();
    let host_scope = source.settings.host_scope().unwrap_or_default();
    let in_host = |listing: Listing| Listing {
        scope: host_scope.clone(),
        ..listing
    };
    // Routes and rules by the name prefix, or whole (every rule, whatever its name: an adopted
    // rule keeps the name it was made with, and stays the operator's after adoption is turned
    // off; a project holds a few hundred rules, its FIREWALLS quota).
    let routes_path = format!("projects/{host}/global/routes");
    let firewalls_path = format!("projects/{host}/global/firewalls");
    let whole = |path: &str, filtered: bool, method_name| {
        in_host(Listing::new(path.to_string(), "", filtered, method_name))
    };
    let by_name = |path: &str, names: &[String], method_name| {
        in_host(Listing {
            own_filter: names_filter(names),
            ..Listing::new(path.to_string(), "", false, method_name)
        })
    };
    let mut listings = vec![Listing::new(
        format!("projects/{project}/global/addresses"),
        "",
        true,
        "compute.globalAddresses.list",
    )];
    for region in &source.settings.regions {
        listings.push(Listing::new(
            format!("projects/{project}/regions/{region}/addresses"),
            region,
            true,
            "compute.addresses.list",
        ));
        listings.push(Listing::new(
            format!("projects/{project}/regions/{region}/forwardingRules"),
            region,
            // With ILB objects, every rule: an ILB VIP must not be one another rule holds.
            !source.balancers,
            "compute.forwardingRules.list",
        ));
        if source.balancers {
            listings.push(Listing::new(
                format!("projects/{project}/regions/{region}/healthChecks"),
                region,
                true,
                "compute.regionHealthChecks.list",
            ));
            listings.push(Listing::new(
                format!("projects/{project}/regions/{region}/backendServices"),
                region,
                true,
                "compute.regionBackendServices.list",
            ));
        }
        // Not the operator's: the guard rails keep routes out of their ranges.
        listings.push(in_host(Listing::new(
            format!("projects/{host}/regions/{region}/subnetworks"),
            region,
            false,
            "compute.subnetworks.list",
        )));
    }
    // The instances and target instances of every zone in one aggregated list each (a call
    // per page for all zones, not one per zone); only the zones objects use are kept. A zone
    // Compute does not know (an object's typo) holds nothing: the object that names it stalls
    // on its own.
    if !zones.is_empty() {
        listings.push(Listing {
            aggregated: Some("targetInstances"),
            ..Listing::new(
                format!("projects/{project}/aggregated/targetInstances"),
                "",
                true,
                "compute.targetInstances.aggregatedList",
            )
        });
    }
    // ILB mode's groups, every zone at once: one call per page.
    if source.balancers {
        listings.push(Listing {
            aggregated: Some("instanceGroups"),
            ..Listing::new(
                format!("projects/{project}/aggregated/instanceGroups"),
                "",
                true,
                "compute.instanceGroups.aggregatedList",
            )
        });
    }
    if operations {
        listings.push(operations_in_flight(project));
        if source.settings.network_project.is_some() {
            // The host's routes and firewall rules have their operations there.
            listings.push(in_host(operations_in_flight(host)));
        }
    }
    let started = std::time::Instant::now();
    let resync = lock(source.changelog).plan(started);
    let ticket = source.inventory.begin_refresh();
    let mut in_flight = 0;
    let empty = Snapshot {
        loaded: true,
        ..Snapshot::default()
    };
    let (mut fresh, full, read) = match resync {
        Resync::Full => {
            // One page of the log first: what it shows done is in the whole lists after it,
            // what it shows running is read again at the next resync.
            let (_, ended) = load_listings(
                source,
                vec![in_host(Listing::log(host, Horizon::default(), 1))],
                Lane::Bulk,
                Snapshot::default(),
                &mut 0,
            )
            .await?;
            listings.push(whole(
                &routes_path,
                !source.settings.list_foreign,
                "compute.routes.list",
            ));
            listings.push(whole(&firewalls_path, false, "compute.firewalls.list"));
            if !zones.is_empty() {
                listings.push(Listing::aggregated_instances(project, None));
            }
            let fresh = load(source, listings, Lane::Bulk, empty, &mut in_flight).await?;
            (fresh, true, log_read(ended))
        }
        Resync::Changes(horizon) => {
            listings.push(in_host(Listing::log(host, horizon, MAX_LOG_PAGES)));
            // Between whole lists the instance poll keeps the instances objects use current
            // (a stop, a start, a deletion, a new one named): none is listed unless the poll
            // runs less often than the resync.
            let polled = source.settings.instances_polled;
            if !polled && !zones.is_empty() {
                listings.push(Listing::aggregated_instances(project, None));
            }
            let (fresh, ended) =
                load_listings(source, listings, Lane::Bulk, empty, &mut in_flight).await?;
            let read = log_read(ended);
            let prefix = source.settings.resource_prefix.as_str();
            let touched_routes: std::collections::BTreeSet<String> = read
                .routes
                .iter()
                .filter(|name| source.settings.list_foreign || name.starts_with(prefix))
                .cloned()
                .collect();
            let (held_routes, held_firewalls) = source
                .inventory
                .read(|held| (held.routes.len(), held.firewalls.len()));
            let routes = reread(&touched_routes, held_routes, read.complete);
            let firewalls = reread(&read.firewalls, held_firewalls, read.complete);
            let mut again = Vec::new();
            match &routes {
                Reread::Keep => {}
                Reread::Whole => again.push(whole(
                    &routes_path,
                    !source.settings.list_foreign,
                    "compute.routes.list",
                )),
                Reread::Names(names) => again.extend(
                    names
                        .chunks(NAMES_PER_READ)
                        .map(|chunk| by_name(&routes_path, chunk, "compute.routes.list")),
                ),
            }
            match &firewalls {
                Reread::Keep => {}
                Reread::Whole => {
                    again.push(whole(&firewalls_path, false, "compute.firewalls.list"))
                }
                Reread::Names(names) => again.extend(
                    names
                        .chunks(NAMES_PER_READ)
                        .map(|chunk| by_name(&firewalls_path, chunk, "compute.firewalls.list")),
                ),
            }
            let mut fresh = if again.is_empty() {
                fresh
            } else {
                load(source, again, Lane::Bulk, fresh, &mut in_flight).await?
            };
            source.inventory.read(|held| {
                carry(&mut fresh.routes, &held.routes, &routes);
                carry(&mut fresh.firewalls, &held.firewalls, &firewalls);
                if polled {
                    fresh.instances = held.instances.clone();
                }
            });
            let full = routes == Reread::Whole && firewalls == Reread::Whole;
            (fresh, full, read)
        }
    };
    fresh.adopted_firewalls = adopted_firewalls(&fresh, &source.settings.resource_prefix);
    // The aggregated lists bring every zone; the inventory holds the zones in use.
    fresh.instances.retain(|(zone, _), _| zones.contains(zone));
    fresh
        .target_instances
        .retain(|(zone, _), _| zones.contains(zone));
    source.inventory.replace(fresh, &ticket);
    lock(source.changelog).record(started, &read, full);
    Ok(in_flight)
}

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// What the log listing among `listings` found (nothing when there was none).
fn log_read(listings: Vec<Listing>) -> LogRead {
    listings
        .into_iter()
        .find_map(|listing| listing.log)
        .map(|log| log.read)
        .unwrap_or_default()
}

/// Completes a collection of a resync of changes from what the inventory `held`: all of it
/// when nothing changed, all but the names read again otherwise (a name read again and not
/// found is gone). A collection listed whole stands as listed.
fn carry<T>(
    fresh: &mut std::collections::BTreeMap<String, Arc<T>>,
    held: &std::collections::BTreeMap<String, Arc<T>>,
    how: &Reread,
) {
    match how {
        Reread::Whole => {}
        Reread::Keep => *fresh = held.clone(),
        Reread::Names(names) => {
            let mut kept = held.clone();
            for name in names {
                kept.remove(name);
            }
            kept.append(fresh);
            *fresh = kept;
        }
    }
}

/// Reloads only the instances of `zones` (one paged, trimmed list per zone) and announces the
/// ones whose status changed: how a stopped service engine is noticed between full refreshes.
pub(crate) async fn refresh_instances(
    source: &Source<'_>,
    zones: &[String],
) -> Result<(), GcpError> {
    let project = &source.settings.project;
    let listings = zones
        .iter()
        .map(|zone| Listing::instances(project, zone))
        .collect();
    // The poll that detects a stopped engine: it may spend the urgent reserve.
    let fresh = load(source, listings, Lane::Urgent, Snapshot::default(), &mut 0).await?;
    source.inventory.replace_instances(zones, fresh.instances);
    Ok(())
}

/// The instance poll, in one call per page whatever the fleet's size: an
/// `instances.aggregatedList` of the instances that are **not** RUNNING (normally none: one
/// short page), trimmed with `fields`. What it cannot tell from that list is read by name in a
/// second aggregated list, only when there is any: a named instance that was down and is no
/// longer listed (back, or deleted), and one the inventory does not hold (created since). Every
/// other named instance of `zones` was RUNNING and is not listed as down: it still is. Each
/// instance whose status changed is announced.
pub(crate) async fn poll_instances(
    source: &Source<'_>,
    zones: &[String],
    names: &[String],
) -> Result<(), GcpError> {
    let project = &source.settings.project;
    let in_scope =
        |zone: &str, name: &str| zones.iter().any(|z| z == zone) && names.iter().any(|n| n == name);
    let down_listing = Listing::aggregated_instances(project, Some(NOT_RUNNING.to_string()));
    // The poll that detects a stopped engine: it may spend the urgent reserve.
    let down = load(
        source,
        vec![down_listing],
        Lane::Urgent,
        Snapshot::default(),
        &mut 0,
    )
    .await?
    .instances;
    let down: ByLocation<Instance> = down
        .into_iter()
        .filter(|((zone, name), _)| in_scope(zone, name))
        .collect();
    let unsure = source
        .inventory
        .read(|snapshot| to_confirm(snapshot, zones, names, &down));
    let mut confirmed = ByLocation::new();
    if !unsure.is_empty() {
        let listings = unsure
            .chunks(NAMES_PER_READ)
            .map(|chunk| Listing::aggregated_instances(project, names_filter(chunk)))
            .collect();
        confirmed = load(source, listings, Lane::Urgent, Snapshot::default(), &mut 0)
            .await?
            .instances
            .into_iter()
            .filter(|((zone, name), _)| in_scope(zone, name))
            .collect();
    }
    source.inventory.apply_poll(zones, &unsure, down, confirmed);
    Ok(())
}

/// The names the down-list of a poll leaves open: named instances of `zones` that the
/// inventory holds as not RUNNING and `down` no longer lists (back, or deleted), and named ones
/// it does not hold at all (created since, or never there).
fn to_confirm(
    snapshot: &Snapshot,
    zones: &[String],
    names: &[String],
    down: &ByLocation<Instance>,
) -> Vec<String> {
    // The held instances of `zones` by name, borrowed: a poll runs every interval with
    // thousands of names, and a lookup per (zone, name) cloned both strings.
    let mut held: std::collections::HashMap<&str, Vec<(&String, &Instance)>> =
        std::collections::HashMap::new();
    for ((zone, name), instance) in &snapshot.instances {
        if zones.contains(zone) {
            held.entry(name.as_str())
                .or_default()
                .push((zone, instance));
        }
    }
    let mut unsure: Vec<String> = names
        .iter()
        .filter(|name| match held.get(name.as_str()) {
            None => true,
            Some(held) => held.iter().any(|(zone, instance)| {
                !instance.is_running() && !down.contains_key(&((*zone).clone(), (*name).clone()))
            }),
        })
        .cloned()
        .collect();
    unsure.sort();
    unsure.dedup();
    unsure
}

/// Runs `listings` to their last page, through the read budget (as work of `lane`) and the
/// client's batching, and files what they found into `into`.
async fn load(
    source: &Source<'_>,
    listings: Vec<Listing>,
    lane: Lane,
    into: Snapshot,
    operations_in_flight: &mut usize,
) -> Result<Snapshot, GcpError> {
    load_listings(source, listings, lane, into, operations_in_flight)
        .await
        .map(|(snapshot, _)| snapshot)
}

/// [`load`], also returning the listings as they ended (a log read's findings are in them).
async fn load_listings(
    source: &Source<'_>,
    mut listings: Vec<Listing>,
    lane: Lane,
    mut into: Snapshot,
    operations_in_flight: &mut usize,
) -> Result<(Snapshot, Vec<Listing>), GcpError> {
    let reader = source.reader;
    let filter = prefix_filter(&source.settings.resource_prefix);
    let ours = (source.settings.resource_prefix.as_str(), source.started);
    // Consecutive failed attempts at the page each listing is on.
    let mut failures = vec![0u32; listings.len()];
    while listings.iter().any(|l| !l.done) {
        if reader.is_stopped() {
            return Err(GcpError::Shutdown);
        }
        let open: Vec<usize> = (0..listings.len()).filter(|i| !listings[*i].done).collect();
        // Each project's reads come out of its own budget.
        let mut round: Vec<usize> = Vec::new();
        let scopes: std::collections::BTreeSet<&str> =
            open.iter().map(|i| listings[*i].scope.as_str()).collect();
        // A list of operations is an operation read, not a read.
        for scope in scopes {
            for group in [RateGroup::Read, RateGroup::OperationRead] {
                let of_scope: Vec<usize> = open
                    .iter()
                    .copied()
                    .filter(|i| listings[*i].scope == scope && listings[*i].group == group)
                    .collect();
                if of_scope.is_empty() {
                    continue;
                }
                let granted = reader
                    .budget
                    .acquire(group, scope, of_scope.len(), lane)
                    .await;
                round.extend(of_scope.into_iter().take(granted));
            }
        }
        let calls: Vec<Call> = round.iter().map(|i| listings[*i].call(&filter)).collect();
        let answers = reader.exchange(calls).await;
        let mut pause = None;
        for (index, answer) in round.into_iter().zip(answers) {
            let listing = &mut listings[index];
            match answer {
                Ok(answer) => {
                    failures[index] = 0;
                    // Unchanged routes and rules are shared with the inventory being replaced,
                    // not held twice until the refresh completes.
                    let next = source
                        .inventory
                        .read(|previous| {
                            file_page(
                                listing,
                                &answer.body,
                                ours,
                                (&mut into, Some(previous)),
                                operations_in_flight,
                            )
                        })
                        .map_err(|err| GcpError::Decode(format!("{}: {err}", listing.path)))?;
                    match next {
                        Some(token) if !token.is_empty() => listing.token = Some(token),
                        _ => listing.done = true,
                    }
                }
                Err(err) => {
                    // The round's pause is its longest one.
                    let wait = reader.after_failure(err, &mut failures[index])?;
                    pause = pause.max(wait);
                }
            }
        }
        if let Some(pause) = pause {
            tokio::time::sleep(pause).await;
        }
    }
    for listing in &listings {
        if let Some(error) = &listing.first_skip {
            tracing::warn!(
                list = %listing.path,
                skipped = listing.skipped,
                "skipped listed items that did not decode (the first: {error})"
            );
        }
    }
    into.adopted_firewalls = adopted_firewalls(&into, &source.settings.resource_prefix);
    Ok((into, listings))
}

/// Firewall rules named outside `prefix` that carry an ownership marker.
fn adopted_firewalls(snapshot: &Snapshot, prefix: &str) -> std::collections::BTreeSet<String> {
    snapshot
        .firewalls
        .iter()
        .filter(|(name, f)| {
            !name.starts_with(prefix) && crate::plan::owner::marker(&f.description).is_some()
        })
        .map(|(name, _)| name.clone())
        .collect()
}

/// `fresh`, as the `held` one when they are the same: an unchanged resource is not kept twice.
fn shared<T: PartialEq>(held: Option<&Arc<T>>, fresh: T) -> Arc<T> {
    match held {
        Some(held) if **held == fresh => Arc::clone(held),
        _ => Arc::new(fresh),
    }
}

/// Files one page of `listing` into `into` as it arrives, item by item, each decoded from its
/// raw text straight into its typed form (no JSON tree of the page is built, and nothing of the
/// page outlives this call), and returns the next page's token. An item that does not decode
/// is skipped and counted: one odd foreign resource must not fail the whole refresh.
fn file_page(
    listing: &mut Listing,
    body: &[u8],
    (prefix, started): (&str, std::time::SystemTime),
    (into, previous): (&mut Snapshot, Option<&Snapshot>),
    operations_in_flight: &mut usize,
) -> Result<Option<String>, serde_json::Error> {
    if let Some(log) = listing.log.as_mut() {
        let page: RawPage = serde_json::from_slice(body)?;
        let last = page.next_page_token.as_deref().is_none_or(str::is_empty);
        let operations = page
            .items
            .iter()
            .filter_map(|raw| decode::<Logged>(raw).ok());
        let complete = log.read.file(operations, &log.horizon, last);
        if complete || log.read.pages >= log.max_pages {
            return Ok(None);
        }
        return Ok(page.next_page_token);
    }
    let (items, next) = match listing.aggregated {
        Some(key) => {
            let page: AggregatedPage = serde_json::from_slice(body)?;
            (page.flatten(key)?, page.next_page_token)
        }
        None => {
            let page: RawPage = serde_json::from_slice(body)?;
            (page.items, page.next_page_token)
        }
    };
    let location = listing.location.as_str();
    let at = |name: &str| (location.to_string(), name.to_string());
    for raw in items {
        let filed = match listing.collection {
            Listed::Routes => decode(raw).map(|r: Route| {
                let held = previous.and_then(|p| p.routes.get(&r.name));
                into.routes.insert(r.name.clone(), shared(held, r));
            }),
            Listed::Firewalls => decode(raw).map(|f: Firewall| {
                let held = previous.and_then(|p| p.firewalls.get(&f.name));
                into.firewalls.insert(f.name.clone(), shared(held, f));
            }),
            Listed::Addresses => decode(raw).map(|a: Address| {
                into.addresses.insert(at(&a.name), a);
            }),
            Listed::ForwardingRules => decode(raw).map(|f: ForwardingRule| {
                into.forwarding_rules.insert(at(&f.name), f);
            }),
            Listed::TargetInstances => decode(raw).map(|t: TargetInstance| {
                // From an aggregated list: the zone is the item's own.
                let zone = match t.zone.as_deref() {
                    Some(zone) if location.is_empty() => last_segment(zone).to_string(),
                    _ => location.to_string(),
                };
                into.target_instances.insert((zone, t.name.clone()), t);
            }),
            Listed::Subnetworks => decode(raw).map(|s: Subnetwork| {
                into.subnetworks.insert(at(&s.name), s);
            }),
            Listed::Instances => decode(raw).map(|i: Instance| {
                let zone = if i.zone.is_empty() {
                    location.to_string()
                } else {
                    last_segment(&i.zone).to_string()
                };
                into.instances.insert((zone, i.name.clone()), i);
            }),
            Listed::Balancers(collection) => decode(raw).map(|body: serde_json::Value| {
                let name = body["name"].as_str().unwrap_or_default().to_string();
                // Groups come from an aggregated list: their zone is their own.
                let location = match body["zone"].as_str() {
                    Some(zone) if collection == Collection::InstanceGroups => {
                        last_segment(zone).to_string()
                    }
                    _ => location.to_string(),
                };
                into.balancers.insert(
                    Target {
                        collection,
                        location,
                        name,
                    },
                    body,
                );
            }),
            // Filed above, page by page.
            Listed::Log => Ok(()),
            Listed::Operations => decode(raw).map(|op: OperationInFlight| {
                if last_segment(&op.target_link).starts_with(prefix)
                    && sent_before(op.insert_time.as_deref(), started)
                {
                    *operations_in_flight += 1;
                }
            }),
        };
        if let Err(error) = filed {
            listing.skipped += 1;
            listing.first_skip.get_or_insert_with(|| error.to_string());
        }
    }
    Ok(next)
}

fn decode<T: serde::de::DeserializeOwned>(raw: &RawValue) -> Result<T, serde_json::Error> {
    serde_json::from_str(raw.get())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gcp::types::Instance;

    /// Files `body` as a page of `listing` for the prefix `adc-`, counting nothing in flight.
    fn file(listing: &mut Listing, body: &str, into: &mut Snapshot) -> Option<String> {
        let ours = ("adc-", std::time::SystemTime::now());
        file_page(listing, body.as_bytes(), ours, (into, None), &mut 0).unwrap()
    }

    #[test]
    fn unchanged_routes_are_shared_with_the_inventory_being_replaced() {
        let page = |priority: u32| {
            serde_json::json!({"items": [
                {"name": "adc-a", "network": "n", "destRange": "10.0.0.1/32", "priority": 1000},
                {"name": "adc-b", "network": "n", "destRange": "10.0.0.2/32", "priority": priority}
            ]})
            .to_string()
        };
        let listing = || {
            Listing::new(
                "projects/p/global/routes".into(),
                "",
                false,
                "compute.routes.list",
            )
        };
        let ours = ("adc-", std::time::SystemTime::now());
        let mut previous = Snapshot::default();
        file_page(
            &mut listing(),
            page(900).as_bytes(),
            ours,
            (&mut previous, None),
            &mut 0,
        )
        .unwrap();
        let mut fresh = Snapshot::default();
        file_page(
            &mut listing(),
            page(800).as_bytes(),
            ours,
            (&mut fresh, Some(&previous)),
            &mut 0,
        )
        .unwrap();
        assert!(
            Arc::ptr_eq(&fresh.routes["adc-a"], &previous.routes["adc-a"]),
            "unchanged: shared"
        );
        assert!(
            !Arc::ptr_eq(&fresh.routes["adc-b"], &previous.routes["adc-b"]),
            "changed: its own"
        );
        assert_eq!(fresh.routes["adc-b"].priority, 800);
    }

    #[test]
    fn a_page_is_filed_item_by_item_and_an_odd_item_is_skipped() {
        let mut listing = Listing::new(
            "projects/p/global/routes".into(),
            "",
            false,
            "compute.routes.list",
        );
        let body = serde_json::json!({
            "items": [
                {"name": "adc-a", "network": "n", "destRange": "10.0.0.1/32", "priority": 1000,
                 "nextHopInstance": "zones/z/instances/se-1", "unknownField": {"deep": [1, 2]}},
                {"name": "odd", "priority": "not a number"},
                {"name": "adc-b", "network": "n", "destRange": "10.0.0.2/32", "priority": 900}
            ],
            "nextPageToken": "next"
        })
        .to_string();
        let mut into = Snapshot::default();
        let next = file(&mut listing, &body, &mut into);
        assert_eq!(next.as_deref(), Some("next"));
        assert_eq!(into.routes.keys().collect::<Vec<_>>(), ["adc-a", "adc-b"]);
        assert_eq!(into.routes["adc-b"].priority, 900);
        assert_eq!(listing.skipped, 1);
        assert!(listing.first_skip.unwrap().contains("invalid type"));

        // Instances are keyed by the zone they name, else the listing's own.
        let mut listing = Listing::instances("p", "zone-b");
        let body = r#"{"items": [{"name": "se-1", "zone": "https://x/zones/zone-a", "status": "RUNNING"},
                                 {"name": "se-2", "status": "TERMINATED"}]}"#;
        let next = file(&mut listing, body, &mut into);
        assert_eq!(next, None);
        assert!(into.instance("zone-a", "se-1").unwrap().is_running());
        assert_eq!(
            into.instance("zone-b", "se-2").unwrap().status,
            "TERMINATED"
        );

        // Operations in flight are counted when they are on the prefix and sent earlier.
        let mut listing = operations_in_flight("p");
        let started = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
        let body = serde_json::json!({"items": {
            "global": {"operations": [
                {"targetLink": "x/global/routes/adc-a", "insertTime": "2027-01-15T00:00:00Z"},
                {"targetLink": "x/global/routes/other", "insertTime": "2027-01-15T00:00:00Z"}]},
            "zones/z": {"operations": [
                {"targetLink": "x/zones/z/instances/adc-b", "insertTime": "2027-01-15T09:00:00Z"},
                {"targetLink": "x/zones/z/targetInstances/adc-c"}]},
            "regions/r": {"warning": {"code": "NO_RESULTS_ON_PAGE"}}
        }})
        .to_string();
        let mut in_flight = 0;
        file_page(
            &mut listing,
            body.as_bytes(),
            ("adc-", started),
            (&mut into, None),
            &mut in_flight,
        )
        .unwrap();
        assert_eq!(in_flight, 2, "adc-a (earlier) and adc-c (no insertTime)");
    }

    #[test]
    fn ilb_pieces_are_filed_whole_groups_by_their_own_zone() {
        let mut into = Snapshot::default();
        let mut groups = Listing {
            aggregated: Some("instanceGroups"),
            ..Listing::new(
                "projects/p/aggregated/instanceGroups".into(),
                "",
                true,
                "compute.instanceGroups.aggregatedList",
            )
        };
        let body = serde_json::json!({"items": {
            "zones/us-central1-a": {"instanceGroups": [
                {"name": "adc-ig1", "zone": "https://x/projects/p/zones/us-central1-a", "size": 1}]},
            "zones/us-central1-b": {"warning": {"code": "NO_RESULTS_ON_PAGE"}}
        }})
        .to_string();
        assert_eq!(file(&mut groups, &body, &mut into), None);
        let group = Target {
            collection: Collection::InstanceGroups,
            location: "us-central1-a".into(),
            name: "adc-ig1".into(),
        };
        assert!(into.group_ready(&group));
        let mut services = Listing::new(
            "projects/p/regions/us-central1/backendServices".into(),
            "us-central1",
            true,
            "compute.regionBackendServices.list",
        );
        let body = r#"{"items": [{"name": "adc-x-bs-tcp", "description": "d", "backends": []}]}"#;
        file(&mut services, body, &mut into);
        let service = Target {
            collection: Collection::BackendServices,
            location: "us-central1".into(),
            name: "adc-x-bs-tcp".into(),
        };
        assert!(into.holds(&service));
        assert_eq!(into.description_of(&service), Some("d"));
        assert_eq!(into.balancers(Collection::BackendServices).count(), 1);
        assert_eq!(into.balancers(Collection::HealthChecks).count(), 0);
    }

    #[test]
    fn target_instances_of_an_aggregated_list_are_filed_by_their_own_zone() {
        let mut into = Snapshot::default();
        let mut listing = Listing {
            aggregated: Some("targetInstances"),
            ..Listing::new(
                "projects/p/aggregated/targetInstances".into(),
                "",
                true,
                "compute.targetInstances.aggregatedList",
            )
        };
        let body = serde_json::json!({"items": {
            "zones/us-central1-a": {"targetInstances": [{"name": "adc-ti-1",
                "instance": "zones/us-central1-a/instances/se-1",
                "zone": "https://x/projects/p/zones/us-central1-a"}]},
            "zones/us-central1-c": {"targetInstances": [{"name": "adc-ti-2",
                "instance": "zones/us-central1-c/instances/se-3",
                "zone": "https://x/projects/p/zones/us-central1-c"}]},
            "zones/us-central1-b": {"warning": {"code": "NO_RESULTS_ON_PAGE"}}
        }})
        .to_string();
        assert_eq!(file(&mut listing, &body, &mut into), None);
        let keys: Vec<_> = into.target_instances.keys().cloned().collect();
        assert_eq!(
            keys,
            [
                ("us-central1-a".to_string(), "adc-ti-1".to_string()),
                ("us-central1-c".to_string(), "adc-ti-2".to_string()),
            ]
        );
    }

    #[test]
    fn a_log_listing_reads_newest_first_and_stops_at_the_horizon() {
        let horizon = Horizon {
            since: Some("2026-12-07T10:00:00Z".parse().unwrap()),
            seen: Default::default(),
        };
        let mut listing = Listing::log("p", horizon, 4);
        let call = listing.call("-");
        let query: std::collections::HashMap<_, _> = call.query.iter().cloned().collect();
        assert_eq!(call.path, "projects/p/global/operations");
        assert_eq!(call.method_name, "compute.globalOperations.list");
        assert_eq!(query["orderBy"], "creationTimestamp desc");
        assert_eq!(query["fields"], LOG_FIELDS);
        assert!(!query.contains_key("filter"), "the log is not filtered");
        assert_eq!(
            call.group,
            RateGroup::OperationRead,
            "as Compute charges it"
        );
        let mut into = Snapshot::default();
        // A page that does not reach the horizon: the next one is asked for.
        let page = r#"{"items": [{"name": "o2", "targetLink": "projects/p/global/routes/adc-a",
            "insertTime": "2026-12-07T10:05:00Z", "status": "DONE"}], "nextPageToken": "t2"}"#;
        assert_eq!(file(&mut listing, page, &mut into), Some("t2".to_string()));
        // One that does: the read ends though Compute has more.
        let page = r#"{"items": [{"name": "o1", "targetLink": "projects/p/global/firewalls/adc-f",
            "insertTime": "2026-12-07T09:05:00Z", "status": "DONE"}], "nextPageToken": "t3"}"#;
        assert_eq!(file(&mut listing, page, &mut into), None);
        let read = log_read(vec![listing]);
        assert!(read.complete);
        assert_eq!(read.routes.len(), 1);
        assert!(read.firewalls.is_empty(), "older than the horizon");
        assert!(into.routes.is_empty(), "a log page files no resource");
    }

    #[test]
    fn operations_count_as_earlier_by_their_insert_time() {
        let started =
            std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
        // 2027-01-15T08:00:00Z is 1_800_000_000 s after the epoch.
        assert!(sent_before(Some("2027-01-15T00:59:59.000-07:00"), started));
        assert!(!sent_before(Some("2027-01-15T01:00:01.000-07:00"), started));
        assert!(sent_before(None, started), "unreadable: earlier");
    }

    #[test]
    fn the_poll_lists_what_is_down_and_confirms_only_what_that_leaves_open() {
        let names = vec!["se-1".to_string(), "se.2".to_string()];
        assert_eq!(
            names_filter(&names).as_deref(),
            Some("name eq (se-1|se\\.2)")
        );
        assert_eq!(names_filter(&[]), None);
        let call = Listing::aggregated_instances("p", Some(NOT_RUNNING.into())).call("-");
        assert_eq!(call.path, "projects/p/aggregated/instances");
        assert_eq!(call.method_name, "compute.instances.aggregatedList");
        let query: std::collections::BTreeMap<_, _> = call.query.iter().cloned().collect();
        assert_eq!(query["filter"], "status != RUNNING");
        assert_eq!(query["returnPartialSuccess"], "true");
        assert!(query["fields"].starts_with("items/*/instances(name,zone,status"));

        let instance = |name: &str, status: &str| Instance {
            name: name.into(),
            status: status.into(),
            ..Instance::default()
        };
        let mut snapshot = Snapshot::default();
        for (name, status) in [
            ("up", "RUNNING"),
            ("was-down", "TERMINATED"),
            ("still-down", "STOPPING"),
        ] {
            snapshot
                .instances
                .insert(("z".into(), name.into()), instance(name, status));
        }
        let zones = vec!["z".to_string()];
        let mut names: Vec<String> = ["new", "still-down", "up", "was-down"]
            .map(String::from)
            .into();
        names.sort();
        let mut down = ByLocation::new();
        down.insert(
            ("z".into(), "still-down".into()),
            instance("still-down", "TERMINATED"),
        );
        // up: RUNNING and not listed as down, still RUNNING. still-down: listed. was-down: not
        // listed any more, back or gone. new: not held, created since or never there.
        assert_eq!(
            to_confirm(&snapshot, &zones, &names, &down),
            ["new", "was-down"]
        );
    }

    #[test]
    fn prefix_filter_is_an_anchored_regex() {
        assert_eq!(prefix_filter("adc-"), "name eq adc-.*");
        assert_eq!(prefix_filter("a.b"), "name eq a\\.b.*");
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
