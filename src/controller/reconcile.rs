//! The one reconcile of every fleet kind (VirtualService, VpcRoute): the finalizer, the
//! cloud-not-ready preamble, loading the zones the object names, the guard-rail stall, the
//! make-before-break apply through the engine, events and the status tail. A kind brings only
//! what is its own through [`Kind`]: how it observes and plans (`observe`), what its status
//! shows besides the conditions (`Report`), and an optional step before it is Synced. A new
//! kind or VIP mode is one file that implements it.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::apply::{Progress, advance, superseded_inserts};
use super::context::{CloudRuntime, Context};
use super::error::Error;
use super::status::{Phase, apply_phase, write_status};
use crate::api::conditions::{Condition, READY, STALLED, find_condition};
use crate::api::policy::{ADOPT_ANNOTATION, APPROVED_ANNOTATION, POLICY_ANNOTATION};
use crate::api::{FleetObject, GcpCloud, ManagementPolicy, PlanStatus};
use crate::gcp::{Collection, Target};
use crate::plan::DesiredResource;
use crate::plan::adopt::How;
use crate::plan::diff::{Diff, diff, diff_adopting};
use crate::plan::owner::Owner;
use crate::plan::policy::{Decision, Plan, decide, effective};

/// The finalizer that removes GCP resources before the object goes.
pub const FINALIZER: &str = "adc.dev/cleanup";

/// What one reconcile of an object found and wants.
#[derive(Debug, Clone)]
pub struct Observation<R> {
    /// The GCP resources the object wants.
    pub desired: Vec<DesiredResource>,
    /// What GCP holds of it now (by its ownership marker), as (target, JSON).
    pub owned: Vec<(Target, Value)>,
    /// The guard rails' verdicts: any stalls the object until its spec or cloud changes.
    pub problems: Vec<String>,
    /// What the status shows while the guard rails stall it (None: leave it as it is).
    pub stalled_report: Option<R>,
    /// Service engines (instance names) that are down: routes to them that the object no longer
    /// wants are withdrawn at once, before anything is made, and the change is a failover.
    pub down_engines: Vec<String>,
    /// The internal addresses of those engines: a Shared VPC's routes name them
    /// (`nextHopIp`).
    pub down_addresses: Vec<String>,
    /// What the status shows otherwise.
    pub report: R,
}

/// A step of a kind's own before an object may be Synced: what its status says meanwhile.
#[derive(Debug, Clone)]
pub struct Step<R> {
    pub phase: Phase,
    pub report: Option<R>,
    pub requeue: Duration,
}

/// A status's `observedGeneration`, conditions and `plan`, for the shared reconcile to write.
pub type Bookkeeping<'a> = (
    &'a mut Option<i64>,
    &'a mut Vec<Condition>,
    &'a mut Option<PlanStatus>,
);

