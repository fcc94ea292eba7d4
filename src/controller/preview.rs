//! `adc-operator plan`: the Compute changes the operator would make, computed by the code that
//! makes them (each kind's `observe`, the diff, the guard rails, the policy, the pools' shared
//! layout) from the cluster's objects, optionally overlaid with manifests, and a read-only look
//! at GCP. Nothing is written: the engines only read (a mutation is refused before it reaches
//! their queue), and the cluster is only listed.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ListParams};
use kube::runtime::events::Recorder;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::Event;
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::mpsc;

use super::context::{CloudRuntime, Context, OperatorSettings};
use super::error::Error;
use super::index::FleetIndex;
use super::reconcile::{Kind, owner};
use crate::api::policy::{APPROVED_ANNOTATION, POLICY_ANNOTATION};
use crate::api::{GcpCloud, ManagementPolicy, VirtualService, VpcRoute};
use crate::gcp::{Credentials, GcpMetrics, Target};
use crate::plan::CloudView;
use crate::plan::diff::diff;
use crate::plan::policy::{Op, Plan, effective};

/// What the plan covers and how it reads GCP.
pub struct Options {
    /// One cloud, or every GcpCloud.
    pub cloud: Option<String>,
    /// Objects to plan as if they were applied (GcpCloud, VirtualService, VpcRoute), replacing
    /// the cluster's object of the same kind, namespace and name.
    pub manifests: Vec<Value>,
    /// Credentials for every cloud instead of each cloud's own.
    pub credentials: Option<Credentials>,
    /// The cluster id of the operator whose plan this is (its ownership markers).
    pub cluster_id: String,
}

/// The plan of every cloud in scope.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Preview {
    pub clouds: Vec<CloudPlan>,
}

impl Preview {
    /// Whether any cloud has a change to make.
    pub fn has_changes(&self) -> bool {
        self.clouds.iter().any(|c| !c.changes.is_empty())
    }
}

/// One cloud's plan.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CloudPlan {
    pub cloud: String,
    pub project: String,
    pub network: String,
    pub policy: String,
    /// Every insert, replace and delete, in the order of the objects.
    pub changes: Vec<Change>,
    /// Objects whose plan the guard rails (or a bad annotation) refuse: nothing of them would
    /// be written.
    pub refused: Vec<Refusal>,
    /// Objects Paused: neither planned nor written.
    pub paused: Vec<String>,
    /// The objects' plan hashes (what `adc.dev/approved-plan` approves under Observe).
    pub objects: Vec<ObjectPlan>,
    /// Resource quotas now and once the plan is applied.
    pub quota: Vec<QuotaLine>,
    /// GCP writes the plan needs.
    pub writes: usize,
    /// The least time the writes take at the cloud's `rateLimit.writesPerMinute` (the lower
    /// bound of bench/README.md: W/Q minutes + one operation + one round trip), seconds.
    pub estimated_seconds: f64,
}

/// One change.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Change {
    /// insert, replace or delete.
    pub op: String,
    /// `global/routes/NAME`, `global/firewalls/NAME`, `regions/R/addresses/NAME`…
    pub resource: String,
    /// Range, next hop and priority; ranges and ports; an address.
    pub detail: String,
    /// Whose it is: `VirtualService ns/name`, `VpcRoute ns/name` or `GcpCloud name` (shared).
    pub owner: String,
    /// Under Observe, whether it waits for an approval of its object's plan.
    pub awaiting_approval: bool,
}

/// An object the guard rails refuse.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Refusal {
    pub object: String,
    pub reason: String,
}

/// An object's plan, as `status.plan` would show it.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ObjectPlan {
    pub object: String,
    pub policy: String,
    pub hash: String,
    pub changes: usize,
}

/// A resource quota before and after.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct QuotaLine {
    pub metric: String,
    pub limit: f64,
    pub usage: f64,
    pub after: f64,
}

