//! The emulated cloud's state: projects, their resources and operations, and the discrete-event
//! clock that moves operations from PENDING to DONE and applies their effects in time order.
//!
//! Everything here is synchronous and runs under one lock; time is passed in, so the same calls
//! give the same state.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet, VecDeque};
use std::net::Ipv4Addr;
use std::time::Duration;

use serde_json::{Map, Value, json};
use tokio::time::Instant;

use crate::error::ApiError;
use crate::filter::Filter;
use crate::ipnet::Cidr;
use crate::kinds::{CollectionKey, Kind, Placement};
use crate::lb;
use crate::model::{BusyBehavior, Quotas, RateLimits};
use crate::names::link;
use crate::operation::{Clock, Effect, Failure, Operation, Status, operation_name};
use crate::resources::{self, Built, View};
use crate::world::{ProjectSpec, World, region_of_zone};

mod aggregated;
#[cfg(test)]
mod operations_tests;

/// Where a stored resource is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Its insert operation is not DONE yet: the name is taken, the resource not visible.
    Creating,
    Live,
    /// Its delete operation is not DONE yet: still visible.
    Deleting,
}

/// One stored resource: its JSON text (compact, as served) and its phase.
#[derive(Debug, Clone)]
pub struct Slot {
    pub json: Box<str>,
    pub phase: Phase,
    pub network: Option<String>,
}

/// A subnetwork, as routes and addresses need it.
#[derive(Debug, Clone)]
pub struct Subnet {
    pub name: String,
    pub region: String,
    pub network: String,
    pub cidr: Cidr,
}

/// A VPC network's mutation slots (the serialisation knob of docs/compute-api.md §11).
#[derive(Debug, Clone)]
struct NetworkSlots {
    concurrency: Option<u32>,
    busy: BusyBehavior,
    running: u32,
    queue: VecDeque<(String, String)>,
    routes: u64,
}

/// Calls are charged to one of these per-minute groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub enum RateGroup {
    Reads,
    Writes,
    OperationReads,
    RegionalWrites,
}

/// One project.
#[derive(Debug)]
pub struct Project {
    pub id: String,
    pub number: u64,
    /// Shared VPC: the host project whose networks this service project uses.
    pub network_project: Option<String>,
    /// Shared VPC: some project of the world names this one as its `networkProject`.
    pub xpn_host: bool,
    /// When the world was loaded, as the project's `creationTimestamp`.
    pub created: String,
    pub quotas: Quotas,
    pub rate_limits: RateLimits,
    networks: BTreeMap<String, NetworkSlots>,
    subnets: Vec<Subnet>,
    regions: BTreeSet<String>,
    zones: BTreeSet<String>,
    collections: BTreeMap<CollectionKey, BTreeMap<String, Slot>>,
    /// Operations by scope (`global`, `regions/R`, `zones/Z`) and name.
    operations: BTreeMap<String, BTreeMap<String, Operation>>,
    request_ids: HashMap<String, (String, String, Instant)>,
    /// Completion events: (when, sequence, scope, name).
    events: BinaryHeap<Reverse<(Instant, u64, String, String)>>,
    rate_windows: HashMap<(RateGroup, String), (u64, u64)>,
    /// Members of each instance group, by (zone, group): instance names of that zone.
    members: BTreeMap<(String, String), BTreeSet<String>>,
}

/// What a mutation needs besides its body.
#[derive(Debug, Clone)]
pub struct MutationContext {
    pub now: Instant,
    pub user: String,
    pub request_id: Option<String>,
    /// How long the operation stays PENDING (if a network slot is free).
    pub pending: Duration,
    /// How long it runs.
    pub run_for: Duration,
    /// Injected failure (`--faults opfail`).
    pub fail: bool,
}

/// Query parameters of a list call.
#[derive(Debug, Default)]
pub struct ListParams {
    pub filter: Option<Filter>,
    pub max_results: usize,
    pub page_token: Option<String>,
    pub order_by_creation_desc: bool,
}

/// How many resources and operations each project holds, for stats.
#[derive(Debug, serde::Serialize)]
pub struct Counts {
    pub resources: BTreeMap<String, usize>,
    pub operations: usize,
    pub operations_pending: usize,
}

/// The answer to a page token the list did not issue.
fn bad_token(token: &str) -> ApiError {
    ApiError::invalid_field("pageToken", token, "The page token is not valid.")
}

fn base64url(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}

fn unbase64url(text: &str) -> Option<String> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .ok()?;
    String::from_utf8(bytes).ok()
}

/// The whole emulated cloud.
#[derive(Debug)]
pub struct State {
    pub projects: BTreeMap<String, Project>,
    pub clock: Clock,
    next_id: u64,
    next_event: u64,
    rng: rand::rngs::StdRng,
    default_concurrency: Option<u32>,
    default_busy: BusyBehavior,
    pub ops_created: u64,
    pub ops_done: u64,
    /// Every region of the world and its numeric id (a region's id is the same in every
    /// project, as in Compute).
    region_ids: BTreeMap<String, u64>,
    /// Instances marked unhealthy through the admin API (`projects/P/zones/Z/instances/I`).
    unhealthy: BTreeSet<String>,
}

impl State {
    /// Seeds the cloud from a world file.
    pub fn new(
        world: &World,
        seed: u64,
        default_concurrency: Option<u32>,
        default_busy: BusyBehavior,
    ) -> Self {
        use rand::SeedableRng;
        let mut state = State {
            projects: BTreeMap::new(),
            clock: Clock::new(),
            next_id: 1_000_000_000_000_000_000 + seed % 1_000_000,
            next_event: 0,
            rng: rand::rngs::StdRng::seed_from_u64(seed),
            default_concurrency,
            default_busy,
            ops_created: 0,
            ops_done: 0,
            region_ids: BTreeMap::new(),
            unhealthy: BTreeSet::new(),
        };
        for (index, spec) in world.projects.iter().enumerate() {
            let project = state.seed_project(spec, index as u64);
            state.projects.insert(spec.id.clone(), project);
        }
        // Instances after every project's networks: a Shared VPC service project's instances sit
        // on its host's subnetworks, wherever the host is in the file.
        for spec in &world.projects {
            state.seed_instances(spec);
        }
        for spec in &world.projects {
            if let Some(host) = spec
                .network_project
                .as_ref()
                .and_then(|h| state.projects.get_mut(h))
            {
                host.xpn_host = true;
            }
        }
        // Compute's region ids are small numbers (us-central1 is 1000); here 1000, 1010, ... in
        // name order over the whole world: stable for a world file, unique, project-independent.
        let regions: BTreeSet<String> = state
            .projects
            .values()
            .flat_map(|p| p.regions.iter().cloned())
            .collect();
        state.region_ids = regions.into_iter().zip((1000u64..).step_by(10)).collect();
        state
    }

    fn next_id(&mut self) -> u64 {
        self.next_id += 7919;
        self.next_id
    }

    fn seed_project(&mut self, spec: &ProjectSpec, index: u64) -> Project {
        let now = Instant::now();
        let created = self.clock.timestamp(now);
        let mut project = Project {
            id: spec.id.clone(),
            number: 100_000_000_000 + index,
            network_project: spec.network_project.clone(),
            xpn_host: false,
            created: created.clone(),
            quotas: spec.quotas,
            rate_limits: spec.rate_limits,
            networks: BTreeMap::new(),
            subnets: Vec::new(),
            regions: BTreeSet::new(),
            zones: BTreeSet::new(),
            collections: BTreeMap::new(),
            operations: BTreeMap::new(),
            request_ids: HashMap::new(),
            events: BinaryHeap::new(),
            rate_windows: HashMap::new(),
            members: BTreeMap::new(),
        };
        let p = &spec.id;
        for network in &spec.networks {
            let subnet_links: Vec<String> = network
                .subnetworks
                .iter()
                .map(|s| {
                    link(&format!(
                        "projects/{p}/regions/{}/subnetworks/{}",
                        s.region, s.name
                    ))
                })
                .collect();
            let body = json!({
                "kind": "compute#network",
                "id": self.next_id().to_string(),
                "creationTimestamp": created,
                "name": network.name,
                "autoCreateSubnetworks": false,
                "subnetworks": subnet_links,
                "routingConfig": {"routingMode": "REGIONAL"},
                "selfLink": link(&format!("projects/{p}/global/networks/{}", network.name)),
            });
            project.put(Kind::Network, "", &network.name, body, None);
            project.networks.insert(
                network.name.clone(),
                NetworkSlots {
                    concurrency: network.mutation_concurrency.or(self.default_concurrency),
                    busy: network.busy_behavior.unwrap_or(self.default_busy),
                    running: 0,
                    queue: VecDeque::new(),
                    routes: 0,
                },
            );
            for subnet in &network.subnetworks {
                let Some(cidr) = Cidr::parse(&subnet.ip_cidr_range) else {
                    continue;
                };
                let gateway = cidr.nth_v4(1).map(|ip| ip.to_string()).unwrap_or_default();
                let body = json!({
                    "kind": "compute#subnetwork",
                    "id": self.next_id().to_string(),
                    "creationTimestamp": created,
                    "name": subnet.name,
                    "network": link(&format!("projects/{p}/global/networks/{}", network.name)),
                    "ipCidrRange": subnet.ip_cidr_range,
                    "gatewayAddress": gateway,
                    "region": link(&format!("projects/{p}/regions/{}", subnet.region)),
                    "selfLink": link(&format!("projects/{p}/regions/{}/subnetworks/{}", subnet.region, subnet.name)),
                });
                project.put(
                    Kind::Subnetwork,
                    &subnet.region,
                    &subnet.name,
                    body,
                    Some(network.name.clone()),
                );
                project.regions.insert(subnet.region.clone());
                for suffix in ["a", "b", "c", "f"] {
                    project.zones.insert(format!("{}-{suffix}", subnet.region));
                }
                project.subnets.push(Subnet {
                    name: subnet.name.clone(),
                    region: subnet.region.clone(),
                    network: network.name.clone(),
                    cidr,
                });
            }
        }
        project
    }

