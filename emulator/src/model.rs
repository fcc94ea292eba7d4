//! The `gcp` profile's model (docs/compute-api.md §11): latencies, operation durations, rate
//! quotas and resource quotas. Every value here is a model value unless §11 cites a source for it;
//! every duration is multiplied by `--time-scale`. §N below are sections of docs/compute-api.md.

use std::time::Duration;

use rand::Rng;

/// A duration drawn so that its minimum, median and maximum are the given ones: half of the draws
/// uniform below the median, half above.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    pub min_ms: f64,
    pub median_ms: f64,
    pub max_ms: f64,
}

impl Spread {
    /// A spread in milliseconds.
    pub const fn ms(min_ms: f64, median_ms: f64, max_ms: f64) -> Self {
        Self {
            min_ms,
            median_ms,
            max_ms,
        }
    }

    /// A spread in seconds.
    pub const fn secs(min: f64, median: f64, max: f64) -> Self {
        Self::ms(min * 1000.0, median * 1000.0, max * 1000.0)
    }

    /// Zero: the `instant` profile.
    pub const ZERO: Spread = Spread::ms(0.0, 0.0, 0.0);

    /// Draws one duration, multiplied by `scale`.
    pub fn draw(&self, rng: &mut impl Rng, scale: f64) -> Duration {
        if self.max_ms <= 0.0 {
            return Duration::ZERO;
        }
        let ms = if rng.r#gen::<bool>() {
            rng.gen_range(self.min_ms..=self.median_ms)
        } else {
            rng.gen_range(self.median_ms..=self.max_ms)
        };
        Duration::from_secs_f64((ms * scale / 1000.0).max(0.0))
    }
}

/// What kind of work a call is, for latency and operation-duration lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Work {
    Route,
    Firewall,
    Address,
    ForwardingRule,
    TargetInstance,
    Instance,
    /// Instance group insert, delete, addInstances, removeInstances.
    InstanceGroup,
    HealthCheck,
    BackendService,
}

/// Latency and duration tables of one profile.
#[derive(Debug, Clone)]
pub struct Timing {
    /// HTTP latency of a get or list.
    pub read_latency: Spread,
    /// HTTP latency of a mutation (which returns a PENDING or RUNNING operation).
    pub write_latency: Spread,
    /// Added to the slowest inner call of a batch.
    pub batch_overhead: Duration,
    /// How long an operation stays PENDING before RUNNING (at most).
    pub pending_max: Duration,
    /// Probability that `operations.wait` returns early although the operation is not DONE.
    pub wait_early_return: f64,
    /// How long `operations.wait` blocks at most.
    pub wait_deadline: Duration,
    /// Multiplies every duration.
    pub scale: f64,
}

impl Timing {
    /// The `instant` profile: no latency, operations DONE at once.
    pub fn instant() -> Self {
        Self {
            read_latency: Spread::ZERO,
            write_latency: Spread::ZERO,
            batch_overhead: Duration::ZERO,
            pending_max: Duration::ZERO,
            wait_early_return: 0.0,
            wait_deadline: Duration::from_secs(120),
            scale: 1.0,
        }
    }

    /// The `gcp` profile of §11, every duration multiplied by `scale`.
    pub fn gcp(scale: f64) -> Self {
        Self {
            read_latency: Spread::ms(60.0, 80.0, 150.0),
            write_latency: Spread::ms(150.0, 250.0, 400.0),
            batch_overhead: Duration::from_secs_f64(0.050 * scale),
            pending_max: Duration::from_secs_f64(1.0 * scale),
            wait_early_return: 0.02,
            wait_deadline: Duration::from_secs_f64(120.0 * scale),
            scale,
        }
    }

    /// Whether operations take time at all.
    pub fn is_instant(&self) -> bool {
        self.write_latency.max_ms <= 0.0 && self.pending_max.is_zero()
    }

