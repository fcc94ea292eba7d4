//! The resource collections this emulator serves, and where each lives.

use crate::model::Work;

/// Where a collection lives: global, in a region, or in a zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    Global,
    Regional,
    Zonal,
}

/// A Compute resource collection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum Kind {
    Route,
    Firewall,
    GlobalAddress,
    Address,
    ForwardingRule,
    TargetInstance,
    Instance,
    Network,
    Subnetwork,
    /// Zonal unmanaged instance groups.
    InstanceGroup,
    /// Regional health checks.
    HealthCheck,
    /// Regional backend services.
    BackendService,
}

impl Kind {
    /// Every kind, for state dumps.
    pub const ALL: [Kind; 12] = [
        Kind::Route,
        Kind::Firewall,
        Kind::GlobalAddress,
        Kind::Address,
        Kind::ForwardingRule,
        Kind::TargetInstance,
        Kind::Instance,
        Kind::Network,
        Kind::Subnetwork,
        Kind::InstanceGroup,
        Kind::HealthCheck,
        Kind::BackendService,
    ];

    /// The collection segment of the URL path.
    pub fn collection(self) -> &'static str {
        match self {
            Kind::Route => "routes",
            Kind::Firewall => "firewalls",
            Kind::GlobalAddress | Kind::Address => "addresses",
            Kind::ForwardingRule => "forwardingRules",
            Kind::TargetInstance => "targetInstances",
            Kind::Instance => "instances",
            Kind::Network => "networks",
            Kind::Subnetwork => "subnetworks",
            Kind::InstanceGroup => "instanceGroups",
            Kind::HealthCheck => "healthChecks",
            Kind::BackendService => "backendServices",
        }
    }

    /// The resource collection of the discovery document, as method ids name it
    /// (`compute.globalAddresses.insert`, `compute.regionBackendServices.getHealth`).
    pub fn method_collection(self) -> &'static str {
        match self {
            Kind::GlobalAddress => "globalAddresses",
            Kind::HealthCheck => "regionHealthChecks",
            Kind::BackendService => "regionBackendServices",
            other => other.collection(),
        }
    }

    /// The resource type as Compute's "already being used" errors name it (`instance_group`).
    pub fn type_name(self) -> &'static str {
        match self {
            Kind::Route => "route",
            Kind::Firewall => "firewall",
            Kind::GlobalAddress | Kind::Address => "address",
            Kind::ForwardingRule => "forwarding_rule",
            Kind::TargetInstance => "target_instance",
            Kind::Instance => "instance",
            Kind::Network => "network",
            Kind::Subnetwork => "subnetwork",
            Kind::InstanceGroup => "instance_group",
            Kind::HealthCheck => "health_check",
            Kind::BackendService => "backend_service",
        }
    }

    /// The `kind` field of one resource.
    pub fn resource_kind(self) -> &'static str {
        match self {
            Kind::Route => "compute#route",
            Kind::Firewall => "compute#firewall",
            Kind::GlobalAddress | Kind::Address => "compute#address",
            Kind::ForwardingRule => "compute#forwardingRule",
            Kind::TargetInstance => "compute#targetInstance",
            Kind::Instance => "compute#instance",
            Kind::Network => "compute#network",
            Kind::Subnetwork => "compute#subnetwork",
            Kind::InstanceGroup => "compute#instanceGroup",
            Kind::HealthCheck => "compute#healthCheck",
            Kind::BackendService => "compute#backendService",
        }
    }

    /// The `kind` field of a list response.
    pub fn list_kind(self) -> &'static str {
        match self {
            Kind::Route => "compute#routeList",
            Kind::Firewall => "compute#firewallList",
            Kind::GlobalAddress | Kind::Address => "compute#addressList",
            Kind::ForwardingRule => "compute#forwardingRuleList",
            Kind::TargetInstance => "compute#targetInstanceList",
            Kind::Instance => "compute#instanceList",
            Kind::Network => "compute#networkList",
            Kind::Subnetwork => "compute#subnetworkList",
            Kind::InstanceGroup => "compute#instanceGroupList",
            Kind::HealthCheck => "compute#healthCheckList",
            Kind::BackendService => "compute#backendServiceList",
        }
    }

    /// Global, regional or zonal.
    pub fn placement(self) -> Placement {
        match self {
            Kind::Route | Kind::Firewall | Kind::GlobalAddress | Kind::Network => Placement::Global,
            Kind::Address
            | Kind::ForwardingRule
            | Kind::Subnetwork
            | Kind::HealthCheck
            | Kind::BackendService => Placement::Regional,
            Kind::TargetInstance | Kind::Instance | Kind::InstanceGroup => Placement::Zonal,
        }
    }

    /// Which operation-duration row of the model applies to a mutation of this kind.
    pub fn work(self) -> Work {
        match self {
            Kind::Route | Kind::Network | Kind::Subnetwork => Work::Route,
            Kind::Firewall => Work::Firewall,
            Kind::GlobalAddress | Kind::Address => Work::Address,
            Kind::ForwardingRule => Work::ForwardingRule,
            Kind::TargetInstance => Work::TargetInstance,
            Kind::Instance => Work::Instance,
            Kind::InstanceGroup => Work::InstanceGroup,
            Kind::HealthCheck => Work::HealthCheck,
            Kind::BackendService => Work::BackendService,
        }
    }

    /// Whether insert and delete are served (the world seeds the others).
    pub fn mutable(self) -> bool {
        !matches!(self, Kind::Instance | Kind::Network | Kind::Subnetwork)
    }

    /// Whether mutations of this kind occupy their VPC network (the serialisation knob).
    pub fn holds_network(self) -> bool {
        matches!(self, Kind::Route | Kind::Firewall)
    }

    /// Parses a collection segment for a placement.
    pub fn from_segment(placement: Placement, segment: &str) -> Option<Kind> {
        Some(match (placement, segment) {
            (Placement::Global, "routes") => Kind::Route,
            (Placement::Global, "firewalls") => Kind::Firewall,
            (Placement::Global, "addresses") => Kind::GlobalAddress,
            (Placement::Global, "networks") => Kind::Network,
            (Placement::Regional, "addresses") => Kind::Address,
            (Placement::Regional, "forwardingRules") => Kind::ForwardingRule,
            (Placement::Regional, "subnetworks") => Kind::Subnetwork,
            (Placement::Regional, "healthChecks") => Kind::HealthCheck,
            (Placement::Regional, "backendServices") => Kind::BackendService,
            (Placement::Zonal, "targetInstances") => Kind::TargetInstance,
            (Placement::Zonal, "instances") => Kind::Instance,
            (Placement::Zonal, "instanceGroups") => Kind::InstanceGroup,
            _ => return None,
        })
    }
}

