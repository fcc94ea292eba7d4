//! Internal passthrough load balancing: unmanaged instance groups, regional health checks,
//! regional backend services with `getHealth`, and internal forwarding rules. Validation follows
//! the facts recorded in emulator/README.md ("Internal load balancing"); where no source was
//! found the rule is the emulator's own and the README says so.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use serde_json::{Map, Value, json};

use crate::error::ApiError;
use crate::ipnet::Cidr;
use crate::kinds::{CollectionKey, Kind};
use crate::names::{NAME_REGEX, link, reference_path, valid_name};
use crate::resources::{
    Built, CROSS_PROJECT, View, base, check_description, check_name, compact, free_ip, object,
    str_field, string_list, type_name,
};
use crate::state::Project;
use crate::world::region_of_zone;

/// The source ranges of Google's health-check probes for internal passthrough load balancers
/// (<https://cloud.google.com/load-balancing/docs/firewall-rules>).
pub const PROBE_RANGES: [&str; 2] = ["35.191.0.0/16", "130.211.0.0/22"];

/// The path after `/compute/v1/` of a link or reference, relative to `project` when partial.
fn rel(reference: &str, project: &str) -> String {
    reference_path(reference, project)
}

/// A 64-bit FNV-1a hash, for fingerprints.
fn fnv(text: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// A fingerprint in Compute's form: 8 bytes, base64.
pub fn fingerprint(seed: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(fnv(seed).to_be_bytes())
}

fn bool_field(body: &Map<String, Value>, field: &str, at: &str) -> Result<Option<bool>, ApiError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(ApiError::invalid(format!(
            "Invalid value at '{at}.{field}' ({}), expected a boolean",
            type_name(other)
        ))),
    }
}

/// An integer field within `min..=max`, `default` when absent.
fn int_field(
    body: &Map<String, Value>,
    field: &str,
    at: &str,
    default: i64,
    (min, max): (i64, i64),
) -> Result<i64, ApiError> {
    let value = match body.get(field) {
        None | Some(Value::Null) => return Ok(default),
        Some(Value::Number(n)) => n.as_i64(),
        Some(Value::String(s)) => s.parse::<i64>().ok(),
        Some(_) => None,
    };
    match value {
        Some(v) if (min..=max).contains(&v) => Ok(v),
        _ => Err(ApiError::invalid_field(
            &format!("{at}.{field}"),
            &body.get(field).map(compact).unwrap_or_default(),
            &format!("Must be an integer between {min} and {max}."),
        )),
    }
}

fn sub_object<'a>(
    body: &'a Map<String, Value>,
    field: &str,
    at: &str,
) -> Result<Option<&'a Map<String, Value>>, ApiError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(map)) => Ok(Some(map)),
        Some(other) => Err(ApiError::invalid(format!(
            "Invalid value at '{at}.{field}' ({}), expected an object",
            type_name(other)
        ))),
    }
}

/// Splits `projects/P/zones/Z/instanceGroups/G` (and the like) into its parts.
fn zonal_parts(path: &str) -> Option<(&str, &str, &str, &str)> {
    let parts: Vec<&str> = path.split('/').collect();
    match parts.as_slice() {
        ["projects", project, "zones", zone, collection, name] => {
            Some((project, zone, collection, name))
        }
        _ => None,
    }
}

fn regional_parts(path: &str) -> Option<(&str, &str, &str, &str)> {
    let parts: Vec<&str> = path.split('/').collect();
    match parts.as_slice() {
        ["projects", project, "regions", region, collection, name] => {
            Some((project, region, collection, name))
        }
        _ => None,
    }
}

// ------------------------------------------------------------------------------ instance groups

fn named_ports(body: &Map<String, Value>) -> Result<Vec<Value>, ApiError> {
    let Some(ports) = body.get("namedPorts").filter(|v| !v.is_null()) else {
        return Ok(Vec::new());
    };
    let Some(ports) = ports.as_array() else {
        return Err(ApiError::invalid(
            "Invalid value at 'resource.namedPorts', expected a list",
        ));
    };
    ports
        .iter()
        .enumerate()
        .map(|(i, port)| {
            let at = format!("resource.namedPorts[{i}]");
            let Some(port) = port.as_object() else {
                return Err(ApiError::invalid(format!(
                    "Invalid value at '{at}', expected an object"
                )));
            };
            let name = str_field(port, "name")?
                .ok_or_else(|| ApiError::required(&format!("{at}.name")))?;
            if !valid_name(name) {
                return Err(ApiError::invalid_field(
                    &format!("{at}.name"),
                    name,
                    &format!("Must be a match of regex '{NAME_REGEX}'"),
                ));
            }
            if port.get("port").is_none_or(Value::is_null) {
                return Err(ApiError::required(&format!("{at}.port")));
            }
            let number = int_field(port, "port", &at, 0, (1, 65535))?;
            Ok(json!({"name": name, "port": number}))
        })
        .collect()
}

/// Validates an `instanceGroups.insert` body in `zone`: name, description, `namedPorts`, and an
/// optional `network` (and `subnetwork`, a model extension) that may be a Shared VPC host's.
pub fn instance_group(view: &View<'_>, zone: &str, body: &Value) -> Result<Built, ApiError> {
    let project = view.project;
    let body = object(body)?;
    let name = check_name(body)?;
    check_description(body)?;
    let ports = named_ports(body)?;
    let mut out = base(Kind::InstanceGroup, &name, body, &["description"]);
    let mut network = None;
    if let Some(reference) = str_field(body, "network")? {
        network = Some(view.network(reference, "resource.network")?.link);
    }
    if let Some(reference) = str_field(body, "subnetwork")? {
        let subnet = view.subnetwork(reference, "resource.subnetwork")?;
        if subnet.subnet.region != region_of_zone(zone) {
            return Err(ApiError::invalid_field(
                "resource.subnetwork",
                reference,
                &format!(
                    "The subnetwork must be in the instance group's region '{}'.",
                    region_of_zone(zone)
                ),
            ));
        }
        if network.as_ref().is_some_and(|n| *n != subnet.network_link) {
            return Err(ApiError::invalid_field(
                "resource.subnetwork",
                reference,
                "The subnetwork must belong to the instance group's network.",
            ));
        }
        network = Some(subnet.network_link.clone());
        out.insert("subnetwork".into(), json!(subnet.link));
    }
    if let Some(network) = network {
        out.insert("network".into(), json!(network));
    }
    out.insert(
        "fingerprint".into(),
        json!(fingerprint(&Value::Array(ports.clone()).to_string())),
    );
    if !ports.is_empty() {
        out.insert("namedPorts".into(), Value::Array(ports));
    }
    out.insert("size".into(), json!(0));
    out.insert(
        "zone".into(),
        json!(link(&format!("projects/{}/zones/{zone}", project.id))),
    );
    Ok(Built::from_parts(name, out))
}

