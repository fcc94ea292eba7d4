//! Results: one JSON file per scenario, a markdown table appended to bench/README.md, and a
//! chart of objects Ready over time per mode.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::anyhow;
use serde_json::{Value, json};

use crate::config::Config;
use crate::scenarios::{Measure, Series};

/// The run's date and time, UTC, as `(2026-11-27, 2026-11-27 03:04:05Z)`.
pub fn now() -> (String, String) {
    let now = k8s_openapi::jiff::Timestamp::now();
    (
        now.strftime("%Y-%m-%d").to_string(),
        now.strftime("%Y-%m-%d %H:%M:%SZ").to_string(),
    )
}

/// Wall-clock milliseconds since the Unix epoch.
pub fn unix_millis() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// Writes `<results>/<date>-<scenario>.json` for every scenario measured; returns the paths. A
/// file of an earlier run the same day at the same time scale keeps its rows of the sizes and
/// modes this run did not measure (one size per run adds up; a size run again is replaced).
pub fn write_json(
    config: &Config,
    date: &str,
    measures: &[Measure],
) -> anyhow::Result<Vec<PathBuf>> {
    let mut scenarios: Vec<&str> = measures.iter().map(|m| m.scenario).collect();
    scenarios.dedup();
    scenarios.sort_unstable();
    scenarios.dedup();
    let mut paths = Vec::new();
    for scenario in scenarios {
        let path = config.results_dir.join(format!("{date}-{scenario}.json"));
        let new_rows: Vec<Value> = measures
            .iter()
            .filter(|m| m.scenario == scenario)
            .map(serde_json::to_value)
            .collect::<Result<_, _>>()?;
        let key = |row: &Value| (row["n"].as_u64(), row["mode"].as_str().map(str::to_string));
        let measured: Vec<_> = new_rows.iter().map(key).collect();
        let earlier: Vec<Value> = std::fs::read_to_string(&path)
            .ok()
            .and_then(|text| serde_json::from_str::<Value>(&text).ok())
            .filter(|old| old["timeScale"].as_f64() == Some(config.scale))
            .and_then(|old| old["measures"].as_array().cloned())
            .unwrap_or_default()
            .into_iter()
            .filter(|row| !measured.contains(&key(row)))
            .collect();
        let rows: Vec<Value> = earlier.into_iter().chain(new_rows).collect();
        let document = json!({
            "date": date,
            "scenario": scenario,
            "machine": {"cores": cores()},
            "timeScale": config.scale,
            "perObjectDivisor": config.per_object_divisor,
            "measures": rows,
        });
        std::fs::write(&path, serde_json::to_string_pretty(&document)?)?;
        paths.push(path);
    }
    Ok(paths)
}

fn mark(ok: bool) -> &'static str {
    if ok { "" } else { " ✗" }
}

