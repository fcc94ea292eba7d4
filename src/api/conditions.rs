//! Status conditions shared by every kind, with kstatus semantics.
//!
//! The condition type is Kubernetes' own `meta/v1` [`Condition`] (so `kubectl wait
//! --for=condition=Ready` and kstatus-aware tools understand it); this module adds the condition
//! types the operator uses and helpers that keep `lastTransitionTime` honest.

pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

/// `Ready`: the object's resources exist in GCP as its spec asks (kstatus "Current" when true).
pub const READY: &str = "Ready";
/// `Reconciling`: the operator is working towards the spec (kstatus "InProgress").
pub const RECONCILING: &str = "Reconciling";
/// `Stalled`: the operator cannot make progress without a change to the spec or the cloud
/// (kstatus "Failed"); the message says what to change.
pub const STALLED: &str = "Stalled";

/// The condition status string for a boolean: `"True"` or `"False"`.
pub fn status_string(status: bool) -> &'static str {
    if status { "True" } else { "False" }
}

/// Sets the condition `type_` in `conditions`, adding it when missing.
///
/// `lastTransitionTime` becomes `now` (RFC 3339, e.g. `2025-01-02T03:04:05Z`) only when the
/// condition is new or its status changes; reason, message and observedGeneration are always
/// updated. A `now` that does not parse as RFC 3339 is replaced by the current system time.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: &str,
) {
    let status = status_string(status);
    let now = || {
        Time(
            now.parse::<Timestamp>()
                .unwrap_or_else(|_| Timestamp::now()),
        )
    };
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(existing) => {
            if existing.status != status {
                existing.status = status.to_string();
                existing.last_transition_time = now();
            }
            existing.reason = reason.to_string();
            existing.message = message.to_string();
            existing.observed_generation = generation;
        }
        None => conditions.push(Condition {
            type_: type_.to_string(),
            status: status.to_string(),
            reason: reason.to_string(),
            message: message.to_string(),
            observed_generation: generation,
            last_transition_time: now(),
        }),
    }
}

/// The condition `type_`, when present.
pub fn find_condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether the condition `type_` is present with status `"True"`.
pub fn condition_true(conditions: &[Condition], type_: &str) -> bool {
    find_condition(conditions, type_).is_some_and(|c| c.status == "True")
}

/// Where an object stands, read off its conditions the way kstatus reads them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ObjectState {
    /// Ready=True for the object's current generation.
    Ready,
    /// The operator is working on it (or has not looked at this generation yet).
    Reconciling,
    /// Stalled=True: it waits for a change of its spec or of its cloud.
    Stalled,
    /// Held on purpose by its management policy (Ready=False for its generation with reason
    /// `AwaitingApproval`, `PlanChanged` or `Paused`): it waits for a person, not for the
    /// operator.
    Held,
}

/// The Ready reasons of an object its management policy holds.
pub const HELD_REASONS: [&str; 3] = ["AwaitingApproval", "PlanChanged", "Paused"];

impl ObjectState {
    /// The lower-case label used in metrics and summaries.
    pub fn label(self) -> &'static str {
        match self {
            ObjectState::Ready => "ready",
            ObjectState::Reconciling => "reconciling",
            ObjectState::Stalled => "stalled",
            ObjectState::Held => "held",
        }
    }
}