/// What `addInstances` / `removeInstances` change: instance names of the group's zone, and the
/// network/subnetwork a group without one takes from its first member's nic0.
#[derive(Debug, Default)]
pub struct Membership {
    pub add: Vec<String>,
    pub remove: Vec<String>,
    pub network: Option<String>,
    pub subnetwork: Option<String>,
}

/// The instances a request names: `{"instances": [{"instance": URL}, ...]}`, each checked to be
/// an instance of the group's project and zone that exists. Returns (path, name, JSON), deduped.
fn requested_instances(
    project: &Project,
    zone: &str,
    body: &Value,
) -> Result<Vec<(String, String, Value)>, ApiError> {
    let body = object(body)?;
    let items = match body.get("instances") {
        Some(Value::Array(items)) if !items.is_empty() => items,
        Some(Value::Array(_)) | None | Some(Value::Null) => {
            return Err(ApiError::required("resource.instances"));
        }
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "Invalid value at 'resource.instances' ({}), expected a list",
                type_name(other)
            )));
        }
    };
    let mut out: Vec<(String, String, Value)> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let field = format!("resource.instances[{i}].instance");
        let reference = item
            .as_object()
            .map(|o| str_field(o, "instance"))
            .transpose()?
            .flatten()
            .ok_or_else(|| ApiError::required(&field))?;
        let path = rel(reference, &project.id);
        let Some((owner, instance_zone, "instances", name)) = zonal_parts(&path) else {
            return Err(ApiError::invalid_field(
                &field,
                reference,
                "Must be the URL of an instance: projects/P/zones/Z/instances/I.",
            ));
        };
        if owner != project.id {
            return Err(ApiError::invalid_field(
                &field,
                reference,
                &format!(
                    "The instance must be in the instance group's project '{}'.",
                    project.id
                ),
            ));
        }
        if instance_zone != zone {
            return Err(ApiError::invalid_field(
                &field,
                reference,
                &format!("The instance must be in the instance group's zone '{zone}'."),
            ));
        }
        let key = CollectionKey {
            kind: Kind::Instance,
            location: zone.to_string(),
        };
        let Some(instance) = project.live_json(&key, name) else {
            return Err(ApiError::not_found(&path));
        };
        if !out.iter().any(|(p, _, _)| *p == path) {
            out.push((path.clone(), name.to_string(), instance));
        }
    }
    Ok(out)
}

/// Groups that are backends of some backend service of `project`, and who uses each: group
/// link → backend-service links.
fn load_balanced_groups(project: &Project) -> BTreeMap<String, BTreeSet<String>> {
    let mut groups: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (key, name, slot) in project.slots_of(Kind::BackendService) {
        let Ok(service) = serde_json::from_str::<Value>(&slot.json) else {
            continue;
        };
        let service_link = link(&format!("{}/{name}", key.path(&project.id)));
        for backend in service["backends"].as_array().into_iter().flatten() {
            if let Some(group) = backend["group"].as_str() {
                groups
                    .entry(group.to_string())
                    .or_default()
                    .insert(service_link.clone());
            }
        }
    }
    groups
}

/// The members of a group given by link (empty when unknown).
fn members_by_link(project: &Project, group_link: &str) -> BTreeSet<String> {
    let path = rel(group_link, &project.id);
    match zonal_parts(&path) {
        Some((_, zone, "instanceGroups", name)) => {
            project.members_of(zone, name).cloned().unwrap_or_default()
        }
        _ => BTreeSet::new(),
    }
}

fn zone_of_link(group_link: &str) -> String {
    zonal_parts(&rel(group_link, ""))
        .map(|(_, zone, _, _)| zone.to_string())
        .unwrap_or_default()
}

/// `instanceInMultipleLoadBalancedIgs`, in the observed wording.
fn in_multiple_groups(instance_path: &str) -> ApiError {
    ApiError::with_reason(
        400,
        "instanceInMultipleLoadBalancedIgs",
        format!(
            "Validation failed for instance '{instance_path}': instance may belong to at most \
             one load-balanced instance group."
        ),
    )
}

/// Checks `addInstances`: each instance in the group's project and zone, on the group's network
/// and subnetwork (or, for a group without one, on its first new member's), not yet a member,
/// and not put into a second load-balanced group.
pub fn add_instances(
    view: &View<'_>,
    zone: &str,
    group: &str,
    current: &Value,
    body: &Value,
) -> Result<Membership, ApiError> {
    let project = view.project;
    let group_path = format!(
        "projects/{}/zones/{zone}/instanceGroups/{group}",
        project.id
    );
    let group_link = link(&group_path);
    let requested = requested_instances(project, zone, body)?;
    let members = project.members_of(zone, group).cloned().unwrap_or_default();
    let nic = |instance: &Value, field: &str| -> Option<String> {
        instance["networkInterfaces"][0][field]
            .as_str()
            .map(str::to_string)
    };
    let first = requested.first().map(|(_, _, instance)| instance);
    let network = current["network"]
        .as_str()
        .map(str::to_string)
        .or_else(|| first.and_then(|i| nic(i, "network")));
    let subnetwork = current["subnetwork"]
        .as_str()
        .map(str::to_string)
        .or_else(|| first.and_then(|i| nic(i, "subnetwork")));
    let load_balanced = load_balanced_groups(project);
    let is_load_balanced = load_balanced.contains_key(&group_link);
    let mut change = Membership::default();
    for (path, name, instance) in &requested {
        if members.contains(name) {
            // The observed refusal (ansible-collections/google.cloud#349).
            return Err(ApiError::with_reason(
                400,
                "memberAlreadyExists",
                format!("Resource '{path}' is already a member of '{group_path}'."),
            ));
        }
        let actual_network = nic(instance, "network");
        if network.is_some() && actual_network != network {
            return Err(ApiError::with_reason(
                400,
                "wrongNetwork",
                format!(
                    "Resource '{path}' is expected to be in the network '{}' but is in the \
                     network '{}'.",
                    rel(network.as_deref().unwrap_or_default(), ""),
                    rel(actual_network.as_deref().unwrap_or_default(), "")
                ),
            ));
        }
        let actual_subnetwork = nic(instance, "subnetwork");
        if subnetwork.is_some() && actual_subnetwork != subnetwork {
            // The observed refusal (kubernetes/ingress-gce#282).
            return Err(ApiError::with_reason(
                400,
                "wrongSubnetwork",
                format!(
                    "Resource '{path}' is expected to be in the subnetwork '{}' but is in the \
                     subnetwork '{}'.",
                    rel(subnetwork.as_deref().unwrap_or_default(), ""),
                    rel(actual_subnetwork.as_deref().unwrap_or_default(), "")
                ),
            ));
        }
        if is_load_balanced {
            let elsewhere = load_balanced
                .keys()
                .filter(|other| **other != group_link && zone_of_link(other) == zone)
                .any(|other| members_by_link(project, other).contains(name));
            if elsewhere {
                return Err(in_multiple_groups(path));
            }
        }
        change.add.push(name.clone());
    }
    if current["network"].is_null() {
        change.network = network;
    }
    if current["subnetwork"].is_null() {
        change.subnetwork = subnetwork;
    }
    Ok(change)
}

