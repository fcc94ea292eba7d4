//! Failover without the backlog: when a service engine stops, the routes of VirtualServices
//! that send a VIP to it can go at once, before any of those objects is reconciled. Every
//! reconcile would withdraw them anyway (a VIP's routes go only to RUNNING engines), and a
//! route to a stopped instance carries nothing: withdrawing it early only lets Compute pick the
//! routes to the engines still running (an ECMP peer, or the standby one priority step lower).
//! Decided here from the inventory's routes; the objects' reconciles then make what is still
//! missing (a standby promoted to the primary's priority) make-before-break.

use super::owner::Owner;
use super::resource::normalize_reference;

/// A route as the decision reads it.
#[derive(Debug, Clone, Copy)]
pub struct RouteView<'a> {
    pub name: &'a str,
    pub description: &'a str,
    pub next_hop_instance: Option<&'a str>,
}

/// The routes to the stopped instance `zone/instance` that may be withdrawn now: those of a
/// VirtualService of this cluster and cloud whose writes are not held (`held`: its management
/// policy is Observe or Paused). Routes of VpcRoutes (a static route stays where it is told),
/// of the cloud's shared pool layout (its own task moves them) and of anyone else stay.
pub fn withdrawable<'a>(
    routes: impl IntoIterator<Item = RouteView<'a>>,
    zone: &str,
    instance: &str,
    cluster: &str,
    cloud: &str,
    held: impl Fn(&Owner) -> bool,
) -> Vec<String> {
    let hop = format!("zones/{zone}/instances/{instance}");
    routes
        .into_iter()
        .filter(|r| {
            r.next_hop_instance
                .is_some_and(|link| normalize_reference(link) == hop)
        })
        .filter(|r| {
            Owner::parse(r.description).is_some_and(|owner| {
                owner.cluster_id == cluster
                    && owner.cloud == cloud
                    && owner.kind == super::virtualservice::KIND
                    && !held(&owner)
            })
        })
        .map(|r| r.name.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marker(kind: &str, cluster: &str, cloud: &str, name: &str) -> String {
        Owner::new(cluster, cloud, kind, "shop", name).description()
    }

    #[test]
    fn only_routes_of_free_virtual_services_of_this_cloud_to_that_engine_go() {
        let hop = |i: &str| {
            format!("https://www.googleapis.com/compute/v1/projects/p/zones/z-a/instances/{i}")
        };
        let descriptions = [
            marker("VirtualService", "prod", "gcp", "web"),
            marker("VirtualService", "prod", "gcp", "web"),
            marker("VpcRoute", "prod", "gcp", "egress"),
            marker("GcpCloud", "prod", "gcp", "gcp"),
            marker("VirtualService", "other", "gcp", "web"),
            marker("VirtualService", "prod", "another", "web"),
            "made by hand".to_string(),
            marker("VirtualService", "prod", "gcp", "held"),
        ];
        let hops = [
            hop("se-1"),
            hop("se-2"),
            hop("se-1"),
            hop("se-1"),
            hop("se-1"),
            hop("se-1"),
            hop("se-1"),
            hop("se-1"),
        ];
        let names = ["a", "b", "c", "d", "e", "f", "g", "h"];
        let routes = (0..names.len()).map(|i| RouteView {
            name: names[i],
            description: &descriptions[i],
            next_hop_instance: Some(&hops[i]),
        });
        let gone = withdrawable(routes, "z-a", "se-1", "prod", "gcp", |o| o.name == "held");
        assert_eq!(gone, ["a"]);
    }

    #[test]
    fn the_zone_is_part_of_the_engine() {
        let description = marker("VirtualService", "prod", "gcp", "web");
        let route = RouteView {
            name: "a",
            description: &description,
            next_hop_instance: Some("projects/p/zones/z-b/instances/se-1"),
        };
        assert!(withdrawable([route], "z-a", "se-1", "prod", "gcp", |_| false).is_empty());
        assert_eq!(
            withdrawable([route], "z-b", "se-1", "prod", "gcp", |_| false),
            ["a"]
        );
    }
}
