//! The vocabulary of desired resources: a resource address ([`Target`]), what to do to it
//! ([`Mutation`]), and how a desired body compares with what Compute holds. Pure data: `gcp`
//! turns these into calls (`gcp::calls`), never the reverse.

use serde_json::Value;

/// The collections the operator writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Collection {
    Routes,
    Firewalls,
    GlobalAddresses,
    Addresses,
    ForwardingRules,
    TargetInstances,
    /// Unmanaged instance groups (zonal): ILB mode's backends, one per engine.
    InstanceGroups,
    /// Regional health checks (ILB mode).
    HealthChecks,
    /// Regional backend services (ILB mode).
    BackendServices,
}

impl Collection {
    /// The path of the collection below the project: `global/routes`, `regions/R/addresses`…
    pub fn path(self, location: &str) -> String {
        match self {
            Collection::Routes => "global/routes".into(),
            Collection::Firewalls => "global/firewalls".into(),
            Collection::GlobalAddresses => "global/addresses".into(),
            Collection::Addresses => format!("regions/{location}/addresses"),
            Collection::ForwardingRules => format!("regions/{location}/forwardingRules"),
            Collection::TargetInstances => format!("zones/{location}/targetInstances"),
            Collection::InstanceGroups => format!("zones/{location}/instanceGroups"),
            Collection::HealthChecks => format!("regions/{location}/healthChecks"),
            Collection::BackendServices => format!("regions/{location}/backendServices"),
        }
    }

    /// Whether it lives in the network's project (the Shared VPC host): routes and firewall
    /// rules; everything else lives in the cloud's project.
    pub fn in_network_project(self) -> bool {
        matches!(self, Collection::Routes | Collection::Firewalls)
    }

    /// Whether mutations of this collection occupy their VPC network (a VPC network runs only so many route and firewall
    /// mutations at once: docs/compute-api.md §11).
    pub fn holds_network(self) -> bool {
        matches!(self, Collection::Routes | Collection::Firewalls)
    }
}

/// One resource: collection, location (region or zone; empty for global) and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Target {
    pub collection: Collection,
    pub location: String,
    pub name: String,
}

impl Target {
    /// A global route.
    pub fn route(name: impl Into<String>) -> Self {
        Self {
            collection: Collection::Routes,
            location: String::new(),
            name: name.into(),
        }
    }

    /// A firewall rule.
    pub fn firewall(name: impl Into<String>) -> Self {
        Self {
            collection: Collection::Firewalls,
            location: String::new(),
            name: name.into(),
        }
    }

    /// `projects/P/global/routes/NAME` style path.
    pub fn path(&self, project: &str) -> String {
        format!(
            "projects/{project}/{}/{}",
            self.collection.path(&self.location),
            self.name
        )
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.collection.path(&self.location), self.name)
    }
}

/// What to do to a resource.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Create it with this body (a Route, Firewall… as JSON).
    Insert(Value),
    /// Delete it.
    Delete,
    /// Change these fields of it (Compute's `patch`: firewall rules, health checks and backend
    /// services; routes are immutable).
    Patch(Value),
    /// Put these instances (links) into an instance group (`addInstances`).
    AddInstances(Vec<String>),
}

/// A change of one resource, and the VPC network it touches (for the serialisation limit).
#[derive(Debug, Clone, PartialEq)]
pub struct Mutation {
    pub target: Target,
    pub change: Change,
    pub network: Option<String>,
}

impl Mutation {
    /// An insert; the network is read from the body's `network` field.
    pub fn insert(target: Target, body: Value) -> Self {
        let network = body
            .get("network")
            .and_then(Value::as_str)
            .map(|n| last_segment(n).to_string())
            .filter(|_| target.collection.holds_network());
        Self {
            target,
            change: Change::Insert(body),
            network,
        }
    }