/// Checks `removeInstances`: each instance exists (404 otherwise, as observed in
/// hashicorp/terraform#11511) and is a member (400 otherwise, a model rule).
pub fn remove_instances(
    view: &View<'_>,
    zone: &str,
    group: &str,
    body: &Value,
) -> Result<Membership, ApiError> {
    let project = view.project;
    let group_path = format!(
        "projects/{}/zones/{zone}/instanceGroups/{group}",
        project.id
    );
    let requested = requested_instances(project, zone, body)?;
    let members = project.members_of(zone, group).cloned().unwrap_or_default();
    let mut change = Membership::default();
    for (path, name, _) in requested {
        if !members.contains(&name) {
            return Err(ApiError::invalid(format!(
                "Resource '{path}' is not a member of '{group_path}'."
            )));
        }
        change.remove.push(name);
    }
    Ok(change)
}

/// `listInstances` items, `{instance, status}` (and the group's `namedPorts`), by name.
pub fn list_instances(
    view: &View<'_>,
    zone: &str,
    group: &str,
    current: &Value,
    body: &Value,
) -> Result<Vec<(String, Value)>, ApiError> {
    let project = view.project;
    let running_only = match body.get("instanceState") {
        None | Some(Value::Null) => false,
        Some(Value::String(s)) if s == "ALL" => false,
        Some(Value::String(s)) if s == "RUNNING" => true,
        Some(other) => {
            return Err(ApiError::invalid_field(
                "resource.instanceState",
                &compact(other),
                "Must be ALL or RUNNING.",
            ));
        }
    };
    let key = CollectionKey {
        kind: Kind::Instance,
        location: zone.to_string(),
    };
    let mut items = Vec::new();
    for name in project.members_of(zone, group).into_iter().flatten() {
        let Some(instance) = project.live_json(&key, name) else {
            continue;
        };
        let status = instance["status"].clone();
        if running_only && status != json!("RUNNING") {
            continue;
        }
        let mut item = json!({"instance": instance["selfLink"], "status": status});
        if let Some(ports) = current.get("namedPorts") {
            item["namedPorts"] = ports.clone();
        }
        items.push((name.clone(), item));
    }
    Ok(items)
}

// -------------------------------------------------------------------------------- health checks

const HEALTH_CHECK_FIELDS: [(&str, &str); 7] = [
    ("TCP", "tcpHealthCheck"),
    ("HTTP", "httpHealthCheck"),
    ("SSL", "sslHealthCheck"),
    ("HTTPS", "httpsHealthCheck"),
    ("HTTP2", "http2HealthCheck"),
    ("GRPC", "grpcHealthCheck"),
    ("GRPC_WITH_TLS", "grpcTlsHealthCheck"),
];

/// Validates a `regionHealthChecks.insert` body (and the merged result of a patch or an update).
pub fn health_check(view: &View<'_>, region: &str, body: &Value) -> Result<Built, ApiError> {
    let project = view.project;
    let body = object(body)?;
    let name = check_name(body)?;
    check_description(body)?;
    let kind = str_field(body, "type")?.ok_or_else(|| ApiError::required("resource.type"))?;
    let Some((_, field)) = HEALTH_CHECK_FIELDS.iter().find(|(t, _)| *t == kind) else {
        return Err(ApiError::invalid_field(
            "resource.type",
            kind,
            "Must be one of TCP, HTTP, HTTPS, HTTP2, SSL, GRPC, GRPC_WITH_TLS.",
        ));
    };
    if !matches!(kind, "TCP" | "HTTP") {
        return Err(ApiError::invalid_field(
            "resource.type",
            kind,
            "This emulator serves TCP and HTTP health checks only.",
        ));
    }
    for (_, other) in HEALTH_CHECK_FIELDS {
        if other != *field && body.get(other).is_some_and(|v| !v.is_null()) {
            return Err(ApiError::invalid_field(
                &format!("resource.{other}"),
                &compact(&body[other]),
                &format!(
                    "Exactly one of the protocol-specific health check fields must be specified, \
                     which must match type field ('{kind}' takes {field})."
                ),
            ));
        }
    }
    let at = format!("resource.{field}");
    let sub = sub_object(body, field, "resource")?.ok_or_else(|| ApiError::required(&at))?;
    let port = int_field(sub, "port", &at, 80, (1, 65535))?;
    let proxy_header = str_field(sub, "proxyHeader")?.unwrap_or("NONE");
    if !matches!(proxy_header, "NONE" | "PROXY_V1") {
        return Err(ApiError::invalid_field(
            &format!("{at}.proxyHeader"),
            proxy_header,
            "Must be NONE or PROXY_V1.",
        ));
    }
    let specification = str_field(sub, "portSpecification")?.unwrap_or("USE_FIXED_PORT");
    if specification != "USE_FIXED_PORT" {
        return Err(ApiError::invalid_field(
            &format!("{at}.portSpecification"),
            specification,
            "This emulator serves USE_FIXED_PORT only (the one passthrough load balancers use).",
        ));
    }
    if let Some(port_name) = str_field(sub, "portName")? {
        return Err(ApiError::invalid_field(
            &format!("{at}.portName"),
            port_name,
            "Named ports are not served by this emulator; give port.",
        ));
    }
    let mut checked = Map::new();
    checked.insert("port".into(), json!(port));
    checked.insert("proxyHeader".into(), json!(proxy_header));
    checked.insert("portSpecification".into(), json!(specification));
    let texts: &[&str] = if kind == "TCP" {
        &["request", "response"]
    } else {
        &["host", "requestPath", "response"]
    };
    for text in texts {
        if let Some(value) = str_field(sub, text)? {
            checked.insert((*text).into(), json!(value));
        }
    }
    if kind == "HTTP" {
        checked.entry("requestPath").or_insert(json!("/"));
    }
    // Bounds: gcloud's (health_checks_utils.py); Compute's own are unconfirmed (model).
    let interval = int_field(body, "checkIntervalSec", "resource", 5, (1, 300))?;
    let timeout = int_field(body, "timeoutSec", "resource", 5, (1, 300))?;
    if timeout > interval {
        return Err(ApiError::invalid_field(
            "resource.timeoutSec",
            &timeout.to_string(),
            &format!("timeoutSec must not be greater than checkIntervalSec ({interval})."),
        ));
    }
    let healthy = int_field(body, "healthyThreshold", "resource", 2, (1, 10))?;
    let unhealthy = int_field(body, "unhealthyThreshold", "resource", 2, (1, 10))?;
    let mut out = base(Kind::HealthCheck, &name, body, &["description"]);
    if let Some(log) = sub_object(body, "logConfig", "resource")? {
        let enable = bool_field(log, "enable", "resource.logConfig")?.unwrap_or(false);
        out.insert("logConfig".into(), json!({"enable": enable}));
    }
    out.insert("type".into(), json!(kind));
    out.insert((*field).into(), Value::Object(checked));
    out.insert("checkIntervalSec".into(), json!(interval));
    out.insert("timeoutSec".into(), json!(timeout));
    out.insert("healthyThreshold".into(), json!(healthy));
    out.insert("unhealthyThreshold".into(), json!(unhealthy));
    out.insert(
        "region".into(),
        json!(link(&format!("projects/{}/regions/{region}", project.id))),
    );
    Ok(Built::from_parts(name, out))
}

