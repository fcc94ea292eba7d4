//! Resyncs that read what changed. Routes and firewall rules are most of a network's
//! inventory (two routes and a rule per per-VIP VirtualService: 60 pages of 500 at 10,000
//! objects), and a converged fleet's resync found them unchanged. Every change to either goes
//! through a global operation of the network's project, and Compute keeps a completed operation
//! at least an hour (`../shared/reference/gce-api.md` §8, OPSDOC). So a resync reads the
//! project's global operations newest first (`orderBy=creationTimestamp desc`, one page when
//! nothing happened) back to where the last read ended, and lists again only the routes and
//! rules those operations name, by name. Routes and rules are still listed whole at the first
//! resync, at least every [`FULL_EVERY`], when the last read of the log is older than
//! [`LOG_TRUSTED_FOR`], and when the log holds more than [`MAX_LOG_PAGES`] pages since the last
//! read (a rollout: listing whole is cheaper then). An engine that completed more route and
//! rule changes itself since the last read than those pages hold knows the log overflows before
//! reading it, and lists whole after one page.
//!
//! Where a read of the log starts: at the oldest operation that was still running when the
//! last read saw it (it may have changed its target since), or else at the newest one it saw,
//! skipping the operations at exactly that instant it saw done. An operation the log lists is
//! done before the by-name reads that follow begin, so its effect is in what they return.
//!
//! This module decides; `refresh.rs` reads. Time is passed in.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;
use serde::Deserialize;

/// Routes and firewall rules are listed whole at least this often, whatever the log says: what
/// the log cannot show (an operation still running that a whole list's first log page did not
/// reach, a log Compute trimmed early) is found within this.
pub(crate) const FULL_EVERY: Duration = Duration::from_secs(3600);
/// A log read older than this is not where the next one starts: Compute keeps completed
/// operations at least an hour (OPSDOC), and the next read must reach back to its start.
pub(crate) const LOG_TRUSTED_FOR: Duration = Duration::from_secs(45 * 60);
/// Pages of the log one resync reads before it lists routes and rules whole instead.
pub(crate) const MAX_LOG_PAGES: usize = 4;
/// Names per `name eq (a|b|…)` filter of a read by name (see `refresh.rs`).
pub(crate) const NAMES_PER_READ: usize = 30;
/// Items per page of a whole list.
const PAGE: usize = 500;

/// Where the next read of the log starts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Horizon {
    /// Operations inserted at or after this count (None: every operation does).
    pub since: Option<Timestamp>,
    /// Operations inserted at exactly `since` that were done when the last read saw them: not
    /// counted again.
    pub seen: BTreeSet<String>,
}

/// What the engine remembers between resyncs.
#[derive(Debug, Default)]
pub(crate) struct ChangeLog {
    horizon: Horizon,
    /// When the log was last read (None: never; the next resync lists whole).
    read_at: Option<Instant>,
    /// When routes and firewall rules were last both listed whole.
    full_at: Option<Instant>,
    /// Route and rule changes this engine completed, counted as they land.
    own: u64,
    /// `own` when the last recorded resync was planned.
    own_at_read: u64,
    /// `own` when the resync in progress was planned.
    own_at_plan: u64,
}

/// How a resync reads routes and firewall rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Resync {
    /// Both listed whole, after one page of the log (newest first) that sets the horizon.
    Full,
    /// The log is read back to the horizon; only what it names is listed again.
    Changes(Horizon),
}

impl ChangeLog {
    /// How the resync starting at `now` reads routes and rules.
    pub(crate) fn plan(&mut self, now: Instant) -> Resync {
        self.own_at_plan = self.own;
        let older_than =
            |at: Option<Instant>, age| at.is_none_or(|at| now.saturating_duration_since(at) >= age);
        // The log holds at least the engine's own changes since: past the pages a read takes,
        // it would end in whole lists anyway, after more pages.
        let overflows = self.own.saturating_sub(self.own_at_read) > (MAX_LOG_PAGES * PAGE) as u64;
        if older_than(self.full_at, FULL_EVERY)
            || older_than(self.read_at, LOG_TRUSTED_FOR)
            || overflows
        {
            return Resync::Full;
        }
        Resync::Changes(self.horizon.clone())
    }

