//! Readings: the emulator's counters and state, the operator process (CPU, memory, its own
//! metrics), the kube-apiserver's request counters, and the few Compute calls the benchmark makes
//! itself (stopping and starting engines).

use std::collections::BTreeMap;

use anyhow::bail;
use serde_json::Value;

use crate::fleet::{Engine, PROJECT};

/// Counters of `GET /_emulator/stats`, or the difference of two readings.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct EmulatorCounts {
    pub http_requests: u64,
    pub batch_requests: u64,
    pub calls: u64,
    pub by_group: BTreeMap<String, u64>,
    pub by_method: BTreeMap<String, u64>,
    pub rate_limited: u64,
}

impl EmulatorCounts {
    pub fn group(&self, name: &str) -> u64 {
        self.by_group.get(name).copied().unwrap_or(0)
    }

    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &EmulatorCounts) -> EmulatorCounts {
        let diff = |now: &BTreeMap<String, u64>, then: &BTreeMap<String, u64>| {
            now.iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.saturating_sub(then.get(k).copied().unwrap_or(0)),
                    )
                })
                .filter(|(_, v)| *v > 0)
                .collect()
        };
        EmulatorCounts {
            http_requests: self.http_requests.saturating_sub(earlier.http_requests),
            batch_requests: self.batch_requests.saturating_sub(earlier.batch_requests),
            calls: self.calls.saturating_sub(earlier.calls),
            by_group: diff(&self.by_group, &earlier.by_group),
            by_method: diff(&self.by_method, &earlier.by_method),
            rate_limited: self.rate_limited.saturating_sub(earlier.rate_limited),
        }
    }
}

/// The emulator, seen from outside: its admin API and the Compute API as the benchmark's own
/// client.
#[derive(Debug, Clone)]
pub struct Emulator {
    pub base_url: String,
    http: reqwest::Client,
}

fn counts_map(value: &Value) -> BTreeMap<String, u64> {
    value
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default()
}

impl Emulator {
    pub fn new(base_url: &str) -> Self {
        Self {
            base_url: base_url.to_string(),
            http: reqwest::Client::new(),
        }
    }

    async fn admin(&self, path_and_query: &str) -> anyhow::Result<Value> {
        Ok(adc_testenv::emulator_admin(&self.base_url, path_and_query).await?)
    }

    pub async fn counts(&self) -> anyhow::Result<EmulatorCounts> {
        let stats = self.admin("stats").await?;
        Ok(EmulatorCounts {
            http_requests: stats["httpRequests"].as_u64().unwrap_or(0),
            batch_requests: stats["batchRequests"].as_u64().unwrap_or(0),
            calls: stats["innerCalls"].as_u64().unwrap_or(0),
            by_group: counts_map(&stats["callsByGroup"]),
            by_method: counts_map(&stats["callsByMethod"]),
            rate_limited: stats["rateLimited"].as_u64().unwrap_or(0),
        })
    }

    /// Resources per collection (`routes`, `firewalls`, ...), those being created included.
    pub async fn resources(&self) -> anyhow::Result<BTreeMap<String, u64>> {
        Ok(counts_map(&self.admin("stats").await?["resources"]))
    }

    /// Names of the routes (that exist, not being created) a list filter matches.
    pub async fn routes(&self, filter: Option<&str>) -> anyhow::Result<Vec<Value>> {
        self.collection("routes", filter).await
    }

    /// The resources of a collection (`routes`, `firewalls`, ...) that exist (not being
    /// created) and a list filter matches, every project.
    pub async fn collection(
        &self,
        collection: &str,
        filter: Option<&str>,
    ) -> anyhow::Result<Vec<Value>> {
        let mut url = reqwest::Url::parse(&format!("{}/_emulator/state", self.base_url))?;
        url.query_pairs_mut().append_pair("collection", collection);
        if let Some(filter) = filter {
            url.query_pairs_mut().append_pair("filter", filter);
        }
        let response = self.http.get(url.clone()).send().await?;
        if !response.status().is_success() {
            bail!("{url}: {}", response.status());
        }
        let dump: Value = response.json().await?;
        Ok(dump["items"].as_array().cloned().unwrap_or_default())
    }

    /// Starts or stops engines through the Compute API (`instances.stop` / `instances.start`),
    /// concurrently; returns once every call is accepted (the instances are then STOPPING or
    /// STAGING). A start first waits until the engines' stop is done (TERMINATED): a start
    /// sent while an instance is STOPPING finishes before the stop does, and the stop's
    /// TERMINATED would be the instance's last word.
    pub async fn set_engines(&self, engines: &[Engine], verb: &str) -> anyhow::Result<()> {
        if verb == "start" {
            self.wait_until_terminated(engines).await?;
        }
        let calls = engines.iter().map(|engine| {
            let url = format!(
                "{}/compute/v1/projects/{PROJECT}/zones/{}/instances/{}/{verb}",
                self.base_url, engine.zone, engine.name
            );
            let http = self.http.clone();
            async move {
                for attempt in 0..20 {
                    let response = http
                        .post(&url)
                        .bearer_auth("adc-bench")
                        .json(&serde_json::json!({}))
                        .send()
                        .await?;
                    let status = response.status();
                    if status.is_success() {
                        return Ok(());
                    }
                    // The benchmark shares the project's write quota with the operator.
                    if status.as_u16() == 403 || status.as_u16() == 429 || status.is_server_error()
                    {
                        tokio::time::sleep(std::time::Duration::from_millis(50 * (attempt + 1)))
                            .await;
                        continue;
                    }
                    bail!(
                        "{url}: {status}: {}",
                        response.text().await.unwrap_or_default()
                    );
                }
                bail!("{url}: still refused after 20 attempts")
            }
        });
        futures::future::try_join_all(calls).await?;
        Ok(())
    }