/// The port a stored health check probes.
fn probed_port(check: &Value) -> u16 {
    ["tcpHealthCheck", "httpHealthCheck"]
        .iter()
        .find_map(|field| check[field]["port"].as_u64())
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or(80)
}

// ----------------------------------------------------------------------------- backend services

const SESSION_AFFINITIES: [&str; 9] = [
    "CLIENT_IP",
    "CLIENT_IP_NO_DESTINATION",
    "CLIENT_IP_PORT_PROTO",
    "CLIENT_IP_PROTO",
    "GENERATED_COOKIE",
    "HEADER_FIELD",
    "HTTP_COOKIE",
    "NONE",
    "STRONG_COOKIE_AFFINITY",
];

/// Resolves the one health check of a backend service: a regional health check of the service's
/// project and region (a global URL is 404: global health checks are not served).
fn backend_health_check(
    project: &Project,
    region: &str,
    reference: &str,
) -> Result<String, ApiError> {
    let field = "resource.healthChecks[0]";
    let path = rel(reference, &project.id);
    let parts: Vec<&str> = path.split('/').collect();
    if let ["projects", _, "global", "healthChecks", _] = parts.as_slice() {
        return Err(ApiError::not_found(&path));
    }
    let Some((owner, hc_region, "healthChecks", name)) = regional_parts(&path) else {
        return Err(ApiError::invalid_field(
            field,
            reference,
            "Must be the URL of a health check.",
        ));
    };
    if owner != project.id {
        return Err(ApiError::invalid_field(field, reference, CROSS_PROJECT));
    }
    if hc_region != region {
        return Err(ApiError::invalid_field(
            field,
            reference,
            &format!("The health check must be in the backend service's region '{region}'."),
        ));
    }
    let key = CollectionKey {
        kind: Kind::HealthCheck,
        location: region.to_string(),
    };
    if project.live_json(&key, name).is_none() {
        return Err(ApiError::not_found(&path));
    }
    Ok(link(&path))
}

/// One checked backend: its stored JSON and the group's link and network.
struct CheckedBackend {
    json: Value,
    group: String,
    network: String,
}

fn backend(
    project: &Project,
    region: &str,
    index: usize,
    value: &Value,
) -> Result<CheckedBackend, ApiError> {
    let at = format!("resource.backends[{index}]");
    let Some(item) = value.as_object() else {
        return Err(ApiError::invalid(format!(
            "Invalid value at '{at}', expected an object"
        )));
    };
    let field = format!("{at}.group");
    let reference = str_field(item, "group")?.ok_or_else(|| ApiError::required(&field))?;
    if !(reference.starts_with("https://") || reference.starts_with("http://")) {
        return Err(ApiError::invalid_field(
            &field,
            reference,
            "Partial URLs are not supported: give the fully-qualified URL of the instance group \
             (https://www.googleapis.com/compute/v1/projects/P/zones/Z/instanceGroups/G).",
        ));
    }
    let path = rel(reference, &project.id);
    let Some((owner, zone, collection, name)) = zonal_parts(&path) else {
        return Err(ApiError::invalid_field(
            &field,
            reference,
            "Must be the URL of an instance group.",
        ));
    };
    if collection != "instanceGroups" {
        // The observed refusal (hashicorp/terraform-provider-google#4951).
        return Err(ApiError::invalid_field(
            &field,
            reference,
            &format!("Unexpected resource collection '{collection}'."),
        ));
    }
    if owner != project.id {
        return Err(ApiError::invalid_field(&field, reference, CROSS_PROJECT));
    }
    if region_of_zone(zone) != region {
        return Err(ApiError::invalid_field(
            &field,
            reference,
            &format!(
                "The instance group must be in a zone of the backend service's region '{region}'."
            ),
        ));
    }
    let key = CollectionKey {
        kind: Kind::InstanceGroup,
        location: zone.to_string(),
    };
    let Some(group) = project.live_json(&key, name) else {
        return Err(ApiError::not_found(&path));
    };
    let Some(network) = group["network"].as_str() else {
        // The observed refusal (openshift/origin#24182).
        return Err(ApiError::invalid_field(
            &field,
            reference,
            "Instance group must have a network to be attached to a backend service. Add an \
             instance to give the instance group a network.",
        ));
    };
    let mode = str_field(item, "balancingMode")?.unwrap_or("CONNECTION");
    if mode != "CONNECTION" {
        // The observed refusal (terraform-google-modules/terraform-google-lb-internal#146).
        return Err(ApiError::invalid_field(
            &format!("{at}.balancingMode"),
            mode,
            "Balancing mode must be CONNECTION for an INTERNAL backend service.",
        ));
    }
    for limit in [
        "maxConnections",
        "maxConnectionsPerInstance",
        "maxConnectionsPerEndpoint",
        "maxRate",
        "maxRatePerInstance",
        "maxRatePerEndpoint",
        "maxUtilization",
        "maxInFlightRequests",
        "maxInFlightRequestsPerInstance",
        "maxInFlightRequestsPerEndpoint",
    ] {
        if item.get(limit).is_some_and(|v| !v.is_null()) {
            return Err(ApiError::invalid_field(
                &format!("{at}.{limit}"),
                &compact(&item[limit]),
                "Must be omitted for an INTERNAL backend service.",
            ));
        }
    }
    let mut json = Map::new();
    json.insert("group".into(), json!(link(&path)));
    json.insert("balancingMode".into(), json!(mode));
    if let Some(failover) = bool_field(item, "failover", &at)? {
        json.insert("failover".into(), json!(failover));
    }
    if let Some(description) = str_field(item, "description")? {
        json.insert("description".into(), json!(description));
    }
    match item.get("capacityScaler") {
        None | Some(Value::Null) => {}
        Some(Value::Number(n)) if n.as_f64().is_some_and(|c| (0.0..=1.0).contains(&c)) => {
            json.insert("capacityScaler".into(), Value::Number(n.clone()));
        }
        Some(other) => {
            return Err(ApiError::invalid_field(
                &format!("{at}.capacityScaler"),
                &compact(other),
                "Must be a number between 0.0 and 1.0.",
            ));
        }
    }
    Ok(CheckedBackend {
        json: Value::Object(json),
        group: link(&path),
        network: network.to_string(),
    })
}