    /// Seeds a project's instances, on its own subnetworks or (Shared VPC) its host's, with
    /// addresses free in the whole IP space the host shares.
    fn seed_instances(&mut self, spec: &ProjectSpec) {
        let owner = spec
            .network_project
            .clone()
            .unwrap_or_else(|| spec.id.clone());
        let subnets: Vec<Subnet> = self
            .projects
            .get(&owner)
            .map(|p| p.subnets.clone())
            .unwrap_or_default();
        let mut used: HashSet<Ipv4Addr> = self
            .projects
            .values()
            .filter(|p| p.id == owner || p.network_project.as_deref() == Some(owner.as_str()))
            .flat_map(Project::used_ips)
            .collect();
        let Some(created) = self.projects.get(&spec.id).map(|p| p.created.clone()) else {
            return;
        };
        let p = &spec.id;
        let mut seeded = Vec::new();
        for instance in &spec.instances {
            let region = region_of_zone(&instance.zone).to_string();
            let subnet = subnets
                .iter()
                .find(|s| {
                    s.network == instance.network
                        && s.region == region
                        && instance
                            .subnetwork
                            .as_ref()
                            .is_none_or(|name| &s.name == name)
                })
                .cloned();
            let network_ip = instance.network_ip.clone().or_else(|| {
                let subnet = subnet.as_ref()?;
                (2..subnet.cidr.size_v4().saturating_sub(2)).find_map(|i| {
                    let ip = subnet.cidr.nth_v4(u32::try_from(i).ok()?)?;
                    (!used.contains(&ip)).then(|| ip.to_string())
                })
            });
            if let Some(ip) = network_ip.as_deref().and_then(|ip| ip.parse().ok()) {
                used.insert(ip);
            }
            let mut nic = json!({
                "kind": "compute#networkInterface",
                "name": "nic0",
                "network": link(&format!("projects/{owner}/global/networks/{}", instance.network)),
                "networkIP": network_ip.unwrap_or_default(),
            });
            if let Some(subnet) = &subnet {
                nic["subnetwork"] = json!(link(&format!(
                    "projects/{owner}/regions/{}/subnetworks/{}",
                    subnet.region, subnet.name
                )));
            }
            let mut body = json!({
                "kind": "compute#instance",
                "id": self.next_id().to_string(),
                "creationTimestamp": created,
                "name": instance.name,
                "zone": link(&format!("projects/{p}/zones/{}", instance.zone)),
                "machineType": link(&format!("projects/{p}/zones/{}/machineTypes/e2-standard-4", instance.zone)),
                "status": instance.status,
                "canIpForward": instance.can_ip_forward,
                "networkInterfaces": [nic],
                "selfLink": link(&format!("projects/{p}/zones/{}/instances/{}", instance.zone, instance.name)),
            });
            if !instance.tags.is_empty() {
                body["tags"] = json!({"items": instance.tags, "fingerprint": "42WmSpB8rSM="});
            }
            seeded.push((instance, region, body));
        }
        let Some(project) = self.projects.get_mut(&spec.id) else {
            return;
        };
        // A service project may use every region and zone of its host's subnetworks.
        if owner != spec.id {
            for subnet in &subnets {
                project.regions.insert(subnet.region.clone());
                for suffix in ["a", "b", "c", "f"] {
                    project.zones.insert(format!("{}-{suffix}", subnet.region));
                }
            }
        }
        for (instance, region, body) in seeded {
            project.regions.insert(region);
            project.zones.insert(instance.zone.clone());
            project.put(
                Kind::Instance,
                &instance.zone,
                &instance.name,
                body,
                Some(instance.network.clone()),
            );
        }
    }

    /// The project, or 404 in Compute's wording.
    pub fn project_mut(&mut self, id: &str) -> Result<&mut Project, ApiError> {
        self.projects
            .get_mut(id)
            .ok_or_else(|| ApiError::not_found(&format!("projects/{id}")))
    }

    /// Applies every operation completion due by `now`, in time order, in every project.
    pub fn advance(&mut self, now: Instant) {
        let mut done = 0;
        for project in self.projects.values_mut() {
            done += project.advance(now, &mut self.next_event);
        }
        self.ops_done += done;
    }

    /// Inserts a resource: validates synchronously, then returns the operation JSON.
    pub fn insert(
        &mut self,
        project_id: &str,
        key: CollectionKey,
        body: &Value,
        ctx: &MutationContext,
    ) -> Result<Value, ApiError> {
        self.advance(ctx.now);
        if let Some(op) = self.repeated_request(project_id, ctx)? {
            return Ok(op);
        }
        // Backend services' fingerprints differ on every write.
        let nonce = if key.kind == Kind::BackendService {
            self.next_id()
        } else {
            0
        };
        let projects = &self.projects;
        let project = projects
            .get(project_id)
            .ok_or_else(|| ApiError::not_found(&format!("projects/{project_id}")))?;
        project.check_location(&key)?;
        let view = View { projects, project };
        let built: Built = match key.kind {
            Kind::Route => resources::route(project, body)?,
            Kind::Firewall => resources::firewall(project, body)?,
            Kind::GlobalAddress => resources::address(&view, None, body)?,
            Kind::Address => resources::address(&view, Some(&key.location), body)?,
            Kind::ForwardingRule => resources::forwarding_rule(&view, &key.location, body)?,
            Kind::TargetInstance => resources::target_instance(project, &key.location, body)?,
            Kind::InstanceGroup => lb::instance_group(&view, &key.location, body)?,
            Kind::HealthCheck => lb::health_check(&view, &key.location, body)?,
            Kind::BackendService => lb::backend_service(&view, &key.location, body, nonce)?,
            _ => return Err(ApiError::method_not_allowed("POST", &key.path(project_id))),
        };
        let project = self.project_mut(project_id)?;
        let path = format!("{}/{}", key.path(project_id), built.name);
        if project.slot(&key, &built.name).is_some() {
            return Err(ApiError::already_exists(&path));
        }
        let quota_failure = project.quota_failure(&key, built.network.as_deref());
        let network = built.network.clone().filter(|_| key.kind.holds_network());
        project.check_network_free(network.as_deref())?;
        let id = self.next_id();
        let created = self.clock.timestamp(ctx.now);
        let project = self.project_mut(project_id)?;
        let (effect, failure) = match quota_failure {
            Some(failure) => (Effect::Nothing, Some(failure)),
            None => {
                let mut body = built.body;
                body.insert("id".into(), json!(id.to_string()));
                body.insert("creationTimestamp".into(), json!(created));
                body.insert("selfLink".into(), json!(link(&path)));
                let ordered = order_fields(body);
                project.reserve(&key, &built.name, ordered, built.network.clone());
                let create = Effect::Create {
                    key: key.clone(),
                    name: built.name.clone(),
                };
                let effect = match built.address_user {
                    Some((address_key, address)) => Effect::Many(vec![
                        create,
                        Effect::AddUser {
                            key: address_key,
                            name: address,
                            user: link(&path),
                        },
                    ]),
                    None => create,
                };
                (effect, ctx.fail.then(Failure::internal))
            }
        };
        self.start_operation(
            project_id, &key, "insert", path, id, effect, failure, network, ctx,
        )
    }

