//! The `adc-operator` command line.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    version,
    about = "Turns ADC virtual services and VPC routes into Compute Engine resources"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the operator's version.
    Version,
    /// Print the CustomResourceDefinitions (or write one file per CRD with --out).
    Crdgen(CrdgenArgs),
    /// Run the controllers.
    Run(RunArgs),
    /// Print the Compute changes the operator would make, without making them: every insert,
    /// replace and delete with its owner, what the guard rails refuse, quota use before and
    /// after, and the least time at the cloud's rate limit. Reads only. Exit code 0: no change,
    /// 2: changes, 1: an error.
    Plan(PlanArgs),
    /// Write VirtualService and VpcRoute manifests that would own a project's existing routes
    /// and firewall rules (those without an ownership marker), each annotated
    /// `adc.dev/adopt: "true"`, for review, `plan` and apply. What cannot be mapped is listed
    /// on stderr (and at the end of the output) with the reason. Reads only.
    Import(ImportArgs),
}

#[derive(Args)]
struct ImportArgs {
    /// Kubeconfig to use; default: KUBECONFIG / ~/.kube/config, then in-cluster.
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// The GcpCloud whose project and network to read (it must exist in the cluster).
    #[arg(long)]
    cloud: String,
    /// The namespace of the manifests.
    #[arg(short, long, default_value = "default")]
    namespace: String,
    /// Only resources whose name starts with this.
    #[arg(long)]
    name_prefix: Option<String>,
    /// Only routes to this instance (by name), with the firewall rules of their VIPs.
    #[arg(long)]
    next_hop_instance: Option<String>,
    /// Only resources whose description contains this.
    #[arg(long)]
    description: Option<String>,
    /// A service-account JSON key to read GCP with; default: the cloud's own credentials.
    #[arg(long)]
    key: Option<PathBuf>,
    /// The operator's cluster id (its ownership markers): the chart's clusterId.
    #[arg(long, env = "ADC_CLUSTER_ID", default_value = "default")]
    cluster_id: String,
}

#[derive(Args)]
struct PlanArgs {
    /// Kubeconfig to use; default: KUBECONFIG / ~/.kube/config, then in-cluster.
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Only this GcpCloud; default: every cloud.
    #[arg(long)]
    cloud: Option<String>,
    /// Manifests (file or directory, repeatable) to plan as if they were applied: GcpCloud,
    /// VirtualService, VpcRoute; a namespaced object without a namespace is in `default`.
    #[arg(short = 'f', long = "filename")]
    filenames: Vec<PathBuf>,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = PlanOutput::Table)]
    output: PlanOutput,
    /// A service-account JSON key to read GCP with, for every cloud; default: each cloud's own
    /// credentials (its Secret; for workload identity, GOOGLE_APPLICATION_CREDENTIALS when set,
    /// else the metadata server).
    #[arg(long)]
    key: Option<PathBuf>,
    /// The operator's cluster id (its ownership markers): the chart's clusterId.
    #[arg(long, env = "ADC_CLUSTER_ID", default_value = "default")]
    cluster_id: String,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum PlanOutput {
    Table,
    Json,
    Yaml,
}

