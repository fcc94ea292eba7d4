//! One Compute call, from path to answer: routing, rate quotas, faults, latency, and the state
//! change. Direct HTTP calls and the inner calls of a batch both come through [`Emulator::call`].

use std::sync::{Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::{Rng, SeedableRng};
use serde_json::Value;
use tokio::time::Instant;

use crate::auth::TokenStore;
use crate::error::ApiError;
use crate::faults::Faults;
use crate::filter::Filter;
use crate::kinds::{Aggregated, CollectionKey, Kind, Placement};
use crate::model::{BusyBehavior, Timing};
use crate::state::{ListParams, MutationContext, RateGroup, State};
use crate::stats::Stats;
use crate::world::{World, region_of_zone};

/// How callers authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthMode {
    /// A Bearer token this emulator issued and that has not expired.
    Token,
    /// Any Bearer token.
    Any,
    /// No Authorization header needed.
    None,
}

/// How the emulator was started.
#[derive(Debug, Clone)]
pub struct Settings {
    pub timing: Timing,
    /// Enforce per-minute rate quotas (`--profile gcp`).
    pub enforce_rates: bool,
    pub auth: AuthMode,
    pub faults: Faults,
    pub seed: u64,
    pub network_concurrency: Option<u32>,
    pub network_busy: BusyBehavior,
    pub token_lifetime: Duration,
}

/// One Compute call.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: String,
    /// The path after `/compute/v1/`, e.g. `projects/p/global/routes/r`.
    pub path: String,
    pub query: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Who calls (the service account e-mail, or a stand-in).
    pub principal: String,
}

/// Its answer: status, JSON text, and how long to hold it back (latency, slowness).
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: String,
    pub delay: Duration,
}

impl Reply {
    fn error(err: &ApiError, delay: Duration) -> Self {
        Self {
            status: err.code,
            body: err.body().to_string(),
            delay,
        }
    }
}