    /// Deletes a resource.
    pub fn delete(
        &mut self,
        project_id: &str,
        key: CollectionKey,
        name: &str,
        ctx: &MutationContext,
    ) -> Result<Value, ApiError> {
        self.advance(ctx.now);
        if let Some(op) = self.repeated_request(project_id, ctx)? {
            return Ok(op);
        }
        let project = self.project_mut(project_id)?;
        project.check_location(&key)?;
        if !key.kind.mutable() {
            return Err(ApiError::method_not_allowed(
                "DELETE",
                &key.path(project_id),
            ));
        }
        let path = format!("{}/{name}", key.path(project_id));
        let (id, network) = match project.slot(&key, name) {
            None => return Err(ApiError::not_found(&path)),
            Some(slot) if slot.phase != Phase::Live => return Err(ApiError::not_ready(&path)),
            Some(slot) => (resource_id(&slot.json), slot.network.clone()),
        };
        if let Some(user) = project.user_of(&key, name) {
            return Err(ApiError::in_use(key.kind.type_name(), &path, &user));
        }
        let network = network.filter(|_| key.kind.holds_network());
        project.check_network_free(network.as_deref())?;
        if let Some(slot) = project.slot_mut(&key, name) {
            slot.phase = Phase::Deleting;
        }
        let delete = Effect::Delete {
            key: key.clone(),
            name: name.to_string(),
        };
        // An internal forwarding rule frees the address it named.
        let effect = match project.address_used_by(&key, &link(&path)) {
            Some((address_key, address)) => Effect::Many(vec![
                delete,
                Effect::RemoveUser {
                    key: address_key,
                    name: address,
                    user: link(&path),
                },
            ]),
            None => delete,
        };
        let failure = ctx.fail.then(Failure::internal);
        self.start_operation(
            project_id, &key, "delete", path, id, effect, failure, network, ctx,
        )
    }

    /// `patch` (JSON merge patch, RFC 7396) of a firewall rule, health check or backend service;
    /// the merged resource is validated like an insert. The name cannot change.
    pub fn patch(
        &mut self,
        project_id: &str,
        key: CollectionKey,
        name: &str,
        patch: &Value,
        ctx: &MutationContext,
    ) -> Result<Value, ApiError> {
        self.modify(project_id, key, name, patch, false, ctx)
    }

    /// `update` (PUT, the full resource) of a health check or backend service.
    pub fn update(
        &mut self,
        project_id: &str,
        key: CollectionKey,
        name: &str,
        body: &Value,
        ctx: &MutationContext,
    ) -> Result<Value, ApiError> {
        self.modify(project_id, key, name, body, true, ctx)
    }

    fn modify(
        &mut self,
        project_id: &str,
        key: CollectionKey,
        name: &str,
        body: &Value,
        replace: bool,
        ctx: &MutationContext,
    ) -> Result<Value, ApiError> {
        self.advance(ctx.now);
        if let Some(op) = self.repeated_request(project_id, ctx)? {
            return Ok(op);
        }
        let (verb, method) = if replace {
            ("update", "PUT")
        } else {
            ("patch", "PATCH")
        };
        let served = match key.kind {
            Kind::Firewall => !replace,
            Kind::HealthCheck | Kind::BackendService => true,
            _ => false,
        };
        if !served {
            return Err(ApiError::method_not_allowed(method, &key.path(project_id)));
        }
        let nonce = if key.kind == Kind::BackendService {
            self.next_id()
        } else {
            0
        };
        let projects = &self.projects;
        let project = projects
            .get(project_id)
            .ok_or_else(|| ApiError::not_found(&format!("projects/{project_id}")))?;
        project.check_location(&key)?;
        let path = format!("{}/{name}", key.path(project_id));
        let current = match project.slot(&key, name) {
            None => return Err(ApiError::not_found(&path)),
            Some(slot) if slot.phase != Phase::Live => return Err(ApiError::not_ready(&path)),
            Some(slot) => serde_json::from_str::<Value>(&slot.json).unwrap_or(Value::Null),
        };
        if !body.is_object() {
            return Err(ApiError::invalid(
                "Invalid JSON payload received. Expected an object.",
            ));
        }
        if let Some(new_name) = body.get("name").and_then(Value::as_str)
            && new_name != name
        {
            let what = match key.kind {
                Kind::Firewall => "firewall rule",
                Kind::HealthCheck => "health check",
                _ => "backend service",
            };
            return Err(ApiError::invalid_field(
                "resource.name",
                new_name,
                &format!("The name of a {what} cannot be changed."),
            ));
        }
        if key.kind == Kind::BackendService
            && let Some(sent) = body.get("fingerprint").and_then(Value::as_str)
            && Some(sent) != current["fingerprint"].as_str()
        {
            // 412 conditionNotMet for a stale fingerprint (discovery: BackendService.fingerprint);
            // the wording is the emulator's.
            return Err(ApiError::condition_not_met(format!(
                "Supplied fingerprint '{sent}' does not match the current fingerprint of \
                 '{path}'; get the resource and retry with its fingerprint."
            )));
        }
        let mut merged = if replace {
            body.clone()
        } else {
            let mut merged = current.clone();
            resources::merge_patch(&mut merged, body);
            merged
        };
        merged["name"] = json!(name);
        let view = View { projects, project };
        let built = match key.kind {
            Kind::Firewall => resources::firewall(project, &merged)?,
            Kind::HealthCheck => lb::health_check(&view, &key.location, &merged)?,
            _ => lb::backend_service(&view, &key.location, &merged, nonce)?,
        };
        let mut body = built.body;
        for field in ["id", "creationTimestamp", "selfLink"] {
            if let Some(value) = current.get(field) {
                body.insert(field.into(), value.clone());
            }
        }
        let id = resource_id(&body_text(&body));
        let network = built.network.clone().filter(|_| key.kind.holds_network());
        project.check_network_free(network.as_deref())?;
        let effect = Effect::Replace {
            key: key.clone(),
            name: name.to_string(),
            json: order_fields(body),
        };
        let failure = ctx.fail.then(Failure::internal);
        self.start_operation(
            project_id, &key, verb, path, id, effect, failure, network, ctx,
        )
    }

    /// `instanceGroups.addInstances` / `removeInstances`: checked at once, members change when
    /// the operation is DONE.
    pub fn group_members(
        &mut self,
        project_id: &str,
        zone: &str,
        group: &str,
        add: bool,
        body: &Value,
        ctx: &MutationContext,
    ) -> Result<Value, ApiError> {
        self.advance(ctx.now);
        if let Some(op) = self.repeated_request(project_id, ctx)? {
            return Ok(op);
        }
        let projects = &self.projects;
        let project = projects
            .get(project_id)
            .ok_or_else(|| ApiError::not_found(&format!("projects/{project_id}")))?;
        let key = CollectionKey {
            kind: Kind::InstanceGroup,
            location: zone.to_string(),
        };
        project.check_location(&key)?;
        let path = format!("{}/{group}", key.path(project_id));
        let current = match project.slot(&key, group) {
            None => return Err(ApiError::not_found(&path)),
            Some(slot) if slot.phase == Phase::Creating => return Err(ApiError::not_found(&path)),
            Some(slot) if slot.phase != Phase::Live => return Err(ApiError::not_ready(&path)),
            Some(slot) => serde_json::from_str::<Value>(&slot.json).unwrap_or(Value::Null),
        };
        let view = View { projects, project };
        let change = if add {
            lb::add_instances(&view, zone, group, &current, body)?
        } else {
            lb::remove_instances(&view, zone, group, body)?
        };
        let id = resource_id(&current.to_string());
        let effect = Effect::Members {
            zone: zone.to_string(),
            group: group.to_string(),
            add: change.add,
            remove: change.remove,
            network: change.network,
            subnetwork: change.subnetwork,
        };
        let failure = ctx.fail.then(Failure::internal);
        let verb = if add {
            "addInstances"
        } else {
            "removeInstances"
        };
        self.start_operation(project_id, &key, verb, path, id, effect, failure, None, ctx)
    }

    /// `instanceGroups.listInstances`: the members, with their status now.
    pub fn list_group_instances(
        &mut self,
        project_id: &str,
        zone: &str,
        group: &str,
        body: &Value,
        params: &ListParams,
        now: Instant,
    ) -> Result<String, ApiError> {
        self.advance(now);
        let projects = &self.projects;
        let project = projects
            .get(project_id)
            .ok_or_else(|| ApiError::not_found(&format!("projects/{project_id}")))?;
        let key = CollectionKey {
            kind: Kind::InstanceGroup,
            location: zone.to_string(),
        };
        project.check_location(&key)?;
        let path = format!("{}/{group}", key.path(project_id));
        let Some(current) = project.live_json(&key, group) else {
            return Err(ApiError::not_found(&path));
        };
        let items = lb::list_instances(&View { projects, project }, zone, group, &current, body)?;
        let iter = items
            .iter()
            .map(|(name, item)| (name.as_str(), ItemText::Value(item.clone())));
        render_list(
            "compute#instanceGroupsListInstances",
            &format!("{path}/listInstances"),
            iter,
            params,
        )
    }

    /// `regionBackendServices.getHealth`, evaluated now (see `lb::group_health`).
    pub fn backend_health(
        &mut self,
        project_id: &str,
        region: &str,
        name: &str,
        body: &Value,
        now: Instant,
    ) -> Result<String, ApiError> {
        self.advance(now);
        let projects = &self.projects;
        let project = projects
            .get(project_id)
            .ok_or_else(|| ApiError::not_found(&format!("projects/{project_id}")))?;
        project.check_region(region)?;
        lb::group_health(
            &View { projects, project },
            &self.unhealthy,
            region,
            name,
            body,
        )
    }

