//! A VpcRoute becomes one static route.

use serde_json::json;

use super::names::{content_hash, object_hash, resource_name};
use super::owner::Owner;
use super::{CloudView, DesiredResource};
use crate::api::VpcRouteSpec;
use crate::gcp::Target;

/// The kind name in ownership markers.
pub const KIND: &str = "VpcRoute";

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
        body["nextHopIlb"] = json!(ilb);
    }
    let route_name = resource_name(&cloud.resource_prefix, &object, &content_hash(&body));
    body["name"] = json!(route_name);
    DesiredResource {
        target: Target::route(route_name),
        body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{NextHop, VpcRouteSpec};

    #[test]
    fn one_route_with_its_next_hop() {
        let cloud = CloudView {
            cluster_id: "c1".into(),
            cloud: "cloud".into(),
            project: "p".into(),
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