/// What a kind brings to the shared reconcile.
pub trait Kind:
    FleetObject
    + Resource<Scope = kube::core::NamespaceResourceScope>
    + Clone
    + std::fmt::Debug
    + Serialize
    + DeserializeOwned
    + Send
    + Sync
    + 'static
{
    /// The kind's status.
    type Status: Clone + Default + PartialEq + Serialize + Send + Sync;
    /// What its status shows besides the conditions.
    type Report: Clone + Send + Sync;
    /// The spec field that names zones (for a ZoneNotFound stall).
    const ZONES_FIELD: &'static str;
    /// What the Apply event calls the resources it makes ("GCP resource(s)", "route(s)").
    const RESOURCES: &'static str;

    /// The current status.
    fn status(&self) -> Option<&Self::Status>;
    /// The status's `observedGeneration`, conditions and plan.
    fn bookkeeping(status: &mut Self::Status) -> Bookkeeping<'_>;
    /// Writes the report into the status; None when the cloud is unusable (nothing known).
    fn fill(status: &mut Self::Status, report: Option<&Self::Report>);
    /// The zones whose instances the object reads.
    fn zones(&self) -> Vec<&str>;
    /// Reads the inventory, plans, and asks the guard rails.
    fn observe<'a>(
        &'a self,
        ctx: &'a Context,
        runtime: &'a CloudRuntime,
        owner: &'a Owner,
    ) -> impl Future<Output = Result<Observation<Self::Report>, Error>> + Send + 'a;
    /// A step of the kind's own once its work was handed over and before it may be Synced
    /// (a VIP whose IP GCP still has to choose): the phase, report and requeue, or None.
    fn before_synced<'a>(
        &'a self,
        _runtime: &'a CloudRuntime,
        _observation: &'a Observation<Self::Report>,
        _changes: &'a Diff,
    ) -> impl Future<Output = Result<Option<Step<Self::Report>>, Error>> + Send + 'a {
        async { Ok(None) }
    }
    /// What the kind does once its finalizer has cleaned up (a VIP of a pool gives its
    /// address back).
    fn cleaned_up(&self, _ctx: &Context) {}
    /// The phase of an object whose resources all exist.
    fn synced(report: &Self::Report) -> Phase;
}

/// The owner written into the markers of the object's resources.
pub fn owner<K: Kind>(ctx: &Context, object: &K) -> Owner {
    Owner::new(
        &ctx.settings.cluster_id,
        object.cloud_ref(),
        K::KIND,
        &object.namespace().unwrap_or_default(),
        &object.name_any(),
    )
}

/// Reconciles one object of kind `K`.
/// How soon a reconcile that found a stub (`controller::slim`) looks again.
const STUB_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

pub async fn reconcile<K: Kind>(object: Arc<K>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = object.namespace().unwrap_or_default();
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &namespace);
    if !ctx.holds(object.cloud_ref()) {
        // Another replica holds the cloud: it reconciles the object (and its deletion). This
        // one writes nothing, not even a finalizer; it is requeued when it takes the cloud.
        return Ok(Action::await_change());
    }
    if super::slim::is_stub(&*object) {
        // A cloud just taken over: the store still holds a stub of the object until the
        // re-list brings it whole. Nothing is decided on a stub.
        ctx.relist.request();
        return Ok(Action::requeue(STUB_RETRY));
    }
    // A deletion the management policy holds keeps the finalizer: decided before kube-runtime's
    // helper, which removes the finalizer once a cleanup returns.
    if object.meta().deletion_timestamp.is_some()
        && object.finalizers().iter().any(|f| f == FINALIZER)
        && let Some(held) = deletion_held(&api, &*object, &ctx).await?
    {
        return Ok(held);
    }
    let finalized = object.finalizers().iter().any(|f| f == FINALIZER);
    if finalized {
        ctx.finalizing.seen(object.meta().uid.as_deref());
    } else if object.meta().deletion_timestamp.is_none() {
        return add_finalizer(&api, &*object, &ctx.finalizing).await;
    }
    let outcome = finalizer(&api, FINALIZER, object, |event| async {
        match event {
            Finalizer::Apply(object) => apply_object(&api, &*object, &ctx).await,
            Finalizer::Cleanup(object) => {
                let done = super::apply::cleanup(
                    &ctx,
                    &*object,
                    object.cloud_ref(),
                    &owner(&ctx, &*object),
                )
                .await;
                if done.is_ok() {
                    object.cleaned_up(&ctx);
                }
                done
            }
        }
    })
    .await;
    super::error::finalizer_outcome(outcome)
}

