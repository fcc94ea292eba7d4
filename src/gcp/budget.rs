//! The project's per-minute rate quotas, spent on the client side before GCP refuses anything.
//!
//! Compute counts every call (each inner call of a batch too) against a per-minute group, in
//! fixed windows aligned to wall-clock minutes (§5). The budget mirrors that: each group has the
//! configured number of calls per window. Bulk work is also paced evenly across the window, so
//! urgent work (failover, deletes) arriving mid-window still finds budget.
//!
//! A `rateLimitExceeded` answer that says the window is spent — most calls of the window refused,
//! or a tenth of its quota refused — closes the group until the next window (§4: "wait a minute
//! then try again"), as does the server's Retry-After. A stray refusal among answers that go
//! through (a blip, or another client's burst) only pauses the group for a moment: closing the
//! group for up to a minute on each one would stall the whole fleet on noise.
//!
//! §N in this file are sections of docs/compute-api.md.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// The quota group a call is charged to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RateGroup {
    /// get and list.
    Read,
    /// Global insert, delete, patch.
    Write,
    /// Operations get, list, wait.
    OperationRead,
    /// Regional and zonal writes (per region).
    RegionalWrite,
}

impl RateGroup {
    /// Metrics label.
    pub fn label(self) -> &'static str {
        match self {
            RateGroup::Read => "read",
            RateGroup::Write => "write",
            RateGroup::OperationRead => "operation_read",
            RateGroup::RegionalWrite => "regional_write",
        }
    }
}

/// Per-minute quotas of one project.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimits {
    pub reads_per_minute: u64,
    pub writes_per_minute: u64,
    pub operation_reads_per_minute: u64,
    pub regional_writes_per_minute: u64,
}

impl Default for RateLimits {
    /// The long-documented default of 1,500 calls per minute per group (§5).
    fn default() -> Self {
        Self {
            reads_per_minute: 1500,
            writes_per_minute: 1500,
            operation_reads_per_minute: 1500,
            regional_writes_per_minute: 1500,
        }
    }
}

#[derive(Debug)]
struct Group {
    limit: u64,
    window_index: u64,
    used: u64,
    blocked_until: Option<Instant>,
    /// Calls of this window GCP refused as rate-limited.
    refused: u64,
    pace_tokens: f64,
    pace_at: Instant,
}

/// The budget of one project. Every method takes the time it is asked at (`now`): the budget
/// never reads the clock after it is made, so the queue that spends it is deterministic.
#[derive(Debug)]
pub struct Budget {
    limits: RateLimits,
    window: Duration,
    /// One instant and the wall-clock time at it, in milliseconds since the Unix epoch: windows
    /// are aligned to wall-clock minutes like GCP's.
    anchor: (Instant, u128),
    groups: Mutex<HashMap<(RateGroup, String), Group>>,
}

impl Budget {
    /// A budget with the quotas per `window` (60 s, times the engine's time scale).
    pub fn new(limits: RateLimits, window: Duration) -> Self {
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        Self::anchored(limits, window, Instant::now(), unix)
    }

    /// A budget whose clock reads `unix_millis` at `at` (tests choose where in a window they are).
    pub fn anchored(limits: RateLimits, window: Duration, at: Instant, unix_millis: u128) -> Self {
        Self {
            limits,
            window: window.max(Duration::from_millis(10)),
            anchor: (at, unix_millis),
            groups: Mutex::new(HashMap::new()),
        }
    }

    /// The length of a rate window.
    pub fn window(&self) -> Duration {
        self.window
    }

    fn unix_millis(&self, now: Instant) -> u128 {
        let (at, unix) = self.anchor;
        unix + now.saturating_duration_since(at).as_millis()
    }

    fn limit(&self, group: RateGroup) -> u64 {
        match group {
            RateGroup::Read => self.limits.reads_per_minute,
            RateGroup::Write => self.limits.writes_per_minute,
            RateGroup::OperationRead => self.limits.operation_reads_per_minute,
            RateGroup::RegionalWrite => self.limits.regional_writes_per_minute,
        }
        .max(1)
    }

    fn window_index(&self, now: Instant) -> u64 {
        (self.unix_millis(now) / self.window.as_millis().max(1)) as u64
    }

    /// When the window `now` is in ends.
    pub fn window_end(&self, now: Instant) -> Instant {
        let window_ms = self.window.as_millis().max(1);
        let into = self.unix_millis(now) % window_ms;
        now + Duration::from_millis((window_ms - into) as u64)
    }

