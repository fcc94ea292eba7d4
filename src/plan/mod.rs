//! The pure core: what each object wants in GCP, and what must change to get there. Functions of
//! (spec, inventory view) only: no I/O, no clocks, no randomness. Unit and property tests live
//! here.

pub mod adopt;
pub mod aggregate;
pub mod diff;
pub mod failover;
pub mod guard;
pub mod ilb;
pub mod import;
pub mod names;
pub mod owner;
pub mod policy;
pub mod pool;
pub mod quota;
pub mod resource;
pub mod shared;
pub mod virtualservice;
pub mod vpcroute;

use serde_json::Value;

use resource::Target;

/// One GCP resource an object wants: where it lives and its insert body.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredResource {
    pub target: Target,
    pub body: Value,
}

/// The cloud an object is planned into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudView {
    pub cluster_id: String,
    /// The GcpCloud's name (part of every ownership marker).
    pub cloud: String,
    /// The project of the engines and, in ILB mode, of the load balancers.
    pub project: String,
    /// The project of the network, its subnetworks, routes and firewall rules: the Shared VPC
    /// host, or `project`.
    pub network_project: String,
    pub network: String,
    pub region: String,
    pub resource_prefix: String,
}

/// What the inventory says about a service engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineHealth {
    /// RUNNING: may carry traffic.
    Running,
    /// Exists, not RUNNING (stopped, terminated, being repaired).
    Down,
    /// No such instance in the inventory.
    Missing,
}
