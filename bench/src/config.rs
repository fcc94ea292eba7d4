//! What a run measures, from the environment (`make bench` documents every variable).

use std::path::PathBuf;

use anyhow::{Context as _, bail};

/// How the operator sends Compute calls (`adc-operator run --gcp-dispatch`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Every call of the fleet coalesced into batch requests.
    Batched,
    /// One HTTP request per call, many in flight, same budget.
    Concurrent,
    /// One call per object, waiting for its operation, K workers: today's per-resource
    /// controllers.
    PerObject,
}

impl Mode {
    pub fn flag(self) -> &'static str {
        match self {
            Mode::Batched => "batched",
            Mode::Concurrent => "concurrent",
            Mode::PerObject => "per-object",
        }
    }

    pub fn label(self) -> String {
        match self {
            Mode::PerObject => format!("per-object (K={PER_OBJECT_WORKERS})"),
            other => other.flag().to_string(),
        }
    }

    fn parse(text: &str) -> anyhow::Result<Self> {
        Ok(match text.trim() {
            "batched" => Mode::Batched,
            "concurrent" => Mode::Concurrent,
            "per-object" => Mode::PerObject,
            other => bail!("BENCH_MODES: unknown mode '{other}' (batched, concurrent, per-object)"),
        })
    }
}

/// A group of scenarios `make bench` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suite {
    /// Rollout, failover, steady state, teardown, failover under load: per size and mode.
    Fleet,
    /// Small changes at random offsets in the rate window, and a failover during a burst.
    SmallChange,
    /// VIP pools at Compute's default resource quotas: a rollout of N pool VIPs and the
    /// failover of one engine, per size.
    Pools,
    /// Many projects on sharded replicas: N objects over `BENCH_SHARD_CLOUDS` clouds, one
    /// replica killed mid-rollout.
    Shards,
}

impl Suite {
    fn parse(text: &str) -> anyhow::Result<Self> {
        Ok(match text.trim() {
            "fleet" => Suite::Fleet,
            "small-change" => Suite::SmallChange,
            "pools" => Suite::Pools,
            "shards" => Suite::Shards,
            other => {
                bail!("BENCH_SUITES: unknown suite '{other}' (fleet, small-change, pools, shards)")
            }
        })
    }
}

/// Workers of the per-object mode.
pub const PER_OBJECT_WORKERS: usize = 10;

#[derive(Debug, Clone)]
pub struct Config {
    /// Fleet sizes, each run in every mode (`BENCH_N`, comma-separated).
    pub sizes: Vec<usize>,
    /// `BENCH_MODES`, comma-separated.
    pub modes: Vec<Mode>,
    /// Emulator and operator time scale (`BENCH_SCALE`): 0.2 runs five times faster than GCP.
    pub scale: f64,
    /// The per-object mode runs `N / divisor` objects (at least 100) and its rollout and teardown
    /// times are extrapolated linearly (`BENCH_PER_OBJECT_DIVISOR`).
    pub per_object_divisor: usize,
    /// Engines stopped in the idle-fleet failover scenario, one run each.
    pub failover_engines: Vec<usize>,
    /// Engines stopped during a rollout.
    pub under_load_engines: usize,
    /// Resync intervals the steady-state scenario watches.
    pub steady_resyncs: u32,
    /// `BENCH_QUICK=1`: a small run of every scenario that records nothing in bench/.
    pub quick: bool,
    /// Which suites run (`BENCH_SUITES`): the fleet scenarios, the small-change scenario.
    pub suites: Vec<Suite>,
    /// Sizes of the small-change scenario (`BENCH_SMALL_N`), each applied as VpcRoutes and as
    /// VirtualServices.
    pub small_sizes: Vec<usize>,
    /// Time scale of the small-change scenario (`BENCH_SMALL_SCALE`): 1 by default, so the
    /// kube-apiserver's own latency weighs as it would against GCP.
    pub small_scale: f64,
    /// Seeds the window offsets the small-change scenario starts at (`BENCH_SEED`).
    pub seed: u64,
    /// Sizes of the pools suite (`BENCH_POOL_N`), each on a fresh emulator and operator.
    pub pool_sizes: Vec<usize>,
    /// Wall-clock time one size of the pools suite may take to roll out before the run gives up
    /// and records how far it got (`BENCH_POOL_MINUTES`).
    pub pool_deadline: std::time::Duration,
    /// Sizes of the shards suite (`BENCH_SHARD_N`): objects over every cloud together.
    pub shard_sizes: Vec<usize>,
    /// Clouds (each in a project of its own) of the shards suite (`BENCH_SHARD_CLOUDS`).
    pub shard_clouds: usize,
    /// Sharded operator replicas of the shards suite (`BENCH_SHARD_REPLICAS`, at least 2).
    pub shard_replicas: usize,
    /// Where JSON results and charts go.
    pub results_dir: PathBuf,
    /// The README a markdown table is appended to (`None` in quick runs).
    pub readme: Option<PathBuf>,
}