/// The markdown of one run: a table of every measure, then what the steady state read.
pub fn markdown(config: &Config, when: &str, measures: &[Measure]) -> String {
    let mut text = String::new();
    let small = if measures.iter().any(|m| {
        m.window_offset_seconds.is_some()
            && m.scenario != "rollout"
            && !m.scenario.starts_with("pool-")
    }) {
        format!(
            " · small changes at time scale {}, BENCH_SEED={}",
            config.small_scale, config.seed
        )
    } else {
        String::new()
    };
    let per_object = if measures.iter().any(|m| m.mode.starts_with("per-object")) {
        format!(" · per-object on N/{} objects", config.per_object_divisor)
    } else {
        String::new()
    };
    let _ = writeln!(
        text,
        "### Run of {when} · {} cores · time scale {}{per_object}{small}\n",
        cores(),
        config.scale,
    );
    text.push_str("| scenario | N | mode | objects run | time (s) | lower bound (s) | time / bound | window offset (s) | windowed bound (s) | time / windowed bound | HTTP requests | writes | reads | operation reads | 429s | retries | quota efficiency | operator peak RSS (MiB) | operator CPU (s) |\n");
    text.push_str(
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for m in measures {
        let extrapolated = if m.seconds != m.measured_seconds {
            " (extrapolated)"
        } else {
            ""
        };
        let optional = |value: Option<f64>, digits: usize| {
            value.map_or_else(|| "—".to_string(), |v| format!("{v:.digits$}"))
        };
        let _ = writeln!(
            text,
            "| {} | {} | {} | {} | {:.1}{} | {:.1} | {:.2} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0} | {:.3} | {:.0} | {:.1} |",
            m.scenario,
            m.n,
            m.mode,
            m.objects,
            m.seconds,
            extrapolated,
            m.lower_bound_seconds,
            m.ratio,
            optional(m.window_offset_seconds, 1),
            optional(m.windowed_bound_seconds, 1),
            optional(m.windowed_ratio(), 2),
            m.http_requests,
            m.writes,
            m.reads,
            m.operation_reads,
            m.rate_limited,
            m.retries,
            m.quota_efficiency,
            m.operator_peak_rss_mib,
            m.operator_cpu_seconds,
        );
    }
    text.push('\n');
    for m in measures.iter().filter(|m| m.scenario == "steady-state") {
        let allowed = m.detail["reads_allowed_per_resync_per_type"]
            .as_u64()
            .unwrap_or(0);
        let mut calls: Vec<String> = Vec::new();
        if let Some(map) = m.detail["calls_per_resync_by_method"].as_object() {
            for (method, per) in map {
                let per = per.as_f64().unwrap_or(0.0);
                let over = method.ends_with(".list") && per > allowed as f64;
                calls.push(format!("{method} {per:.1}{}", mark(!over)));
            }
        }
        let _ = writeln!(
            text,
            "- steady state, N={} {}: {} GCP writes; per resync: {}; kube-apiserver writes to VirtualServices: {} object, {} status",
            m.n,
            m.mode,
            m.writes,
            if calls.is_empty() {
                "no calls".to_string()
            } else {
                calls.join(", ")
            },
            m.detail["kube_object_writes"],
            m.detail["kube_status_writes"],
        );
    }
    for m in measures
        .iter()
        .filter(|m| m.scenario.starts_with("failover"))
    {
        let recovery = match (
            &m.detail["recovery_failed"],
            m.detail["recovery_seconds"].as_f64(),
        ) {
            (Value::String(failed), _) => format!(
                "; recovery FAILED ({failed}, {} routes back)",
                m.detail["routes_back"]
            ),
            (_, Some(seconds)) => {
                format!("; engines restarted, every route back {seconds:.0} s later")
            }
            _ => String::new(),
        };
        let _ = writeln!(
            text,
            "- {}, N={} {}: {} engines stopped, {} routes withdrawn in {:.1} s{recovery}",
            m.scenario,
            m.n,
            m.mode,
            m.detail["engines_stopped"],
            m.detail["routes_withdrawn"],
            m.seconds,
        );
    }
    for m in measures.iter().filter(|m| m.scenario == "pool-rollout") {
        text.push_str(&pool_rollout_line(m));
    }
    for m in measures
        .iter()
        .filter(|m| m.scenario == "pool-failover-one-engine")
    {
        text.push_str(&pool_failover_line(m));
    }
    for m in measures.iter().filter(|m| m.scenario == "shards-rollout") {
        let d = &m.detail;
        let replicas: Vec<String> = d["per_replica"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                format!(
                    "{}{}: peak {} MiB, {} CPU s",
                    r["replica"].as_str().unwrap_or_default(),
                    if r["killed"] == Value::Bool(true) {
                        " (killed)"
                    } else {
                        ""
                    },
                    figure(&r["peak_rss_mib"], 0),
                    figure(&r["cpu_seconds"], 1),
                )
            })
            .collect();
        let others: Vec<String> = d["other_cpu_seconds"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(comm, used)| format!("{comm} {} CPU s", figure(used, 1)))
            .collect();
        let cores = if others.is_empty() {
            String::new()
        } else {
            format!(
                "; beside them, over {} s wall: {}",
                figure(&d["wall_seconds"], 1),
                others.join(", ")
            )
        };
        let _ = writeln!(
            text,
            "- shards, N={} over {} clouds in {} projects on {} replicas: Ready in {:.1} s, {:.2}× the slowest project's bound ({:.1} s); {} of {} clouds moved off the killed replica ({} Ready at the kill, {} operations in flight), held again {} s (wall) after the kill; {} inserts for {} resources; {} ms operator CPU per object in all; {}{}",
            m.n,
            d["clouds"],
            d["clouds"],
            d["replicas"],
            m.seconds,
            m.ratio,
            m.lower_bound_seconds,
            d["clouds_moved"],
            d["clouds"],
            d["ready_at_kill"],
            d["operations_in_flight_at_kill"],
            figure(&d["takeover_seconds_wall"], 1),
            d["inserts"],
            m.writes_needed,
            figure(&d["cpu_ms_per_object"], 2),
            replicas.join("; "),
            cores,
        );
    }
    for m in measures.iter().filter(|m| m.scenario == "rollout") {
        let _ = writeln!(
            text,
            "- rollout, N={} {}: {:.2} ms operator CPU per object; HTTP requests per call {:.4}",
            m.n,
            m.mode,
            m.operator_cpu_seconds * 1000.0 / m.objects as f64,
            m.http_requests as f64 / (m.writes + m.reads + m.operation_reads).max(1) as f64,
        );
    }
    text
}

