//! Management policy, decided purely: the policy in force for an object, its plan as items with
//! a hash, and whether the plan may reach the engine (Full), waits for approval (Observe), or
//! goes through because exactly this plan was approved.

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::DesiredResource;
use super::adopt::How;
use super::diff::Diff;
use super::resource::{Target, last_segment};
use crate::api::policy::POLICY_ANNOTATION;
use crate::api::{ManagementPolicy, PlanStatus};

/// How many changes `status.plan.items` lists.
pub const LISTED: usize = 10;

/// The policy for an object: its annotation's if it has one, else its cloud's. An annotation
/// that names no policy is an error that names it.
pub fn effective(
    cloud: ManagementPolicy,
    annotation: Option<&str>,
) -> Result<ManagementPolicy, String> {
    match annotation {
        None => Ok(cloud),
        Some(text) => ManagementPolicy::parse(text.trim()).ok_or_else(|| {
            format!(
                "annotation {POLICY_ANNOTATION} is '{text}': use Full, Observe or Paused (or remove it to follow the GcpCloud's spec.managementPolicy)"
            )
        }),
    }
}

/// What a plan does to one resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Op {
    Insert,
    Replace,
    Delete,
    /// A foreign resource taken over (its marker patched in, or a twin made and it deleted).
    Adopt,
}

impl Op {
    /// The verb in plan lines.
    pub fn verb(self) -> &'static str {
        match self {
            Op::Insert => "insert",
            Op::Replace => "replace",
            Op::Delete => "delete",
            Op::Adopt => "adopt",
        }
    }
}

/// One change of a plan.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Item {
    pub op: Op,
    pub target: Target,
    /// What the resource is (range, next hop, priority; ranges and ports), for people.
    pub summary: String,
    /// A digest of the body an insert or replace sends (empty for a delete): two plans with
    /// the same names but other content differ.
    pub digest: String,
}

impl Item {
    /// The change as `status.plan.approvedChanges` keeps it.
    pub fn key(&self) -> String {
        if self.digest.is_empty() {
            format!("{} {}", self.op.verb(), self.target)
        } else {
            format!("{} {} {}", self.op.verb(), self.target, self.digest)
        }
    }

    /// The change as `status.plan.items` and the plan command show it.
    pub fn line(&self) -> String {
        format!("{} {}: {}", self.op.verb(), self.target, self.summary)
    }
}

/// An object's plan: its changes, sorted, and their hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub items: Vec<Item>,
    pub hash: String,
}

impl Plan {
    /// The plan of `diff`; deletes are described from what GCP holds (`owned`). The hash
    /// chains on the last approved plan applied (`applied`), so a plan that comes back after it
    /// was applied (the same drift again) needs an approval of its own.
    pub fn new(diff: &Diff, owned: &[(Target, Value)], applied: Option<&str>) -> Self {
        let described = |op: Op, resource: &DesiredResource| Item {
            op,
            target: resource.target.clone(),
            summary: summary(&resource.target, &resource.body),
            digest: digest(&resource.body),
        };
        let twins: Vec<&Target> = diff
            .adoptions
            .iter()
            .filter_map(|a| match &a.how {
                How::Twin(twin) => Some(twin),
                How::Patch(_) => None,
            })
            .collect();
        let adoptions = diff.adoptions.iter().map(|adoption| {
            let (how, sent) = match &adoption.how {
                How::Patch(fields) => ("its description gets the marker".to_string(), fields),
                How::Twin(twin) => (
                    format!("twin {twin} first, then it is deleted"),
                    diff.inserts
                        .iter()
                        .find(|i| &i.target == twin)
                        .map_or(&Value::Null, |i| &i.body),
                ),
            };
            Item {
                op: Op::Adopt,
                target: adoption.foreign.clone(),
                summary: format!("{} ({how})", summary(&adoption.foreign, &adoption.body)),
                digest: match &adoption.how {
                    // A twin's body is the same whether it is still to make or made.
                    How::Twin(twin) => digest(&serde_json::json!({"twin": twin.to_string()})),
                    How::Patch(_) => digest(sent),
                },
            }
        });
        let mut items: Vec<Item> = diff
            .inserts
            .iter()
            .filter(|r| !twins.contains(&&r.target))
            .map(|r| described(Op::Insert, r))
            .chain(diff.replaces.iter().map(|r| described(Op::Replace, r)))
            .chain(diff.deletes.iter().map(|target| {
                Item {
                    op: Op::Delete,
                    target: target.clone(),
                    summary: owned
                        .iter()
                        .find(|(t, _)| t == target)
                        .map(|(t, body)| summary(t, body))
                        .unwrap_or_default(),
                    digest: String::new(),
                }
            }))
            .chain(adoptions)
            .collect();
        items.sort();
        let mut hasher = Sha256::new();
        hasher.update(applied.unwrap_or_default());
        for item in &items {
            hasher.update(b"\n");
            hasher.update(item.key());
        }
        let hash = hex(&hasher.finalize()[..8]);
        Self { items, hash }
    }