/// A collection in one project: the kind and its region or zone (empty for global).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CollectionKey {
    pub kind: Kind,
    pub location: String,
}

impl CollectionKey {
    /// The URL path of the collection below the project, e.g. `global/routes`,
    /// `regions/us-central1/addresses`.
    pub fn path(&self, project: &str) -> String {
        match self.kind.placement() {
            Placement::Global => format!("projects/{project}/global/{}", self.kind.collection()),
            Placement::Regional => format!(
                "projects/{project}/regions/{}/{}",
                self.location,
                self.kind.collection()
            ),
            Placement::Zonal => format!(
                "projects/{project}/zones/{}/{}",
                self.location,
                self.kind.collection()
            ),
        }
    }
}

/// A collection served by an `aggregatedList` method, `projects/{p}/aggregated/{segment}`: one
/// list across every scope of the project.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aggregated {
    Instances,
    /// Operations of every scope (`compute.globalOperations.aggregatedList`).
    Operations,
    /// Global and regional addresses.
    Addresses,
    ForwardingRules,
    TargetInstances,
    InstanceGroups,
    /// Regional backend services (Compute's global ones have the `global` scope, empty here).
    BackendServices,
    /// Regional health checks (the `global` scope is empty here).
    HealthChecks,
}

impl Aggregated {
    /// Every aggregated collection.
    pub const ALL: [Aggregated; 8] = [
        Aggregated::Instances,
        Aggregated::Operations,
        Aggregated::Addresses,
        Aggregated::ForwardingRules,
        Aggregated::TargetInstances,
        Aggregated::InstanceGroups,
        Aggregated::BackendServices,
        Aggregated::HealthChecks,
    ];

