//! Internal passthrough load balancing and Shared VPC over HTTP: instance groups, regional health
//! checks, regional backend services with getHealth, internal forwarding rules, and a host with
//! a service project.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod support;

use reqwest::Method;
use serde_json::{Value, json};
use support::Emulator;

const LINK: &str = "https://www.googleapis.com/compute/v1/projects/";
const Z: &str = "us-central1-a";
const R: &str = "us-central1";

/// `lb` (standalone), `host` (Shared VPC host) and `svc` (its service project), and `other`
/// (attached to nothing).
fn world(extra_svc: &str) -> String {
    format!(
        "projects:
  - id: lb
    networks:
      - name: default
        subnetworks:
          - {{name: default, region: us-central1, ipCidrRange: 10.128.0.0/20}}
          - {{name: second, region: us-central1, ipCidrRange: 10.129.0.0/20}}
          - {{name: eu, region: europe-west1, ipCidrRange: 10.132.0.0/20}}
    instances:
      - {{name: vm-1, zone: us-central1-a, networkIP: 10.128.0.10, tags: [lb]}}
      - {{name: vm-2, zone: us-central1-a, networkIP: 10.128.0.11, tags: [lb]}}
      - {{name: vm-3, zone: us-central1-a, networkIP: 10.128.0.12}}
      - {{name: vm-b, zone: us-central1-b, networkIP: 10.128.0.13}}
      - {{name: vm-s, zone: us-central1-a, subnetwork: second, networkIP: 10.129.0.10}}
  - id: host
    quotas: {{ROUTES: 1}}
    networks:
      - name: shared
        subnetworks:
          - {{name: shared-sub, region: us-central1, ipCidrRange: 10.10.0.0/24}}
    instances:
      - {{name: host-vm, zone: us-central1-a, network: shared, networkIP: 10.10.0.2}}
  - id: svc
    networkProject: host
{extra_svc}
    instances:
      - {{name: svc-1, zone: us-central1-a, network: shared, networkIP: 10.10.0.3, tags: [lb]}}
      - {{name: svc-2, zone: us-central1-a, network: shared, networkIP: 10.10.0.4, tags: [lb]}}
  - id: other
    networks:
      - name: default
        subnetworks:
          - {{name: default, region: us-central1, ipCidrRange: 10.200.0.0/20}}
"
    )
}

async fn ok(emu: &Emulator, method: Method, path: &str, body: Value) -> Value {
    let (status, op) = emu.at(method, path, Some(body)).await;
    assert_eq!(status, 200, "{path}: {op}");
    assert_eq!(op["kind"], "compute#operation", "{op}");
    assert!(op.get("error").is_none(), "{path}: {op}");
    op
}