/// Plans every cloud in scope. Reads only.
pub async fn preview(client: Client, options: Options) -> Result<Preview, Error> {
    let mut clouds = list::<GcpCloud>(&client).await?;
    let mut services = list::<VirtualService>(&client).await?;
    let mut routes = list::<VpcRoute>(&client).await?;
    for (at, manifest) in options.manifests.iter().enumerate() {
        let kind = manifest["kind"].as_str().unwrap_or_default();
        let parse_error =
            |err: serde_json::Error| Error::Config(format!("manifest {} ({kind}): {err}", at + 1));
        match kind {
            "GcpCloud" => overlay(
                &mut clouds,
                serde_json::from_value(manifest.clone()).map_err(parse_error)?,
                false,
            ),
            "VirtualService" => overlay(
                &mut services,
                serde_json::from_value(manifest.clone()).map_err(parse_error)?,
                true,
            ),
            "VpcRoute" => overlay(
                &mut routes,
                serde_json::from_value(manifest.clone()).map_err(parse_error)?,
                true,
            ),
            other => {
                return Err(Error::Config(format!(
                    "manifest {}: kind '{other}' is none of GcpCloud, VirtualService, VpcRoute",
                    at + 1
                )));
            }
        }
    }
    if let Some(wanted) = &options.cloud
        && !clouds.iter().any(|c| &c.name_any() == wanted)
    {
        return Err(Error::Config(format!("GcpCloud '{wanted}' does not exist")));
    }
    let ctx = read_context(&client, &services, &routes, &options.cluster_id).await?;
    let mut plans = Vec::new();
    for cloud in &clouds {
        let name = cloud.name_any();
        if options.cloud.as_ref().is_some_and(|wanted| wanted != &name) {
            continue;
        }
        let runtime = loaded(&ctx, cloud, options.credentials.clone()).await?;
        runtime.set_policy(cloud.spec.management_policy);
        runtime
            .ready
            .store(true, std::sync::atomic::Ordering::Relaxed);
        plans.push(plan_cloud(&ctx, cloud, &runtime, &services, &routes).await?);
        runtime.engine.shutdown();
    }
    Ok(Preview { clouds: plans })
}

/// A context for reading: the objects given as stores, no controller behind the triggers.
async fn read_context(
    client: &Client,
    services: &[VirtualService],
    routes: &[VpcRoute],
    cluster_id: &str,
) -> Result<Context, Error> {
    let index = Arc::new(FleetIndex::default());
    index_all(services, &index);
    index_all(routes, &index);
    let (vs_tx, _) = mpsc::unbounded_channel();
    let (vr_tx, _) = mpsc::unbounded_channel();
    Ok(Context {
        recorder: Recorder::new(client.clone(), super::context::reporter()),
        virtual_services: store_of(services),
        vpc_routes: store_of(routes),
        index,
        relist: Default::default(),
        namespaces: store_of(&list::<Namespace>(client).await?),
        clouds: Default::default(),
        vs_trigger: vs_tx,
        vr_trigger: vr_tx,
        client: client.clone(),
        settings: OperatorSettings {
            cluster_id: cluster_id.to_string(),
            dispatch: crate::gcp::DispatchMode::Batched,
            gcp_time_scale: 1.0,
            reconcile_concurrency: 1,
            identity: "adc-operator-plan".to_string(),
        },
        metrics: Arc::new(GcpMetrics::default()),
        reconcile_metrics: Default::default(),
        shards: None,
        // Only sharding reads it, and plan does not shard.
        gcp_clouds: store_of::<GcpCloud>(&[]),
        finalizing: Default::default(),
    })
}

/// The routes and firewall rules of GcpCloud `name`'s network that carry no ownership marker
/// (what `adc-operator import` maps), and the cloud as the planner sees it. Reads only.
pub async fn foreign_resources(
    client: Client,
    name: &str,
    credentials: Option<Credentials>,
    cluster_id: &str,
) -> Result<(CloudView, Vec<(Target, Value)>), Error> {
    let clouds: Api<GcpCloud> = Api::all(client.clone());
    let Some(mut cloud) = clouds.get_opt(name).await? else {
        return Err(Error::Config(format!("GcpCloud '{name}' does not exist")));
    };
    // Every route of the project, whatever its name: what adoption lists too.
    cloud.spec.adoption.enabled = true;
    let ctx = read_context(&client, &[], &[], cluster_id).await?;
    let runtime = loaded(&ctx, &cloud, credentials).await?;
    let view = runtime.view.clone();
    let foreign = runtime
        .engine
        .inventory()
        .read(|s| s.foreign(&view.resource_prefix, &view.network));
    runtime.engine.shutdown();
    Ok((view, foreign))
}

/// A read-only runtime of `cloud`, known to `ctx` under the cloud's name, its inventory
/// loaded once.
async fn loaded(
    ctx: &Context,
    cloud: &GcpCloud,
    credentials: Option<Credentials>,
) -> Result<Arc<CloudRuntime>, Error> {
    let name = cloud.name_any();
    let runtime = super::cloud::read_only_runtime(ctx, cloud, credentials).await?;
    match ctx.clouds.write() {
        Ok(mut guard) => guard.insert(name.clone(), Arc::clone(&runtime)),
        Err(poisoned) => poisoned
            .into_inner()
            .insert(name.clone(), Arc::clone(&runtime)),
    };
    super::cloud::refresh_inventory(ctx, &name, &runtime).await?;
    Ok(runtime)
}