/// The parsed target of a call.
#[derive(Debug, Clone)]
enum Target {
    Collection(CollectionKey),
    Item(CollectionKey, String),
    InstancePower {
        zone: String,
        name: String,
        start: bool,
    },
    Operations(String),
    Operation(String, String),
    OperationWait(String, String),
    /// `projects/{p}`: the Project resource.
    Project,
    /// `projects/{p}/regions`.
    Regions,
    /// `projects/{p}/regions/{region}`.
    Region(String),
    /// `projects/{p}/aggregated/{collection}`: the collection across every scope.
    Aggregated(Aggregated),
    /// A custom POST method of one resource: `instanceGroups/G/addInstances`,
    /// `removeInstances`, `listInstances`, `backendServices/B/getHealth`.
    Action(CollectionKey, String, &'static str),
    /// `projects/{p}/getXpnHost`.
    XpnHost,
}

/// The emulated Compute API.
pub struct Emulator {
    pub settings: Settings,
    world: World,
    pub state: Mutex<State>,
    pub tokens: TokenStore,
    pub faults: RwLock<Faults>,
    rng: Mutex<rand::rngs::StdRng>,
    pub stats: Stats,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Emulator {
    /// An emulator seeded from `world`.
    pub fn new(world: World, settings: Settings) -> Self {
        let state = State::new(
            &world,
            settings.seed,
            settings.network_concurrency,
            settings.network_busy,
        );
        Self {
            tokens: TokenStore::new(settings.token_lifetime),
            faults: RwLock::new(settings.faults.clone()),
            rng: Mutex::new(rand::rngs::StdRng::seed_from_u64(
                settings.seed ^ 0x9e37_79b9,
            )),
            state: Mutex::new(state),
            stats: Stats::default(),
            world,
            settings,
        }
    }

    /// The world the emulator was seeded from.
    pub fn world(&self) -> &World {
        &self.world
    }

    /// Back to the seeded world; counters zeroed; faults back to the start-up ones.
    pub fn reset(&self) {
        *lock(&self.state) = State::new(
            &self.world,
            self.settings.seed,
            self.settings.network_concurrency,
            self.settings.network_busy,
        );
        self.stats.reset();
        if let Ok(mut faults) = self.faults.write() {
            *faults = self.settings.faults.clone();
        }
    }

    /// Replaces the fault plan.
    pub fn set_faults(&self, faults: Faults) {
        match self.faults.write() {
            Ok(mut guard) => *guard = faults,
            Err(poisoned) => *poisoned.into_inner() = faults,
        }
    }

    /// The current fault plan.
    pub fn current_faults(&self) -> Faults {
        match self.faults.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Shuffles the parts of a batch answer: Compute answers them in any order
    /// (docs/compute-api.md §6).
    pub fn shuffle<T>(&self, items: &mut [T]) {
        use rand::seq::SliceRandom;
        items.shuffle(&mut *lock(&self.rng));
    }

    /// Whether a whole HTTP request should lose its response (`reset` fault).
    pub fn draw_reset(&self) -> bool {
        let p = self.current_faults().reset;
        p > 0.0 && lock(&self.rng).r#gen::<f64>() < p
    }

    /// Serves one Compute call.
    pub async fn call(&self, call: Call) -> Reply {
        let (project, target) = match route(&call.method, &call.path) {
            Ok(routed) => routed,
            Err(err) => {
                self.stats.error(err.reason);
                return Reply::error(&err, Duration::ZERO);
            }
        };
        let (method_name, group, region) = describe(&call.method, &target);
        self.stats.call(&method_name, group_name(group));

        let write = matches!(group, RateGroup::Writes | RateGroup::RegionalWrites);
        let mut delay = {
            let mut rng = lock(&self.rng);
            let spread = if write {
                self.settings.timing.write_latency
            } else {
                self.settings.timing.read_latency
            };
            spread.draw(&mut *rng, self.settings.timing.scale)
        };

        if self.settings.enforce_rates {
            let window = Duration::from_secs_f64(60.0 * self.settings.timing.scale);
            let charged = lock(&self.state).charge(&project, group, &region, window);
            match charged {
                Ok(true) => {}
                Ok(false) => {
                    let err = rate_error(group, &project);
                    self.stats.error(err.reason);
                    return Reply::error(&err, delay);
                }
                Err(err) => {
                    self.stats.error(err.reason);
                    return Reply::error(&err, delay);
                }
            }
        }

        let faults = self.current_faults();
        let draw = faults.draw(&mut *lock(&self.rng));
        if draw.slow {
            delay += faults.slow_by.mul_f64(self.settings.timing.scale);
        }
        if let Some(code) = draw.error {
            let err = if code == 500 {
                ApiError::backend_error()
            } else {
                ApiError::unavailable()
            };
            self.stats.error(err.reason);
            return Reply::error(&err, delay);
        }
        if draw.rate_limited {
            let err = rate_error(group, &project);
            self.stats.error(err.reason);
            return Reply::error(&err, delay);
        }

        let selection = match call.query.iter().find(|(k, _)| k == "fields") {
            Some((_, text)) => match crate::fields::Selection::parse(text) {
                Ok(selection) => Some(selection),
                Err(err) => {
                    let err = ApiError::invalid_field("fields", text, &err.to_string());
                    self.stats.error(err.reason);
                    return Reply::error(&err, delay);
                }
            },
            None => None,
        };
        let result = self.execute(&call, &project, target, draw.opfail).await;
        match result {
            Ok(Some(body)) => {
                let body = match &selection {
                    Some(selection) => serde_json::from_str::<Value>(&body)
                        .map(|value| selection.apply(&value).to_string())
                        .unwrap_or(body),
                    None => body,
                };
                Reply {
                    status: 200,
                    body,
                    delay,
                }
            }
            Ok(None) => Reply {
                status: 204,
                body: String::new(),
                delay,
            },
            Err(err) => {
                self.stats.error(err.reason);
                Reply::error(&err, delay)
            }
        }
    }

    async fn execute(
        &self,
        call: &Call,
        project: &str,
        target: Target,
        opfail: bool,
    ) -> Result<Option<String>, ApiError> {
        let now = Instant::now();
        let method = call.method.as_str();
        match (method, target) {
            ("GET", Target::Collection(key)) => {
                let params = list_params(&call.query)?;
                lock(&self.state)
                    .list(project, &key, &params, now)
                    .map(Some)
            }
            ("POST", Target::Collection(key)) => {
                let body = json_body(&call.body)?;
                let ctx = self.mutation_context(call, key.kind, opfail)?;
                lock(&self.state)
                    .insert(project, key, &body, &ctx)
                    .map(|v| Some(v.to_string()))
            }
            ("GET", Target::Item(key, name)) => {
                lock(&self.state).get(project, &key, &name, now).map(Some)
            }
            ("DELETE", Target::Item(key, name)) => {
                let ctx = self.mutation_context(call, key.kind, opfail)?;
                lock(&self.state)
                    .delete(project, key, &name, &ctx)
                    .map(|v| Some(v.to_string()))
            }
            ("PATCH", Target::Item(key, name)) => {
                let body = json_body(&call.body)?;
                let ctx = self.mutation_context(call, key.kind, opfail)?;
                lock(&self.state)
                    .patch(project, key, &name, &body, &ctx)
                    .map(|v| Some(v.to_string()))
            }
            ("PUT", Target::Item(key, name)) => {
                let body = json_body(&call.body)?;
                let ctx = self.mutation_context(call, key.kind, opfail)?;
                lock(&self.state)
                    .update(project, key, &name, &body, &ctx)
                    .map(|v| Some(v.to_string()))
            }
            ("POST", Target::Action(key, name, verb)) => {
                let body = if call.body.iter().all(u8::is_ascii_whitespace) {
                    Value::Object(serde_json::Map::new())
                } else {
                    json_body(&call.body)?
                };
                match verb {
                    "addInstances" | "removeInstances" => {
                        let ctx = self.mutation_context(call, key.kind, opfail)?;
                        lock(&self.state)
                            .group_members(
                                project,
                                &key.location,
                                &name,
                                verb == "addInstances",
                                &body,
                                &ctx,
                            )
                            .map(|v| Some(v.to_string()))
                    }
                    "listInstances" => {
                        let params = list_params(&call.query)?;
                        lock(&self.state)
                            .list_group_instances(
                                project,
                                &key.location,
                                &name,
                                &body,
                                &params,
                                now,
                            )
                            .map(Some)
                    }
                    _ => lock(&self.state)
                        .backend_health(project, &key.location, &name, &body, now)
                        .map(Some),
                }
            }
            ("GET", Target::XpnHost) => lock(&self.state).xpn_host(project, now).map(Some),
            ("POST", Target::InstancePower { zone, name, start }) => {
                let ctx = self.mutation_context(call, Kind::Instance, opfail)?;
                lock(&self.state)
                    .instance_power(project, &zone, &name, start, &ctx)
                    .map(|v| Some(v.to_string()))
            }
            ("GET", Target::Operations(scope)) => {
                let params = list_params(&call.query)?;
                lock(&self.state)
                    .list_operations(project, &scope, &params, now)
                    .map(Some)
            }
            ("GET", Target::Operation(scope, name)) => lock(&self.state)
                .operation(project, &scope, &name, now)
                .map(|v| Some(v.to_string())),
            ("DELETE", Target::Operation(scope, name)) => lock(&self.state)
                .delete_operation(project, &scope, &name, now)
                .map(|()| None),
            ("POST", Target::OperationWait(scope, name)) => {
                self.wait(project, &scope, &name).await.map(Some)
            }
            ("GET", Target::Project) => lock(&self.state).project_resource(project, now).map(Some),
            ("GET", Target::Regions) => {
                let params = list_params(&call.query)?;
                lock(&self.state)
                    .list_regions(project, &params, now)
                    .map(Some)
            }
            ("GET", Target::Region(region)) => lock(&self.state)
                .region_resource(project, &region, now)
                .map(Some),
            ("GET", Target::Aggregated(what)) => {
                let (params, include_all_scopes) = aggregated_params(&call.query)?;
                lock(&self.state)
                    .aggregated_list(project, what, &params, include_all_scopes, now)
                    .map(Some)
            }
            (method, _) => Err(ApiError::method_not_allowed(method, &call.path)),
        }
    }

    async fn wait(&self, project: &str, scope: &str, name: &str) -> Result<String, ApiError> {
        let start = Instant::now();
        let deadline = start + self.settings.timing.wait_deadline;
        let early = {
            let p = self.settings.timing.wait_early_return;
            p > 0.0 && lock(&self.rng).r#gen::<f64>() < p
        };
        if !early {
            // Checks existence first: 404 at once for an unknown operation.
            lock(&self.state).operation(project, scope, name, start)?;
            loop {
                let now = Instant::now();
                let done_at = lock(&self.state).operation_deadline(project, scope, name, now);
                match done_at {
                    Some(at) if at <= now => break,
                    _ if now >= deadline => break,
                    Some(at) => tokio::time::sleep_until(at.min(deadline)).await,
                    // Queued behind a busy network: poll.
                    None => tokio::time::sleep(Duration::from_millis(20).min(deadline - now)).await,
                }
            }
        }
        let now = Instant::now();
        lock(&self.state)
            .operation(project, scope, name, now)
            .map(|v| v.to_string())
    }

    fn mutation_context(
        &self,
        call: &Call,
        kind: Kind,
        opfail: bool,
    ) -> Result<MutationContext, ApiError> {
        let request_id = call
            .query
            .iter()
            .find(|(k, _)| k == "requestId")
            .map(|(_, v)| v.clone());
        let mut rng = lock(&self.rng);
        let timing = &self.settings.timing;
        let pending = if timing.pending_max.is_zero() {
            Duration::ZERO
        } else {
            timing.pending_max.mul_f64(rng.r#gen::<f64>())
        };
        let run_for = timing.operation(kind.work()).draw(&mut *rng, timing.scale);
        Ok(MutationContext {
            now: Instant::now(),
            user: call.principal.clone(),
            request_id,
            pending,
            run_for,
            fail: opfail,
        })
    }
}

fn rate_error(group: RateGroup, project: &str) -> ApiError {
    match group {
        RateGroup::Reads => ApiError::rate_limited(
            "compute.googleapis.com/read_requests",
            "Read requests per minute",
            project,
        ),
        RateGroup::Writes => ApiError::rate_limited(
            "compute.googleapis.com/global_writes",
            "Global writes per minute",
            project,
        ),
        RateGroup::OperationReads => ApiError::rate_limited(
            "compute.googleapis.com/operation_read_requests",
            "Operation read requests per minute",
            project,
        ),
        RateGroup::RegionalWrites => ApiError::rate_limited(
            "compute.googleapis.com/writes_per_region",
            "Writes per minute per region",
            project,
        ),
    }
}

fn group_name(group: RateGroup) -> &'static str {
    match group {
        RateGroup::Reads => "read",
        RateGroup::Writes => "write",
        RateGroup::OperationReads => "operationRead",
        RateGroup::RegionalWrites => "regionalWrite",
    }
}

fn json_body(body: &[u8]) -> Result<Value, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::required("resource"));
    }
    serde_json::from_slice(body)
        .map_err(|err| ApiError::invalid(format!("Invalid JSON payload received. {err}")))
}