    /// The admin API's health mark: `healthy: false` makes the instance UNHEALTHY for every
    /// health check until cleared; 404 for an unknown instance.
    pub fn mark_health(
        &mut self,
        project_id: &str,
        zone: &str,
        instance: &str,
        healthy: bool,
    ) -> Result<(), ApiError> {
        let project = self
            .projects
            .get(project_id)
            .ok_or_else(|| ApiError::not_found(&format!("projects/{project_id}")))?;
        let key = CollectionKey {
            kind: Kind::Instance,
            location: zone.to_string(),
        };
        let path = format!("{}/{instance}", key.path(project_id));
        if project.slot(&key, instance).is_none() {
            return Err(ApiError::not_found(&path));
        }
        if healthy {
            self.unhealthy.remove(&path);
        } else {
            self.unhealthy.insert(path);
        }
        Ok(())
    }

    /// `projects.getXpnHost`: the Shared VPC host's Project, `{}` for a project without one.
    pub fn xpn_host(&mut self, project_id: &str, now: Instant) -> Result<String, ApiError> {
        self.advance(now);
        let project = self
            .projects
            .get(project_id)
            .ok_or_else(|| ApiError::not_found(&format!("projects/{project_id}")))?;
        Ok(project
            .network_project
            .as_ref()
            .and_then(|host| self.projects.get(host))
            .map_or_else(|| "{}".to_string(), Project::project_json))
    }

    /// instances.start / instances.stop: STAGING or STOPPING at once, RUNNING or TERMINATED when
    /// the operation is DONE.
    pub fn instance_power(
        &mut self,
        project_id: &str,
        zone: &str,
        name: &str,
        start: bool,
        ctx: &MutationContext,
    ) -> Result<Value, ApiError> {
        self.advance(ctx.now);
        if let Some(op) = self.repeated_request(project_id, ctx)? {
            return Ok(op);
        }
        let project = self.project_mut(project_id)?;
        let key = CollectionKey {
            kind: Kind::Instance,
            location: zone.to_string(),
        };
        project.check_location(&key)?;
        let path = format!("{}/{name}", key.path(project_id));
        let Some(slot) = project.slot(&key, name) else {
            return Err(ApiError::not_found(&path));
        };
        let mut body: Value = serde_json::from_str(&slot.json).unwrap_or(Value::Null);
        let id = resource_id(&slot.json);
        let (transient, last) = if start {
            ("STAGING", "RUNNING")
        } else {
            ("STOPPING", "TERMINATED")
        };
        body["status"] = json!(transient);
        let text: Box<str> = body.to_string().into();
        if let Some(slot) = project.slot_mut(&key, name) {
            slot.json = text;
        }
        body["status"] = json!(last);
        let effect = Effect::Replace {
            key: key.clone(),
            name: name.to_string(),
            json: body.to_string().into(),
        };
        let failure = ctx.fail.then(Failure::internal);
        let verb = if start { "start" } else { "stop" };
        self.start_operation(project_id, &key, verb, path, id, effect, failure, None, ctx)
    }

    fn repeated_request(
        &mut self,
        project_id: &str,
        ctx: &MutationContext,
    ) -> Result<Option<Value>, ApiError> {
        let Some(request_id) = &ctx.request_id else {
            return Ok(None);
        };
        let valid = uuid::Uuid::parse_str(request_id).is_ok_and(|id| !id.is_nil());
        if !valid {
            return Err(ApiError::invalid_field(
                "requestId",
                request_id,
                "Must be a valid UUID other than the zero UUID.",
            ));
        }
        let clock = self.clock;
        let project = self.project_mut(project_id)?;
        let Some((scope, name, _)) = project.request_ids.get(request_id).cloned() else {
            return Ok(None);
        };
        Ok(project
            .operations
            .get(&scope)
            .and_then(|ops| ops.get(&name))
            .map(|op| op.to_json(project_id, ctx.now, &clock)))
    }

    #[allow(clippy::too_many_arguments)]
    fn start_operation(
        &mut self,
        project_id: &str,
        key: &CollectionKey,
        verb: &'static str,
        target_path: String,
        target_id: u64,
        effect: Effect,
        failure: Option<Failure>,
        network: Option<String>,
        ctx: &MutationContext,
    ) -> Result<Value, ApiError> {
        let id = self.next_id();
        let epoch_ms = chrono::Utc::now().timestamp_millis().max(0) as u64;
        let name = operation_name(epoch_ms, &mut self.rng);
        let scope = match key.kind.placement() {
            Placement::Global => "global".to_string(),
            Placement::Regional => format!("regions/{}", key.location),
            Placement::Zonal => format!("zones/{}", key.location),
        };
        self.ops_created += 1;
        let clock = self.clock;
        let project = self.project_mut(project_id)?;
        let mut op = Operation {
            id,
            name: name.clone(),
            scope: scope.clone(),
            operation_type: verb,
            target_path,
            target_id,
            user: ctx.user.clone(),
            client_operation_id: ctx.request_id.clone(),
            insert_time: ctx.now,
            start_time: None,
            end_time: None,
            run_for: ctx.run_for,
            finished: false,
            failure,
            effect,
            network_slot: None,
        };
        let runnable = match &network {
            None => true,
            Some(net) => project.take_network_slot(net),
        };
        if runnable {
            let start = ctx.now + ctx.pending;
            op.start_time = Some(start);
            op.end_time = Some(start + ctx.run_for);
            op.network_slot = network;
        } else if let Some(net) = network.as_ref().and_then(|n| project.networks.get_mut(n)) {
            op.network_slot = network.clone();
            net.queue.push_back((scope.clone(), name.clone()));
        }
        let end = op.end_time;
        if let Some(request_id) = &ctx.request_id {
            project
                .request_ids
                .insert(request_id.clone(), (scope.clone(), name.clone(), ctx.now));
        }
        project
            .operations
            .entry(scope.clone())
            .or_default()
            .insert(name.clone(), op);
        if let Some(end) = end {
            self.next_event += 1;
            let seq = self.next_event;
            if let Some(project) = self.projects.get_mut(project_id) {
                project
                    .events
                    .push(Reverse((end, seq, scope.clone(), name.clone())));
            }
        }
        self.advance(ctx.now);
        let project = self.project_mut(project_id)?;
        Ok(project
            .operations
            .get(&scope)
            .and_then(|ops| ops.get(&name))
            .map(|op| op.to_json(project_id, ctx.now, &clock))
            .unwrap_or(Value::Null))
    }

    /// An operation's JSON.
    pub fn operation(
        &mut self,
        project_id: &str,
        scope: &str,
        name: &str,
        now: Instant,
    ) -> Result<Value, ApiError> {
        self.advance(now);
        let clock = self.clock;
        let project = self.project_mut(project_id)?;
        project
            .operations
            .get(scope)
            .and_then(|ops| ops.get(name))
            .map(|op| op.to_json(project_id, now, &clock))
            .ok_or_else(|| {
                ApiError::not_found(&format!("projects/{project_id}/{scope}/operations/{name}"))
            })
    }

    /// When the operation will be DONE (`None` when queued or unknown; `Some(now)` when done).
    pub fn operation_deadline(
        &mut self,
        project_id: &str,
        scope: &str,
        name: &str,
        now: Instant,
    ) -> Option<Instant> {
        self.advance(now);
        let op = self
            .projects
            .get(project_id)?
            .operations
            .get(scope)?
            .get(name)?;
        if op.finished { Some(now) } else { op.end_time }
    }

    /// Deletes an operation record.
    pub fn delete_operation(
        &mut self,
        project_id: &str,
        scope: &str,
        name: &str,
        now: Instant,
    ) -> Result<(), ApiError> {
        self.advance(now);
        let project = self.project_mut(project_id)?;
        let path = format!("projects/{project_id}/{scope}/operations/{name}");
        match project
            .operations
            .get_mut(scope)
            .and_then(|ops| ops.get(name).map(|op| op.finished))
        {
            None => Err(ApiError::not_found(&path)),
            Some(false) => Err(ApiError::invalid(format!(
                "The operation '{path}' is not DONE and cannot be deleted."
            ))),
            Some(true) => {
                if let Some(ops) = project.operations.get_mut(scope) {
                    ops.remove(name);
                }
                Ok(())
            }
        }
    }

    /// Lists operations of a scope.
    pub fn list_operations(
        &mut self,
        project_id: &str,
        scope: &str,
        params: &ListParams,
        now: Instant,
    ) -> Result<String, ApiError> {
        self.advance(now);
        let clock = self.clock;
        let project = self.project_mut(project_id)?;
        if let Some(region) = scope.strip_prefix("regions/") {
            project.check_region(region)?;
        }
        if let Some(zone) = scope.strip_prefix("zones/") {
            project.check_zone(zone)?;
        }
        let empty = BTreeMap::new();
        let ops = project.operations.get(scope).unwrap_or(&empty);
        let list_path = format!("projects/{project_id}/{scope}/operations");
        if params.order_by_creation_desc {
            return newest_first(ops, project_id, &list_path, params, now, &clock);
        }
        // The filter is evaluated on the fields it reads; only what it selects is rendered
        // whole (a tracker's `status = DONE AND insertTime >= …` skips most of a busy log).
        let selects = selector(params.filter.as_ref(), project_id, now, &clock);
        let iter = ops.iter().filter(|(_, op)| selects(op)).map(|(name, op)| {
            (
                name.as_str(),
                ItemText::Value(op.to_json(project_id, now, &clock)),
            )
        });
        let params = ListParams {
            filter: None,
            max_results: params.max_results,
            page_token: params.page_token.clone(),
            order_by_creation_desc: false,
        };
        render_list("compute#operationList", &list_path, iter, &params)
    }

