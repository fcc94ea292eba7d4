//! Validation of insert and patch bodies, and the stored form of each resource: what Compute
//! checks synchronously (400/404) and the output-only fields it fills in.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};

use serde_json::{Map, Value, json};

use crate::error::ApiError;
use crate::ipnet::Cidr;
use crate::kinds::{CollectionKey, Kind};
use crate::names::{NAME_REGEX, link, reference_path, valid_name};
use crate::state::{Project, Subnet};

/// A validated resource ready to be stored, with what quotas and the network knob need.
#[derive(Debug)]
pub struct Built {
    pub name: String,
    pub body: Map<String, Value>,
    /// The VPC network the resource belongs to, for per-network quotas and serialisation.
    pub network: Option<String>,
    /// An address the resource uses (an internal forwarding rule naming its address): it gains
    /// the resource as a user when the insert is DONE.
    pub address_user: Option<(CollectionKey, String)>,
}

impl Built {
    fn new(name: String, body: Map<String, Value>, network: Option<String>) -> Self {
        Self {
            name,
            body,
            network,
            address_user: None,
        }
    }

    /// A resource that belongs to no network slot.
    pub fn from_parts(name: String, body: Map<String, Value>) -> Self {
        Self::new(name, body, None)
    }
}

/// What validation sees of the world: the project a call names, and every project (for Shared
/// VPC, whose service projects use their host's networks and share its IP space).
#[derive(Clone, Copy)]
pub struct View<'a> {
    pub projects: &'a BTreeMap<String, Project>,
    pub project: &'a Project,
}

/// A network reference resolved through a [`View`].
pub struct NetworkRef<'a> {
    pub owner: &'a Project,
    pub name: String,
    /// Its full URL (`https://www.googleapis.com/compute/v1/projects/H/global/networks/N`).
    pub link: String,
}

/// A subnetwork reference resolved through a [`View`].
pub struct SubnetRef<'a> {
    pub owner: &'a Project,
    pub subnet: &'a Subnet,
    pub link: String,
    /// The full URL of the subnetwork's network.
    pub network_link: String,
}

/// Compute's refusal of a reference into a project the caller may not use (Shared VPC).
pub const CROSS_PROJECT: &str = "Cross-project references for this resource are not allowed.";

impl<'a> View<'a> {
    /// The project whose networks this project uses: its Shared VPC host, or itself.
    pub fn host_id(&self) -> &'a str {
        self.project
            .network_project
            .as_deref()
            .unwrap_or(&self.project.id)
    }

    /// A project of the world.
    pub fn get(&self, id: &str) -> Option<&'a Project> {
        self.projects.get(id)
    }

    /// The project named in a network or subnetwork reference, if this project may use it: itself
    /// or, for a Shared VPC service project, its host.
    fn network_owner(
        &self,
        owner: &str,
        field: &str,
        reference: &str,
    ) -> Result<&'a Project, ApiError> {
        if owner == self.project.id {
            return Ok(self.project);
        }
        if self.project.network_project.as_deref() == Some(owner)
            && let Some(host) = self.projects.get(owner)
        {
            return Ok(host);
        }
        Err(ApiError::invalid_field(field, reference, CROSS_PROJECT))
    }

    /// Resolves a network reference (full or partial URL).
    pub fn network(&self, reference: &str, field: &str) -> Result<NetworkRef<'a>, ApiError> {
        let path = reference_path(reference, &self.project.id);
        let parts: Vec<&str> = path.split('/').collect();
        let ["projects", owner, "global", "networks", name] = parts.as_slice() else {
            return Err(ApiError::invalid_field(
                field,
                reference,
                "Must be the URL of a network.",
            ));
        };
        let owner = self.network_owner(owner, field, reference)?;
        if !owner.has_network(name) {
            return Err(ApiError::not_found(&path));
        }
        Ok(NetworkRef {
            owner,
            name: (*name).to_string(),
            link: link(&path),
        })
    }

    /// Resolves a subnetwork reference (full or partial URL).
    pub fn subnetwork(&self, reference: &str, field: &str) -> Result<SubnetRef<'a>, ApiError> {
        let path = reference_path(reference, &self.project.id);
        let parts: Vec<&str> = path.split('/').collect();
        let ["projects", owner, "regions", region, "subnetworks", name] = parts.as_slice() else {
            return Err(ApiError::invalid_field(
                field,
                reference,
                "Must be the URL of a subnetwork.",
            ));
        };
        let owner = self.network_owner(owner, field, reference)?;
        let Some(subnet) = owner.subnet(region, name) else {
            return Err(ApiError::not_found(&path));
        };
        Ok(SubnetRef {
            owner,
            subnet,
            link: link(&path),
            network_link: link(&format!(
                "projects/{}/global/networks/{}",
                owner.id, subnet.network
            )),
        })
    }

    /// The projects that share this project's IP space: its network host and every service
    /// project of that host (only the project itself without Shared VPC).
    pub fn family(&self) -> impl Iterator<Item = &'a Project> + 'a {
        let host = self.host_id();
        self.projects
            .values()
            .filter(move |p| p.id == host || p.network_project.as_deref() == Some(host))
    }

    /// Every IPv4 address in use in this project's IP space.
    pub fn used_ips(&self) -> HashSet<Ipv4Addr> {
        self.family().flat_map(Project::used_ips).collect()
    }
}

