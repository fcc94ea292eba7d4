//! Reconcile metrics per kind: totals, durations, failures by error.

use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// A kind label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

/// A kind and an error label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub kind: String,
    pub error: String,
}

/// The controllers' metric families.
#[derive(Debug)]
pub struct ControllerMetrics {
    pub reconciles: Family<KindLabel, Counter>,
    pub failures: Family<FailureLabels, Counter>,
    pub duration: Family<KindLabel, Histogram>,
}

impl Default for ControllerMetrics {
    fn default() -> Self {
        Self {
            reconciles: Family::default(),
            failures: Family::default(),
            duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.005, 2.0, 14))
            }),
        }
    }
}

impl ControllerMetrics {
    /// Registers every family.
    pub fn register(&self, registry: &mut Registry) {
        registry.register("reconciles", "Reconciles by kind", self.reconciles.clone());
        registry.register(
            "reconcile_failures",
            "Failed reconciles by kind and error",
            self.failures.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Reconcile durations by kind",
            self.duration.clone(),
        );
    }

    /// Records one reconcile of `kind` that started at `start`.
    pub fn observe<T>(&self, kind: &str, start: Instant, outcome: &Result<T, super::Error>) {
        let label = KindLabel {
            kind: kind.to_string(),
        };
        self.reconciles.get_or_create(&label).inc();
        self.duration
            .get_or_create(&label)
            .observe(start.elapsed().as_secs_f64());
        if let Err(err) = outcome {
            self.failures
                .get_or_create(&FailureLabels {
                    kind: kind.to_string(),
                    error: err.label().to_string(),
                })
                .inc();
        }
    }
}