/// Validates a `regionBackendServices.insert` body (and the merged result of a patch, or the body
/// of an update). `nonce` makes the fingerprint differ on every write.
pub fn backend_service(
    view: &View<'_>,
    region: &str,
    body: &Value,
    nonce: u64,
) -> Result<Built, ApiError> {
    let project = view.project;
    let body = object(body)?;
    let name = check_name(body)?;
    check_description(body)?;
    let self_link = link(&format!(
        "projects/{}/regions/{region}/backendServices/{name}",
        project.id
    ));
    let scheme = str_field(body, "loadBalancingScheme")?.unwrap_or("EXTERNAL");
    if scheme != "INTERNAL" {
        return Err(ApiError::invalid_field(
            "resource.loadBalancingScheme",
            scheme,
            "This emulator serves only internal passthrough backend services \
             (loadBalancingScheme INTERNAL).",
        ));
    }
    let protocol = str_field(body, "protocol")?.unwrap_or("TCP");
    if !matches!(protocol, "TCP" | "UDP" | "UNSPECIFIED") {
        return Err(ApiError::invalid_field(
            "resource.protocol",
            protocol,
            "An INTERNAL backend service takes protocol TCP, UDP or UNSPECIFIED.",
        ));
    }
    let checks = string_list(body, "healthChecks")?;
    let health_check = match checks.as_slice() {
        [] => {
            return Err(ApiError::invalid_field(
                "resource.healthChecks",
                "",
                "An INTERNAL backend service with instance group backends must have a health \
                 check.",
            ));
        }
        [one] => backend_health_check(project, region, one)?,
        [..] => {
            return Err(ApiError::invalid_field(
                "resource.healthChecks",
                &checks.join(","),
                "At most one health check can be specified.",
            ));
        }
    };
    let backends = match body.get("backends") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, item)| backend(project, region, i, item))
            .collect::<Result<Vec<_>, _>>()?,
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "Invalid value at 'resource.backends' ({}), expected a list",
                type_name(other)
            )));
        }
    };
    for (i, checked) in backends.iter().enumerate() {
        if backends[..i].iter().any(|b| b.group == checked.group) {
            // The observed refusal (spinnaker/spinnaker#6136).
            return Err(ApiError::invalid_field(
                &format!("resource.backends[{i}].group"),
                &checked.group,
                "Duplicate instance groups in backend service.",
            ));
        }
    }
    let mut out = base(Kind::BackendService, &name, body, &["description"]);
    if let Some(reference) = str_field(body, "network")? {
        let network = view.network(reference, "resource.network")?;
        if let Some(other) = backends.iter().find(|b| b.network != network.link) {
            return Err(ApiError::invalid_field(
                "resource.network",
                reference,
                &format!(
                    "The backend service's network must be that of its instance groups ('{}').",
                    rel(&other.network, "")
                ),
            ));
        }
        out.insert("network".into(), json!(network.link));
    }
    if let Some(first) = backends.first()
        && let Some(other) = backends.iter().find(|b| b.network != first.network)
    {
        return Err(ApiError::invalid_field(
            "resource.backends",
            &other.group,
            "All instance groups of a backend service must be in one network.",
        ));
    }
    if let Some(policy) = sub_object(body, "failoverPolicy", "resource")? {
        let at = "resource.failoverPolicy";
        let mut checked = Map::new();
        for flag in ["disableConnectionDrainOnFailover", "dropTrafficIfUnhealthy"] {
            if let Some(value) = bool_field(policy, flag, at)? {
                checked.insert(flag.into(), json!(value));
            }
        }
        match policy.get("failoverRatio") {
            None | Some(Value::Null) => {}
            Some(Value::Number(n)) if n.as_f64().is_some_and(|r| (0.0..=1.0).contains(&r)) => {
                checked.insert("failoverRatio".into(), Value::Number(n.clone()));
            }
            Some(other) => {
                return Err(ApiError::invalid_field(
                    &format!("{at}.failoverRatio"),
                    &compact(other),
                    "Must be a number between 0.0 and 1.0.",
                ));
            }
        }
        out.insert("failoverPolicy".into(), Value::Object(checked));
    }
    let affinity = str_field(body, "sessionAffinity")?.unwrap_or("NONE");
    if !SESSION_AFFINITIES.contains(&affinity) {
        return Err(ApiError::invalid_field(
            "resource.sessionAffinity",
            affinity,
            &format!("Must be one of {}.", SESSION_AFFINITIES.join(", ")),
        ));
    }
    let timeout = int_field(body, "timeoutSec", "resource", 30, (1, 86_400))?;
    let draining = match sub_object(body, "connectionDraining", "resource")? {
        Some(d) => int_field(
            d,
            "drainingTimeoutSec",
            "resource.connectionDraining",
            0,
            (0, 3600),
        )?,
        None => 0,
    };
    check_single_load_balanced_group(project, &self_link, &backends)?;
    out.insert("loadBalancingScheme".into(), json!("INTERNAL"));
    out.insert("protocol".into(), json!(protocol));
    out.insert("healthChecks".into(), json!([health_check]));
    if !backends.is_empty() {
        out.insert(
            "backends".into(),
            Value::Array(backends.into_iter().map(|b| b.json).collect()),
        );
    }
    out.insert("sessionAffinity".into(), json!(affinity));
    out.insert("timeoutSec".into(), json!(timeout));
    out.insert(
        "connectionDraining".into(),
        json!({"drainingTimeoutSec": draining}),
    );
    out.insert(
        "region".into(),
        json!(link(&format!("projects/{}/regions/{region}", project.id))),
    );
    out.insert(
        "fingerprint".into(),
        json!(fingerprint(&format!("{self_link}#{nonce}"))),
    );
    Ok(Built::from_parts(name, out))
}

/// No instance may be in two load-balanced groups: the service's groups against each other and
/// against every group another backend service of the project uses.
fn check_single_load_balanced_group(
    project: &Project,
    self_link: &str,
    backends: &[CheckedBackend],
) -> Result<(), ApiError> {
    let mut load_balanced: BTreeSet<String> = load_balanced_groups(project)
        .into_iter()
        .filter(|(_, users)| users.iter().any(|u| u != self_link))
        .map(|(group, _)| group)
        .collect();
    load_balanced.extend(backends.iter().map(|b| b.group.clone()));
    for checked in backends {
        let zone = zone_of_link(&checked.group);
        let members = members_by_link(project, &checked.group);
        for other in load_balanced
            .iter()
            .filter(|g| **g != checked.group && zone_of_link(g) == zone)
        {
            if let Some(shared) = members_by_link(project, other)
                .intersection(&members)
                .next()
            {
                return Err(in_multiple_groups(&format!(
                    "projects/{}/zones/{zone}/instances/{shared}",
                    project.id
                )));
            }
        }
    }
    Ok(())
}

