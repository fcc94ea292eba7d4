//! The small-change scenario (bench/README.md): the size of a GitOps sync — N VpcRoutes, then N
//! VirtualServices — applied at once at a random offset into a rate window, timed to the last
//! object Ready against both bounds; then a failover of engines while such a burst is sending,
//! next to the same failover on an idle fleet.
//!
//! One emulator and one operator (batched, the default) serve every step; objects accumulate
//! (each step applies new ones), so no teardown spends the windows the next step is measured in.
//! Every step waits for a quiet operator and starts in a window nothing has written in yet.

use std::time::{Duration, Instant};

use adc_operator::api::{VirtualService, VpcRoute};
use anyhow::{Context as _, bail};
use kube::Client;
use rand::{Rng as _, SeedableRng as _};
use serde_json::{Value, json};

use crate::bounds::{
    QUOTA_PER_MINUTE, WINDOW_SECONDS, bound_for_writes, window_offset, windowed_bound,
};
use crate::cluster::{self, Object, Readiness};
use crate::config::{Config, Mode};
use crate::fleet::Fleet;
use crate::report::unix_millis;
use crate::scenarios::{Measure, Run, print_measure};

/// Engines stopped in the failover steps.
const FAILOVER_ENGINES: usize = 10;
/// The namespace (and GcpCloud) of the scenario.
const NAMESPACE: &str = "bench-small";

/// VpcRoute `i`: a /32 to an address in the subnet (one route, no engine: a failover leaves it).
fn vpc_route(i: usize, cloud: &str) -> Value {
    json!({
        "apiVersion": "adc.dev/v1alpha1",
        "kind": "VpcRoute",
        "metadata": {"name": format!("vr-{i:05}")},
        "spec": {
            "cloudRef": cloud,
            "destRange": format!("10.{}.{}.{}/32", 96 + (i >> 16), (i >> 8) & 255, i & 255),
            "priority": 1000,
            "nextHop": {"ip": "10.128.0.9"},
        }
    })
}

/// Which objects a step applies.
#[derive(Debug, Clone, Copy)]
enum Kind {
    VpcRoutes,
    VirtualServices,
}

impl Kind {
    fn scenario(self) -> &'static str {
        match self {
            Kind::VpcRoutes => "small-change-vpcroutes",
            Kind::VirtualServices => "small-change-virtualservices",
        }
    }

    /// GCP writes per object: a route; two routes and a firewall rule.
    fn writes(self) -> usize {
        match self {
            Kind::VpcRoutes => 1,
            Kind::VirtualServices => 3,
        }
    }
}

struct Small<'a> {
    run: Run<'a>,
    routes: Readiness,
    rng: rand::rngs::StdRng,
    /// Objects of each kind applied so far.
    vpc_routes: usize,
    virtual_services: usize,
}