#[derive(Args)]
struct RunArgs {
    /// Kubeconfig to use; default: in-cluster configuration, then KUBECONFIG / ~/.kube/config.
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Written into every GCP resource's ownership marker: clusters sharing a project never
    /// touch each other's resources. Never change it for a running fleet.
    #[arg(long, env = "ADC_CLUSTER_ID", default_value = "default")]
    cluster_id: String,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:8080")]
    metrics_addr: std::net::SocketAddr,
    /// How calls reach Compute: batched (default), concurrent (one request per call, same
    /// engine) or per-object (K workers, one call and one operations.wait at a time).
    #[arg(long, value_enum, default_value_t = Dispatch::Batched)]
    gcp_dispatch: Dispatch,
    /// Workers of the per-object dispatch mode.
    #[arg(long, default_value_t = 10)]
    gcp_workers: usize,
    /// Multiplies the GCP engine's notion of time; only for benchmarks against an emulator run
    /// with the same --time-scale.
    #[arg(long, default_value_t = 1.0, hide = true)]
    gcp_time_scale: f64,
    /// Kubernetes API requests the controllers have waiting for an answer, at most (watches
    /// count only until their answer starts).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..))]
    kube_api_concurrency: u64,
    /// Reconciles of each kind running at once, at most (the rest wait in the queue, cheaply).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..))]
    max_concurrent_reconciles: u16,
    /// Log format.
    #[arg(long, value_enum, default_value_t = adc_operator::telemetry::LogFormat::Text)]
    log_format: adc_operator::telemetry::LogFormat,
    /// Run only while holding a coordination.k8s.io Lease: one replica reconciles and talks to
    /// GCP, the others stand by and take over when its lease lapses.
    #[arg(long)]
    leader_election: bool,
    /// The Lease's name; with --sharding, the start of every Lease's name
    /// (`<name>-cloud-<cloud>`, `<name>-member-<pod>`).
    #[arg(long, default_value = "adc-operator")]
    lease_name: String,
    /// The Lease's namespace; default: the pod's (POD_NAMESPACE), else `default`.
    #[arg(long, env = "POD_NAMESPACE")]
    lease_namespace: Option<String>,
    /// Seconds a leader's lease lasts without renewal before a standby may take over. The leader
    /// renews at half of it and exits if no renewal lands shortly before the lapse. With
    /// --sharding: the same for each cloud's Lease (a replica drops the cloud instead of
    /// exiting).
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(2..))]
    lease_duration: u64,
    /// Spread the GcpClouds over every replica: each cloud, with its objects and its engine,
    /// is reconciled by the holder of its own Lease (`<lease-name>-cloud-<cloud>`), and
    /// replicas balance the clouds between them. Replaces --leader-election.
    #[arg(long, conflicts_with = "leader_election")]
    sharding: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Dispatch {
    Batched,
    Concurrent,
    PerObject,
}

#[derive(Args)]
struct CrdgenArgs {
    /// Write DIR/<plural>.adc.dev.yaml for each CRD instead of one multi-document YAML on stdout.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

/// `kubectl adc ...`: the same binary installed or linked as `kubectl-adc`.
#[derive(Parser)]
#[command(
    name = "kubectl adc",
    version,
    about = "adc-operator's kubectl plugin: what the operator is doing with your fleet"
)]
struct PluginCli {
    /// Kubeconfig file; default: KUBECONFIG, then ~/.kube/config, then in-cluster.
    #[arg(long, global = true)]
    kubeconfig: Option<PathBuf>,
    /// Kubeconfig context; default: the current one.
    #[arg(long, global = true)]
    context: Option<String>,
    #[command(subcommand)]
    command: PluginCommand,
}

#[derive(Subcommand)]
enum PluginCommand {
    /// A fleet summary per GcpCloud: objects by condition and reason, progress, quota use, the
    /// replica that leads, the latest errors.
    Status(StatusArgs),
}

#[derive(Args)]
struct StatusArgs {
    /// Only this GcpCloud (and the objects that name it); default: every cloud.
    cloud: Option<String>,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Output::Text)]
    output: Output,
    /// Latest errors shown per cloud.
    #[arg(long, default_value_t = 5)]
    errors: usize,
    /// Name of the operator's leader Lease (the chart's leaderElection.leaseName).
    #[arg(long, default_value = "adc-operator")]
    lease_name: String,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Output {
    Text,
    Json,
}

/// Whether the binary runs as the kubectl plugin (its file is named `kubectl-adc`).
fn invoked_as_plugin() -> bool {
    std::env::args_os()
        .next()
        .map(PathBuf::from)
        .and_then(|path| {
            path.file_stem()
                .map(|stem| stem == adc_operator::kubectl::PLUGIN_NAME)
        })
        .unwrap_or(false)
}