/// Puts the finalizer on before anything is written to GCP, as kube-runtime's helper would (the
/// finalizer's change brings the object back through its watch, and the helper then applies
/// it), but without decoding the object the API server answers with: one whole-object decode
/// per object of a rollout (bench/README.md, "The fourth pass"). The list is written whole at
/// the resourceVersion read, so a finalizer another controller added meanwhile is not lost: the
/// API server refuses the stale write (409), and the object is looked at again.
///
/// A reconcile that starts before the watch has brought the finalizer back (another trigger of
/// the object: its engine's inventory, its cloud) reads the version the finalizer was written
/// from. It writes nothing: the watch's next event of the object reconciles it (`finalizing`).
async fn add_finalizer<K: Kind>(
    api: &Api<K>,
    object: &K,
    finalizing: &Finalizing,
) -> Result<Action, Error> {
    let (uid, version) = (object.meta().uid.as_deref(), object.resource_version());
    if finalizing.written_from(uid, version.as_deref()) {
        return Ok(Action::await_change());
    }
    let mut finalizers = object.finalizers().to_vec();
    finalizers.push(FINALIZER.to_string());
    let patch = serde_json::json!({
        "metadata": {
            "finalizers": finalizers,
            "resourceVersion": object.resource_version(),
        }
    });
    match super::status::patch_object(
        api,
        &object.name_any(),
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&patch),
    )
    .await
    {
        Ok(()) => {
            finalizing.wrote(uid, version);
            Ok(Action::await_change())
        }
        Err(kube::Error::Api(status)) if status.code == 409 => Err(Error::Conflict(status.message)),
        // Deleted meanwhile: its deletion event says what is left to do.
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(Action::await_change()),
        Err(err) => Err(err.into()),
    }
}

/// Finalizers this replica added whose object its store still shows without one, by uid: the
/// resourceVersion each was written from. Under load the watch trails the writes by seconds,
/// and a second trigger of a new object in that time found the version without a finalizer
/// and wrote it again, refused with a 409 the API server still had to work out, then retried
/// every two seconds until the watch caught up: 0.4 refused writes per object in the sharded
/// rollouts (bench/README.md, "The fifth pass").
#[derive(Debug, Default)]
pub struct Finalizing(std::sync::Mutex<std::collections::HashMap<String, String>>);

impl Finalizing {
    /// Entries kept at most: an object deleted (or its cloud handed to another replica) before
    /// its store showed the finalizer is never seen again, and a full map is cleared (what is
    /// lost costs one refused write each).
    const MAX: usize = 100_000;

