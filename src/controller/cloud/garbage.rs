//! Orphan collection: resources carrying this cluster's and this cloud's marker whose owner
//! object no longer exists (and was not abandoned) are deleted.

use kube::runtime::reflector::ObjectRef;

use crate::controller::context::{CloudRuntime, Context};
use crate::gcp::{Lane, Mutation};

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
    let mut receivers = Vec::new();
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