fn list_params(query: &[(String, String)]) -> Result<ListParams, ApiError> {
    let mut params = ListParams {
        max_results: 500,
        ..Default::default()
    };
    for (key, value) in query {
        match key.as_str() {
            "maxResults" => {
                let n: usize = value.parse().map_err(|_| {
                    ApiError::invalid_field(
                        "maxResults",
                        value,
                        "Must be an integer between 0 and 500.",
                    )
                })?;
                if n > 500 {
                    return Err(ApiError::invalid_field(
                        "maxResults",
                        value,
                        "Must be less than or equal to 500",
                    ));
                }
                params.max_results = if n == 0 { 500 } else { n };
            }
            "pageToken" if !value.is_empty() => params.page_token = Some(value.clone()),
            "filter" => {
                let filter = Filter::parse(value)
                    .map_err(|err| ApiError::invalid_field("filter", value, &format!("{err}")))?;
                params.filter = Some(filter);
            }
            // Accepted (nothing is ever unreachable here) but checked like any boolean.
            "returnPartialSuccess" => {
                bool_param(key, value)?;
            }
            "orderBy" => match value.trim() {
                "" | "name" => {}
                "creationTimestamp desc" => params.order_by_creation_desc = true,
                other => {
                    return Err(ApiError::invalid_field(
                        "orderBy",
                        other,
                        "Only 'name' and 'creationTimestamp desc' are supported.",
                    ));
                }
            },
            _ => {}
        }
    }
    Ok(params)
}

