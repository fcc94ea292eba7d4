//! Applying a plan through the engine: make before break. New resources are inserted and
//! awaited before anything the object no longer wants is deleted, so traffic always has a route.

use crate::gcp::{Engine, GcpError, Lane, Mutation, Target};
use crate::plan::diff::Diff;

/// What applying a diff did.
#[derive(Debug, Default)]
pub struct Applied {
    pub inserted: Vec<Target>,
    pub deleted: Vec<Target>,
    /// The first error, if any change failed.
    pub error: Option<GcpError>,
}

fn network_of(engine: &Engine, target: &Target) -> Option<String> {
    engine
        .inventory()
        .read(|s| {
            s.routes
                .get(&target.name)
                .map(|r| r.network.clone())
                .or_else(|| s.firewalls.get(&target.name).map(|f| f.network.clone()))
        })
        .map(|n| crate::gcp::types::last_segment(&n).to_string())
}

/// Inserts, replaces (delete then insert the same name), then deletes; `urgent` sends it all in
/// the failover lane.
pub async fn apply(engine: &Engine, diff: &Diff, urgent: bool) -> Applied {
    let lane = if urgent { Lane::Urgent } else { Lane::Bulk };
    let mut applied = Applied::default();
    let mut waiting = Vec::new();
    for resource in &diff.replaces {
        let network = network_of(engine, &resource.target);
        // The engine keeps one queue per resource: the insert follows the delete.
        waiting.push((
            None,
            engine.submit(
                Mutation::delete(resource.target.clone(), network),
                Lane::Urgent,
            ),
        ));
        waiting.push((
            Some(resource.target.clone()),
            engine.submit(
                Mutation::insert(resource.target.clone(), resource.body.clone()),
                Lane::Urgent,
            ),
        ));
    }
    for resource in &diff.inserts {
        waiting.push((
            Some(resource.target.clone()),
            engine.submit(
                Mutation::insert(resource.target.clone(), resource.body.clone()),
                lane,
            ),
        ));
    }
    for (target, receiver) in waiting {
        match receiver.await.unwrap_or(Err(GcpError::Shutdown)) {
            Ok(()) => applied.inserted.extend(target),
            Err(err) => {
                applied.error.get_or_insert(err);
            }
        }
    }
    if applied.error.is_some() {
        // Break nothing while the make failed.
        return applied;
    }
    let deletes: Vec<_> = diff
        .deletes
        .iter()
        .map(|target| {
            (
                target.clone(),
                engine.submit(
                    Mutation::delete(target.clone(), network_of(engine, target)),
                    Lane::Urgent,
                ),
            )
        })
        .collect();
    for (target, receiver) in deletes {
        match receiver.await.unwrap_or(Err(GcpError::Shutdown)) {
            Ok(()) => applied.deleted.push(target),
            Err(err) => {
                applied.error.get_or_insert(err);
            }
        }
    }
    applied
}

/// Deletes every resource of `owner` the inventory of `cloud_ref` holds, and waits. Without the
/// cloud nothing can be deleted now: the cloud's garbage collection removes them (their owner is
/// gone) once it is back.
pub async fn delete_owned(
    ctx: &super::Context,
    cloud_ref: &str,
    owner: &crate::plan::owner::Owner,
) -> Result<(), GcpError> {
    let Some(runtime) = ctx.cloud(cloud_ref) else {
        tracing::warn!(owner = %super::context::owner_key(owner), "GcpCloud unavailable at deletion; leaving cleanup to garbage collection");
        return Ok(());
    };
    let owned = runtime
        .engine
        .inventory()
        .read(|s| super::context::owned_resources(s, owner));
    let receivers: Vec<_> = owned
        .into_iter()
        .map(|(target, body)| {
            let network = body
                .get("network")
                .and_then(|n| n.as_str())
                .map(|n| crate::gcp::types::last_segment(n).to_string());
            runtime
                .engine
                .submit(Mutation::delete(target, network), Lane::Urgent)
        })
        .collect();
    for receiver in receivers {
        receiver.await.unwrap_or(Err(GcpError::Shutdown))?;
    }
    Ok(())
}

/// The phase and the retry delay for a GCP error: a resource quota or a final refusal stalls
/// the object (a person must act), anything else is retried.
pub fn error_phase(err: &GcpError) -> (super::status::Phase, std::time::Duration) {
    use super::status::Phase;
    use std::time::Duration;
    if err.is_quota_exceeded() {
        (
            Phase::stalled("QuotaExceeded", err.to_string()),
            Duration::from_secs(120),
        )
    } else if !err.is_retryable() && !matches!(err, GcpError::Exhausted { .. }) {
        (
            Phase::stalled("GcpRejected", err.to_string()),
            Duration::from_secs(120),
        )
    } else {
        (
            Phase::progressing("GcpError", err.to_string()),
            Duration::from_secs(15),
        )
    }
}

/// The finalizer's cleanup of any kind: with `adc.dev/deletion-policy: abandon` record the owner
/// as abandoned (so garbage collection never takes its resources) and leave GCP alone; otherwise
/// delete everything the owner has in its cloud.
pub async fn cleanup<K>(
    ctx: &super::Context,
    object: &K,
    cloud_ref: &str,
    owner: &crate::plan::owner::Owner,
) -> Result<kube::runtime::controller::Action, super::Error>
where
    K: kube::Resource<DynamicType = ()> + kube::ResourceExt,
{
    if super::context::abandons(object) {
        super::context::mark_abandoned(ctx, cloud_ref, owner).await?;
        ctx.event(
            object,
            false,
            "Abandoned",
            "Delete",
            "deletion-policy abandon: GCP resources left in place".into(),
        )
        .await;
    } else {
        delete_owned(ctx, cloud_ref, owner).await?;
    }
    Ok(kube::runtime::controller::Action::await_change())
}