    /// The operation duration of one piece of work under this profile (zero when instant).
    pub fn operation(&self, work: Work) -> Spread {
        if self.is_instant() {
            return Spread::ZERO;
        }
        match work {
            Work::Route | Work::Firewall => Spread::secs(5.0, 8.0, 15.0),
            Work::Address => Spread::secs(2.0, 3.0, 6.0),
            Work::ForwardingRule => Spread::secs(10.0, 15.0, 30.0),
            Work::TargetInstance => Spread::secs(5.0, 8.0, 15.0),
            Work::Instance => Spread::secs(20.0, 30.0, 40.0),
            // Model values, in the range of the forwarding-rule row (no measured source).
            Work::InstanceGroup | Work::HealthCheck => Spread::secs(5.0, 8.0, 15.0),
            Work::BackendService => Spread::secs(10.0, 15.0, 30.0),
        }
    }
}

/// Per-minute API rate quotas of one project (enforced by the `gcp` profile).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimits {
    /// Global reads (get, list) per minute.
    #[serde(default = "default_rate")]
    pub reads_per_minute: u64,
    /// Global writes (insert, delete, patch) per minute.
    #[serde(default = "default_rate")]
    pub writes_per_minute: u64,
    /// Operation reads (operations get, list, wait) per minute.
    #[serde(default = "default_rate")]
    pub operation_reads_per_minute: u64,
    /// Regional and zonal writes per minute, per region.
    #[serde(default = "default_rate")]
    pub regional_writes_per_minute: u64,
}

fn default_rate() -> u64 {
    1500
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            reads_per_minute: default_rate(),
            writes_per_minute: default_rate(),
            operation_reads_per_minute: default_rate(),
            regional_writes_per_minute: default_rate(),
        }
    }
}

/// Resource quotas of one project. Defaults are §11's model values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quotas {
    /// Custom static routes in the project.
    #[serde(rename = "ROUTES", default = "default_routes")]
    pub routes: u64,
    /// Custom static routes in one VPC network.
    #[serde(
        rename = "STATIC_ROUTES_PER_NETWORK",
        default = "default_routes_per_network"
    )]
    pub static_routes_per_network: u64,
    /// Firewall rules in the project.
    #[serde(rename = "FIREWALLS", default = "default_firewalls")]
    pub firewalls: u64,
    /// Static addresses per region (regional addresses).
    #[serde(rename = "STATIC_ADDRESSES", default = "default_static_addresses")]
    pub static_addresses: u64,
    /// Forwarding rules per region.
    #[serde(rename = "FORWARDING_RULES", default = "default_forwarding_rules")]
    pub forwarding_rules: u64,
}

fn default_routes() -> u64 {
    250
}
fn default_routes_per_network() -> u64 {
    200
}
fn default_firewalls() -> u64 {
    200
}
fn default_static_addresses() -> u64 {
    8
}
fn default_forwarding_rules() -> u64 {
    15
}

impl Default for Quotas {
    fn default() -> Self {
        Self {
            routes: default_routes(),
            static_routes_per_network: default_routes_per_network(),
            firewalls: default_firewalls(),
            static_addresses: default_static_addresses(),
            forwarding_rules: default_forwarding_rules(),
        }
    }
}

/// What a call does to a network that is at its mutation concurrency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum BusyBehavior {
    /// The operation stays PENDING until the network has a free slot.
    #[default]
    Queue,
    /// The call is refused with 400 `resourceNotReady`.
    Refuse,
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn spread_respects_bounds_and_median() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let spread = Spread::secs(5.0, 8.0, 15.0);
        let mut draws: Vec<f64> = (0..4001)
            .map(|_| spread.draw(&mut rng, 1.0).as_secs_f64())
            .collect();
        draws.sort_by(f64::total_cmp);
        assert!(draws[0] >= 5.0 && draws[4000] <= 15.0);
        assert!((draws[2000] - 8.0).abs() < 0.3, "median {}", draws[2000]);
        let scaled = spread.draw(&mut rng, 0.01).as_secs_f64();
        assert!((0.05..=0.15).contains(&scaled));
    }
}
