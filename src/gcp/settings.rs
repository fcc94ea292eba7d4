//! How the engine of one project is set up (`--gcp-*` flags).

use std::time::Duration;

use super::budget::RateLimits;

/// How calls reach Compute (`--gcp-dispatch`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DispatchMode {
    /// Batches of up to `max_calls_per_batch`, operations polled together (the default).
    Batched,
    /// The same engine, one HTTP request per call.
    Concurrent,
    /// What most controllers do: K workers, each sends one call, waits on its operation with
    /// `operations.wait`, then reads the resource back.
    PerObject { workers: usize },
}

/// How the engine of one project is set up.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    pub project: String,
    /// `https://compute.googleapis.com` or an emulator.
    pub endpoint: String,
    pub dispatch: DispatchMode,
    /// Inner calls per batch, at most 1000.
    pub max_calls_per_batch: usize,
    /// How long the dispatcher waits for more work to coalesce (scaled like every engine duration).
    pub linger: Duration,
    /// Batches (or, in concurrent mode, requests) in flight at once.
    pub max_in_flight: usize,
    pub rate_limits: RateLimits,
    /// Multiplies the engine's notion of time (rate window, backoff, polling): 1.0 against real
    /// GCP; the emulator's `--time-scale` in benchmarks.
    pub time_scale: f64,
    /// Every resource the operator creates starts with it; the inventory lists by it.
    pub resource_prefix: String,
    /// Regions whose addresses and forwarding rules the inventory loads.
    pub regions: Vec<String>,
    /// Attempts per mutation before its error is final.
    pub max_attempts: u32,
    /// Reads only: every mutation is refused before it reaches the queue (`adc-operator plan`).
    pub read_only: bool,
    /// The inventory lists every route of the project, whatever its name (adoption needs to see
    /// what others made), not only those with the resource prefix. Firewall rules are always
    /// listed whole.
    pub list_foreign: bool,
}

impl EngineSettings {
    /// Defaults for a project at an endpoint.
    pub fn new(project: impl Into<String>, endpoint: impl Into<String>) -> Self {
        Self {
            project: project.into(),
            endpoint: endpoint.into(),
            dispatch: DispatchMode::Batched,
            max_calls_per_batch: 500,
            linger: Duration::from_millis(50),
            max_in_flight: 4,
            rate_limits: RateLimits::default(),
            time_scale: 1.0,
            resource_prefix: "adc-".into(),
            regions: Vec::new(),
            max_attempts: 12,
            read_only: false,
            list_foreign: false,
        }
    }

    pub(crate) fn scaled(&self, duration: Duration) -> Duration {
        scaled(duration, self.time_scale)
    }
}

/// `duration` in an engine's time: multiplied by its time scale (1.0 against GCP).
pub fn scaled(duration: Duration, time_scale: f64) -> Duration {
    duration.mul_f64(time_scale.max(1e-6))
}
