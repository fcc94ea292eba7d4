//! The lower bounds the emulator's model allows (bench/README.md, "Lower bound"). Pure.

/// Per-minute quota of every rate group in the emulator's gcp profile (docs/compute-api.md §11).
pub const QUOTA_PER_MINUTE: f64 = 1500.0;
/// Median route and firewall operation duration (docs/compute-api.md §11), GCP seconds.
pub const OPERATION_SECONDS: f64 = 8.0;
/// The slowest route or firewall operation (docs/compute-api.md §11), GCP seconds.
pub const SLOWEST_OPERATION_SECONDS: f64 = 15.0;
/// One batch round trip: the median mutation latency (250 ms) plus the batch overhead (50 ms).
pub const ROUND_TRIP_SECONDS: f64 = 0.3;
/// A rate window, GCP seconds.
pub const WINDOW_SECONDS: f64 = 60.0;

/// The minute-rate bound for work needing `writes` writes, `reads` reads and `operation_reads`
/// operation reads, on a network without a concurrency limit, GCP seconds:
/// max(W/Qw, R/Qr, P/Qp) minutes + D + RTT.
pub fn lower_bound(writes: f64, reads: f64, operation_reads: f64) -> f64 {
    let minutes = (writes / QUOTA_PER_MINUTE)
        .max(reads / QUOTA_PER_MINUTE)
        .max(operation_reads / QUOTA_PER_MINUTE);
    minutes * 60.0 + OPERATION_SECONDS + ROUND_TRIP_SECONDS
}

/// The minute-rate bound for `writes` writes and the least reads they need: one list page per 500
/// resources to know the inventory, one filtered operations page per 500 operations to see them
/// done.
pub fn bound_for_writes(writes: usize) -> f64 {
    let pages = writes.div_ceil(500) as f64;
    lower_bound(writes as f64, pages, pages)
}

/// The bound fixed, minute-aligned windows really give, GCP seconds: `writes` writes that start
/// `offset` seconds into a window with `quota_left` calls left of it can send their last call at
/// the start of window k = ⌈(W − Q_left) / Q⌉ after the current one (at once when W ≤ Q_left),
/// k · 60 − φ seconds from the start, and are done the slowest operation and a round trip later.
pub fn windowed_bound(writes: usize, offset: f64, quota_left: usize) -> f64 {
    let last_write = if writes <= quota_left {
        0.0
    } else {
        let windows = (writes - quota_left).div_ceil(QUOTA_PER_MINUTE as usize);
        windows as f64 * WINDOW_SECONDS - offset
    };
    last_write + SLOWEST_OPERATION_SECONDS + ROUND_TRIP_SECONDS
}

/// Where in its rate window the wall-clock time `unix_millis` is, in GCP seconds, for a time
/// scale `scale` (windows are 60 s × scale long and aligned to the Unix epoch, like the
/// emulator's and the operator's).
pub fn window_offset(unix_millis: u128, scale: f64) -> f64 {
    let window_ms = (WINDOW_SECONDS * 1000.0 * scale).round().max(1.0) as u128;
    (unix_millis % window_ms) as f64 / 1000.0 / scale
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_minute_bound_is_the_old_formula() {
        assert!((bound_for_writes(15_000) - 608.3).abs() < 1e-9);
    }

    #[test]
    fn a_change_that_fits_is_bounded_by_one_slow_operation() {
        assert!((windowed_bound(1000, 42.0, 1500) - 15.3).abs() < 1e-9);
        assert!((windowed_bound(1500, 0.0, 1500) - 15.3).abs() < 1e-9);
    }

    #[test]
    fn a_larger_change_waits_for_later_windows() {
        // 3,000 writes from 20 s into a fresh window: the rest goes 40 s later.
        assert!((windowed_bound(3000, 20.0, 1500) - 55.3).abs() < 1e-9);
        // 15,000 from the start of a fresh window: nine windows later.
        assert!((windowed_bound(15_000, 0.0, 1500) - 555.3).abs() < 1e-9);
        // A window half spent by earlier work.
        assert!((windowed_bound(1000, 30.0, 750) - 45.3).abs() < 1e-9);
    }

    #[test]
    fn offsets_follow_the_scaled_windows() {
        assert!((window_offset(61_500, 1.0) - 1.5).abs() < 1e-9);
        // At a time scale of 0.2 a window is 12 s of wall-clock time.
        assert!((window_offset(18_000, 0.2) - 30.0).abs() < 1e-9);
    }
}
