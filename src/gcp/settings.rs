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
    /// The Shared VPC host that holds the network, its subnetworks, routes and firewall rules,
    /// when it is not `project`.
    pub network_project: Option<String>,
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
    /// An instance poll keeps the instances objects use current at least as often as the
    /// resync: a resync between whole lists reads no instance (the hourly whole one does).
    pub instances_polled: bool,
    /// Writes are sent only while this gate is open (sharding: while this replica holds the
    /// cloud's Lease with time to spare). None: always.
    pub write_gate: Option<WriteGate>,
}

/// When an engine may still send writes: a deadline the holder of a cloud's Lease moves forward
/// with every renewal it sees. A replica whose renewals stop landing stops writing at the
/// deadline by itself, before its Lease lapses, even if nothing else in the process runs.
#[derive(Debug, Clone, Default)]
pub struct WriteGate(std::sync::Arc<std::sync::atomic::AtomicU64>);

impl WriteGate {
    /// A closed gate.
    pub fn new() -> Self {
        Self::default()
    }

    /// Open until `deadline`.
    pub fn open_until(&self, deadline: std::time::SystemTime) {
        let millis = deadline
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        self.0.store(millis, std::sync::atomic::Ordering::SeqCst);
    }

    /// Closed for good (until opened again).
    pub fn close(&self) {
        self.0.store(0, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether writes may go now.
    pub fn is_open(&self) -> bool {
        self.is_open_at(std::time::SystemTime::now())
    }

    /// Whether writes may go at `now`.
    pub fn is_open_at(&self, now: std::time::SystemTime) -> bool {
        let now = now
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        now < self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl EngineSettings {
    /// Defaults for a project at an endpoint.
    pub fn new(project: impl Into<String>, endpoint: impl Into<String>) -> Self {
        Self {
            project: project.into(),
            network_project: None,
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
            instances_polled: false,
            write_gate: None,
        }
    }

    /// The project a collection's resources live in.
    pub fn project_for(&self, collection: crate::plan::resource::Collection) -> &str {
        match &self.network_project {
            Some(host) if collection.in_network_project() => host,
            _ => &self.project,
        }
    }

    /// The project of the network (the Shared VPC host, or `project`).
    pub fn network_project(&self) -> &str {
        self.network_project.as_deref().unwrap_or(&self.project)
    }

    /// The budget scope of the host project's calls (each project is budgeted on its own):
    /// None without Shared VPC.
    pub fn host_scope(&self) -> Option<String> {
        self.network_project
            .as_ref()
            .map(|host| format!("projects/{host}"))
    }

    /// Whether the write gate (if any) lets writes go now.
    pub fn may_write(&self) -> bool {
        self.write_gate.as_ref().is_none_or(WriteGate::is_open)
    }

    pub(crate) fn scaled(&self, duration: Duration) -> Duration {
        scaled(duration, self.time_scale)
    }
}

/// `duration` in an engine's time: multiplied by its time scale (1.0 against GCP).
pub fn scaled(duration: Duration, time_scale: f64) -> Duration {
    duration.mul_f64(time_scale.max(1e-6))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    #[test]
    fn a_gate_is_open_until_its_deadline_only() {
        let gate = WriteGate::new();
        let now = SystemTime::now();
        assert!(!gate.is_open_at(now), "a new gate is closed");
        gate.open_until(now + Duration::from_secs(5));
        assert!(gate.is_open_at(now));
        assert!(gate.is_open_at(now + Duration::from_millis(4_999)));
        assert!(!gate.is_open_at(now + Duration::from_secs(5)));
        let shared = gate.clone();
        shared.close();
        assert!(!gate.is_open_at(now), "clones share the deadline");
        let mut settings = EngineSettings::new("p", "http://x");
        assert!(settings.may_write(), "no gate: always");
        settings.write_gate = Some(gate);
        assert!(!settings.may_write());
    }
}
