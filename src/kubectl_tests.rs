//! `kubectl adc status`: the summaries it prints, from objects and clouds as the API holds them.

use super::*;
use crate::api::conditions::set_condition;
use k8s_openapi::api::coordination::v1::LeaseSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

const T0: &str = "2026-12-06T10:00:00Z";
const T1: &str = "2026-12-06T10:05:00Z";

fn cloud(name: &str) -> GcpCloud {
    let mut cloud: GcpCloud = serde_json::from_value(serde_json::json!({
        "apiVersion": "adc.dev/v1alpha1",
        "kind": "GcpCloud",
        "metadata": {"name": name},
        "spec": {
            "project": "acme-prod",
            "network": "prod-vpc",
            "region": "us-central1",
            "credentials": {"workloadIdentity": {}},
        },
    }))
    .unwrap();
    let mut status = crate::api::GcpCloudStatus::default();
    set_condition(
        &mut status.conditions,
        READY,
        true,
        "Connected",
        "reachable",
        Some(1),
        T0,
    );
    status.quota = vec![QuotaStatus {
        metric: "ROUTES".into(),
        scope: "global".into(),
        usage: 60.0,
        limit: 250.0,
        needed: None,
        projected: None,
    }];
    cloud.status = Some(status);
    cloud
}

fn conditions(ready: bool, reason: &str, stalled: bool, at: &str) -> Vec<Condition> {
    let mut c = Vec::new();
    set_condition(&mut c, READY, ready, reason, "the message", Some(1), at);
    if stalled {
        set_condition(&mut c, STALLED, true, reason, "what to change", Some(1), at);
    }
    c
}

fn view<'a>(
    kind: &'static str,
    name: &str,
    cloud: &'a str,
    conditions: &'a [Condition],
) -> ObjectView<'a> {
    ObjectView {
        kind,
        namespace: "tenant".into(),
        name: name.into(),
        cloud,
        conditions,
        generation: Some(1),
    }
}

#[test]
fn the_summary_counts_by_cloud_state_and_reason_and_lists_the_newest_errors() {
    let ready = conditions(true, "Synced", false, T0);
    let quota = conditions(false, "QuotaExceeded", true, T0);
    let gcp = conditions(false, "GcpError", false, T1);
    let pending: Vec<Condition> = Vec::new();
    let lease = Lease {
        metadata: kube::api::ObjectMeta {
            name: Some("adc-operator".into()),
            namespace: Some("adc-system".into()),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some("adc-operator-0".into()),
            renew_time: Some(MicroTime(T1.parse().unwrap())),
            lease_transitions: Some(2),
            ..Default::default()
        }),
    };
    let status = summarize(
        &[cloud("prod")],
        [
            view("VirtualService", "a", "prod", &ready),
            view("VirtualService", "b", "prod", &ready),
            view("VirtualService", "c", "prod", &quota),
            view("VpcRoute", "d", "prod", &gcp),
            view("VpcRoute", "e", "prod", &pending),
            view("VpcRoute", "f", "nowhere", &pending),
        ],
        &[lease],
        5,
    );
    assert_eq!(status.clouds.len(), 2);
    let nowhere = &status.clouds[0];
    assert_eq!((nowhere.name.as_str(), nowhere.exists), ("nowhere", false));
    let prod = &status.clouds[1];
    let counts: Vec<(&str, &str, &str, u32)> = prod
        .objects
        .iter()
        .map(|c| {
            (
                c.kind.as_str(),
                c.state.as_str(),
                c.reason.as_str(),
                c.count,
            )
        })
        .collect();
    assert_eq!(
        counts,
        vec![
            ("VirtualService", "ready", "Synced", 2),
            ("VirtualService", "stalled", "QuotaExceeded", 1),
            ("VpcRoute", "reconciling", "GcpError", 1),
            ("VpcRoute", "reconciling", "Pending", 1),
        ]
    );
    // Newest first; a pending object is no error.
    let errors: Vec<(&str, &str)> = prod
        .last_errors
        .iter()
        .map(|e| (e.name.as_str(), e.reason.as_str()))
        .collect();
    assert_eq!(errors, vec![("d", "GcpError"), ("c", "QuotaExceeded")]);
    assert_eq!(prod.last_errors[1].message, "what to change");
    assert_eq!(status.leaders[0].holder, "adc-operator-0");

    let now: Timestamp = "2026-12-06T10:05:30Z".parse().unwrap();
    let text = render(&status, now);
    assert!(
        text.contains("GcpCloud prod: project acme-prod, network prod-vpc"),
        "{text}"
    );
    assert!(text.contains("GcpCloud nowhere: does not exist"), "{text}");
    assert!(text.contains("Quota:     ROUTES 60/250 (24%)"), "{text}");
    assert!(
        text.contains("    VirtualService  stalled      QuotaExceeded  1"),
        "{text}"
    );
    assert!(
        text.contains("30s ago  VpcRoute tenant/d  reconciling GcpError: the message"),
        "{text}"
    );
    assert!(
        text.contains("5m ago  VirtualService tenant/c  stalled QuotaExceeded: what to change"),
        "{text}"
    );
    assert!(
        text.contains(
            "Leader: adc-operator-0 (Lease adc-system/adc-operator, renewed 30s ago, 2 transitions)"
        ),
        "{text}"
    );
}

#[test]
fn errors_are_capped() {
    let stalled = conditions(false, "GuardRail", true, T0);
    let names: Vec<String> = (0..20).map(|i| format!("vs-{i:02}")).collect();
    let status = summarize(
        &[cloud("prod")],
        names
            .iter()
            .map(|n| view("VirtualService", n, "prod", &stalled)),
        &[],
        3,
    );
    assert_eq!(status.clouds[0].last_errors.len(), 3);
    assert!(render(&status, Timestamp::now()).contains("Leader: no leader Lease found"));
}
