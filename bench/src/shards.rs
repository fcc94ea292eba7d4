//! The multi-project scenario (issue 18): N VirtualServices over C GcpClouds in C emulated
//! projects, reconciled by R operator replicas with `--sharding`; one replica is killed with
//! SIGKILL mid-rollout. Reports the time until every object is Ready against the lower bound
//! (projects run in parallel, each with its own rate quotas: the bound is the slowest
//! project's), each replica's peak RSS and CPU per object, and how long the killed replica's
//! clouds took to be held again.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use adc_operator::api::VirtualService;
use adc_testenv::EmulatorProcess;
use anyhow::{Context as _, bail};
use k8s_openapi::api::coordination::v1::Lease;
use kube::Client;
use kube::api::{Api, ListParams};
use serde_json::json;

use crate::bounds::bound_for_writes;
use crate::cluster::{self, Readiness};
use crate::config::{Config, INSTANCE_POLL_GCP_SECONDS, RESYNC_GCP_SECONDS};
use crate::fleet::Fleet;
use crate::probe::{Emulator, OperatorProcess, cpu_of};
use crate::scenarios::Measure;

const LEASE: &str = "adc-bench-shards";
const LEASE_SECONDS: u64 = 15;

fn project(cloud: usize) -> String {
    format!("bench-shard-{cloud:02}")
}

fn cloud_name(cloud: usize) -> String {
    format!("shards-c{cloud:02}")
}

/// C projects, each with the engines of a fleet of `per_cloud` objects.
fn world(fleet: &Fleet, clouds: usize) -> String {
    let one = fleet.world();
    let mut text = String::from("projects:\n");
    for cloud in 0..clouds {
        // Fleet::world writes one project; the same engines in each project.
        let body = one
            .trim_start_matches("projects:\n")
            .replace(crate::fleet::PROJECT, &project(cloud));
        text.push_str(&body);
    }
    text
}

struct Replica {
    name: String,
    child: Option<Child>,
    process: OperatorProcess,
}

fn start_replica(
    config: &Config,
    kubeconfig: &std::path::Path,
    emulator: &EmulatorProcess,
    name: &str,
) -> anyhow::Result<Replica> {
    let port = adc_testenv::free_port()?;
    let binary = std::env::current_exe()?.with_file_name("adc-operator");
    let log = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(
            || adc_testenv::repo_root().join("target"),
            std::path::PathBuf::from,
        )
        .join(format!("bench-shards-{name}.log"));
    let mut command = Command::new(&binary);
    command
        .args(["run", "--cluster-id", "bench", "--metrics-addr"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["--gcp-dispatch", "batched", "--gcp-time-scale"])
        .arg(config.scale.to_string())
        .args([
            "--sharding",
            "--lease-namespace",
            "default",
            "--lease-name",
            LEASE,
        ])
        .args(["--lease-duration", &LEASE_SECONDS.to_string()])
        .env(
            "GCE_METADATA_HOST",
            emulator.base_url.trim_start_matches("http://"),
        )
        .env("POD_NAME", name)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).with_context(|| log.display().to_string())?);
    let child = adc_testenv::spawn_for_process_lifetime(command)
        .with_context(|| format!("starting {}", binary.display()))?;
    Ok(Replica {
        name: name.to_string(),
        process: OperatorProcess {
            pid: child.id(),
            metrics_url: format!("http://127.0.0.1:{port}/metrics"),
        },
        child: Some(child),
    })
}

/// Each cloud's live Lease holder.
async fn holders(client: &Client) -> anyhow::Result<BTreeMap<String, String>> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "default");
    let now = SystemTime::now();
    let prefix = format!("{LEASE}-cloud-");
    let mut held = BTreeMap::new();
    for lease in leases.list(&ListParams::default()).await?.items {
        let name = lease.metadata.name.unwrap_or_default();
        let Some(cloud) = name.strip_prefix(&prefix) else {
            continue;
        };
        let Some(spec) = lease.spec else { continue };
        let (Some(holder), Some(renewed), Some(seconds)) = (
            spec.holder_identity,
            spec.renew_time,
            spec.lease_duration_seconds,
        ) else {
            continue;
        };
        let lapse = SystemTime::from(renewed.0) + Duration::from_secs(seconds.max(0) as u64);
        if !holder.is_empty() && lapse > now {
            held.insert(cloud.to_string(), holder);
        }
    }
    Ok(held)
}