/// The GCP-time interval the GcpCloud resyncs its inventory at during the benchmark.
pub const RESYNC_GCP_SECONDS: f64 = 60.0;
/// The GCP-time interval instance status is polled at.
pub const INSTANCE_POLL_GCP_SECONDS: f64 = 5.0;

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn list<T>(
    name: &str,
    text: &str,
    parse: impl Fn(&str) -> anyhow::Result<T>,
) -> anyhow::Result<Vec<T>> {
    text.split(',')
        .map(|item| parse(item.trim()).with_context(|| format!("{name}: '{item}'")))
        .collect()
}

impl Config {
    pub fn from_env() -> anyhow::Result<Self> {
        let quick = var("BENCH_QUICK").is_some_and(|v| v != "0");
        let root = adc_testenv::repo_root();
        let sizes = match var("BENCH_N") {
            Some(text) => list("BENCH_N", &text, |s| Ok(s.parse::<usize>()?))?,
            None if quick => vec![300],
            None => vec![1000, 5000],
        };
        if sizes.iter().any(|n| *n == 0 || *n > 50_000) {
            bail!("BENCH_N: every size must be between 1 and 50000");
        }
        let modes = match var("BENCH_MODES") {
            Some(text) => list("BENCH_MODES", &text, Mode::parse)?,
            None => vec![Mode::Batched, Mode::Concurrent, Mode::PerObject],
        };
        let scale = match var("BENCH_SCALE") {
            Some(text) => text.parse::<f64>().context("BENCH_SCALE")?,
            None if quick => 0.05,
            None => 0.2,
        };
        if !(0.001..=1.0).contains(&scale) {
            bail!("BENCH_SCALE: {scale} is outside 0.001..=1");
        }
        let per_object_divisor = match var("BENCH_PER_OBJECT_DIVISOR") {
            Some(text) => text
                .parse::<usize>()
                .context("BENCH_PER_OBJECT_DIVISOR")?
                .max(1),
            None if quick => 3,
            None => 20,
        };
        let results_dir = if quick {
            std::env::var_os("CARGO_TARGET_DIR")
                .map_or_else(|| root.join("target"), PathBuf::from)
                .join("bench-quick")
        } else {
            root.join("bench").join("results")
        };
        let suites = match var("BENCH_SUITES") {
            Some(text) => list("BENCH_SUITES", &text, Suite::parse)?,
            None if quick => vec![Suite::Fleet, Suite::SmallChange, Suite::Shards],
            None => vec![
                Suite::Fleet,
                Suite::SmallChange,
                Suite::Pools,
                Suite::Shards,
            ],
        };
        let small_sizes = match var("BENCH_SMALL_N") {
            Some(text) => list("BENCH_SMALL_N", &text, |s| Ok(s.parse::<usize>()?))?,
            None if quick => vec![100],
            None => vec![100, 500, 1000],
        };
        if small_sizes.iter().any(|n| *n == 0 || *n > 10_000) {
            bail!("BENCH_SMALL_N: every size must be between 1 and 10000");
        }
        let small_scale = match var("BENCH_SMALL_SCALE") {
            Some(text) => text.parse::<f64>().context("BENCH_SMALL_SCALE")?,
            None if quick => 0.25,
            None => 1.0,
        };
        if !(0.001..=1.0).contains(&small_scale) {
            bail!("BENCH_SMALL_SCALE: {small_scale} is outside 0.001..=1");
        }
        let pool_sizes = match var("BENCH_POOL_N") {
            Some(text) => list("BENCH_POOL_N", &text, |s| Ok(s.parse::<usize>()?))?,
            None if quick => vec![500],
            None => vec![5000, 50_000],
        };
        // The pool is a /16: 65,534 usable addresses, handed out in blocks per engine group.
        if pool_sizes.iter().any(|n| *n == 0 || *n > 60_000) {
            bail!("BENCH_POOL_N: every size must be between 1 and 60000");
        }
        let pool_minutes = match var("BENCH_POOL_MINUTES") {
            Some(text) => text.parse::<f64>().context("BENCH_POOL_MINUTES")?,
            None => 35.0,
        };
        if !(pool_minutes > 0.0 && pool_minutes.is_finite()) {
            bail!("BENCH_POOL_MINUTES: {pool_minutes} is not a positive number of minutes");
        }
        let shard_sizes = match var("BENCH_SHARD_N") {
            Some(text) => list("BENCH_SHARD_N", &text, |s| Ok(s.parse::<usize>()?))?,
            None if quick => vec![600],
            None => vec![50_000],
        };
        if shard_sizes.iter().any(|n| *n == 0 || *n > 100_000) {
            bail!("BENCH_SHARD_N: every size must be between 1 and 100000");
        }
        let shard_clouds = match var("BENCH_SHARD_CLOUDS") {
            Some(text) => text.parse::<usize>().context("BENCH_SHARD_CLOUDS")?,
            None if quick => 3,
            None => 10,
        };
        if !(1..=50).contains(&shard_clouds) {
            bail!("BENCH_SHARD_CLOUDS: {shard_clouds} is outside 1..=50");
        }
        let shard_replicas = match var("BENCH_SHARD_REPLICAS") {
            Some(text) => text.parse::<usize>().context("BENCH_SHARD_REPLICAS")?,
            None => 3,
        };
        if !(2..=10).contains(&shard_replicas) {
            bail!("BENCH_SHARD_REPLICAS: {shard_replicas} is outside 2..=10");
        }
        let seed = match var("BENCH_SEED") {
            Some(text) => text.parse::<u64>().context("BENCH_SEED")?,
            None => crate::report::unix_millis() as u64,
        };
        Ok(Self {
            sizes,
            suites,
            small_sizes,
            small_scale,
            seed,
            pool_sizes,
            shard_sizes,
            shard_clouds,
            shard_replicas,
            pool_deadline: std::time::Duration::from_secs_f64(pool_minutes * 60.0),
            modes,
            scale,
            per_object_divisor,
            failover_engines: vec![10, 100],
            under_load_engines: 100,
            steady_resyncs: 3,
            quick,
            results_dir,
            readme: (!quick).then(|| root.join("bench").join("README.md")),
        })
    }

    /// Objects the mode actually runs for a fleet of `n`.
    pub fn objects_for(&self, mode: Mode, n: usize) -> usize {
        match mode {
            Mode::PerObject => (n / self.per_object_divisor).max(100).min(n),
            _ => n,
        }
    }

    /// A GCP-time duration as the wall-clock duration the scaled emulator and operator use.
    pub fn wall(&self, gcp_seconds: f64) -> std::time::Duration {
        std::time::Duration::from_secs_f64(gcp_seconds * self.scale)
    }

    /// A duration for a GcpCloud spec field, in milliseconds of wall-clock time.
    pub fn spec_duration(&self, gcp_seconds: f64) -> String {
        format!(
            "{}ms",
            (gcp_seconds * self.scale * 1000.0).round().max(1.0) as u64
        )
    }
}
