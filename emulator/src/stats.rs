//! Counters for `GET /_emulator/stats`.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// What the emulator has served since start or the last reset.
#[derive(Debug, Default)]
pub struct Stats {
    pub http_requests: AtomicU64,
    pub batch_requests: AtomicU64,
    pub inner_calls: AtomicU64,
    pub rate_limited: AtomicU64,
    pub resets: AtomicU64,
    pub concurrent: AtomicU64,
    pub peak_concurrent: AtomicU64,
    pub by_method: Mutex<BTreeMap<String, u64>>,
    pub by_group: Mutex<BTreeMap<String, u64>>,
    pub errors: Mutex<BTreeMap<String, u64>>,
}

fn bump(map: &Mutex<BTreeMap<String, u64>>, key: &str) {
    let mut guard = match map.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    };
    *guard.entry(key.to_string()).or_insert(0) += 1;
}

fn snapshot(map: &Mutex<BTreeMap<String, u64>>) -> BTreeMap<String, u64> {
    match map.lock() {
        Ok(guard) => guard.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    }
}

/// Holds one in-flight HTTP request in the concurrency gauge.
pub struct InFlight<'a>(&'a Stats);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.concurrent.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Stats {
    /// Counts an HTTP request and holds it in the concurrency gauge until dropped.
    pub fn request(&self) -> InFlight<'_> {
        self.http_requests.fetch_add(1, Ordering::Relaxed);
        let now = self.concurrent.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak_concurrent.fetch_max(now, Ordering::Relaxed);
        InFlight(self)
    }

    /// Counts one Compute call (direct or inside a batch) by method and rate group.
    pub fn call(&self, method: &str, group: &str) {
        self.inner_calls.fetch_add(1, Ordering::Relaxed);
        bump(&self.by_method, method);
        bump(&self.by_group, group);
    }

    /// Counts an error answer by reason.
    pub fn error(&self, reason: &str) {
        if reason == "rateLimitExceeded" {
            self.rate_limited.fetch_add(1, Ordering::Relaxed);
        }
        bump(&self.errors, reason);
    }

    /// Zeroes everything.
    pub fn reset(&self) {
        for counter in [
            &self.http_requests,
            &self.batch_requests,
            &self.inner_calls,
            &self.rate_limited,
            &self.resets,
            &self.peak_concurrent,
        ] {
            counter.store(0, Ordering::Relaxed);
        }
        for map in [&self.by_method, &self.by_group, &self.errors] {
            match map.lock() {
                Ok(mut guard) => guard.clear(),
                Err(poisoned) => poisoned.into_inner().clear(),
            }
        }
    }

    /// The JSON served by `/_emulator/stats`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "httpRequests": self.http_requests.load(Ordering::Relaxed),
            "batchRequests": self.batch_requests.load(Ordering::Relaxed),
            "innerCalls": self.inner_calls.load(Ordering::Relaxed),
            "rateLimited": self.rate_limited.load(Ordering::Relaxed),
            "connectionResets": self.resets.load(Ordering::Relaxed),
            "peakConcurrentRequests": self.peak_concurrent.load(Ordering::Relaxed),
            "callsByMethod": snapshot(&self.by_method),
            "callsByGroup": snapshot(&self.by_group),
            "errorsByReason": snapshot(&self.errors),
        })
    }
}
