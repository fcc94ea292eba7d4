//! Emulator throughput and memory: inner calls per second through the batch endpoint with
//! `--profile instant`, and resident memory while holding 100,000 routes.
//!
//! `cargo bench -p gce-emulator --bench throughput` (or `make bench-emulator`). Sizes:
//! `EMU_BENCH_ROUTES` (default 100000), `EMU_BENCH_CONCURRENCY` (batches in flight, default 4).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark harness fails loudly

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Instant;

use futures::StreamExt as _;
use gce_emulator::multipart::{self, InnerRequest};
use serde_json::json;

const PROJECT: &str = "bench";

fn world() -> String {
    "projects:
  - id: bench
    quotas: {ROUTES: 1000000, STATIC_ROUTES_PER_NETWORK: 1000000}
    networks:
      - name: default
        subnetworks:
          - {name: default, region: us-central1, ipCidrRange: 10.128.0.0/20}
"
    .to_string()
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn route_part(i: usize, kind: &str) -> InnerRequest {
    let name = format!("bench-{i:07}");
    match kind {
        "insert" => InnerRequest {
            content_id: Some(format!("b+{i}")),
            method: "POST".into(),
            path_and_query: format!("/compute/v1/projects/{PROJECT}/global/routes"),
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: json!({
                "name": name,
                "network": "global/networks/default",
                "destRange": format!("172.{}.{}.{}/32", 16 + (i >> 16) % 16, (i >> 8) & 255, i & 255),
                "priority": 2000,
                "nextHopIp": "10.128.0.9",
                "description": "adc.dev/owner=bench-cluster/team-a/web"
            })
            .to_string()
            .into_bytes(),
        },
        _ => InnerRequest {
            content_id: Some(format!("b+{i}")),
            method: "GET".into(),
            path_and_query: format!("/compute/v1/projects/{PROJECT}/global/routes/{name}"),
            ..Default::default()
        },
    }
}

async fn run_phase(
    client: &reqwest::Client,
    base: &str,
    total: usize,
    kind: &str,
    concurrency: usize,
) -> f64 {
    let batches: Vec<Vec<InnerRequest>> = (0..total)
        .collect::<Vec<_>>()
        .chunks(1000)
        .map(|chunk| chunk.iter().map(|i| route_part(*i, kind)).collect())
        .collect();
    let bodies: Vec<(String, Vec<u8>)> = batches
        .iter()
        .map(|parts| {
            let boundary = multipart::new_boundary();
            let body = multipart::encode_requests(&boundary, parts);
            (boundary, body)
        })
        .collect();
    let start = Instant::now();
    let failures: usize = futures::stream::iter(bodies)
        .map(|(boundary, body)| {
            let client = client.clone();
            let url = format!("{base}/batch/compute/v1");
            async move {
                let response = client
                    .post(url)
                    .header(
                        "content-type",
                        format!("multipart/mixed; boundary={boundary}"),
                    )
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                let content_type = response.headers()["content-type"]
                    .to_str()
                    .unwrap()
                    .to_string();
                let bytes = response.bytes().await.unwrap();
                let parts = multipart::parse_responses(&content_type, &bytes).unwrap();
                parts.iter().filter(|p| p.status != 200).count()
            }
        })
        .buffer_unordered(concurrency)
        .fold(0, |acc, n| async move { acc + n })
        .await;
    let seconds = start.elapsed().as_secs_f64();
    assert_eq!(failures, 0, "{kind}: every inner call succeeds");
    total as f64 / seconds
}

fn main() {
    let total: usize = std::env::var("EMU_BENCH_ROUTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let concurrency: usize = std::env::var("EMU_BENCH_CONCURRENCY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let dir = tempfile::tempdir().unwrap();
    let world_path = dir.path().join("world.yaml");
    std::fs::write(&world_path, world()).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_gce-emulator"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--auth",
            "none",
            "--profile",
            "instant",
            "--world",
        ])
        .arg(&world_path)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = format!(
        "http://{}",
        line.trim().strip_prefix("listening on ").unwrap()
    );
    let pid = child.id();
    let idle_rss = rss_kib(pid, "VmRSS:");

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (insert_rate, get_rate) = runtime.block_on(async {
        let client = reqwest::Client::new();
        let insert_rate = run_phase(&client, &base, total, "insert", concurrency).await;
        let get_rate = run_phase(&client, &base, total, "get", concurrency).await;
        (insert_rate, get_rate)
    });
    let held_rss = rss_kib(pid, "VmRSS:");
    let peak_rss = rss_kib(pid, "VmHWM:");
    let _ = child.kill();
    let _ = child.wait();

    println!(
        "gce-emulator throughput (--profile instant, {concurrency} batches of 1000 in flight, 2-core machine)"
    );
    println!("  routes.insert via batch: {insert_rate:>9.0} inner calls/s");
    println!("  routes.get via batch:    {get_rate:>9.0} inner calls/s");
    println!(
        "  memory: idle {:.1} MiB, holding {total} routes and {total} operations {:.1} MiB (peak {:.1} MiB)",
        idle_rss as f64 / 1024.0,
        held_rss as f64 / 1024.0,
        peak_rss as f64 / 1024.0
    );
}