// -------------------------------------------------------------------- internal forwarding rules

/// The ports a rule covers: `None` for allPorts, else inclusive ranges.
fn port_ranges(rule: &Value) -> Option<Vec<(u32, u32)>> {
    if rule["allPorts"] == json!(true) {
        return None;
    }
    let ranges = rule["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter_map(|p| {
            let (low, high) = p.split_once('-').unwrap_or((p, p));
            Some((low.parse().ok()?, high.parse().ok()?))
        })
        .collect();
    Some(ranges)
}

fn ports_overlap(a: &Option<Vec<(u32, u32)>>, b: &Option<Vec<(u32, u32)>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a
            .iter()
            .any(|(l1, h1)| b.iter().any(|(l2, h2)| l1 <= h2 && l2 <= h1)),
        _ => true,
    }
}

/// Compute's 409 for an internal IP already held (kubernetes/ingress-gce#1895, #2735).
fn ip_in_use(ip: Ipv4Addr) -> ApiError {
    ApiError::with_reason(
        409,
        "ipInUseByAnotherResource",
        format!(
            "IP_IN_USE_BY_ANOTHER_RESOURCE - IP '{ip}' is already being used by another resource."
        ),
    )
}

/// The network link of a stored internal address (through its subnetwork), if resolvable.
fn address_network(view: &View<'_>, address: &Value) -> Option<String> {
    let path = rel(address["subnetwork"].as_str()?, "");
    let (owner, region, _, name) = regional_parts(&path)?;
    let subnet = view.get(owner)?.subnet(region, name)?;
    Some(link(&format!(
        "projects/{owner}/global/networks/{}",
        subnet.network
    )))
}