/// jemalloc rather than glibc's malloc: at 10,000 objects a fifth of the operator's CPU was the
/// allocator. Measured on the rollout of 10,000 (bench/README.md, "The third pass"): jemalloc
/// 2.4 ms per object and 132 MiB, glibc 2.8 ms and 137 MiB, mimalloc 2.3 ms but 168 MiB.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read before `main`: one arena rather than four per CPU. Since the
/// operator's tasks move between the runtime's worker threads, the default's arenas peaked at
/// 138–141 MiB in the rollout of 10,000; one arena at 127–128 MiB, for 4–10 % more CPU
/// (bench/README.md, "The sixth pass"). `_RJEM_MALLOC_CONF` in the environment still overrides
/// it.
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: &[u8; 10] = b"narenas:1\0";

fn main() -> anyhow::Result<()> {
    if invoked_as_plugin() {
        return plugin(PluginCli::parse());
    }
    match Cli::parse().command {
        Command::Version => println!("adc-operator {}", adc_operator::VERSION),
        Command::Crdgen(args) => crdgen(args)?,
        // The operator's body runs as a task on the runtime's workers, not on the main thread
        // that `block_on` polls: its controllers spawn a reconcile per object and are woken by
        // each one's end, and between a worker and the main thread each of those is a thread
        // wake-up (bench/README.md, "The sixth pass").
        Command::Run(args) => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the tokio runtime")?;
            runtime
                .block_on(runtime.spawn(run(args)))
                .context("the operator's task ended abnormally")??;
        }
        Command::Import(args) => {
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the tokio runtime")?
                .block_on(import(args))?;
        }
        Command::Plan(args) => {
            let code = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the tokio runtime")?
                .block_on(plan(args));
            let code = match code {
                Ok(code) => code,
                Err(err) => {
                    eprintln!("error: {err:#}");
                    1
                }
            };
            std::process::exit(code);
        }
    }
    Ok(())
}

/// `adc-operator plan`: the exit code.
async fn plan(args: PlanArgs) -> anyhow::Result<i32> {
    use adc_operator::controller::preview::{Options, preview};
    let manifests = adc_operator::planview::read_manifests(&args.filenames)
        .map_err(|err| anyhow::anyhow!(err))?;
    let credentials = read_credentials(args.key.as_deref())?;
    let client = kube::Client::try_from(kube_config(args.kubeconfig.as_deref()).await?)?;
    let preview = preview(
        client,
        Options {
            cloud: args.cloud,
            manifests,
            credentials,
            cluster_id: args.cluster_id,
        },
    )
    .await?;
    match args.output {
        PlanOutput::Table => print!("{}", adc_operator::planview::table(&preview)),
        PlanOutput::Json => println!("{}", serde_json::to_string_pretty(&preview)?),
        PlanOutput::Yaml => print!("{}", serde_yaml::to_string(&preview)?),
    }
    Ok(if preview.has_changes() {
        adc_operator::planview::EXIT_CHANGES
    } else {
        0
    })
}

/// The credentials of `plan` and `import`: `--key`, else GOOGLE_APPLICATION_CREDENTIALS, else
/// each cloud's own (None).
fn read_credentials(
    key: Option<&std::path::Path>,
) -> anyhow::Result<Option<adc_operator::gcp::Credentials>> {
    use adc_operator::gcp::Credentials;
    Ok(match key {
        Some(path) => Some(
            Credentials::from_service_account_file(path)
                .with_context(|| format!("--key {}", path.display()))?,
        ),
        None => match std::env::var_os("GOOGLE_APPLICATION_CREDENTIALS") {
            Some(path) => Some(
                Credentials::from_service_account_file(std::path::Path::new(&path))
                    .context("GOOGLE_APPLICATION_CREDENTIALS")?,
            ),
            None => None,
        },
    })
}