pub(crate) fn object(body: &Value) -> Result<&Map<String, Value>, ApiError> {
    body.as_object()
        .ok_or_else(|| ApiError::invalid("Invalid JSON payload received. Expected an object."))
}

pub(crate) fn str_field<'a>(
    body: &'a Map<String, Value>,
    field: &str,
) -> Result<Option<&'a str>, ApiError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(ApiError::invalid(format!(
            "Invalid value at 'resource.{field}' ({}), expected a string",
            type_name(other)
        ))),
    }
}

pub(crate) fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "TYPE_BOOL",
        Value::Number(_) => "TYPE_NUMBER",
        Value::String(_) => "TYPE_STRING",
        Value::Array(_) => "TYPE_LIST",
        Value::Object(_) => "TYPE_MESSAGE",
    }
}

pub(crate) fn string_list(body: &Map<String, Value>, field: &str) -> Result<Vec<String>, ApiError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| {
                item.as_str().map(str::to_string).ok_or_else(|| {
                    ApiError::invalid(format!(
                        "Invalid value at 'resource.{field}' ({}), expected a list of strings",
                        type_name(item)
                    ))
                })
            })
            .collect(),
        Some(other) => Err(ApiError::invalid(format!(
            "Invalid value at 'resource.{field}' ({}), expected a list",
            type_name(other)
        ))),
    }
}

pub(crate) fn u32_field(
    body: &Map<String, Value>,
    field: &str,
    default: u32,
    max: u32,
) -> Result<u32, ApiError> {
    let value = match body.get(field) {
        None | Some(Value::Null) => return Ok(default),
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.parse::<u64>().ok(),
        Some(_) => None,
    };
    match value {
        Some(v) if v <= u64::from(max) => Ok(v as u32),
        _ => Err(ApiError::invalid_field(
            &format!("resource.{field}"),
            &body.get(field).map(compact).unwrap_or_default(),
            &format!("Must be an integer between 0 and {max}."),
        )),
    }
}

