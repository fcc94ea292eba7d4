//! adc-operator: ADC virtual services and VPC routes as Kubernetes custom resources, turned into
//! Google Compute Engine routes, firewall rules, addresses and forwarding rules, batched and
//! rate-shaped for the whole fleet.
//!
//! The crate is laid out as in `ARCHITECTURE.md`: `api` (CRD types), `plan` (pure planning and
//! diffing), `gcp` (all Compute I/O), `controller` (kube-runtime glue and status), `leader` (leader election), `shard` (clouds
//! spread over replicas by Leases).

pub mod api;
pub mod controller;
pub mod gcp;
pub mod kubectl;
pub mod leader;
pub mod plan;
pub mod planview;
pub mod shard;
pub mod telemetry;

/// The operator's version, as built.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
