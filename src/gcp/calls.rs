//! How the plan's resources become Compute calls: the REST method and path of each, the
//! Discovery method name the emulator and metrics count, and the rate group a call is charged
//! to. The resources themselves ([`Target`], [`Mutation`]) are the plan's vocabulary.

use reqwest::Method;

use super::budget::RateGroup;
use super::client::Call;
use crate::plan::resource::{Change, Collection, Mutation, Target};

/// What `gcp` knows of a collection beyond its address.
pub trait CollectionCalls {
    /// The quota group of a write, and the region it is charged in.
    fn write_group(self, location: &str) -> (RateGroup, String);
    /// Discovery method names: (insert, delete, get).
    fn method_names(self) -> (&'static str, &'static str, &'static str);
    /// The Discovery name of its `patch`, for collections Compute lets change in place.
    fn patch_method(self) -> Option<&'static str>;
}

impl CollectionCalls for Collection {
    fn write_group(self, location: &str) -> (RateGroup, String) {
        match self {
            Collection::Routes | Collection::Firewalls | Collection::GlobalAddresses => {
                (RateGroup::Write, String::new())
            }
            Collection::Addresses
            | Collection::ForwardingRules
            | Collection::HealthChecks
            | Collection::BackendServices => (RateGroup::RegionalWrite, location.to_string()),
            Collection::TargetInstances | Collection::InstanceGroups => (
                RateGroup::RegionalWrite,
                location
                    .rsplit_once('-')
                    .map_or(location, |(region, _)| region)
                    .to_string(),
            ),
        }
    }

    fn patch_method(self) -> Option<&'static str> {
        match self {
            Collection::Firewalls => Some("compute.firewalls.patch"),
            Collection::HealthChecks => Some("compute.regionHealthChecks.patch"),
            Collection::BackendServices => Some("compute.regionBackendServices.patch"),
            _ => None,
        }
    }

    fn method_names(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Collection::Routes => (
                "compute.routes.insert",
                "compute.routes.delete",
                "compute.routes.get",
            ),
            Collection::Firewalls => (
                "compute.firewalls.insert",
                "compute.firewalls.delete",
                "compute.firewalls.get",
            ),
            Collection::GlobalAddresses => (
                "compute.globalAddresses.insert",
                "compute.globalAddresses.delete",
                "compute.globalAddresses.get",
            ),
            Collection::Addresses => (
                "compute.addresses.insert",
                "compute.addresses.delete",
                "compute.addresses.get",
            ),
            Collection::ForwardingRules => (
                "compute.forwardingRules.insert",
                "compute.forwardingRules.delete",
                "compute.forwardingRules.get",
            ),
            Collection::TargetInstances => (
                "compute.targetInstances.insert",
                "compute.targetInstances.delete",
                "compute.targetInstances.get",
            ),
            Collection::InstanceGroups => (
                "compute.instanceGroups.insert",
                "compute.instanceGroups.delete",
                "compute.instanceGroups.get",
            ),
            Collection::HealthChecks => (
                "compute.regionHealthChecks.insert",
                "compute.regionHealthChecks.delete",
                "compute.regionHealthChecks.get",
            ),
            Collection::BackendServices => (
                "compute.regionBackendServices.insert",
                "compute.regionBackendServices.delete",
                "compute.regionBackendServices.get",
            ),
        }
    }
}

/// The GET of one resource.
pub fn get_call(target: &Target, project: &str) -> Call {
    Call {
        method: Method::GET,
        path: target.path(project),
        query: Vec::new(),
        body: None,
        group: RateGroup::Read,
        method_name: target.collection.method_names().2,
    }
}

/// The Compute call of a mutation, with `requestId` so a retry never acts twice.
pub fn mutation_call(mutation: &Mutation, project: &str, request_id: &str) -> Call {
    let target = &mutation.target;
    let (group, _) = target.collection.write_group(&target.location);
    let (insert, delete, _) = target.collection.method_names();
    let query = vec![("requestId".to_string(), request_id.to_string())];
    match &mutation.change {
        Change::Insert(body) => Call {
            method: Method::POST,
            path: format!(
                "projects/{project}/{}",
                target.collection.path(&target.location)
            ),
            query,
            body: Some(body.clone()),
            group,
            method_name: insert,
        },
        Change::Delete => Call {
            method: Method::DELETE,
            path: target.path(project),
            query,
            body: None,
            group,
            method_name: delete,
        },
        // The plan patches firewall rules, health checks and backend services; the name of
        // any other would be Compute's own refusal (405), which is what such a call gets.
        Change::Patch(fields) => Call {
            method: Method::PATCH,
            path: target.path(project),
            query,
            body: Some(fields.clone()),
            group,
            method_name: target
                .collection
                .patch_method()
                .unwrap_or("compute.unsupported.patch"),
        },
        Change::AddInstances(instances) => Call {
            method: Method::POST,
            path: format!("{}/addInstances", target.path(project)),
            query,
            body: Some(serde_json::json!({
                "instances": instances
                    .iter()
                    .map(|instance| serde_json::json!({"instance": instance}))
                    .collect::<Vec<_>>(),
            })),
            group,
            method_name: "compute.instanceGroups.addInstances",
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn calls_carry_the_request_id() {
        let mutation = Mutation::insert(
            Target::route("r"),
            json!({"name": "r", "network": "global/networks/vpc"}),
        );
        let call = mutation_call(&mutation, "p", "id-1");
        assert_eq!(call.path, "projects/p/global/routes");
        assert_eq!(call.method_name, "compute.routes.insert");
        assert_eq!(
            call.query,
            vec![("requestId".to_string(), "id-1".to_string())]
        );
        let delete = mutation_call(
            &Mutation::delete(Target::route("r"), Some("vpc".into())),
            "p",
            "id-2",
        );
        assert_eq!(delete.path, "projects/p/global/routes/r");
        assert_eq!(delete.method, Method::DELETE);
        assert_eq!(
            get_call(&Target::route("r"), "p").method_name,
            "compute.routes.get"
        );
    }

    #[test]
    fn an_engine_joins_its_group_by_add_instances() {
        let group = Target {
            collection: Collection::InstanceGroups,
            location: "us-central1-a".into(),
            name: "adc-ig".into(),
        };
        let link =
            "https://www.googleapis.com/compute/v1/projects/p/zones/us-central1-a/instances/se-1";
        let call = mutation_call(
            &Mutation {
                target: group,
                change: Change::AddInstances(vec![link.into()]),
                network: None,
            },
            "p",
            "id-3",
        );
        assert_eq!(call.method, Method::POST);
        assert_eq!(
            call.path,
            "projects/p/zones/us-central1-a/instanceGroups/adc-ig/addInstances"
        );
        assert_eq!(call.body, Some(json!({"instances": [{"instance": link}]})));
        assert_eq!(call.method_name, "compute.instanceGroups.addInstances");
    }

    #[test]
    fn zonal_writes_are_charged_to_their_region() {
        assert_eq!(
            Collection::TargetInstances.write_group("us-central1-a"),
            (RateGroup::RegionalWrite, "us-central1".to_string())
        );
        assert_eq!(
            Collection::InstanceGroups.write_group("europe-west4-b"),
            (RateGroup::RegionalWrite, "europe-west4".to_string())
        );
        assert_eq!(
            Collection::Routes.write_group(""),
            (RateGroup::Write, String::new())
        );
    }
}
