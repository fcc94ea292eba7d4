//! A VpcRoute becomes one static route.

use serde_json::json;

use super::names::{content_hash, object_hash, resource_name};
use super::owner::Owner;
use super::resource::Target;
use super::{CloudView, DesiredResource};
use crate::api::VpcRouteSpec;

/// The kind name in ownership markers.
pub const KIND: &str = <crate::api::VpcRoute as crate::api::FleetObject>::KIND;

/// Plans a VpcRoute: its one route.
pub fn plan(
    cloud: &CloudView,
    namespace: &str,
    name: &str,
    spec: &VpcRouteSpec,
) -> DesiredResource {
    let object = object_hash(&cloud.cluster_id, KIND, namespace, name);
    let mut body = json!({
        "description": Owner::new(&cloud.cluster_id, &cloud.cloud, KIND, namespace, name).description(),
        "network": format!("global/networks/{}", cloud.network),
        "destRange": spec.dest_range,
        "priority": spec.priority,
    });
    if !spec.tags.is_empty() {
        let mut tags = spec.tags.clone();
        tags.sort();
        tags.dedup();
        body["tags"] = json!(tags);
    }
    let hop = &spec.next_hop;
    if let Some(ip) = &hop.ip {
        body["nextHopIp"] = json!(ip);
    } else if let Some(instance) = &hop.instance {
        body["nextHopInstance"] = json!(format!(
            "projects/{}/zones/{}/instances/{}",
            cloud.project, instance.zone, instance.name
        ));
    } else if let Some(gateway) = &hop.gateway {
        body["nextHopGateway"] = json!(format!(
            "projects/{}/global/gateways/{gateway}",
            cloud.project
        ));
    } else if let Some(ilb) = &hop.ilb {
        body["nextHopIlb"] = json!(ilb_reference(cloud, ilb));
    }
    let route_name = resource_name(&cloud.resource_prefix, &object, &content_hash(&body));
    body["name"] = json!(route_name);
    DesiredResource {
        target: Target::route(route_name),
        body,
    }
}

/// A next-hop ILB as Compute takes it: a bare forwarding-rule name is one of the cloud's
/// project and region (Compute itself takes only a URL or an IP address); a URL or an IP
/// address is passed on as written.
fn ilb_reference(cloud: &CloudView, ilb: &str) -> String {
    let bare_name = !ilb.contains('/') && ilb.starts_with(|c: char| c.is_ascii_lowercase());
    if bare_name {
        format!(
            "projects/{}/regions/{}/forwardingRules/{ilb}",
            cloud.project, cloud.region
        )
    } else {
        ilb.to_string()
    }
}

/// The (region, name) of a next-hop ILB that is a forwarding rule of the cloud's own project
/// (bare name, partial path or URL); None for an IP address or another project's rule.
pub fn own_forwarding_rule(cloud: &CloudView, ilb: &str) -> Option<(String, String)> {
    let reference = ilb_reference(cloud, ilb);
    let path = &reference[reference.find("projects/")?..];
    match path.split('/').collect::<Vec<_>>().as_slice() {
        [
            "projects",
            project,
            "regions",
            region,
            "forwardingRules",
            name,
        ] if *project == cloud.project => Some((region.to_string(), name.to_string())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clouds_own_ilbs_are_recognised_in_every_spelling() {
        let cloud = CloudView {
            cluster_id: "c".into(),
            cloud: "prod".into(),
            project: "acme".into(),
            network_project: "acme".into(),
            network: "vpc".into(),
            region: "us-central1".into(),
            resource_prefix: "adc-".into(),
        };
        let own = Some(("us-central1".to_string(), "ilb-1".to_string()));
        assert_eq!(own_forwarding_rule(&cloud, "ilb-1"), own);
        assert_eq!(
            own_forwarding_rule(
                &cloud,
                "projects/acme/regions/us-central1/forwardingRules/ilb-1"
            ),
            own
        );
        assert_eq!(
            own_forwarding_rule(
                &cloud,
                "https://www.googleapis.com/compute/v1/projects/acme/regions/us-central1/forwardingRules/ilb-1"
            ),
            own
        );
        assert_eq!(own_forwarding_rule(&cloud, "10.128.0.40"), None);
        assert_eq!(
            own_forwarding_rule(
                &cloud,
                "projects/other/regions/us-central1/forwardingRules/x"
            ),
            None
        );
    }
    use crate::api::{NextHop, VpcRouteSpec};

    #[test]
    fn one_route_with_its_next_hop() {
        let cloud = CloudView {
            cluster_id: "c1".into(),
            cloud: "cloud".into(),
            project: "p".into(),
            network_project: "p".into(),
            network: "vpc".into(),
            region: "us-central1".into(),
            resource_prefix: "adc-".into(),
        };
        let spec = VpcRouteSpec {
            cloud_ref: "cloud".into(),
            dest_range: "192.168.0.0/16".into(),
            priority: 1000,
            tags: vec!["se".into()],
            next_hop: NextHop {
                ip: Some("10.0.0.9".into()),
                instance: None,
                gateway: None,
                ilb: None,
            },
        };
        let route = plan(&cloud, "team-a", "to-onprem", &spec);
        let ilb = |ilb: &str| {
            let mut spec = spec.clone();
            spec.next_hop = NextHop {
                ilb: Some(ilb.into()),
                ..Default::default()
            };
            plan(&cloud, "team-a", "to-onprem", &spec).body["nextHopIlb"].clone()
        };
        assert_eq!(
            ilb("ilb-1"),
            "projects/p/regions/us-central1/forwardingRules/ilb-1",
            "a bare name is the cloud's own"
        );
        for as_written in [
            "regions/europe-west1/forwardingRules/ilb-2",
            "projects/other-project/regions/us-east1/forwardingRules/ilb-3",
            "10.128.0.40",
        ] {
            assert_eq!(ilb(as_written), as_written);
        }
        assert_eq!(route.body["nextHopIp"], "10.0.0.9");
        assert_eq!(route.body["network"], "global/networks/vpc");
        assert_eq!(route.body["tags"], json!(["se"]));
        let mut moved = spec.clone();
        moved.priority = 900;
        assert_ne!(
            plan(&cloud, "team-a", "to-onprem", &moved).target.name,
            route.target.name,
            "a change is a new route"
        );
    }
}
