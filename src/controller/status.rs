//! kstatus conditions from one reconcile's outcome, and status writes that happen only when the
//! status changed (a converged fleet costs the API server nothing).

use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::api::conditions::{Condition, READY, RECONCILING, STALLED, set_condition};

/// The field manager of every status write.
pub const FIELD_MANAGER: &str = "adc-operator";

/// Where an object stands after a reconcile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Everything its spec asks for exists in GCP.
    Ready { reason: String, message: String },
    /// Work is underway or will be retried (a transient GCP error, a pending VIP).
    Progressing { reason: String, message: String },
    /// No progress without a change to the spec or the cloud; the message says what to change.
    Stalled { reason: String, message: String },
    /// Held on purpose (a management policy: waiting for approval, paused): not Ready, neither
    /// progressing nor stalled, so kstatus tools show it as waiting, not failed.
    Suspended { reason: String, message: String },
}

impl Phase {
    /// Ready.
    pub fn ready(reason: &str, message: impl Into<String>) -> Self {
        Phase::Ready {
            reason: reason.into(),
            message: message.into(),
        }
    }
    /// Progressing.
    pub fn progressing(reason: &str, message: impl Into<String>) -> Self {
        Phase::Progressing {
            reason: reason.into(),
            message: message.into(),
        }
    }
    /// Suspended.
    pub fn suspended(reason: &str, message: impl Into<String>) -> Self {
        Phase::Suspended {
            reason: reason.into(),
            message: message.into(),
        }
    }
    /// Stalled.
    pub fn stalled(reason: &str, message: impl Into<String>) -> Self {
        Phase::Stalled {
            reason: reason.into(),
            message: message.into(),
        }
    }
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now().to_string()
}

/// Sets Ready, Reconciling and Stalled for `phase`, keeping transition times of unchanged ones.
pub fn apply_phase(conditions: &mut Vec<Condition>, phase: &Phase, generation: Option<i64>) {
    let now = now();
    match phase {
        Phase::Ready { reason, message } => {
            set_condition(conditions, READY, true, reason, message, generation, &now);
            set_condition(conditions, RECONCILING, false, reason, "", generation, &now);
            set_condition(conditions, STALLED, false, reason, "", generation, &now);
        }
        Phase::Progressing { reason, message } => {
            set_condition(conditions, READY, false, reason, message, generation, &now);
            set_condition(
                conditions,
                RECONCILING,
                true,
                reason,
                message,
                generation,
                &now,
            );
            set_condition(conditions, STALLED, false, reason, "", generation, &now);
        }
        Phase::Stalled { reason, message } => {
            set_condition(conditions, READY, false, reason, message, generation, &now);
            set_condition(conditions, RECONCILING, false, reason, "", generation, &now);
            set_condition(conditions, STALLED, true, reason, message, generation, &now);
        }
        Phase::Suspended { reason, message } => {
            set_condition(conditions, READY, false, reason, message, generation, &now);
            set_condition(conditions, RECONCILING, false, reason, "", generation, &now);
            set_condition(conditions, STALLED, false, reason, "", generation, &now);
        }
    }
}

/// Writes `status` with server-side apply unless it equals the object's current status.
pub async fn write_status<K, S>(
    api: &Api<K>,
    object: &K,
    current: Option<&S>,
    status: &S,
) -> Result<bool, kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
    S: Serialize + PartialEq,
{
    if current == Some(status) {
        return Ok(false);
    }
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    patch_status(
        api,
        &object.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(true)
}

/// `Api::patch_status` without decoding the answer: the object the API server sends back
/// (managedFields and all) is never used, since its watch brings the same object to the
/// reflector, and decoding it was a measurable part of a rollout's CPU (bench/README.md, "The
/// fourth pass"). The answer is still read whole and an error status is still an error.
pub async fn patch_status<K, P>(
    api: &Api<K>,
    name: &str,
    params: &PatchParams,
    patch: &Patch<P>,
) -> Result<(), kube::Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
    P: Serialize + std::fmt::Debug,
{
    patch_unread(api, Some("status"), name, params, patch).await
}

/// `Api::patch` without decoding the answer, as [`patch_status`].
pub async fn patch_object<K, P>(
    api: &Api<K>,
    name: &str,
    params: &PatchParams,
    patch: &Patch<P>,
) -> Result<(), kube::Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
    P: Serialize + std::fmt::Debug,
{
    patch_unread(api, None, name, params, patch).await
}

/// A patch of the object, or of its `subresource`, whose answer is read into `IgnoredAny`.
async fn patch_unread<K, P>(
    api: &Api<K>,
    subresource: Option<&str>,
    name: &str,
    params: &PatchParams,
    patch: &Patch<P>,
) -> Result<(), kube::Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
    P: Serialize + std::fmt::Debug,
{
    let builder = kube::core::Request::new(api.resource_url());
    let (request, verb) = match subresource {
        Some(sub) => (
            builder.patch_subresource(sub, name, params, patch),
            "patch_status",
        ),
        None => (builder.patch(name, params, patch), "patch"),
    };
    let mut request = request.map_err(kube::Error::BuildRequest)?;
    request.extensions_mut().insert(verb);
    api.clone()
        .into_client()
        .request::<serde::de::IgnoredAny>(request)
        .await?;
    Ok(())
}

/// Whether `conditions` say Ready=True for `generation`.
pub fn ready_for_generation(conditions: Option<&[Condition]>, generation: Option<i64>) -> bool {
    conditions
        .and_then(|c| c.iter().find(|c| c.type_ == READY))
        .is_some_and(|c| c.status == "True" && c.observed_generation == generation)
}
