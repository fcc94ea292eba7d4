//! `gcp::auth` against a real gce-emulator process: service-account keys through its `/token`,
//! the metadata server path, caching, refresh, invalidation, single-flight and grant errors.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use adc_operator::gcp::auth::{AuthError, Credentials};
use adc_testenv::EmulatorProcess;

use crate::support;

const EMAIL: &str = "operator@demo-project.iam.gserviceaccount.com";

fn binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| adc_testenv::emulator_binary().expect("gce-emulator binary"))
}

/// A per-test scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "adc-gcp-auth-{}-{name}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `gce-emulator keygen`: the key file's path and the world entry it printed.
fn keygen(dir: &Path, file: &str, email: &str) -> (PathBuf, String) {
    let out = dir.join(file);
    let output = Command::new(binary())
        .args(["keygen", "--client-email", email, "--out"])
        .arg(&out)
        .args(["--token-uri", "http://127.0.0.1:1/token"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "keygen: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    (out, String::from_utf8(output.stdout).unwrap())
}

fn world(entries: &str) -> String {
    format!(
        "projects:\n  - id: demo-project\n    networks:\n      - name: default\nserviceAccounts:\n{entries}"
    )
}

/// Points the key file's `token_uri` at `base_url/token`.
fn retarget(key: &Path, base_url: &str) {
    let mut value: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(key).unwrap()).unwrap();
    value["token_uri"] = serde_json::Value::String(format!("{base_url}/token"));
    std::fs::write(key, value.to_string()).unwrap();
}

/// An emulator (with `args`) whose world holds one generated key, and that key, retargeted.
struct Setup {
    emulator: EmulatorProcess,
    key: PathBuf,
    world: String,
    scratch: Scratch,
}

fn setup(name: &str, args: &[&str]) -> Setup {
    let scratch = Scratch::new(name);
    let (key, entry) = keygen(&scratch.0, "key.json", EMAIL);
    let world = world(&entry);
    let emulator = EmulatorProcess::start(binary(), &world, args).unwrap();
    retarget(&key, &emulator.base_url);
    Setup {
        emulator,
        key,
        world,
        scratch,
    }
}

/// `GET routes` with the given Authorization header value: the HTTP status.
async fn list_routes(base_url: &str, authorization: Option<&str>) -> u16 {
    let mut request = reqwest::Client::new().get(format!(
        "{base_url}/compute/v1/projects/demo-project/global/routes"
    ));
    if let Some(value) = authorization {
        request = request.header("Authorization", value);
    }
    request.send().await.unwrap().status().as_u16()
}

#[tokio::test]
async fn key_file_token_lists_routes() {
    let s = setup("basic", &[]);
    let credentials = Credentials::from_service_account_file(&s.key).unwrap();
    assert_eq!(credentials.describe(), format!("service-account:{EMAIL}"));
    let debug = format!("{credentials:?} {:?}", credentials.source());
    assert!(!debug.contains("PRIVATE KEY"), "{debug}");

    let header = credentials.authorization().await.unwrap().unwrap();
    assert!(header.starts_with("Bearer ya29.emu."), "{header}");
    assert!(!format!("{credentials:?}").contains(&header[7..]));
    assert_eq!(list_routes(&s.emulator.base_url, Some(&header)).await, 200);
    assert_eq!(list_routes(&s.emulator.base_url, None).await, 401);

    // The same key as a JSON string, with the caller's HTTP client.
    let json = std::fs::read_to_string(&s.key).unwrap();
    let inline = Credentials::from_service_account_json(&json)
        .unwrap()
        .with_http_client(reqwest::Client::new());
    let other = inline.authorization().await.unwrap().unwrap();
    assert_ne!(other, header);
    assert_eq!(list_routes(&s.emulator.base_url, Some(&other)).await, 200);
    assert_eq!(inline.fetches(), 1);
}

#[tokio::test]
async fn tokens_are_cached_until_they_near_expiry() {
    // Google's hour-long tokens: the second call is a cache hit, also through a clone.
    let s = setup("cache", &[]);
    let credentials = Credentials::from_service_account_file(&s.key).unwrap();
    let first = credentials.authorization().await.unwrap().unwrap();
    let second = credentials.authorization().await.unwrap().unwrap();
    let third = credentials.clone().authorization().await.unwrap().unwrap();
    assert_eq!(first, second);
    assert_eq!(first, third);
    assert_eq!(credentials.fetches(), 1);

    // 2-second tokens are always within the refresh margin: every call fetches a new one.
    let short = setup("short", &["--token-lifetime", "2"]);
    let credentials = Credentials::from_service_account_file(&short.key).unwrap();
    let first = credentials.authorization().await.unwrap().unwrap();
    let second = credentials.authorization().await.unwrap().unwrap();
    assert_ne!(first, second);
    assert_eq!(credentials.fetches(), 2);
    assert_eq!(
        list_routes(&short.emulator.base_url, Some(&second)).await,
        200
    );
    // Once the old one has expired the emulator refuses it; the current one is fresh again.
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    assert_eq!(
        list_routes(&short.emulator.base_url, Some(&first)).await,
        401
    );
    let third = credentials.authorization().await.unwrap().unwrap();
    assert_ne!(third, second);
    assert_eq!(
        list_routes(&short.emulator.base_url, Some(&third)).await,
        200
    );
    assert_eq!(credentials.fetches(), 3);
}

/// A gce-emulator started on a fixed port (to restart one in place), killed on drop.
struct Restarted(Child);

impl Restarted {
    fn start(world_file: &Path, addr: &str) -> Self {
        let mut child = Command::new(binary())
            .args(["--listen", addr, "--world"])
            .arg(world_file)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), format!("listening on {addr}"));
        Self(child)
    }
}

