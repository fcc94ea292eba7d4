//! The GCP engine's metrics: every Compute call goes through one path, so throttling, batching
//! and retries are visible in one place.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::error::GcpError;

/// Labels of a Compute call.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    pub method: String,
    pub outcome: String,
}

/// One label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

/// The engine's metric families.
#[derive(Debug)]
pub struct GcpMetrics {
    pub calls: Family<CallLabels, Counter>,
    pub http_requests: Family<KindLabel, Counter>,
    pub batch_size: Histogram,
    pub queue_depth: Family<KindLabel, Gauge>,
    pub rate_wait_seconds: Family<KindLabel, Counter<f64, std::sync::atomic::AtomicU64>>,
    pub operations_pending: Gauge,
    pub retries: Family<KindLabel, Counter>,
    pub operations: Family<OutcomeLabel, Counter>,
    pub quota_usage: Family<QuotaLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub quota_limit: Family<QuotaLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
}

/// The outcome of an operation: `ok` or its error code.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: String,
}

/// One resource quota of a project (`region` is `global` for the project-wide ones).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QuotaLabels {
    pub project: String,
    pub region: String,
    pub metric: String,
}

impl Default for GcpMetrics {
    fn default() -> Self {
        Self {
            calls: Family::default(),
            http_requests: Family::default(),
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 11)),
            queue_depth: Family::default(),
            rate_wait_seconds: Family::default(),
            operations_pending: Gauge::default(),
            retries: Family::default(),
            operations: Family::default(),
            quota_usage: Family::default(),
            quota_limit: Family::default(),
        }
    }
}

impl GcpMetrics {
    /// Registers every family under `gcp_`.
    pub fn register(&self, registry: &mut Registry) {
        let registry = registry.sub_registry_with_prefix("gcp");
        registry.register(
            "calls",
            "Compute calls (inner calls of batches counted one by one) by method and outcome",
            self.calls.clone(),
        );
        registry.register(
            "http_requests",
            "HTTP requests to the Compute API by kind (batch or single)",
            self.http_requests.clone(),
        );
        registry.register(
            "batch_size",
            "Inner calls per batch request",
            self.batch_size.clone(),
        );
        registry.register(
            "queue_depth",
            "Mutations waiting to be sent, by lane",
            self.queue_depth.clone(),
        );
        registry.register(
            "rate_wait_seconds",
            "Seconds work waited for rate budget, by quota group",
            self.rate_wait_seconds.clone(),
        );
        registry.register(
            "operations_pending",
            "Operations sent and not yet seen DONE",
            self.operations_pending.clone(),
        );
        registry.register(
            "retries",
            "Calls sent again, by reason",
            self.retries.clone(),
        );
        registry.register(
            "operations",
            "Operations seen DONE, by outcome (ok or the operation's error code)",
            self.operations.clone(),
        );
        registry.register(
            "quota_usage",
            "Compute resource quota in use, by project, region (global: project-wide) and metric",
            self.quota_usage.clone(),
        );
        registry.register(
            "quota_limit",
            "Compute resource quota limit, by project, region (global: project-wide) and metric",
            self.quota_limit.clone(),
        );
    }

    /// Creates the series that exist from the start at zero, so that dashboards and alerts see
    /// a zero rather than nothing (Prometheus clients leave a family without series out).
    pub fn prime(&self) {
        for group in ["read", "write", "operation_read", "regional_write"] {
            let _ = self.rate_wait_seconds.get_or_create(&KindLabel {
                kind: group.to_string(),
            });
        }
        let _ = self.operations.get_or_create(&OutcomeLabel {
            outcome: "ok".to_string(),
        });
        for lane in ["urgent", "bulk"] {
            self.queue_depth(lane, 0);
        }
    }

    /// Counts an operation seen DONE.
    pub fn operation(&self, outcome: &Result<(), GcpError>) {
        let outcome = match outcome {
            Ok(()) => "ok".to_string(),
            Err(err) => err.label(),
        };
        self.operations
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    /// Records a resource quota as Compute reported it.
    pub fn quota(&self, project: &str, region: &str, metric: &str, usage: f64, limit: f64) {
        let labels = QuotaLabels {
            project: project.to_string(),
            region: region.to_string(),
            metric: metric.to_string(),
        };
        self.quota_usage.get_or_create(&labels).set(usage);
        self.quota_limit.get_or_create(&labels).set(limit);
    }

    /// Counts a call's outcome.
    pub fn call<T>(&self, method: &str, outcome: &Result<T, GcpError>) {
        let outcome = match outcome {
            Ok(_) => "ok".to_string(),
            Err(err) => err.label(),
        };
        self.calls
            .get_or_create(&CallLabels {
                method: method.to_string(),
                outcome,
            })
            .inc();
    }

    /// Counts an HTTP request.
    pub fn http_request(&self, kind: &str) {
        self.http_requests
            .get_or_create(&KindLabel {
                kind: kind.to_string(),
            })
            .inc();
    }

    /// Observes a batch's size.
    pub fn batch_size(&self, calls: usize) {
        self.batch_size.observe(calls as f64);
    }

    /// Counts a retry.
    pub fn retry(&self, reason: &str) {
        self.retries
            .get_or_create(&KindLabel {
                kind: reason.to_string(),
            })
            .inc();
    }

    /// Sets a lane's queue depth.
    pub fn queue_depth(&self, lane: &str, depth: usize) {
        self.queue_depth
            .get_or_create(&KindLabel {
                kind: lane.to_string(),
            })
            .set(i64::try_from(depth).unwrap_or(i64::MAX));
    }

    /// Adds time spent waiting for rate budget.
    pub fn rate_wait(&self, group: &str, seconds: f64) {
        self.rate_wait_seconds
            .get_or_create(&KindLabel {
                kind: group.to_string(),
            })
            .inc_by(seconds);
    }

    /// Retries counted for one reason (a label of `GcpError::label`), for tests.
    pub fn retried(&self, reason: &str) -> u64 {
        self.retries
            .get_or_create(&KindLabel {
                kind: reason.to_string(),
            })
            .get()
    }

    /// Total calls counted, by outcome "ok" or not, for tests and the benchmark.
    pub fn total_calls(&self, method: &str, outcome: &str) -> u64 {
        self.calls
            .get_or_create(&CallLabels {
                method: method.to_string(),
                outcome: outcome.to_string(),
            })
            .get()
    }
}
