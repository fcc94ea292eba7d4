//! The project's per-minute rate quotas, spent on the client side before GCP refuses anything.
//!
//! Compute counts every call (each inner call of a batch too) against a per-minute group, in
//! fixed windows aligned to wall-clock minutes (§5). Quota a window does not spend is lost, so
//! the budget lets work **burst**: a change that fits in what is left of the window goes at once
//! and is done one operation duration later. Bulk work may spend a window's quota up to a
//! **reserve** kept for urgent work (failover withdrawals, deletes), so a failover that starts
//! in the middle of a burst still finds budget in the same window. Bulk work keeps a guard (a
//! sixtieth of the window, [`GUARD_FRACTION`]; at least [`MIN_GUARD`] in a window compressed for
//! tests and benchmarks, at most an eighth of it) away from each boundary,
//! so that neither window is charged calls meant for the other. The reserve is released to bulk
//! work a sixtieth of the window before that guard (two seconds before the end at 60 s): urgent
//! work that arrives after that waits at most that long for the next window, where it goes
//! first.
//!
//! A `rateLimitExceeded` answer that says the window is spent — most calls of the window refused,
//! or a tenth of its quota refused — closes the group until the next window (§4: "wait a minute
//! then try again"), as does the server's Retry-After. A stray refusal among answers that go
//! through (a blip, or another client's burst) only pauses the group for a moment: closing the
//! group for up to a minute on each one would stall the whole fleet on noise.
//!
//! A budget made in the middle of a window ([`Budget::probing_first_window`], as an engine's is)
//! does not know what that window has spent: the replica that held the cloud before a takeover,
//! or the pod before a rolling update, may have sent its burst at the window's start. Until one
//! write of the window is answered without a rate limit ([`Budget::confirm`]), bulk work sends
//! only [`PROBE_CALLS`] writes: if the window is spent, they are refused, the refusals close it,
//! and the rest waits for the next window instead of being refused too.
//!
//! §N in this file are sections of docs/compute-api.md.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// Bulk work sends nothing within this part of a window of either of its boundaries: a burst
/// sent just before a boundary could be counted in the next window, and one sent just after it
/// in the last, by a server whose clock is not quite ours (a second at 60 s). The reserve is
/// released this part of a window before the guard at the window's end.
pub const GUARD_FRACTION: u32 = 60;

/// The guard never shrinks below this (nor grows past an eighth of the window), whatever the
/// time scale: taking budget, building a batch and its reaching the server take about as long
/// in a compressed window as in a real one.
pub const MIN_GUARD: Duration = Duration::from_millis(100);

/// The writes bulk work sends in a budget's first window before one is answered: enough for
/// their refusals to show a spent window (three, see [`Budget::penalize`]).
pub const PROBE_CALLS: u64 = 5;

/// How far from a boundary of a window of `window` bulk work keeps.
fn guard_for(window: Duration) -> Duration {
    (window / GUARD_FRACTION).max(MIN_GUARD).min(window / 8)
}

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
    /// Whether calls of the group are writes (what a burst spends).
    pub fn is_write(self) -> bool {
        matches!(self, RateGroup::Write | RateGroup::RegionalWrite)
    }

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

/// Which work a call is: it decides whether the urgent reserve may be spent on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lane {
    /// Failover, deletes and the instance polls that detect a failover: sent before any bulk
    /// work, and may spend the whole window.
    Urgent,
    /// Bulk creation and reads: spends each window up to the urgent reserve, as early as the
    /// work allows.
    Bulk,
}

impl Lane {
    /// The metrics label.
    pub fn label(self) -> &'static str {
        match self {
            Lane::Urgent => "urgent",
            Lane::Bulk => "bulk",
        }
    }
}

/// How much of each window's quota bulk work leaves unspent for urgent work
/// (`spec.rateLimit.urgentReserve`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reserve {
    /// A percentage of the group's quota per window, rounded up.
    Percent(u32),
    /// A number of calls per window.
    Calls(u64),
}