    /// A delete of a resource on `network` (known from the inventory).
    pub fn delete(target: Target, network: Option<String>) -> Self {
        let network = network.filter(|_| target.collection.holds_network());
        Self {
            target,
            change: Change::Delete,
            network,
        }
    }

    /// A patch of the fields in `fields` of a firewall rule on `network`.
    pub fn patch(target: Target, fields: Value, network: Option<String>) -> Self {
        let network = network.filter(|_| target.collection.holds_network());
        Self {
            target,
            change: Change::Patch(fields),
            network,
        }
    }

    /// Whether it is an insert.
    pub fn is_insert(&self) -> bool {
        matches!(self.change, Change::Insert(_))
    }
}

/// The last path segment of a URL or path: the name in a resource link.
pub fn last_segment(url: &str) -> &str {
    url.rsplit('/').next().unwrap_or(url)
}

/// A reference (full URL or partial path) reduced to the part after `projects/P/`, so that
/// `global/networks/default` and `https://www.googleapis.com/compute/v1/projects/p/global/networks/default`
/// compare equal.
pub fn normalize_reference(reference: &str) -> &str {
    let path = reference
        .split_once("/compute/v1/")
        .map_or(reference, |(_, rest)| rest);
    match path.strip_prefix("projects/") {
        Some(rest) => rest.split_once('/').map_or(rest, |(_, below)| below),
        None => path,
    }
}

/// Whether `actual` (as GCP holds it) has every field of `desired` (as the operator sent it),
/// comparing references by their path below the project.
pub fn same_content(desired: &Value, actual: &Value) -> bool {
    match (desired, actual) {
        (Value::Object(want), Value::Object(have)) => {
            want.iter().all(|(key, value)| match have.get(key) {
                Some(found) => same_content(value, found),
                None => {
                    value.is_null()
                        || value.as_array().is_some_and(Vec::is_empty)
                        || value == &Value::Bool(false)
                }
            })
        }
        (Value::Array(want), Value::Array(have)) => {
            want.len() == have.len() && want.iter().zip(have).all(|(w, h)| same_content(w, h))
        }
        (Value::String(want), Value::String(have)) => {
            want == have
                || (want.contains('/') && normalize_reference(want) == normalize_reference(have))
        }
        (want, have) => want == have,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn references_compare_by_their_path_below_the_project() {
        assert_eq!(
            normalize_reference("global/networks/default"),
            "global/networks/default"
        );
        assert_eq!(
            normalize_reference(
                "https://www.googleapis.com/compute/v1/projects/p/global/networks/default"
            ),
            "global/networks/default"
        );
        assert_eq!(
            normalize_reference("projects/p/zones/z/instances/i"),
            "zones/z/instances/i"
        );
    }

    #[test]
    fn content_comparison_ignores_output_fields() {
        let desired = json!({"name": "r", "network": "global/networks/default", "priority": 2000, "tags": []});
        let actual = json!({"kind": "compute#route", "id": "1", "name": "r", "priority": 2000,
            "network": "https://www.googleapis.com/compute/v1/projects/p/global/networks/default"});
        assert!(same_content(&desired, &actual));
        let other = json!({"name": "r", "network": "global/networks/default", "priority": 1000});
        assert!(!same_content(&other, &actual));
    }

    #[test]
    fn an_insert_knows_its_network_and_a_delete_keeps_it() {
        let mutation = Mutation::insert(
            Target::route("r"),
            json!({"name": "r", "network": "global/networks/vpc"}),
        );
        assert_eq!(mutation.network.as_deref(), Some("vpc"));
        let address = Mutation::insert(
            Target {
                collection: Collection::Addresses,
                location: "us-central1".into(),
                name: "a".into(),
            },
            json!({"name": "a", "network": "global/networks/vpc"}),
        );
        assert_eq!(address.network, None, "addresses do not hold their network");
        let delete = Mutation::delete(Target::route("r"), Some("vpc".into()));
        assert_eq!(delete.network.as_deref(), Some("vpc"));
        assert!(!delete.is_insert());
    }
}
