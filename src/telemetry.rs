//! Logs, and the HTTP endpoints of the metrics port: `/metrics` (Prometheus text), `/healthz`
//! and `/readyz`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Log format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Starts logging to stderr; `RUST_LOG` filters (default `info`).
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn,hyper=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Serves the metrics port until the process ends.
pub async fn serve(
    addr: SocketAddr,
    registry: Arc<Mutex<Registry>>,
    process: Arc<ProcessMetrics>,
) -> std::io::Result<()> {
    let metrics = move || {
        let registry = Arc::clone(&registry);
        let process = Arc::clone(&process);
        async move {
            process.refresh();
            let mut text = String::new();
            let encoded = match registry.lock() {
                Ok(guard) => prometheus_client::encoding::text::encode(&mut text, &guard),
                Err(poisoned) => {
                    prometheus_client::encoding::text::encode(&mut text, &poisoned.into_inner())
                }
            };
            match encoded {
                Ok(()) => (
                    StatusCode::OK,
                    [(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    text,
                )
                    .into_response(),
                Err(err) => (StatusCode::INTERNAL_SERVER_ERROR, err.to_string()).into_response(),
            }
        }
    };
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving /metrics, /healthz, /readyz");
    axum::serve(listener, app).await
}

/// The standard `process_*` metrics, read from /proc at each scrape (Linux).
#[derive(Debug, Default)]
pub struct ProcessMetrics {
    cpu_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    resident_memory_bytes: Gauge,
    virtual_memory_bytes: Gauge,
    open_fds: Gauge,
    start_time_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    threads: Gauge,
}

impl ProcessMetrics {
    /// Registers the families without a prefix, as Prometheus' client libraries name them.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "process_cpu_seconds",
            "User and system CPU time spent, seconds",
            self.cpu_seconds.clone(),
        );
        registry.register(
            "process_resident_memory_bytes",
            "Resident memory size",
            self.resident_memory_bytes.clone(),
        );
        registry.register(
            "process_virtual_memory_bytes",
            "Virtual memory size",
            self.virtual_memory_bytes.clone(),
        );
        registry.register(
            "process_open_fds",
            "Open file descriptors",
            self.open_fds.clone(),
        );
        registry.register(
            "process_start_time_seconds",
            "Start time since the Unix epoch, seconds",
            self.start_time_seconds.clone(),
        );
        registry.register("process_threads", "OS threads", self.threads.clone());
    }

    /// Reads /proc/self; missing files (not Linux) leave the values as they were.
    pub fn refresh(&self) {
        const TICKS: f64 = 100.0; // USER_HZ on every Linux this runs on
        const PAGE: i64 = 4096;
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
            // Fields after the command name (which may contain spaces) start at state, field 3.
            let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
            let fields: Vec<&str> = after.split_whitespace().collect();
            let field = |n: usize| {
                fields
                    .get(n - 3)
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(0.0)
            };
            self.cpu_seconds.set((field(14) + field(15)) / TICKS);
            self.threads.set(field(20) as i64);
            self.virtual_memory_bytes.set(field(23) as i64);
            self.resident_memory_bytes.set(field(24) as i64 * PAGE);
            if let Ok(uptime) = std::fs::read_to_string("/proc/uptime") {
                let boot = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0.0, |d| d.as_secs_f64())
                    - uptime
                        .split_whitespace()
                        .next()
                        .and_then(|u| u.parse::<f64>().ok())
                        .unwrap_or(0.0);
                self.start_time_seconds.set(boot + field(22) / TICKS);
            }
        }
        if let Ok(entries) = std::fs::read_dir("/proc/self/fd") {
            self.open_fds.set(entries.count() as i64);
        }
    }
}
