//! The one read path: every GET and list page of the engine (inventory refreshes, operation
//! polls, read-backs, checks) goes through the same client, the same rate budget and the same
//! retry policy. Writes go through the queue (`queue.rs`) instead.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::budget::{Budget, Lane, RateGroup};
use super::client::{Answer, Call, ComputeClient, Transport};
use super::error::GcpError;
use super::metrics::GcpMetrics;
use super::queue::backoff;

/// The client, the budget and the retry policy of one project.
pub struct Reader {
    pub client: ComputeClient,
    pub budget: Budget,
    pub metrics: Arc<GcpMetrics>,
    /// How calls travel (one batch request for many, or one request each).
    pub transport: Transport,
    /// Attempts per read before its error is final.
    max_attempts: u32,
    time_scale: f64,
    stopped: AtomicBool,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("transport", &self.transport)
            .finish_non_exhaustive()
    }
}

impl Reader {
    pub fn new(
        client: ComputeClient,
        budget: Budget,
        metrics: Arc<GcpMetrics>,
        transport: Transport,
        max_attempts: u32,
        time_scale: f64,
    ) -> Self {
        Self {
            client,
            budget,
            metrics,
            transport,
            max_attempts: max_attempts.max(1),
            time_scale,
            stopped: AtomicBool::new(false),
        }
    }

    /// Stops: reads in progress end with [`GcpError::Shutdown`] at their next step.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Relaxed);
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Relaxed)
    }

    /// `duration` in the engine's time.
    pub fn scaled(&self, duration: Duration) -> Duration {
        super::settings::scaled(duration, self.time_scale)
    }

    pub fn time_scale(&self) -> f64 {
        self.time_scale
    }

    /// What a failed read (a GET or a list page) does next: try again after the returned pause
    /// (none: a rate limit, the budget decides when), or give up with the error. A retryable
    /// error counts toward `max_attempts`.
    pub fn after_failure(
        &self,
        err: GcpError,
        failures: &mut u32,
    ) -> Result<Option<Duration>, GcpError> {
        if err.is_rate_limited() {
            self.budget.penalize(
                RateGroup::Read,
                "",
                err.retry_after(),
                rand::random(),
                tokio::time::Instant::now(),
            );
            return Ok(None);
        }
        if !err.is_retryable() {
            return Err(err);
        }
        *failures += 1;
        if *failures >= self.max_attempts {
            return Err(GcpError::Exhausted {
                attempts: *failures,
                last: Box::new(err),
            });
        }
        Ok(Some(backoff(
            *failures - 1,
            self.time_scale,
            rand::random(),
        )))
    }

    /// One read (a GET) through the read budget, retried. The final error (e.g. 404) is
    /// returned as it came.
    pub async fn get(&self, call: &Call) -> Result<Answer, GcpError> {
        let mut failures = 0u32;
        loop {
            if self.is_stopped() {
                return Err(GcpError::Shutdown);
            }
            self.budget
                .acquire(RateGroup::Read, "", 1, Lane::Bulk)
                .await;
            match self.client.send(call).await {
                Ok(answer) => return Ok(answer),
                Err(err) => {
                    if let Some(pause) = self.after_failure(err, &mut failures)? {
                        tokio::time::sleep(pause).await;
                    }
                }
            }
        }
    }

    /// Many calls at once, through the transport (one batch request when batched); budget is
    /// the caller's to take.
    pub async fn exchange(&self, calls: Vec<Call>) -> Vec<Result<Answer, GcpError>> {
        self.client.exchange(self.transport, calls).await
    }
}
