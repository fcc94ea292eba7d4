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

/// Writes `<results>/<date>-<scenario>.json` for every scenario measured; returns the paths.
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
        let rows: Vec<&Measure> = measures.iter().filter(|m| m.scenario == scenario).collect();
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
    let small = if measures
        .iter()
        .any(|m| m.window_offset_seconds.is_some() && m.scenario != "rollout")
    {
        format!(
            " · small changes at time scale {}, BENCH_SEED={}",
            config.small_scale, config.seed
        )
    } else {
        String::new()
    };
    let _ = writeln!(
        text,
        "### Run of {when} · {} cores · time scale {} · per-object on N/{} objects{small}\n",
        cores(),
        config.scale,
        config.per_object_divisor
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