impl Small<'_> {
    fn readiness(&self, kind: Kind) -> &Readiness {
        match kind {
            Kind::VpcRoutes => &self.routes,
            Kind::VirtualServices => &self.run.readiness,
        }
    }

    /// Until every object applied so far is Ready and no operation is pending.
    async fn quiet(&self) -> anyhow::Result<()> {
        let (routes, services) = (self.vpc_routes, self.virtual_services);
        self.run
            .wait_quiet_for(|| {
                self.routes.counts() == (routes, routes)
                    && self.run.readiness.counts() == (services, services)
            })
            .await
    }

    /// Sleeps until a random offset into the next rate window (after the current one, so
    /// nothing of this window was written before the step); returns the offset, GCP seconds.
    async fn next_window_at_random_offset(&mut self) -> f64 {
        let scale = self.run.config.scale;
        let window_ms = (WINDOW_SECONDS * 1000.0 * scale).round().max(1.0) as u128;
        let offset: f64 = self.rng.gen_range(0.0..WINDOW_SECONDS);
        let now = unix_millis();
        let target = (now / window_ms + 1) * window_ms + (offset * scale * 1000.0) as u128;
        tokio::time::sleep(Duration::from_millis((target - now) as u64)).await;
        window_offset(unix_millis(), scale)
    }

    /// Applies `n` new objects of `kind` (spawned), starting from the next index of the kind.
    fn apply(&mut self, kind: Kind, n: usize) -> tokio::task::JoinHandle<anyhow::Result<()>> {
        let client = self.run.client.clone();
        let namespace = self.run.namespace.clone();
        match kind {
            Kind::VpcRoutes => {
                let manifests = (self.vpc_routes..self.vpc_routes + n)
                    .map(|i| vpc_route(i, &namespace))
                    .collect();
                self.vpc_routes += n;
                tokio::spawn(apply::<VpcRoute>(client, namespace, manifests))
            }
            Kind::VirtualServices => {
                let manifests = (self.virtual_services..self.virtual_services + n)
                    .map(|i| self.run.fleet.virtual_service(i, &namespace))
                    .collect();
                self.virtual_services += n;
                tokio::spawn(apply::<VirtualService>(client, namespace, manifests))
            }
        }
    }

    /// Until every object of `kind` applied so far is Ready.
    async fn all_ready(&self, kind: Kind, label: &str, start: Instant) -> anyhow::Result<Instant> {
        let applied = match kind {
            Kind::VpcRoutes => self.vpc_routes,
            Kind::VirtualServices => self.virtual_services,
        };
        let deadline = start + self.run.config.wall(900.0) + Duration::from_secs(60);
        let mut last_print = Instant::now();
        loop {
            let (ready, exist) = self.readiness(kind).counts();
            if (ready, exist) == (applied, applied) {
                return Ok(Instant::now());
            }
            if Instant::now() > deadline {
                bail!(
                    "{label}: {ready} of {applied} Ready after {:?}",
                    start.elapsed()
                );
            }
            if last_print.elapsed() >= Duration::from_secs(2) {
                println!(
                    "  [small {label}] {ready}/{exist} of {applied} Ready · {:.0} s GCP",
                    self.run.gcp(start.elapsed())
                );
                last_print = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// One step: `n` objects of `kind` at a random offset; time to the last Ready.
    async fn step(&mut self, kind: Kind, n: usize) -> anyhow::Result<Measure> {
        let label = kind.scenario();
        self.quiet().await?;
        let offset = self.next_window_at_random_offset().await;
        let mark = self.run.mark().await?;
        let apply = self.apply(kind, n);
        let end = self.all_ready(kind, label, mark.at).await?;
        apply.await??;
        self.finish(kind, n, label, &mark, end, offset, json!({}))
            .await
    }

    /// The figures of a step that applied `n` objects of `kind` from `mark` to `end`.
    #[allow(clippy::too_many_arguments)]
    async fn finish(
        &self,
        kind: Kind,
        n: usize,
        scenario: &'static str,
        mark: &crate::scenarios::Mark,
        end: Instant,
        offset: f64,
        mut detail: Value,
    ) -> anyhow::Result<Measure> {
        let writes = n * kind.writes();
        detail["objects"] = json!(match kind {
            Kind::VpcRoutes => "VpcRoute",
            Kind::VirtualServices => "VirtualService",
        });
        let mut measure = self
            .run
            .measure(
                scenario,
                mark,
                self.run.gcp(end - mark.at),
                false,
                bound_for_writes(writes),
                writes as u64,
                0,
                detail,
            )
            .await?;
        measure.n = n;
        measure.objects = n;
        measure.window_offset_seconds = Some(offset);
        // Nothing was written in this window before the step.
        measure.set_windowed_bound(windowed_bound(writes, offset, QUOTA_PER_MINUTE as usize));
        print_measure(&measure);
        Ok(measure)
    }

    /// The same engines stop on the idle fleet, then while a burst of `n` VirtualServices is
    /// sending (once the window's bulk budget is spent); the second failover must be no slower
    /// than the first. Returns the idle failover, the one under the burst and the burst.
    async fn failover_during_burst(&mut self, n: usize) -> anyhow::Result<Vec<Measure>> {
        self.quiet().await?;
        let idle = self.run.failover(FAILOVER_ENGINES).await?;
        let mut idle = idle;
        idle.scenario = "failover-idle";
        print_measure(&idle);
        self.quiet().await?;

        let offset = self.next_window_at_random_offset().await;
        let mark = self.run.mark().await?;
        let apply = self.apply(Kind::VirtualServices, n);
        // The burst is sending: most of what bulk work may spend of this window is spent.
        let spent = (QUOTA_PER_MINUTE * 0.8) as u64;
        let burst_writes = (n * Kind::VirtualServices.writes()) as u64;
        let deadline = mark.at + self.run.config.wall(120.0) + Duration::from_secs(30);
        self.run
            .wait_for(
                "burst before the stop",
                mark.at,
                deadline,
                Duration::from_millis(10),
                || async {
                    let writes = self.run.emulator.counts().await?.since(&mark.counts);
                    Ok(writes.group("write") >= spent.min(burst_writes))
                },
            )
            .await?;
        let stop_mark = self.run.mark().await?;
        let (start, end, affected) = self
            .run
            .stop_engines_and_wait(FAILOVER_ENGINES, "failover during the burst")
            .await?;
        let mut during = self
            .run
            .measure(
                "failover-during-burst",
                &stop_mark,
                self.run.gcp(end - start),
                false,
                idle.lower_bound_seconds,
                affected as u64,
                FAILOVER_ENGINES as u64,
                json!({"engines_stopped": FAILOVER_ENGINES, "routes_withdrawn": affected,
                       "burst": n, "idle_seconds": idle.seconds,
                       "stopped_at_gcp_seconds_into_the_burst": self.run.gcp(start - mark.at),
                       "note": "call counts include the burst running meanwhile"}),
            )
            .await?;
        during.n = n;
        print_measure(&during);
        let burst_end = self
            .all_ready(Kind::VirtualServices, "burst", mark.at)
            .await?;
        apply.await??;
        let burst = self
            .finish(
                Kind::VirtualServices,
                n,
                "burst-with-failover",
                &mark,
                burst_end,
                offset,
                json!({"note": "a failover ran during it"}),
            )
            .await?;
        // Engines back, routes back, before anything else is measured.
        let stopped = self.run.fleet.stopped(FAILOVER_ENGINES);
        self.run.emulator.set_engines(&stopped, "start").await?;
        Ok(vec![idle, during, burst])
    }
}

async fn apply<K: Object>(
    client: Client,
    namespace: String,
    manifests: Vec<Value>,
) -> anyhow::Result<()> {
    cluster::apply_all::<K>(client, namespace, manifests, 32).await
}

/// Runs the scenario; each measure is added to `measures` as it is taken.
pub async fn run(
    config: &Config,
    client: &Client,
    kubeconfig: &std::path::Path,
    measures: &mut Vec<Measure>,
) -> anyhow::Result<()> {
    let sizes = config.small_sizes.clone();
    let burst = sizes.iter().copied().max().unwrap_or(100);
    let config = Config {
        scale: config.small_scale,
        ..config.clone()
    };
    // Engines for every VirtualService the scenario applies; the fleet's objects are those
    // applied before the failovers.
    let engines = Fleet::new(sizes.iter().sum::<usize>() + burst).engines;
    let fleet = Fleet {
        objects: sizes.iter().sum(),
        engines,
    };
    let log = config.results_dir.join("operator-small-change.log");
    let (run, _emulator, mut child) = Run::start(
        &config,
        client,
        kubeconfig,
        Mode::Batched,
        burst,
        fleet,
        NAMESPACE,
        &log,
    )
    .await?;
    println!(
        "== small changes · sizes {sizes:?} · time scale {} · window offsets seeded with BENCH_SEED={} · {engines} engines",
        config.scale, config.seed
    );
    let mut small = Small {
        run,
        routes: Readiness::watch::<VpcRoute>(client, NAMESPACE),
        rng: rand::rngs::StdRng::seed_from_u64(config.seed),
        vpc_routes: 0,
        virtual_services: 0,
    };
    let outcome = async {
        for kind in [Kind::VpcRoutes, Kind::VirtualServices] {
            for n in &sizes {
                measures.push(small.step(kind, *n).await?);
            }
        }
        if small.virtual_services != small.run.fleet.objects {
            bail!("the fleet's objects are the VirtualServices applied before the failovers");
        }
        measures.extend(small.failover_during_burst(burst).await?);
        small.quiet().await
    }
    .await;
    let _ = child.kill();
    let _ = child.wait();
    outcome.with_context(|| format!("operator log: {}", log.display()))
}