/// Validates the INTERNAL (passthrough) part of a `forwardingRules.insert` body; `out` holds the
/// common fields already. See the README ("Internal forwarding rules").
#[allow(clippy::too_many_arguments)]
pub fn internal_forwarding_rule(
    view: &View<'_>,
    region: &str,
    body: &Map<String, Value>,
    name: String,
    mut out: Map<String, Value>,
    protocol: &str,
    port_range: Option<&str>,
) -> Result<Built, ApiError> {
    let project = view.project;
    if let Some(range) = port_range {
        return Err(ApiError::invalid_field(
            "resource.portRange",
            range,
            "portRange is not applicable to internal passthrough forwarding rules; give ports \
             or allPorts.",
        ));
    }
    if let Some(target) = str_field(body, "target")? {
        return Err(ApiError::invalid_field(
            "resource.target",
            target,
            "An INTERNAL forwarding rule takes a backendService, not a target.",
        ));
    }
    let ports = string_list(body, "ports")?;
    let all_ports = body.get("allPorts").and_then(Value::as_bool) == Some(true);
    if protocol == "L3_DEFAULT" && !all_ports {
        return Err(ApiError::invalid_field(
            "resource.allPorts",
            "false",
            "IPProtocol L3_DEFAULT requires allPorts.",
        ));
    }
    if ports.is_empty() && !all_ports {
        // The observed refusal (terraform-google-modules/terraform-google-lb-internal#30).
        return Err(ApiError::invalid_field(
            "resource.ports[0]",
            "",
            "Forwarding rules with backend services must specify at least one port.",
        ));
    }

    // The backend service: a regional one of this project and region, whose protocol fits.
    let reference = str_field(body, "backendService")?
        .ok_or_else(|| ApiError::required("resource.backendService"))?;
    let path = rel(reference, &project.id);
    let Some((owner, bs_region, collection, bs_name)) = regional_parts(&path) else {
        let parts: Vec<&str> = path.split('/').collect();
        if let ["projects", _, "global", "backendServices", _] = parts.as_slice() {
            return Err(ApiError::not_found(&path));
        }
        return Err(ApiError::invalid_field(
            "resource.backendService",
            reference,
            "Must be the URL of a backend service.",
        ));
    };
    if collection != "backendServices" {
        return Err(ApiError::invalid_field(
            "resource.backendService",
            reference,
            "Must be the URL of a backend service.",
        ));
    }
    if owner != project.id {
        return Err(ApiError::invalid_field(
            "resource.backendService",
            reference,
            CROSS_PROJECT,
        ));
    }
    if bs_region != region {
        return Err(ApiError::invalid_field(
            "resource.backendService",
            reference,
            &format!("The backend service must be in the forwarding rule's region '{region}'."),
        ));
    }
    let service_key = CollectionKey {
        kind: Kind::BackendService,
        location: region.to_string(),
    };
    let Some(service) = project.live_json(&service_key, bs_name) else {
        return Err(ApiError::not_found(&path));
    };
    let service_protocol = service["protocol"].as_str().unwrap_or("TCP");
    let fits = matches!(
        (service_protocol, protocol),
        ("TCP", "TCP") | ("UDP", "UDP") | ("UNSPECIFIED", "L3_DEFAULT")
    );
    if !fits {
        return Err(ApiError::invalid_field(
            "resource.IPProtocol",
            protocol,
            &format!(
                "The IPProtocol must fit the backend service's protocol {service_protocol} \
                 (TCP for TCP, UDP for UDP, L3_DEFAULT for UNSPECIFIED)."
            ),
        ));
    }

    // Subnetwork (required: every network here is custom-mode) and network.
    let subnet_ref =
        str_field(body, "subnetwork")?.ok_or_else(|| ApiError::required("resource.subnetwork"))?;
    let subnet = view.subnetwork(subnet_ref, "resource.subnetwork")?;
    if subnet.subnet.region != region {
        return Err(ApiError::invalid_field(
            "resource.subnetwork",
            subnet_ref,
            &format!("The subnetwork must be in the forwarding rule's region '{region}'."),
        ));
    }
    if let Some(network_ref) = str_field(body, "network")? {
        let network = view.network(network_ref, "resource.network")?;
        if network.link != subnet.network_link {
            return Err(ApiError::invalid_field(
                "resource.network",
                network_ref,
                &format!(
                    "The network must be the subnetwork's network '{}'.",
                    rel(&subnet.network_link, "")
                ),
            ));
        }
    }
    let network_link = subnet.network_link.clone();
    let service_network = service["network"].as_str().map(str::to_string).or_else(|| {
        service["backends"][0]["group"]
            .as_str()
            .and_then(|g| {
                let path = rel(g, &project.id);
                let (_, zone, _, group) = zonal_parts(&path)?;
                let key = CollectionKey {
                    kind: Kind::InstanceGroup,
                    location: zone.to_string(),
                };
                project.live_json(&key, group)
            })
            .and_then(|g| g["network"].as_str().map(str::to_string))
    });
    if let Some(other) = service_network.filter(|n| *n != network_link) {
        return Err(ApiError::invalid_field(
            "resource.backendService",
            reference,
            &format!(
                "The backend service's backends are in network '{}', not in the forwarding \
                 rule's network '{}'.",
                rel(&other, ""),
                rel(&network_link, "")
            ),
        ));
    }

    // The IP: a literal in the subnetwork, an INTERNAL address of it, or a free one.
    let mut named: Option<(String, String, String)> = None; // (project, region, address name)
    let ip = match str_field(body, "IPAddress")? {
        None => free_ip(&subnet.subnet.cidr, &view.used_ips()).ok_or_else(|| {
            ApiError::invalid(format!(
                "The subnetwork '{}' has no free IP address left.",
                subnet.subnet.name
            ))
        })?,
        Some(text) => match text.parse::<Ipv4Addr>() {
            Ok(ip) => {
                if !subnet.subnet.cidr.contains(IpAddr::V4(ip)) {
                    // The observed wording (terraform-google-modules/terraform-google-lb-http#361).
                    return Err(ApiError::invalid_field(
                        "resource.IPAddress",
                        text,
                        &format!(
                            "Address '{ip}' is not in the subnetwork ranges of network '{}'.",
                            subnet.subnet.network
                        ),
                    ));
                }
                ip
            }
            Err(_) => {
                let path = rel(text, &project.id);
                let Some((owner, address_region, "addresses", address)) = regional_parts(&path)
                else {
                    return Err(ApiError::invalid_field(
                        "resource.IPAddress",
                        text,
                        "Must be an IP address or the URL of an address.",
                    ));
                };
                if owner != project.id {
                    return Err(ApiError::invalid_field(
                        "resource.IPAddress",
                        text,
                        CROSS_PROJECT,
                    ));
                }
                if address_region != region {
                    return Err(ApiError::invalid_field(
                        "resource.IPAddress",
                        text,
                        &format!("The address must be in the forwarding rule's region '{region}'."),
                    ));
                }
                let key = CollectionKey {
                    kind: Kind::Address,
                    location: region.to_string(),
                };
                let Some(found) = project.live_json(&key, address) else {
                    return Err(ApiError::not_found(&path));
                };
                let same_subnet = found["subnetwork"]
                    .as_str()
                    .is_some_and(|s| rel(s, "") == rel(&subnet.link, ""));
                if found["addressType"] != json!("INTERNAL") || !same_subnet {
                    return Err(ApiError::invalid_field(
                        "resource.IPAddress",
                        text,
                        &format!(
                            "The address must be an INTERNAL address of the subnetwork '{}'.",
                            rel(&subnet.link, "")
                        ),
                    ));
                }
                let ip = found["address"]
                    .as_str()
                    .and_then(|a| a.parse::<Ipv4Addr>().ok())
                    .ok_or_else(|| ApiError::not_found(&path))?;
                named = Some((project.id.clone(), region.to_string(), address.to_string()));
                ip
            }
        },
    };

    // Conflicts in the whole IP space (Shared VPC: the host and all its service projects).
    let ip_text = ip.to_string();
    let mine = port_ranges(&json!({"allPorts": all_ports, "ports": ports}));
    for other in view.family() {
        for (_, _, slot) in other.slots_of(Kind::ForwardingRule) {
            let Ok(rule) = serde_json::from_str::<Value>(&slot.json) else {
                continue;
            };
            let same = rule["loadBalancingScheme"] == json!("INTERNAL")
                && rule["IPAddress"].as_str() == Some(ip_text.as_str())
                && rule["network"].as_str() == Some(network_link.as_str());
            let rule_protocol = rule["IPProtocol"].as_str().unwrap_or("TCP");
            let protocols_meet = rule_protocol == protocol
                || rule_protocol == "L3_DEFAULT"
                || protocol == "L3_DEFAULT";
            if same && protocols_meet && ports_overlap(&mine, &port_ranges(&rule)) {
                return Err(ip_in_use(ip));
            }
        }
        for (_, _, slot) in other.slots_of(Kind::Instance) {
            let Ok(instance) = serde_json::from_str::<Value>(&slot.json) else {
                continue;
            };
            let nic = &instance["networkInterfaces"][0];
            if nic["networkIP"].as_str() == Some(ip_text.as_str())
                && nic["network"].as_str() == Some(network_link.as_str())
            {
                return Err(ip_in_use(ip));
            }
        }
        for (key, address, slot) in other.slots_of(Kind::Address) {
            let Ok(found) = serde_json::from_str::<Value>(&slot.json) else {
                continue;
            };
            let is_named = named.as_ref().is_some_and(|(p, r, n)| {
                *p == other.id && *r == key.location && n.as_str() == address
            });
            if !is_named
                && found["addressType"] == json!("INTERNAL")
                && found["address"].as_str() == Some(ip_text.as_str())
                && address_network(view, &found).as_deref() == Some(network_link.as_str())
            {
                return Err(ip_in_use(ip));
            }
        }
    }

    out.insert("IPAddress".into(), json!(ip_text));
    out.insert("IPProtocol".into(), json!(protocol));
    out.insert("loadBalancingScheme".into(), json!("INTERNAL"));
    out.insert("backendService".into(), json!(link(&path)));
    out.insert("network".into(), json!(network_link));
    out.insert("subnetwork".into(), json!(subnet.link));
    out.remove("portRange");
    if all_ports {
        out.remove("ports");
        out.insert("allPorts".into(), json!(true));
    } else {
        out.remove("allPorts");
        out.insert("ports".into(), json!(ports));
    }
    out.insert(
        "region".into(),
        json!(link(&format!("projects/{}/regions/{region}", project.id))),
    );
    let mut built = Built::from_parts(name, out);
    built.address_user = named.map(|(_, region, address)| {
        (
            CollectionKey {
                kind: Kind::Address,
                location: region,
            },
            address,
        )
    });
    Ok(built)
}

// ----------------------------------------------------------------------------------- getHealth