/// Where an object with `conditions` at `generation` stands, and the reason its deciding
/// condition gives (`Pending` when the operator has written no condition yet).
///
/// Stalled=True wins over everything; Ready=True counts only for the current generation (an
/// older Ready is a change not yet reconciled), and so does a hold by the management policy;
/// anything else is reconciling, with the reason of
/// the Reconciling condition, else the Ready one's.
pub fn object_state(conditions: &[Condition], generation: Option<i64>) -> (ObjectState, &str) {
    if let Some(stalled) = find_condition(conditions, STALLED).filter(|c| c.status == "True") {
        return (ObjectState::Stalled, stalled.reason.as_str());
    }
    let ready = find_condition(conditions, READY);
    if let Some(ready) = ready.filter(|c| c.status == "True" && c.observed_generation == generation)
    {
        return (ObjectState::Ready, ready.reason.as_str());
    }
    if let Some(held) = ready.filter(|c| {
        c.status == "False"
            && c.observed_generation == generation
            && HELD_REASONS.contains(&c.reason.as_str())
    }) {
        return (ObjectState::Held, held.reason.as_str());
    }
    let reason = find_condition(conditions, RECONCILING)
        .filter(|c| c.status == "True")
        .or(ready)
        .map_or("Pending", |c| c.reason.as_str());
    (ObjectState::Reconciling, reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_object_held_by_its_policy_is_held_not_reconciling() {
        let mut conditions = Vec::new();
        for (type_, status) in [(READY, false), (RECONCILING, false), (STALLED, false)] {
            set_condition(
                &mut conditions,
                type_,
                status,
                "AwaitingApproval",
                "plan 1234",
                Some(2),
                T0,
            );
        }
        assert_eq!(
            object_state(&conditions, Some(2)),
            (ObjectState::Held, "AwaitingApproval")
        );
        // About an older generation it says nothing yet.
        assert_eq!(
            object_state(&conditions, Some(3)).0,
            ObjectState::Reconciling
        );
        assert_eq!(ObjectState::Held.label(), "held");
    }

    #[test]
    fn object_state_follows_kstatus() {
        assert_eq!(
            object_state(&[], Some(1)),
            (ObjectState::Reconciling, "Pending")
        );
        let mut conditions = Vec::new();
        set_condition(&mut conditions, READY, true, "Synced", "ok", Some(1), T0);
        set_condition(
            &mut conditions,
            RECONCILING,
            false,
            "Synced",
            "",
            Some(1),
            T0,
        );
        set_condition(&mut conditions, STALLED, false, "Synced", "", Some(1), T0);
        assert_eq!(
            object_state(&conditions, Some(1)),
            (ObjectState::Ready, "Synced")
        );
        // A newer generation is not Ready until the operator has seen it.
        assert_eq!(
            object_state(&conditions, Some(2)),
            (ObjectState::Reconciling, "Synced")
        );
        set_condition(&mut conditions, READY, false, "GcpError", "x", Some(2), T1);
        set_condition(
            &mut conditions,
            RECONCILING,
            true,
            "Applying",
            "",
            Some(2),
            T1,
        );
        assert_eq!(
            object_state(&conditions, Some(2)),
            (ObjectState::Reconciling, "Applying")
        );
        set_condition(
            &mut conditions,
            RECONCILING,
            false,
            "Applying",
            "",
            Some(2),
            T1,
        );
        assert_eq!(
            object_state(&conditions, Some(2)),
            (ObjectState::Reconciling, "GcpError")
        );
        set_condition(
            &mut conditions,
            STALLED,
            true,
            "QuotaExceeded",
            "q",
            Some(2),
            T1,
        );
        assert_eq!(
            object_state(&conditions, Some(2)),
            (ObjectState::Stalled, "QuotaExceeded")
        );
    }

    const T0: &str = "2025-01-02T03:04:05Z";
    const T1: &str = "2025-01-02T03:09:05Z";

    fn time(text: &str) -> Time {
        Time(text.parse().unwrap())
    }

    #[test]
    fn new_condition_gets_now() {
        let mut conditions = Vec::new();
        set_condition(
            &mut conditions,
            READY,
            false,
            "Pending",
            "waiting",
            Some(1),
            T0,
        );
        assert_eq!(conditions.len(), 1);
        let ready = &conditions[0];
        assert_eq!(ready.type_, "Ready");
        assert_eq!(ready.status, "False");
        assert_eq!(ready.reason, "Pending");
        assert_eq!(ready.message, "waiting");
        assert_eq!(ready.observed_generation, Some(1));
        assert_eq!(ready.last_transition_time, time(T0));
        assert!(!condition_true(&conditions, READY));
    }

    #[test]
    fn unchanged_status_keeps_transition_time() {
        let mut conditions = Vec::new();
        set_condition(&mut conditions, READY, true, "Synced", "ok", Some(1), T0);
        set_condition(
            &mut conditions,
            READY,
            true,
            "StillSynced",
            "still ok",
            Some(2),
            T1,
        );
        assert_eq!(conditions.len(), 1);
        let ready = &conditions[0];
        assert_eq!(ready.last_transition_time, time(T0));
        assert_eq!(ready.reason, "StillSynced");
        assert_eq!(ready.message, "still ok");
        assert_eq!(ready.observed_generation, Some(2));
        assert!(condition_true(&conditions, READY));
    }

    #[test]
    fn changed_status_moves_transition_time() {
        let mut conditions = Vec::new();
        set_condition(&mut conditions, READY, true, "Synced", "ok", Some(1), T0);
        set_condition(&mut conditions, STALLED, false, "Fine", "", Some(1), T0);
        set_condition(
            &mut conditions,
            READY,
            false,
            "Gone",
            "route missing",
            Some(1),
            T1,
        );
        assert_eq!(conditions.len(), 2);
        let ready = find_condition(&conditions, READY).unwrap();
        assert_eq!(ready.status, "False");
        assert_eq!(ready.last_transition_time, time(T1));
        let stalled = find_condition(&conditions, STALLED).unwrap();
        assert_eq!(stalled.last_transition_time, time(T0));
        assert!(!condition_true(&conditions, READY));
        assert!(!condition_true(&conditions, RECONCILING));
    }

    #[test]
    fn unparsable_now_falls_back_to_the_clock() {
        let mut conditions = Vec::new();
        let before = Timestamp::now();
        set_condition(
            &mut conditions,
            READY,
            true,
            "Synced",
            "ok",
            None,
            "yesterday",
        );
        assert!(conditions[0].last_transition_time.0 >= before);
    }
}
