//! Loading the inventory: paged list calls (500 per page) of every collection the operator
//! writes (by its name prefix; firewall rules whole, and routes too when the cloud adopts),
//! the subnetworks of its regions and the instances of the zones
//! objects name, all through the read path, pages of every collection travelling together.

use reqwest::Method;
use serde_json::Value;

use super::budget::{Lane, RateGroup};
use super::client::Call;
use super::error::GcpError;
use super::inventory::{ByLocation, Inventory, Snapshot, insert};
use super::reader::Reader;
use super::settings::EngineSettings;
use super::types::{AggregatedPage, Instance, ListPage, last_segment};

/// What a refresh reads from and writes into.
pub(crate) struct Source<'a> {
    pub reader: &'a Reader,
    pub inventory: &'a Inventory,
    pub settings: &'a EngineSettings,
    /// When the engine started: operations inserted before it are not its own.
    pub started: std::time::SystemTime,
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
/// Names per `name eq (a|b|…)` filter: a URL stays well under its limits (names are at most
/// 63 characters).
const MAX_NAMES_PER_FILTER: usize = 30;
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
    own_filter: Option<String>,
    /// An `aggregatedList`: its pages hold scoped lists, the items under this key.
    aggregated: Option<&'static str>,
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
            aggregated: None,
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
        let mut query = vec![("maxResults".to_string(), "500".to_string())];
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
/// time. With `operations`, also counts the operations still running on resources of the
/// operator's prefix that were sent before this engine started (a former leader's or
/// incarnation's): a resource they insert is not listed until they finish, so the caller
/// refreshes again soon.
pub(crate) async fn refresh(
    source: &Source<'_>,
    zones: &[String],
    operations: bool,
) -> Result<usize, GcpError> {
    let project = &source.settings.project;
    let mut listings = vec![
        Listing::new(
            format!("projects/{project}/global/routes"),
            "",
            !source.settings.list_foreign,
            "compute.routes.list",
        ),
        Listing::new(
            format!("projects/{project}/global/firewalls"),
            "",
            // Every rule, whatever its name: an adopted rule keeps the name it was made
            // with, and stays the operator's after adoption is turned off. A project holds
            // a few hundred rules (its FIREWALLS quota): a page or two.
            false,
            "compute.firewalls.list",
        ),
        Listing::new(
            format!("projects/{project}/global/addresses"),
            "",
            true,
            "compute.globalAddresses.list",
        ),
    ];
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
        listings.push(operations_in_flight(project));
    }
    let ticket = source.inventory.begin_refresh();
    let mut in_flight = 0;
    let fresh = load(
        source,
        listings,
        Lane::Bulk,
        Snapshot {
            loaded: true,
            ..Snapshot::default()
        },
        &mut in_flight,
    )
    .await?;
    source.inventory.replace(fresh, &ticket);
    Ok(in_flight)
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
            .chunks(MAX_NAMES_PER_FILTER)
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
    let mut unsure: Vec<String> = names
        .iter()
        .filter(|name| {
            let held: Vec<(&String, &Instance)> = zones
                .iter()
                .filter_map(|zone| {
                    snapshot
                        .instances
                        .get(&(zone.clone(), (*name).clone()))
                        .map(|i| (zone, i))
                })
                .collect();
            held.is_empty()
                || held.iter().any(|(zone, instance)| {
                    !instance.is_running()
                        && !down.contains_key(&((*zone).clone(), (*name).clone()))
                })
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
    mut listings: Vec<Listing>,
    lane: Lane,
    mut into: Snapshot,
    operations_in_flight: &mut usize,
) -> Result<Snapshot, GcpError> {
    let reader = source.reader;
    let filter = prefix_filter(&source.settings.resource_prefix);
    // Consecutive failed attempts at the page each listing is on.
    let mut failures = vec![0u32; listings.len()];
    while listings.iter().any(|l| !l.done) {
        if reader.is_stopped() {
            return Err(GcpError::Shutdown);
        }
        let open: Vec<usize> = (0..listings.len()).filter(|i| !listings[*i].done).collect();
        let granted = reader
            .budget
            .acquire(RateGroup::Read, "", open.len(), lane)
            .await;
        let round: Vec<usize> = open.into_iter().take(granted).collect();
        let calls: Vec<Call> = round.iter().map(|i| listings[*i].call(&filter)).collect();
        let answers = reader.exchange(calls).await;
        let mut pause = None;
        for (index, answer) in round.into_iter().zip(answers) {
            let listing = &mut listings[index];
            match answer {
                Ok(answer) => {
                    failures[index] = 0;
                    let decode = |err: serde_json::Error| {
                        GcpError::Decode(format!("{}: {err}", listing.path))
                    };
                    let next = match listing.aggregated {
                        Some(key) => {
                            let page: AggregatedPage =
                                serde_json::from_slice(&answer.body).map_err(decode)?;
                            let next = page.next_page_token.clone();
                            listing.items.extend(page.flatten(key));
                            next
                        }
                        None => {
                            let page: ListPage<Value> =
                                serde_json::from_slice(&answer.body).map_err(decode)?;
                            listing.items.extend(page.items);
                            page.next_page_token
                        }
                    };
                    match next {
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
                    let wait = reader.after_failure(err, &mut failures[index])?;
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
                    if target.starts_with(&source.settings.resource_prefix)
                        && sent_before(&item, source.started)
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
    let prefix = &source.settings.resource_prefix;
    into.adopted_firewalls = into
        .firewalls
        .iter()
        .filter(|(name, f)| {
            !name.starts_with(prefix.as_str())
                && crate::plan::owner::marker(&f.description).is_some()
        })
        .map(|(name, _)| name.clone())
        .collect();
    Ok(into)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gcp::types::Instance;

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