/// A boolean query parameter: `true` or `false` in any case (gcloud sends `True`).
fn bool_param(name: &str, value: &str) -> Result<bool, ApiError> {
    if value.eq_ignore_ascii_case("true") {
        Ok(true)
    } else if value.eq_ignore_ascii_case("false") {
        Ok(false)
    } else {
        Err(ApiError::invalid_field(
            name,
            value,
            "Must be a boolean: true or false.",
        ))
    }
}

/// The parameters of an `aggregatedList`: those of a list, `includeAllScopes` and
/// `serviceProjectNumber` (an int64, accepted and not used).
fn aggregated_params(query: &[(String, String)]) -> Result<(ListParams, bool), ApiError> {
    let params = list_params(query)?;
    let mut include_all_scopes = false;
    for (key, value) in query {
        match key.as_str() {
            "includeAllScopes" => include_all_scopes = bool_param(key, value)?,
            "serviceProjectNumber" => {
                value.trim().parse::<i64>().map_err(|_| {
                    ApiError::invalid_field(key, value, "Must be an int64 project number.")
                })?;
            }
            _ => {}
        }
    }
    Ok((params, include_all_scopes))
}

/// Maps a path below `/compute/v1/` to its project and target.
fn route(method: &str, path: &str) -> Result<(String, Target), ApiError> {
    let not_found = || ApiError::no_such_method(method, &format!("/compute/v1/{path}"));
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    let ["projects", project, rest @ ..] = segments.as_slice() else {
        return Err(not_found());
    };
    let key = |kind, location: &str| CollectionKey {
        kind,
        location: location.to_string(),
    };
    let target = match rest {
        [] => Target::Project,
        ["regions"] => Target::Regions,
        ["regions", region] => Target::Region((*region).into()),
        ["aggregated", collection] => {
            Target::Aggregated(Aggregated::from_segment(collection).ok_or_else(not_found)?)
        }
        ["global", "operations"] => Target::Operations("global".into()),
        ["global", "operations", name] => Target::Operation("global".into(), (*name).into()),
        ["global", "operations", name, "wait"] => {
            Target::OperationWait("global".into(), (*name).into())
        }
        ["regions", region, "operations"] => Target::Operations(format!("regions/{region}")),
        ["regions", region, "operations", name] => {
            Target::Operation(format!("regions/{region}"), (*name).into())
        }
        ["regions", region, "operations", name, "wait"] => {
            Target::OperationWait(format!("regions/{region}"), (*name).into())
        }
        ["zones", zone, "operations"] => Target::Operations(format!("zones/{zone}")),
        ["zones", zone, "operations", name] => {
            Target::Operation(format!("zones/{zone}"), (*name).into())
        }
        ["zones", zone, "operations", name, "wait"] => {
            Target::OperationWait(format!("zones/{zone}"), (*name).into())
        }
        ["getXpnHost"] => Target::XpnHost,
        ["zones", zone, "instanceGroups", name, verb] => {
            let verb = match *verb {
                "addInstances" => "addInstances",
                "removeInstances" => "removeInstances",
                "listInstances" => "listInstances",
                _ => return Err(not_found()),
            };
            Target::Action(key(Kind::InstanceGroup, zone), (*name).into(), verb)
        }
        ["regions", region, "backendServices", name, "getHealth"] => Target::Action(
            key(Kind::BackendService, region),
            (*name).into(),
            "getHealth",
        ),
        ["zones", zone, "instances", name, verb @ ("start" | "stop")] => Target::InstancePower {
            zone: (*zone).into(),
            name: (*name).into(),
            start: *verb == "start",
        },
        ["global", collection] => Target::Collection(key(
            Kind::from_segment(Placement::Global, collection).ok_or_else(not_found)?,
            "",
        )),
        ["global", collection, name] => Target::Item(
            key(
                Kind::from_segment(Placement::Global, collection).ok_or_else(not_found)?,
                "",
            ),
            (*name).into(),
        ),
        ["regions", region, collection] => Target::Collection(key(
            Kind::from_segment(Placement::Regional, collection).ok_or_else(not_found)?,
            region,
        )),
        ["regions", region, collection, name] => Target::Item(
            key(
                Kind::from_segment(Placement::Regional, collection).ok_or_else(not_found)?,
                region,
            ),
            (*name).into(),
        ),
        ["zones", zone, collection] => Target::Collection(key(
            Kind::from_segment(Placement::Zonal, collection).ok_or_else(not_found)?,
            zone,
        )),
        ["zones", zone, collection, name] => Target::Item(
            key(
                Kind::from_segment(Placement::Zonal, collection).ok_or_else(not_found)?,
                zone,
            ),
            (*name).into(),
        ),
        _ => return Err(not_found()),
    };
    Ok(((*project).to_string(), target))
}

