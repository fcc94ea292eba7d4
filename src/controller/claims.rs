//! Who holds an IPv4 address on a network: VirtualServices by their VIP, VpcRoutes by a /32
//! destination. Both kinds' guard rails ask it, so that no object takes another's traffic.

use kube::Resource;
use kube::runtime::reflector::ObjectRef;

use super::context::Context;
use crate::plan::{virtualservice, vpcroute};

/// One object that routes an IPv4 address: a VirtualService by its VIP, or a VpcRoute whose
/// destination is that address's /32 (which would take the VIP's traffic).
pub struct Claim {
    kind: &'static str,
    namespace: String,
    name: String,
    uid: Option<String>,
    created: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    /// It serves the address already (its status says so and it is not Stalled): it keeps it
    /// against any newcomer, whatever the creation times (they have one-second resolution).
    holding: bool,
}

impl Claim {
    pub fn of<K: Resource<DynamicType = ()>>(
        kind: &'static str,
        object: &K,
        holding: bool,
    ) -> Self {
        let meta = object.meta();
        Claim {
            kind,
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
            uid: meta.uid.clone(),
            created: meta.creation_timestamp.clone(),
            holding,
        }
    }

    /// Who comes first: the holder, then the earliest created, then by kind, namespace, name.
    fn rank(&self) -> impl Ord + '_ {
        (
            !self.holding,
            self.created.as_ref().map(|t| t.0),
            self.kind,
            &self.namespace,
            &self.name,
        )
    }
}

pub fn stalled(conditions: &[crate::api::Condition]) -> bool {
    crate::api::conditions::condition_true(conditions, crate::api::conditions::STALLED)
}

/// The object that holds `address` on the network of cloud `cloud_ref` before `me` does, as
/// `Kind namespace/name`; None when `me` comes first. Claimants are VirtualServices whose VIP
/// is `address` and VpcRoutes whose destination is `address/32`, on any GcpCloud of the same
/// project and network. The one already serving it keeps it; otherwise the earliest created.
pub fn address_claimed_by(
    ctx: &Context,
    cloud_ref: &str,
    address: &str,
    me: Claim,
) -> Option<String> {
    let network_of = |cloud: &str| {
        ctx.cloud(cloud)
            .map(|r| (r.view.project.clone(), r.view.network.clone()))
    };
    let mine = network_of(cloud_ref);
    let same_network =
        |other: &str| other == cloud_ref || (mine.is_some() && network_of(other) == mine);
    let host_route = format!("{address}/32");
    let mut claims: Vec<Claim> = Vec::new();
    // Only the objects the index says name the address: each is read back from its store and
    // checked again, so an index a moment behind the store can only cost a lookup.
    for (kind, namespace, name) in ctx.index.naming(address) {
        if kind == virtualservice::KIND {
            let at = ObjectRef::new(&name).within(&namespace);
            let Some(vs) = ctx.virtual_services.get(&at) else {
                continue;
            };
            let status = vs.status.as_ref();
            let vip = vs
                .spec
                .vip
                .address
                .as_deref()
                .or_else(|| status.and_then(|s| s.vip.as_deref()));
            if vip == Some(address)
                && vs.metadata.deletion_timestamp.is_none()
                && vs.meta().uid != me.uid
                && same_network(&vs.spec.cloud_ref)
            {
                let holding = status
                    .is_some_and(|s| s.vip.as_deref() == Some(address) && !stalled(&s.conditions));
                claims.push(Claim::of(virtualservice::KIND, &*vs, holding));
            }
        } else if kind == vpcroute::KIND {
            let at = ObjectRef::new(&name).within(&namespace);
            let Some(route) = ctx.vpc_routes.get(&at) else {
                continue;
            };
            if route.spec.dest_range == host_route
                && route.metadata.deletion_timestamp.is_none()
                && route.meta().uid != me.uid
                && same_network(&route.spec.cloud_ref)
            {
                let holding = route
                    .status
                    .as_ref()
                    .is_some_and(|s| s.route_name.is_some() && !stalled(&s.conditions));
                claims.push(Claim::of(vpcroute::KIND, &*route, holding));
            }
        }
    }
    claims
        .iter()
        .filter(|other| other.rank() < me.rank())
        .min_by(|a, b| a.rank().cmp(&b.rank()))
        .map(|first| format!("{} {}/{}", first.kind, first.namespace, first.name))
}