    /// A resource's JSON text.
    pub fn get(
        &mut self,
        project_id: &str,
        key: &CollectionKey,
        name: &str,
        now: Instant,
    ) -> Result<String, ApiError> {
        self.advance(now);
        let project = self.project_mut(project_id)?;
        project.check_location(key)?;
        match project.slot(key, name) {
            Some(slot) if slot.phase != Phase::Creating => Ok(slot.json.to_string()),
            _ => Err(ApiError::not_found(&format!(
                "{}/{name}",
                key.path(project_id)
            ))),
        }
    }

    /// Lists a collection.
    pub fn list(
        &mut self,
        project_id: &str,
        key: &CollectionKey,
        params: &ListParams,
        now: Instant,
    ) -> Result<String, ApiError> {
        self.advance(now);
        let project = self.project_mut(project_id)?;
        project.check_location(key)?;
        let empty = BTreeMap::new();
        let slots = project.collections.get(key).unwrap_or(&empty);
        let iter = slots
            .iter()
            .filter(|(_, slot)| slot.phase != Phase::Creating)
            .map(|(name, slot)| (name.as_str(), ItemText::Raw(&slot.json)));
        render_list(key.kind.list_kind(), &key.path(project_id), iter, params)
    }

    /// `projects.get`: the Project resource with its project-wide quotas and their live usage.
    pub fn project_resource(&mut self, project_id: &str, now: Instant) -> Result<String, ApiError> {
        self.advance(now);
        let project = self.project_mut(project_id)?;
        Ok(project.project_json())
    }

    /// `regions.get`: a Region resource of a region the world knows, with its regional quotas
    /// and their live usage.
    pub fn region_resource(
        &mut self,
        project_id: &str,
        region: &str,
        now: Instant,
    ) -> Result<String, ApiError> {
        self.advance(now);
        let region_id = self.region_ids.get(region).copied().unwrap_or(0);
        let project = self.project_mut(project_id)?;
        project.check_region(region)?;
        Ok(project.region_json(region, region_id))
    }

    /// `regions.list`: the regions the world knows for the project, paged and filtered like
    /// every other list.
    pub fn list_regions(
        &mut self,
        project_id: &str,
        params: &ListParams,
        now: Instant,
    ) -> Result<String, ApiError> {
        self.advance(now);
        let region_ids = &self.region_ids;
        let project = self
            .projects
            .get(project_id)
            .ok_or_else(|| ApiError::not_found(&format!("projects/{project_id}")))?;
        let iter = project.regions.iter().map(|region| {
            let id = region_ids.get(region).copied().unwrap_or(0);
            (
                region.as_str(),
                ItemText::Text(project.region_json(region, id)),
            )
        });
        let list_path = format!("projects/{project_id}/regions");
        render_list("compute#regionList", &list_path, iter, params)
    }

    /// Every resource and operation, for the admin API.
    pub fn dump(&mut self, now: Instant) -> Value {
        self.advance(now);
        let clock = self.clock;
        let mut projects = Map::new();
        for (id, project) in &self.projects {
            let mut resources = Map::new();
            for (key, slots) in &project.collections {
                let items: Vec<Value> = slots
                    .values()
                    .filter(|slot| slot.phase != Phase::Creating)
                    .filter_map(|slot| serde_json::from_str(&slot.json).ok())
                    .collect();
                let label = key.path(id);
                resources.insert(label, Value::Array(items));
            }
            let operations: Vec<Value> = project
                .operations
                .values()
                .flat_map(|ops| ops.values())
                .map(|op| op.to_json(id, now, &clock))
                .collect();
            projects.insert(
                id.clone(),
                json!({"quotas": project.quotas, "rateLimits": project.rate_limits, "resources": resources, "operations": operations}),
            );
        }
        json!({"projects": projects})
    }

    /// The resources of one collection (`routes`, `instances`, ...) across every project and
    /// location, without operations, optionally only those a list `filter` matches: a light read
    /// for harnesses that poll one collection.
    pub fn dump_collection(
        &mut self,
        now: Instant,
        collection: &str,
        filter: Option<&crate::filter::Filter>,
    ) -> Value {
        self.advance(now);
        let items: Vec<Value> = self
            .projects
            .values()
            .flat_map(|project| project.collections.iter())
            .filter(|(key, _)| key.kind.collection() == collection)
            .flat_map(|(_, slots)| slots.values())
            .filter(|slot| slot.phase != Phase::Creating)
            .filter_map(|slot| serde_json::from_str::<Value>(&slot.json).ok())
            .filter(|item| filter.is_none_or(|f| f.matches(item)))
            .collect();
        json!({"items": items})
    }

    /// Resource and operation counts, for stats.
    pub fn counts(&mut self, now: Instant) -> Counts {
        self.advance(now);
        let mut resources = BTreeMap::new();
        let mut operations = 0;
        let mut pending = 0;
        for project in self.projects.values() {
            for (key, slots) in &project.collections {
                *resources
                    .entry(key.kind.collection().to_string())
                    .or_insert(0) += slots.len();
            }
            for ops in project.operations.values() {
                operations += ops.len();
                pending += ops.values().filter(|op| !op.finished).count();
            }
        }
        Counts {
            resources,
            operations,
            operations_pending: pending,
        }
    }

    /// Charges one call to its per-minute group; false when the window's quota is spent.
    /// Windows are aligned to wall-clock minutes scaled by `window`.
    pub fn charge(
        &mut self,
        project_id: &str,
        group: RateGroup,
        region: &str,
        window: Duration,
    ) -> Result<bool, ApiError> {
        let project = self.project_mut(project_id)?;
        let limit = match group {
            RateGroup::Reads => project.rate_limits.reads_per_minute,
            RateGroup::Writes => project.rate_limits.writes_per_minute,
            RateGroup::OperationReads => project.rate_limits.operation_reads_per_minute,
            RateGroup::RegionalWrites => project.rate_limits.regional_writes_per_minute,
        };
        let now_ms = chrono::Utc::now().timestamp_millis().max(0) as u128;
        let window_ms = window.as_millis().max(1);
        let index = (now_ms / window_ms) as u64;
        let entry = project
            .rate_windows
            .entry((group, region.to_string()))
            .or_insert((index, 0));
        if entry.0 != index {
            *entry = (index, 0);
        }
        if entry.1 >= limit {
            return Ok(false);
        }
        entry.1 += 1;
        Ok(true)
    }
}

/// One list item: raw stored JSON text, or a JSON value or text built on the fly.
enum ItemText<'a> {
    Raw(&'a str),
    Value(Value),
    Text(String),
}

