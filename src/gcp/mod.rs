//! All Compute I/O: credentials, typed resources and errors, the HTTP client and batch codec,
//! the per-project engine (rate budget, batching, retries, network concurrency), the operation
//! tracker and the inventory. Nothing outside this module talks to GCP.

pub mod auth;
pub mod budget;
pub mod client;
pub mod engine;
pub mod error;
pub mod inventory;
pub mod metrics;
pub mod quota;
pub mod target;
pub mod tracker;
pub mod types;

pub use auth::Credentials;
pub use budget::{RateGroup, RateLimits};
pub use engine::{DispatchMode, Engine, EngineProgress, EngineSettings, Failure, Lane};
pub use error::GcpError;
pub use inventory::{Inventory, InventoryEvent, Snapshot};
pub use metrics::GcpMetrics;
pub use target::{Change, Collection, Mutation, Target};
