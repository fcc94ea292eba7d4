//! A real local Kubernetes control plane for tests, the demo and `hack/local-cluster.sh`.
//!
//! etcd and kube-apiserver are built from Go modules by `make envtest` (hack/envtest); this crate
//! starts them on free loopback ports with a throw-away PKI, RBAC authorization on, and writes an
//! admin kubeconfig. There is no kubelet, controller-manager or scheduler: pods never run, deleted
//! namespaces stay Terminating, owner references are not garbage-collected.
//!
//! Every child process gets `PR_SET_PDEATHSIG(SIGKILL)`, so it dies with the thread that started it
//! even when the test binary is killed with SIGKILL; [`shared`] and [`shared_named`] start the
//! test binary's control planes from threads that live as long as the process, and remove their
//! directories at exit.

mod binaries;
mod emulator;
mod pki;
mod process;
mod proxy;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, Once, OnceLock};
use std::time::{Duration, Instant};

pub use binaries::{Binaries, repo_root};
pub use emulator::{EmulatorProcess, emulator_admin, emulator_binary};
use process::Supervised;
pub use proxy::TcpProxy;

/// What can go wrong while starting or stopping a control plane.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("generating the PKI: {0}")]
    Pki(#[from] rcgen::Error),
    #[error("envtest binaries: {0}")]
    Binaries(String),
    #[error("{process} exited during start-up ({status}); last lines of its log {log}:\n{tail}")]
    ExitedEarly {
        process: &'static str,
        status: String,
        log: PathBuf,
        tail: String,
    },
    #[error("kube-apiserver at {server} was not ready within {timeout:?}: {last}")]
    NotReady {
        server: String,
        timeout: Duration,
        last: String,
    },
    #[error("building the readiness client: {0}")]
    Http(#[from] reqwest::Error),
    #[error("{url}: {source}")]
    EmulatorAdmin {
        url: String,
        #[source]
        source: reqwest::Error,
    },
}

/// How long kube-apiserver may take to answer `/readyz` with 200.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// A running etcd + kube-apiserver pair. Dropping it kills both and, when it owns its state
/// directory (a temp dir), removes it.
pub struct ControlPlane {
    dir: PathBuf,
    owned_dir: Option<tempfile::TempDir>,
    kubeconfig: PathBuf,
    server: String,
    binaries: Binaries,
    pki: pki::Pki,
    /// kube-apiserver's flags, to start it again.
    apiserver_args: Vec<String>,
    restarts: u32,
    // Dropped in order: the API server first, then its etcd.
    apiserver: Option<Supervised>,
    etcd: Option<Supervised>,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("dir", &self.dir)
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

/// A loopback port free at the time of asking (for a process that is told which port to serve
/// on: an operator's `--metrics-addr`, etcd, kube-apiserver). Another process may take it before
/// it is bound; callers that cannot live with that retry.
pub fn free_port() -> Result<u16, Error> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|source| Error::Io {
        what: "binding a free loopback port".into(),
        source,
    })?;
    listener
        .local_addr()
        .map(|addr| addr.port())
        .map_err(|source| Error::Io {
            what: "reading the bound port".into(),
            source,
        })
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

impl ControlPlane {
    /// Starts a control plane in a fresh temporary directory, removed when it is dropped.
    pub fn start() -> Result<Self, Error> {
        let tmp = tempfile::Builder::new()
            .prefix("adc-testenv-")
            .tempdir()
            .map_err(io_err("creating the state directory"))?;
        let mut plane = Self::start_in(tmp.path())?;
        plane.owned_dir = Some(tmp);
        Ok(plane)
    }

    /// Starts a control plane whose PKI, etcd data, logs and kubeconfig live in `dir` (created if
    /// absent; left in place on drop). A port taken between choosing and binding it is retried.
    pub fn start_in(dir: &Path) -> Result<Self, Error> {
        let binaries = Binaries::locate()?;
        std::fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Self::try_start(dir, &binaries) {
                Err(Error::ExitedEarly { ref tail, .. })
                    if attempt < 3 && tail.contains("address already in use") =>
                {
                    continue;
                }
                other => return other,
            }
        }
    }

    fn try_start(dir: &Path, binaries: &Binaries) -> Result<Self, Error> {
        let pki = pki::generate(dir)?;
        let (etcd_port, peer_port, api_port) = (free_port()?, free_port()?, free_port()?);
        let etcd_data = dir.join("etcd-data");
        let _ = std::fs::remove_dir_all(&etcd_data);

        let client_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let etcd = Supervised::spawn(
            "etcd",
            &binaries.etcd,
            &[
                "--name=adc-testenv".to_string(),
                format!("--data-dir={}", etcd_data.display()),
                format!("--listen-client-urls={client_url}"),
                format!("--advertise-client-urls={client_url}"),
                format!("--listen-peer-urls={peer_url}"),
                format!("--initial-advertise-peer-urls={peer_url}"),
                format!("--initial-cluster=adc-testenv={peer_url}"),
                "--unsafe-no-fsync=true".to_string(),
                "--log-level=warn".to_string(),
            ],
            &dir.join("etcd.log"),
        )?;

        let server = format!("https://127.0.0.1:{api_port}");
        let apiserver_args = vec![
            format!("--etcd-servers={client_url}"),
            format!("--secure-port={api_port}"),
            "--bind-address=127.0.0.1".to_string(),
            "--advertise-address=127.0.0.1".to_string(),
            format!("--cert-dir={}", dir.display()),
            format!("--tls-cert-file={}", pki.serving_cert.display()),
            format!("--tls-private-key-file={}", pki.serving_key.display()),
            format!("--client-ca-file={}", pki.ca_cert.display()),
            "--authorization-mode=RBAC".to_string(),
            "--service-cluster-ip-range=10.0.0.0/24".to_string(),
            "--allow-privileged=true".to_string(),
            "--disable-admission-plugins=ServiceAccount".to_string(),
            format!("--service-account-issuer={server}/"),
            format!("--service-account-key-file={}", pki.sa_pub.display()),
            format!(
                "--service-account-signing-key-file={}",
                pki.sa_key.display()
            ),
        ];
        let apiserver = Supervised::spawn(
            "kube-apiserver",
            &binaries.kube_apiserver,
            &apiserver_args,
            &dir.join("kube-apiserver.log"),
        )?;

        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(&kubeconfig, kubeconfig_yaml(&server, &pki))
            .map_err(io_err(format!("writing {}", kubeconfig.display())))?;

        let mut plane = Self {
            dir: dir.to_path_buf(),
            owned_dir: None,
            kubeconfig,
            server,
            binaries: binaries.clone(),
            pki,
            apiserver_args,
            restarts: 0,
            apiserver: Some(apiserver),
            etcd: Some(etcd),
        };
        plane.wait_ready()?;
        Ok(plane)
    }

    fn wait_ready(&mut self) -> Result<(), Error> {
        let pki = &self.pki;
        let ca = reqwest::Certificate::from_pem(pki.ca_cert_pem.as_bytes())?;
        let identity = reqwest::Identity::from_pem(
            format!("{}{}", pki.admin_cert_pem, pki.admin_key_pem).as_bytes(),
        )?;
        let client = reqwest::blocking::Client::builder()
            .use_rustls_tls()
            .add_root_certificate(ca)
            .identity(identity)
            .timeout(Duration::from_secs(5))
            .build()?;
        let url = format!("{}/readyz", self.server);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            for child in [&mut self.etcd, &mut self.apiserver].into_iter().flatten() {
                child.check_running()?;
            }
            let last = match client.get(&url).send() {
                Ok(response) if response.status().is_success() => return Ok(()),
                Ok(response) => format!(
                    "{}: {}",
                    response.status(),
                    response.text().unwrap_or_default()
                ),
                Err(err) => err.to_string(),
            };
            if Instant::now() > deadline {
                return Err(Error::NotReady {
                    server: self.server.clone(),
                    timeout: READY_TIMEOUT,
                    last,
                });
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Path of the admin kubeconfig (cluster-admin through `system:masters`).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The API server's URL, `https://127.0.0.1:PORT`.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The state directory: PKI, etcd data, process logs, kubeconfig.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The envtest binaries this control plane runs (kubectl and helm among them).
    pub fn binaries(&self) -> &Binaries {
        &self.binaries
    }

    /// Kills kube-apiserver with SIGKILL (etcd keeps running), starts it again on the same port
    /// with the same flags, and waits until it is ready. Call it from the thread that started the
    /// plane: the new process dies with the thread that starts it.
    pub fn restart_apiserver(&mut self) -> Result<(), Error> {
        self.apiserver.take();
        self.restarts += 1;
        let log = self
            .dir
            .join(format!("kube-apiserver.restart-{}.log", self.restarts));
        self.apiserver = Some(Supervised::spawn(
            "kube-apiserver",
            &self.binaries.kube_apiserver,
            &self.apiserver_args,
            &log,
        )?);
        self.wait_ready()
    }

    /// Writes a copy of the admin kubeconfig that reaches the API server at `server` instead
    /// (e.g. through a [`TcpProxy`]; the serving certificate is for 127.0.0.1).
    pub fn write_kubeconfig_via(&self, server: &str, path: &Path) -> Result<(), Error> {
        std::fs::write(path, kubeconfig_yaml(server, &self.pki))
            .map_err(io_err(format!("writing {}", path.display())))
    }

    /// Kills kube-apiserver and etcd and waits for both to exit.
    pub fn stop(&mut self) {
        self.apiserver.take();
        self.etcd.take();
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
        if let Some(tmp) = self.owned_dir.take() {
            let _ = tmp.close();
        }
    }
}

fn kubeconfig_yaml(server: &str, pki: &pki::Pki) -> String {
    use base64::Engine as _;
    let b64 = |pem: &str| base64::engine::general_purpose::STANDARD.encode(pem);
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: adc-testenv
  cluster:
    server: {server}
    certificate-authority-data: {ca}
users:
- name: adc-testenv-admin
  user:
    client-certificate-data: {cert}
    client-key-data: {key}
contexts:
- name: adc-testenv
  context:
    cluster: adc-testenv
    user: adc-testenv-admin
current-context: adc-testenv
",
        ca = b64(&pki.ca_cert_pem),
        cert = b64(&pki.admin_cert_pem),
        key = b64(&pki.admin_key_pem),
    )
}

type SpawnRequest = (
    std::process::Command,
    std::sync::mpsc::Sender<std::io::Result<std::process::Child>>,
);

/// Spawns `command` so that it dies with this process, whichever thread asks: the child is
/// started (with `PR_SET_PDEATHSIG(SIGKILL)`) by a thread that lives as long as the process, so
/// a fixture kept in a static — never dropped — still leaves no process behind.
pub fn spawn_for_process_lifetime(
    mut command: std::process::Command,
) -> std::io::Result<std::process::Child> {
    static SPAWNER: OnceLock<Mutex<std::sync::mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<SpawnRequest>();
        let _ = std::thread::Builder::new()
            .name("adc-testenv-spawner".into())
            .spawn(move || {
                for (mut command, reply) in rx {
                    process::die_with_parent(&mut command);
                    let _ = reply.send(command.spawn());
                }
                // Every sender is gone only at process exit; stay alive until then.
                loop {
                    std::thread::park();
                }
            });
        Mutex::new(tx)
    });
    let (reply_tx, reply_rx) = std::sync::mpsc::channel();
    let sent = match spawner.lock() {
        Ok(guard) => guard.send((
            std::mem::replace(&mut command, std::process::Command::new("true")),
            reply_tx,
        )),
        Err(poisoned) => poisoned.into_inner().send((
            std::mem::replace(&mut command, std::process::Command::new("true")),
            reply_tx,
        )),
    };
    sent.map_err(|_| std::io::Error::other("the spawner thread is gone"))?;
    let child = reply_rx
        .recv()
        .map_err(|_| std::io::Error::other("the spawner thread is gone"))??;
    match LIFETIME_CHILDREN.lock() {
        Ok(mut guard) => guard.push(child.id()),
        Err(poisoned) => poisoned.into_inner().push(child.id()),
    }
    Ok(child)
}