/// A figure of a measure's detail, with `digits` decimals, or "—".
fn figure(value: &Value, digits: usize) -> String {
    value
        .as_f64()
        .map_or_else(|| "—".to_string(), |v| format!("{v:.digits$}"))
}

/// What a pool rollout's row does not say: the Kubernetes-side times, the footprint against
/// the quotas, exactness.
fn pool_rollout_line(m: &Measure) -> String {
    let d = &m.detail;
    if d["finished"] != Value::Bool(true) {
        return format!(
            "- pool-rollout, N={}: GAVE UP after {:.0} s: {} applied, {} with a VIP, {} Ready; operator RSS {} MiB, {:.1} CPU s; load average {} (max {})\n",
            m.n,
            m.seconds,
            d["applied"],
            d["vip_allocated"],
            d["ready"],
            figure(&d["operator_rss_mib"], 0),
            m.operator_cpu_seconds,
            figure(&d["load_average_1m"]["mean"], 1),
            figure(&d["load_average_1m"]["max"], 1),
        );
    }
    let f = &d["footprint"];
    format!(
        "- pool-rollout, N={}: last apply returned at {} s, last VIP allocated at {} s, last object Ready at {:.1} s, layout quiet at {} s (bound {:.1} s for the {} writes the final layout needs); {} GCP writes, {} per object; routes {} in the project ({} of the cloud, {} shared) of ROUTES 250 / STATIC_ROUTES_PER_NETWORK 200; firewall rules {} ({} of the cloud, {} shared, {} destination ranges) of FIREWALLS 200; at most {} routes and {} rules during the rollout; {} objects lost Ready on the way ({} times); operator {} ms CPU per object, peak {:.0} MiB; {} VIPs checked, {} inexact; machine load average {} (max {})\n",
        m.n,
        figure(&d["applied_seconds"], 1),
        figure(&d["vip_allocated_seconds"], 1),
        m.seconds,
        figure(&d["quiet_seconds"], 1),
        m.lower_bound_seconds,
        m.writes_needed,
        m.writes,
        figure(&d["writes_per_object"], 4),
        f["routes"],
        f["routes_of_cloud"],
        f["shared_routes"],
        f["firewalls"],
        f["firewalls_of_cloud"],
        f["shared_firewalls"],
        f["shared_firewall_ranges"],
        d["peak_routes_during_rollout"],
        d["peak_firewalls_during_rollout"],
        d["ready_lost"]["objects"],
        d["ready_lost"]["times"],
        figure(&d["operator_cpu_ms_per_object"], 2),
        m.operator_peak_rss_mib,
        d["vips_checked"],
        d["vips_inexact"],
        figure(&d["load_average_1m"]["mean"], 1),
        figure(&d["load_average_1m"]["max"], 1),
    )
}