async fn plan_cloud(
    ctx: &Context,
    cloud: &GcpCloud,
    runtime: &CloudRuntime,
    services: &[VirtualService],
    routes: &[VpcRoute],
) -> Result<CloudPlan, Error> {
    let name = cloud.name_any();
    let mut plan = CloudPlan {
        cloud: name.clone(),
        project: cloud.spec.project.clone(),
        network: cloud.spec.network.clone(),
        policy: cloud.spec.management_policy.to_string(),
        changes: Vec::new(),
        refused: Vec::new(),
        paused: Vec::new(),
        objects: Vec::new(),
        quota: Vec::new(),
        writes: 0,
        estimated_seconds: 0.0,
    };
    for object in services.iter().filter(|o| o.spec.cloud_ref == name) {
        plan_object(ctx, runtime, object, &mut plan).await?;
    }
    for object in routes.iter().filter(|o| o.spec.cloud_ref == name) {
        plan_object(ctx, runtime, object, &mut plan).await?;
    }
    if !runtime.pools.pools.is_empty() {
        let (desired, owned) = super::cloud::planned_layout(runtime, &ctx.virtual_services);
        let changes = diff(&desired, &owned);
        let shared = Plan::new(&changes, &owned, None);
        let held = !runtime.writes();
        for item in &shared.items {
            plan.changes.push(Change {
                op: item.op.verb().into(),
                resource: item.target.to_string(),
                detail: item.summary.clone(),
                owner: format!("GcpCloud {name}"),
                awaiting_approval: held,
            });
        }
    }
    let count = |op: &str| plan.changes.iter().filter(|c| c.op == op).count();
    plan.writes = count("insert") + count("delete") + 2 * count("replace");
    plan.estimated_seconds = if plan.writes == 0 {
        0.0
    } else {
        crate::plan::quota::rollout_seconds(
            plan.writes,
            f64::from(cloud.spec.rate_limit.writes_per_minute),
        )
    };
    let quotas = runtime.engine.read_quotas().await.unwrap_or_default();
    for metric in ["ROUTES", "FIREWALLS", "STATIC_ADDRESSES"] {
        let Some(quota) = quotas
            .iter()
            .find(|q| q.metric == metric && (q.scope == "global" || q.scope == cloud.spec.region))
        else {
            continue;
        };
        let collection = |c: &Change| {
            if c.resource.starts_with("global/routes/") {
                "ROUTES"
            } else if c.resource.starts_with("global/firewalls/") {
                "FIREWALLS"
            } else if c.resource.contains("/addresses/") {
                "STATIC_ADDRESSES"
            } else {
                ""
            }
        };
        let delta: f64 = plan
            .changes
            .iter()
            .filter(|c| collection(c) == metric)
            .map(|c| match c.op.as_str() {
                "insert" => 1.0,
                "delete" => -1.0,
                _ => 0.0,
            })
            .sum();
        plan.quota.push(QuotaLine {
            metric: metric.into(),
            limit: quota.limit,
            usage: quota.usage,
            after: quota.usage + delta,
        });
    }
    Ok(plan)
}