/// The processes [`spawn_for_process_lifetime`] started, by PID: killed at exit before the
/// shared control planes stop, so that an operator does not fill the end of the test output
/// (where the failures are summed up) with errors about the API server that went away.
static LIFETIME_CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// SIGKILLs the [`LIFETIME_CHILDREN`] that are still running. A PID is signalled only while it
/// is an unreaped child of this process (`waitpid` with `WNOHANG` says it runs), so a PID
/// reused after a test reaped its process is never touched.
fn kill_lifetime_children() {
    let pids = match LIFETIME_CHILDREN.lock() {
        Ok(mut guard) => std::mem::take(&mut *guard),
        Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
    };
    for pid in pids {
        let Ok(pid) = libc::pid_t::try_from(pid) else {
            continue;
        };
        let mut status = 0;
        // SAFETY: plain syscalls on a PID; WNOHANG never blocks.
        unsafe {
            if libc::waitpid(pid, &mut status, libc::WNOHANG) == 0 {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
        }
    }
}

/// What a test needs to reach the shared control plane.
#[derive(Debug, Clone)]
pub struct SharedControlPlane {
    pub kubeconfig: PathBuf,
    pub server: String,
    pub binaries: Binaries,
}

type SharedSlot = OnceLock<Result<SharedControlPlane, String>>;

/// The control planes [`shared_named`] started, by name (each slot lives as long as the process).
static SHARED: Mutex<BTreeMap<String, &'static SharedSlot>> = Mutex::new(BTreeMap::new());
/// Their processes, stopped at exit.
static SHARED_PLANES: Mutex<Vec<ControlPlane>> = Mutex::new(Vec::new());
static STOP_AT_EXIT: Once = Once::new();

/// The name of the control plane [`shared`] returns.
pub const DEFAULT_SHARED: &str = "default";

extern "C" fn stop_shared_at_exit() {
    kill_lifetime_children();
    // A poisoned lock still holds the planes: stop them all the same.
    let planes = match SHARED_PLANES.lock() {
        Ok(mut guard) => std::mem::take(&mut *guard),
        Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
    };
    drop(planes);
}

/// The default control plane of this test binary: [`shared_named`]`(`[`DEFAULT_SHARED`]`)`.
pub fn shared() -> Result<&'static SharedControlPlane, String> {
    shared_named(DEFAULT_SHARED)
}