    /// Counts a route or firewall rule change this engine completed (an operation of the log).
    pub(crate) fn completed_own(&mut self) {
        self.own += 1;
    }

    /// Records a resync that started at `started`, read the log as `read` says, and listed
    /// routes and rules whole when `full`. Only a resync that completed is recorded.
    pub(crate) fn record(&mut self, started: Instant, read: &LogRead, full: bool) {
        self.read_at = Some(started);
        self.own_at_read = self.own_at_plan;
        if full {
            self.full_at = Some(started);
        }
        let running = read
            .operations
            .iter()
            .filter(|op| !op.done)
            .filter_map(|op| op.inserted)
            .min();
        let since = match running {
            Some(oldest) => Some(oldest),
            // Nothing new: the horizon stands.
            None if read.newest.is_none() => return,
            None => read.newest,
        };
        let seen = read
            .operations
            .iter()
            .filter(|op| op.done && op.inserted == since)
            .map(|op| op.name.clone())
            .collect();
        self.horizon = Horizon { since, seen };
    }
}

/// What a log page item is read for.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Logged {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub target_link: String,
    #[serde(default)]
    pub insert_time: Option<String>,
    #[serde(default)]
    pub status: String,
}

/// One operation a read counted.
#[derive(Debug)]
pub(crate) struct Counted {
    name: String,
    inserted: Option<Timestamp>,
    done: bool,
}

/// What a read of the log found so far.
#[derive(Debug, Default)]
pub(crate) struct LogRead {
    /// Route names operations since the horizon touched.
    pub routes: BTreeSet<String>,
    /// Firewall rule names operations since the horizon touched.
    pub firewalls: BTreeSet<String>,
    /// The newest insertTime seen.
    pub newest: Option<Timestamp>,
    /// Every operation counted (where the next read starts is computed from them).
    operations: Vec<Counted>,
    /// Pages read.
    pub pages: usize,
    /// The read went past the horizon (or to the log's end): it saw everything since.
    pub complete: bool,
}

impl LogRead {
    /// Files one page of operations, newest first, read back to `horizon`. Returns whether the
    /// read is complete: it reached an operation older than the horizon, or `last` (the log's
    /// last page).
    pub(crate) fn file(
        &mut self,
        operations: impl IntoIterator<Item = Logged>,
        horizon: &Horizon,
        last: bool,
    ) -> bool {
        self.pages += 1;
        for op in operations {
            let inserted = op
                .insert_time
                .as_deref()
                .and_then(|t| t.parse::<Timestamp>().ok());
            if let (Some(inserted), Some(since)) = (inserted, horizon.since) {
                if inserted < since {
                    self.complete = true;
                    continue;
                }
                if inserted == since && horizon.seen.contains(&op.name) {
                    continue;
                }
            }
            // One without a readable insertTime counts as new: a spare read costs less than a
            // missed change.
            self.newest = self.newest.max(inserted);
            let mut segments = op.target_link.rsplit('/');
            let (name, collection, scope) = (segments.next(), segments.next(), segments.next());
            match (scope, collection, name) {
                (Some("global"), Some("routes"), Some(name)) if !name.is_empty() => {
                    self.routes.insert(name.to_string());
                }
                (Some("global"), Some("firewalls"), Some(name)) if !name.is_empty() => {
                    self.firewalls.insert(name.to_string());
                }
                _ => {}
            }
            self.operations.push(Counted {
                name: op.name,
                inserted,
                done: op.status == "DONE",
            });
        }
        self.complete |= last;
        self.complete
    }
}

/// How one collection (routes, or firewall rules) is read in a resync of changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reread {
    /// Nothing changed: the inventory's copy stands.
    Keep,
    /// These names are listed again (by name, [`NAMES_PER_READ`] a call); the rest stands.
    Names(Vec<String>),
    /// Listed whole: fewer calls than by name, or the log did not reach back far enough.
    Whole,
}

