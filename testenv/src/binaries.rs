//! Where the etcd, kube-apiserver, kubectl, helm and promtool binaries built by `make envtest`
//! live.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::Error;

/// The binaries of one envtest build (see hack/envtest/build.sh).
#[derive(Debug, Clone)]
pub struct Binaries {
    pub dir: PathBuf,
    pub etcd: PathBuf,
    pub kube_apiserver: PathBuf,
    pub kubectl: PathBuf,
    pub helm: PathBuf,
    /// Prometheus' promtool: checks and unit-tests the chart's alerting rules.
    pub promtool: PathBuf,
}

/// The repository root, known at compile time from this crate's manifest directory.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

impl Binaries {
    /// Finds the binaries: `ADC_ENVTEST_BIN` when set, otherwise the cache directory that
    /// `hack/envtest/build.sh --dir` names for the pinned versions. Fails with a hint to run
    /// `make envtest` when any is missing.
    pub fn locate() -> Result<Self, Error> {
        let dir = match std::env::var_os("ADC_ENVTEST_BIN") {
            Some(dir) => PathBuf::from(dir),
            None => {
                let script = repo_root().join("hack/envtest/build.sh");
                let output = Command::new("bash")
                    .arg(&script)
                    .arg("--dir")
                    .output()
                    .map_err(|source| Error::Io {
                        what: format!("running {} --dir", script.display()),
                        source,
                    })?;
                if !output.status.success() {
                    return Err(Error::Binaries(format!(
                        "{} --dir failed: {}",
                        script.display(),
                        String::from_utf8_lossy(&output.stderr)
                    )));
                }
                PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
            }
        };
        let binaries = Self {
            etcd: dir.join("etcd"),
            kube_apiserver: dir.join("kube-apiserver"),
            kubectl: dir.join("kubectl"),
            helm: dir.join("helm"),
            promtool: dir.join("promtool"),
            dir,
        };
        for path in [&binaries.etcd, &binaries.kube_apiserver] {
            if !path.is_file() {
                return Err(Error::Binaries(format!(
                    "{} is missing: run `make envtest` to build the control plane from Go modules",
                    path.display()
                )));
            }
        }
        Ok(binaries)
    }
}