async fn plan_object<K: Kind>(
    ctx: &Context,
    runtime: &CloudRuntime,
    object: &K,
    plan: &mut CloudPlan,
) -> Result<(), Error> {
    let label = format!(
        "{} {}/{}",
        K::KIND,
        object.namespace().unwrap_or_default(),
        object.name_any()
    );
    if object.meta().deletion_timestamp.is_some() {
        return Ok(());
    }
    let policy = match effective(
        runtime.policy(),
        object
            .annotations()
            .get(POLICY_ANNOTATION)
            .map(String::as_str),
    ) {
        Ok(policy) => policy,
        Err(reason) => {
            plan.refused.push(Refusal {
                object: label,
                reason,
            });
            return Ok(());
        }
    };
    if policy == ManagementPolicy::Paused {
        plan.paused.push(label);
        return Ok(());
    }
    let zones = object.zones();
    if !zones.is_empty()
        && let Err(err) = super::cloud::ensure_zones(runtime, &zones).await
    {
        plan.refused.push(Refusal {
            object: label,
            reason: format!("{}: {err}", K::ZONES_FIELD),
        });
        return Ok(());
    }
    let owner = owner(ctx, object);
    let observation = object.observe(ctx, runtime, &owner).await?;
    if !observation.problems.is_empty() {
        plan.refused.push(Refusal {
            object: label,
            reason: observation.problems.join("; "),
        });
        return Ok(());
    }
    let changes = match super::reconcile::changes_of(object, runtime, &observation) {
        Ok(changes) => changes,
        Err(reason) => {
            plan.refused.push(Refusal {
                object: label,
                reason,
            });
            return Ok(());
        }
    };
    let previous = object
        .status()
        .and_then(|s| super::reconcile::plan_of::<K>(s));
    let object_plan = Plan::new(
        &changes,
        &observation.owned,
        previous.as_ref().and_then(|p| p.applied.as_deref()),
    );
    let approved = object
        .annotations()
        .get(APPROVED_ANNOTATION)
        .map(String::as_str)
        == Some(object_plan.hash.as_str());
    let awaiting = policy == ManagementPolicy::Observe && !approved;
    for item in &object_plan.items {
        plan.changes.push(Change {
            op: item.op.verb().into(),
            resource: item.target.to_string(),
            detail: item.summary.clone(),
            owner: label.clone(),
            awaiting_approval: awaiting,
        });
    }
    plan.objects.push(ObjectPlan {
        object: label,
        policy: policy.to_string(),
        hash: object_plan.hash,
        changes: object_plan.items.len(),
    });
    Ok(())
}

async fn list<K>(client: &Client) -> Result<Vec<K>, Error>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let api: Api<K> = Api::all(client.clone());
    let mut items = Vec::new();
    let mut params = ListParams::default().limit(500);
    loop {
        let page = api.list(&params).await?;
        items.extend(page.items);
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(items),
        }
    }
}

/// Puts `object` in place of the one with its kind, namespace and name (or adds it).
fn overlay<K>(objects: &mut Vec<K>, mut object: K, namespaced: bool)
where
    K: Resource<DynamicType = ()> + Serialize + serde::de::DeserializeOwned,
{
    if namespaced && object.meta().namespace.is_none() {
        object.meta_mut().namespace = Some("default".into());
    }
    let same = |o: &K| o.name_any() == object.name_any() && o.namespace() == object.namespace();
    match objects.iter().position(same) {
        Some(at) => {
            // What the cluster knows (status, finalizers, uid) stays; the spec and metadata the
            // manifest gives replace it, as an apply would.
            let mut merged = object;
            let held = &objects[at];
            merged.meta_mut().uid = held.meta().uid.clone();
            merged.meta_mut().creation_timestamp = held.meta().creation_timestamp.clone();
            merged.meta_mut().finalizers = held.meta().finalizers.clone();
            objects[at] = keep_status(merged, held);
        }
        None => objects.push(object),
    }
}

/// `object` with the status of `held` (a manifest carries none the plan should trust).
fn keep_status<K: Serialize + serde::de::DeserializeOwned>(object: K, held: &K) -> K {
    let Ok(mut value) = serde_json::to_value(&object) else {
        return object;
    };
    if let Ok(old) = serde_json::to_value(held) {
        value["status"] = old["status"].clone();
    }
    serde_json::from_value(value).unwrap_or(object)
}

/// A reflector store holding `objects`, complete (as after a watch's first list).
fn store_of<K>(objects: &[K]) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone,
{
    let (store, mut writer) = reflector::store::<K>();
    writer.apply_watcher_event(&Event::Init);
    for object in objects {
        writer.apply_watcher_event(&Event::InitApply(object.clone()));
    }
    writer.apply_watcher_event(&Event::InitDone);
    store
}

/// What `objects` name, into `index`.
fn index_all<K: super::index::Indexed + Clone>(objects: &[K], index: &FleetIndex) {
    index.observe(&Event::<K>::Init);
    for object in objects {
        index.observe(&Event::InitApply(object.clone()));
    }
    index.observe(&Event::<K>::InitDone);
}

/// Changes of a collection, for the table's summary line.
pub fn counts(plan: &CloudPlan) -> BTreeMap<&'static str, usize> {
    let mut counts = BTreeMap::new();
    for op in [Op::Insert, Op::Replace, Op::Delete, Op::Adopt] {
        counts.insert(
            op.verb(),
            plan.changes.iter().filter(|c| c.op == op.verb()).count(),
        );
    }
    counts
}
