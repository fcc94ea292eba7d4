//! ILB mode's health reads: `regionBackendServices.getHealth`, one call per (backend service,
//! group), sent together through the read path (batched like every read) and charged to the
//! read budget on the urgent lane: they are how a stopped or failing engine shows in status.

use reqwest::Method;
use serde::Deserialize;

use super::budget::{Lane, RateGroup};
use super::client::Call;
use super::error::GcpError;
use super::reader::Reader;
use crate::api::HealthState;
use crate::plan::resource::Target;

/// What a backend service reports of one instance of one group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceHealth {
    /// The instance's link.
    pub instance: String,
    pub state: HealthState,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct GroupHealth {
    #[serde(default)]
    health_status: Vec<HealthStatus>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct HealthStatus {
    #[serde(default)]
    instance: String,
    #[serde(default)]
    health_state: String,
}

/// Reads the body of a `getHealth` answer: one entry per instance, HEALTHY when any of its
/// entries (one per forwarding rule of the service) is; an answer without `healthStatus` (no
/// forwarding rule uses the service yet) reports nothing.
pub fn parse_group_health(body: &[u8]) -> Result<Vec<InstanceHealth>, serde_json::Error> {
    let parsed: GroupHealth = serde_json::from_slice(body)?;
    let mut by_instance: std::collections::BTreeMap<String, HealthState> = Default::default();
    for status in parsed.health_status {
        let state = match status.health_state.as_str() {
            "HEALTHY" => HealthState::Healthy,
            "UNHEALTHY" => HealthState::Unhealthy,
            _ => HealthState::Unknown,
        };
        let held = by_instance.entry(status.instance).or_insert(state);
        if state == HealthState::Healthy || *held == HealthState::Unknown {
            *held = state;
        }
    }
    Ok(by_instance
        .into_iter()
        .map(|(instance, state)| InstanceHealth { instance, state })
        .collect())
}

/// The health of every (backend service, group link) asked for, in order; a call that fails
/// after the reader's retries is that entry's error.
pub(crate) async fn backend_health(
    reader: &Reader,
    project: &str,
    asked: &[(Target, String)],
) -> Vec<Result<Vec<InstanceHealth>, GcpError>> {
    let mut results: Vec<Option<Result<Vec<InstanceHealth>, GcpError>>> =
        (0..asked.len()).map(|_| None).collect();
    let mut failures = vec![0u32; asked.len()];
    loop {
        if reader.is_stopped() {
            return results
                .into_iter()
                .map(|r| r.unwrap_or(Err(GcpError::Shutdown)))
                .collect();
        }
        let open: Vec<usize> = (0..asked.len()).filter(|i| results[*i].is_none()).collect();
        if open.is_empty() {
            break;
        }
        let granted = reader
            .budget
            .acquire(RateGroup::Read, "", open.len(), Lane::Urgent)
            .await;
        let round: Vec<usize> = open.into_iter().take(granted).collect();
        let calls: Vec<Call> = round
            .iter()
            .map(|&i| {
                let (service, group) = &asked[i];
                Call {
                    method: Method::POST,
                    path: format!("{}/getHealth", service.path(project)),
                    query: Vec::new(),
                    body: Some(serde_json::json!({ "group": group })),
                    group: RateGroup::Read,
                    method_name: "compute.regionBackendServices.getHealth",
                }
            })
            .collect();
        let answers = reader.exchange(calls).await;
        let mut pause = None;
        for (i, answer) in round.into_iter().zip(answers) {
            match answer {
                Ok(answer) => {
                    results[i] = Some(
                        parse_group_health(&answer.body)
                            .map_err(|err| GcpError::Decode(format!("getHealth: {err}"))),
                    );
                }
                Err(err) => match reader.after_failure(err, &mut failures[i]) {
                    Ok(wait) => pause = pause.max(wait),
                    Err(err) => results[i] = Some(Err(err)),
                },
            }
        }
        if let Some(pause) = pause {
            tokio::time::sleep(pause).await;
        }
    }
    results
        .into_iter()
        .map(|r| r.unwrap_or(Err(GcpError::Shutdown)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instance_is_healthy_when_any_rule_finds_it_so() {
        let body = br#"{"kind": "compute#backendServiceGroupHealth", "healthStatus": [
            {"instance": "i/se-1", "healthState": "UNHEALTHY", "forwardingRuleIp": "10.0.0.5"},
            {"instance": "i/se-1", "healthState": "HEALTHY", "forwardingRuleIp": "10.0.0.6"},
            {"instance": "i/se-2", "healthState": "UNHEALTHY"},
            {"instance": "i/se-3", "healthState": "DRAINING"}]}"#;
        assert_eq!(
            parse_group_health(body).unwrap(),
            vec![
                InstanceHealth {
                    instance: "i/se-1".into(),
                    state: HealthState::Healthy
                },
                InstanceHealth {
                    instance: "i/se-2".into(),
                    state: HealthState::Unhealthy
                },
                InstanceHealth {
                    instance: "i/se-3".into(),
                    state: HealthState::Unknown
                },
            ]
        );
        assert!(
            parse_group_health(br#"{"kind": "compute#backendServiceGroupHealth"}"#)
                .unwrap()
                .is_empty()
        );
        assert!(parse_group_health(b"not json").is_err());
    }
}