/// Runs the scenario for `n` objects; returns its measures (rollout, takeover).
pub async fn run(
    config: &Config,
    client: &Client,
    kubeconfig: &std::path::Path,
    n: usize,
) -> anyhow::Result<Vec<Measure>> {
    let clouds = config.shard_clouds.max(1);
    let per_cloud = n.div_ceil(clouds);
    let n = per_cloud * clouds;
    let fleet = Fleet::new(per_cloud);
    let emulator = EmulatorProcess::start(
        &adc_testenv::emulator_binary()?,
        &world(&fleet, clouds),
        &[
            "--auth",
            "token",
            "--profile",
            "gcp",
            "--time-scale",
            &config.scale.to_string(),
        ],
    )?;
    let probe = Emulator::new(&emulator.base_url);
    let names: Vec<String> = (0..config.shard_replicas.max(2))
        .map(|r| format!("shard-replica-{r}"))
        .collect();
    let mut replicas: Vec<Replica> = names
        .iter()
        .map(|name| start_replica(config, kubeconfig, &emulator, name))
        .collect::<anyhow::Result<_>>()?;
    println!(
        "shards: {n} objects over {clouds} clouds ({per_cloud} each, {} engines per project), {} replicas",
        fleet.engines,
        replicas.len()
    );
    for cloud in 0..clouds {
        cluster::tenant(
            client,
            &cloud_name(cloud),
            &emulator.base_url,
            &config.spec_duration(RESYNC_GCP_SECONDS),
            &config.spec_duration(INSTANCE_POLL_GCP_SECONDS),
            &json!({"project": project(cloud)}),
        )
        .await?;
    }
    let held = holders(client).await?;
    println!("shards: clouds held at start {held:?}");
    let readiness: Vec<Readiness> = (0..clouds)
        .map(|c| Readiness::watch::<VirtualService>(client, &cloud_name(c)))
        .collect();
    let ready = |readiness: &[Readiness]| readiness.iter().map(|r| r.counts().0).sum::<usize>();
    let before: Vec<_> = replicas
        .iter()
        .map(|r| r.process.reading())
        .collect::<anyhow::Result<_>>()?;
    let counts_before = probe.counts().await?;
    // The rest of the two cores: the emulator, kube-apiserver and etcd.
    let others = ["gce-emulator", "kube-apiserver", "etcd"];
    let others_before: Vec<f64> = others.iter().map(|comm| cpu_of(comm)).collect();

    let started = Instant::now();
    let applies: Vec<_> = (0..clouds)
        .map(|c| {
            let manifests = (0..per_cloud)
                .map(|i| fleet.virtual_service(i, &cloud_name(c)))
                .collect();
            tokio::spawn(cluster::apply_all::<VirtualService>(
                client.clone(),
                cloud_name(c),
                manifests,
                (32 / clouds).max(2),
            ))
        })
        .collect();

    // The kill: the replica holding the most clouds, once 40% of the fleet is Ready.
    let deadline = started
        + Duration::from_secs_f64(bound_for_writes(per_cloud * 3) * config.scale * 20.0 + 600.0);
    while ready(&readiness) < n * 2 / 5 {
        if Instant::now() > deadline {
            bail!(
                "shards: {} of {n} Ready at the deadline, before the kill",
                ready(&readiness)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let held = holders(client).await?;
    let mut per_replica: BTreeMap<&str, usize> = BTreeMap::new();
    for holder in held.values() {
        *per_replica.entry(holder.as_str()).or_default() += 1;
    }
    let victim = per_replica
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(name, _)| name.to_string())
        .context("no cloud is held at the kill")?;
    let moved: BTreeSet<String> = held
        .iter()
        .filter(|(_, holder)| **holder == victim)
        .map(|(cloud, _)| cloud.clone())
        .collect();
    let victim_index = replicas
        .iter()
        .position(|r| r.name == victim)
        .context("the victim is not a replica of this run")?;
    let victim_reading = replicas[victim_index].process.reading()?;
    let in_flight = adc_testenv::emulator_admin(&emulator.base_url, "stats")
        .await
        .ok()
        .and_then(|stats| stats["operationsPending"].as_u64());
    if let Some(mut child) = replicas[victim_index].child.take() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let killed = Instant::now();
    let ready_at_kill = ready(&readiness);
    println!(
        "shards: killed {victim} ({} clouds: {moved:?}) at {:.1} s with {ready_at_kill}/{n} Ready",
        moved.len(),
        started.elapsed().as_secs_f64()
    );
    let takeover = loop {
        let held = holders(client).await?;
        if moved
            .iter()
            .all(|c| held.get(c).is_some_and(|h| *h != victim))
        {
            break killed.elapsed();
        }
        if killed.elapsed() > Duration::from_secs(120) {
            bail!("shards: the killed replica's clouds are not held 120 s later: {held:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!(
        "shards: its clouds held again {:.1} s after the kill",
        takeover.as_secs_f64()
    );
    for apply in applies {
        apply.await??;
    }
    while ready(&readiness) < n {
        if Instant::now() > deadline {
            bail!("shards: {} of {n} Ready at the deadline", ready(&readiness));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let wall = started.elapsed();
    let seconds = wall.as_secs_f64() / config.scale;
    let counts = probe.counts().await?.since(&counts_before);
    let bound = bound_for_writes(per_cloud * 3);
    let mut per_replica = Vec::new();
    let mut peak = 0.0f64;
    let mut cpu = 0.0;
    for (index, replica) in replicas.iter().enumerate() {
        let now = if index == victim_index {
            victim_reading
        } else {
            replica.process.reading()?
        };
        let used = now.cpu_seconds - before[index].cpu_seconds;
        peak = peak.max(now.peak_rss_mib);
        cpu += used;
        per_replica.push(json!({
            "replica": replica.name,
            "killed": index == victim_index,
            "peak_rss_mib": now.peak_rss_mib,
            "cpu_seconds": used,
        }));
    }
    let others_cpu: serde_json::Map<String, serde_json::Value> = others
        .iter()
        .zip(&others_before)
        .map(|(comm, before)| (comm.to_string(), json!(cpu_of(comm) - before)))
        .collect();
    let inserts = counts
        .by_method
        .iter()
        .filter(|(m, _)| m.ends_with(".insert"))
        .map(|(_, n)| *n)
        .sum::<u64>();
    let writes_needed = (n * 3) as u64;
    let detail = json!({
        "clouds": clouds,
        "replicas": replicas.len(),
        "per_cloud": per_cloud,
        "per_replica": per_replica,
        "killed": victim,
        "clouds_moved": moved.len(),
        "ready_at_kill": ready_at_kill,
        "takeover_seconds_wall": takeover.as_secs_f64(),
        "inserts": inserts,
        "operations_in_flight_at_kill": in_flight,
        "cpu_ms_per_object": cpu * 1000.0 / n as f64,
        "wall_seconds": wall.as_secs_f64(),
        "other_cpu_seconds": others_cpu,
    });
    let rollout = Measure {
        scenario: "shards-rollout",
        mode: format!("batched, {} replicas, {clouds} projects", replicas.len()),
        n,
        objects: n,
        seconds,
        measured_seconds: seconds,
        lower_bound_seconds: bound,
        ratio: seconds / bound,
        windowed_bound_seconds: None,
        window_offset_seconds: None,
        http_requests: counts.http_requests,
        writes: (counts.group("write") + counts.group("regionalWrite")),
        reads: counts.group("read"),
        operation_reads: counts.group("operationRead"),
        rate_limited: counts.rate_limited,
        retries: 0.0,
        writes_needed,
        quota_efficiency: writes_needed as f64
            / (counts.group("write") + counts.group("regionalWrite")).max(1) as f64,
        operator_peak_rss_mib: peak,
        operator_cpu_seconds: cpu,
        detail,
    };
    println!(
        "shards: {n} Ready in {seconds:.1} GCP s ({:.1} s wall), bound {bound:.1} s (×{:.2}); {inserts} inserts for {writes_needed} resources",
        wall.as_secs_f64(),
        seconds / bound
    );
    for replica in &mut replicas {
        if let Some(mut child) = replica.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
    // The clouds go (nothing reconciles them any more; a later suite's operator would take
    // them, and their objects' finalizers let go once their cloud is gone).
    let api: Api<adc_operator::api::GcpCloud> = Api::all(client.clone());
    for cloud in 0..clouds {
        let _ = api.delete(&cloud_name(cloud), &Default::default()).await;
    }
    Ok(vec![rollout])
}