pub(crate) fn compact(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Checks the name common to every resource.
pub fn check_name(body: &Map<String, Value>) -> Result<String, ApiError> {
    let name = str_field(body, "name")?.ok_or_else(|| ApiError::required("resource.name"))?;
    if !valid_name(name) {
        return Err(ApiError::invalid_field(
            "resource.name",
            name,
            &format!("Must be a match of regex '{NAME_REGEX}'"),
        ));
    }
    Ok(name.to_string())
}

pub(crate) fn check_description(body: &Map<String, Value>) -> Result<(), ApiError> {
    if let Some(description) = str_field(body, "description")?
        && description.chars().count() > 2048
    {
        return Err(ApiError::invalid_field(
            "resource.description",
            &description.chars().take(32).collect::<String>(),
            "Must be at most 2048 characters long.",
        ));
    }
    Ok(())
}

/// Resolves a network reference (full or partial URL) to a network name of this project.
///
/// Routes and firewall rules live in the project of their network: a reference to another
/// project's network (a Shared VPC host's, from a service project) is refused with Compute's
/// `Cross project referencing is not allowed for this resource.`
fn network_ref(project: &Project, reference: &str, field: &str) -> Result<String, ApiError> {
    let path = reference_path(reference, &project.id);
    let parts: Vec<&str> = path.split('/').collect();
    let ["projects", owner, "global", "networks", name] = parts.as_slice() else {
        return Err(ApiError::invalid_field(
            field,
            reference,
            "Must be the URL of a network of this project.",
        ));
    };
    if *owner != project.id {
        return Err(ApiError::invalid_field(
            field,
            reference,
            "Cross project referencing is not allowed for this resource.",
        ));
    }
    if !project.has_network(name) {
        return Err(ApiError::not_found(&path));
    }
    Ok((*name).to_string())
}

/// Keeps only the fields a client may set, plus the common output fields.
pub(crate) fn base(
    kind: Kind,
    name: &str,
    body: &Map<String, Value>,
    inputs: &[&str],
) -> Map<String, Value> {
    let mut out = Map::new();
    out.insert("kind".into(), json!(kind.resource_kind()));
    out.insert("name".into(), json!(name));
    for field in inputs {
        if let Some(value) = body.get(*field)
            && !value.is_null()
        {
            out.insert((*field).to_string(), value.clone());
        }
    }
    out
}

/// Validates a routes.insert body.
pub fn route(project: &Project, body: &Value) -> Result<Built, ApiError> {
    let body = object(body)?;
    let name = check_name(body)?;
    check_description(body)?;
    let network_url =
        str_field(body, "network")?.ok_or_else(|| ApiError::required("resource.network"))?;
    let network = network_ref(project, network_url, "resource.network")?;
    let dest =
        str_field(body, "destRange")?.ok_or_else(|| ApiError::required("resource.destRange"))?;
    let Some(dest_cidr) = Cidr::parse(dest) else {
        return Err(ApiError::invalid_field(
            "resource.destRange",
            dest,
            "Must be a valid IPv4 or IPv6 CIDR range.",
        ));
    };
    let priority = u32_field(body, "priority", 1000, 65535)?;
    let tags = string_list(body, "tags")?;
    for tag in &tags {
        if !valid_name(tag) {
            return Err(ApiError::invalid_field(
                "resource.tags",
                tag,
                &format!("Must be a match of regex '{NAME_REGEX}'"),
            ));
        }
    }
    const HOPS: [&str; 5] = [
        "nextHopGateway",
        "nextHopInstance",
        "nextHopIp",
        "nextHopIlb",
        "nextHopVpnTunnel",
    ];
    let hops: Vec<&str> = HOPS
        .iter()
        .copied()
        .filter(|field| body.get(*field).is_some_and(|v| !v.is_null()))
        .collect();
    if hops.len() != 1 {
        return Err(ApiError::invalid(format!(
            "Invalid value for field 'resource': exactly one of {} must be specified, found {}.",
            HOPS.join(", "),
            if hops.is_empty() {
                "none".to_string()
            } else {
                hops.join(", ")
            }
        )));
    }
    for subnet in project.subnets_of(&network) {
        if subnet.cidr.covers(&dest_cidr) {
            return Err(ApiError::invalid(format!(
                "Invalid value for field 'resource.destRange': '{dest}'. The destination range \
                 overlaps with the subnetwork '{}' range {} of network '{network}'; a static route \
                 may not equal or fall inside a subnet range.",
                subnet.name, subnet.cidr
            )));
        }
    }

    let mut out = base(Kind::Route, &name, body, &["description"]);
    out.insert(
        "network".into(),
        json!(link(&format!(
            "projects/{}/global/networks/{network}",
            project.id
        ))),
    );
    out.insert("destRange".into(), json!(dest_cidr.to_string()));
    out.insert("priority".into(), json!(priority));
    if !tags.is_empty() {
        out.insert("tags".into(), json!(tags));
    }
    let mut warnings = Vec::new();
    match hops[0] {
        "nextHopGateway" => {
            let reference = str_field(body, "nextHopGateway")?.unwrap_or_default();
            let path = reference_path(reference, &project.id);
            if path
                != format!(
                    "projects/{}/global/gateways/default-internet-gateway",
                    project.id
                )
            {
                return Err(ApiError::invalid_field(
                    "resource.nextHopGateway",
                    reference,
                    "Only the default internet gateway is supported.",
                ));
            }
            out.insert("nextHopGateway".into(), json!(link(&path)));
        }
        "nextHopInstance" => {
            let reference = str_field(body, "nextHopInstance")?.unwrap_or_default();
            let path = reference_path(reference, &project.id);
            let mut parts = path.split('/');
            let (
                Some("projects"),
                Some(owner),
                Some("zones"),
                Some(zone),
                Some("instances"),
                Some(instance),
                None,
            ) = (
                parts.next(),
                parts.next(),
                parts.next(),
                parts.next(),
                parts.next(),
                parts.next(),
                parts.next(),
            )
            else {
                return Err(ApiError::invalid_field(
                    "resource.nextHopInstance",
                    reference,
                    "Must be the URL of an instance: projects/P/zones/Z/instances/I.",
                ));
            };
            if owner != project.id {
                // The static-routes guide: a next-hop instance "that is in the same project as
                // the route". The wording is the emulator's (model message).
                return Err(ApiError::invalid_field(
                    "resource.nextHopInstance",
                    reference,
                    &format!(
                        "The next-hop instance must be in the route's project '{}'; \
                         use nextHopIp for an instance of another project.",
                        project.id
                    ),
                ));
            }
            let key = CollectionKey {
                kind: Kind::Instance,
                location: zone.to_string(),
            };
            let Some(found) = project.live_json(&key, instance) else {
                return Err(ApiError::not_found(&path));
            };
            if found["canIpForward"] != json!(true) {
                warnings.push(warning(
                    "NEXT_HOP_CANNOT_IP_FORWARD",
                    "Next hop instance cannot ip forward.",
                    &path,
                ));
            }
            if found["status"] != json!("RUNNING") {
                warnings.push(warning(
                    "NEXT_HOP_NOT_RUNNING",
                    "Next hop instance is not running.",
                    &path,
                ));
            }
            let on_network = found["networkInterfaces"].as_array().is_some_and(|nics| {
                nics.iter().any(|nic| {
                    nic["network"]
                        .as_str()
                        .is_some_and(|n| n.ends_with(&format!("/networks/{network}")))
                })
            });
            if !on_network {
                warnings.push(warning(
                    "NEXT_HOP_INSTANCE_NOT_ON_NETWORK",
                    "Next hop instance is not on the route's network.",
                    &path,
                ));
            }
            out.insert("nextHopInstance".into(), json!(link(&path)));
        }
        "nextHopIp" => {
            let ip = str_field(body, "nextHopIp")?.unwrap_or_default();
            if ip.parse::<Ipv4Addr>().is_err() {
                return Err(ApiError::invalid_field(
                    "resource.nextHopIp",
                    ip,
                    "Must be a valid IPv4 address.",
                ));
            }
            out.insert("nextHopIp".into(), json!(ip));
        }
        "nextHopIlb" => {
            let reference = str_field(body, "nextHopIlb")?.unwrap_or_default();
            if reference.parse::<IpAddr>().is_ok() {
                out.insert("nextHopIlb".into(), json!(reference));
            } else {
                let path = reference_path(reference, &project.id);
                let parts: Vec<&str> = path.split('/').collect();
                let [_, _, "regions", region, "forwardingRules", rule] = parts.as_slice() else {
                    return Err(ApiError::invalid_field(
                        "resource.nextHopIlb",
                        reference,
                        "Must be the URL of a forwarding rule or its IP address.",
                    ));
                };
                let key = CollectionKey {
                    kind: Kind::ForwardingRule,
                    location: (*region).to_string(),
                };
                let Some(found) = project.live_json(&key, rule) else {
                    return Err(ApiError::not_found(&path));
                };
                if found["loadBalancingScheme"] != json!("INTERNAL") {
                    return Err(ApiError::invalid_field(
                        "resource.nextHopIlb",
                        reference,
                        "The forwarding rule must have loadBalancingScheme INTERNAL.",
                    ));
                }
                out.insert("nextHopIlb".into(), json!(link(&path)));
            }
        }
        _ => {
            let reference = str_field(body, "nextHopVpnTunnel")?.unwrap_or_default();
            let path = reference_path(reference, &project.id);
            return Err(ApiError::not_found(&path));
        }
    }
    out.insert("routeType".into(), json!("STATIC"));
    out.insert("routeStatus".into(), json!("ACTIVE"));
    if !warnings.is_empty() {
        out.insert("warnings".into(), json!(warnings));
    }
    Ok(Built::new(name, out, Some(network)))
}

fn warning(code: &str, message: &str, instance: &str) -> Value {
    json!({"code": code, "message": message, "data": [{"key": "instance", "value": link(instance)}]})
}

const PROTOCOLS: [&str; 8] = ["tcp", "udp", "icmp", "esp", "ah", "ipip", "sctp", "all"];

fn check_rules(body: &Map<String, Value>, field: &str) -> Result<Option<Value>, ApiError> {
    let Some(rules) = body.get(field).filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let Some(rules) = rules.as_array() else {
        return Err(ApiError::invalid(format!(
            "Invalid value at 'resource.{field}', expected a list"
        )));
    };
    for (i, rule) in rules.iter().enumerate() {
        let at = format!("resource.{field}[{i}]");
        let Some(rule) = rule.as_object() else {
            return Err(ApiError::invalid(format!(
                "Invalid value at '{at}', expected an object"
            )));
        };
        let protocol = str_field(rule, "IPProtocol")?
            .ok_or_else(|| ApiError::required(&format!("{at}.IPProtocol")))?;
        let numeric = protocol.parse::<u8>().is_ok();
        if !numeric && !PROTOCOLS.contains(&protocol) {
            return Err(ApiError::invalid_field(
                &format!("{at}.IPProtocol"),
                protocol,
                "Must be one of tcp, udp, icmp, esp, ah, ipip, sctp, all or an IP protocol number.",
            ));
        }
        let ports = string_list(rule, "ports")?;
        if !ports.is_empty() && !matches!(protocol, "tcp" | "udp" | "sctp" | "6" | "17" | "132") {
            return Err(ApiError::invalid_field(
                &format!("{at}.ports"),
                &ports.join(","),
                "Ports may only be specified for tcp, udp or sctp.",
            ));
        }
        for port in &ports {
            if !valid_port_range(port) {
                return Err(ApiError::invalid_field(
                    &format!("{at}.ports"),
                    port,
                    "Must be a port number (0-65535) or a range 'low-high'.",
                ));
            }
        }
    }
    Ok(Some(Value::Array(rules.clone())))
}

pub(crate) fn valid_port_range(text: &str) -> bool {
    let parse = |s: &str| {
        !s.is_empty()
            && s.len() <= 5
            && s.bytes().all(|b| b.is_ascii_digit())
            && s.parse::<u32>().is_ok_and(|p| p <= 65535)
    };
    match text.split_once('-') {
        None => parse(text),
        Some((low, high)) => {
            parse(low) && parse(high) && low.parse::<u32>().ok() <= high.parse::<u32>().ok()
        }
    }
}

/// The most IP ranges one VPC firewall rule may hold in `sourceRanges`, and separately in
/// `destinationRanges`: 5,000 each. Model value, not a Google figure for VPC firewall rules: the
/// per-rule table of Google's Cloud NGFW "Quotas and limits" page
/// (<https://cloud.google.com/firewall/docs/quotas>) was not in the stored copy consulted. The
/// figure follows Compute's own reference for the sibling firewall-policy rules,
/// `FirewallPolicyRuleMatcher` ("Maximum number of destination CIDR IP ranges allowed is 5000",
/// and the same for source ranges; compute_v1 Python reference), and a third-party report that
/// "Google cloud VPC maximum number of source ranges per firewall rule is 5000"
/// (crowdsecurity/cs-cloud-firewall-bouncer#27). See the emulator README, "Firewall rule size".
pub const MAX_FIREWALL_RANGES: usize = 5000;

fn check_ranges(body: &Map<String, Value>, field: &str) -> Result<Vec<Cidr>, ApiError> {
    let ranges = string_list(body, field)?;
    if ranges.len() > MAX_FIREWALL_RANGES {
        // The wording is a model value in Compute's `Invalid value for field` shape.
        return Err(ApiError::invalid_field(
            &format!("resource.{field}"),
            &format!("{} ranges", ranges.len()),
            &format!("A firewall rule may hold at most {MAX_FIREWALL_RANGES} {field}."),
        ));
    }
    ranges
        .iter()
        .map(|range| {
            // Compute accepts a bare address as a /32 in firewall ranges.
            let parsed = Cidr::parse(range).or_else(|| {
                range.parse::<IpAddr>().ok().map(|addr| Cidr {
                    addr,
                    prefix: if addr.is_ipv4() { 32 } else { 128 },
                })
            });
            parsed.ok_or_else(|| {
                ApiError::invalid_field(
                    &format!("resource.{field}"),
                    range,
                    "Must be a valid IPv4 or IPv6 CIDR range.",
                )
            })
        })
        .collect()
}

/// Validates a firewalls.insert body (and the merged result of a patch).
pub fn firewall(project: &Project, body: &Value) -> Result<Built, ApiError> {
    let body = object(body)?;
    let name = check_name(body)?;
    check_description(body)?;
    let network = match str_field(body, "network")? {
        Some(reference) => network_ref(project, reference, "resource.network")?,
        None => network_ref(project, "global/networks/default", "resource.network")?,
    };
    let priority = u32_field(body, "priority", 1000, 65535)?;
    let direction = str_field(body, "direction")?.unwrap_or("INGRESS");
    if !matches!(direction, "INGRESS" | "EGRESS") {
        return Err(ApiError::invalid_field(
            "resource.direction",
            direction,
            "Must be INGRESS or EGRESS.",
        ));
    }
    let allowed = check_rules(body, "allowed")?;
    let denied = check_rules(body, "denied")?;
    let has = |rules: &Option<Value>| {
        rules
            .as_ref()
            .and_then(Value::as_array)
            .is_some_and(|r| !r.is_empty())
    };
    if has(&allowed) == has(&denied) {
        return Err(ApiError::invalid(
            "Invalid value for field 'resource': exactly one of 'allowed' or 'denied' must be specified.",
        ));
    }
    let mut ranges = check_ranges(body, "sourceRanges")?;
    ranges.extend(check_ranges(body, "destinationRanges")?);
    if ranges.iter().any(|r| r.addr.is_ipv4()) && ranges.iter().any(|r| r.addr.is_ipv6()) {
        return Err(ApiError::invalid(
            "Invalid value for field 'resource': a firewall rule may hold IPv4 or IPv6 ranges, not both.",
        ));
    }
    let source_tags = string_list(body, "sourceTags")?;
    if direction == "EGRESS" && !source_tags.is_empty() {
        return Err(ApiError::invalid_field(
            "resource.sourceTags",
            &source_tags.join(","),
            "Source tags may not be set on an EGRESS rule.",
        ));
    }
    let tags_used = !source_tags.is_empty() || !string_list(body, "targetTags")?.is_empty();
    let accounts_used = !string_list(body, "sourceServiceAccounts")?.is_empty()
        || !string_list(body, "targetServiceAccounts")?.is_empty();
    if tags_used && accounts_used {
        return Err(ApiError::invalid(
            "Invalid value for field 'resource': service accounts and tags cannot be mixed.",
        ));
    }
    let mut out = base(
        Kind::Firewall,
        &name,
        body,
        &[
            "description",
            "sourceRanges",
            "destinationRanges",
            "sourceTags",
            "targetTags",
            "sourceServiceAccounts",
            "targetServiceAccounts",
            "disabled",
            "logConfig",
        ],
    );
    out.insert(
        "network".into(),
        json!(link(&format!(
            "projects/{}/global/networks/{network}",
            project.id
        ))),
    );
    out.insert("priority".into(), json!(priority));
    out.insert("direction".into(), json!(direction));
    if let Some(allowed) = allowed {
        out.insert("allowed".into(), allowed);
    }
    if let Some(denied) = denied {
        out.insert("denied".into(), denied);
    }
    if direction == "INGRESS"
        && !out.contains_key("sourceRanges")
        && source_tags.is_empty()
        && !accounts_used
    {
        out.insert("sourceRanges".into(), json!(["0.0.0.0/0"]));
    }
    out.entry("disabled").or_insert(json!(false));
    out.entry("logConfig").or_insert(json!({"enable": false}));
    Ok(Built::new(name, out, Some(network)))
}

/// Validates an addresses.insert body (regional when `region` is given) and allocates the IP.
pub fn address(view: &View<'_>, region: Option<&str>, body: &Value) -> Result<Built, ApiError> {
    let project = view.project;
    let body = object(body)?;
    let name = check_name(body)?;
    check_description(body)?;
    let address_type = str_field(body, "addressType")?.unwrap_or("EXTERNAL");
    if !matches!(address_type, "EXTERNAL" | "INTERNAL") {
        return Err(ApiError::invalid_field(
            "resource.addressType",
            address_type,
            "Must be EXTERNAL or INTERNAL.",
        ));
    }
    let requested = match str_field(body, "address")? {
        Some(ip) => Some(ip.parse::<Ipv4Addr>().map_err(|_| {
            ApiError::invalid_field("resource.address", ip, "Must be a valid IPv4 address.")
        })?),
        None => None,
    };
    let kind = if region.is_some() {
        Kind::Address
    } else {
        Kind::GlobalAddress
    };
    let mut out = base(
        kind,
        &name,
        body,
        &[
            "description",
            "purpose",
            "networkTier",
            "labels",
            "ipVersion",
        ],
    );
    let mut network = None;
    let ip = if address_type == "INTERNAL" {
        let Some(region) = region else {
            return Err(ApiError::invalid(
                "Invalid value for field 'resource.addressType': 'INTERNAL'. Global internal addresses need purpose VPC_PEERING, which this emulator does not serve.",
            ));
        };
        let subnet_ref = str_field(body, "subnetwork")?
            .ok_or_else(|| ApiError::required("resource.subnetwork"))?;
        // A bare name means the subnetwork of that name in the address's region.
        let reference = if subnet_ref.contains('/') {
            subnet_ref.to_string()
        } else {
            format!("regions/{region}/subnetworks/{subnet_ref}")
        };
        let resolved = view.subnetwork(&reference, "resource.subnetwork")?;
        let subnet = resolved.subnet;
        let subnet_name = subnet.name.as_str();
        if subnet.region != region {
            return Err(ApiError::invalid_field(
                "resource.subnetwork",
                subnet_ref,
                &format!("The subnetwork must be in the address's region '{region}'."),
            ));
        }
        network = Some(subnet.network.clone());
        out.insert("subnetwork".into(), json!(resolved.link));
        let used = view.used_ips();
        match requested {
            Some(ip) => {
                if !subnet.cidr.contains(IpAddr::V4(ip)) {
                    return Err(ApiError::invalid_field(
                        "resource.address",
                        &ip.to_string(),
                        &format!(
                            "The address must lie in the subnetwork's range {}.",
                            subnet.cidr
                        ),
                    ));
                }
                if used.contains(&ip) {
                    return Err(ApiError::invalid_field(
                        "resource.address",
                        &ip.to_string(),
                        "IP address is already being used by another resource.",
                    ));
                }
                ip
            }
            None => free_ip(&subnet.cidr, &used).ok_or_else(|| {
                ApiError::invalid(format!(
                    "The subnetwork '{subnet_name}' has no free IP address left."
                ))
            })?,
        }
    } else {
        let used = view.used_ips();
        match requested {
            Some(ip) if used.contains(&ip) => {
                return Err(ApiError::invalid_field(
                    "resource.address",
                    &ip.to_string(),
                    "IP address is already reserved.",
                ));
            }
            Some(ip) => ip,
            // Emulated external addresses come from the documentation range TEST-NET-3.
            None => free_ip(
                &Cidr {
                    addr: IpAddr::V4(Ipv4Addr::new(203, 0, 113, 0)),
                    prefix: 24,
                },
                &used,
            )
            .ok_or_else(|| {
                ApiError::invalid(
                    "No external IP address left in the emulated pool 203.0.113.0/24.",
                )
            })?,
        }
    };
    out.insert("address".into(), json!(ip.to_string()));
    out.insert("addressType".into(), json!(address_type));
    out.insert("status".into(), json!("RESERVED"));
    if let Some(region) = region {
        out.insert(
            "region".into(),
            json!(link(&format!("projects/{}/regions/{region}", project.id))),
        );
    }
    if address_type == "EXTERNAL" {
        out.entry("networkTier").or_insert(json!("PREMIUM"));
    }
    Ok(Built::new(name, out, network))
}

pub(crate) fn free_ip(cidr: &Cidr, used: &std::collections::HashSet<Ipv4Addr>) -> Option<Ipv4Addr> {
    // Like GCP, the first two and the last two addresses of a subnet are reserved.
    let size = cidr.size_v4();
    (2..size.saturating_sub(2)).find_map(|i| {
        let ip = cidr.nth_v4(u32::try_from(i).ok()?)?;
        (!used.contains(&ip)).then_some(ip)
    })
}

/// Validates a forwardingRules.insert body in `region`.
pub fn forwarding_rule(view: &View<'_>, region: &str, body: &Value) -> Result<Built, ApiError> {
    let project = view.project;
    let body = object(body)?;
    let name = check_name(body)?;
    check_description(body)?;
    let protocol = str_field(body, "IPProtocol")?.unwrap_or("TCP");
    if !matches!(
        protocol,
        "TCP" | "UDP" | "ESP" | "AH" | "SCTP" | "ICMP" | "L3_DEFAULT"
    ) {
        return Err(ApiError::invalid_field(
            "resource.IPProtocol",
            protocol,
            "Must be one of TCP, UDP, ESP, AH, SCTP, ICMP, L3_DEFAULT.",
        ));
    }
    let scheme = str_field(body, "loadBalancingScheme")?.unwrap_or("EXTERNAL");
    if !matches!(
        scheme,
        "EXTERNAL" | "EXTERNAL_MANAGED" | "INTERNAL" | "INTERNAL_MANAGED" | "INTERNAL_SELF_MANAGED"
    ) {
        return Err(ApiError::invalid_field(
            "resource.loadBalancingScheme",
            scheme,
            "Must be a load-balancing scheme.",
        ));
    }
    let port_range = str_field(body, "portRange")?;
    let ports = string_list(body, "ports")?;
    let all_ports = body
        .get("allPorts")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if [port_range.is_some(), !ports.is_empty(), all_ports]
        .iter()
        .filter(|b| **b)
        .count()
        > 1
    {
        return Err(ApiError::invalid(
            "Invalid value for field 'resource': portRange, ports and allPorts are mutually exclusive.",
        ));
    }
    if let Some(range) = port_range
        && !valid_port_range(range)
    {
        return Err(ApiError::invalid_field(
            "resource.portRange",
            range,
            "Must be a port or a range 'low-high'.",
        ));
    }
    if ports.len() > 5 {
        // The observed refusal (banzaicloud/koperator#523).
        return Err(ApiError::invalid_field(
            "resource.ports[5]",
            &ports[5],
            "Too many ports specified. Maximum is 5.",
        ));
    }
    for (i, port) in ports.iter().enumerate() {
        if !valid_port_range(port) || port.split('-').any(|p| p == "0") {
            return Err(ApiError::invalid_field(
                &format!("resource.ports[{i}]"),
                port,
                "Must be a port (1-65535) or a range 'low-high'.",
            ));
        }
    }
    let mut out = base(
        Kind::ForwardingRule,
        &name,
        body,
        &[
            "description",
            "portRange",
            "ports",
            "allPorts",
            "networkTier",
            "allowGlobalAccess",
            "labels",
        ],
    );
    if scheme == "INTERNAL" {
        return crate::lb::internal_forwarding_rule(
            view, region, body, name, out, protocol, port_range,
        );
    }
    if let Some(target) = str_field(body, "target")? {
        let path = reference_path(target, &project.id);
        let parts: Vec<&str> = path.split('/').collect();
        let [_, _, "zones", zone, "targetInstances", ti] = parts.as_slice() else {
            return Err(ApiError::invalid_field(
                "resource.target",
                target,
                "Must be the URL of a target instance.",
            ));
        };
        if crate::world::region_of_zone(zone) != region {
            return Err(ApiError::invalid_field(
                "resource.target",
                target,
                "The target instance must be in the forwarding rule's region.",
            ));
        }
        let key = CollectionKey {
            kind: Kind::TargetInstance,
            location: (*zone).to_string(),
        };
        if project.live_json(&key, ti).is_none() {
            return Err(ApiError::not_found(&path));
        }
        out.insert("target".into(), json!(link(&path)));
    }
    let ip = match str_field(body, "IPAddress")? {
        Some(text) => match text.parse::<Ipv4Addr>() {
            Ok(ip) => ip.to_string(),
            Err(_) => {
                let path = reference_path(text, &project.id);
                let address_name = path.rsplit('/').next().unwrap_or_default();
                let key = CollectionKey {
                    kind: Kind::Address,
                    location: region.to_string(),
                };
                let found = project
                    .live_json(&key, address_name)
                    .ok_or_else(|| ApiError::not_found(&path))?;
                found["address"].as_str().unwrap_or_default().to_string()
            }
        },
        None => {
            let used = view.used_ips();
            free_ip(
                &Cidr {
                    addr: IpAddr::V4(Ipv4Addr::new(198, 51, 100, 0)),
                    prefix: 24,
                },
                &used,
            )
            .map(|ip| ip.to_string())
            .ok_or_else(|| {
                ApiError::invalid(
                    "No ephemeral IP address left in the emulated pool 198.51.100.0/24.",
                )
            })?
        }
    };
    let mut network = None;
    if let Some(reference) = str_field(body, "network")? {
        let resolved = view.network(reference, "resource.network")?;
        out.insert("network".into(), json!(resolved.link));
        network = Some(resolved.name);
    }
    out.insert("IPAddress".into(), json!(ip));
    out.insert("IPProtocol".into(), json!(protocol));
    out.insert("loadBalancingScheme".into(), json!(scheme));
    out.insert(
        "region".into(),
        json!(link(&format!("projects/{}/regions/{region}", project.id))),
    );
    Ok(Built::new(name, out, network))
}

/// Validates a targetInstances.insert body in `zone`.
pub fn target_instance(project: &Project, zone: &str, body: &Value) -> Result<Built, ApiError> {
    let body = object(body)?;
    let name = check_name(body)?;
    check_description(body)?;
    let instance =
        str_field(body, "instance")?.ok_or_else(|| ApiError::required("resource.instance"))?;
    let path = reference_path(instance, &project.id);
    let parts: Vec<&str> = path.split('/').collect();
    let [_, _, "zones", instance_zone, "instances", instance_name] = parts.as_slice() else {
        return Err(ApiError::invalid_field(
            "resource.instance",
            instance,
            "Must be the URL of an instance.",
        ));
    };
    if *instance_zone != zone {
        return Err(ApiError::invalid_field(
            "resource.instance",
            instance,
            "The instance must be in the target instance's zone.",
        ));
    }
    let key = CollectionKey {
        kind: Kind::Instance,
        location: zone.to_string(),
    };
    if project.live_json(&key, instance_name).is_none() {
        return Err(ApiError::not_found(&path));
    }
    let nat = str_field(body, "natPolicy")?.unwrap_or("NO_NAT");
    if nat != "NO_NAT" {
        return Err(ApiError::invalid_field(
            "resource.natPolicy",
            nat,
            "Must be NO_NAT.",
        ));
    }
    let mut out = base(Kind::TargetInstance, &name, body, &["description"]);
    out.insert("instance".into(), json!(link(&path)));
    out.insert("natPolicy".into(), json!("NO_NAT"));
    out.insert(
        "zone".into(),
        json!(link(&format!("projects/{}/zones/{zone}", project.id))),
    );
    Ok(Built::new(name, out, None))
}

/// Applies a JSON merge patch (RFC 7396) of `patch` onto `target`.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(fields) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            if let Value::Object(map) = target {
                for (key, value) in fields {
                    if value.is_null() {
                        map.remove(key);
                    } else {
                        merge_patch(map.entry(key.clone()).or_insert(Value::Null), value);
                    }
                }
            }
        }
        other => *target = other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges() {
        assert!(valid_port_range("443"));
        assert!(valid_port_range("8000-8080"));
        assert!(!valid_port_range("8080-8000"));
        assert!(!valid_port_range("65536"));
        assert!(!valid_port_range(""));
        assert!(!valid_port_range("-1"));
        assert!(!valid_port_range("1-"));
    }

    /// A world with one project `p` and its `default` network.
    fn state() -> crate::state::State {
        let world = crate::world::World::parse(
            "projects:\n  - id: p\n    networks:\n      - name: default\n        subnetworks:\n          \
             - {name: default, region: us-central1, ipCidrRange: 10.128.0.0/20}\n",
            "test",
        )
        .unwrap();
        crate::state::State::new(&world, 0, None, crate::model::BusyBehavior::Queue)
    }

    /// `n` distinct /32s inside 10.200.0.0/16.
    fn ranges(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("10.200.{}.{}/32", i / 256, i % 256))
            .collect()
    }

    fn rule(field: &str, n: usize) -> Value {
        let direction = if field == "destinationRanges" {
            "EGRESS"
        } else {
            "INGRESS"
        };
        json!({
            "name": "fw",
            "direction": direction,
            "allowed": [{"IPProtocol": "tcp", "ports": ["443"]}],
            field: ranges(n),
        })
    }

    #[test]
    fn firewall_ranges_up_to_the_limit_are_accepted_one_more_is_refused() {
        let mut state = state();
        let project = state.project_mut("p").unwrap();
        for field in ["sourceRanges", "destinationRanges"] {
            let built = firewall(project, &rule(field, MAX_FIREWALL_RANGES)).unwrap();
            assert_eq!(
                built.body[field].as_array().unwrap().len(),
                MAX_FIREWALL_RANGES,
                "{field}"
            );
            let err = firewall(project, &rule(field, MAX_FIREWALL_RANGES + 1)).unwrap_err();
            assert_eq!((err.code, err.reason), (400, "invalid"), "{field}");
            assert_eq!(
                err.message,
                format!(
                    "Invalid value for field 'resource.{field}': '5001 ranges'. \
                     A firewall rule may hold at most 5000 {field}."
                )
            );
        }
    }

    #[test]
    fn firewall_range_limit_is_per_field() {
        let mut state = state();
        let project = state.project_mut("p").unwrap();
        let mut body = rule("sourceRanges", MAX_FIREWALL_RANGES);
        body["destinationRanges"] = json!(ranges(MAX_FIREWALL_RANGES));
        firewall(project, &body).expect("5,000 of each is within both limits");
    }

    #[test]
    fn a_patch_whose_merged_rule_exceeds_the_range_limit_is_refused() {
        let mut state = state();
        let project = state.project_mut("p").unwrap();
        let mut merged = json!(firewall(project, &rule("sourceRanges", 1)).unwrap().body);
        merge_patch(
            &mut merged,
            &json!({"sourceRanges": ranges(MAX_FIREWALL_RANGES + 1)}),
        );
        let err = firewall(project, &merged).unwrap_err();
        assert_eq!(err.code, 400);
        assert!(
            err.message.contains("'resource.sourceRanges'"),
            "{}",
            err.message
        );
    }

    #[test]
    fn merge_patch_follows_rfc7396() {
        let mut target = json!({"a": 1, "b": {"c": 2, "d": 3}, "e": [1]});
        merge_patch(&mut target, &json!({"a": null, "b": {"c": 5}, "e": [2, 3]}));
        assert_eq!(target, json!({"b": {"c": 5, "d": 3}, "e": [2, 3]}));
    }
}