/// `adc-operator import`: manifests on stdout, what is not mapped on stderr too.
async fn import(args: ImportArgs) -> anyhow::Result<()> {
    use adc_operator::plan::import::{Filters, import};
    let credentials = read_credentials(args.key.as_deref())?;
    let client = kube::Client::try_from(kube_config(args.kubeconfig.as_deref()).await?)?;
    let (cloud, foreign) = adc_operator::controller::preview::foreign_resources(
        client,
        &args.cloud,
        credentials,
        &args.cluster_id,
    )
    .await?;
    let filters = Filters {
        name_prefix: args.name_prefix,
        next_hop_instance: args.next_hop_instance,
        description: args.description,
    };
    let found = import(&cloud, &args.namespace, &foreign, &filters);
    print!("{}", adc_operator::planview::import_yaml(&cloud, &found)?);
    for (resource, reason) in &found.unmapped {
        eprintln!("not mapped: {resource}: {reason}");
    }
    eprintln!(
        "{} manifest(s) own {} resource(s); {} not mapped",
        found.manifests.len(),
        found.mapped,
        found.unmapped.len()
    );
    Ok(())
}

/// The Kubernetes configuration of `run` and `plan`: the kubeconfig given, else in-cluster,
/// then KUBECONFIG / ~/.kube/config.
async fn kube_config(kubeconfig: Option<&std::path::Path>) -> anyhow::Result<kube::Config> {
    match kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            Ok(kube::Config::from_custom_kubeconfig(
                kubeconfig,
                &kube::config::KubeConfigOptions::default(),
            )
            .await?)
        }
        None => kube::Config::infer()
            .await
            .context("no in-cluster configuration and no kubeconfig"),
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    use adc_operator::controller::{self, OperatorSettings};
    use adc_operator::gcp::{DispatchMode, GcpMetrics};

    adc_operator::telemetry::init_logging(args.log_format);
    let config = kube_config(args.kubeconfig.as_deref()).await?;
    // Requests the controllers have waiting for an answer, at most: a new leader's burst of
    // thousands of status writes queues here rather than in the API server (a watch holds its
    // permit only until its answer starts). The election has a client of its own.
    let client = kube::client::ClientBuilder::try_from(config.clone())?
        .with_layer(&tower::limit::ConcurrencyLimitLayer::new(
            usize::try_from(args.kube_api_concurrency).unwrap_or(usize::MAX),
        ))
        .build();
    let metrics = std::sync::Arc::new(GcpMetrics::default());
    // process_* unprefixed, as every Prometheus client names them; ours under adc_operator_.
    let mut registry = prometheus_client::registry::Registry::default();
    let process = std::sync::Arc::new(adc_operator::telemetry::ProcessMetrics::default());
    process.register(&mut registry);
    let reconcile_metrics = std::sync::Arc::new(controller::ControllerMetrics::default());
    let leader_metrics = std::sync::Arc::new(adc_operator::leader::LeaderMetrics::default());
    {
        let ours = registry.sub_registry_with_prefix("adc_operator");
        metrics.register(ours);
        reconcile_metrics.register(ours);
        leader_metrics.register(ours);
    }
    metrics.prime();
    reconcile_metrics.prime(&["VirtualService", "VpcRoute", "GcpCloud"]);
    let registry = std::sync::Arc::new(std::sync::Mutex::new(registry));
    let addr = args.metrics_addr;
    tokio::spawn(async move {
        if let Err(err) = adc_operator::telemetry::serve(addr, registry, process).await {
            tracing::error!(error = %err, %addr, "the metrics endpoint failed");
        }
    });
    let dispatch = match args.gcp_dispatch {
        Dispatch::Batched => DispatchMode::Batched,
        Dispatch::Concurrent => DispatchMode::Concurrent,
        Dispatch::PerObject => DispatchMode::PerObject {
            workers: args.gcp_workers.max(1),
        },
    };
    tracing::info!(version = adc_operator::VERSION, cluster_id = %args.cluster_id, "adc-operator starting");
    let identity = std::env::var("POD_NAME").unwrap_or_else(|_| {
        format!(
            "{}-{}",
            std::env::var("HOSTNAME").unwrap_or_else(|_| "adc-operator".into()),
            std::process::id()
        )
    });
    let operator = OperatorSettings {
        cluster_id: args.cluster_id.clone(),
        dispatch,
        gcp_time_scale: args.gcp_time_scale,
        reconcile_concurrency: args.max_concurrent_reconciles,
        identity: identity.clone(),
    };
    let lease_namespace = args
        .lease_namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    if args.sharding {
        // Every replica runs and holds its share of the clouds.
        leader_metrics.leader.set(1);
        leader_metrics.sharding.set(1);
        let settings = adc_operator::shard::ShardSettings {
            lease_prefix: args.lease_name.clone(),
            namespace: lease_namespace,
            identity: identity.clone(),
            duration_seconds: args.lease_duration,
        };
        let stopped = move |why: String| {
            // Nothing renews this replica's Leases any more (its write gates close by
            // themselves before they lapse): restart.
            tracing::error!(%identity, reason = %why, "the shard loop stopped: exiting");
            std::process::exit(adc_operator::leader::STEP_DOWN_EXIT_CODE);
        };
        let (shards, events) = adc_operator::shard::start(
            config,
            settings,
            leader_metrics.clouds_held.clone(),
            stopped,
        )?;
        let sharding = controller::Sharding { shards, events };
        controller::run(client, operator, metrics, reconcile_metrics, Some(sharding)).await?;
        return Ok(());
    }
    if !args.leader_election {
        // The only replica: it leads.
        leader_metrics.leader.set(1);
        controller::run(client, operator, metrics, reconcile_metrics, None).await?;
        return Ok(());
    }
    let settings = adc_operator::leader::LeaseSettings {
        name: args.lease_name.clone(),
        namespace: lease_namespace,
        identity,
        duration_seconds: args.lease_duration,
    };
    let identity = settings.identity.clone();
    let step_down = move |lost: adc_operator::leader::LeadershipLost| {
        // Stop reconciling at once: no two replicas may talk to GCP. The pod restarts as a
        // standby.
        tracing::error!(%identity, reason = %lost, "leadership lost: exiting so that no two replicas reconcile");
        std::process::exit(adc_operator::leader::STEP_DOWN_EXIT_CODE);
    };
    let work = controller::run(client, operator, metrics, reconcile_metrics, None);
    adc_operator::leader::lead(config, settings, leader_metrics, step_down, work).await??;
    Ok(())
}