impl Drop for Restarted {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn invalidate_after_401_fetches_a_working_token() {
    let s = setup("invalidate", &[]);
    let base_url = s.emulator.base_url.clone();
    let addr = base_url.trim_start_matches("http://").to_owned();
    let credentials = Credentials::from_service_account_file(&s.key).unwrap();
    let old = credentials.authorization().await.unwrap().unwrap();
    assert_eq!(list_routes(&base_url, Some(&old)).await, 200);

    // The emulator restarts on the same address and forgets every token it issued.
    drop(s.emulator);
    let world_file = s.scratch.0.join("world.yaml");
    std::fs::write(&world_file, &s.world).unwrap();
    let _restarted = Restarted::start(&world_file, &addr);
    assert_eq!(list_routes(&base_url, Some(&old)).await, 401);

    // Still cached until invalidated.
    assert_eq!(credentials.authorization().await.unwrap().unwrap(), old);
    credentials.invalidate(&old);
    let new = credentials.authorization().await.unwrap().unwrap();
    assert_ne!(new, old);
    assert_eq!(list_routes(&base_url, Some(&new)).await, 200);
    assert_eq!(credentials.fetches(), 2);

    // A late invalidate of the old value (another caller's 401) keeps the newer token.
    credentials.invalidate(&old);
    assert_eq!(credentials.authorization().await.unwrap().unwrap(), new);
    assert_eq!(credentials.fetches(), 2);
}

#[tokio::test]
async fn metadata_server_tokens() {
    let s = setup("metadata", &[]);
    let host = s.emulator.base_url.trim_start_matches("http://").to_owned();

    let credentials = Credentials::metadata_server_at(&host);
    assert_eq!(credentials.describe(), format!("metadata:{host}"));
    let header = credentials.authorization().await.unwrap().unwrap();
    assert_eq!(list_routes(&s.emulator.base_url, Some(&header)).await, 200);
    assert_eq!(credentials.authorization().await.unwrap().unwrap(), header);
    assert_eq!(credentials.fetches(), 1);

    // The only test that touches GCE_METADATA_HOST: set, read once, removed. The other suites'
    // tests run in this process meanwhile: none reads this variable, and every operator they
    // start gets GCE_METADATA_HOST set explicitly, so a child spawned in this window inherits
    // nothing it uses.
    let from_env = {
        let _env = support::LIBC_ENV.write();
        // SAFETY: std serialises its own accesses to the environment (std::env, Command); the
        // tests that read it through libc do so holding LIBC_ENV, which this holds for writing.
        unsafe { std::env::set_var("GCE_METADATA_HOST", &host) };
        let from_env = Credentials::metadata_server();
        // SAFETY: as above.
        unsafe { std::env::remove_var("GCE_METADATA_HOST") };
        from_env
    };
    assert_eq!(from_env.describe(), format!("metadata:{host}"));
    let header = from_env.authorization().await.unwrap().unwrap();
    assert_eq!(list_routes(&s.emulator.base_url, Some(&header)).await, 200);

    assert_eq!(
        Credentials::metadata_server().describe(),
        "metadata:metadata.google.internal"
    );
}

#[tokio::test]
async fn unknown_public_key_is_an_invalid_grant() {
    let s = setup("badsig", &[]);
    // Same account, another key pair: its public key is not in the world.
    let (stranger, _) = keygen(&s.scratch.0, "stranger.json", EMAIL);
    retarget(&stranger, &s.emulator.base_url);
    let credentials = Credentials::from_service_account_file(&stranger).unwrap();
    let err = credentials.authorization().await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("Invalid JWT Signature"), "{text}");
    assert!(text.contains("invalid_grant"), "{text}");
    assert!(
        matches!(
            err,
            AuthError::TokenEndpoint {
                status: 400,
                ref error,
                ..
            } if error == "invalid_grant"
        ),
        "{err:?}"
    );
    assert!(!err.retryable());
    // Final errors are not retried.
    assert_eq!(credentials.fetches(), 1);