impl Default for Reserve {
    /// A quarter of the window: at the default 1,500 writes per minute, 375 withdrawals, 75
    /// engines of five objects each, can go in the window a failover starts in. Measured: at
    /// 10 %, 100 engines stopped during a rollout withdrew their 175–178 routes in 63–69 s,
    /// against 22–29 s idle, the rest waiting for the next window (bench/README.md).
    fn default() -> Self {
        Reserve::Percent(25)
    }
}

impl Reserve {
    /// The calls kept back of a window of `limit`; bulk work always keeps at least one call.
    pub fn calls(self, limit: u64) -> u64 {
        let calls = match self {
            Reserve::Percent(percent) => (limit * u64::from(percent.min(100))).div_ceil(100),
            Reserve::Calls(calls) => calls,
        };
        calls.min(limit.saturating_sub(1))
    }
}

/// Per-minute quotas of one project.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimits {
    pub reads_per_minute: u64,
    pub writes_per_minute: u64,
    pub operation_reads_per_minute: u64,
    pub regional_writes_per_minute: u64,
    /// Kept for urgent work in every group's window.
    pub urgent_reserve: Reserve,
}

impl Default for RateLimits {
    /// The long-documented default of 1,500 calls per minute per group (§5).
    fn default() -> Self {
        Self {
            reads_per_minute: 1500,
            writes_per_minute: 1500,
            operation_reads_per_minute: 1500,
            regional_writes_per_minute: 1500,
            urgent_reserve: Reserve::default(),
        }
    }
}

