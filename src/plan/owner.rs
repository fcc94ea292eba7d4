//! The ownership marker every GCP resource of the operator carries in its description:
//! `adc.dev/owner=CLUSTER/CLOUD/KIND/NAMESPACE/NAME`. The cloud is part of it because several
//! GcpClouds may share a project: each collects only its own orphans. It lets a restarted operator adopt what exists
//! and garbage-collect what no object desires, and never touch a resource without it.

/// Who owns a GCP resource.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Owner {
    pub cluster_id: String,
    /// The GcpCloud the resource was created through.
    pub cloud: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

impl Owner {
    /// The start of every GCP name planned for this owner: `{resource_prefix}{object hash}-`.
    pub fn name_prefix(&self, resource_prefix: &str) -> String {
        let object =
            super::names::object_hash(&self.cluster_id, &self.kind, &self.namespace, &self.name);
        super::names::resource_name(resource_prefix, &object, "")
    }
}

const MARKER: &str = "adc.dev/owner=";

/// The marker token of a description as written (`adc.dev/owner=...` up to the first blank),
/// whether or not it names a valid owner: what an error about someone else's resource quotes.
pub fn marker(description: &str) -> Option<&str> {
    let start = description.find(MARKER)?;
    description[start..].split_whitespace().next()
}

impl Owner {
    /// An owner.
    pub fn new(cluster_id: &str, cloud: &str, kind: &str, namespace: &str, name: &str) -> Self {
        Self {
            cluster_id: cluster_id.to_string(),
            cloud: cloud.to_string(),
            kind: kind.to_string(),
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }

    /// The description text carrying the marker.
    pub fn description(&self) -> String {
        format!(
            "{MARKER}{}/{}/{}/{}/{} (managed by adc-operator; do not edit)",
            self.cluster_id, self.cloud, self.kind, self.namespace, self.name
        )
    }

    /// Reads the marker out of a description; None when there is none.
    pub fn parse(description: &str) -> Option<Owner> {
        let token = marker(description)?.strip_prefix(MARKER)?;
        let mut parts = token.split('/');
        let owner = Owner {
            cluster_id: parts.next()?.to_string(),
            cloud: parts.next()?.to_string(),
            kind: parts.next()?.to_string(),
            namespace: parts.next()?.to_string(),
            name: parts.next()?.to_string(),
        };
        if parts.next().is_some()
            || [&owner.cluster_id, &owner.cloud, &owner.kind, &owner.name]
                .iter()
                .any(|p| p.is_empty())
        {
            return None;
        }
        Some(owner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_foreign_descriptions() {
        let owner = Owner::new("prod", "prod-vpc", "VirtualService", "team-a", "web");
        assert_eq!(Owner::parse(&owner.description()), Some(owner));
        assert_eq!(Owner::parse("a route someone made by hand"), None);
        assert_eq!(Owner::parse("adc.dev/owner=prod/VirtualService"), None);
        assert_eq!(
            Owner::parse("adc.dev/owner=prod/VirtualService/team-a/web"),
            None,
            "the cloud is required"
        );
        assert_eq!(Owner::parse(""), None);
    }
}
