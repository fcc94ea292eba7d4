//! VpcRoute: what it adds to the shared reconcile (`reconcile.rs`): one static route, whose
//! next hop (an instance, an IP or an internal load balancer) must exist, and whose /32 must not
//! take another object's VIP.

use kube::ResourceExt;

use super::claims::{Claim, address_claimed_by, stalled};
use super::context::{CloudRuntime, Context};
use super::error::Error;
use super::reconcile::{Bookkeeping, Kind, Observation};
use super::status::Phase;
use crate::api::{VpcRoute, VpcRouteStatus};
use crate::plan::guard::{Surroundings, check_vpc_route};
use crate::plan::owner::Owner;
use crate::plan::vpcroute;

impl Kind for VpcRoute {
    type Status = VpcRouteStatus;
    /// The route's name.
    type Report = String;
    const ZONES_FIELD: &'static str = "spec.nextHop.instance.zone";
    const RESOURCES: &'static str = "route(s)";

    fn status(&self) -> Option<&VpcRouteStatus> {
        self.status.as_ref()
    }

    fn bookkeeping(status: &mut VpcRouteStatus) -> Bookkeeping<'_> {
        (
            &mut status.observed_generation,
            &mut status.conditions,
            &mut status.plan,
        )
    }

    fn fill(status: &mut VpcRouteStatus, route_name: Option<&String>) {
        if let Some(name) = route_name {
            status.route_name = Some(name.clone());
        }
    }

    fn zones(&self) -> Vec<&str> {
        self.spec
            .next_hop
            .instance
            .iter()
            .map(|i| i.zone.as_str())
            .collect()
    }

    async fn observe<'a>(
        &'a self,
        ctx: &'a Context,
        runtime: &'a CloudRuntime,
        owner: &'a Owner,
    ) -> Result<Observation<String>, Error> {
        observe(self, ctx, runtime, owner).await
    }

    fn synced(route_name: &String) -> Phase {
        Phase::ready("Synced", format!("route {route_name} in place"))
    }
}

/// Checks the next hop, reads what the object owns, plans its route, and asks the guard rails.
async fn observe(
    object: &VpcRoute,
    ctx: &Context,
    runtime: &CloudRuntime,
    owner: &Owner,
) -> Result<Observation<String>, Error> {
    let cloud_name = &object.spec.cloud_ref;
    let cloud_spec = &runtime.spec;
    let engine = &runtime.engine;
    // A next-hop ILB of the cloud's own project must exist before the route is made. The
    // inventory lists only the operator's own forwarding rules: one GET tells.
    let missing_ilb = match object
        .spec
        .next_hop
        .ilb
        .as_deref()
        .and_then(|ilb| vpcroute::own_forwarding_rule(&runtime.view, ilb))
    {
        Some((region, name))
            if object
                .status
                .as_ref()
                .and_then(|s| s.route_name.as_ref())
                .is_none() =>
        {
            let rule = crate::gcp::Target {
                collection: crate::gcp::Collection::ForwardingRules,
                location: region.clone(),
                name: name.clone(),
            };
            match engine.read_back(&rule).await? {
                Some(_) => None,
                None => Some(format!("{region}/{name}")),
            }
        }
        _ => None,
    };
    let (missing, owned) = engine.inventory().read(|snapshot| {
        let missing: Vec<String> = object
            .spec
            .next_hop
            .instance
            .iter()
            .filter(|i| snapshot.instance(&i.zone, &i.name).is_none())
            .map(|i| format!("{}/{}", i.zone, i.name))
            .collect();
        (
            missing,
            snapshot.owned_by(owner, &runtime.view.resource_prefix),
        )
    });
    let around = Surroundings {
        namespace_allowed: ctx
            .namespace_allowed(cloud_spec, &object.namespace().unwrap_or_default()),
        allowed_ranges: cloud_spec.allowed_destination_ranges.clone(),
        allow_default_route: cloud_spec.allow_default_route,
        // A /32 is a host route: one to another object's VIP would take its traffic.
        vip_claimed_by: object
            .spec
            .dest_range
            .strip_suffix("/32")
            .and_then(|address| {
                let holding = object
                    .status
                    .as_ref()
                    .is_some_and(|s| s.route_name.is_some() && !stalled(&s.conditions));
                address_claimed_by(
                    ctx,
                    cloud_name,
                    address,
                    Claim::of(vpcroute::KIND, object, holding),
                )
            }),
        missing_engines: missing,
        subnet_ranges: engine
            .inventory()
            .read(|s| s.subnets(&runtime.view.network)),
        missing_subnetwork: None,
        missing_ilb,
    };
    let mut problems = check_vpc_route(&object.spec.dest_range, &around);
    if object.spec.next_hop.instance.is_some()
        && runtime.view.network_project != runtime.view.project
    {
        problems.push(format!(
            "the GcpCloud's network lives in the Shared VPC host project '{}', and Compute takes a nextHopInstance only in the route's own project: use nextHop.ip (the instance's internal address) instead of spec.nextHop.instance",
            runtime.view.network_project
        ));
    }
    let desired = vpcroute::plan(
        &runtime.view,
        &object.namespace().unwrap_or_default(),
        &object.name_any(),
        &object.spec,
    );
    Ok(Observation {
        down_addresses: Vec::new(),
        report: desired.target.name.clone(),
        desired: vec![desired],
        owned,
        problems,
        stalled_report: None,
        down_engines: Vec::new(),
    })
}
