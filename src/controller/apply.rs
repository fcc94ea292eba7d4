//! Applying a plan through the engine: make before break. Anything the object no longer wants is
//! deleted only once everything it wants exists, so traffic always has a route; routes to
//! engines that are down are withdrawn at once.

use crate::gcp::{Collection, Engine, GcpError, Lane, Mutation, Target};
use crate::plan::adopt::How;
use crate::plan::diff::Diff;

fn network_of(engine: &Engine, target: &Target) -> Option<String> {
    engine.inventory().read(|s| s.network_of(target))
}

/// A delete of `target`, with the network the inventory says it is on.
pub fn delete_of(engine: &Engine, target: &Target) -> Mutation {
    Mutation::delete(target.clone(), network_of(engine, target))
}

/// The error of the last attempt at a change of `target` while it is still inside its retry
/// delay: nothing is resent for that resource until the delay has passed.
pub fn waiting_to_retry(engine: &Engine, target: &Target) -> Option<GcpError> {
    engine
        .failure(target)
        .filter(|failure| failure.at.elapsed() < error_phase(&failure.error).1)
        .map(|failure| failure.error)
}

/// Inserts the engine still holds for `owner` (queued or in flight) that `desired` no longer
/// lists.
pub fn superseded_inserts(
    engine: &Engine,
    owner_prefix: &str,
    desired: &[crate::plan::DesiredResource],
) -> Vec<Target> {
    [Collection::Routes, Collection::Firewalls]
        .into_iter()
        .flat_map(|collection| engine.pending_inserts(collection, owner_prefix))
        .filter(|target| !desired.iter().any(|d| &d.target == target))
        .collect()
}

/// What handing a diff to the engine did.
#[derive(Debug, Default)]
pub struct Progress {
    /// Mutations that are new work (not joined to work already pending).
    pub started: usize,
    /// Inserts (and replacements) started.
    pub inserts: usize,
    /// Deletes started.
    pub deletes: usize,
    /// Adoption writes started (a firewall rule's patch, a twinned route's original deleted).
    pub adoptions: usize,
    /// The final error of an earlier attempt at one of the changes, still inside its retry
    /// delay (nothing is resent for that resource until the delay has passed).
    pub error: Option<GcpError>,
    /// The last error of a change the engine is still retrying.
    pub retrying: Option<GcpError>,
}

/// Hands the diff to the engine without waiting (make before break): inserts and replacements
/// go now; deletes only once everything desired exists, except `withdrawals` (routes to engines
/// that are down), which go at once. Inserts go in the failover lane when `urgent` (the object
/// already carries traffic); replacements and deletes always do. Completions come back as
/// inventory events, which requeue the object.
pub fn advance(
    engine: &Engine,
    diff: &Diff,
    urgent: bool,
    withdrawals: &[Target],
    superseded: &[Target],
) -> Progress {
    let mut progress = Progress::default();
    // A change whose last attempt failed waits out its retry delay.
    let mut held = |target: &Target| match waiting_to_retry(engine, target) {
        Some(error) => {
            progress.error.get_or_insert(error);
            true
        }
        None => false,
    };
    let mut work = Vec::new();
    for resource in &diff.replaces {
        if held(&resource.target) {
            continue;
        }
        if crate::plan::ilb::patched_in_place(resource.target.collection) {
            // A health check or backend service in use cannot go: it is changed in place.
            work.push((
                Mutation::patch(resource.target.clone(), resource.body.clone(), None),
                Lane::Urgent,
            ));
        } else {
            let network = network_of(engine, &resource.target);
            // The engine keeps one queue per resource: the insert follows the delete.
            work.push((
                Mutation::delete(resource.target.clone(), network),
                Lane::Urgent,
            ));
            work.push((
                Mutation::insert(resource.target.clone(), resource.body.clone()),
                Lane::Urgent,
            ));
        }
    }
    let lane = if urgent { Lane::Urgent } else { Lane::Bulk };
    for resource in &diff.inserts {
        if !held(&resource.target) {
            work.push((
                Mutation::insert(resource.target.clone(), resource.body.clone()),
                lane,
            ));
        }
    }
    let made = diff.inserts.is_empty() && diff.replaces.is_empty();
    // What uses another resource goes first (an ILB's rule, then its service, then its check).
    let stage = crate::plan::ilb::delete_stage(&diff.deletes);
    for target in &diff.deletes {
        if ((made && stage.contains(target)) || withdrawals.contains(target)) && !held(target) {
            work.push((
                Mutation::delete(target.clone(), network_of(engine, target)),
                Lane::Urgent,
            ));
        }
    }
    // Adoptions: a firewall rule's marker now; a route's original once its own twin exists.
    let mut adopting = Vec::new();
    for adoption in &diff.adoptions {
        let foreign = &adoption.foreign;
        let mutation = match &adoption.how {
            How::Patch(fields) => {
                Mutation::patch(foreign.clone(), fields.clone(), network_of(engine, foreign))
            }
            // Its own twin exists: the original may go, whatever else is still being made
            // (each adoption frees its quota as it goes).
            How::Twin(twin) if !diff.inserts.iter().any(|i| &i.target == twin) => {
                Mutation::delete(foreign.clone(), network_of(engine, foreign))
            }
            How::Twin(_) => continue,
        };
        if !held(foreign) {
            adopting.push((mutation, lane));
        }
    }
    // Inserts still queued or running that the plan no longer wants (an engine went down
    // before its route was made): a delete cancels an unsent insert, or follows a running one.
    for target in superseded {
        work.push((
            Mutation::delete(target.clone(), network_of(engine, target)),
            Lane::Urgent,
        ));
    }
    progress.retrying = diff
        .inserts
        .iter()
        .chain(&diff.replaces)
        .map(|r| &r.target)
        .chain(&diff.deletes)
        .chain(diff.adoptions.iter().map(|a| &a.foreign))
        .find_map(|target| engine.retrying(target));
    for (mutation, lane) in adopting {
        if engine.begin(mutation, lane) {
            progress.started += 1;
            progress.adoptions += 1;
        }
    }
    for (mutation, lane) in work {
        let insert = mutation.is_insert();
        if engine.begin(mutation, lane) {
            progress.started += 1;
            if insert {
                progress.inserts += 1;
            } else {
                progress.deletes += 1;
            }
        }
    }
    progress
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
    let owned = runtime.engine.inventory().read(|s| {
        s.owned_by(owner, &runtime.view.resource_prefix)
            .into_iter()
            .map(|(target, _)| {
                let network = s.network_of(&target);
                (target, network)
            })
            .collect::<Vec<_>>()
    });
    // In stages: what uses another resource goes before it (an ILB's forwarding rules, then
    // its backend services and address, then its health check).
    let mut remaining = owned;
    while !remaining.is_empty() {
        let targets: Vec<Target> = remaining.iter().map(|(t, _)| t.clone()).collect();
        let stage = crate::plan::ilb::delete_stage(&targets);
        let (now, later): (Vec<_>, Vec<_>) =
            remaining.into_iter().partition(|(t, _)| stage.contains(t));
        let receivers: Vec<_> = now
            .into_iter()
            .map(|(target, network)| {
                runtime
                    .engine
                    .submit(Mutation::delete(target, network), Lane::Urgent)
            })
            .collect();
        for receiver in receivers {
            receiver.await.unwrap_or(Err(GcpError::Shutdown))?;
        }
        remaining = later;
    }
    Ok(())
}

