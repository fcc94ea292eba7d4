//! Reconcile metrics per kind: totals, durations, failures by error.

use std::sync::atomic::AtomicU64;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
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

/// Objects of a cloud in one state.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ObjectLabels {
    pub cloud: String,
    pub kind: String,
    pub state: String,
    pub reason: String,
}

/// How a kind's objects are kept in this replica's store.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoredLabels {
    pub kind: String,
    /// `whole`, or `stub` (an object of a cloud another replica holds).
    pub form: String,
}

/// A cloud label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CloudLabel {
    pub cloud: String,
}

/// The controllers' metric families.
#[derive(Debug)]
pub struct ControllerMetrics {
    pub reconciles: Family<KindLabel, Counter>,
    pub failures: Family<FailureLabels, Counter>,
    pub duration: Family<KindLabel, Histogram>,
    pub objects: Family<ObjectLabels, Gauge>,
    pub eta_seconds: Family<CloudLabel, Gauge<f64, AtomicU64>>,
    pub stored: Family<StoredLabels, Gauge>,
}

impl Default for ControllerMetrics {
    fn default() -> Self {
        Self {
            reconciles: Family::default(),
            failures: Family::default(),
            duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.005, 2.0, 14))
            }),
            objects: Family::default(),
            eta_seconds: Family::default(),
            stored: Family::default(),
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
        registry.register(
            "objects",
            "VirtualServices and VpcRoutes by cloud, kind, state (ready, reconciling, stalled) and the reason of their deciding condition",
            self.objects.clone(),
        );
        registry.register(
            "cloud_eta_seconds",
            "Estimated seconds until the GCP work queued for a cloud is done (0 when idle)",
            self.eta_seconds.clone(),
        );
        registry.register(
            "stored_objects",
            "VirtualServices and VpcRoutes in this replica's store, whole or as stubs (with sharding, objects of clouds other replicas hold)",
            self.stored.clone(),
        );
    }

    /// Sets how many objects of `kind` the store keeps whole and as stubs.
    pub fn set_stored(&self, kind: &str, whole: usize, stubs: usize) {
        for (form, count) in [("whole", whole), ("stub", stubs)] {
            self.stored
                .get_or_create(&StoredLabels {
                    kind: kind.to_string(),
                    form: form.to_string(),
                })
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
    }

    /// Creates the reconcile series of every kind at zero (failures for every error label), so
    /// that a rate over them is 0 rather than absent before the first failure.
    pub fn prime(&self, kinds: &[&str]) {
        for kind in kinds {
            let label = KindLabel {
                kind: kind.to_string(),
            };
            let _ = self.reconciles.get_or_create(&label);
            let _ = self.duration.get_or_create(&label);
            for error in super::Error::LABELS {
                let _ = self.failures.get_or_create(&FailureLabels {
                    kind: kind.to_string(),
                    error: error.to_string(),
                });
            }
        }
    }

    fn object_labels(cloud: &str, kind: &str, state: &str, reason: &str) -> ObjectLabels {
        ObjectLabels {
            cloud: cloud.to_string(),
            kind: kind.to_string(),
            state: state.to_string(),
            reason: reason.to_string(),
        }
    }

    /// Sets how many objects of `cloud` and `kind` are in `state` for `reason`.
    pub fn set_objects(&self, cloud: &str, kind: &str, state: &str, reason: &str, count: u32) {
        self.objects
            .get_or_create(&Self::object_labels(cloud, kind, state, reason))
            .set(i64::from(count));
    }

    /// Drops a series of [`Self::set_objects`].
    pub fn remove_objects(&self, cloud: &str, kind: &str, state: &str, reason: &str) {
        self.objects
            .remove(&Self::object_labels(cloud, kind, state, reason));
    }

    /// Sets a cloud's estimate of the time left, seconds.
    pub fn set_eta(&self, cloud: &str, seconds: f64) {
        self.eta_seconds
            .get_or_create(&CloudLabel {
                cloud: cloud.to_string(),
            })
            .set(seconds);
    }

    /// Drops a cloud's estimate (the cloud is gone).
    pub fn remove_eta(&self, cloud: &str) {
        self.eta_seconds.remove(&CloudLabel {
            cloud: cloud.to_string(),
        });
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