    // Callers waiting on a failing fetch share its error instead of each fetching again.
    let credentials = Credentials::from_service_account_file(&stranger).unwrap();
    let results = futures::future::join_all((0..10).map(|_| credentials.authorization())).await;
    assert!(
        results
            .iter()
            .all(|r| matches!(r, Err(AuthError::TokenEndpoint { status: 400, .. })))
    );
    assert_eq!(credentials.fetches(), 1);
}

#[tokio::test]
async fn unreachable_token_endpoint_is_retried_twice() {
    let scratch = Scratch::new("unreachable");
    let (key, _) = keygen(&scratch.0, "key.json", EMAIL);
    // Port 1 on loopback: connection refused.
    let credentials = Credentials::from_service_account_file(&key).unwrap();
    let started = std::time::Instant::now();
    let err = credentials.authorization().await.unwrap_err();
    assert!(err.retryable(), "{err:?}");
    assert!(
        err.to_string().contains("http://127.0.0.1:1/token"),
        "{err}"
    );
    assert_eq!(credentials.fetches(), 3);
    assert!(started.elapsed() >= std::time::Duration::from_millis(500));
}

#[tokio::test]
async fn failed_refresh_keeps_a_live_token() {
    // 30-second tokens are always due for refresh, yet usable for a while.
    let s = setup("fallback", &["--token-lifetime", "30"]);
    let credentials = Credentials::from_service_account_file(&s.key).unwrap();
    let header = credentials.authorization().await.unwrap().unwrap();
    drop(s.emulator);
    // The token endpoint is gone: three attempts fail, the live token is handed out.
    assert_eq!(credentials.authorization().await.unwrap().unwrap(), header);
    assert_eq!(credentials.fetches(), 4);
    // Once it was refused, there is nothing to fall back on.
    credentials.invalidate(&header);
    let err = credentials.authorization().await.unwrap_err();
    assert!(matches!(err, AuthError::Transport { .. }), "{err:?}");
    assert_eq!(credentials.fetches(), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_callers_share_one_fetch() {
    let s = setup("singleflight", &[]);
    let credentials = Credentials::from_service_account_file(&s.key).unwrap();
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(20));
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let credentials = credentials.clone();
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                credentials.authorization().await.unwrap().unwrap()
            })
        })
        .collect();
    let mut headers = Vec::new();
    for task in tasks {
        headers.push(task.await.unwrap());
    }
    assert!(headers.iter().all(|h| h == &headers[0]));
    assert_eq!(credentials.fetches(), 1);
    assert_eq!(
        list_routes(&s.emulator.base_url, Some(&headers[0])).await,
        200
    );
}

#[tokio::test]
async fn fixed_and_anonymous_sources() {
    let scratch = Scratch::new("modes");
    let (_, entry) = keygen(&scratch.0, "key.json", EMAIL);
    let world = world(&entry);

    let any = EmulatorProcess::start(binary(), &world, &["--auth", "any"]).unwrap();
    let fixed = Credentials::fixed("from-outside");
    let header = fixed.authorization().await.unwrap();
    assert_eq!(header.as_deref(), Some("Bearer from-outside"));
    assert_eq!(list_routes(&any.base_url, header.as_deref()).await, 200);
    let anonymous = Credentials::anonymous();
    assert_eq!(anonymous.authorization().await.unwrap(), None);
    assert_eq!(list_routes(&any.base_url, None).await, 401);

    let none = EmulatorProcess::start(binary(), &world, &["--auth", "none"]).unwrap();
    assert_eq!(list_routes(&none.base_url, None).await, 200);
}