    /// Whether the plan changes nothing.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    fn count(&self, op: Op) -> u32 {
        u32::try_from(self.items.iter().filter(|i| i.op == op).count()).unwrap_or(u32::MAX)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn digest(body: &Value) -> String {
    // serde_json's maps are ordered: the same body always serialises the same.
    let text = serde_json::to_string(body).unwrap_or_default();
    hex(&Sha256::digest(text.as_bytes())[..4])
}

/// One line about a resource: a route's range, next hop and priority; a firewall rule's
/// ranges and ports; an address.
pub fn summary(target: &Target, body: &Value) -> String {
    use super::resource::Collection;
    let text = |key: &str| body[key].as_str().unwrap_or_default();
    let list = |key: &str| -> String {
        let all: Vec<&str> = body[key]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        match all.len() {
            0 => "-".into(),
            1..=3 => all.join(","),
            n => format!("{},… ({n})", all[..3].join(",")),
        }
    };
    match target.collection {
        Collection::Routes => {
            let hop = [
                "nextHopInstance",
                "nextHopIp",
                "nextHopIlb",
                "nextHopGateway",
            ]
            .iter()
            .find_map(|key| body[*key].as_str().map(|v| last_segment(v).to_string()))
            .unwrap_or_else(|| "-".into());
            format!(
                "{} via {hop} priority {}",
                text("destRange"),
                body["priority"].as_u64().unwrap_or(1000)
            )
        }
        Collection::Firewalls => {
            let allowed: Vec<String> = body["allowed"]
                .as_array()
                .map(|rules| {
                    rules
                        .iter()
                        .map(|rule| {
                            let protocol = rule["IPProtocol"].as_str().unwrap_or("all");
                            match rule["ports"].as_array() {
                                Some(ports) if !ports.is_empty() => format!(
                                    "{protocol}:{}",
                                    ports
                                        .iter()
                                        .filter_map(Value::as_str)
                                        .collect::<Vec<_>>()
                                        .join(",")
                                ),
                                _ => protocol.to_string(),
                            }
                        })
                        .collect()
                })
                .unwrap_or_default();
            format!(
                "allow {} from {} to {}",
                allowed.join(" "),
                list("sourceRanges"),
                list("destinationRanges")
            )
        }
        _ => {
            let address = text("address");
            let kind = text("addressType");
            match (address.is_empty(), kind.is_empty()) {
                (true, true) => "-".into(),
                (false, true) => address.into(),
                (true, false) => kind.into(),
                (false, false) => format!("{address} ({kind})"),
            }
        }
    }
}

/// What may happen to a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Hand the changes to the engine; `status.plan` becomes `plan` (None under Full).
    Write { plan: Option<PlanStatus> },
    /// Write nothing: the object waits (reason, message), and unsent changes of its are
    /// dropped from the engine's queue.
    Hold {
        reason: &'static str,
        message: String,
        plan: PlanStatus,
    },
}