/// The control plane `name` of this test binary: started on first use, shared by every test that
/// asks for the same name, stopped and its directory removed when the process exits (killed with
/// it even on SIGKILL). Tests that must not share a control plane with others (an operator under
/// test reconciles every GcpCloud of its cluster) ask for a name of their own.
///
/// The processes are spawned from a thread that lives as long as the process, because the kernel's
/// parent-death signal follows the spawning thread, not the process.
pub fn shared_named(name: &str) -> Result<&'static SharedControlPlane, String> {
    let slot: &'static SharedSlot = {
        let mut slots = match SHARED.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        slots
            .entry(name.to_string())
            .or_insert_with(|| Box::leak(Box::new(OnceLock::new())))
    };
    // Outside the map's lock: planes of different names start side by side.
    slot.get_or_init(|| start_shared(name))
        .as_ref()
        .map_err(Clone::clone)
}

fn start_shared(name: &str) -> Result<SharedControlPlane, String> {
    let (tx, rx) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name(format!("adc-testenv-{name}"))
        .spawn(move || {
            let started = ControlPlane::start().map(|plane| {
                let info = SharedControlPlane {
                    kubeconfig: plane.kubeconfig().to_path_buf(),
                    server: plane.server().to_string(),
                    binaries: plane.binaries().clone(),
                };
                match SHARED_PLANES.lock() {
                    Ok(mut guard) => guard.push(plane),
                    Err(poisoned) => poisoned.into_inner().push(plane),
                }
                STOP_AT_EXIT.call_once(|| {
                    // SAFETY: registers a plain extern "C" fn with no captured state.
                    unsafe { libc::atexit(stop_shared_at_exit) };
                });
                info
            });
            let _ = tx.send(started.map_err(|err| err.to_string()));
            loop {
                std::thread::park();
            }
        });
    match spawned {
        Ok(_) => rx
            .recv()
            .unwrap_or_else(|_| Err("the control-plane thread died".to_string())),
        Err(err) => Err(format!("spawning the control-plane thread: {err}")),
    }
}