fn render_list<'a>(
    list_kind: &str,
    list_path: &str,
    items: impl Iterator<Item = (&'a str, ItemText<'a>)>,
    params: &ListParams,
) -> Result<String, ApiError> {
    let filter = params.filter.as_ref().filter(|f| !f.is_match_all());
    let mut selected: Vec<(&str, ItemText<'a>, Option<Value>)> = Vec::new();
    let after = match &params.page_token {
        None => None,
        Some(token) => Some(unbase64url(token).ok_or_else(|| bad_token(token))?),
    };
    let by_creation = params.order_by_creation_desc;
    for (name, item) in items {
        if !by_creation
            && let Some(after) = &after
            && name <= after.as_str()
        {
            continue;
        }
        let parsed = if filter.is_some() || by_creation {
            Some(match &item {
                ItemText::Raw(text) => serde_json::from_str::<Value>(text).unwrap_or(Value::Null),
                ItemText::Text(text) => serde_json::from_str::<Value>(text).unwrap_or(Value::Null),
                ItemText::Value(value) => value.clone(),
            })
        } else {
            None
        };
        if let (Some(filter), Some(value)) = (filter, parsed.as_ref())
            && !filter.matches(value)
        {
            continue;
        }
        selected.push((name, item, parsed));
        if !by_creation && selected.len() > params.max_results {
            break;
        }
    }
    let mut next_token = None;
    if by_creation {
        selected.sort_by(|a, b| {
            let stamp = |v: &Option<Value>| {
                v.as_ref()
                    .and_then(|v| v.get("creationTimestamp").or_else(|| v.get("insertTime")))
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            };
            stamp(&b.2).cmp(&stamp(&a.2)).then(a.0.cmp(b.0))
        });
        let offset: usize = after
            .as_deref()
            .and_then(|t| t.strip_prefix("offset:"))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        let end = (offset + params.max_results).min(selected.len());
        if end < selected.len() {
            next_token = Some(base64url(&format!("offset:{end}")));
        }
        selected = selected
            .into_iter()
            .skip(offset)
            .take(end.saturating_sub(offset))
            .collect();
    } else if selected.len() > params.max_results {
        selected.truncate(params.max_results);
        next_token = selected.last().map(|(name, _, _)| base64url(name));
    }
    let items: Vec<ItemText<'a>> = selected.into_iter().map(|(_, item, _)| item).collect();
    Ok(write_list(list_kind, list_path, &items, next_token))
}

/// Operations newest first (`orderBy=creationTimestamp desc`), as [`render_list`] orders them
/// (insert time as Compute stamps it, to the millisecond, newest first; then by name) but
/// without rendering every operation the scope holds: the order comes from the stored insert
/// times, and only the page (and, under a filter, the operations the filter looks at) is
/// rendered. A busy project holds a hundred thousand operations; a client reading the log
/// newest first asks for its first page or two.
fn newest_first(
    ops: &BTreeMap<String, Operation>,
    project_id: &str,
    list_path: &str,
    params: &ListParams,
    now: Instant,
    clock: &Clock,
) -> Result<String, ApiError> {
    let selects = selector(params.filter.as_ref(), project_id, now, clock);
    let offset: usize = match &params.page_token {
        None => 0,
        Some(token) => unbase64url(token)
            .as_deref()
            .and_then(|t| t.strip_prefix("offset:"))
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| bad_token(token))?,
    };
    let mut order: Vec<(i64, &str, &Operation)> = ops
        .iter()
        .map(|(name, op)| (clock.millis(op.insert_time), name.as_str(), op))
        .collect();
    order.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
    let mut matched = 0usize;
    let mut page: Vec<ItemText<'_>> = Vec::new();
    let mut more = false;
    for (_, _, op) in order {
        if !selects(op) {
            continue;
        }
        matched += 1;
        if matched <= offset {
            continue;
        }
        if page.len() == params.max_results {
            more = true;
            break;
        }
        page.push(ItemText::Value(op.to_json(project_id, now, clock)));
    }
    let next_token = more.then(|| base64url(&format!("offset:{}", offset + page.len())));
    Ok(write_list(
        "compute#operationList",
        list_path,
        &page,
        next_token,
    ))
}

/// Whether an operation passes a list's `filter` (every one without a filter), judged on only
/// the top-level fields the filter reads.
pub(crate) fn selector<'a>(
    filter: Option<&'a Filter>,
    project_id: &'a str,
    now: Instant,
    clock: &'a Clock,
) -> impl Fn(&Operation) -> bool + 'a {
    let filter = filter.filter(|f| !f.is_match_all());
    let fields = filter.map(Filter::top_level_fields).unwrap_or_default();
    move |op| filter.is_none_or(|f| f.matches(&op.to_json_fields(project_id, now, clock, &fields)))
}

/// A list's JSON text: its items as given, the next page's token if any.
fn write_list(
    list_kind: &str,
    list_path: &str,
    items: &[ItemText<'_>],
    next_token: Option<String>,
) -> String {
    let mut out = String::with_capacity(64 + items.len() * 512);
    out.push_str("{\"kind\":");
    out.push_str(&json!(list_kind).to_string());
    out.push_str(",\"id\":");
    out.push_str(&json!(list_path).to_string());
    if !items.is_empty() {
        out.push_str(",\"items\":[");
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            match item {
                ItemText::Raw(text) => out.push_str(text),
                ItemText::Text(text) => out.push_str(text),
                ItemText::Value(value) => out.push_str(&value.to_string()),
            }
        }
        out.push(']');
    }
    if let Some(token) = next_token {
        out.push_str(",\"nextPageToken\":");
        out.push_str(&json!(token).to_string());
    }
    out.push_str(",\"selfLink\":");
    out.push_str(&json!(link(list_path)).to_string());
    out.push('}');
    out
}

fn body_text(body: &Map<String, Value>) -> String {
    Value::Object(body.clone()).to_string()
}

fn resource_id(json: &str) -> u64 {
    serde_json::from_str::<Value>(json)
        .ok()
        .and_then(|v| {
            v.get("id")
                .and_then(Value::as_str)
                .and_then(|s| s.parse().ok())
        })
        .unwrap_or(0)
}

/// Serialises with `kind`, `id`, `creationTimestamp`, `name` first, as Compute orders them.
fn order_fields(mut body: Map<String, Value>) -> Box<str> {
    let mut ordered = Vec::with_capacity(body.len());
    for field in ["kind", "id", "creationTimestamp", "name", "description"] {
        if let Some(value) = body.remove(field) {
            ordered.push((field.to_string(), value));
        }
    }
    let mut text = String::from("{");
    for (i, (key, value)) in ordered.into_iter().chain(body).enumerate() {
        if i > 0 {
            text.push(',');
        }
        text.push_str(&json!(key).to_string());
        text.push(':');
        text.push_str(&value.to_string());
    }
    text.push('}');
    text.into()
}

/// A JSON object with its fields in the given order (serde_json's maps sort their keys; Compute
/// sends `kind`, `id`, ... first); each value is JSON text.
fn ordered_object(fields: &[(&str, String)]) -> String {
    let mut text = String::from("{");
    for (i, (key, value)) in fields.iter().enumerate() {
        if i > 0 {
            text.push(',');
        }
        text.push_str(&json!(key).to_string());
        text.push(':');
        text.push_str(value);
    }
    text.push('}');
    text
}

/// A JSON string literal.
fn text(value: &str) -> String {
    Value::String(value.to_string()).to_string()
}

/// `[{metric, limit, usage}, ...]`: `limit` and `usage` are doubles in Compute's `Quota`
/// (discovery `"type": "number", "format": "double"`) and are sent as `250.0`.
fn quota_list(quotas: &[(&str, u64, u64)]) -> String {
    let items: Vec<String> = quotas
        .iter()
        .map(|(metric, limit, usage)| {
            ordered_object(&[
                ("metric", json!(metric).to_string()),
                ("limit", json!(*limit as f64).to_string()),
                ("usage", json!(*usage as f64).to_string()),
            ])
        })
        .collect();
    format!("[{}]", items.join(","))
}

/// A 64-bit id derived from a name (FNV-1a): stable across runs, like a real resource's id.
fn stable_id(name: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in name.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // Compute's ids are 19-digit numbers below 2^63.
    1_000_000_000_000_000_000 + hash % 8_000_000_000_000_000_000
}

impl Project {
    fn put(
        &mut self,
        kind: Kind,
        location: &str,
        name: &str,
        body: Value,
        network: Option<String>,
    ) {
        let key = CollectionKey {
            kind,
            location: location.to_string(),
        };
        let json = match body {
            Value::Object(map) => order_fields(map),
            other => other.to_string().into(),
        };
        self.collections.entry(key).or_default().insert(
            name.to_string(),
            Slot {
                json,
                phase: Phase::Live,
                network,
            },
        );
    }

    fn reserve(
        &mut self,
        key: &CollectionKey,
        name: &str,
        json: Box<str>,
        network: Option<String>,
    ) {
        if key.kind == Kind::Route
            && let Some(net) = network.as_ref().and_then(|n| self.networks.get_mut(n))
        {
            net.routes += 1;
        }
        self.collections.entry(key.clone()).or_default().insert(
            name.to_string(),
            Slot {
                json,
                phase: Phase::Creating,
                network,
            },
        );
    }

    fn release(&mut self, key: &CollectionKey, name: &str) {
        let removed = self
            .collections
            .get_mut(key)
            .and_then(|slots| slots.remove(name));
        if key.kind == Kind::InstanceGroup {
            self.members
                .remove(&(key.location.clone(), name.to_string()));
        }
        if key.kind == Kind::Route
            && let Some(net) = removed
                .and_then(|slot| slot.network)
                .and_then(|n| self.networks.get_mut(&n))
        {
            net.routes = net.routes.saturating_sub(1);
        }
    }

    /// Whether the project has this network.
    pub fn has_network(&self, name: &str) -> bool {
        self.networks.contains_key(name)
    }