/// Whether `plan` may be written under `policy`, given the object's last `status.plan` and its
/// approval annotation. `what` names the object for the message (`virtualservice/web -n shop`).
///
/// Under Observe an approval of the current hash lets the plan through and is recorded with its
/// changes; what is left of an approved plan goes on without another approval (inserts finish
/// before deletes start); anything else waits. Once an approved plan is applied in full it is
/// `applied`, and the next plan's hash chains on it, so an approval is used once.
pub fn decide(
    policy: ManagementPolicy,
    plan: &Plan,
    previous: Option<&PlanStatus>,
    approval: Option<&str>,
    what: &str,
) -> Decision {
    let applied = previous.and_then(|p| p.applied.clone());
    let approved = previous.and_then(|p| p.approved.clone());
    let approved_changes = previous
        .map(|p| p.approved_changes.clone())
        .unwrap_or_default();
    let status =
        |approved: Option<String>, changes: Vec<String>, applied: Option<String>| PlanStatus {
            hash: plan.hash.clone(),
            inserts: plan.count(Op::Insert),
            replaces: plan.count(Op::Replace),
            deletes: plan.count(Op::Delete),
            adoptions: plan.count(Op::Adopt),
            items: plan.items.iter().take(LISTED).map(Item::line).collect(),
            approved,
            approved_changes: changes,
            applied,
        };
    match policy {
        ManagementPolicy::Full => Decision::Write { plan: None },
        ManagementPolicy::Paused => Decision::Hold {
            reason: "Paused",
            message: format!(
                "management policy Paused: {what} is neither planned nor written; its GCP resources stay as they are"
            ),
            plan: status(approved, approved_changes, applied),
        },
        ManagementPolicy::Observe if plan.is_empty() => Decision::Write {
            // An approved plan with nothing left is applied: the approval is used.
            plan: Some(status(None, Vec::new(), approved.or(applied))),
        },
        ManagementPolicy::Observe => {
            let keys: Vec<String> = plan.items.iter().map(Item::key).collect();
            if approved.is_some() && keys.iter().all(|k| approved_changes.contains(k)) {
                return Decision::Write {
                    plan: Some(status(approved, approved_changes, applied)),
                };
            }
            if approval.map(str::trim) == Some(plan.hash.as_str()) {
                return Decision::Write {
                    plan: Some(status(Some(plan.hash.clone()), keys, applied)),
                };
            }
            let changes = format!(
                "{} change(s) planned ({} insert, {} replace, {} delete, {} adopt)",
                plan.items.len(),
                plan.count(Op::Insert),
                plan.count(Op::Replace),
                plan.count(Op::Delete),
                plan.count(Op::Adopt)
            );
            let approve = format!(
                "kubectl annotate {what} --overwrite {}={}",
                crate::api::policy::APPROVED_ANNOTATION,
                plan.hash
            );
            match approval.map(str::trim).filter(|a| !a.is_empty()) {
                Some(other) => Decision::Hold {
                    reason: "PlanChanged",
                    message: format!(
                        "management policy Observe: the approved plan {other} is not the current plan {}: nothing was written; {changes}; review status.plan and approve it: {approve}",
                        plan.hash
                    ),
                    plan: status(None, Vec::new(), applied),
                },
                None => Decision::Hold {
                    reason: "AwaitingApproval",
                    message: format!(
                        "management policy Observe: {changes}, plan {}; review status.plan (or adc-operator plan) and approve it: {approve}",
                        plan.hash
                    ),
                    plan: status(None, Vec::new(), applied),
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn route(name: &str, dest: &str, hop: &str, priority: u64) -> DesiredResource {
        DesiredResource {
            target: Target::route(name),
            body: json!({"name": name, "destRange": dest, "priority": priority,
                         "nextHopInstance": format!("zones/a/instances/{hop}"),
                         "network": "global/networks/vpc"}),
        }
    }

    fn inserting(resources: Vec<DesiredResource>) -> Diff {
        Diff {
            inserts: resources,
            ..Diff::default()
        }
    }

    const WHAT: &str = "virtualservice/web -n shop";

    #[test]
    fn an_annotation_overrides_the_cloud_and_a_wrong_one_names_itself() {
        use ManagementPolicy::*;
        assert_eq!(effective(Observe, None), Ok(Observe));
        assert_eq!(effective(Full, Some("Paused")), Ok(Paused));
        assert_eq!(effective(Paused, Some("Full")), Ok(Full));
        let err = effective(Full, Some("observe")).unwrap_err();
        assert!(err.contains("adc.dev/management-policy") && err.contains("'observe'"));
    }

    #[test]
    fn a_plan_lists_its_changes_and_its_hash_follows_their_content() {
        let diff = Diff {
            inserts: vec![route("r-b", "10.1.0.5/32", "se-2", 1000)],
            deletes: vec![Target::route("r-a")],
            replaces: vec![],
            adoptions: vec![],
        };
        let owned = vec![(
            Target::route("r-a"),
            route("r-a", "10.1.0.5/32", "se-1", 1000).body,
        )];
        let plan = Plan::new(&diff, &owned, None);
        let lines: Vec<String> = plan.items.iter().map(Item::line).collect();
        assert_eq!(
            lines,
            [
                "insert global/routes/r-b: 10.1.0.5/32 via se-2 priority 1000",
                "delete global/routes/r-a: 10.1.0.5/32 via se-1 priority 1000",
            ]
        );
        assert_eq!(plan.hash.len(), 16);
        assert_eq!(plan, Plan::new(&diff, &owned, None), "deterministic");
        let other = Diff {
            inserts: vec![route("r-b", "10.1.0.5/32", "se-2", 1001)],
            ..diff.clone()
        };
        assert_ne!(plan.hash, Plan::new(&other, &owned, None).hash);
        assert_ne!(plan.hash, Plan::new(&diff, &owned, Some(&plan.hash)).hash);
    }

    #[test]
    fn full_writes_and_paused_holds() {
        let plan = Plan::new(
            &inserting(vec![route("r", "10.1.0.5/32", "s", 1)]),
            &[],
            None,
        );
        assert_eq!(
            decide(ManagementPolicy::Full, &plan, None, None, WHAT),
            Decision::Write { plan: None }
        );
        let Decision::Hold {
            reason, message, ..
        } = decide(
            ManagementPolicy::Paused,
            &plan,
            None,
            Some(&plan.hash),
            WHAT,
        )
        else {
            panic!("paused writes")
        };
        assert_eq!(reason, "Paused");
        assert!(message.contains(WHAT));
    }

    #[test]
    fn observe_waits_then_an_approval_lets_exactly_that_plan_through_once() {
        let diff = Diff {
            inserts: vec![route("r-new", "10.1.0.5/32", "se-2", 1000)],
            deletes: vec![Target::route("r-old")],
            replaces: vec![],
            adoptions: vec![],
        };
        let plan = Plan::new(&diff, &[], None);
        // Waiting: the hash and the command to approve it.
        let Decision::Hold {
            reason,
            message,
            plan: waiting,
        } = decide(ManagementPolicy::Observe, &plan, None, None, WHAT)
        else {
            panic!("observe wrote")
        };
        assert_eq!(reason, "AwaitingApproval");
        assert!(message.contains(&format!("adc.dev/approved-plan={}", plan.hash)));
        assert_eq!((waiting.inserts, waiting.deletes), (1, 1));
        assert_eq!(waiting.items.len(), 2);
        // Approved: written, and the approval is recorded with its changes.
        let Decision::Write {
            plan: Some(approved),
        } = decide(
            ManagementPolicy::Observe,
            &plan,
            Some(&waiting),
            Some(&plan.hash),
            WHAT,
        )
        else {
            panic!("approval refused")
        };
        assert_eq!(approved.approved.as_deref(), Some(plan.hash.as_str()));
        // The insert is done: the delete left of the approved plan goes on by itself, even with
        // the annotation gone.
        let rest = Plan::new(
            &Diff {
                deletes: vec![Target::route("r-old")],
                ..Diff::default()
            },
            &[],
            None,
        );
        let Decision::Write { plan: Some(going) } = decide(
            ManagementPolicy::Observe,
            &rest,
            Some(&approved),
            None,
            WHAT,
        ) else {
            panic!("the rest of an approved plan waits")
        };
        // Nothing left: applied, and the approval is used.
        let done = Plan::new(&Diff::default(), &[], going.applied.as_deref());
        let Decision::Write { plan: Some(done) } =
            decide(ManagementPolicy::Observe, &done, Some(&going), None, WHAT)
        else {
            panic!("in sync is not a write")
        };
        assert_eq!(done.applied.as_deref(), Some(plan.hash.as_str()));
        assert_eq!(done.approved, None);
        // The same drift again: a new hash, and the old approval does not let it through.
        let again = Plan::new(&diff, &[], done.applied.as_deref());
        assert_ne!(again.hash, plan.hash);
        let Decision::Hold { reason, .. } = decide(
            ManagementPolicy::Observe,
            &again,
            Some(&done),
            Some(&plan.hash),
            WHAT,
        ) else {
            panic!("an approval was used twice")
        };
        assert_eq!(reason, "PlanChanged");
    }

    #[test]
    fn a_plan_that_changed_since_its_approval_writes_nothing() {
        let first = Plan::new(
            &inserting(vec![route("r", "10.1.0.5/32", "a", 1)]),
            &[],
            None,
        );
        let second = Plan::new(
            &inserting(vec![route("r", "10.1.0.5/32", "b", 1)]),
            &[],
            None,
        );
        let Decision::Hold {
            reason, message, ..
        } = decide(
            ManagementPolicy::Observe,
            &second,
            None,
            Some(&first.hash),
            WHAT,
        )
        else {
            panic!("a stale approval wrote")
        };
        assert_eq!(reason, "PlanChanged");
        assert!(message.contains(&first.hash) && message.contains(&second.hash));
        // And a change outside an approved plan in progress stops it too.
        let Decision::Write {
            plan: Some(approved),
        } = decide(
            ManagementPolicy::Observe,
            &first,
            None,
            Some(&first.hash),
            WHAT,
        )
        else {
            panic!()
        };
        assert!(matches!(
            decide(
                ManagementPolicy::Observe,
                &second,
                Some(&approved),
                None,
                WHAT
            ),
            Decision::Hold {
                reason: "AwaitingApproval",
                ..
            }
        ));
    }
}
