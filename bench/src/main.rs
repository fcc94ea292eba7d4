//! The convergence benchmark (`make bench`; bench/README.md).
//!
//! Real pieces only: a local kube-apiserver + etcd, the adc-operator binary, and gce-emulator
//! with `--profile gcp` (latencies, operation durations, per-minute rate quotas) and a
//! `--time-scale` that compresses time. Every scenario runs in every dispatch mode; times are
//! reported in GCP seconds next to the lower bound the emulator's model allows for the same work.

mod bounds;
mod cluster;
mod config;
mod fleet;
mod pools;
mod probe;
mod report;
mod scenarios;
mod shards;
mod small;

use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let config = config::Config::from_env()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // Started outside the runtime (it waits with a blocking client), on the main thread, which
    // lives as long as the process: the children die with it.
    let plane = adc_testenv::ControlPlane::start().context("starting kube-apiserver and etcd")?;
    runtime.block_on(run(config, &plane))
}

async fn run(config: config::Config, plane: &adc_testenv::ControlPlane) -> anyhow::Result<()> {
    let (date, when) = report::now();
    println!(
        "convergence benchmark {when}: suites {:?}, fleets {:?}, pool sizes {:?}, modes {:?}, time scale {}, {} cores{}",
        config.suites,
        config.sizes,
        config.pool_sizes,
        config.modes.iter().map(|m| m.flag()).collect::<Vec<_>>(),
        config.scale,
        report::cores(),
        if config.quick {
            ", quick (records nothing in bench/)"
        } else {
            ""
        }
    );
    let kubeconfig = kube::config::Kubeconfig::read_from(plane.kubeconfig())?;
    let client = kube::Client::try_from(
        kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?,
    )?;
    cluster::install_crds(&client).await?;
    std::fs::create_dir_all(&config.results_dir)?;

    let mut measures = Vec::new();
    let mut series = Vec::new();
    let mut failures = Vec::new();
    let fleets: &[usize] = if config.suites.contains(&config::Suite::Fleet) {
        &config.sizes
    } else {
        &[]
    };
    for n in fleets {
        for mode in &config.modes {
            let run = scenarios::run_mode(
                &config,
                &client,
                plane.kubeconfig(),
                *mode,
                *n,
                &mut measures,
            );
            match run.await {
                Ok(rollout) => series.push(rollout),
                Err(err) => {
                    // The other modes still run; the run fails at the end.
                    println!("!! fleet {n}, mode {}: {err:#}", mode.flag());
                    failures.push(format!("fleet {n}, mode {}: {err:#}", mode.flag()));
                }
            }
        }
    }

    // Before the small changes: they leave their objects behind, and the pools suite cleans up
    // after itself.
    if config.suites.contains(&config::Suite::Pools) {
        failures.extend(pools::run(&config, &client, plane.kubeconfig(), &mut measures).await);
    }

    if config.suites.contains(&config::Suite::SmallChange) {
        let mut small = Vec::new();
        if let Err(err) = small::run(&config, &client, plane.kubeconfig(), &mut small).await {
            println!("!! small changes: {err:#}");
            failures.push(format!("small changes: {err:#}"));
        }
        measures.extend(small);
    }

    // Last: its clouds and replicas would only be in the way of the other suites.
    if config.suites.contains(&config::Suite::Shards) {
        for n in &config.shard_sizes {
            match shards::run(&config, &client, plane.kubeconfig(), *n).await {
                Ok(found) => measures.extend(found),
                Err(err) => {
                    println!("!! shards {n}: {err:#}");
                    failures.push(format!("shards {n}: {err:#}"));
                }
            }
        }
    }

    for path in report::write_json(&config, &date, &measures)? {
        println!("wrote {}", path.display());
    }
    // Only sizes the fleet suite ran: a run of other suites leaves the day's charts alone.
    for n in config
        .sizes
        .iter()
        .filter(|n| series.iter().any(|s| s.n == **n))
    {
        let path = config.results_dir.join(format!("{date}-rollout-n{n}.png"));
        if report::chart(&path, *n, &series)? {
            println!("wrote {}", path.display());
        }
    }
    let mut markdown = report::markdown(&config, &when, &measures);
    for failure in &failures {
        markdown.push_str(&format!("- FAILED: {failure}\n"));
    }
    println!("\n{markdown}");
    if let Some(readme) = &config.readme {
        report::append_readme(readme, &markdown)?;
        println!("appended the table to {}", readme.display());
    }
    if !failures.is_empty() {
        anyhow::bail!(
            "{} mode run(s) failed: {}",
            failures.len(),
            failures.join("; ")
        );
    }
    Ok(())
}