/// The phase and the retry delay for a GCP error: a resource quota, a name taken by a resource
/// the object does not own, or a final refusal stalls the object (a person must act), anything
/// else is retried.
pub fn error_phase(err: &GcpError) -> (super::status::Phase, std::time::Duration) {
    use super::status::Phase;
    use std::time::Duration;
    if matches!(err, GcpError::NotOwned { .. }) {
        (
            Phase::stalled("NameConflict", err.to_string()),
            Duration::from_secs(120),
        )
    } else if err.is_quota_exceeded() {
        // Retries cost no call while the quota is spent (the engine's quota gate answers
        // them and lets one probe through now and then); the gate's reopening requeues at once.
        (
            Phase::stalled(
                "QuotaExceeded",
                format!("{err} Raise the quota or free room: the operator retries on its own."),
            ),
            Duration::from_secs(30),
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

/// The phase of an object whose changes are still under way: Applying, or GcpError with the
/// error the engine is retrying (Ready=False says why it is taking long).
pub fn applying_phase(progress: &Progress) -> super::status::Phase {
    match &progress.retrying {
        Some(err) => super::status::Phase::progressing(
            "GcpError",
            format!("retrying after a GCP error: {err}"),
        ),
        None => {
            super::status::Phase::progressing("Applying", "waiting for GCP operations to finish")
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::status::Phase;
    use std::time::Duration;

    #[test]
    fn errors_map_to_phases() {
        let foreign = GcpError::NotOwned {
            resource: "global/routes/adc-1".into(),
            marker: None,
        };
        match error_phase(&foreign) {
            (Phase::Stalled { reason, message }, retry) => {
                assert_eq!(reason, "NameConflict");
                assert!(message.contains("global/routes/adc-1"), "{message}");
                assert!(message.contains("does not own"), "{message}");
                assert_eq!(retry, Duration::from_secs(120));
            }
            other => panic!("{other:?}"),
        }
        let quota = GcpError::Operation {
            code: "QUOTA_EXCEEDED".into(),
            message: "Quota 'ROUTES' exceeded.".into(),
            http_status: Some(403),
        };
        assert!(
            matches!(error_phase(&quota).0, Phase::Stalled { ref reason, .. } if reason == "QuotaExceeded")
        );
        assert!(
            matches!(error_phase(&GcpError::Conflict("global/routes/r".into())).0, Phase::Stalled { ref reason, .. } if reason == "GcpRejected")
        );
        let transient = GcpError::Transport("reset".into());
        assert!(
            matches!(error_phase(&transient), (Phase::Progressing { ref reason, .. }, d) if reason == "GcpError" && d == Duration::from_secs(15))
        );
    }
}