/// A pool failover's withdrawal, re-layout and recovery.
fn pool_failover_line(m: &Measure) -> String {
    let d = &m.detail;
    let recovery = match (&d["recovery_failed"], d["recovery_seconds"].as_f64()) {
        (Value::String(failed), _) => format!("recovery FAILED ({failed})"),
        (_, Some(seconds)) => format!(
            "engine started again, every VIP exact and the layout quiet {seconds:.1} s later ({} route inserts + deletes)",
            d["recovery_routes_touched"]
        ),
        _ => String::new(),
    };
    format!(
        "- pool-failover-one-engine, N={}: {} routes to {} withdrawn in {:.1} s, layout quiet {} s after the stop, {} routes touched (inserts + deletes) until then; VIPs inexact at the withdrawal: {}, once quiet: {}; {} objects lost Ready ({} times; by pair {}); {recovery}\n",
        m.n,
        d["routes_withdrawn"],
        d["engine"].as_str().unwrap_or_default(),
        m.seconds,
        figure(&d["quiet_seconds"], 1),
        d["routes_touched"],
        d["vips_inexact_at_withdrawal"],
        d["vips_inexact_at_quiet"],
        d["ready_lost"]["objects"],
        d["ready_lost"]["times"],
        d["ready_lost"]["objects_by_pair"],
    )
}

pub fn append_readme(readme: &Path, markdown: &str) -> anyhow::Result<()> {
    let mut text = std::fs::read_to_string(readme).unwrap_or_default();
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text.push('\n');
    text.push_str(markdown);
    std::fs::write(readme, text)?;
    Ok(())
}

/// A TTF for the chart's text: `BENCH_FONT`, or DejaVu Sans where Debian puts it.
fn font() -> Option<&'static [u8]> {
    let candidates = [
        std::env::var("BENCH_FONT").unwrap_or_default(),
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf".to_string(),
        "/usr/share/fonts/TTF/DejaVuSans.ttf".to_string(),
    ];
    candidates
        .iter()
        .filter(|p| !p.is_empty())
        .find_map(|p| std::fs::read(p).ok())
        .map(|bytes| &*Box::leak(bytes.into_boxed_slice()))
}

/// Objects Ready over time (GCP seconds, log scale) per mode, one chart per fleet size. A
/// per-object run on fewer objects is drawn scaled up to the fleet (time and count alike).
pub fn chart(path: &Path, n: usize, series: &[Series]) -> anyhow::Result<bool> {
    use plotters::prelude::*;
    let Some(font) = font() else {
        println!(
            "no TTF font found (set BENCH_FONT): skipping {}",
            path.display()
        );
        return Ok(false);
    };
    plotters::style::register_font("sans-serif", FontStyle::Normal, font)
        .map_err(|_| anyhow!("the font is not a usable TTF"))?;
    let err = |e: &dyn std::fmt::Debug| anyhow!("drawing {}: {e:?}", path.display());
    let scaled: Vec<(String, Vec<(f64, f64)>)> = series
        .iter()
        .filter(|s| s.n == n)
        .map(|s| {
            let factor = s.n as f64 / s.objects as f64;
            let label = if factor > 1.0 {
                format!("{} (run on {}, scaled ×{factor:.0})", s.mode, s.objects)
            } else {
                s.mode.clone()
            };
            let points = s
                .points
                .iter()
                .map(|(t, ready)| ((t * factor).max(1.0), *ready as f64 * factor))
                .collect();
            (label, points)
        })
        .collect();
    let x_max = scaled
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(t, _)| *t))
        .fold(10.0_f64, f64::max)
        * 1.2;
    let root = BitMapBackend::new(path, (1100, 650)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("Rollout of {n} VirtualServices: objects Ready over time"),
            ("sans-serif", 24),
        )
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d((1.0..x_max).log_scale(), 0.0..(n as f64 * 1.05))
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("time since apply, GCP seconds (log scale)")
        .y_desc("objects Ready")
        .label_style(("sans-serif", 15))
        .draw()
        .map_err(|e| err(&e))?;
    let colors = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
    ];
    for (i, (label, points)) in scaled.into_iter().enumerate() {
        let color = colors[i % colors.len()];
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(3)))
            .map_err(|e| err(&e))?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(3))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font(("sans-serif", 16))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(true)
}
