//! All Compute I/O: credentials, typed resources and errors, the HTTP client and batch codec,
//! and the per-project engine. Nothing outside this module talks to GCP. The engine
//! (`engine.rs`) is a thin async shell around parts with one job each: the work queue
//! (`queue.rs`, a synchronous state machine), the read path (`reader.rs`), the operation
//! tracker (`tracker.rs`), the inventory (`inventory.rs`, a data store; `refresh.rs` loads it).
//! `gcp` takes the plan's vocabulary of resources (`plan::resource`); `plan` never imports it.

pub mod auth;
pub mod budget;
pub mod calls;
pub(crate) mod changelog;
pub mod client;
pub mod engine;
pub mod error;
pub mod health;
pub mod inventory;
pub mod metrics;
mod per_object;
pub mod queue;
pub mod quota;
pub mod reader;
pub mod refresh;
pub mod settings;
pub mod tracker;
pub mod types;

pub use crate::plan::resource::{Change, Collection, Mutation, Target};
pub use auth::Credentials;
pub use budget::{PROBE_CALLS, RateGroup, RateLimits, Reserve};
pub use engine::{Engine, EngineProgress};
pub use error::GcpError;
pub use inventory::{Inventory, InventoryEvent, Snapshot};
pub use metrics::GcpMetrics;
pub use queue::{Failure, Lane};
pub use settings::{DispatchMode, EngineSettings, WriteGate};
