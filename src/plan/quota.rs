//! The quota forecast: what a cloud's objects need of each Compute resource quota, against what
//! the project uses and allows. Pure: the figures come from `projects.get`/`regions.get`, the
//! inventory and the last layout pass.

/// Above this share of a limit the plan is worth a warning.
pub const WARN_SHARE: f64 = 0.9;

/// One quota as the forecast sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Forecast {
    pub metric: String,
    pub scope: String,
    /// In use now (Compute's figure).
    pub usage: f64,
    pub limit: f64,
    /// What this cloud's objects need of it, at the current plan (None: not forecast).
    pub needed: Option<f64>,
    /// The use once the plan is applied: what others use plus what the cloud needs.
    pub projected: f64,
}

impl Forecast {
    /// Whether the plan needs more than [`WARN_SHARE`] of the limit.
    pub fn at_risk(&self) -> bool {
        self.limit > 0.0 && self.projected > WARN_SHARE * self.limit
    }
}

/// Forecasts each quota: `usage` minus what the cloud holds of it now (`held`) plus what its
/// objects need (`needed`), for the metrics the cloud forecasts.
pub fn forecast(
    quotas: &[(String, String, f64, f64)],
    held: impl Fn(&str) -> Option<f64>,
    needed: impl Fn(&str) -> Option<f64>,
) -> Vec<Forecast> {
    quotas
        .iter()
        .map(|(metric, scope, usage, limit)| {
            let need = needed(metric);
            let projected = match (need, held(metric)) {
                (Some(need), Some(held)) => (usage - held).max(0.0) + need,
                _ => *usage,
            };
            Forecast {
                metric: metric.clone(),
                scope: scope.clone(),
                usage: *usage,
                limit: *limit,
                needed: need,
                projected,
            }
        })
        .collect()
}

/// The warning for the quotas at risk, naming each: None when none is.
pub fn warning(forecasts: &[Forecast]) -> Option<String> {
    let risky: Vec<String> = forecasts
        .iter()
        .filter(|f| f.at_risk())
        .map(|f| {
            format!(
                "{} ({}): the plan needs {:.0} of {:.0} ({:.0}%)",
                f.metric,
                f.scope,
                f.projected,
                f.limit,
                100.0 * f.projected / f.limit
            )
        })
        .collect();
    (!risky.is_empty()).then(|| {
        format!(
            "{}; objects beyond a limit stall with QuotaExceeded: raise the quota, use VIP pools (spec.vipPools) or free resources",
            risky.join("; ")
        )
    })
}

/// Median route and firewall operation duration of the model (docs/compute-api.md §11), s.
pub const OPERATION_SECONDS: f64 = 8.0;
/// One batch round trip (median mutation latency plus batch overhead), s.
pub const ROUND_TRIP_SECONDS: f64 = 0.3;

/// The least time `writes` GCP writes take at `writes_per_minute` (bench/README.md's lower
/// bound, writes binding): W/Q minutes, then one operation and one batch round trip, seconds.
pub fn rollout_seconds(writes: usize, writes_per_minute: f64) -> f64 {
    if writes == 0 {
        return 0.0;
    }
    writes as f64 / writes_per_minute.max(1.0) * 60.0 + OPERATION_SECONDS + ROUND_TRIP_SECONDS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rollout_takes_its_writes_at_the_rate_then_one_operation() {
        assert!((rollout_seconds(15_000, 1500.0) - 608.3).abs() < 1e-9);
        assert!((rollout_seconds(3, 1500.0) - 8.42).abs() < 1e-9);
        assert_eq!(rollout_seconds(0, 1500.0), 0.0);
    }

    #[test]
    fn the_projection_replaces_what_the_cloud_holds_with_what_it_needs() {
        let quotas = vec![
            ("ROUTES".to_string(), "global".to_string(), 100.0, 250.0),
            ("FIREWALLS".to_string(), "global".to_string(), 50.0, 200.0),
            ("CPUS".to_string(), "us-central1".to_string(), 8.0, 24.0),
        ];
        let held = |m: &str| match m {
            "ROUTES" => Some(90.0),
            "FIREWALLS" => Some(40.0),
            _ => None,
        };
        let needed = |m: &str| match m {
            "ROUTES" => Some(230.0),
            "FIREWALLS" => Some(12.0),
            _ => None,
        };
        let out = forecast(&quotas, held, needed);
        assert_eq!(out[0].projected, 240.0);
        assert!(out[0].at_risk());
        assert_eq!(out[1].projected, 22.0);
        assert!(!out[1].at_risk());
        assert_eq!(out[2].needed, None);
        assert_eq!(out[2].projected, 8.0);
        let message = warning(&out).unwrap();
        assert!(
            message.starts_with("ROUTES (global): the plan needs 240 of 250 (96%)"),
            "{message}"
        );
        assert_eq!(warning(&out[1..]), None);
    }
}