    fn with_group<R>(
        &self,
        group: RateGroup,
        region: &str,
        now: Instant,
        f: impl FnOnce(&mut Group, u64) -> R,
    ) -> R {
        let index = self.window_index(now);
        let limit = self.limit(group);
        let mut groups = match self.groups.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let state = groups
            .entry((group, region.to_string()))
            .or_insert_with(|| Group {
                limit,
                window_index: index,
                used: 0,
                blocked_until: None,
                refused: 0,
                pace_tokens: (limit as f64 / 20.0).max(1.0),
                pace_at: now,
            });
        if state.window_index != index {
            state.window_index = index;
            state.used = 0;
            state.refused = 0;
        }
        f(state, index)
    }

    /// Takes up to `wanted` calls' worth of budget now and returns how many were granted.
    /// `paced` work (bulk) is also held to an even rate across the window.
    pub fn take(
        &self,
        group: RateGroup,
        region: &str,
        wanted: usize,
        paced: bool,
        now: Instant,
    ) -> usize {
        let window = self.window;
        self.with_group(group, region, now, |state, _| {
            if state.blocked_until.is_some_and(|until| until > now) {
                return 0;
            }
            state.blocked_until = None;
            let mut granted = (state.limit.saturating_sub(state.used)).min(wanted as u64);
            if paced {
                let rate = state.limit as f64 / window.as_secs_f64();
                let cap = (state.limit as f64 / 20.0).max(1.0);
                let elapsed = now.saturating_duration_since(state.pace_at).as_secs_f64();
                state.pace_tokens = (state.pace_tokens + elapsed * rate).min(cap);
                state.pace_at = now;
                granted = granted.min(state.pace_tokens.floor() as u64);
                state.pace_tokens -= granted as f64;
            }
            state.used += granted;
            granted as usize
        })
    }

    /// Returns budget taken for calls that were not sent after all.
    pub fn give_back(
        &self,
        group: RateGroup,
        region: &str,
        count: usize,
        paced: bool,
        now: Instant,
    ) {
        self.with_group(group, region, now, |state, _| {
            state.used = state.used.saturating_sub(count as u64);
            if paced {
                state.pace_tokens += count as f64;
            }
        });
    }

    /// When taking budget of this group may succeed again.
    pub fn next_chance(
        &self,
        group: RateGroup,
        region: &str,
        paced: bool,
        now: Instant,
    ) -> Instant {
        let window_end = self.window_end(now);
        let window = self.window;
        self.with_group(group, region, now, |state, _| {
            if let Some(until) = state.blocked_until.filter(|u| *u > now) {
                return until;
            }
            if state.used >= state.limit {
                return window_end;
            }
            // Paced work waits for a few calls' worth, so a saturated pipe carries batches
            // rather than single calls.
            let cap = (state.limit as f64 / 20.0).max(1.0);
            let enough = cap.min(10.0);
            if paced && state.pace_tokens < enough {
                let rate = state.limit as f64 / window.as_secs_f64();
                let missing = enough - state.pace_tokens;
                return now + Duration::from_secs_f64(missing / rate);
            }
            now
        })
    }

    /// GCP refused a call of this group as rate-limited. When the window looks spent (see the
    /// module doc) nothing more is sent until the next window (plus `jitter`, a fraction in
    /// 0..1 of 2 % of a window, so that clients do not return at once) or the server's
    /// Retry-After; otherwise the group pauses for a 120th of a window.
    pub fn penalize(
        &self,
        group: RateGroup,
        region: &str,
        retry_after: Option<Duration>,
        jitter: f64,
        now: Instant,
    ) {
        let jitter = self.window.mul_f64(jitter.clamp(0.0, 1.0) * 0.02);
        let window_end = self.window_end(now) + jitter;
        let pause = now + self.window / 120;
        self.with_group(group, region, now, |state, _| {
            state.refused += 1;
            let spent = (state.refused >= 3 && 2 * state.refused >= state.used)
                || state.refused >= (state.limit / 10).max(3);
            let until = match retry_after {
                Some(wait) => now + wait,
                None if spent => window_end,
                None => pause,
            };
            if spent {
                state.used = state.limit;
            }
            state.blocked_until = Some(
                state
                    .blocked_until
                    .map_or(until, |current| current.max(until)),
            );
        });
    }

