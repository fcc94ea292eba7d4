//! The five scenarios, run in one dispatch mode against one fresh emulator and operator.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use adc_operator::api::VirtualService;
use adc_testenv::EmulatorProcess;
use anyhow::{Context as _, bail};
use kube::Client;
use serde_json::{Value, json};

use crate::bounds::{
    OPERATION_SECONDS, QUOTA_PER_MINUTE as QUOTA, ROUND_TRIP_SECONDS, bound_for_writes,
    window_offset, windowed_bound,
};
use crate::cluster::{self, Readiness};
use crate::config::{
    Config, INSTANCE_POLL_GCP_SECONDS, Mode, PER_OBJECT_WORKERS, RESYNC_GCP_SECONDS,
};
use crate::fleet::{Fleet, next_hop_filter};
use crate::probe::{ApiserverWrites, Emulator, EmulatorCounts, OperatorProcess, ProcessReading};

/// One scenario's figures in one mode.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Measure {
    pub scenario: &'static str,
    pub mode: String,
    /// The fleet size the figures are for.
    pub n: usize,
    /// Objects actually run (fewer than `n` when extrapolated).
    pub objects: usize,
    /// Time in GCP seconds (extrapolated to `n` when `objects < n`).
    pub seconds: f64,
    /// Time as measured on `objects`, GCP seconds.
    pub measured_seconds: f64,
    pub lower_bound_seconds: f64,
    pub ratio: f64,
    /// The bound fixed rate windows give for this start ([`crate::bounds::windowed_bound`]),
    /// where it applies.
    pub windowed_bound_seconds: Option<f64>,
    /// Where in its rate window the work started, GCP seconds.
    pub window_offset_seconds: Option<f64>,
    pub http_requests: u64,
    pub writes: u64,
    pub reads: u64,
    pub operation_reads: u64,
    pub rate_limited: u64,
    pub retries: f64,
    pub writes_needed: u64,
    pub quota_efficiency: f64,
    pub operator_peak_rss_mib: f64,
    pub operator_cpu_seconds: f64,
    /// Scenario-specific figures.
    pub detail: Value,
}

impl Measure {
    /// Records the windowed bound for the measured time.
    pub fn set_windowed_bound(&mut self, bound: f64) {
        self.windowed_bound_seconds = Some(bound);
    }

    /// Time over the windowed bound, where there is one.
    pub fn windowed_ratio(&self) -> Option<f64> {
        self.windowed_bound_seconds
            .map(|bound| self.seconds / bound)
    }
}

/// A rollout's Ready count over time (GCP seconds), for the chart.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Series {
    pub mode: String,
    pub n: usize,
    pub objects: usize,
    pub points: Vec<(f64, usize)>,
}

/// Readings at the start of a measured window.
pub(crate) struct Mark {
    pub at: Instant,
    /// Wall-clock milliseconds since the Unix epoch at `at`.
    pub unix_millis: u128,
    pub counts: EmulatorCounts,
    process: ProcessReading,
    retries: f64,
}

pub(crate) struct Run<'a> {
    pub config: &'a Config,
    pub mode: Mode,
    pub n: usize,
    pub fleet: Fleet,
    pub client: Client,
    pub namespace: String,
    pub emulator: Emulator,
    pub operator: OperatorProcess,
    /// The namespace's VirtualServices.
    pub readiness: Readiness,
}

fn operator_binary() -> anyhow::Result<std::path::PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.with_file_name("adc-operator");
    if !path.is_file() {
        bail!(
            "{} is missing: build it with `cargo build --release --bin adc-operator` (make bench does)",
            path.display()
        );
    }
    Ok(path)
}