fn plugin(cli: PluginCli) -> anyhow::Result<()> {
    use adc_operator::kubectl;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(async {
        let client = match &cli.kubeconfig {
            Some(path) => {
                let kubeconfig = kube::config::Kubeconfig::read_from(path)
                    .with_context(|| format!("reading kubeconfig {}", path.display()))?;
                let options = kube::config::KubeConfigOptions {
                    context: cli.context.clone(),
                    ..Default::default()
                };
                let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options).await?;
                kube::Client::try_from(config)?
            }
            None => kubectl::client(cli.context.clone()).await?,
        };
        match cli.command {
            PluginCommand::Status(args) => {
                let text = kubectl::status(
                    client,
                    args.cloud.as_deref(),
                    &args.lease_name,
                    args.errors,
                    args.output == Output::Json,
                )
                .await?;
                print!("{text}");
            }
        }
        Ok(())
    })
}

fn crdgen(args: CrdgenArgs) -> anyhow::Result<()> {
    use adc_operator::api;
    let Some(dir) = args.out else {
        print!("{}", api::crds_yaml().context("serialising the CRDs")?);
        return Ok(());
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for (name, yaml) in api::crd_files().context("serialising the CRDs")? {
        let path = dir.join(name);
        std::fs::write(&path, yaml).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