#[derive(Debug)]
struct Group {
    group: RateGroup,
    limit: u64,
    /// Calls of each window bulk work leaves to urgent work until the release.
    reserve: u64,
    window_index: u64,
    used: u64,
    blocked_until: Option<Instant>,
    /// Calls of this window GCP refused as rate-limited.
    refused: u64,
    /// A call of this window was answered without a rate limit (what the window had spent before
    /// this budget was made no longer matters: GCP has room).
    confirmed: bool,
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
    /// The window this budget was made in, when its writes probe it first
    /// ([`Budget::probing_first_window`]).
    probe_window: Option<u64>,
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
            probe_window: None,
            groups: Mutex::new(HashMap::new()),
        }
    }

    /// This budget's writes probe the window it was made in (see the module doc): someone else
    /// may have spent it. An engine's budget does; tests that choose their instant do not.
    pub fn probing_first_window(mut self) -> Self {
        let (at, _) = self.anchor;
        self.probe_window = Some(self.window_index(at));
        self
    }

    /// A call of `group` was answered without a rate limit: the window `now` is in has room,
    /// and writes no longer probe it. Returns whether writes were held for it.
    pub fn confirm(&self, group: RateGroup, region: &str, now: Instant) -> bool {
        self.with_group(group, region, now, |state| {
            let held = self.probing(state);
            state.confirmed = true;
            held
        })
    }

    /// Whether `now` is in the window this budget probes (writes may be held to a probe).
    pub fn probes_at(&self, now: Instant) -> bool {
        self.probe_window == Some(self.window_index(now))
    }

    /// Whether bulk writes of the group are held to [`PROBE_CALLS`] in its window.
    fn probing(&self, state: &Group) -> bool {
        state.group.is_write() && !state.confirmed && self.probe_window == Some(state.window_index)
    }

    /// The length of a rate window.
    pub fn window(&self) -> Duration {
        self.window
    }

    fn unix_millis(&self, now: Instant) -> u128 {
        let (at, unix) = self.anchor;
        if now >= at {
            unix + (now - at).as_millis()
        } else {
            unix.saturating_sub((at - now).as_millis())
        }
    }

    /// A group's quota per window.
    pub fn limit(&self, group: RateGroup) -> u64 {
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

    /// How far from a window boundary bulk work keeps.
    fn guard(&self) -> Duration {
        guard_for(self.window)
    }

    /// When the window `now` is in releases its urgent reserve to bulk work.
    pub fn release_at(&self, now: Instant) -> Instant {
        self.window_end(now) - self.guard() - self.window / GUARD_FRACTION
    }

    fn with_group<R>(
        &self,
        group: RateGroup,
        region: &str,
        now: Instant,
        f: impl FnOnce(&mut Group) -> R,
    ) -> R {
        let index = self.window_index(now);
        let limit = self.limit(group);
        let reserve = self.limits.urgent_reserve.calls(limit);
        let mut groups = match self.groups.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let state = groups
            .entry((group, region.to_string()))
            .or_insert_with(|| Group {
                group,
                limit,
                reserve,
                window_index: index,
                used: 0,
                blocked_until: None,
                refused: 0,
                confirmed: false,
            });
        if state.window_index != index {
            state.window_index = index;
            state.used = 0;
            state.refused = 0;
            state.confirmed = false;
        }
        f(state)
    }

    /// Whether `now` is within [`GUARD_FRACTION`] of a window boundary, where bulk work sends
    /// nothing.
    fn near_boundary(&self, now: Instant) -> bool {
        let guard = self.guard();
        let to_end = self.window_end(now).saturating_duration_since(now);
        to_end <= guard || self.window - to_end < guard
    }

    /// What work of `lane` may still spend of the group's window at `now`.
    fn room(&self, state: &Group, lane: Lane, now: Instant) -> u64 {
        let ceiling = match lane {
            Lane::Bulk if self.near_boundary(now) => return 0,
            Lane::Bulk if now < self.release_at(now) => state.limit - state.reserve,
            _ => state.limit,
        };
        let ceiling = match lane {
            Lane::Bulk if self.probing(state) => ceiling.min(PROBE_CALLS),
            _ => ceiling,
        };
        ceiling.saturating_sub(state.used)
    }

    /// Takes up to `wanted` calls' worth of budget now and returns how many were granted: all
    /// the window has left for urgent work, up to the reserve for bulk work.
    pub fn take(
        &self,
        group: RateGroup,
        region: &str,
        wanted: usize,
        lane: Lane,
        now: Instant,
    ) -> usize {
        self.with_group(group, region, now, |state| {
            if state.blocked_until.is_some_and(|until| until > now) {
                return 0;
            }
            state.blocked_until = None;
            let granted = self.room(state, lane, now).min(wanted as u64);
            state.used += granted;
            granted as usize
        })
    }

    /// What bulk work of `group` may still spend of the window `now` is in (a look: nothing is
    /// taken).
    pub fn bulk_room(&self, group: RateGroup, region: &str, now: Instant) -> u64 {
        self.with_group(group, region, now, |state| {
            if state.blocked_until.is_some_and(|until| until > now) {
                0
            } else {
                self.room(state, Lane::Bulk, now)
            }
        })
    }

    /// When taking budget of this group for `lane` may succeed again: now, the release of the
    /// reserve (bulk work that spent up to it), the next window, or the end of a block.
    pub fn next_chance(&self, group: RateGroup, region: &str, lane: Lane, now: Instant) -> Instant {
        self.with_group(group, region, now, |state| {
            if let Some(until) = state.blocked_until.filter(|u| *u > now) {
                return until;
            }
            if self.room(state, lane, now) > 0 {
                return now;
            }
            if lane == Lane::Bulk && self.probing(state) && state.used < state.limit {
                // The probe's answers confirm the window (and the engine wakes its queue then);
                // a probe that got no answer at all is looked at again after a pause.
                return now + self.window / 120;
            }
            let end = self.window_end(now);
            let guard = match lane {
                Lane::Urgent => Duration::ZERO,
                Lane::Bulk => self.guard(),
            };
            let opens = end - self.window + guard;
            let release = self.release_at(now);
            if lane == Lane::Bulk && now < opens && state.used < state.limit - state.reserve {
                opens
            } else if lane == Lane::Bulk && now < release && state.used < state.limit {
                release
            } else {
                end + guard
            }
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
        self.with_group(group, region, now, |state| {
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

    /// Waits until `wanted` calls' worth (at least one) of `lane` can be taken; returns how
    /// many were.
    pub async fn acquire(
        &self,
        group: RateGroup,
        region: &str,
        wanted: usize,
        lane: Lane,
    ) -> usize {
        loop {
            let now = Instant::now();
            let granted = self.take(group, region, wanted, lane, now);
            if granted > 0 {
                return granted;
            }
            tokio::time::sleep_until(self.next_chance(group, region, lane, now)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A budget at the first instant of a window bulk work may send in (the window's start plus
    /// its guard), and that instant.
    fn at_start(limits: RateLimits, window: Duration) -> (Budget, Instant) {
        let t0 = Instant::now();
        let guard = guard_for(window).as_millis();
        (Budget::anchored(limits, window, t0, guard), t0)
    }

    /// `writes` per window, a tenth of them kept for urgent work.
    fn limits(writes: u64) -> RateLimits {
        RateLimits {
            writes_per_minute: writes,
            urgent_reserve: Reserve::Percent(10),
            ..RateLimits::default()
        }
    }

    #[test]
    fn a_window_grants_its_quota_and_no_more() {
        let (budget, t0) = at_start(limits(100), Duration::from_secs(3600));
        assert_eq!(budget.take(RateGroup::Write, "", 60, Lane::Urgent, t0), 60);
        assert_eq!(budget.take(RateGroup::Write, "", 60, Lane::Urgent, t0), 40);
        assert_eq!(budget.take(RateGroup::Write, "", 1, Lane::Urgent, t0), 0);
        // The next window (60 s of guard after the start of the window t0 is in).
        assert_eq!(
            budget.next_chance(RateGroup::Write, "", Lane::Urgent, t0),
            t0 + Duration::from_secs(3600 - 60)
        );
        assert_eq!(
            budget.take(RateGroup::Read, "", 5, Lane::Bulk, t0),
            5,
            "groups are separate"
        );
    }

    #[test]
    fn bulk_work_bursts_up_to_the_reserve_and_urgent_work_finds_it() {
        let window = Duration::from_secs(60);
        let second = Duration::from_secs(1);
        let (budget, t0) = at_start(limits(1500), window);
        let start = t0 - second;
        // The whole window less a tenth, at once: no pacing.
        assert_eq!(
            budget.take(RateGroup::Write, "", 5000, Lane::Bulk, t0),
            1350
        );
        assert_eq!(budget.take(RateGroup::Write, "", 1, Lane::Bulk, t0), 0);
        // Bulk work waits for the release, two seconds before the window's end.
        let release = start + Duration::from_secs(58);
        assert_eq!(budget.release_at(t0), release);
        assert_eq!(
            budget.next_chance(RateGroup::Write, "", Lane::Bulk, t0),
            release
        );
        // A failover in the middle of the window spends the reserve.
        let mid = start + Duration::from_secs(30);
        assert_eq!(
            budget.take(RateGroup::Write, "", 100, Lane::Urgent, mid),
            100
        );
        assert_eq!(budget.take(RateGroup::Write, "", 1, Lane::Bulk, mid), 0);
        // At the release bulk work takes what is left, and then the window is spent.
        assert_eq!(
            budget.take(RateGroup::Write, "", 5000, Lane::Bulk, release),
            50
        );
        assert_eq!(
            budget.next_chance(RateGroup::Write, "", Lane::Bulk, release),
            start + window + second
        );
        // The next window starts over, a second after its start.
        let next = start + window;
        assert_eq!(budget.take(RateGroup::Write, "", 5000, Lane::Bulk, next), 0);
        assert_eq!(
            budget.take(RateGroup::Write, "", 5000, Lane::Bulk, next + second),
            1350
        );
    }

    #[test]
    fn bulk_work_keeps_away_from_the_boundaries_and_urgent_work_does_not() {
        let window = Duration::from_secs(60);
        let second = Duration::from_secs(1);
        let (budget, t0) = at_start(limits(1500), window);
        let start = t0 - second;
        // The window's first second: nothing for bulk work, which is told when it opens.
        assert_eq!(budget.take(RateGroup::Write, "", 10, Lane::Bulk, start), 0);
        assert_eq!(
            budget.next_chance(RateGroup::Write, "", Lane::Bulk, start),
            t0
        );
        assert_eq!(
            budget.take(RateGroup::Write, "", 10, Lane::Urgent, start),
            10
        );
        // The last second: nothing for bulk work until a second into the next window.
        let late = start + window - second / 2;
        assert_eq!(budget.take(RateGroup::Write, "", 10, Lane::Bulk, late), 0);
        assert_eq!(
            budget.next_chance(RateGroup::Write, "", Lane::Bulk, late),
            start + window + second
        );
        assert_eq!(
            budget.take(RateGroup::Write, "", 10, Lane::Urgent, late),
            10
        );
    }

    #[test]
    fn a_compressed_window_keeps_a_guard_long_enough_to_send_in() {
        // Time scale 0.01: a window of 0.6 s, whose sixtieth (10 ms) is less than sending takes;
        // the guard is 75 ms (an eighth of it, below the 100 ms floor).
        let window = Duration::from_millis(600);
        assert_eq!(guard_for(window), Duration::from_millis(75));
        assert_eq!(guard_for(Duration::from_secs(60)), Duration::from_secs(1));
        assert_eq!(guard_for(Duration::from_secs(6)), MIN_GUARD);
        let (budget, t0) = at_start(limits(300), window);
        let start = t0 - Duration::from_millis(75);
        assert_eq!(budget.take(RateGroup::Write, "", 500, Lane::Bulk, t0), 270);
        // Released 85 ms before the end: the guard and a sixtieth of the window.
        let release = start + Duration::from_millis(515);
        assert_eq!(budget.release_at(t0), release);
        assert_eq!(
            budget.take(RateGroup::Write, "", 500, Lane::Bulk, release),
            30
        );
        let late = start + Duration::from_millis(530);
        assert_eq!(
            budget.next_chance(RateGroup::Write, "", Lane::Bulk, late),
            start + window + Duration::from_millis(75)
        );
    }

    #[test]
    fn urgent_work_spent_early_still_leaves_the_reserve_free() {
        let (budget, t0) = at_start(limits(1000), Duration::from_secs(60));
        assert_eq!(budget.take(RateGroup::Write, "", 30, Lane::Urgent, t0), 30);
        // Bulk work keeps a hundred calls free whatever was spent before it.
        assert_eq!(budget.take(RateGroup::Write, "", 5000, Lane::Bulk, t0), 870);
        assert_eq!(
            budget.take(RateGroup::Write, "", 5000, Lane::Urgent, t0),
            100
        );
    }

    #[test]
    fn a_reserve_is_a_share_or_a_count_and_never_the_whole_window() {
        assert_eq!(Reserve::Percent(10).calls(1500), 150);
        assert_eq!(Reserve::Percent(10).calls(15), 2, "rounded up");
        assert_eq!(Reserve::Percent(0).calls(1500), 0);
        assert_eq!(Reserve::Percent(100).calls(1500), 1499);
        assert_eq!(Reserve::Calls(200).calls(1500), 200);
        assert_eq!(Reserve::Calls(5000).calls(1500), 1499);
        let no_reserve = RateLimits {
            urgent_reserve: Reserve::Percent(0),
            ..limits(100)
        };
        let (budget, t0) = at_start(no_reserve, Duration::from_secs(60));
        assert_eq!(budget.take(RateGroup::Write, "", 500, Lane::Bulk, t0), 100);
    }

    #[test]
    fn a_stray_refusal_pauses_and_a_spent_window_closes() {
        let window = Duration::from_secs(3600);
        // Whether the group's window counts as spent (closed until its end).
        let spent = |budget: &Budget, t0: Instant| {
            budget.with_group(RateGroup::Write, "", t0, |s| s.used == s.limit)
        };
        let (budget, t0) = at_start(limits(1000), window);
        assert_eq!(
            budget.take(RateGroup::Write, "", 400, Lane::Urgent, t0),
            400
        );
        // A few refusals among 400 answers: a pause of a 120th of the window, no more.
        for _ in 0..5 {
            budget.penalize(RateGroup::Write, "", None, 0.5, t0);
        }
        assert!(!spent(&budget, t0));
        assert!(budget.next_chance(RateGroup::Write, "", Lane::Urgent, t0) <= t0 + window / 120);

        // Early in a window, most calls refused: someone else spent it.
        let (budget, t0) = at_start(limits(1000), window);
        assert_eq!(budget.take(RateGroup::Write, "", 4, Lane::Urgent, t0), 4);
        for _ in 0..2 {
            budget.penalize(RateGroup::Write, "", None, 0.5, t0);
        }
        assert!(!spent(&budget, t0), "two refusals are not yet a pattern");
        budget.penalize(RateGroup::Write, "", None, 0.5, t0);
        assert!(spent(&budget, t0));
        assert_eq!(budget.take(RateGroup::Write, "", 1, Lane::Urgent, t0), 0);

        // Late in a window, a tenth of the quota refused: spent as well.
        let (budget, t0) = at_start(limits(100), window);
        assert_eq!(budget.take(RateGroup::Write, "", 90, Lane::Urgent, t0), 90);
        for _ in 0..9 {
            budget.penalize(RateGroup::Write, "", None, 0.5, t0);
        }
        assert!(!spent(&budget, t0));
        budget.penalize(RateGroup::Write, "", None, 0.5, t0);
        assert!(spent(&budget, t0));
    }

    #[test]
    fn writes_probe_the_window_a_budget_is_made_in() {
        let window = Duration::from_secs(60);
        let half = window / 2;
        // Made in the middle of a window: five bulk writes, then nothing until one is answered.
        let t0 = Instant::now();
        let budget =
            Budget::anchored(limits(1500), window, t0, half.as_millis()).probing_first_window();
        assert_eq!(
            budget.take(RateGroup::Write, "", 500, Lane::Bulk, t0),
            PROBE_CALLS as usize
        );
        assert_eq!(budget.take(RateGroup::Write, "", 1, Lane::Bulk, t0), 0);
        assert_eq!(budget.bulk_room(RateGroup::Write, "", t0), 0);
        assert_eq!(
            budget.next_chance(RateGroup::Write, "", Lane::Bulk, t0),
            t0 + window / 120,
            "held for the probe's answer, looked at again soon"
        );
        // Urgent work, reads and other regions' writes are not held.
        assert_eq!(budget.take(RateGroup::Write, "", 10, Lane::Urgent, t0), 10);
        assert_eq!(budget.take(RateGroup::Read, "", 100, Lane::Bulk, t0), 100);
        assert_eq!(
            budget.take(RateGroup::RegionalWrite, "r1", 100, Lane::Bulk, t0),
            PROBE_CALLS as usize
        );
        // An answer with room: the rest of the window's bulk share goes.
        assert!(budget.confirm(RateGroup::Write, "", t0));
        assert!(!budget.confirm(RateGroup::Write, "", t0), "confirmed once");
        assert_eq!(
            budget.take(RateGroup::Write, "", 5000, Lane::Bulk, t0),
            1350 - 15
        );

        // The window was spent before: the probe is refused, the refusals close the window, and
        // the next one is burst into without a probe.
        let budget =
            Budget::anchored(limits(1500), window, t0, half.as_millis()).probing_first_window();
        let granted = budget.take(RateGroup::Write, "", 500, Lane::Bulk, t0);
        for _ in 0..granted {
            budget.penalize(RateGroup::Write, "", None, 0.0, t0);
        }
        let next_window = t0 + half;
        assert_eq!(
            budget.next_chance(RateGroup::Write, "", Lane::Bulk, t0),
            next_window
        );
        let opens = next_window + guard_for(window);
        assert!(budget.probes_at(t0) && !budget.probes_at(opens));
        assert_eq!(
            budget.take(RateGroup::Write, "", 5000, Lane::Bulk, opens),
            1350
        );

        // A budget that does not probe (chosen instants in tests) bursts at once.
        let budget = Budget::anchored(limits(1500), window, t0, half.as_millis());
        assert_eq!(
            budget.take(RateGroup::Write, "", 5000, Lane::Bulk, t0),
            1350
        );
    }

    #[test]
    fn rate_limited_answers_close_the_group() {
        let (budget, t0) = at_start(limits(100), Duration::from_secs(3600));
        budget.penalize(RateGroup::Write, "", Some(Duration::from_secs(30)), 0.5, t0);
        assert_eq!(budget.take(RateGroup::Write, "", 1, Lane::Urgent, t0), 0);
        let next = budget.next_chance(RateGroup::Write, "", Lane::Bulk, t0);
        assert!(next >= t0 + Duration::from_secs(29));
        assert_eq!(
            budget.take(RateGroup::RegionalWrite, "us-central1", 1, Lane::Bulk, t0),
            1
        );
    }
}
