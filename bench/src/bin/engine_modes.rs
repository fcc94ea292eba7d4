//! The GCP engine's dispatch modes side by side: N route inserts against gce-emulator's `gcp`
//! profile (latencies, operation durations, per-minute rate quotas), time compressed by
//! `--time-scale`, reported in real-GCP seconds next to the model's lower bound.
//!
//! `make bench-engine` (`cargo run --release -p adc-bench --bin engine-modes`). `ENGINE_BENCH_N`
//! (default 5000), `ENGINE_BENCH_SCALE` (default 0.01), `ENGINE_BENCH_MODES` (default
//! batched,concurrent,per-object). The in-process engine alone, unlike `adc-bench`, which runs
//! the operator binary on a control plane.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark fails loudly

use std::sync::Arc;
use std::time::Instant;

use adc_operator::gcp::{
    Credentials, DispatchMode, Engine, EngineSettings, GcpMetrics, Lane, Mutation, RateLimits,
    Target,
};
use adc_testenv::{EmulatorProcess, emulator_binary};
use serde_json::json;

const PROJECT: &str = "bench-project";
/// The emulator's default per-minute quotas (docs/compute-api.md §11) and median route
/// operation (8 s).
const QUOTA_PER_MINUTE: f64 = 1500.0;
const MEDIAN_OPERATION_S: f64 = 8.0;

fn world() -> String {
    format!(
        "projects:
  - id: {PROJECT}
    quotas: {{ROUTES: 1000000, STATIC_ROUTES_PER_NETWORK: 1000000}}
    networks:
      - name: default
        subnetworks:
          - {{name: default, region: us-central1, ipCidrRange: 10.128.0.0/20}}
    instances:
      - {{name: se-1, zone: us-central1-a, networkIP: 10.128.0.10, canIpForward: true}}
"
    )
}

fn route(i: usize) -> Mutation {
    let name = format!("adc-b-{i:06}");
    Mutation::insert(
        Target::route(name.clone()),
        json!({"name": name, "network": "global/networks/default", "priority": 2000,
               "destRange": format!("172.{}.{}.{}/32", 16 + (i >> 16), (i >> 8) & 255, i & 255),
               "nextHopInstance": "zones/us-central1-a/instances/se-1"}),
    )
}

struct Row {
    mode: &'static str,
    seconds: f64,
    http: u64,
    writes: u64,
    reads: u64,
    operation_reads: u64,
    rate_limited: u64,
}

async fn run(mode: DispatchMode, label: &'static str, n: usize, scale: f64) -> Row {
    let binary = emulator_binary().unwrap();
    let scale_text = scale.to_string();
    let emulator = EmulatorProcess::start(
        &binary,
        &world(),
        &[
            "--auth",
            "none",
            "--profile",
            "gcp",
            "--time-scale",
            &scale_text,
            "--rng-seed",
            "1",
        ],
    )
    .unwrap();
    let mut settings = EngineSettings::new(PROJECT, &emulator.base_url);
    settings.dispatch = mode;
    settings.time_scale = scale;
    settings.rate_limits = RateLimits::default();
    let engine = Engine::start(
        settings,
        Credentials::anonymous(),
        Arc::new(GcpMetrics::default()),
    )
    .unwrap();
    if let Ok(probe) = std::env::var("ENGINE_BENCH_PROBE") {
        let _ = std::process::Command::new("python3")
            .arg(probe)
            .arg(&emulator.base_url)
            .spawn();
    }
    let start = Instant::now();
    let receivers: Vec<_> = (0..n)
        .map(|i| engine.submit(route(i), Lane::Bulk))
        .collect();
    for receiver in receivers {
        receiver.await.unwrap().unwrap();
    }
    let seconds = start.elapsed().as_secs_f64() / scale;
    engine.shutdown();
    let stats = adc_testenv::emulator_admin(&emulator.base_url, "stats")
        .await
        .unwrap();
    let group = |g: &str| stats["callsByGroup"][g].as_u64().unwrap_or(0);
    Row {
        mode: label,
        seconds,
        http: stats["httpRequests"].as_u64().unwrap_or(0),
        writes: group("write"),
        reads: group("read"),
        operation_reads: group("operationRead"),
        rate_limited: stats["rateLimited"].as_u64().unwrap_or(0),
    }
}

fn main() {
    let n: usize = std::env::var("ENGINE_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    let scale: f64 = std::env::var("ENGINE_BENCH_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.01);
    let modes = std::env::var("ENGINE_BENCH_MODES")
        .unwrap_or_else(|_| "batched,concurrent,per-object".into());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // Lower bound (emulator/README.md): max(W/Qw, R/Qr, P/Qp) minutes + D; the work needs
    // W = N writes and at least ceil(N/500) operation reads.
    let bound = (n as f64 / QUOTA_PER_MINUTE) * 60.0 + MEDIAN_OPERATION_S;
    let mut rows = Vec::new();
    for mode in modes.split(',') {
        let (dispatch, label) = match mode.trim() {
            "batched" => (DispatchMode::Batched, "batched"),
            "concurrent" => (DispatchMode::Concurrent, "concurrent"),
            "per-object" => (DispatchMode::PerObject { workers: 10 }, "per-object (K=10)"),
            other => panic!("unknown mode {other}"),
        };
        rows.push(runtime.block_on(run(dispatch, label, n, scale)));
    }
    println!(
        "{n} route inserts, gce-emulator --profile gcp --time-scale {scale}, default quotas 1500/min per group"
    );
    println!("lower bound: {n}/1500 min + 8 s = {bound:.0} s (real-GCP seconds)");
    println!(
        "| mode | time (s) | time / bound | HTTP requests | writes | reads | operation reads | 429/rateLimitExceeded |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for row in rows {
        println!(
            "| {} | {:.0} | {:.2} | {} | {} | {} | {} | {} |",
            row.mode,
            row.seconds,
            row.seconds / bound,
            row.http,
            row.writes,
            row.reads,
            row.operation_reads,
            row.rate_limited
        );
    }
}