    /// Until every one of `engines` is TERMINATED (at most five minutes of wall-clock time).
    async fn wait_until_terminated(&self, engines: &[Engine]) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
        for engine in engines {
            let url = format!(
                "{}/compute/v1/projects/{PROJECT}/zones/{}/instances/{}",
                self.base_url, engine.zone, engine.name
            );
            loop {
                let response = self.http.get(&url).bearer_auth("adc-bench").send().await?;
                if response.status().is_success() {
                    let instance: Value = response.json().await?;
                    if instance["status"] == "TERMINATED" {
                        break;
                    }
                }
                if std::time::Instant::now() > deadline {
                    bail!("{url}: not TERMINATED after 300 s");
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }
}

/// The operator process: CPU time and memory from /proc, counters from its /metrics.
#[derive(Debug, Clone)]
pub struct OperatorProcess {
    pub pid: u32,
    pub metrics_url: String,
}

#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct ProcessReading {
    pub cpu_seconds: f64,
    pub rss_mib: f64,
    pub peak_rss_mib: f64,
}

impl OperatorProcess {
    pub fn reading(&self) -> anyhow::Result<ProcessReading> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid))?;
        // Fields after the command name (which may hold spaces) start at field 3; utime and
        // stime are fields 14 and 15.
        let after = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest)
            .unwrap_or_default();
        let fields: Vec<&str> = after.split_whitespace().collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        // SAFETY: sysconf only reads a system constant.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        let cpu_seconds = (ticks(11) + ticks(12)) / hz.max(1.0);
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        let kib = |key: &str| {
            status
                .lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        Ok(ProcessReading {
            cpu_seconds,
            rss_mib: kib("VmRSS:") / 1024.0,
            peak_rss_mib: kib("VmHWM:") / 1024.0,
        })
    }

    /// The sum of every sample of a counter family on the operator's /metrics.
    pub async fn counter(&self, family: &str) -> anyhow::Result<f64> {
        let text = reqwest::get(&self.metrics_url).await?.text().await?;
        Ok(sum_samples(&text, family, |_| true))
    }
}

/// The processes whose command name (`/proc/PID/comm`, at most 15 bytes) is `comm`: the
/// kube-apiserver, etcd and emulator the benchmark started, to say where the cores went.
pub fn processes_named(comm: &str) -> Vec<OperatorProcess> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|name| name.trim_end() == comm)
        })
        .map(|pid| OperatorProcess {
            pid,
            metrics_url: String::new(),
        })
        .collect()
}

/// CPU seconds used so far by every process named `comm` (0 when none runs).
pub fn cpu_of(comm: &str) -> f64 {
    processes_named(comm)
        .iter()
        .filter_map(|p| p.reading().ok())
        .map(|r| r.cpu_seconds)
        .sum()
}

/// Sums the samples of `family` (with or without the `_total` suffix) whose label text passes
/// `keep`.
pub fn sum_samples(text: &str, family: &str, keep: impl Fn(&str) -> bool) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let (name_and_labels, value) = line.rsplit_once(' ')?;
            let (name, labels) = match name_and_labels.split_once('{') {
                Some((name, labels)) => (name, labels),
                None => (name_and_labels, ""),
            };
            let matches = name == family || name == format!("{family}_total");
            (matches && keep(labels)).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// Writes the kube-apiserver served for VirtualServices (creates, patches, applies, updates,
/// deletes), from its own `apiserver_request_total`, split by subresource.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct ApiserverWrites {
    pub objects: f64,
    pub status: f64,
}

impl ApiserverWrites {
    pub async fn read(client: &kube::Client) -> anyhow::Result<Self> {
        let request = http_request("/metrics")?;
        let text = client.request_text(request).await?;
        let write = |labels: &str| {
            labels.contains("resource=\"virtualservices\"")
                && [
                    "POST",
                    "PUT",
                    "PATCH",
                    "APPLY",
                    "DELETE",
                    "DELETECOLLECTION",
                ]
                .iter()
                .any(|verb| labels.contains(&format!("verb=\"{verb}\"")))
        };
        Ok(Self {
            objects: sum_samples(&text, "apiserver_request_total", |l| {
                write(l) && l.contains("subresource=\"\"")
            }),
            status: sum_samples(&text, "apiserver_request_total", |l| {
                write(l) && l.contains("subresource=\"status\"")
            }),
        })
    }

    pub fn since(&self, earlier: &Self) -> Self {
        Self {
            objects: self.objects - earlier.objects,
            status: self.status - earlier.status,
        }
    }
}

fn http_request(path: &str) -> anyhow::Result<http::Request<Vec<u8>>> {
    Ok(http::Request::get(path).body(Vec::new())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_the_samples_a_filter_keeps() {
        let text = "# HELP x\nx_total{verb=\"PATCH\",subresource=\"status\"} 3\nx_total{verb=\"GET\",subresource=\"\"} 5\nx 2\ny_total 9\n";
        assert_eq!(sum_samples(text, "x", |_| true), 10.0);
        assert_eq!(sum_samples(text, "x", |l| l.contains("PATCH")), 3.0);
        assert_eq!(sum_samples(text, "y", |_| true), 9.0);
    }
}
