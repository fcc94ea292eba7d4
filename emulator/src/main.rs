//! `gce-emulator`: a local Compute Engine API v1 server, and `gce-emulator keygen`.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand, ValueEnum};
use gce_emulator::auth;
use gce_emulator::faults::Faults;
use gce_emulator::http::{App, router};
use gce_emulator::model::{BusyBehavior, Timing};
use gce_emulator::service::{AuthMode, Emulator, Settings};
use gce_emulator::world::World;

/// Which model of Compute's timing and limits to serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Profile {
    /// No added latency; operations DONE at once; no rate quotas (unit and integration tests).
    Instant,
    /// Latencies, operation durations and per-minute rate quotas of the reference model
    /// (docs/compute-api.md §11).
    Gcp,
}

/// What a mutation meets on a network at its concurrency limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Busy {
    /// The operation waits PENDING for a free slot.
    Queue,
    /// The call is refused with 400 resourceNotReady.
    Refuse,
}

#[derive(Parser, Debug)]
#[command(
    version,
    about = "A faithful local Google Compute Engine API v1 for tests, demos and benchmarks",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// Address to listen on; port 0 picks a free port. The first stdout line is
    /// `listening on ADDR`.
    #[arg(long, default_value = "127.0.0.1:8085")]
    listen: SocketAddr,
    /// World file (YAML) that seeds projects, networks, instances, quotas and service accounts;
    /// see emulator/README.md.
    #[arg(long)]
    world: Option<PathBuf>,
    /// `instant` (no latency, operations DONE at once) or `gcp` (the reference model's latencies,
    /// operation durations and rate quotas, docs/compute-api.md §11).
    #[arg(long, value_enum, default_value_t = Profile::Instant)]
    profile: Profile,
    /// Multiplies every duration of the gcp profile (0.01 = a hundred times faster); per-minute
    /// rate-quota windows shrink with it, so every ratio holds.
    #[arg(long, default_value_t = 1.0)]
    time_scale: f64,
    /// `token`: a Bearer token issued by this emulator's /token or metadata path; `any`: any
    /// Bearer token; `none`: no Authorization header needed.
    #[arg(long, value_enum, default_value_t = AuthMode::Token)]
    auth: AuthMode,
    /// Faults drawn per call, e.g.
    /// `http500=0.05,http503=0.02,ratelimit=0.02,reset=0.01,opfail=0.01,slow=0.05:2s`.
    /// Also settable at run time with POST /_emulator/faults.
    #[arg(long, default_value = "")]
    faults: String,
    /// Seed of every random draw (latencies, durations, faults, names).
    #[arg(long, default_value_t = 0)]
    rng_seed: u64,
    /// Mutations (route and firewall inserts, deletes, patches) a VPC network runs at once;
    /// unlimited when absent. A network's `mutationConcurrency` in the world file overrides it.
    #[arg(long)]
    network_concurrency: Option<u32>,
    /// What a mutation meets on a network at its limit: `queue` (PENDING until a slot frees) or
    /// `refuse` (400 resourceNotReady).
    #[arg(long, value_enum, default_value_t = Busy::Queue)]
    network_busy: Busy,
    /// Lifetime of issued access tokens, in seconds (not scaled).
    #[arg(long, default_value_t = 3600)]
    token_lifetime: u64,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Write a service-account key file in Google's JSON format and print the matching world
    /// entry (paste it under `serviceAccounts:`).
    Keygen {
        /// The service account's e-mail, e.g. operator@demo-project.iam.gserviceaccount.com.
        #[arg(long)]
        client_email: String,
        /// Where to write the key file.
        #[arg(long)]
        out: PathBuf,
        /// Project id written into the key; default: taken from the e-mail's domain.
        #[arg(long)]
        project_id: Option<String>,
        /// The key's token_uri: this emulator's /token.
        #[arg(long, default_value = "http://127.0.0.1:8085/token")]
        token_uri: String,
    },
}

fn keygen(
    client_email: &str,
    out: &PathBuf,
    project_id: Option<String>,
    token_uri: &str,
) -> anyhow::Result<()> {
    let project = project_id.unwrap_or_else(|| {
        client_email
            .split_once('@')
            .and_then(|(_, domain)| domain.split('.').next())
            .unwrap_or("project")
            .to_string()
    });
    let key = auth::generate_service_account_key(client_email, &project, token_uri)?;
    std::fs::write(out, &key.key_json).with_context(|| format!("writing {}", out.display()))?;
    print!("{}", auth::world_entry_yaml(&key));
    Ok(())
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    if !(args.time_scale > 0.0 && args.time_scale.is_finite()) {
        bail!(
            "--time-scale must be a positive number, got {}",
            args.time_scale
        );
    }
    let faults = Faults::parse(&args.faults).context("--faults")?;
    let world = match &args.world {
        Some(path) => World::load(path)?,
        None => World::default(),
    };
    for (i, account) in world.service_accounts.iter().enumerate() {
        auth::parse_public_key_pem(&account.public_key_pem)
            .map_err(|err| anyhow::anyhow!("world: serviceAccounts[{i}].publicKeyPem: {err}"))?;
    }
    let timing = match args.profile {
        Profile::Instant => Timing::instant(),
        Profile::Gcp => Timing::gcp(args.time_scale),
    };
    let settings = Settings {
        timing,
        enforce_rates: args.profile == Profile::Gcp,
        auth: args.auth,
        faults,
        seed: args.rng_seed,
        network_concurrency: args.network_concurrency,
        network_busy: match args.network_busy {
            Busy::Queue => BusyBehavior::Queue,
            Busy::Refuse => BusyBehavior::Refuse,
        },
        token_lifetime: Duration::from_secs(args.token_lifetime.max(1)),
    };
    if settings.network_concurrency == Some(0) {
        bail!("--network-concurrency must be at least 1");
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    let app = App {
        emulator: Arc::new(Emulator::new(world, settings)),
        base_url: format!("http://{addr}"),
    };
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "listening on {addr}")?;
        stdout.flush()?;
    }
    tracing::info!(%addr, profile = ?args.profile, time_scale = args.time_scale, "gce-emulator serving");
    axum::serve(listener, router(app))
        .with_graceful_shutdown(async {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(term) => term,
                    Err(_) => return std::future::pending().await,
                };
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        })
        .await?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Some(Command::Keygen {
            client_email,
            out,
            project_id,
            token_uri,
        }) => keygen(&client_email, &out, project_id, &token_uri),
        None => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("starting the tokio runtime")?
            .block_on(serve(cli.serve)),
    }
}