    /// Waits until `wanted` calls' worth (at least one) can be taken, paced like bulk work;
    /// returns how many were.
    pub async fn acquire(&self, group: RateGroup, region: &str, wanted: usize) -> usize {
        loop {
            let now = Instant::now();
            let granted = self.take(group, region, wanted, true, now);
            if granted > 0 {
                return granted;
            }
            tokio::time::sleep_until(self.next_chance(group, region, true, now)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A budget at the start of a window, and that instant.
    fn at_start(limits: RateLimits, window: Duration) -> (Budget, Instant) {
        let t0 = Instant::now();
        (Budget::anchored(limits, window, t0, 0), t0)
    }

    fn limits(writes: u64) -> RateLimits {
        RateLimits {
            writes_per_minute: writes,
            ..RateLimits::default()
        }
    }

    #[test]
    fn a_window_grants_its_quota_and_no_more() {
        let (budget, t0) = at_start(limits(100), Duration::from_secs(3600));
        assert_eq!(budget.take(RateGroup::Write, "", 60, false, t0), 60);
        assert_eq!(budget.take(RateGroup::Write, "", 60, false, t0), 40);
        assert_eq!(budget.take(RateGroup::Write, "", 1, false, t0), 0);
        assert!(budget.next_chance(RateGroup::Write, "", false, t0) > t0);
        budget.give_back(RateGroup::Write, "", 10, false, t0);
        assert_eq!(budget.take(RateGroup::Write, "", 50, false, t0), 10);
        assert_eq!(
            budget.take(RateGroup::Read, "", 5, false, t0),
            5,
            "groups are separate"
        );
    }

    #[test]
    fn paced_work_is_held_to_an_even_rate() {
        let (budget, t0) = at_start(limits(1200), Duration::from_secs(3600));
        // Pacing allows a burst of 5 % of the window's quota, not the whole quota.
        assert_eq!(budget.take(RateGroup::Write, "", 1000, true, t0), 60);
        assert_eq!(budget.take(RateGroup::Write, "", 1000, true, t0), 0);
        // Urgent work is not paced: it still finds the rest of the window.
        assert_eq!(budget.take(RateGroup::Write, "", 2000, false, t0), 1140);
    }

    #[test]
    fn a_stray_refusal_pauses_and_a_spent_window_closes() {
        let window = Duration::from_secs(3600);
        // Whether the group's window counts as spent (closed until its end).
        let spent = |budget: &Budget, t0: Instant| {
            budget.with_group(RateGroup::Write, "", t0, |s, _| s.used == s.limit)
        };
        let (budget, t0) = at_start(limits(1000), window);
        assert_eq!(budget.take(RateGroup::Write, "", 400, false, t0), 400);
        // A few refusals among 400 answers: a pause of a 120th of the window, no more.
        for _ in 0..5 {
            budget.penalize(RateGroup::Write, "", None, 0.5, t0);
        }
        assert!(!spent(&budget, t0));
        assert!(budget.next_chance(RateGroup::Write, "", false, t0) <= t0 + window / 120);

        // Early in a window, most calls refused: someone else spent it.
        let (budget, t0) = at_start(limits(1000), window);
        assert_eq!(budget.take(RateGroup::Write, "", 4, false, t0), 4);
        for _ in 0..2 {
            budget.penalize(RateGroup::Write, "", None, 0.5, t0);
        }
        assert!(!spent(&budget, t0), "two refusals are not yet a pattern");
        budget.penalize(RateGroup::Write, "", None, 0.5, t0);
        assert!(spent(&budget, t0));
        assert_eq!(budget.take(RateGroup::Write, "", 1, false, t0), 0);

        // Late in a window, a tenth of the quota refused: spent as well.
        let (budget, t0) = at_start(limits(100), window);
        assert_eq!(budget.take(RateGroup::Write, "", 90, false, t0), 90);
        for _ in 0..9 {
            budget.penalize(RateGroup::Write, "", None, 0.5, t0);
        }
        assert!(!spent(&budget, t0));
        budget.penalize(RateGroup::Write, "", None, 0.5, t0);
        assert!(spent(&budget, t0));
    }

    #[test]
    fn rate_limited_answers_close_the_group() {
        let (budget, t0) = at_start(limits(100), Duration::from_secs(3600));
        budget.penalize(RateGroup::Write, "", Some(Duration::from_secs(30)), 0.5, t0);
        assert_eq!(budget.take(RateGroup::Write, "", 1, false, t0), 0);
        let next = budget.next_chance(RateGroup::Write, "", false, t0);
        assert!(next >= t0 + Duration::from_secs(29));
        assert_eq!(
            budget.take(RateGroup::RegionalWrite, "us-central1", 1, false, t0),
            1
        );
    }
}