/// The method's discovery name (`compute.routes.insert`), its rate group and region.
fn describe(method: &str, target: &Target) -> (String, RateGroup, String) {
    let collection_name = |key: &CollectionKey| key.kind.method_collection().to_string();
    let write_group = |key: &CollectionKey| match key.kind.placement() {
        Placement::Global => (RateGroup::Writes, String::new()),
        Placement::Regional => (RateGroup::RegionalWrites, key.location.clone()),
        Placement::Zonal => (
            RateGroup::RegionalWrites,
            region_of_zone(&key.location).to_string(),
        ),
    };
    let ops_collection = |scope: &str| {
        if scope.starts_with("regions/") {
            "regionOperations"
        } else if scope.starts_with("zones/") {
            "zoneOperations"
        } else {
            "globalOperations"
        }
    };
    match target {
        Target::Collection(key) if method == "GET" => (
            format!("compute.{}.list", collection_name(key)),
            RateGroup::Reads,
            String::new(),
        ),
        Target::Collection(key) => {
            let (group, region) = write_group(key);
            (
                format!("compute.{}.insert", collection_name(key)),
                group,
                region,
            )
        }
        Target::Item(key, _) if method == "GET" => (
            format!("compute.{}.get", collection_name(key)),
            RateGroup::Reads,
            String::new(),
        ),
        Target::Item(key, _) => {
            let (group, region) = write_group(key);
            let verb = match method {
                "PATCH" => "patch",
                "PUT" => "update",
                _ => "delete",
            };
            (
                format!("compute.{}.{verb}", collection_name(key)),
                group,
                region,
            )
        }
        Target::Action(key, _, verb) => {
            let name = format!("compute.{}.{verb}", collection_name(key));
            if matches!(*verb, "addInstances" | "removeInstances") {
                let (group, region) = write_group(key);
                (name, group, region)
            } else {
                // listInstances and getHealth read (POST only for their request bodies).
                (name, RateGroup::Reads, String::new())
            }
        }
        Target::XpnHost => (
            "compute.projects.getXpnHost".into(),
            RateGroup::Reads,
            String::new(),
        ),
        Target::InstancePower { zone, start, .. } => (
            format!(
                "compute.instances.{}",
                if *start { "start" } else { "stop" }
            ),
            RateGroup::RegionalWrites,
            region_of_zone(zone).to_string(),
        ),
        Target::Operations(scope) => (
            format!("compute.{}.list", ops_collection(scope)),
            RateGroup::OperationReads,
            String::new(),
        ),
        Target::Operation(scope, _) => {
            let verb = if method == "DELETE" { "delete" } else { "get" };
            (
                format!("compute.{}.{verb}", ops_collection(scope)),
                RateGroup::OperationReads,
                String::new(),
            )
        }
        Target::OperationWait(scope, _) => (
            format!("compute.{}.wait", ops_collection(scope)),
            RateGroup::OperationReads,
            String::new(),
        ),
        // Reads like any get or list (RATE: projects.get and regions.get are global reads).
        Target::Project => (
            "compute.projects.get".into(),
            RateGroup::Reads,
            String::new(),
        ),
        Target::Regions => (
            "compute.regions.list".into(),
            RateGroup::Reads,
            String::new(),
        ),
        Target::Region(_) => (
            "compute.regions.get".into(),
            RateGroup::Reads,
            String::new(),
        ),
        // Charged like any list (RATE: reads); the operations one too (a model choice: it is not
        // charged to operation reads).
        Target::Aggregated(what) => (what.method().into(), RateGroup::Reads, String::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_paths() {
        let (project, target) = route("GET", "projects/p/global/routes/r").unwrap();
        assert_eq!(project, "p");
        assert!(matches!(target, Target::Item(ref k, ref n) if k.kind == Kind::Route && n == "r"));
        let (_, target) = route("POST", "projects/p/regions/us-central1/addresses").unwrap();
        assert!(
            matches!(target, Target::Collection(ref k) if k.kind == Kind::Address && k.location == "us-central1")
        );
        let (_, target) = route("POST", "projects/p/zones/z-a/operations/op/wait").unwrap();
        assert!(matches!(target, Target::OperationWait(ref s, _) if s == "zones/z-a"));
        assert!(route("GET", "projects/p/global/widgets").is_err());
        assert!(route("GET", "nope").is_err());
        let (name, group, _) = describe(
            "POST",
            &route("POST", "projects/p/global/routes").unwrap().1,
        );
        assert_eq!(name, "compute.routes.insert");
        assert_eq!(group, RateGroup::Writes);
        for (path, method) in [
            ("projects/p", "compute.projects.get"),
            ("projects/p/", "compute.projects.get"),
            ("projects/p/regions", "compute.regions.list"),
            ("projects/p/regions/us-central1", "compute.regions.get"),
        ] {
            let (project, target) = route("GET", path).unwrap();
            assert_eq!(project, "p");
            let (name, group, _) = describe("GET", &target);
            assert_eq!((name.as_str(), group), (method, RateGroup::Reads), "{path}");
        }
        assert!(
            matches!(route("GET", "projects/p/regions/r").unwrap().1, Target::Region(ref r) if r == "r")
        );
    }

    #[test]
    fn routes_aggregated_lists() {
        for (segment, method) in [
            ("instances", "compute.instances.aggregatedList"),
            ("operations", "compute.globalOperations.aggregatedList"),
            ("addresses", "compute.addresses.aggregatedList"),
            ("forwardingRules", "compute.forwardingRules.aggregatedList"),
            ("targetInstances", "compute.targetInstances.aggregatedList"),
        ] {
            let (project, target) =
                route("GET", &format!("projects/p/aggregated/{segment}")).unwrap();
            assert_eq!(project, "p");
            assert!(matches!(target, Target::Aggregated(a) if a.segment() == segment));
            let (name, group, region) = describe("GET", &target);
            assert_eq!(
                (name.as_str(), group, region.as_str()),
                (method, RateGroup::Reads, "")
            );
        }
        for path in [
            "projects/p/aggregated/routes",
            "projects/p/aggregated",
            "projects/p/aggregated/instances/x",
        ] {
            let err = route("GET", path).unwrap_err();
            assert_eq!((err.code, err.reason), (404, "notFound"), "{path}");
        }
    }

    #[test]
    fn routes_load_balancing_methods() {
        for (method, path, name, group) in [
            (
                "POST",
                "projects/p/zones/z-a/instanceGroups/g/addInstances",
                "compute.instanceGroups.addInstances",
                RateGroup::RegionalWrites,
            ),
            (
                "POST",
                "projects/p/zones/z-a/instanceGroups/g/removeInstances",
                "compute.instanceGroups.removeInstances",
                RateGroup::RegionalWrites,
            ),
            (
                "POST",
                "projects/p/zones/z-a/instanceGroups/g/listInstances",
                "compute.instanceGroups.listInstances",
                RateGroup::Reads,
            ),
            (
                "POST",
                "projects/p/regions/r/backendServices/b/getHealth",
                "compute.regionBackendServices.getHealth",
                RateGroup::Reads,
            ),
            (
                "PUT",
                "projects/p/regions/r/backendServices/b",
                "compute.regionBackendServices.update",
                RateGroup::RegionalWrites,
            ),
            (
                "PATCH",
                "projects/p/regions/r/healthChecks/h",
                "compute.regionHealthChecks.patch",
                RateGroup::RegionalWrites,
            ),
            (
                "POST",
                "projects/p/zones/z-a/instanceGroups",
                "compute.instanceGroups.insert",
                RateGroup::RegionalWrites,
            ),
            (
                "GET",
                "projects/p/getXpnHost",
                "compute.projects.getXpnHost",
                RateGroup::Reads,
            ),
            (
                "GET",
                "projects/p/aggregated/healthChecks",
                "compute.healthChecks.aggregatedList",
                RateGroup::Reads,
            ),
        ] {
            let (project, target) = route(method, path).unwrap();
            assert_eq!(project, "p");
            let (described, charged, region) = describe(method, &target);
            assert_eq!((described.as_str(), charged), (name, group), "{path}");
            if group == RateGroup::RegionalWrites {
                assert!(region == "z" || region == "r", "{path}: {region}");
            }
        }
        assert!(
            route(
                "POST",
                "projects/p/zones/z-a/instanceGroups/g/setNamedPorts"
            )
            .is_err()
        );
        assert!(route("GET", "projects/p/global/backendServices").is_err());
    }

    #[test]
    fn aggregated_params_are_checked() {
        let q = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        // What gcloud 528 sends for `compute instances list`.
        let (params, all) = aggregated_params(&q(&[
            ("alt", "json"),
            ("includeAllScopes", "True"),
            ("maxResults", "500"),
            ("returnPartialSuccess", "True"),
        ]))
        .unwrap();
        assert!(all);
        assert_eq!(params.max_results, 500);
        let (_, all) = aggregated_params(&q(&[
            ("includeAllScopes", "false"),
            ("serviceProjectNumber", "123456789012"),
            ("unknownParameter", "x"),
        ]))
        .unwrap();
        assert!(!all);
        for bad in [
            ("returnPartialSuccess", "maybe"),
            ("includeAllScopes", "1"),
            ("serviceProjectNumber", "abc"),
            ("maxResults", "501"),
            ("orderBy", "zone"),
            ("filter", "name eq ("),
        ] {
            let err = aggregated_params(&q(&[bad])).unwrap_err();
            assert_eq!((err.code, err.reason), (400, "invalid"), "{bad:?}");
            assert!(err.message.contains(bad.0), "{}", err.message);
        }
        // A per-scope list checks returnPartialSuccess too, and ignores includeAllScopes.
        assert!(list_params(&q(&[("returnPartialSuccess", "maybe")])).is_err());
        assert!(list_params(&q(&[("includeAllScopes", "maybe")])).is_ok());
    }

    #[test]
    fn list_params_are_checked() {
        let q = |k: &str, v: &str| vec![(k.to_string(), v.to_string())];
        assert_eq!(list_params(&[]).unwrap().max_results, 500);
        assert!(list_params(&q("maxResults", "501")).is_err());
        assert!(list_params(&q("maxResults", "x")).is_err());
        assert!(list_params(&q("orderBy", "zone")).is_err());
        assert!(
            list_params(&q("orderBy", "creationTimestamp desc"))
                .unwrap()
                .order_by_creation_desc
        );
    }
}
