//! Management policy: whether the operator writes to GCP for a cloud or one object, and the plan
//! an object shows while it waits for approval.

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The annotation on a VirtualService or VpcRoute that overrides its cloud's
/// `spec.managementPolicy`: `Full`, `Observe` or `Paused`.
pub const POLICY_ANNOTATION: &str = "adc.dev/management-policy";
/// The annotation on a VirtualService or VpcRoute that lets it adopt foreign resources of its
/// exact content, where its cloud's `spec.adoption.enabled` allows adoption: `"true"`.
pub const ADOPT_ANNOTATION: &str = "adc.dev/adopt";
/// The annotation that lets exactly one plan through under Observe: its `status.plan.hash`.
pub const APPROVED_ANNOTATION: &str = "adc.dev/approved-plan";

/// What the operator may do in GCP for a cloud's objects.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum ManagementPolicy {
    /// Plan and write: GCP follows the objects (make-before-break, failover at once).
    #[default]
    Full,
    /// Plan and show, never write: each object's `status.plan` holds the plan's hash and first
    /// changes, and the annotation `adc.dev/approved-plan: <hash>` lets exactly that plan
    /// through, once. Failover waits for approval too.
    Observe,
    /// Neither plan nor write: the objects' GCP resources stay as they are, and neither they
    /// nor the cloud's orphans are collected. A Paused object being deleted keeps its
    /// finalizer until it is unpaused.
    Paused,
}

impl ManagementPolicy {
    /// The policy an annotation value names, exactly as the enum spells it.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "Full" => Some(Self::Full),
            "Observe" => Some(Self::Observe),
            "Paused" => Some(Self::Paused),
            _ => None,
        }
    }
}

impl std::fmt::Display for ManagementPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Full => "Full",
            Self::Observe => "Observe",
            Self::Paused => "Paused",
        })
    }
}

/// The Compute changes an object's plan makes, while its policy is Observe.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PlanStatus {
    /// The plan's hash: annotate the object with `adc.dev/approved-plan: <hash>` to let exactly
    /// this plan through, once. It changes when anything in the plan does (drift, an engine's
    /// state, the spec).
    pub hash: String,
    /// Resources the plan inserts.
    pub inserts: u32,
    /// Resources the plan deletes and inserts again under the same name (drifted content).
    pub replaces: u32,
    /// Resources the plan deletes.
    pub deletes: u32,
    /// Foreign resources the plan takes over (`GcpCloud.spec.adoption`): a firewall rule's
    /// marker patched in, or a route's twin made before the original is deleted.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub adoptions: u32,
    /// The plan's first changes, one line each (`insert global/routes/NAME: …`); all of them
    /// with `adc-operator plan`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<String>,
    /// The approved plan being applied: its hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved: Option<String>,
    /// The changes of the approved plan, by key: what is left of it may go on without another
    /// approval (inserts finish before deletes start, so a plan is applied over several passes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approved_changes: Vec<String>,
    /// The last approved plan that was applied in full: an approval is used once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied: Option<String>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}