fn start_operator(
    scale: f64,
    mode: Mode,
    kubeconfig: &std::path::Path,
    emulator: &EmulatorProcess,
    log: &std::path::Path,
) -> anyhow::Result<(Child, OperatorProcess)> {
    let port = adc_testenv::free_port()?;
    let mut command = Command::new(operator_binary()?);
    command
        .args(["run", "--cluster-id", "bench", "--metrics-addr"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["--gcp-dispatch", mode.flag(), "--gcp-workers"])
        .arg(PER_OBJECT_WORKERS.to_string())
        .arg("--gcp-time-scale")
        .arg(scale.to_string())
        .env(
            "GCE_METADATA_HOST",
            emulator.base_url.trim_start_matches("http://"),
        )
        // BENCH_OPERATOR_LOG: the operator's RUST_LOG (default warn), into the log beside the
        // results.
        .env(
            "RUST_LOG",
            std::env::var("BENCH_OPERATOR_LOG").unwrap_or_else(|_| "warn".to_string()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).with_context(|| log.display().to_string())?);
    let child = adc_testenv::spawn_for_process_lifetime(command)?;
    let process = OperatorProcess {
        pid: child.id(),
        metrics_url: format!("http://127.0.0.1:{port}/metrics"),
    };
    Ok((child, process))
}

impl<'a> Run<'a> {
    /// A fresh emulator holding `fleet`'s world (the gcp profile at the config's time scale),
    /// the operator binary in `mode` against it (its log in `log`), and the tenant `namespace`
    /// with its GcpCloud, Ready. The emulator and the operator live as long as the returned
    /// process handles.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn start(
        config: &'a Config,
        client: &Client,
        kubeconfig: &std::path::Path,
        mode: Mode,
        n: usize,
        fleet: Fleet,
        namespace: &str,
        log: &std::path::Path,
    ) -> anyhow::Result<(Run<'a>, EmulatorProcess, Child)> {
        let world = fleet.world();
        Self::start_in(
            config,
            client,
            kubeconfig,
            mode,
            n,
            fleet,
            &world,
            &json!({}),
            namespace,
            log,
        )
        .await
    }

    /// [`Run::start`] with the emulator holding `world` (a world file) instead of the fleet's,
    /// and `cloud_spec`'s fields added to the GcpCloud's spec.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn start_in(
        config: &'a Config,
        client: &Client,
        kubeconfig: &std::path::Path,
        mode: Mode,
        n: usize,
        fleet: Fleet,
        world: &str,
        cloud_spec: &Value,
        namespace: &str,
        log: &std::path::Path,
    ) -> anyhow::Result<(Run<'a>, EmulatorProcess, Child)> {
        let scale = config.scale.to_string();
        let emulator = EmulatorProcess::start(
            &adc_testenv::emulator_binary()?,
            world,
            &[
                "--auth",
                "any",
                "--profile",
                "gcp",
                "--time-scale",
                &scale,
                "--rng-seed",
                "1",
            ],
        )?;
        std::fs::create_dir_all(&config.results_dir)?;
        let (child, operator) = start_operator(config.scale, mode, kubeconfig, &emulator, log)?;
        cluster::tenant(
            client,
            namespace,
            &emulator.base_url,
            &config.spec_duration(RESYNC_GCP_SECONDS),
            &config.spec_duration(INSTANCE_POLL_GCP_SECONDS),
            cloud_spec,
        )
        .await?;
        let run = Run {
            config,
            mode,
            n,
            fleet,
            client: client.clone(),
            readiness: Readiness::watch::<VirtualService>(client, namespace),
            namespace: namespace.to_string(),
            emulator: Emulator::new(&emulator.base_url),
            operator,
        };
        Ok((run, emulator, child))
    }

    pub(crate) fn gcp(&self, wall: Duration) -> f64 {
        wall.as_secs_f64() / self.config.scale
    }

    /// Work at scale n is extrapolated from `objects` linearly.
    fn extrapolation(&self) -> f64 {
        self.n as f64 / self.fleet.objects as f64
    }

    pub(crate) async fn mark(&self) -> anyhow::Result<Mark> {
        Ok(Mark {
            at: Instant::now(),
            unix_millis: crate::report::unix_millis(),
            counts: self.emulator.counts().await?,
            process: self.operator.reading()?,
            retries: self.operator.counter("adc_operator_gcp_retries").await?,
        })
    }

    /// Closes a measured window.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn measure(
        &self,
        scenario: &'static str,
        mark: &Mark,
        measured_seconds: f64,
        extrapolate: bool,
        bound: f64,
        writes_needed: u64,
        own_writes: u64,
        detail: Value,
    ) -> anyhow::Result<Measure> {
        let counts = self.emulator.counts().await?.since(&mark.counts);
        let process = self.operator.reading()?;
        let retries = self.operator.counter("adc_operator_gcp_retries").await? - mark.retries;
        let seconds = if extrapolate {
            measured_seconds * self.extrapolation()
        } else {
            measured_seconds
        };
        let writes = counts.group("write") + counts.group("regionalWrite") - own_writes;
        Ok(Measure {
            scenario,
            mode: self.mode.label(),
            n: self.n,
            objects: self.fleet.objects,
            seconds,
            measured_seconds,
            lower_bound_seconds: bound,
            ratio: seconds / bound,
            windowed_bound_seconds: None,
            window_offset_seconds: None,
            http_requests: counts.http_requests,
            writes,
            reads: counts.group("read"),
            operation_reads: counts.group("operationRead"),
            rate_limited: counts.rate_limited,
            retries,
            writes_needed,
            quota_efficiency: if writes == 0 {
                1.0
            } else {
                writes_needed as f64 / writes as f64
            },
            operator_peak_rss_mib: process.peak_rss_mib,
            operator_cpu_seconds: process.cpu_seconds - mark.process.cpu_seconds,
            detail,
        })
    }

    pub(crate) fn progress(&self, label: &str, start: Instant, extra: &str) {
        let (ready, exist) = self.readiness.counts();
        let elapsed = start.elapsed();
        println!(
            "  [{} n={} {label}] {ready}/{exist} Ready · {:.1} s wall · {:.0} s GCP{extra}",
            self.mode.flag(),
            self.fleet.objects,
            elapsed.as_secs_f64(),
            self.gcp(elapsed)
        );
    }

    /// A wall-clock deadline for work whose lower bound is `bound` GCP seconds.
    pub(crate) fn deadline(&self, bound: f64) -> Instant {
        let slack = match self.mode {
            Mode::PerObject => 60.0,
            _ => 10.0,
        };
        Instant::now() + self.config.wall(bound * slack + 600.0) + Duration::from_secs(120)
    }

    /// Polls `done` every `every` until it holds, printing progress every two seconds.
    pub(crate) async fn wait_for<F, Fut>(
        &self,
        label: &str,
        start: Instant,
        deadline: Instant,
        every: Duration,
        mut done: F,
    ) -> anyhow::Result<Instant>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<bool>>,
    {
        let mut last_print = Instant::now();
        loop {
            if done().await? {
                return Ok(Instant::now());
            }
            if Instant::now() > deadline {
                self.progress(label, start, " · GAVE UP");
                bail!(
                    "{label} in mode {} did not finish in {:.0} s",
                    self.mode.flag(),
                    start.elapsed().as_secs_f64()
                );
            }
            if last_print.elapsed() >= Duration::from_secs(2) {
                self.progress(label, start, "");
                last_print = Instant::now();
            }
            tokio::time::sleep(every).await;
        }
    }

    async fn all_ready(&self) -> anyhow::Result<bool> {
        let (ready, exist) = self.readiness.counts();
        Ok(ready == self.fleet.objects && exist == self.fleet.objects)
    }

    fn manifests(&self) -> Vec<Value> {
        (0..self.fleet.objects)
            .map(|i| self.fleet.virtual_service(i, &self.namespace))
            .collect()
    }

    /// Scenario 1: apply the fleet at once; until every object is Ready at its generation.
    async fn rollout(&self) -> anyhow::Result<(Measure, Series)> {
        let mark = self.mark().await?;
        let start = mark.at;
        let mut apply = Some(tokio::spawn(cluster::apply_all::<VirtualService>(
            self.client.clone(),
            self.namespace.clone(),
            self.manifests(),
            32,
        )));
        let bound = bound_for_writes(self.fleet.writes());
        let mut points = vec![(0.0, 0)];
        let mut last_print = Instant::now();
        let deadline = self.deadline(bound);
        let end = loop {
            let (ready, _) = self.readiness.counts();
            if points.last().is_none_or(|(_, r)| *r != ready) {
                points.push((self.gcp(start.elapsed()), ready));
            }
            if self.all_ready().await? {
                break Instant::now();
            }
            if let Some(handle) = apply.take_if(|h| h.is_finished()) {
                handle.await??;
            }
            if Instant::now() > deadline {
                bail!("rollout in mode {} did not finish", self.mode.flag());
            }
            if last_print.elapsed() >= Duration::from_secs(2) {
                let writes = self
                    .emulator
                    .counts()
                    .await?
                    .since(&mark.counts)
                    .group("write");
                self.progress("rollout", start, &format!(" · {writes} writes"));
                last_print = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        if let Some(handle) = apply {
            handle.await??;
        }
        let mut measure = self
            .measure(
                "rollout",
                &mark,
                self.gcp(end - start),
                true,
                bound_for_writes(self.n * 3),
                self.fleet.writes() as u64,
                0,
                json!({"engines": self.fleet.engines}),
            )
            .await?;
        if self.fleet.objects == self.n {
            // A fresh emulator: the whole window is left when the rollout starts.
            let offset = window_offset(mark.unix_millis, self.config.scale);
            measure.window_offset_seconds = Some(offset);
            measure.set_windowed_bound(windowed_bound(self.n * 3, offset, QUOTA as usize));
        }
        let series = Series {
            mode: self.mode.label(),
            n: self.n,
            objects: self.fleet.objects,
            points,
        };
        Ok((measure, series))
    }

    /// Stops `k` engines and measures until no route that pointed at them is left (each was
    /// withdrawn: ActiveActive). `Some(names)` restricts the wait to routes that existed at the
    /// stop (a rollout in progress creates new ones meanwhile).
    pub(crate) async fn stop_engines_and_wait(
        &self,
        k: usize,
        label: &str,
    ) -> anyhow::Result<(Instant, Instant, usize)> {
        let stopped = self.fleet.stopped(k);
        let filter = next_hop_filter(&stopped);
        let affected: std::collections::BTreeSet<String> = self
            .emulator
            .routes(Some(&filter))
            .await?
            .iter()
            .filter_map(|r| r["name"].as_str().map(str::to_string))
            .collect();
        let start = Instant::now();
        self.emulator.set_engines(&stopped, "stop").await?;
        let deadline = self.deadline(OPERATION_SECONDS * 10.0);
        let end = self
            .wait_for(
                label,
                start,
                deadline,
                Duration::from_millis(20),
                || async {
                    let left = self.emulator.routes(Some(&filter)).await?;
                    Ok(!left
                        .iter()
                        .filter_map(|r| r["name"].as_str())
                        .any(|name| affected.contains(name)))
                },
            )
            .await?;
        Ok((start, end, affected.len()))
    }

    /// Scenario 2: a converged fleet loses `k` engines; the engines come back afterwards.
    pub(crate) async fn failover(&self, k: usize) -> anyhow::Result<Measure> {
        let mark = self.mark().await?;
        let (start, end, affected) = self.stop_engines_and_wait(k, "failover").await?;
        let mut measure = self
            .measure(
                "failover",
                &mark,
                self.gcp(end - start),
                false,
                ROUND_TRIP_SECONDS + OPERATION_SECONDS,
                affected as u64,
                k as u64,
                json!({"engines_stopped": k, "routes_withdrawn": affected}),
            )
            .await?;
        // Recovery: the engines start again (20-40 s) and every object gets both routes back.
        let stopped = self.fleet.stopped(k);
        // Once their stop is done (set_engines waits for it), so the time is the recovery's.
        self.emulator.set_engines(&stopped, "start").await?;
        let restart = Instant::now();
        let filter = next_hop_filter(&stopped);
        let deadline = Instant::now() + self.config.wall(300.0) + Duration::from_secs(30);
        let recovered = self
            .wait_for(
                "recovery",
                restart,
                deadline,
                Duration::from_millis(100),
                || async { Ok(self.emulator.routes(Some(&filter)).await?.len() == affected) },
            )
            .await;
        let back = self.emulator.routes(Some(&filter)).await?.len();
        measure.detail["recovery_seconds"] = json!(self.gcp(restart.elapsed()));
        measure.detail["routes_back"] = json!(back);
        if let Err(err) = recovered {
            // Recorded, not fatal: the rest of the run still says something.
            println!("  !! {err}: {back} of {affected} routes back");
            measure.detail["recovery_failed"] = json!(err.to_string());
        }
        self.wait_quiet().await?;
        Ok(measure)
    }

    /// Until every object is Ready and no operation is pending.
    pub(crate) async fn wait_quiet(&self) -> anyhow::Result<()> {
        let objects = self.fleet.objects;
        self.wait_quiet_for(|| self.readiness.counts() == (objects, objects))
            .await
    }

    /// Until `ready` holds and no operation is pending in the emulator.
    pub(crate) async fn wait_quiet_for(&self, ready: impl Fn() -> bool) -> anyhow::Result<()> {
        let deadline = self.deadline(120.0);
        self.wait_for(
            "settle",
            Instant::now(),
            deadline,
            Duration::from_millis(100),
            || async {
                if !ready() {
                    return Ok(false);
                }
                let stats = adc_testenv::emulator_admin(&self.emulator.base_url, "stats").await?;
                Ok(stats["operationsPending"].as_u64() == Some(0))
            },
        )
        .await?;
        Ok(())
    }

    /// Scenario 4: a converged fleet for `steady_resyncs` resync intervals.
    async fn steady_state(&self) -> anyhow::Result<Measure> {
        self.wait_quiet().await?;
        let mark = self.mark().await?;
        let kube_before = ApiserverWrites::read(&self.client).await?;
        let resyncs = self.config.steady_resyncs;
        let window = self.config.wall(RESYNC_GCP_SECONDS * f64::from(resyncs));
        let start = Instant::now();
        while start.elapsed() < window {
            tokio::time::sleep(Duration::from_secs(2).min(window)).await;
            self.progress("steady state", start, "");
        }
        let kube = ApiserverWrites::read(&self.client)
            .await?
            .since(&kube_before);
        let counts = self.emulator.counts().await?.since(&mark.counts);
        let per_resync: serde_json::Map<String, Value> = counts
            .by_method
            .iter()
            .map(|(method, calls)| (method.clone(), json!(*calls as f64 / f64::from(resyncs))))
            .collect();
        let reads_allowed = self.n.div_ceil(500) + 10;
        self.measure(
            "steady-state",
            &mark,
            self.gcp(start.elapsed()),
            false,
            RESYNC_GCP_SECONDS * f64::from(resyncs),
            0,
            0,
            json!({
                "resyncs": resyncs,
                "resync_gcp_seconds": RESYNC_GCP_SECONDS,
                "instance_poll_gcp_seconds": INSTANCE_POLL_GCP_SECONDS,
                "calls_per_resync_by_method": per_resync,
                "reads_allowed_per_resync_per_type": reads_allowed,
                "kube_object_writes": kube.objects,
                "kube_status_writes": kube.status,
            }),
        )
        .await
    }

    /// Deletes every object of the fleet one by one, 32 at a time: a `deletecollection` of
    /// 20,000 objects with finalizers outlasts the request's connection (the 20,000 run lost it
    /// mid-teardown), and one delete per object is what a GitOps prune sends anyway.
    async fn delete_fleet(&self) -> anyhow::Result<()> {
        let names = (0..self.fleet.objects).map(Fleet::object_name).collect();
        cluster::delete_each::<VirtualService>(&self.client, &self.namespace, names, 32).await
    }

    /// Scenario 5: delete every object; until every GCP resource is gone.
    async fn teardown(&self) -> anyhow::Result<Measure> {
        let mark = self.mark().await?;
        self.delete_fleet().await?;
        let bound = bound_for_writes(self.fleet.writes());
        let deadline = self.deadline(bound);
        let end = self
            .wait_for(
                "teardown",
                mark.at,
                deadline,
                Duration::from_millis(50),
                || async {
                    let resources = self.emulator.resources().await?;
                    let left = resources.get("routes").copied().unwrap_or(0)
                        + resources.get("firewalls").copied().unwrap_or(0);
                    Ok(left == 0 && self.readiness.counts().1 == 0)
                },
            )
            .await?;
        self.measure(
            "teardown",
            &mark,
            self.gcp(end - mark.at),
            true,
            bound_for_writes(self.n * 3),
            self.fleet.writes() as u64,
            0,
            json!({}),
        )
        .await
    }

    /// Scenario 3: stop engines while a rollout is in progress; the failover must not wait
    /// behind the bulk creates, and the rollout must still finish near its bound.
    async fn failover_under_load(&self) -> anyhow::Result<Vec<Measure>> {
        let k = self.config.under_load_engines;
        let mark = self.mark().await?;
        let apply = tokio::spawn(cluster::apply_all::<VirtualService>(
            self.client.clone(),
            self.namespace.clone(),
            self.manifests(),
            32,
        ));
        // Stop the engines once a third of the routes to them exist (listed: done, not only
        // inserted; a burst inserts hundreds at once).
        let bound = bound_for_writes(self.fleet.writes());
        let stopped = self.fleet.stopped(k);
        let filter = next_hop_filter(&stopped);
        let target = self.fleet.routes_to(&stopped).div_ceil(3);
        let deadline = self.deadline(bound);
        self.wait_for(
            "rollout before the stop",
            mark.at,
            deadline,
            Duration::from_millis(100),
            || async { Ok(self.emulator.routes(Some(&filter)).await?.len() >= target) },
        )
        .await?;
        let failover_mark = self.mark().await?;
        let (start, end, affected) = self.stop_engines_and_wait(k, "failover under load").await?;
        let failover = self
            .measure(
                "failover-under-load",
                &failover_mark,
                self.gcp(end - start),
                false,
                ROUND_TRIP_SECONDS + OPERATION_SECONDS,
                affected as u64,
                k as u64,
                json!({"engines_stopped": k, "routes_withdrawn": affected,
                       "note": "call counts include the rollout running meanwhile"}),
            )
            .await?;
        let end = self
            .wait_for(
                "rollout under failover",
                mark.at,
                deadline,
                Duration::from_millis(50),
                || async { self.all_ready().await },
            )
            .await?;
        apply.await??;
        self.wait_quiet().await?;
        let stray = self
            .emulator
            .routes(Some(&next_hop_filter(&stopped)))
            .await?
            .len();
        let routes = self
            .emulator
            .resources()
            .await?
            .get("routes")
            .copied()
            .unwrap_or(0);
        let needed = routes + self.fleet.objects as u64 + affected as u64;
        let rollout = self
            .measure(
                "rollout-during-failover",
                &mark,
                self.gcp(end - mark.at),
                true,
                bound_for_writes(needed as usize),
                needed,
                k as u64,
                json!({"routes_to_stopped_engines_at_end": stray, "routes_at_end": routes}),
            )
            .await?;
        if stray != 0 {
            bail!("{stray} route(s) still point at stopped engines after the rollout");
        }
        // Leave nothing behind: engines back, objects gone.
        self.emulator.set_engines(&stopped, "start").await?;
        self.delete_fleet().await?;
        let deadline = self.deadline(bound);
        self.wait_for(
            "clean-up",
            Instant::now(),
            deadline,
            Duration::from_millis(100),
            || async { Ok(self.readiness.counts().1 == 0) },
        )
        .await?;
        Ok(vec![failover, rollout])
    }
}

/// Runs every scenario for a fleet of `n` in `mode`, on a fresh emulator and operator; each
/// measure is added to `measures` as it is taken, so a failure keeps what was measured before.
pub async fn run_mode(
    config: &Config,
    client: &Client,
    kubeconfig: &std::path::Path,
    mode: Mode,
    n: usize,
    measures: &mut Vec<Measure>,
) -> anyhow::Result<Series> {
    let fleet = Fleet::new(config.objects_for(mode, n));
    let log = config
        .results_dir
        .join(format!("operator-{}-{n}.log", mode.flag()));
    let namespace = format!("bench-{}-{n}", mode.flag());
    let (run, _emulator, mut child) =
        Run::start(config, client, kubeconfig, mode, n, fleet, &namespace, &log).await?;
    let outcome = async {
        println!(
            "== {} · fleet {n} · {} objects run · {} engines",
            mode.label(),
            run.fleet.objects,
            run.fleet.engines
        );
        let (rollout, series) = run.rollout().await?;
        print_measure(&rollout);
        measures.push(rollout);
        for k in &config.failover_engines {
            let failover = run.failover(*k).await?;
            print_measure(&failover);
            measures.push(failover);
        }
        let steady = run.steady_state().await?;
        print_measure(&steady);
        measures.push(steady);
        let teardown = run.teardown().await?;
        print_measure(&teardown);
        measures.push(teardown);
        for measure in run.failover_under_load().await? {
            print_measure(&measure);
            measures.push(measure);
        }
        anyhow::Ok(series)
    }
    .await;
    let _ = child.kill();
    let _ = child.wait();
    outcome.with_context(|| format!("operator log: {}", log.display()))
}

pub(crate) fn print_measure(m: &Measure) {
    if let (Some(bound), Some(ratio)) = (m.windowed_bound_seconds, m.windowed_ratio()) {
        println!(
            "  → {} {} n={}: windowed bound {bound:.1} s at offset {:.1} s, ×{ratio:.2}",
            m.scenario,
            m.mode,
            m.n,
            m.window_offset_seconds.unwrap_or_default()
        );
    }
    println!(
        "  → {} {}: {:.1} s GCP (bound {:.1} s, ×{:.2}) · {} HTTP · {} writes ({} needed) · {} reads · {} op reads · {} 429s · {:.0} retries · operator {:.1} CPU s, peak {:.0} MiB",
        m.scenario,
        m.mode,
        m.seconds,
        m.lower_bound_seconds,
        m.ratio,
        m.http_requests,
        m.writes,
        m.writes_needed,
        m.reads,
        m.operation_reads,
        m.rate_limited,
        m.retries,
        m.operator_cpu_seconds,
        m.operator_peak_rss_mib
    );
}
