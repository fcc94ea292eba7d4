//! A cloud's runtime: its credentials (Secret or workload identity) and the GCP engine
//! built from its spec, rebuilt when the spec changes.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::Api;

use super::*;
use crate::api::{GcpCloud, UrgentReserve, parse_duration};
use crate::controller::context::{CloudRuntime, Context};
use crate::controller::error::Error;
use crate::gcp::{Credentials, EngineSettings, RateLimits, Reserve};
use crate::plan::CloudView;

/// The default Compute endpoint.
pub const COMPUTE_ENDPOINT: &str = "https://compute.googleapis.com";

pub(super) async fn credentials(ctx: &Context, cloud: &GcpCloud) -> Result<Credentials, Error> {
    let spec = &cloud.spec.credentials;
    if let Some(secret_ref) = &spec.secret_ref {
        let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &secret_ref.namespace);
        let secret = secrets.get(&secret_ref.name).await.map_err(|err| {
            Error::Config(format!(
                "spec.credentials.secretRef: cannot read Secret {}/{}: {err}",
                secret_ref.namespace, secret_ref.name
            ))
        })?;
        let data = secret
            .data
            .as_ref()
            .and_then(|d| d.get(&secret_ref.key))
            .ok_or_else(|| {
                Error::Config(format!(
                    "spec.credentials.secretRef: Secret {}/{} has no key '{}'",
                    secret_ref.namespace, secret_ref.name, secret_ref.key
                ))
            })?;
        let json = String::from_utf8(data.0.clone()).map_err(|_| {
            Error::Config(format!(
                "spec.credentials.secretRef: key '{}' is not UTF-8 JSON",
                secret_ref.key
            ))
        })?;
        return Credentials::from_service_account_json(&json)
            .map_err(|err| Error::Config(format!("spec.credentials.secretRef: {err}")));
    }
    Ok(Credentials::metadata_server())
}

/// The spec the engine is built from. The management policy is not part of it: a switch
/// takes effect on the running engine ([`CloudRuntime::set_policy`]) without a rebuild.
pub(super) fn fingerprint(cloud: &GcpCloud) -> String {
    let mut spec = cloud.spec.clone();
    spec.management_policy = Default::default();
    serde_json::to_string(&spec).unwrap_or_default()
}

pub(super) async fn build_runtime(
    ctx: &Context,
    cloud: &GcpCloud,
) -> Result<Arc<CloudRuntime>, Error> {
    let credentials = credentials(ctx, cloud).await?;
    let runtime = runtime_with(ctx, cloud, credentials, false)?;
    forward_inventory_events(ctx, &runtime);
    run_layout(ctx, &runtime);
    run_balancers(ctx, &runtime);
    poll_instances(ctx, &runtime);
    Ok(runtime)
}

/// A cloud's runtime for `adc-operator plan`: an engine that only reads, with the cloud's own
/// credentials unless `credentials` says otherwise, and no task of its own (no layout, no
/// instance poll, no events).
pub async fn read_only_runtime(
    ctx: &Context,
    cloud: &GcpCloud,
    credentials: Option<Credentials>,
) -> Result<Arc<CloudRuntime>, Error> {
    let credentials = match credentials {
        Some(given) => given,
        None => self::credentials(ctx, cloud).await?,
    };
    runtime_with(ctx, cloud, credentials, true)
}

fn runtime_with(
    ctx: &Context,
    cloud: &GcpCloud,
    credentials: Credentials,
    read_only: bool,
) -> Result<Arc<CloudRuntime>, Error> {
    let spec = &cloud.spec;
    let endpoint = spec
        .endpoint
        .clone()
        .unwrap_or_else(|| COMPUTE_ENDPOINT.to_string());
    let mut settings = EngineSettings::new(&spec.project, &endpoint);
    settings.dispatch = ctx.settings.dispatch;
    settings.time_scale = ctx.settings.gcp_time_scale;
    settings.max_calls_per_batch = spec.batching.max_calls_per_batch as usize;
    settings.max_in_flight = spec.batching.max_batches_in_flight as usize;
    settings.linger = parse_duration(&spec.batching.linger).unwrap_or(Duration::from_millis(50));
    settings.rate_limits = RateLimits {
        reads_per_minute: u64::from(spec.rate_limit.reads_per_minute),
        writes_per_minute: u64::from(spec.rate_limit.writes_per_minute),
        operation_reads_per_minute: u64::from(spec.rate_limit.operation_reads_per_minute),
        regional_writes_per_minute: u64::from(spec.rate_limit.writes_per_minute),
        urgent_reserve: match spec
            .rate_limit
            .urgent_reserve()
            .map_err(|err| Error::Config(format!("spec.rateLimit.urgentReserve: {err}")))?
        {
            UrgentReserve::Percent(percent) => Reserve::Percent(percent),
            UrgentReserve::Calls(calls) => Reserve::Calls(u64::from(calls)),
        },
    };
    settings.resource_prefix = spec.resource_prefix.clone();
    settings.regions = vec![spec.region.clone()];
    settings.network_project = spec
        .network_project
        .clone()
        .filter(|host| *host != spec.project);
    settings.read_only = read_only;
    settings.list_foreign = spec.adoption.enabled;
    // The poll runs only for a cloud that writes (not under `adc-operator plan`).
    settings.instances_polled = !read_only
        && super::instances::instance_poll_period(spec, ctx.settings.gcp_time_scale)
            <= parse_duration(&spec.resync_interval).unwrap_or(Duration::from_secs(300));
    if let Some(shards) = &ctx.shards
        && !read_only
    {
        // Without the cloud's Lease nothing is written: a closed gate.
        settings.write_gate = Some(
            shards
                .gate(&cloud.name_any())
                .unwrap_or_else(crate::gcp::WriteGate::new),
        );
    }
    let engine = crate::gcp::Engine::start(settings, credentials, Arc::clone(&ctx.metrics))?;
    let runtime = Arc::new(CloudRuntime {
        view: CloudView {
            cluster_id: ctx.settings.cluster_id.clone(),
            cloud: cloud.name_any(),
            project: spec.project.clone(),
            network_project: spec
                .network_project
                .clone()
                .unwrap_or_else(|| spec.project.clone()),
            network: spec.network.clone(),
            region: spec.region.clone(),
            resource_prefix: spec.resource_prefix.clone(),
        },
        spec: spec.clone(),
        fingerprint: fingerprint(cloud),
        zones: Default::default(),
        adding_zones: Default::default(),
        ready: Default::default(),
        refresh_failures: Default::default(),
        settling: std::sync::atomic::AtomicBool::new(true),
        quiet_once: std::sync::atomic::AtomicBool::new(false),
        pools: crate::controller::pools::Pools::from_spec(spec),
        ilb: Default::default(),
        policy: std::sync::RwLock::new(spec.management_policy),
        engine,
    });
    Ok(runtime)
}
