//! gce-emulator: a local Compute Engine API v1 that follows docs/compute-api.md.

pub mod auth;
pub mod error;
pub mod faults;
pub mod fields;
pub mod filter;
pub mod http;
pub mod ipnet;
pub mod kinds;
pub mod lb;
pub mod model;

/// The batch codec, shared with the operator's client.
pub use gce_batch as multipart;

pub mod names;
pub mod operation;
pub mod resources;
pub mod service;
pub mod state;
pub mod stats;
pub mod world;