    /// The subnetworks of a network.
    pub fn subnets_of<'a>(&'a self, network: &'a str) -> impl Iterator<Item = &'a Subnet> + 'a {
        self.subnets.iter().filter(move |s| s.network == network)
    }

    /// A subnetwork by region and name.
    pub fn subnet(&self, region: &str, name: &str) -> Option<&Subnet> {
        self.subnets
            .iter()
            .find(|s| s.region == region && s.name == name)
    }

    /// A stored resource in any phase.
    pub fn slot(&self, key: &CollectionKey, name: &str) -> Option<&Slot> {
        self.collections.get(key)?.get(name)
    }

    fn slot_mut(&mut self, key: &CollectionKey, name: &str) -> Option<&mut Slot> {
        self.collections.get_mut(key)?.get_mut(name)
    }

    /// A visible resource's JSON.
    pub fn live_json(&self, key: &CollectionKey, name: &str) -> Option<Value> {
        let slot = self.slot(key, name)?;
        if slot.phase == Phase::Creating {
            return None;
        }
        serde_json::from_str(&slot.json).ok()
    }

    /// Every IPv4 address in use by instances, addresses and forwarding rules.
    pub fn used_ips(&self) -> HashSet<Ipv4Addr> {
        let mut used = HashSet::new();
        for (key, slots) in &self.collections {
            let field = match key.kind {
                Kind::Address | Kind::GlobalAddress => "address",
                Kind::ForwardingRule => "IPAddress",
                Kind::Instance => "networkIP",
                _ => continue,
            };
            for slot in slots.values() {
                let Ok(value) = serde_json::from_str::<Value>(&slot.json) else {
                    continue;
                };
                let found = if key.kind == Kind::Instance {
                    value["networkInterfaces"][0][field]
                        .as_str()
                        .map(str::to_string)
                } else {
                    value[field].as_str().map(str::to_string)
                };
                if let Some(ip) = found.and_then(|ip| ip.parse().ok()) {
                    used.insert(ip);
                }
            }
        }
        used
    }

    /// Who uses a resource that cannot be deleted while used (relative path), in any phase: a
    /// target instance or backend service used by a forwarding rule, an instance group or health
    /// check used by a backend service, an address used by an internal forwarding rule.
    fn user_of(&self, key: &CollectionKey, name: &str) -> Option<String> {
        let target = link(&format!("{}/{name}", key.path(&self.id)));
        let (user_kind, needle) = match key.kind {
            Kind::TargetInstance => (Kind::ForwardingRule, format!("\"target\":\"{target}\"")),
            Kind::BackendService => (
                Kind::ForwardingRule,
                format!("\"backendService\":\"{target}\""),
            ),
            Kind::InstanceGroup => (Kind::BackendService, format!("\"group\":\"{target}\"")),
            Kind::HealthCheck => (Kind::BackendService, format!("\"{target}\"")),
            Kind::Address => {
                let address: Value = serde_json::from_str(&self.slot(key, name)?.json).ok()?;
                if address["addressType"] != json!("INTERNAL") {
                    return None;
                }
                let ip = address["address"].as_str()?.to_string();
                let rules = CollectionKey {
                    kind: Kind::ForwardingRule,
                    location: key.location.clone(),
                };
                return self.collections.get(&rules)?.iter().find_map(|(n, slot)| {
                    let rule: Value = serde_json::from_str(&slot.json).ok()?;
                    (rule["loadBalancingScheme"] == json!("INTERNAL")
                        && rule["IPAddress"].as_str() == Some(ip.as_str()))
                    .then(|| format!("{}/{n}", rules.path(&self.id)))
                });
            }
            _ => return None,
        };
        self.collections
            .iter()
            .filter(|(k, _)| k.kind == user_kind)
            .flat_map(|(k, slots)| slots.iter().map(move |(n, s)| (k, n, s)))
            .find(|(_, _, slot)| slot.json.contains(&needle))
            .map(|(k, n, _)| format!("{}/{n}", k.path(&self.id)))
    }

    /// The address an internal forwarding rule (`rule_link`) is a user of, if any.
    fn address_used_by(
        &self,
        key: &CollectionKey,
        rule_link: &str,
    ) -> Option<(CollectionKey, String)> {
        if key.kind != Kind::ForwardingRule {
            return None;
        }
        let addresses = CollectionKey {
            kind: Kind::Address,
            location: key.location.clone(),
        };
        let needle = format!("\"{rule_link}\"");
        self.collections
            .get(&addresses)?
            .iter()
            .find(|(_, slot)| slot.json.contains("\"users\":") && slot.json.contains(&needle))
            .map(|(n, _)| (addresses.clone(), n.clone()))
    }

    /// Every stored resource of a kind, in any phase: (collection, name, slot).
    pub fn slots_of(&self, kind: Kind) -> impl Iterator<Item = (&CollectionKey, &str, &Slot)> {
        self.collections
            .iter()
            .filter(move |(k, _)| k.kind == kind)
            .flat_map(|(k, slots)| slots.iter().map(move |(n, s)| (k, n.as_str(), s)))
    }

    /// Every visible resource of a kind, parsed: (collection, name, JSON).
    pub fn live_of(&self, kind: Kind) -> impl Iterator<Item = (&CollectionKey, &str, Value)> {
        self.slots_of(kind)
            .filter(|(_, _, slot)| slot.phase != Phase::Creating)
            .filter_map(|(k, n, slot)| Some((k, n, serde_json::from_str(&slot.json).ok()?)))
    }

    /// The members of an instance group (instance names of its zone).
    pub fn members_of(&self, zone: &str, group: &str) -> Option<&BTreeSet<String>> {
        self.members.get(&(zone.to_string(), group.to_string()))
    }

    fn check_region(&self, region: &str) -> Result<(), ApiError> {
        if self.regions.contains(region) {
            Ok(())
        } else {
            Err(ApiError::not_found(&format!(
                "projects/{}/regions/{region}",
                self.id
            )))
        }
    }

    fn check_zone(&self, zone: &str) -> Result<(), ApiError> {
        if self.zones.contains(zone) {
            Ok(())
        } else {
            Err(ApiError::not_found(&format!(
                "projects/{}/zones/{zone}",
                self.id
            )))
        }
    }

    fn check_location(&self, key: &CollectionKey) -> Result<(), ApiError> {
        match key.kind.placement() {
            Placement::Global => Ok(()),
            Placement::Regional => self.check_region(&key.location),
            Placement::Zonal => self.check_zone(&key.location),
        }
    }

    /// How many resources of `kind` (in `location`, or anywhere) count against its quota: every
    /// stored one whatever its phase, since an accepted insert holds its place at once and a
    /// delete frees it when its operation is DONE. The quota check on insert and the usage that
    /// `projects.get` and `regions.get` report both count this way, so a usage below the limit
    /// means the next insert passes.
    fn quota_usage(&self, kind: Kind, location: Option<&str>) -> u64 {
        self.collections
            .iter()
            .filter(|(k, _)| k.kind == kind && location.is_none_or(|l| k.location == l))
            .map(|(_, slots)| slots.len() as u64)
            .sum()
    }

    fn quota_failure(&self, key: &CollectionKey, network: Option<&str>) -> Option<Failure> {
        match key.kind {
            Kind::Route => {
                if self.quota_usage(Kind::Route, None) >= self.quotas.routes {
                    return Some(Failure::quota("ROUTES", self.quotas.routes, None));
                }
                let per_network = network
                    .and_then(|n| self.networks.get(n))
                    .map_or(0, |n| n.routes);
                if per_network >= self.quotas.static_routes_per_network {
                    return Some(Failure::quota(
                        "STATIC_ROUTES_PER_NETWORK",
                        self.quotas.static_routes_per_network,
                        None,
                    ));
                }
                None
            }
            Kind::Firewall => (self.quota_usage(Kind::Firewall, None) >= self.quotas.firewalls)
                .then(|| Failure::quota("FIREWALLS", self.quotas.firewalls, None)),
            Kind::Address => (self.quota_usage(Kind::Address, Some(&key.location))
                >= self.quotas.static_addresses)
                .then(|| {
                    Failure::quota(
                        "STATIC_ADDRESSES",
                        self.quotas.static_addresses,
                        Some(&key.location),
                    )
                }),
            Kind::ForwardingRule => (self.quota_usage(Kind::ForwardingRule, Some(&key.location))
                >= self.quotas.forwarding_rules)
                .then(|| {
                    Failure::quota(
                        "FORWARDING_RULES",
                        self.quotas.forwarding_rules,
                        Some(&key.location),
                    )
                }),
            _ => None,
        }
    }

    /// The project-wide quotas `projects.get` reports, in Compute's order: those this emulator
    /// enforces project-wide. STATIC_ROUTES_PER_NETWORK is per network and not a metric of
    /// Compute's `Quota` resource, so neither `projects.get` nor `regions.get` reports it.
    fn project_quotas(&self) -> [(&'static str, u64, u64); 2] {
        [
            (
                "FIREWALLS",
                self.quotas.firewalls,
                self.quota_usage(Kind::Firewall, None),
            ),
            (
                "ROUTES",
                self.quotas.routes,
                self.quota_usage(Kind::Route, None),
            ),
        ]
    }

    /// The quotas `regions.get` reports for `region`: those this emulator enforces per region.
    fn region_quotas(&self, region: &str) -> [(&'static str, u64, u64); 2] {
        [
            (
                "STATIC_ADDRESSES",
                self.quotas.static_addresses,
                self.quota_usage(Kind::Address, Some(region)),
            ),
            (
                "FORWARDING_RULES",
                self.quotas.forwarding_rules,
                self.quota_usage(Kind::ForwardingRule, Some(region)),
            ),
        ]
    }

    /// The Project resource (field order as Compute sends it).
    fn project_json(&self) -> String {
        let id = stable_id(&format!("projects/{}", self.id));
        let fingerprint = {
            use base64::Engine as _;
            let bytes = stable_id(&format!("projects/{}/commonInstanceMetadata", self.id));
            base64::engine::general_purpose::STANDARD.encode(bytes.to_be_bytes())
        };
        // No project metadata is modelled; Compute omits an empty `items`.
        let metadata = ordered_object(&[
            ("kind", text("compute#metadata")),
            ("fingerprint", text(&fingerprint)),
        ]);
        ordered_object(&[
            ("kind", text("compute#project")),
            ("id", text(&id.to_string())),
            ("creationTimestamp", text(&self.created)),
            ("name", text(&self.id)),
            ("commonInstanceMetadata", metadata),
            ("quotas", quota_list(&self.project_quotas())),
            ("selfLink", text(&link(&format!("projects/{}", self.id)))),
            (
                "defaultServiceAccount",
                text(&format!(
                    "{}-compute@developer.gserviceaccount.com",
                    self.number
                )),
            ),
            (
                "xpnProjectStatus",
                text(if self.xpn_host {
                    "HOST"
                } else {
                    "UNSPECIFIED_XPN_PROJECT_STATUS"
                }),
            ),
            ("defaultNetworkTier", text("PREMIUM")),
            ("vmDnsSetting", text("ZONAL_ONLY")),
        ])
    }

    /// A Region resource (field order and fixed values as Compute sends them).
    fn region_json(&self, region: &str, region_id: u64) -> String {
        let p = &self.id;
        let zones: Vec<String> = self
            .zones
            .iter()
            .filter(|zone| region_of_zone(zone) == region)
            .map(|zone| link(&format!("projects/{p}/zones/{zone}")))
            .collect();
        ordered_object(&[
            ("kind", text("compute#region")),
            ("id", text(&region_id.to_string())),
            // Compute dates every region at the Unix epoch, in Pacific time.
            ("creationTimestamp", text("1969-12-31T16:00:00.000-08:00")),
            ("name", text(region)),
            ("description", text(region)),
            ("status", text("UP")),
            ("zones", json!(zones).to_string()),
            ("quotas", quota_list(&self.region_quotas(region))),
            (
                "selfLink",
                text(&link(&format!("projects/{p}/regions/{region}"))),
            ),
            ("supportsPzs", "false".to_string()),
        ])
    }

    /// Refuses with `resourceNotReady` when the network is at its limit and refuses when busy.
    fn check_network_free(&self, network: Option<&str>) -> Result<(), ApiError> {
        let Some(name) = network else { return Ok(()) };
        let Some(net) = self.networks.get(name) else {
            return Ok(());
        };
        match net.concurrency {
            Some(limit) if net.busy == BusyBehavior::Refuse && net.running >= limit => Err(
                ApiError::not_ready(&format!("projects/{}/global/networks/{name}", self.id)),
            ),
            _ => Ok(()),
        }
    }

    fn take_network_slot(&mut self, name: &str) -> bool {
        let Some(net) = self.networks.get_mut(name) else {
            return true;
        };
        match net.concurrency {
            None => true,
            Some(limit) if net.running < limit && net.queue.is_empty() => {
                net.running += 1;
                true
            }
            Some(_) => false,
        }
    }

    fn advance(&mut self, now: Instant, next_event: &mut u64) -> u64 {
        let mut done = 0;
        while let Some(Reverse((at, _, _, _))) = self.events.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((at, _, scope, name))) = self.events.pop() else {
                break;
            };
            let Some(op) = self
                .operations
                .get_mut(&scope)
                .and_then(|ops| ops.get_mut(&name))
            else {
                continue;
            };
            if op.finished {
                continue;
            }
            op.finished = true;
            op.end_time = Some(at);
            done += 1;
            let failed = op.failure.is_some();
            let effect = op.effect.clone();
            let slot = if op.network_slot.is_some()
                && self
                    .networks
                    .get(op.network_slot.as_deref().unwrap_or_default())
                    .is_some_and(|n| n.concurrency.is_some())
            {
                op.network_slot.clone()
            } else {
                None
            };
            self.apply(effect, failed);
            if let Some(net_name) = slot {
                self.free_network_slot(&net_name, at, next_event);
            }
        }
        done
    }

    fn apply(&mut self, effect: Effect, failed: bool) {
        match effect {
            Effect::Create { key, name } => {
                if failed {
                    self.release(&key, &name);
                } else if let Some(slot) = self.slot_mut(&key, &name) {
                    slot.phase = Phase::Live;
                }
            }
            Effect::Delete { key, name } => {
                if failed {
                    if let Some(slot) = self.slot_mut(&key, &name) {
                        slot.phase = Phase::Live;
                    }
                } else {
                    self.release(&key, &name);
                }
            }
            Effect::Replace { key, name, json } => {
                if let Some(slot) = self.slot_mut(&key, &name) {
                    if failed {
                        // An instance left in STOPPING/STAGING returns to its former state.
                        if key.kind == Kind::Instance {
                            let restored = if json.contains("\"status\":\"TERMINATED\"") {
                                slot.json
                                    .replace("\"status\":\"STOPPING\"", "\"status\":\"RUNNING\"")
                            } else {
                                slot.json
                                    .replace("\"status\":\"STAGING\"", "\"status\":\"TERMINATED\"")
                            };
                            slot.json = restored.into();
                        }
                    } else {
                        slot.json = json;
                    }
                }
            }
            Effect::Nothing => {}
            Effect::Many(effects) => {
                for effect in effects {
                    self.apply(effect, failed);
                }
            }
            Effect::AddUser { key, name, user } => {
                if !failed {
                    self.change_users(&key, &name, &user, true);
                }
            }
            Effect::RemoveUser { key, name, user } => {
                if !failed {
                    self.change_users(&key, &name, &user, false);
                }
            }
            Effect::Members {
                zone,
                group,
                add,
                remove,
                network,
                subnetwork,
            } => {
                if !failed {
                    self.change_members(&zone, &group, add, &remove, network, subnetwork);
                }
            }
        }
    }

    /// Adds or removes a user of an address: `users[]`, `status` IN_USE or RESERVED.
    fn change_users(&mut self, key: &CollectionKey, name: &str, user: &str, add: bool) {
        let Some(slot) = self.slot_mut(key, name) else {
            return;
        };
        let Ok(Value::Object(mut body)) = serde_json::from_str::<Value>(&slot.json) else {
            return;
        };
        let mut users: Vec<String> = body
            .get("users")
            .and_then(Value::as_array)
            .map(|users| {
                users
                    .iter()
                    .filter_map(|u| u.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        users.retain(|u| u != user);
        if add {
            users.push(user.to_string());
        }
        if users.is_empty() {
            body.remove("users");
            body.insert("status".into(), json!("RESERVED"));
        } else {
            body.insert("users".into(), json!(users));
            body.insert("status".into(), json!("IN_USE"));
        }
        slot.json = order_fields(body);
    }

    /// Changes an instance group's members and its `size` (and network/subnetwork when the group
    /// had none).
    fn change_members(
        &mut self,
        zone: &str,
        group: &str,
        add: Vec<String>,
        remove: &[String],
        network: Option<String>,
        subnetwork: Option<String>,
    ) {
        let key = CollectionKey {
            kind: Kind::InstanceGroup,
            location: zone.to_string(),
        };
        let Some(slot) = self
            .collections
            .get_mut(&key)
            .and_then(|s| s.get_mut(group))
        else {
            return;
        };
        let members = self
            .members
            .entry((zone.to_string(), group.to_string()))
            .or_default();
        members.extend(add);
        for name in remove {
            members.remove(name);
        }
        let size = members.len();
        let Ok(Value::Object(mut body)) = serde_json::from_str::<Value>(&slot.json) else {
            return;
        };
        body.insert("size".into(), json!(size));
        if let Some(network) = network {
            body.entry("network").or_insert(json!(network));
        }
        if let Some(subnetwork) = subnetwork {
            body.entry("subnetwork").or_insert(json!(subnetwork));
        }
        slot.json = order_fields(body);
    }

    fn free_network_slot(&mut self, name: &str, at: Instant, next_event: &mut u64) {
        let Some(net) = self.networks.get_mut(name) else {
            return;
        };
        net.running = net.running.saturating_sub(1);
        while let Some((scope, op_name)) = net.queue.pop_front() {
            let Some(op) = self
                .operations
                .get_mut(&scope)
                .and_then(|ops| ops.get_mut(&op_name))
            else {
                continue;
            };
            net.running += 1;
            op.start_time = Some(at);
            let end = at + op.run_for;
            op.end_time = Some(end);
            *next_event += 1;
            self.events
                .push(Reverse((end, *next_event, scope, op_name)));
            break;
        }
    }

    /// Statuses of operations, for tests.
    pub fn operation_status(&self, scope: &str, name: &str, now: Instant) -> Option<Status> {
        Some(self.operations.get(scope)?.get(name)?.status(now))
    }
}
