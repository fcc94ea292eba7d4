//! gce-emulator as a separate process on a free loopback port, for tests and benchmarks.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::Error;

/// A running gce-emulator, killed when dropped.
pub struct EmulatorProcess {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base_url: String,
    _dir: tempfile::TempDir,
}

impl std::fmt::Debug for EmulatorProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmulatorProcess")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

/// The gce-emulator binary of this workspace's target directory (the profile of the running test
/// or benchmark), built on first use when absent (`cargo build [--release] -p gce-emulator`).
pub fn emulator_binary() -> Result<PathBuf, Error> {
    if let Some(path) = std::env::var_os("GCE_EMULATOR_BIN") {
        return Ok(PathBuf::from(path));
    }
    // Test binaries live in target/<profile>/deps/; the emulator in target/<profile>/.
    let exe = std::env::current_exe().map_err(|source| Error::Io {
        what: "locating the test binary".into(),
        source,
    })?;
    let profile_dir = exe
        .parent()
        .and_then(|deps| {
            if deps.ends_with("deps") {
                deps.parent()
            } else {
                Some(deps)
            }
        })
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let candidate = profile_dir.join("gce-emulator");
    if candidate.is_file() {
        return Ok(candidate);
    }
    let mut args = vec!["build", "-p", "gce-emulator", "--bin", "gce-emulator"];
    if profile_dir.ends_with("release") {
        args.push("--release");
    }
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(&args)
        .current_dir(crate::repo_root())
        .status()
        .map_err(|source| Error::Io {
            what: "running cargo build -p gce-emulator".into(),
            source,
        })?;
    if !status.success() || !candidate.is_file() {
        return Err(Error::Binaries(format!(
            "{} is missing and `cargo build -p gce-emulator` did not produce it",
            candidate.display()
        )));
    }
    Ok(candidate)
}

/// `GET {base_url}/_emulator/{path_and_query}`: a gce-emulator's admin API (`stats`,
/// `state?collection=routes`, `tokens`, ...) as JSON. A status other than 2xx is an error.
pub async fn emulator_admin(
    base_url: &str,
    path_and_query: &str,
) -> Result<serde_json::Value, Error> {
    let url = format!("{base_url}/_emulator/{path_and_query}");
    let fail = |source| Error::EmulatorAdmin {
        url: url.clone(),
        source,
    };
    reqwest::get(&url)
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(fail)?
        .json()
        .await
        .map_err(fail)
}

impl EmulatorProcess {
    /// Starts `binary` with the world YAML text and extra flags, on a free port.
    pub fn start(binary: &Path, world_yaml: &str, args: &[&str]) -> Result<Self, Error> {
        let dir = tempfile::Builder::new()
            .prefix("adc-emulator-")
            .tempdir()
            .map_err(|source| Error::Io {
                what: "creating the emulator directory".into(),
                source,
            })?;
        let world = dir.path().join("world.yaml");
        std::fs::write(&world, world_yaml).map_err(|source| Error::Io {
            what: "writing world.yaml".into(),
            source,
        })?;
        let mut command = Command::new(binary);
        command
            .args(["--listen", "127.0.0.1:0", "--world"])
            .arg(&world)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = crate::spawn_for_process_lifetime(command).map_err(|source| Error::Io {
            what: format!("starting {}", binary.display()),
            source,
        })?;
        let mut line = String::new();
        if let Some(stdout) = child.stdout.take() {
            let _ = BufReader::new(stdout).read_line(&mut line);
        }
        let Some(addr) = line.trim().strip_prefix("listening on ") else {
            let _ = child.kill();
            let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
            return Err(Error::ExitedEarly {
                process: "gce-emulator",
                status,
                log: world,
                tail: format!("first stdout line was {line:?}; its stderr went to the test output"),
            });
        };
        Ok(Self {
            base_url: format!("http://{addr}"),
            child,
            _dir: dir,
        })
    }

    /// The process id, for memory and CPU readings.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for EmulatorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