    fn entries(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, String>> {
        match self.0.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Whether the finalizer was written from exactly this version of the object.
    pub fn written_from(&self, uid: Option<&str>, version: Option<&str>) -> bool {
        let (Some(uid), Some(version)) = (uid, version) else {
            return false;
        };
        self.entries().get(uid).is_some_and(|v| v == version)
    }

    /// The finalizer was written from `version`.
    pub fn wrote(&self, uid: Option<&str>, version: Option<String>) {
        let (Some(uid), Some(version)) = (uid, version) else {
            return;
        };
        let mut entries = self.entries();
        if entries.len() >= Self::MAX {
            entries.clear();
        }
        entries.insert(uid.to_string(), version);
    }

    /// The store shows the object with its finalizer.
    pub fn seen(&self, uid: Option<&str>) {
        if let Some(uid) = uid {
            let mut entries = self.entries();
            if !entries.is_empty() {
                entries.remove(uid);
            }
        }
    }

    /// Entries held (for tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries().len()
    }
}

async fn apply_object<K: Kind>(api: &Api<K>, object: &K, ctx: &Context) -> Result<Action, Error> {
    let Some(runtime) = usable_cloud(api, object, ctx).await? else {
        // The cloud requeues its objects when it becomes Ready; this is only a safety net.
        return Ok(Action::requeue(Duration::from_secs(30)));
    };
    // An engine in a zone the inventory does not list yet: load it before judging.
    let zones = object.zones();
    if !zones.is_empty()
        && let Err(err) = super::cloud::ensure_zones(&runtime, &zones).await
    {
        // A zone Compute does not know is the spec's fault: retrying will not help.
        let Some(phase) = zones_not_found(&runtime, &zones, &err, K::ZONES_FIELD) else {
            return Err(err);
        };
        report(api, object, phase, None).await?;
        return Ok(Action::requeue(Duration::from_secs(300)));
    }
    let owner = owner(ctx, object);
    let policy = match policy_of(object, &runtime) {
        Ok(policy) => policy,
        Err(message) => {
            report(
                api,
                object,
                Phase::stalled("InvalidAnnotation", message),
                None,
            )
            .await?;
            return Ok(Action::requeue(Duration::from_secs(300)));
        }
    };
    if policy == ManagementPolicy::Paused {
        let previous = object.status().and_then(|s| plan_of::<K>(s));
        if let Decision::Hold {
            reason, message, ..
        } = decide(
            policy,
            &Plan::new(&Diff::default(), &[], None),
            previous.as_ref(),
            None,
            &kubectl_name(object),
        ) {
            // Neither planned nor written: the status keeps what it showed, besides why.
            report_full(api, object, Phase::suspended(reason, message), None, None).await?;
        }
        return Ok(Action::requeue(Duration::from_secs(300)));
    }
    let observation = object.observe(ctx, &runtime, &owner).await?;
    if !observation.problems.is_empty() {
        let message = observation.problems.join("; ");
        let told = find_condition(object.conditions(), STALLED)
            .is_some_and(|c| c.status == "True" && c.message == message);
        if !told {
            ctx.event(object, true, "GuardRail", "Plan", message.clone())
                .await;
        }
        let phase = Phase::stalled("GuardRail", message);
        report(api, object, phase, observation.stalled_report.as_ref()).await?;
        return Ok(Action::requeue(Duration::from_secs(300)));
    }

    let engine = &runtime.engine;
    let changes = match changes_of(object, &runtime, &observation) {
        Ok(changes) => changes,
        Err(message) => {
            let phase = Phase::stalled("InvalidAnnotation", message);
            report(api, object, phase, None).await?;
            return Ok(Action::requeue(Duration::from_secs(300)));
        }
    };
    let previous = latest_plan(api, object, policy).await?;
    let plan = Plan::new(
        &changes,
        &observation.owned,
        previous.as_ref().and_then(|p| p.applied.as_deref()),
    );
    let approval = object
        .annotations()
        .get(APPROVED_ANNOTATION)
        .map(String::as_str);
    let plan_status = match decide(
        policy,
        &plan,
        previous.as_ref(),
        approval,
        &kubectl_name(object),
    ) {
        Decision::Write { plan } => plan,
        Decision::Hold {
            reason,
            message,
            plan: status,
        } => {
            // Whatever of this object's the engine has not sent yet stops here (a switch from
            // Full in the middle of a rollout).
            let targets = targets_of(&changes);
            let dropped = engine.withhold(|t| targets.contains(&t));
            if dropped > 0 {
                tracing::info!(kind = K::KIND, namespace = ?object.namespace(), name = %object.name_any(), dropped, "queued changes dropped by the management policy");
            }
            let told = find_condition(object.conditions(), READY)
                .is_some_and(|c| c.reason == reason && c.message == message);
            if !told {
                ctx.event(object, false, reason, "Plan", message.clone())
                    .await;
            }
            report_full(
                api,
                object,
                Phase::suspended(reason, message),
                Some(Some(&observation.report)),
                Some(Some(status)),
            )
            .await?;
            return Ok(Action::requeue(Duration::from_secs(300)));
        }
    };
    let approved_now = plan_status.as_ref().and_then(|p| p.approved.as_deref());
    if let Some(hash) =
        approved_now.filter(|h| previous.as_ref().and_then(|p| p.approved.as_deref()) != Some(*h))
    {
        ctx.event(
            object,
            false,
            "PlanApproved",
            "Apply",
            format!(
                "applying the approved plan {hash}: {} change(s)",
                plan.items.len()
            ),
        )
        .await;
    }
    let plan_status = Some(plan_status);
    let withdrawals = withdrawals(&changes, &observation);
    let superseded = superseded_inserts(
        engine,
        &owner.name_prefix(&runtime.view.resource_prefix),
        &observation.desired,
    );
    // An object that already has resources in GCP carries traffic: its changes are failover
    // work, ahead of the bulk creation of new objects.
    let urgent = !observation.owned.is_empty();
    let progress = advance(engine, &changes, urgent, &withdrawals, &superseded);
    if progress.adoptions > 0 {
        adopting_event(ctx, object, &changes).await;
    }
    if progress.started > progress.adoptions {
        let failover = !withdrawals.is_empty() || !observation.down_engines.is_empty();
        applying_event::<K>(ctx, object, failover, &progress).await;
    }
    let reported = Some(&observation.report);
    if let Some(err) = progress.error {
        let (phase, retry) = super::apply::error_phase(&err);
        ctx.event(object, true, "GcpError", "Apply", err.to_string())
            .await;
        report_full(api, object, phase, Some(reported), plan_status.clone()).await?;
        return Ok(Action::requeue(retry));
    }
    if let Some(step) = object
        .before_synced(&runtime, &observation, &changes)
        .await?
    {
        report_full(
            api,
            object,
            step.phase,
            Some(step.report.as_ref()),
            plan_status.clone(),
        )
        .await?;
        return Ok(Action::requeue(step.requeue));
    }
    if !changes.is_empty() {
        // The inventory's events requeue the object when the last of its operations finishes
        // (or one fails, or waits for a retry), so the requeue here is only a safety net: a
        // short one re-planned every object of a rollout's backlog every 30 s while its work
        // waited its turn. The delete of a twinned route's original names no owner, so an
        // adopting object looks again soon.
        let phase = super::apply::applying_phase(&progress);
        report_full(api, object, phase, Some(reported), plan_status.clone()).await?;
        let again = if changes.adoptions.is_empty() { 300 } else { 3 };
        return Ok(Action::requeue(Duration::from_secs(again)));
    }
    report_full(
        api,
        object,
        K::synced(&observation.report),
        Some(reported),
        plan_status,
    )
    .await?;
    Ok(Action::requeue(Duration::from_secs(3600)))
}

/// The object's `status.plan` as last written. Under Observe with an approval, the watch's copy
/// may predate the status this operator wrote a moment ago (the approval it recorded): deciding
/// on it would take a plan half applied for a changed one. Read it from the API server then.
async fn latest_plan<K: Kind>(
    api: &Api<K>,
    object: &K,
    policy: ManagementPolicy,
) -> Result<Option<PlanStatus>, Error> {
    if policy == ManagementPolicy::Observe && object.annotations().contains_key(APPROVED_ANNOTATION)
    {
        let fresh = api.get_status(&object.name_any()).await?;
        return Ok(fresh.status().and_then(|s| plan_of::<K>(s)));
    }
    Ok(object.status().and_then(|s| plan_of::<K>(s)))
}

/// What `observation` asks to change in GCP: the diff of desired against owned, taking over
/// foreign resources of the same content where the object adopts. An adoption annotation that
/// says neither true nor false is an error naming it.
pub(crate) fn changes_of<K: Kind>(
    object: &K,
    runtime: &CloudRuntime,
    observation: &Observation<K::Report>,
) -> Result<Diff, String> {
    let annotation = object
        .annotations()
        .get(ADOPT_ANNOTATION)
        .map(String::as_str);
    if !crate::plan::adopt::wanted(runtime.spec.adoption.enabled, annotation)? {
        return Ok(diff(&observation.desired, &observation.owned));
    }
    let foreign = runtime
        .engine
        .inventory()
        .read(|s| s.foreign(&runtime.view.resource_prefix, &runtime.view.network));
    Ok(diff_adopting(
        &observation.desired,
        &observation.owned,
        &foreign,
    ))
}

/// Every resource a diff writes to: what the engine drops when the policy holds the plan.
fn targets_of(changes: &Diff) -> std::collections::HashSet<&Target> {
    changes
        .inserts
        .iter()
        .chain(&changes.replaces)
        .map(|r| &r.target)
        .chain(&changes.deletes)
        .chain(changes.adoptions.iter().map(|a| &a.foreign))
        .collect()
}

/// One Event per reconcile that starts adoptions, naming what is taken over.
async fn adopting_event<K: Kind>(ctx: &Context, object: &K, changes: &Diff) {
    let names: Vec<String> = changes
        .adoptions
        .iter()
        .map(|a| match &a.how {
            How::Patch(_) => format!("{} (marker patched in)", a.foreign),
            How::Twin(twin) => format!("{} (twin {twin})", a.foreign),
        })
        .collect();
    let shown = names.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
    let more = names.len().saturating_sub(5);
    let note = if more > 0 {
        format!(
            "adopting {} resource(s): {shown} and {more} more",
            names.len()
        )
    } else {
        format!("adopting {} resource(s): {shown}", names.len())
    };
    tracing::info!(kind = K::KIND, namespace = ?object.namespace(), name = %object.name_any(), adoptions = names.len(), "adopting");
    ctx.event(object, false, "Adopting", "Adopt", note).await;
}

/// The deletes of the diff that are routes to a down engine: they go at once; everything else
/// makes before it breaks.
fn withdrawals<R>(changes: &Diff, observation: &Observation<R>) -> Vec<Target> {
    if observation.down_engines.is_empty() {
        return Vec::new();
    }
    observation
        .owned
        .iter()
        .filter(|(target, body)| {
            target.collection == Collection::Routes
                && changes.deletes.contains(target)
                && (body["nextHopInstance"].as_str().is_some_and(|hop| {
                    observation
                        .down_engines
                        .iter()
                        .any(|down| hop.ends_with(&format!("/instances/{down}")))
                }) || body["nextHopIp"]
                    .as_str()
                    .is_some_and(|ip| observation.down_addresses.iter().any(|d| d == ip)))
        })
        .map(|(target, _)| target.clone())
        .collect()
}

async fn applying_event<K: Kind>(ctx: &Context, object: &K, failover: bool, progress: &Progress) {
    let reason = if failover { "Failover" } else { "Applying" };
    let note = format!(
        "creating {} and deleting {} {}",
        progress.inserts,
        progress.deletes,
        K::RESOURCES
    );
    tracing::info!(kind = K::KIND, namespace = ?object.namespace(), name = %object.name_any(), inserts = progress.inserts, deletes = progress.deletes, "applying");
    ctx.event(object, false, reason, "Apply", note).await;
}

/// The cloud's engine when it is Ready. Otherwise the object's status says why (once the API
/// server says whether the cloud is missing or only not Ready yet) and None is returned.
async fn usable_cloud<K: Kind>(
    api: &Api<K>,
    object: &K,
    ctx: &Context,
) -> Result<Option<Arc<CloudRuntime>>, Error> {
    let cloud_name = object.cloud_ref();
    // A running engine carries the cloud's spec: no API call per reconcile.
    if let Some(runtime) = ctx
        .cloud(cloud_name)
        .filter(|r| r.ready.load(std::sync::atomic::Ordering::Relaxed))
    {
        return Ok(Some(runtime));
    }
    let clouds: Api<GcpCloud> = Api::all(ctx.client.clone());
    let Some(cloud) = clouds.get_opt(cloud_name).await? else {
        let phase = Phase::stalled(
            "CloudNotFound",
            format!("GcpCloud '{cloud_name}' does not exist: create it or fix spec.cloudRef"),
        );
        report(api, object, phase, None).await?;
        return Ok(None);
    };
    // A restarted operator waits for its engine: that says nothing about the object, so a
    // Ready status stays as it is (no health flapping in Argo CD or Flux).
    if !super::status::ready_for_generation(Some(object.conditions()), object.meta().generation) {
        let phase = Phase::progressing("WaitingForCloud", cloud_not_ready(&cloud));
        report(api, object, phase, None).await?;
    }
    Ok(None)
}

/// Why a cloud that exists is not usable yet: its own Ready message, when it has one.
fn cloud_not_ready(cloud: &GcpCloud) -> String {
    let name = cloud.name_any();
    match cloud
        .status
        .as_ref()
        .and_then(|s| find_condition(&s.conditions, READY))
        .filter(|c| c.status != "True" && !c.message.is_empty())
    {
        Some(ready) => format!("GcpCloud '{name}' is not Ready yet: {}", ready.message),
        None => format!("GcpCloud '{name}' is not Ready yet"),
    }
}

/// A stall for zones Compute does not know, when loading their instances says not found.
fn zones_not_found(
    runtime: &CloudRuntime,
    needed: &[&str],
    err: &Error,
    field: &str,
) -> Option<Phase> {
    if !matches!(err, Error::Gcp(gcp) if gcp.is_not_found()) {
        return None;
    }
    let known = match runtime.zones.read() {
        Ok(guard) => guard.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    };
    let mut unknown: Vec<&str> = needed
        .iter()
        .copied()
        .filter(|z| !known.contains(*z))
        .collect();
    unknown.sort_unstable();
    unknown.dedup();
    Some(Phase::stalled(
        "ZoneNotFound",
        format!(
            "zone(s) {} not found in project '{}' ({err}); fix {field}",
            unknown.join(", "),
            runtime.view.project
        ),
    ))
}

/// Writes the object's status: the phase's conditions, the generation seen, and the report.
async fn report<K: Kind>(
    api: &Api<K>,
    object: &K,
    phase: Phase,
    report: Option<&K::Report>,
) -> Result<(), Error> {
    report_full(api, object, phase, Some(report), None).await
}

/// [`report`], where None keeps what the status shows: `report` the kind's own fields, `plan`
/// its `status.plan`.
async fn report_full<K: Kind>(
    api: &Api<K>,
    object: &K,
    phase: Phase,
    report: Option<Option<&K::Report>>,
    plan: Option<Option<PlanStatus>>,
) -> Result<(), Error> {
    let mut status = object.status().cloned().unwrap_or_default();
    let generation = object.meta().generation;
    if let Some(report) = report {
        K::fill(&mut status, report);
    }
    let (observed, conditions, shown) = K::bookkeeping(&mut status);
    *observed = generation;
    apply_phase(conditions, &phase, generation);
    if let Some(plan) = plan {
        *shown = plan;
    }
    write_status(api, object, object.status(), &status).await?;
    Ok(())
}

/// The object's `status.plan`.
pub(crate) fn plan_of<K: Kind>(status: &K::Status) -> Option<PlanStatus> {
    let mut status = status.clone();
    K::bookkeeping(&mut status).2.clone()
}

/// How to name the object to kubectl: `virtualservice/web -n shop`.
fn kubectl_name<K: Kind>(object: &K) -> String {
    format!(
        "{}/{} -n {}",
        K::KIND.to_lowercase(),
        object.name_any(),
        object.namespace().unwrap_or_default()
    )
}

/// The management policy for the object: its annotation's, else its cloud's.
fn policy_of<K: Kind>(object: &K, runtime: &CloudRuntime) -> Result<ManagementPolicy, String> {
    effective(
        runtime.policy(),
        object
            .annotations()
            .get(POLICY_ANNOTATION)
            .map(String::as_str),
    )
}

/// Whether the deletion of an object waits for its management policy: Paused keeps the
/// finalizer (its GCP resources stay as they are), Observe shows the deletes as a plan to
/// approve. An object that abandons its resources writes nothing and goes at once; so does one
/// whose cloud has no engine here (the cleanup says why).
async fn deletion_held<K: Kind>(
    api: &Api<K>,
    object: &K,
    ctx: &Context,
) -> Result<Option<Action>, Error> {
    if super::context::abandons(object) {
        return Ok(None);
    }
    let Some(runtime) = ctx.cloud(object.cloud_ref()) else {
        return Ok(None);
    };
    let policy = match policy_of(object, &runtime) {
        Ok(policy) => policy,
        Err(message) => {
            report_full(
                api,
                object,
                Phase::stalled("InvalidAnnotation", message),
                None,
                None,
            )
            .await?;
            return Ok(Some(Action::requeue(Duration::from_secs(300))));
        }
    };
    if policy == ManagementPolicy::Full {
        return Ok(None);
    }
    let owner = owner(ctx, object);
    let owned = runtime
        .engine
        .inventory()
        .read(|s| s.owned_by(&owner, &runtime.view.resource_prefix));
    let changes = Diff {
        deletes: owned.iter().map(|(t, _)| t.clone()).collect(),
        ..Diff::default()
    };
    let previous = object.status().and_then(|s| plan_of::<K>(s));
    let plan = Plan::new(
        &changes,
        &owned,
        previous.as_ref().and_then(|p| p.applied.as_deref()),
    );
    let approval = object
        .annotations()
        .get(APPROVED_ANNOTATION)
        .map(String::as_str);
    match decide(
        policy,
        &plan,
        previous.as_ref(),
        approval,
        &kubectl_name(object),
    ) {
        Decision::Write { .. } => Ok(None),
        Decision::Hold {
            reason,
            message,
            plan: status,
        } => {
            runtime
                .engine
                .withhold(|t| plan.items.iter().any(|i| &i.target == t));
            let message = format!("deletion waits: {message}");
            report_full(
                api,
                object,
                Phase::suspended(reason, message),
                None,
                Some(Some(status)),
            )
            .await?;
            Ok(Some(Action::requeue(Duration::from_secs(300))))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Finalizing;

    #[test]
    fn a_finalizer_written_from_a_version_is_not_written_again_from_it() {
        let finalizing = Finalizing::default();
        assert!(!finalizing.written_from(Some("u1"), Some("10")));
        finalizing.wrote(Some("u1"), Some("10".into()));
        // The store still shows version 10: the watch has not brought the finalizer back.
        assert!(finalizing.written_from(Some("u1"), Some("10")));
        // A newer version without it (someone removed it, or the object was recreated under
        // the name with another uid) is written again.
        assert!(!finalizing.written_from(Some("u1"), Some("12")));
        assert!(!finalizing.written_from(Some("u2"), Some("10")));
        // Seen with its finalizer: forgotten.
        finalizing.seen(Some("u1"));
        assert!(!finalizing.written_from(Some("u1"), Some("10")));
        assert_eq!(finalizing.len(), 0);
    }

    #[test]
    fn an_object_without_uid_or_version_is_never_taken_for_written() {
        let finalizing = Finalizing::default();
        finalizing.wrote(None, Some("10".into()));
        finalizing.wrote(Some("u1"), None);
        assert_eq!(finalizing.len(), 0);
        assert!(!finalizing.written_from(None, None));
    }

    #[test]
    fn a_full_map_starts_over() {
        let finalizing = Finalizing::default();
        for i in 0..Finalizing::MAX {
            finalizing.wrote(Some(&format!("u{i}")), Some("1".into()));
        }
        assert_eq!(finalizing.len(), Finalizing::MAX);
        finalizing.wrote(Some("last"), Some("1".into()));
        assert_eq!(finalizing.len(), 1);
        assert!(finalizing.written_from(Some("last"), Some("1")));
        assert!(!finalizing.written_from(Some("u0"), Some("1")));
    }
}