/// Whether the ingress allow rules of the instance's network (in the network's project, the host
/// under Shared VPC) admit TCP on `port` from both probe ranges to it. Deny rules and priorities
/// are not modelled.
fn probes_admitted(view: &View<'_>, instance: &Value, port: u16) -> bool {
    let nic = &instance["networkInterfaces"][0];
    let Some(network_link) = nic["network"].as_str() else {
        return false;
    };
    let network_path = rel(network_link, "");
    let Some(owner) = network_path.split('/').nth(1).and_then(|id| view.get(id)) else {
        return false;
    };
    let tags: Vec<&str> = instance["tags"]["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let rules: Vec<Value> = owner
        .live_of(Kind::Firewall)
        .map(|(_, _, rule)| rule)
        .filter(|rule| {
            rule["network"].as_str() == Some(network_link)
                && rule["direction"].as_str().unwrap_or("INGRESS") == "INGRESS"
                && rule["disabled"] != json!(true)
                && rule_targets(rule, &tags)
                && rule_allows_tcp(rule, port)
        })
        .collect();
    PROBE_RANGES.iter().all(|probe| {
        let Some(probe) = Cidr::parse(probe) else {
            return false;
        };
        rules.iter().any(|rule| {
            rule["sourceRanges"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .filter_map(|r| {
                    Cidr::parse(r).or_else(|| {
                        r.parse::<IpAddr>().ok().map(|addr| Cidr {
                            addr,
                            prefix: if addr.is_ipv4() { 32 } else { 128 },
                        })
                    })
                })
                .any(|range| range.covers(&probe))
        })
    })
}

/// A rule without targets applies to every instance; with `targetTags`, to instances carrying
/// one; with `targetServiceAccounts`, to none here (instances have no service accounts).
fn rule_targets(rule: &Value, tags: &[&str]) -> bool {
    let list = |field: &str| -> Vec<&str> {
        rule[field]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect()
    };
    let target_tags = list("targetTags");
    let target_accounts = list("targetServiceAccounts");
    if !target_accounts.is_empty() {
        return false;
    }
    target_tags.is_empty() || target_tags.iter().any(|t| tags.contains(t))
}

fn rule_allows_tcp(rule: &Value, port: u16) -> bool {
    rule["allowed"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|allowed| {
            let protocol = allowed["IPProtocol"].as_str().unwrap_or_default();
            if protocol == "all" {
                return true;
            }
            if !matches!(protocol, "tcp" | "6") {
                return false;
            }
            let ports: Vec<&str> = allowed["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            ports.is_empty()
                || ports.iter().any(|spec| {
                    let (low, high) = spec.split_once('-').unwrap_or((spec, spec));
                    matches!(
                        (low.parse::<u16>(), high.parse::<u16>()),
                        (Ok(low), Ok(high)) if (low..=high).contains(&port)
                    )
                })
        })
}

/// `regionBackendServices.getHealth` for one backend group: one entry per (member instance,
/// internal forwarding rule referencing the service); no `healthStatus` when no rule references
/// it. An instance is HEALTHY iff RUNNING, not marked unhealthy, and its network's firewall
/// admits the probes on the health check's port.
pub fn group_health(
    view: &View<'_>,
    unhealthy: &BTreeSet<String>,
    region: &str,
    name: &str,
    body: &Value,
) -> Result<String, ApiError> {
    let project = view.project;
    let key = CollectionKey {
        kind: Kind::BackendService,
        location: region.to_string(),
    };
    let service_path = format!("{}/{name}", key.path(&project.id));
    let Some(service) = project.live_json(&key, name) else {
        return Err(ApiError::not_found(&service_path));
    };
    let body = object(body)?;
    let group_ref =
        str_field(body, "group")?.ok_or_else(|| ApiError::required("resource.group"))?;
    let group_path = rel(group_ref, &project.id);
    let is_backend = service["backends"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|b| b["group"].as_str())
        .any(|g| rel(g, &project.id) == group_path);
    if !is_backend {
        return Err(ApiError::invalid_field(
            "resource.group",
            group_ref,
            &format!("The instance group is not a backend of '{service_path}'."),
        ));
    }
    let service_link = link(&service_path);
    let rules: Vec<Value> = project
        .live_of(Kind::ForwardingRule)
        .filter(|(k, _, rule)| {
            k.location == region && rule["backendService"].as_str() == Some(service_link.as_str())
        })
        .map(|(_, _, rule)| rule)
        .collect();
    let mut out = String::from("{\"kind\":\"compute#backendServiceGroupHealth\"");
    if !rules.is_empty() {
        let port = service["healthChecks"][0]
            .as_str()
            .and_then(|hc| {
                let path = rel(hc, &project.id);
                let (_, hc_region, _, hc_name) = regional_parts(&path)?;
                project.live_json(
                    &CollectionKey {
                        kind: Kind::HealthCheck,
                        location: hc_region.to_string(),
                    },
                    hc_name,
                )
            })
            .map_or(80, |hc| probed_port(&hc));
        let (zone, group) = match zonal_parts(&group_path) {
            Some((_, zone, _, group)) => (zone.to_string(), group.to_string()),
            None => (String::new(), String::new()),
        };
        let instances = CollectionKey {
            kind: Kind::Instance,
            location: zone.clone(),
        };
        let mut statuses = Vec::new();
        for member in project.members_of(&zone, &group).into_iter().flatten() {
            let Some(instance) = project.live_json(&instances, member) else {
                continue;
            };
            let instance_path = format!("{}/{member}", instances.path(&project.id));
            let healthy = instance["status"] == json!("RUNNING")
                && !unhealthy.contains(&instance_path)
                && probes_admitted(view, &instance, port);
            for rule in &rules {
                statuses.push(json!({
                    "healthState": if healthy { "HEALTHY" } else { "UNHEALTHY" },
                    "instance": instance["selfLink"],
                    "ipAddress": instance["networkInterfaces"][0]["networkIP"],
                    "forwardingRule": rule["selfLink"],
                    "forwardingRuleIp": rule["IPAddress"],
                }));
            }
        }
        if !statuses.is_empty() {
            out.push_str(",\"healthStatus\":");
            out.push_str(&Value::Array(statuses).to_string());
        }
    }
    out.push('}');
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_overlap_as_ranges() {
        let r = |v: Value| port_ranges(&v);
        assert!(ports_overlap(
            &r(json!({"ports": ["80"]})),
            &r(json!({"ports": ["70-90"]}))
        ));
        assert!(!ports_overlap(
            &r(json!({"ports": ["80", "443"]})),
            &r(json!({"ports": ["8080"]}))
        ));
        assert!(ports_overlap(
            &r(json!({"allPorts": true})),
            &r(json!({"ports": ["1"]}))
        ));
    }

    #[test]
    fn firewall_rules_match_ports_and_targets() {
        let rule = json!({"allowed": [{"IPProtocol": "tcp", "ports": ["80", "8000-8100"]}],
                          "targetTags": ["lb"]});
        assert!(rule_allows_tcp(&rule, 80));
        assert!(rule_allows_tcp(&rule, 8050));
        assert!(!rule_allows_tcp(&rule, 443));
        assert!(rule_allows_tcp(
            &json!({"allowed": [{"IPProtocol": "all"}]}),
            1
        ));
        assert!(!rule_allows_tcp(
            &json!({"allowed": [{"IPProtocol": "udp"}]}),
            80
        ));
        assert!(rule_targets(&rule, &["lb"]));
        assert!(!rule_targets(&rule, &["web"]));
        assert!(rule_targets(&json!({}), &[]));
    }

    #[test]
    fn fingerprints_are_eight_bytes_of_base64() {
        let fp = fingerprint("x");
        assert_eq!(fp.len(), 12);
        assert_ne!(fp, fingerprint("y"));
    }
}