/// How to read a collection of which the inventory holds `held` items, after a log read that
/// named `touched` of it and was `complete` or not.
pub(crate) fn reread(touched: &BTreeSet<String>, held: usize, complete: bool) -> Reread {
    if !complete {
        return Reread::Whole;
    }
    if touched.is_empty() {
        return Reread::Keep;
    }
    // At equal calls, by name: it reads less.
    if touched.len().div_ceil(NAMES_PER_READ) <= held.div_ceil(PAGE).max(1) {
        Reread::Names(touched.iter().cloned().collect())
    } else {
        Reread::Whole
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn op(name: &str, link: &str, inserted: &str, status: &str) -> Logged {
        Logged {
            name: name.to_string(),
            target_link: link.to_string(),
            insert_time: Some(inserted.to_string()),
            status: status.to_string(),
        }
    }

    fn since(text: &str) -> Horizon {
        Horizon {
            since: Some(at(text)),
            seen: BTreeSet::new(),
        }
    }

    #[test]
    fn the_first_resync_lists_whole_then_reads_changes_from_the_newest_seen() {
        let start = Instant::now();
        let mut log = ChangeLog::default();
        assert_eq!(log.plan(start), Resync::Full);
        let mut first = LogRead::default();
        first.file(
            [
                op(
                    "o2",
                    "projects/p/global/routes/b",
                    "2026-12-07T10:00:00Z",
                    "DONE",
                ),
                op(
                    "o1",
                    "projects/p/global/routes/a",
                    "2026-12-07T09:00:00Z",
                    "DONE",
                ),
            ],
            &Horizon::default(),
            false,
        );
        log.record(start, &first, true);
        let horizon = Horizon {
            since: Some(at("2026-12-07T10:00:00Z")),
            seen: BTreeSet::from(["o2".to_string()]),
        };
        assert_eq!(
            log.plan(start + Duration::from_secs(300)),
            Resync::Changes(horizon.clone())
        );
        // Nothing new: the next read counts nothing, and the horizon stands.
        let mut quiet = LogRead::default();
        let complete = quiet.file(
            [op(
                "o2",
                "projects/p/global/routes/b",
                "2026-12-07T10:00:00Z",
                "DONE",
            )],
            &horizon,
            false,
        );
        assert!(!complete, "the page reached nothing older than the horizon");
        assert!(quiet.file([], &horizon, true));
        assert!(quiet.routes.is_empty());
        log.record(start + Duration::from_secs(300), &quiet, false);
        assert_eq!(
            log.plan(start + Duration::from_secs(600)),
            Resync::Changes(horizon)
        );
    }

    #[test]
    fn an_operation_still_running_is_read_again_until_it_is_done() {
        let start = Instant::now();
        let mut log = ChangeLog::default();
        let mut read = LogRead::default();
        read.file(
            [
                op(
                    "o3",
                    "projects/p/global/routes/c",
                    "2026-12-07T10:02:00Z",
                    "DONE",
                ),
                op(
                    "o2",
                    "projects/p/global/firewalls/f",
                    "2026-12-07T10:01:00Z",
                    "RUNNING",
                ),
            ],
            &Horizon::default(),
            true,
        );
        log.record(start, &read, true);
        let Resync::Changes(horizon) = log.plan(start + Duration::from_secs(60)) else {
            panic!("a log read a minute ago is trusted");
        };
        assert_eq!(horizon.since, Some(at("2026-12-07T10:01:00Z")));
        assert!(horizon.seen.is_empty());
        // The next read reaches back to it and names its rule (and the route after it again).
        let mut next = LogRead::default();
        next.file(
            [
                op(
                    "o3",
                    "projects/p/global/routes/c",
                    "2026-12-07T10:02:00Z",
                    "DONE",
                ),
                op(
                    "o2",
                    "projects/p/global/firewalls/f",
                    "2026-12-07T10:01:00Z",
                    "DONE",
                ),
                op(
                    "o1",
                    "projects/p/global/routes/a",
                    "2026-12-07T10:00:00Z",
                    "DONE",
                ),
            ],
            &horizon,
            false,
        );
        assert!(next.complete);
        assert_eq!(next.firewalls, BTreeSet::from(["f".to_string()]));
        assert_eq!(next.routes, BTreeSet::from(["c".to_string()]));
        log.record(start + Duration::from_secs(60), &next, false);
        assert_eq!(
            log.plan(start + Duration::from_secs(120)),
            Resync::Changes(Horizon {
                since: Some(at("2026-12-07T10:02:00Z")),
                seen: BTreeSet::from(["o3".to_string()]),
            })
        );
    }

    #[test]
    fn an_empty_log_reads_everything_next_time() {
        let start = Instant::now();
        let mut log = ChangeLog::default();
        log.record(start, &LogRead::default(), true);
        assert_eq!(
            log.plan(start + Duration::from_secs(60)),
            Resync::Changes(Horizon::default())
        );
        let mut read = LogRead::default();
        let page = || {
            [op(
                "o1",
                "projects/p/global/routes/a",
                "2026-12-07T10:00:00Z",
                "DONE",
            )]
        };
        assert!(!read.file(page(), &Horizon::default(), false));
        assert!(read.file(page(), &Horizon::default(), true));
    }

    #[test]
    fn an_engine_that_changed_more_than_the_pages_hold_lists_whole_without_reading_them() {
        let start = Instant::now();
        let mut log = ChangeLog::default();
        assert_eq!(log.plan(start), Resync::Full);
        log.record(start, &LogRead::default(), true);
        let later = start + Duration::from_secs(60);
        for _ in 0..MAX_LOG_PAGES * PAGE {
            log.completed_own();
        }
        // Exactly what the pages hold: the log may still reach back.
        assert!(matches!(log.plan(later), Resync::Changes(_)));
        log.completed_own();
        assert_eq!(log.plan(later), Resync::Full);
        // Changes landing while that resync runs count toward the next one.
        log.completed_own();
        log.record(later, &LogRead::default(), true);
        assert!(matches!(
            log.plan(later + Duration::from_secs(60)),
            Resync::Changes(_)
        ));
        for _ in 0..MAX_LOG_PAGES * PAGE {
            log.completed_own();
        }
        assert_eq!(log.plan(later + Duration::from_secs(60)), Resync::Full);
    }

    #[test]
    fn whole_lists_come_back_every_hour_and_after_a_long_gap() {
        let start = Instant::now();
        let mut log = ChangeLog::default();
        log.record(start, &LogRead::default(), true);
        let mut now = start;
        for _ in 0..11 {
            now += Duration::from_secs(300);
            assert!(matches!(log.plan(now), Resync::Changes(_)));
            log.record(now, &LogRead::default(), false);
        }
        assert_eq!(log.plan(start + FULL_EVERY), Resync::Full);
        // A log last read 45 minutes ago may have lost what happened since: whole.
        let mut gap = ChangeLog::default();
        gap.record(start, &LogRead::default(), true);
        assert_eq!(gap.plan(start + LOG_TRUSTED_FOR), Resync::Full);
        assert!(matches!(
            gap.plan(start + LOG_TRUSTED_FOR - Duration::from_secs(1)),
            Resync::Changes(_)
        ));
    }

    #[test]
    fn a_page_names_the_routes_and_rules_operations_touched_since() {
        let mut read = LogRead::default();
        let complete = read.file(
            [
                op(
                    "o5",
                    "https://www.googleapis.com/compute/v1/projects/p/global/routes/adc-r1",
                    "2026-12-07T10:05:00Z",
                    "DONE",
                ),
                op(
                    "o4",
                    "projects/p/global/firewalls/fw-1",
                    "2026-12-07T10:04:00Z",
                    "DONE",
                ),
                op(
                    "o3",
                    "projects/p/zones/z/instances/se-1",
                    "2026-12-07T10:03:00Z",
                    "DONE",
                ),
                op(
                    "o2",
                    "projects/p/regions/r/addresses/a",
                    "2026-12-07T10:02:00Z",
                    "DONE",
                ),
                // Older than the horizon: the read is complete, and it is not counted.
                op(
                    "o1",
                    "projects/p/global/routes/old",
                    "2026-12-07T09:00:00Z",
                    "DONE",
                ),
            ],
            &since("2026-12-07T09:50:00Z"),
            false,
        );
        assert!(complete);
        assert_eq!(read.routes, BTreeSet::from(["adc-r1".to_string()]));
        assert_eq!(read.firewalls, BTreeSet::from(["fw-1".to_string()]));
        assert_eq!(read.newest, Some(at("2026-12-07T10:05:00Z")));
        assert_eq!(read.pages, 1);
        // An unreadable insertTime counts as new.
        let mut odd = LogRead::default();
        odd.file(
            [op("o9", "projects/p/global/routes/x", "yesterday", "DONE")],
            &since("2026-12-07T09:50:00Z"),
            true,
        );
        assert!(odd.routes.contains("x"));
        assert_eq!(odd.newest, None);
    }

    #[test]
    fn a_collection_is_read_by_name_only_when_that_costs_fewer_calls() {
        let names = |n: usize| -> BTreeSet<String> { (0..n).map(|i| format!("r{i:05}")).collect() };
        assert_eq!(reread(&names(0), 20_000, true), Reread::Keep);
        assert_eq!(
            reread(&names(2), 20_000, true),
            Reread::Names(vec!["r00000".into(), "r00001".into()])
        );
        // 40 pages whole against 41 reads of 30 names: whole; against 40, by name.
        assert_eq!(reread(&names(1_201), 20_000, true), Reread::Whole);
        assert!(matches!(
            reread(&names(1_200), 20_000, true),
            Reread::Names(_)
        ));
        // A small collection: one page whole against one read by name: by name (it reads
        // less); against two, whole.
        assert!(matches!(reread(&names(3), 40, true), Reread::Names(_)));
        assert_eq!(reread(&names(31), 40, true), Reread::Whole);
        // A log read that did not reach back: whole, whatever it named.
        assert_eq!(reread(&names(0), 20_000, false), Reread::Whole);
    }

    proptest! {
        /// A read by name never costs more calls than a whole list, and every touched name is
        /// read when the inventory is not kept.
        #[test]
        fn rereads_never_cost_more_than_a_whole_list(touched in 0usize..3_000, held in 0usize..50_000) {
            let names: BTreeSet<String> = (0..touched).map(|i| format!("n{i}")).collect();
            match reread(&names, held, true) {
                Reread::Keep => prop_assert_eq!(touched, 0),
                Reread::Names(read) => {
                    prop_assert!(read.len().div_ceil(NAMES_PER_READ) <= held.div_ceil(PAGE).max(1));
                    prop_assert_eq!(read.len(), touched);
                }
                Reread::Whole => prop_assert!(touched > 0),
            }
        }

        /// Whatever the log holds, a later read from the recorded horizon counts every
        /// operation inserted after the newest one seen, and every one seen running.
        #[test]
        fn nothing_after_the_horizon_or_running_is_skipped(
            ops in proptest::collection::vec((0u32..50, any::<bool>()), 1..40),
            later in proptest::collection::vec(0u32..80, 0..10),
        ) {
            let stamp = |s: u32| format!("2026-12-07T10:{:02}:{:02}Z", s / 60, s % 60);
            let mut first: Vec<(String, u32, bool)> = ops
                .iter()
                .enumerate()
                .map(|(i, (s, done))| (format!("a{i}"), *s, *done))
                .collect();
            first.sort_by_key(|o| std::cmp::Reverse(o.1));
            let mut read = LogRead::default();
            read.file(
                first.iter().map(|(n, s, done)| {
                    op(n, &format!("projects/p/global/routes/{n}"), &stamp(*s), if *done { "DONE" } else { "RUNNING" })
                }),
                &Horizon::default(),
                true,
            );
            let mut log = ChangeLog::default();
            let start = Instant::now();
            log.record(start, &read, true);
            let Resync::Changes(horizon) = log.plan(start + Duration::from_secs(1)) else {
                panic!("trusted");
            };
            let newest = first.iter().map(|o| o.1).max().unwrap_or(0);
            // The second read: everything before, now done, plus operations inserted later.
            let mut second: Vec<(String, u32)> = first.iter().map(|(n, s, _)| (n.clone(), *s)).collect();
            second.extend(later.iter().enumerate().map(|(i, s)| (format!("b{i}"), newest + 1 + s)));
            second.sort_by_key(|o| std::cmp::Reverse(o.1));
            let mut next = LogRead::default();
            next.file(
                second.iter().map(|(n, s)| op(n, &format!("projects/p/global/routes/{n}"), &stamp(*s), "DONE")),
                &horizon,
                true,
            );
            for (i, _) in later.iter().enumerate() {
                let name = format!("b{i}");
                prop_assert!(next.routes.contains(&name));
            }
            for (n, _, done) in &first {
                if !done {
                    prop_assert!(next.routes.contains(n), "{n} was running");
                }
            }
        }
    }
}