    /// Parses the segment after `aggregated/`.
    pub fn from_segment(segment: &str) -> Option<Aggregated> {
        Self::ALL.into_iter().find(|a| a.segment() == segment)
    }

    /// The segment after `aggregated/`, which is also the field of each scoped list
    /// (`InstancesScopedList.instances`, `OperationsScopedList.operations`, ...).
    pub fn segment(self) -> &'static str {
        match self {
            Aggregated::Instances => "instances",
            Aggregated::Operations => "operations",
            Aggregated::Addresses => "addresses",
            Aggregated::ForwardingRules => "forwardingRules",
            Aggregated::TargetInstances => "targetInstances",
            Aggregated::InstanceGroups => "instanceGroups",
            Aggregated::BackendServices => "backendServices",
            Aggregated::HealthChecks => "healthChecks",
        }
    }

    /// The discovery method id, as `callsByMethod` counts it.
    pub fn method(self) -> &'static str {
        match self {
            Aggregated::Instances => "compute.instances.aggregatedList",
            Aggregated::Operations => "compute.globalOperations.aggregatedList",
            Aggregated::Addresses => "compute.addresses.aggregatedList",
            Aggregated::ForwardingRules => "compute.forwardingRules.aggregatedList",
            Aggregated::TargetInstances => "compute.targetInstances.aggregatedList",
            Aggregated::InstanceGroups => "compute.instanceGroups.aggregatedList",
            Aggregated::BackendServices => "compute.backendServices.aggregatedList",
            Aggregated::HealthChecks => "compute.healthChecks.aggregatedList",
        }
    }

    /// The `kind` of the response.
    pub fn list_kind(self) -> &'static str {
        match self {
            Aggregated::Instances => "compute#instanceAggregatedList",
            Aggregated::Operations => "compute#operationAggregatedList",
            Aggregated::Addresses => "compute#addressAggregatedList",
            Aggregated::ForwardingRules => "compute#forwardingRuleAggregatedList",
            Aggregated::TargetInstances => "compute#targetInstanceAggregatedList",
            Aggregated::InstanceGroups => "compute#instanceGroupAggregatedList",
            Aggregated::BackendServices => "compute#backendServiceAggregatedList",
            // Sic: `HealthChecksAggregatedList.kind` in the discovery document.
            Aggregated::HealthChecks => "compute#healthChecksAggregatedList",
        }
    }

    /// The resource kinds listed (none for operations, which are not stored as resources).
    pub fn kinds(self) -> &'static [Kind] {
        match self {
            Aggregated::Instances => &[Kind::Instance],
            Aggregated::Operations => &[],
            Aggregated::Addresses => &[Kind::GlobalAddress, Kind::Address],
            Aggregated::ForwardingRules => &[Kind::ForwardingRule],
            Aggregated::TargetInstances => &[Kind::TargetInstance],
            Aggregated::InstanceGroups => &[Kind::InstanceGroup],
            Aggregated::BackendServices => &[Kind::BackendService],
            Aggregated::HealthChecks => &[Kind::HealthCheck],
        }
    }

    /// The scope types listed when `includeAllScopes` is not true: those where the resource can
    /// be found (forwarding rules have a global scope in Compute, though none is served here).
    pub fn placements(self) -> &'static [Placement] {
        match self {
            Aggregated::Instances | Aggregated::TargetInstances | Aggregated::InstanceGroups => {
                &[Placement::Zonal]
            }
            Aggregated::Addresses
            | Aggregated::ForwardingRules
            | Aggregated::BackendServices
            | Aggregated::HealthChecks => &[Placement::Global, Placement::Regional],
            Aggregated::Operations => &[Placement::Global, Placement::Regional, Placement::Zonal],
        }
    }
}