async fn refused(emu: &Emulator, method: Method, path: &str, body: Value) -> (u16, String, String) {
    let (status, err) = emu.at(method, path, Some(body)).await;
    assert_ne!(status, 200, "{path} was accepted: {err}");
    (
        status,
        err["error"]["errors"][0]["reason"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        err["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

async fn get(emu: &Emulator, path: &str) -> Value {
    let (status, body) = emu.at(Method::GET, path, None).await;
    assert_eq!(status, 200, "{path}: {body}");
    body
}

fn instances(project: &str, names: &[&str]) -> Value {
    json!({"instances": names.iter()
        .map(|n| json!({"instance": format!("{LINK}{project}/zones/{Z}/instances/{n}")}))
        .collect::<Vec<_>>()})
}

fn group_link(project: &str, name: &str) -> String {
    format!("{LINK}{project}/zones/{Z}/instanceGroups/{name}")
}

/// A group of `members` in `lb`, a TCP health check `hc` on port 80, and a firewall rule
/// admitting the probes to instances tagged `lb`.
async fn setup_lb(emu: &Emulator, members: &[&str]) {
    ok(
        emu,
        Method::POST,
        &format!("lb/zones/{Z}/instanceGroups"),
        json!({"name": "ig-a"}),
    )
    .await;
    ok(
        emu,
        Method::POST,
        &format!("lb/zones/{Z}/instanceGroups/ig-a/addInstances"),
        instances("lb", members),
    )
    .await;
    ok(
        emu,
        Method::POST,
        &format!("lb/regions/{R}/healthChecks"),
        json!({"name": "hc", "type": "TCP", "tcpHealthCheck": {"port": 80}}),
    )
    .await;
    ok(
        emu,
        Method::POST,
        "lb/global/firewalls",
        json!({"name": "allow-probes", "network": "global/networks/default",
               "sourceRanges": ["35.191.0.0/16", "130.211.0.0/22"],
               "allowed": [{"IPProtocol": "tcp", "ports": ["80"]}], "targetTags": ["lb"]}),
    )
    .await;
}

fn backend_service(name: &str, groups: &[&str]) -> Value {
    json!({
        "name": name, "loadBalancingScheme": "INTERNAL", "protocol": "TCP",
        "healthChecks": [format!("{LINK}lb/regions/{R}/healthChecks/hc")],
        "backends": groups.iter().map(|g| json!({"group": group_link("lb", g)})).collect::<Vec<_>>(),
    })
}

fn internal_rule(name: &str, service: &str, extra: Value) -> Value {
    let mut body = json!({
        "name": name, "loadBalancingScheme": "INTERNAL",
        "backendService": format!("regions/{R}/backendServices/{service}"),
        "subnetwork": format!("regions/{R}/subnetworks/default"),
        "ports": ["80"],
    });
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            body.as_object_mut().unwrap().remove(k);
        } else {
            body[k] = v.clone();
        }
    }
    body
}

async fn health(emu: &Emulator, service: &str, group: &str) -> Vec<(String, String, String)> {
    let (status, body) = emu
        .at(
            Method::POST,
            &format!("lb/regions/{R}/backendServices/{service}/getHealth"),
            Some(json!({"group": format!("zones/{Z}/instanceGroups/{group}")})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["kind"], "compute#backendServiceGroupHealth");
    body["healthStatus"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|s| {
                    (
                        s["instance"]
                            .as_str()
                            .unwrap()
                            .rsplit('/')
                            .next()
                            .unwrap()
                            .to_string(),
                        s["forwardingRule"]
                            .as_str()
                            .unwrap()
                            .rsplit('/')
                            .next()
                            .unwrap()
                            .to_string(),
                        s["healthState"].as_str().unwrap().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn the_whole_internal_load_balancer_path() {
    let emu = Emulator::start(&world(""), &[]);
    // Group: zonal operations, membership, listInstances.
    let op = ok(
        &emu,
        Method::POST,
        &format!("lb/zones/{Z}/instanceGroups"),
        json!({"name": "ig-a",
        "namedPorts": [{"name": "http", "port": 80}]}),
    )
    .await;
    assert_eq!(op["zone"], format!("{LINK}lb/zones/{Z}"));
    let op = ok(
        &emu,
        Method::POST,
        &format!("lb/zones/{Z}/instanceGroups/ig-a/addInstances"),
        instances("lb", &["vm-1", "vm-2"]),
    )
    .await;
    assert_eq!(op["operationType"], "addInstances");
    let group = get(&emu, &format!("lb/zones/{Z}/instanceGroups/ig-a")).await;
    assert_eq!(group["size"], 2);
    assert_eq!(
        group["network"],
        format!("{LINK}lb/global/networks/default")
    );
    assert_eq!(
        group["subnetwork"],
        format!("{LINK}lb/regions/{R}/subnetworks/default")
    );
    assert_eq!(group["zone"], format!("{LINK}lb/zones/{Z}"));
    assert!(group["fingerprint"].is_string());
    let (_, listed) = emu
        .at(
            Method::POST,
            &format!("lb/zones/{Z}/instanceGroups/ig-a/listInstances?maxResults=1"),
            Some(json!({})),
        )
        .await;
    assert_eq!(listed["kind"], "compute#instanceGroupsListInstances");
    assert_eq!(
        listed["items"][0]["instance"],
        format!("{LINK}lb/zones/{Z}/instances/vm-1")
    );
    assert_eq!(listed["items"][0]["status"], "RUNNING");
    assert_eq!(
        listed["items"][0]["namedPorts"],
        json!([{"name": "http", "port": 80}])
    );
    let token = listed["nextPageToken"].as_str().unwrap();
    let (_, second) = emu
        .at(
            Method::POST,
            &format!("lb/zones/{Z}/instanceGroups/ig-a/listInstances?pageToken={token}"),
            Some(json!({"instanceState": "ALL"})),
        )
        .await;
    assert_eq!(
        second["items"][0]["instance"],
        format!("{LINK}lb/zones/{Z}/instances/vm-2")
    );
    assert!(second.get("nextPageToken").is_none());

    // A second group for the failover backend, the health check and the firewall.
    ok(
        &emu,
        Method::POST,
        &format!("lb/zones/{Z}/instanceGroups"),
        json!({"name": "ig-f"}),
    )
    .await;
    ok(
        &emu,
        Method::POST,
        &format!("lb/zones/{Z}/instanceGroups/ig-f/addInstances"),
        instances("lb", &["vm-3"]),
    )
    .await;
    let op = ok(
        &emu,
        Method::POST,
        &format!("lb/regions/{R}/healthChecks"),
        json!({"name": "hc", "type": "TCP", "tcpHealthCheck": {"port": 80}}),
    )
    .await;
    assert_eq!(op["region"], format!("{LINK}lb/regions/{R}"));
    let hc = get(&emu, &format!("lb/regions/{R}/healthChecks/hc")).await;
    assert_eq!(
        (
            hc["checkIntervalSec"].clone(),
            hc["timeoutSec"].clone(),
            hc["healthyThreshold"].clone(),
            hc["unhealthyThreshold"].clone()
        ),
        (json!(5), json!(5), json!(2), json!(2))
    );
    assert_eq!(
        hc["tcpHealthCheck"],
        json!({"port": 80, "proxyHeader": "NONE", "portSpecification": "USE_FIXED_PORT"})
    );

    // The backend service: one normal and one failover backend, a failover policy.
    let mut body = backend_service("bs", &["ig-a", "ig-f"]);
    body["backends"][1]["failover"] = json!(true);
    body["failoverPolicy"] = json!({"failoverRatio": 0.5, "dropTrafficIfUnhealthy": true, "disableConnectionDrainOnFailover": true});
    ok(
        &emu,
        Method::POST,
        &format!("lb/regions/{R}/backendServices"),
        body,
    )
    .await;
    let bs = get(&emu, &format!("lb/regions/{R}/backendServices/bs")).await;
    assert_eq!(
        bs["backends"][0],
        json!({"group": group_link("lb", "ig-a"), "balancingMode": "CONNECTION"})
    );
    assert_eq!(bs["backends"][1]["failover"], true);
    assert_eq!(bs["failoverPolicy"]["failoverRatio"], 0.5);
    assert_eq!(bs["protocol"], "TCP");
    // No forwarding rule yet: no health status.
    assert!(health(&emu, "bs", "ig-a").await.is_empty());

    // Rules: ports, and allPorts on another IP; an address named by one of them.
    ok(
        &emu,
        Method::POST,
        &format!("lb/regions/{R}/addresses"),
        json!({"name": "vip", "addressType": "INTERNAL",
        "subnetwork": format!("regions/{R}/subnetworks/default"), "address": "10.128.0.100"}),
    )
    .await;
    ok(
        &emu,
        Method::POST,
        &format!("lb/regions/{R}/forwardingRules"),
        internal_rule(
            "fr-ports",
            "bs",
            json!({"IPAddress": format!("regions/{R}/addresses/vip"), "ports": ["80", "443"]}),
        ),
    )
    .await;
    ok(
        &emu,
        Method::POST,
        &format!("lb/regions/{R}/forwardingRules"),
        internal_rule("fr-all", "bs", json!({"ports": null, "allPorts": true})),
    )
    .await;
    let rule = get(&emu, &format!("lb/regions/{R}/forwardingRules/fr-ports")).await;
    assert_eq!(rule["IPAddress"], "10.128.0.100");
    assert_eq!(
        rule["backendService"],
        format!("{LINK}lb/regions/{R}/backendServices/bs")
    );
    assert_eq!(rule["network"], format!("{LINK}lb/global/networks/default"));
    assert_eq!(rule["ports"], json!(["80", "443"]));
    let all = get(&emu, &format!("lb/regions/{R}/forwardingRules/fr-all")).await;
    assert_eq!(all["allPorts"], true);
    assert!(all["IPAddress"].as_str().unwrap().starts_with("10.128."));
    let vip = get(&emu, &format!("lb/regions/{R}/addresses/vip")).await;
    assert_eq!(vip["status"], "IN_USE");
    assert_eq!(
        vip["users"],
        json!([format!("{LINK}lb/regions/{R}/forwardingRules/fr-ports")])
    );
    // Filterable on the new fields.
    let (_, filtered) = emu
        .at(
            Method::GET,
            &format!("lb/regions/{R}/forwardingRules?filter=allPorts%20%3D%20true"),
            None,
        )
        .await;
    assert_eq!(filtered["items"].as_array().unwrap().len(), 1);
    let (_, filtered) = emu
        .at(
            Method::GET,
            "lb/aggregated/forwardingRules?filter=backendService%20eq%20.*/bs",
            None,
        )
        .await;
    assert_eq!(
        filtered["items"][format!("regions/{R}")]["forwardingRules"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // getHealth: one entry per (member, rule); HEALTHY with the probe firewall.
    ok(&emu, Method::POST, "lb/global/firewalls", json!({"name": "allow-probes", "network": "global/networks/default",
        "sourceRanges": ["35.191.0.0/16", "130.211.0.0/22"], "allowed": [{"IPProtocol": "tcp", "ports": ["80"]}], "targetTags": ["lb"]})).await;
    let states = health(&emu, "bs", "ig-a").await;
    assert_eq!(
        states,
        [
            ("vm-1".into(), "fr-all".into(), "HEALTHY".into()),
            ("vm-1".into(), "fr-ports".into(), "HEALTHY".into()),
            ("vm-2".into(), "fr-all".into(), "HEALTHY".into()),
            ("vm-2".into(), "fr-ports".into(), "HEALTHY".into()),
        ]
    );
    let (_, raw) = emu
        .at(
            Method::POST,
            &format!("lb/regions/{R}/backendServices/bs/getHealth"),
            Some(json!({"group": group_link("lb", "ig-a")})),
        )
        .await;
    let first = &raw["healthStatus"][0];
    assert_eq!(first["ipAddress"], "10.128.0.10");
    assert_eq!(first["forwardingRuleIp"], all["IPAddress"]);
    assert!(first.get("port").is_none());
    // vm-3 carries no `lb` tag: the firewall does not admit the probes to it.
    assert!(
        health(&emu, "bs", "ig-f")
            .await
            .iter()
            .all(|(_, _, s)| s == "UNHEALTHY")
    );

    // Stopped → UNHEALTHY; the admin mark → UNHEALTHY, cleared → HEALTHY.
    ok(
        &emu,
        Method::POST,
        &format!("lb/zones/{Z}/instances/vm-1/stop"),
        json!({}),
    )
    .await;
    let states = health(&emu, "bs", "ig-a").await;
    assert!(
        states
            .iter()
            .filter(|(i, _, _)| i == "vm-1")
            .all(|(_, _, s)| s == "UNHEALTHY")
    );
    assert!(
        states
            .iter()
            .filter(|(i, _, _)| i == "vm-2")
            .all(|(_, _, s)| s == "HEALTHY")
    );
    emu.admin(
        Method::POST,
        "health",
        Some(json!({"project": "lb", "zone": Z, "instance": "vm-2", "healthy": false})),
    )
    .await;
    assert!(
        health(&emu, "bs", "ig-a")
            .await
            .iter()
            .all(|(_, _, s)| s == "UNHEALTHY")
    );
    emu.admin(
        Method::POST,
        "health",
        Some(json!({"project": "lb", "zone": Z, "instance": "vm-2", "healthy": true})),
    )
    .await;
    assert!(
        health(&emu, "bs", "ig-a")
            .await
            .iter()
            .filter(|(i, _, _)| i == "vm-2")
            .all(|(_, _, s)| s == "HEALTHY")
    );
    let response = emu
        .client
        .post(format!("{}/_emulator/health", emu.base))
        .json(&json!({"project": "lb", "zone": Z, "instance": "nope", "healthy": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 404);
    // Without the probe firewall → UNHEALTHY.
    ok(
        &emu,
        Method::DELETE,
        "lb/global/firewalls/allow-probes",
        json!({}),
    )
    .await;
    assert!(
        health(&emu, "bs", "ig-a")
            .await
            .iter()
            .all(|(_, _, s)| s == "UNHEALTHY")
    );
    // A group that is not a backend.
    ok(
        &emu,
        Method::POST,
        &format!("lb/zones/{Z}/instanceGroups"),
        json!({"name": "ig-x"}),
    )
    .await;
    let (status, reason, message) = refused(
        &emu,
        Method::POST,
        &format!("lb/regions/{R}/backendServices/bs/getHealth"),
        json!({"group": format!("zones/{Z}/instanceGroups/ig-x")}),
    )
    .await;
    assert_eq!((status, reason.as_str()), (400, "invalid"));
    assert!(message.contains("'resource.group'"), "{message}");

    // Deletes in dependency order, each in-use refusal first.
    for (path, user) in [
        (
            format!("lb/regions/{R}/backendServices/bs"),
            format!("projects/lb/regions/{R}/forwardingRules/fr-"),
        ),
        (
            format!("lb/regions/{R}/healthChecks/hc"),
            format!("projects/lb/regions/{R}/backendServices/bs"),
        ),
        (
            format!("lb/zones/{Z}/instanceGroups/ig-a"),
            format!("projects/lb/regions/{R}/backendServices/bs"),
        ),
        (
            format!("lb/regions/{R}/addresses/vip"),
            format!("projects/lb/regions/{R}/forwardingRules/fr-ports"),
        ),
    ] {
        let (status, reason, message) = refused(&emu, Method::DELETE, &path, json!({})).await;
        assert_eq!(
            (status, reason.as_str()),
            (400, "resourceInUseByAnotherResource"),
            "{path}"
        );
        assert!(
            message.contains(&format!(
                "resource 'projects/{path}' is already being used by '{user}"
            )),
            "{message}"
        );
    }
    let (_, message) = (
        0,
        refused(
            &emu,
            Method::DELETE,
            &format!("lb/zones/{Z}/instanceGroups/ig-a"),
            json!({}),
        )
        .await
        .2,
    );
    assert!(
        message.starts_with("The instance_group resource"),
        "{message}"
    );
    ok(
        &emu,
        Method::DELETE,
        &format!("lb/regions/{R}/forwardingRules/fr-ports"),
        json!({}),
    )
    .await;
    let vip = get(&emu, &format!("lb/regions/{R}/addresses/vip")).await;
    assert_eq!(vip["status"], "RESERVED");
    assert!(vip.get("users").is_none());
    ok(
        &emu,
        Method::DELETE,
        &format!("lb/regions/{R}/forwardingRules/fr-all"),
        json!({}),
    )
    .await;
    ok(
        &emu,
        Method::DELETE,
        &format!("lb/regions/{R}/backendServices/bs"),
        json!({}),
    )
    .await;
    ok(
        &emu,
        Method::DELETE,
        &format!("lb/regions/{R}/healthChecks/hc"),
        json!({}),
    )
    .await;
    ok(
        &emu,
        Method::DELETE,
        &format!("lb/zones/{Z}/instanceGroups/ig-a"),
        json!({}),
    )
    .await;
    ok(
        &emu,
        Method::DELETE,
        &format!("lb/regions/{R}/addresses/vip"),
        json!({}),
    )
    .await;
    // The instances stay.
    get(&emu, &format!("lb/zones/{Z}/instances/vm-2")).await;
}

#[tokio::test]
async fn instance_group_membership_rules() {
    let emu = Emulator::start(&world(""), &[]);
    ok(
        &emu,
        Method::POST,
        &format!("lb/zones/{Z}/instanceGroups"),
        json!({"name": "ig"}),
    )
    .await;
    let add = format!("lb/zones/{Z}/instanceGroups/ig/addInstances");
    ok(&emu, Method::POST, &add, instances("lb", &["vm-1"])).await;
    let (status, reason, message) =
        refused(&emu, Method::POST, &add, instances("lb", &["vm-1"])).await;
    assert_eq!((status, reason.as_str()), (400, "memberAlreadyExists"));
    assert_eq!(
        message,
        format!(
            "Resource 'projects/lb/zones/{Z}/instances/vm-1' is already a member of 'projects/lb/zones/{Z}/instanceGroups/ig'."
        )
    );
    let (status, reason, message) =
        refused(&emu, Method::POST, &add, instances("lb", &["vm-s"])).await;
    assert_eq!((status, reason.as_str()), (400, "wrongSubnetwork"));
    assert_eq!(
        message,
        format!(
            "Resource 'projects/lb/zones/{Z}/instances/vm-s' is expected to be in the subnetwork 'projects/lb/regions/{R}/subnetworks/default' but is in the subnetwork 'projects/lb/regions/{R}/subnetworks/second'."
        )
    );
    let (status, _, message) = refused(
        &emu,
        Method::POST,
        &add,
        json!({"instances": [{"instance": "zones/us-central1-b/instances/vm-b"}]}),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        message.contains("'resource.instances[0].instance'") && message.contains("zone"),
        "{message}"
    );
    let (status, _, message) = refused(
        &emu,
        Method::POST,
        &add,
        json!({"instances": [{"instance": format!("projects/other/zones/{Z}/instances/vm-1")}]}),
    )
    .await;
    assert_eq!(status, 400);
    assert!(message.contains("project 'lb'"), "{message}");
    let (status, reason, _) = refused(&emu, Method::POST, &add, instances("lb", &["ghost"])).await;
    assert_eq!((status, reason.as_str()), (404, "notFound"));
    let remove = format!("lb/zones/{Z}/instanceGroups/ig/removeInstances");
    let (status, reason, message) =
        refused(&emu, Method::POST, &remove, instances("lb", &["vm-2"])).await;
    assert_eq!((status, reason.as_str()), (400, "invalid"));
    assert!(message.contains("is not a member of"), "{message}");
    let (status, _, _) = refused(&emu, Method::POST, &remove, instances("lb", &["ghost"])).await;
    assert_eq!(status, 404);
    let op = ok(&emu, Method::POST, &remove, instances("lb", &["vm-1"])).await;
    assert_eq!(op["operationType"], "removeInstances");
    assert_eq!(
        get(&emu, &format!("lb/zones/{Z}/instanceGroups/ig")).await["size"],
        0
    );

    // At most one load-balanced group per instance: both when a backend service gains a group…
    setup_lb(&emu, &["vm-1"]).await;
    ok(&emu, Method::POST, &add, instances("lb", &["vm-1", "vm-2"])).await;
    ok(
        &emu,
        Method::POST,
        &format!("lb/regions/{R}/backendServices"),
        backend_service("bs", &["ig-a"]),
    )
    .await;
    let (status, reason, message) = refused(
        &emu,
        Method::POST,
        &format!("lb/regions/{R}/backendServices"),
        backend_service("bs2", &["ig"]),
    )
    .await;
    assert_eq!(
        (status, reason.as_str()),
        (400, "instanceInMultipleLoadBalancedIgs")
    );
    assert_eq!(
        message,
        format!(
            "Validation failed for instance 'projects/lb/zones/{Z}/instances/vm-1': instance may belong to at most one load-balanced instance group."
        )
    );
    let (_, reason, _) = refused(
        &emu,
        Method::POST,
        &format!("lb/regions/{R}/backendServices"),
        backend_service("bs2", &["ig-a", "ig"]),
    )
    .await;
    assert_eq!(reason, "instanceInMultipleLoadBalancedIgs");
    // …and when addInstances would put a load-balanced group's member into a second one.
    ok(&emu, Method::POST, &remove, instances("lb", &["vm-1"])).await;
    ok(
        &emu,
        Method::POST,
        &format!("lb/regions/{R}/backendServices"),
        backend_service("bs2", &["ig"]),
    )
    .await;
    let (_, reason, _) = refused(&emu, Method::POST, &add, instances("lb", &["vm-1"])).await;
    assert_eq!(reason, "instanceInMultipleLoadBalancedIgs");
    // A group that is no backend may hold a load-balanced instance.
    ok(
        &emu,
        Method::POST,
        &format!("lb/zones/{Z}/instanceGroups"),
        json!({"name": "plain"}),
    )
    .await;
    ok(
        &emu,
        Method::POST,
        &format!("lb/zones/{Z}/instanceGroups/plain/addInstances"),
        instances("lb", &["vm-1"]),
    )
    .await;
}

#[tokio::test]
async fn health_check_validation_and_patch() {
    let emu = Emulator::start(&world(""), &[]);
    let path = format!("lb/regions/{R}/healthChecks");
    for (body, field) in [
        (
            json!({"name": "h", "type": "HTTPS", "httpsHealthCheck": {}}),
            "resource.type",
        ),
        (
            json!({"name": "h", "type": "TCP", "httpHealthCheck": {"port": 80}}),
            "resource.httpHealthCheck",
        ),
        (
            json!({"name": "h", "type": "TCP", "tcpHealthCheck": {"port": 0}}),
            "resource.tcpHealthCheck.port",
        ),
        (
            json!({"name": "h", "type": "TCP", "tcpHealthCheck": {"port": 70000}}),
            "resource.tcpHealthCheck.port",
        ),
        (
            json!({"name": "h", "type": "TCP", "tcpHealthCheck": {}, "timeoutSec": 10, "checkIntervalSec": 5}),
            "resource.timeoutSec",
        ),
        (
            json!({"name": "h", "type": "TCP", "tcpHealthCheck": {"portSpecification": "USE_NAMED_PORT"}}),
            "resource.tcpHealthCheck.portSpecification",
        ),
    ] {
        let (status, reason, message) = refused(&emu, Method::POST, &path, body.clone()).await;
        assert_eq!((status, reason.as_str()), (400, "invalid"), "{body}");
        assert!(message.contains(&format!("'{field}'")), "{body}: {message}");
    }
    let (status, reason, _) = refused(
        &emu,
        Method::POST,
        &path,
        json!({"name": "h", "type": "TCP"}),
    )
    .await;
    assert_eq!((status, reason.as_str()), (400, "required"));
    ok(
        &emu,
        Method::POST,
        &path,
        json!({"name": "h", "type": "HTTP", "httpHealthCheck": {"port": 8080}}),
    )
    .await;
    let hc = get(&emu, &format!("{path}/h")).await;
    assert_eq!(hc["httpHealthCheck"]["requestPath"], "/");
    ok(
        &emu,
        Method::PATCH,
        &format!("{path}/h"),
        json!({"checkIntervalSec": 10, "timeoutSec": 8}),
    )
    .await;
    let hc = get(&emu, &format!("{path}/h")).await;
    assert_eq!(
        (hc["checkIntervalSec"].clone(), hc["timeoutSec"].clone()),
        (json!(10), json!(8))
    );
    assert_eq!(hc["httpHealthCheck"]["port"], 8080);
    let (_, _, message) = refused(
        &emu,
        Method::PATCH,
        &format!("{path}/h"),
        json!({"timeoutSec": 20}),
    )
    .await;
    assert!(message.contains("'resource.timeoutSec'"), "{message}");
    // Switch type by patch: the old sub-object goes with null.
    ok(
        &emu,
        Method::PATCH,
        &format!("{path}/h"),
        json!({"type": "TCP", "httpHealthCheck": null, "tcpHealthCheck": {"port": 22}}),
    )
    .await;
    assert_eq!(
        get(&emu, &format!("{path}/h")).await["tcpHealthCheck"]["port"],
        22
    );
    // Global health checks are not served.
    let (status, _) = emu.at(Method::GET, "lb/global/healthChecks", None).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn backend_service_validation_fingerprint_and_update() {
    let emu = Emulator::start(&world(""), &[]);
    setup_lb(&emu, &["vm-1", "vm-2"]).await;
    ok(
        &emu,
        Method::POST,
        &format!("lb/zones/{Z}/instanceGroups"),
        json!({"name": "empty"}),
    )
    .await;
    let path = format!("lb/regions/{R}/backendServices");
    let with = |f: &dyn Fn(&mut Value)| {
        let mut body = backend_service("bs", &["ig-a"]);
        f(&mut body);
        body
    };
    let cases: Vec<(Value, u16, &str, &str)> = vec![
        (
            with(&|b| b["loadBalancingScheme"] = json!("EXTERNAL")),
            400,
            "resource.loadBalancingScheme",
            "only internal passthrough",
        ),
        (
            with(&|b| b["protocol"] = json!("HTTP")),
            400,
            "resource.protocol",
            "",
        ),
        (
            with(&|b| b["healthChecks"] = json!([format!("{LINK}lb/global/healthChecks/hc")])),
            404,
            "",
            "global/healthChecks/hc",
        ),
        (
            with(&|b| b["healthChecks"] = json!([])),
            400,
            "resource.healthChecks",
            "",
        ),
        (
            with(&|b| b["backends"][0]["group"] = json!(format!("zones/{Z}/instanceGroups/ig-a"))),
            400,
            "resource.backends[0].group",
            "Partial URLs are not supported",
        ),
        (
            with(&|b| b["backends"][0]["group"] = json!(group_link("lb", "empty"))),
            400,
            "resource.backends[0].group",
            "Instance group must have a network to be attached to a backend service. Add an instance to give the instance group a network.",
        ),
        (
            with(&|b| {
                b["backends"][0]["group"] =
                    json!(format!("{LINK}lb/zones/{Z}/instanceGroupManagers/m"))
            }),
            400,
            "resource.backends[0].group",
            "Unexpected resource collection 'instanceGroupManagers'.",
        ),
        (
            with(&|b| {
                b["backends"][0]["group"] =
                    json!(format!("{LINK}lb/zones/europe-west1-b/instanceGroups/ig-a"))
            }),
            400,
            "resource.backends[0].group",
            "region",
        ),
        (
            with(&|b| {
                b["backends"] = json!([{"group": group_link("lb", "ig-a")}, {"group": group_link("lb", "ig-a")}])
            }),
            400,
            "resource.backends[1].group",
            "Duplicate instance groups in backend service.",
        ),
        (
            with(&|b| b["backends"][0]["balancingMode"] = json!("UTILIZATION")),
            400,
            "resource.backends[0].balancingMode",
            "Balancing mode must be CONNECTION for an INTERNAL backend service.",
        ),
        (
            with(&|b| b["failoverPolicy"] = json!({"failoverRatio": 1.5})),
            400,
            "resource.failoverPolicy.failoverRatio",
            "",
        ),
        (
            with(&|b| b["network"] = json!("projects/lb/global/networks/nope")),
            404,
            "",
            "",
        ),
    ];
    for (body, code, field, text) in cases {
        let (status, _, message) = refused(&emu, Method::POST, &path, body.clone()).await;
        assert_eq!(status, code, "{body}: {message}");
        assert!(
            message.contains(&format!("'{field}'")) || field.is_empty(),
            "{body}: {message}"
        );
        assert!(message.contains(text), "{body}: {message}");
    }
    // Created without backends first (as gcloud does), with a failover policy.
    let mut body = backend_service("bs", &[]);
    body.as_object_mut().unwrap().remove("backends");
    body["failoverPolicy"] = json!({"failoverRatio": 0.25});
    ok(&emu, Method::POST, &path, body).await;
    let bs = get(&emu, &format!("{path}/bs")).await;
    let fp = bs["fingerprint"].as_str().unwrap().to_string();
    assert!(bs.get("backends").is_none());
    // update (PUT) with the fingerprint adds a backend; a stale one is 412.
    let mut put = bs.clone();
    put["backends"] = json!([{"group": format!("https://compute.googleapis.com/compute/v1/projects/lb/zones/{Z}/instanceGroups/ig-a"), "failover": true}]);
    let op = ok(&emu, Method::PUT, &format!("{path}/bs"), put.clone()).await;
    assert_eq!(op["operationType"], "update");
    let bs = get(&emu, &format!("{path}/bs")).await;
    assert_ne!(bs["fingerprint"], fp.as_str());
    assert_eq!(bs["backends"][0]["group"], group_link("lb", "ig-a"));
    let (status, reason, _) = refused(&emu, Method::PUT, &format!("{path}/bs"), put).await;
    assert_eq!((status, reason.as_str()), (412, "conditionNotMet"));
    let (status, reason, _) = refused(
        &emu,
        Method::PATCH,
        &format!("{path}/bs"),
        json!({"fingerprint": fp, "description": "x"}),
    )
    .await;
    assert_eq!((status, reason.as_str()), (412, "conditionNotMet"));
    // patch without a fingerprint: backends replaced wholesale (RFC 7396 arrays).
    ok(
        &emu,
        Method::POST,
        &format!("lb/zones/{Z}/instanceGroups"),
        json!({"name": "ig-f"}),
    )
    .await;
    ok(
        &emu,
        Method::POST,
        &format!("lb/zones/{Z}/instanceGroups/ig-f/addInstances"),
        instances("lb", &["vm-3"]),
    )
    .await;
    let op = ok(
        &emu,
        Method::PATCH,
        &format!("{path}/bs"),
        json!({"backends": [{"group": group_link("lb", "ig-f")}]}),
    )
    .await;
    assert_eq!(op["operationType"], "patch");
    let bs = get(&emu, &format!("{path}/bs")).await;
    assert_eq!(
        bs["backends"],
        json!([{"group": group_link("lb", "ig-f"), "balancingMode": "CONNECTION"}])
    );
    assert_eq!(bs["failoverPolicy"]["failoverRatio"], 0.25);
    let (status, _, message) = refused(
        &emu,
        Method::PATCH,
        &format!("{path}/bs"),
        json!({"name": "renamed"}),
    )
    .await;
    assert_eq!(status, 400);
    assert!(message.contains("cannot be changed"), "{message}");
    // The network must be the groups'.
    let (status, _, message) = refused(
        &emu,
        Method::PATCH,
        &format!("{path}/bs"),
        json!({"network": "projects/host/global/networks/shared"}),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        message.contains("Cross-project references for this resource are not allowed."),
        "{message}"
    );
}

#[tokio::test]
async fn internal_forwarding_rule_validation_and_ip_conflicts() {
    let emu = Emulator::start(&world(""), &[]);
    setup_lb(&emu, &["vm-1"]).await;
    ok(
        &emu,
        Method::POST,
        &format!("lb/regions/{R}/backendServices"),
        backend_service("bs", &["ig-a"]),
    )
    .await;
    let mut udp = backend_service("bs-udp", &[]);
    udp["protocol"] = json!("UDP");
    ok(
        &emu,
        Method::POST,
        &format!("lb/regions/{R}/backendServices"),
        udp,
    )
    .await;
    let path = format!("lb/regions/{R}/forwardingRules");
    let cases: Vec<(Value, u16, &str)> = vec![
        (
            internal_rule(
                "f",
                "bs",
                json!({"target": format!("zones/{Z}/targetInstances/t")}),
            ),
            400,
            "Invalid value for field 'resource.target'",
        ),
        (
            internal_rule("f", "bs", json!({"ports": null})),
            400,
            "Invalid value for field 'resource.ports[0]': ''. Forwarding rules with backend services must specify at least one port.",
        ),
        (
            internal_rule("f", "bs", json!({"ports": ["1", "2", "3", "4", "5", "6"]})),
            400,
            "Invalid value for field 'resource.ports[5]': '6'. Too many ports specified. Maximum is 5.",
        ),
        (
            internal_rule("f", "bs", json!({"ports": null, "portRange": "80"})),
            400,
            "'resource.portRange'",
        ),
        (
            internal_rule("f", "bs", json!({"ports": ["80"], "allPorts": true})),
            400,
            "mutually exclusive",
        ),
        (
            internal_rule("f", "bs", json!({"subnetwork": null})),
            400,
            "Required field 'resource.subnetwork' not specified",
        ),
        (
            internal_rule("f", "bs", json!({"backendService": null})),
            400,
            "Required field 'resource.backendService' not specified",
        ),
        (
            internal_rule(
                "f",
                "bs",
                json!({"backendService": "global/backendServices/bs"}),
            ),
            404,
            "global/backendServices/bs",
        ),
        (
            internal_rule("f", "bs", json!({"IPProtocol": "UDP"})),
            400,
            "'resource.IPProtocol'",
        ),
        (
            internal_rule("f", "bs-udp", json!({})),
            400,
            "'resource.IPProtocol'",
        ),
        (
            internal_rule(
                "f",
                "bs",
                json!({"IPProtocol": "L3_DEFAULT", "ports": null, "allPorts": true}),
            ),
            400,
            "'resource.IPProtocol'",
        ),
        (
            internal_rule("f", "bs", json!({"network": "global/networks/other"})),
            404,
            "",
        ),
        (
            internal_rule("f", "bs", json!({"IPAddress": "10.200.0.5"})),
            400,
            "Invalid value for field 'resource.IPAddress': '10.200.0.5'. Address '10.200.0.5' is not in the subnetwork ranges of network 'default'.",
        ),
    ];
    for (body, code, text) in cases {
        let (status, _, message) = refused(&emu, Method::POST, &path, body.clone()).await;
        assert_eq!(status, code, "{body}: {message}");
        assert!(message.contains(text), "{body}: {message}");
    }
    ok(
        &emu,
        Method::POST,
        &path,
        internal_rule(
            "fr1",
            "bs",
            json!({"IPAddress": "10.128.0.50", "ports": ["80", "8000-8100"]}),
        ),
    )
    .await;
    ok(
        &emu,
        Method::POST,
        &path,
        internal_rule(
            "fr-udp",
            "bs-udp",
            json!({"IPAddress": "10.128.0.50", "IPProtocol": "UDP"}),
        ),
    )
    .await;
    ok(
        &emu,
        Method::POST,
        &path,
        internal_rule(
            "fr2",
            "bs",
            json!({"IPAddress": "10.128.0.50", "ports": ["443"]}),
        ),
    )
    .await;
    ok(
        &emu,
        Method::POST,
        &format!("lb/regions/{R}/addresses"),
        json!({"name": "held", "addressType": "INTERNAL",
        "subnetwork": format!("regions/{R}/subnetworks/default"), "address": "10.128.0.60"}),
    )
    .await;
    let conflict = "IP_IN_USE_BY_ANOTHER_RESOURCE - IP '";
    for (body, ip) in [
        (
            internal_rule(
                "f",
                "bs",
                json!({"IPAddress": "10.128.0.50", "ports": ["8080"]}),
            ),
            "10.128.0.50",
        ),
        (
            internal_rule(
                "f",
                "bs",
                json!({"IPAddress": "10.128.0.50", "ports": null, "allPorts": true}),
            ),
            "10.128.0.50",
        ),
        (
            internal_rule("f", "bs", json!({"IPAddress": "10.128.0.10"})),
            "10.128.0.10",
        ),
        (
            internal_rule("f", "bs", json!({"IPAddress": "10.128.0.60"})),
            "10.128.0.60",
        ),
    ] {
        let (status, _, message) = refused(&emu, Method::POST, &path, body.clone()).await;
        assert_eq!(status, 409, "{body}: {message}");
        assert_eq!(
            message,
            format!("{conflict}{ip}' is already being used by another resource.")
        );
    }
    // Naming the address that holds the IP is fine; an EXTERNAL address is not.
    ok(
        &emu,
        Method::POST,
        &path,
        internal_rule(
            "fr3",
            "bs",
            json!({"IPAddress": format!("projects/lb/regions/{R}/addresses/held")}),
        ),
    )
    .await;
    ok(
        &emu,
        Method::POST,
        &format!("lb/regions/{R}/addresses"),
        json!({"name": "ext"}),
    )
    .await;
    let (status, _, message) = refused(
        &emu,
        Method::POST,
        &path,
        internal_rule(
            "f",
            "bs",
            json!({"IPAddress": "regions/us-central1/addresses/ext"}),
        ),
    )
    .await;
    assert_eq!(status, 400);
    assert!(message.contains("INTERNAL address"), "{message}");
    // External rules keep their behaviour.
    ok(
        &emu,
        Method::POST,
        &path,
        json!({"name": "ext-rule", "portRange": "80"}),
    )
    .await;
    assert_eq!(
        get(&emu, &format!("{path}/ext-rule")).await["loadBalancingScheme"],
        "EXTERNAL"
    );
}

#[tokio::test]
async fn shared_vpc_references_ip_space_and_charging() {
    let emu = Emulator::start(&world("    quotas: {STATIC_ADDRESSES: 1}"), &[]);
    // The host reports HOST; getXpnHost gives the host, or {}.
    assert_eq!(get(&emu, "host").await["xpnProjectStatus"], "HOST");
    assert_eq!(
        get(&emu, "svc").await["xpnProjectStatus"],
        "UNSPECIFIED_XPN_PROJECT_STATUS"
    );
    assert_eq!(get(&emu, "svc/getXpnHost").await["name"], "host");
    assert_eq!(get(&emu, "lb/getXpnHost").await, json!({}));
    // Service instances sit on the host's network.
    let vm = get(&emu, &format!("svc/zones/{Z}/instances/svc-1")).await;
    assert_eq!(
        vm["networkInterfaces"][0]["network"],
        format!("{LINK}host/global/networks/shared")
    );
    assert_eq!(
        vm["networkInterfaces"][0]["subnetwork"],
        format!("{LINK}host/regions/{R}/subnetworks/shared-sub")
    );

    // Routes and firewalls of the shared network live in the host.
    let cross = "Cross project referencing is not allowed for this resource.";
    for (path, body) in [
        (
            "svc/global/routes",
            json!({"name": "r", "network": "projects/host/global/networks/shared", "destRange": "10.99.0.0/24", "nextHopIp": "10.10.0.3"}),
        ),
        (
            "svc/global/firewalls",
            json!({"name": "f", "network": "projects/host/global/networks/shared", "allowed": [{"IPProtocol": "tcp"}]}),
        ),
    ] {
        let (status, _, message) = refused(&emu, Method::POST, path, body).await;
        assert_eq!(status, 400);
        assert_eq!(
            message,
            format!(
                "Invalid value for field 'resource.network': 'projects/host/global/networks/shared'. {cross}"
            )
        );
    }
    // A next-hop instance must be in the route's project; nextHopIp to a service VM is fine.
    let (status, _, message) = refused(&emu, Method::POST, "host/global/routes", json!({"name": "r", "network": "global/networks/shared",
        "destRange": "10.99.0.0/24", "nextHopInstance": format!("projects/svc/zones/{Z}/instances/svc-1")})).await;
    assert_eq!(status, 400);
    assert!(message.contains("'resource.nextHopInstance'"), "{message}");
    ok(
        &emu,
        Method::POST,
        "host/global/routes",
        json!({"name": "r", "network": "global/networks/shared",
        "destRange": "10.99.0.0/24", "nextHopIp": "10.10.0.3"}),
    )
    .await;
    // Charged to the host: its ROUTES quota (1) is spent, the service project's is not involved.
    let (_, op) = emu
        .at(
            Method::POST,
            "host/global/routes",
            Some(json!({"name": "r2", "network": "global/networks/shared",
        "destRange": "10.98.0.0/24", "nextHopIp": "10.10.0.3"})),
        )
        .await;
    assert_eq!(op["error"]["errors"][0]["code"], "QUOTA_EXCEEDED", "{op}");
    let usage = |project: &Value, metric: &str| {
        project["quotas"]
            .as_array()
            .unwrap()
            .iter()
            .find(|q| q["metric"] == metric)
            .map(|q| q["usage"].as_f64().unwrap())
            .unwrap()
    };
    assert_eq!(usage(&get(&emu, "host").await, "ROUTES"), 1.0);
    assert_eq!(usage(&get(&emu, "svc").await, "ROUTES"), 0.0);

    // The service project uses the host's subnetwork by full path; `other` may not.
    let sub = format!("projects/host/regions/{R}/subnetworks/shared-sub");
    ok(
        &emu,
        Method::POST,
        &format!("svc/regions/{R}/addresses"),
        json!({"name": "a1", "addressType": "INTERNAL", "subnetwork": sub}),
    )
    .await;
    let a1 = get(&emu, &format!("svc/regions/{R}/addresses/a1")).await;
    assert_eq!(
        a1["address"], "10.10.0.5",
        "the first address free in the host's whole IP space"
    );
    let (_, op) = emu
        .at(
            Method::POST,
            &format!("svc/regions/{R}/addresses"),
            Some(json!({"name": "a2", "addressType": "INTERNAL", "subnetwork": sub})),
        )
        .await;
    assert_eq!(
        op["error"]["errors"][0]["code"], "QUOTA_EXCEEDED",
        "charged to svc's STATIC_ADDRESSES: {op}"
    );
    let region_usage = |region: &Value, metric: &str| {
        region["quotas"]
            .as_array()
            .unwrap()
            .iter()
            .find(|q| q["metric"] == metric)
            .map(|q| q["usage"].as_f64().unwrap())
            .unwrap()
    };
    assert_eq!(
        region_usage(
            &get(&emu, &format!("host/regions/{R}")).await,
            "STATIC_ADDRESSES"
        ),
        0.0
    );
    let other_cross = "Cross-project references for this resource are not allowed.";
    for (path, body, field) in [
        (
            format!("other/regions/{R}/addresses"),
            json!({"name": "x", "addressType": "INTERNAL", "subnetwork": sub}),
            "resource.subnetwork",
        ),
        (
            format!("other/zones/{Z}/instanceGroups"),
            json!({"name": "x", "network": "projects/host/global/networks/shared"}),
            "resource.network",
        ),
    ] {
        let (status, _, message) = refused(&emu, Method::POST, &path, body).await;
        assert_eq!(status, 400);
        assert!(
            message.starts_with(&format!("Invalid value for field '{field}'"))
                && message.ends_with(other_cross),
            "{message}"
        );
    }

    // The whole ILB path in the service project, on the host's subnetwork.
    ok(
        &emu,
        Method::POST,
        &format!("svc/zones/{Z}/instanceGroups"),
        json!({"name": "ig", "network": "projects/host/global/networks/shared"}),
    )
    .await;
    ok(
        &emu,
        Method::POST,
        &format!("svc/zones/{Z}/instanceGroups/ig/addInstances"),
        instances("svc", &["svc-1", "svc-2"]),
    )
    .await;
    ok(
        &emu,
        Method::POST,
        &format!("svc/regions/{R}/healthChecks"),
        json!({"name": "hc", "type": "TCP", "tcpHealthCheck": {"port": 80}}),
    )
    .await;
    ok(&emu, Method::POST, &format!("svc/regions/{R}/backendServices"), json!({"name": "bs", "loadBalancingScheme": "INTERNAL",
        "network": "projects/host/global/networks/shared", "healthChecks": [format!("regions/{R}/healthChecks/hc")],
        "backends": [{"group": format!("{LINK}svc/zones/{Z}/instanceGroups/ig")}]})).await;
    let rule = |name: &str, ip: Option<&str>| {
        let mut body = json!({"name": name, "loadBalancingScheme": "INTERNAL", "backendService": format!("regions/{R}/backendServices/bs"),
            "subnetwork": sub, "network": "projects/host/global/networks/shared", "ports": ["80"]});
        if let Some(ip) = ip {
            body["IPAddress"] = json!(ip);
        }
        body
    };
    // One IP space: the host's own instance holds 10.10.0.2.
    let (status, _, _) = refused(
        &emu,
        Method::POST,
        &format!("svc/regions/{R}/forwardingRules"),
        rule("f", Some("10.10.0.2")),
    )
    .await;
    assert_eq!(status, 409);
    ok(
        &emu,
        Method::POST,
        &format!("svc/regions/{R}/forwardingRules"),
        rule("fr", None),
    )
    .await;
    assert_eq!(
        region_usage(
            &get(&emu, &format!("svc/regions/{R}")).await,
            "FORWARDING_RULES"
        ),
        1.0
    );
    assert_eq!(
        region_usage(
            &get(&emu, &format!("host/regions/{R}")).await,
            "FORWARDING_RULES"
        ),
        0.0
    );
    let (status, body) = emu
        .at(
            Method::POST,
            &format!("svc/regions/{R}/backendServices/bs/getHealth"),
            Some(json!({"group": format!("zones/{Z}/instanceGroups/ig")})),
        )
        .await;
    assert_eq!(status, 200);
    let states: Vec<&str> = body["healthStatus"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["healthState"].as_str().unwrap())
        .collect();
    assert_eq!(
        states,
        ["UNHEALTHY", "UNHEALTHY"],
        "no probe firewall in the host yet"
    );
    // The health model reads the host's firewall rules.
    ok(
        &emu,
        Method::POST,
        "host/global/firewalls",
        json!({"name": "probes", "network": "global/networks/shared",
        "sourceRanges": ["35.191.0.0/16", "130.211.0.0/22"], "allowed": [{"IPProtocol": "all"}]}),
    )
    .await;
    let (_, body) = emu
        .at(
            Method::POST,
            &format!("svc/regions/{R}/backendServices/bs/getHealth"),
            Some(json!({"group": format!("zones/{Z}/instanceGroups/ig")})),
        )
        .await;
    assert!(
        body["healthStatus"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["healthState"] == "HEALTHY"),
        "{body}"
    );
    // A host-project rule conflicts with the service project's on the shared IP space.
    let fr_ip = get(&emu, &format!("svc/regions/{R}/forwardingRules/fr")).await["IPAddress"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, _, _) = refused(
        &emu,
        Method::POST,
        &format!("host/regions/{R}/addresses"),
        json!({"name": "x", "addressType": "INTERNAL",
        "subnetwork": format!("regions/{R}/subnetworks/shared-sub"), "address": fr_ip}),
    )
    .await;
    assert_eq!(status, 400);

    // The admin state dump knows the new collections.
    for collection in ["instanceGroups", "healthChecks", "backendServices"] {
        let dump = emu
            .admin(Method::GET, &format!("state?collection={collection}"), None)
            .await;
        assert_eq!(
            dump["items"].as_array().unwrap().len(),
            1,
            "{collection}: {dump}"
        );
    }
}

#[tokio::test]
async fn aggregated_lists_of_the_new_collections() {
    let emu = Emulator::start(&world(""), &[]);
    setup_lb(&emu, &["vm-1"]).await;
    ok(
        &emu,
        Method::POST,
        &format!("lb/regions/{R}/backendServices"),
        backend_service("bs", &["ig-a"]),
    )
    .await;
    for (collection, kind, scope) in [
        (
            "instanceGroups",
            "compute#instanceGroupAggregatedList",
            format!("zones/{Z}"),
        ),
        (
            "backendServices",
            "compute#backendServiceAggregatedList",
            format!("regions/{R}"),
        ),
        (
            "healthChecks",
            "compute#healthChecksAggregatedList",
            format!("regions/{R}"),
        ),
    ] {
        let page = get(&emu, &format!("lb/aggregated/{collection}")).await;
        assert_eq!(page["kind"], kind);
        assert_eq!(page["id"], format!("projects/lb/aggregated/{collection}"));
        assert_eq!(
            page["items"][&scope][collection].as_array().unwrap().len(),
            1,
            "{page}"
        );
        if collection != "instanceGroups" {
            assert_eq!(
                page["items"]["global"]["warning"]["code"],
                "NO_RESULTS_ON_PAGE"
            );
            assert_eq!(
                page["items"]["regions/europe-west1"]["warning"]["code"],
                "NO_RESULTS_ON_PAGE"
            );
        }
    }
    let stats = emu.admin(Method::GET, "stats", None).await;
    for method in [
        "compute.instanceGroups.aggregatedList",
        "compute.regionHealthChecks.insert",
        "compute.regionBackendServices.insert",
        "compute.instanceGroups.addInstances",
    ] {
        assert_eq!(stats["callsByMethod"][method], 1, "{method}: {stats}");
    }
}

#[tokio::test]
async fn gcp_profile_membership_changes_when_the_operation_is_done() {
    let emu = Emulator::start(&world(""), &["--profile", "gcp", "--time-scale", "0.02"]);
    let op = ok(
        &emu,
        Method::POST,
        &format!("lb/zones/{Z}/instanceGroups"),
        json!({"name": "ig"}),
    )
    .await;
    emu.wait_done(&op).await;
    let op = ok(
        &emu,
        Method::POST,
        &format!("lb/zones/{Z}/instanceGroups/ig/addInstances"),
        instances("lb", &["vm-1"]),
    )
    .await;
    assert_ne!(op["status"], "DONE");
    assert_eq!(
        get(&emu, &format!("lb/zones/{Z}/instanceGroups/ig")).await["size"],
        0
    );
    let done = emu.wait_done(&op).await;
    assert_eq!(done["zone"], format!("{LINK}lb/zones/{Z}"));
    assert_eq!(
        get(&emu, &format!("lb/zones/{Z}/instanceGroups/ig")).await["size"],
        1
    );
}

#[tokio::test]
async fn rate_groups_are_charged_to_the_project_in_the_url() {
    let world = world("    rateLimits: {regionalWritesPerMinute: 1}").replace(
        "quotas: {ROUTES: 1}",
        "quotas: {ROUTES: 10}\n    rateLimits: {writesPerMinute: 1}",
    );
    // A 3 s window: three quick calls span at most two windows, so one of them is refused.
    let emu = Emulator::start(&world, &["--profile", "gcp", "--time-scale", "0.05"]);
    let mut refused_routes = 0;
    for i in 0..3 {
        let (status, body) = emu
            .at(
                Method::POST,
                "host/global/routes",
                Some(
                    json!({"name": format!("r{i}"), "network": "global/networks/shared",
                    "destRange": format!("10.9{i}.0.0/24"), "nextHopIp": "10.10.0.3"}),
                ),
            )
            .await;
        if status == 403 {
            assert_eq!(body["error"]["errors"][0]["reason"], "rateLimitExceeded");
            refused_routes += 1;
        }
    }
    assert!(refused_routes >= 1, "the host's global writes are limited");
    // The service project's global writes are its own.
    ok(
        &emu,
        Method::POST,
        "svc/global/addresses",
        json!({"name": "g"}),
    )
    .await;
    let sub = format!("projects/host/regions/{R}/subnetworks/shared-sub");
    let mut refused_addresses = 0;
    for i in 0..3 {
        let (status, _) = emu
            .at(
                Method::POST,
                &format!("svc/regions/{R}/addresses"),
                Some(
                    json!({"name": format!("a{i}"), "addressType": "INTERNAL", "subnetwork": sub}),
                ),
            )
            .await;
        refused_addresses += usize::from(status == 403);
    }
    assert!(
        refused_addresses >= 1,
        "the service project's regional writes are limited"
    );
    // The host's regional writes are its own.
    ok(
        &emu,
        Method::POST,
        &format!("host/regions/{R}/addresses"),
        json!({"name": "h", "addressType": "INTERNAL", "subnetwork": format!("regions/{R}/subnetworks/shared-sub")}),
    )
    .await;
}
