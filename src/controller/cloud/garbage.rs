//! Orphan collection: resources carrying this cluster's and this cloud's marker whose owner
//! object no longer exists (and was not abandoned) are deleted.

use kube::runtime::reflector::ObjectRef;

use kube::api::Api;

use crate::api::{VirtualService, VpcRoute};
use crate::controller::context::{CloudRuntime, Context};
use crate::gcp::{Lane, Mutation, Target};
use crate::plan::owner::Owner;

/// Deletes resources carrying this cluster's marker whose owner object no longer exists.
pub(super) async fn collect_garbage(
    ctx: &Context,
    cloud_name: &str,
    abandoned: &[String],
    runtime: &CloudRuntime,
) -> usize {
    // Never decide on an incomplete picture of the objects.
    if !crate::controller::context::store_ready(&ctx.virtual_services).await
        || !crate::controller::context::store_ready(&ctx.vpc_routes).await
    {
        return 0;
    }
    let owners = runtime
        .engine
        .inventory()
        .read(|s| s.owners(&ctx.settings.cluster_id));
    // Candidates by the store; each owner's absence is confirmed with the API server before
    // anything of it is deleted: a store can lag (a replica that was cut off, or just took the
    // cloud over, may not have seen the newest objects yet), and a desired resource must never
    // be collected for it.
    let mut candidates: std::collections::BTreeMap<Owner, Vec<Target>> = Default::default();
    for (owner, target) in owners {
        // Several clouds may share a project: each collects only what was made through it.
        if owner.cloud != cloud_name
            || abandoned.contains(&crate::controller::context::owner_key(&owner))
        {
            continue;
        }
        let exists = match owner.kind.as_str() {
            crate::plan::virtualservice::KIND => ctx
                .virtual_services
                .get(&ObjectRef::new(&owner.name).within(&owner.namespace))
                .is_some_and(|o| o.spec.cloud_ref == cloud_name),
            crate::plan::vpcroute::KIND => ctx
                .vpc_routes
                .get(&ObjectRef::new(&owner.name).within(&owner.namespace))
                .is_some_and(|o| o.spec.cloud_ref == cloud_name),
            // The cloud's shared pool resources: its layout task removes what it no longer
            // needs (reconciles of this cloud only run while it exists).
            crate::plan::shared::KIND => true,
            _ => true,
        };
        if !exists {
            candidates.entry(owner).or_default().push(target);
        }
    }
    let mut receivers = Vec::new();
    for (owner, targets) in candidates {
        match gone(ctx, &owner, cloud_name).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::info!(owner = %format!("{}/{}/{}", owner.kind, owner.namespace, owner.name), "not collecting: the owner exists (the store lags)");
                continue;
            }
            Err(err) => {
                tracing::warn!(owner = %format!("{}/{}/{}", owner.kind, owner.namespace, owner.name), error = %err, "not collecting: the owner could not be read");
                continue;
            }
        }
        // Users first (an ILB's forwarding rule before its backend service, that before its
        // health check): the rest goes at a later pass, once these are gone.
        for target in crate::plan::ilb::delete_stage(&targets) {
            let network = runtime.engine.inventory().read(|s| s.network_of(&target));
            tracing::info!(resource = %target, owner = %format!("{}/{}/{}", owner.kind, owner.namespace, owner.name), "collecting an orphan");
            receivers.push(
                runtime
                    .engine
                    .submit(Mutation::delete(target, network), Lane::Urgent),
            );
        }
    }
    let collected = receivers.len();
    for receiver in receivers {
        let _ = receiver.await;
    }
    collected
}

/// Whether the API server confirms that `owner` no longer wants resources of `cloud`: the
/// object does not exist, or names another cloud now.
async fn gone(ctx: &Context, owner: &Owner, cloud: &str) -> Result<bool, kube::Error> {
    Ok(match owner.kind.as_str() {
        crate::plan::virtualservice::KIND => {
            Api::<VirtualService>::namespaced(ctx.client.clone(), &owner.namespace)
                .get_opt(&owner.name)
                .await?
                .is_none_or(|o| o.spec.cloud_ref != cloud)
        }
        crate::plan::vpcroute::KIND => {
            Api::<VpcRoute>::namespaced(ctx.client.clone(), &owner.namespace)
                .get_opt(&owner.name)
                .await?
                .is_none_or(|o| o.spec.cloud_ref != cloud)
        }
        _ => false,
    })
}
