//! The inventory as a data store: applied mutations, refresh journals, announced changes and
//! the questions reconciles ask of it.

use super::*;

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
        InventoryEvent::Completed(Target::route("adc-r"))
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
            routes: BTreeMap::from([("adc-r".to_string(), serde_json::from_value(route).unwrap())]),
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

fn owned_route(name: &str, description: &str) -> (String, std::sync::Arc<Route>) {
    let body = serde_json::json!({"name": name, "network": "global/networks/default",
        "destRange": "10.0.0.1/32", "priority": 2000, "nextHopIp": "10.128.0.9",
        "description": description});
    (name.to_string(), serde_json::from_value(body).unwrap())
}

#[test]
fn owned_resources_are_found_by_name_prefix_and_marker() {
    let web = Owner::new("c", "cloud", "VirtualService", "ns", "web");
    let api = Owner::new("c", "cloud", "VirtualService", "ns", "api");
    let web_prefix = web.name_prefix("adc-");
    let mut snapshot = Snapshot::default();
    snapshot.routes.extend([
        owned_route(&format!("{web_prefix}aaaa"), &web.description()),
        owned_route(&format!("{web_prefix}bbbb"), &web.description()),
        // The name looks like web's, the marker is not ours: never owned.
        owned_route(&format!("{web_prefix}cccc"), "made by hand"),
        owned_route(
            &format!("{}aaaa", api.name_prefix("adc-")),
            &api.description(),
        ),
    ]);
    let owned: Vec<String> = snapshot
        .owned_by(&web, "adc-")
        .into_iter()
        .map(|(t, _)| t.name)
        .collect();
    assert_eq!(
        owned,
        [format!("{web_prefix}aaaa"), format!("{web_prefix}bbbb")]
    );
    assert_eq!(snapshot.owned_by(&api, "adc-").len(), 1);
    assert!(snapshot.owned_by(&web, "other-").is_empty());
}

#[test]
fn ilb_pieces_are_owned_and_a_group_is_ready_once_its_engine_joined() {
    let inventory = Inventory::new();
    let owner = Owner::new("c1", "cloud", "VirtualService", "ns", "web");
    let prefix = owner.name_prefix("adc-");
    let regional = |collection, suffix: &str| Target {
        collection,
        location: "us-central1".into(),
        name: format!("{prefix}{suffix}"),
    };
    let described =
        |name: &str| serde_json::json!({"name": name, "description": owner.description()});
    let service = regional(Collection::BackendServices, "bs-tcp");
    let rule = regional(Collection::ForwardingRules, "fr-tcp");
    inventory.apply(&Mutation::insert(service.clone(), described(&service.name)));
    inventory.apply(&Mutation::insert(rule.clone(), described(&rule.name)));
    let group = Target {
        collection: Collection::InstanceGroups,
        location: "us-central1-a".into(),
        name: "adc-shared-ig1".into(),
    };
    inventory.apply(&Mutation::insert(
        group.clone(),
        serde_json::json!({"name": "adc-shared-ig1"}),
    ));
    let snapshot = inventory.snapshot();
    let mut owned: Vec<Target> = snapshot
        .owned_by(&owner, "adc-")
        .into_iter()
        .map(|(t, _)| t)
        .collect();
    owned.sort();
    assert_eq!(owned, vec![rule.clone(), service.clone()]);
    assert!(
        snapshot
            .owners("c1")
            .iter()
            .any(|(o, t)| o == &owner && t == &rule)
    );
    assert!(!snapshot.group_ready(&group), "no engine yet");
    inventory.apply(&Mutation {
        target: group.clone(),
        change: Change::AddInstances(vec!["zones/us-central1-a/instances/se-1".into()]),
        network: None,
    });
    assert!(inventory.read(|s| s.group_ready(&group)));
    inventory.apply(&Mutation::patch(
        service.clone(),
        serde_json::json!({"backends": [{"group": "g"}]}),
        None,
    ));
    assert_eq!(
        inventory.read(|s| s.json_of(&service)).unwrap()["backends"][0]["group"],
        "g"
    );
    inventory.apply(&Mutation::delete(service.clone(), None));
    assert!(!inventory.read(|s| s.holds(&service)));
}
