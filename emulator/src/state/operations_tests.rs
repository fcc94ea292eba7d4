//! The global operations list newest first (`State::list_operations` with
//! `orderBy=creationTimestamp desc`): order, paging and filters, against the same operations
//! listed in name order and sorted here.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

use super::{ListParams, MutationContext, State};
use crate::filter::Filter;
use crate::kinds::{CollectionKey, Kind};

const WORLD: &str = "projects:
  - id: p
    networks:
      - name: default
        subnetworks:
          - {name: default, region: us-central1, ipCidrRange: 10.128.0.0/20}
";

/// A state with `n` global addresses inserted 10 ms apart, every third in the same millisecond
/// as the one before it (equal stamps are ordered by name).
fn state_with(n: u64) -> (State, Instant) {
    let world = crate::world::World::parse(WORLD, "test").unwrap();
    let mut state = State::new(&world, 0, None, crate::model::BusyBehavior::Queue);
    let start = Instant::now();
    let mut at = start;
    for i in 0..n {
        if i % 3 != 2 {
            at += Duration::from_millis(10);
        }
        let ctx = MutationContext {
            now: at,
            user: "u@example.com".into(),
            request_id: None,
            pending: Duration::ZERO,
            run_for: Duration::ZERO,
            fail: false,
        };
        let key = CollectionKey {
            kind: Kind::GlobalAddress,
            location: "global".into(),
        };
        state
            .insert("p", key, &json!({"name": format!("addr-{i}")}), &ctx)
            .unwrap();
    }
    (state, at + Duration::from_secs(1))
}

fn pages(state: &mut State, now: Instant, params: &mut ListParams) -> Vec<Vec<Value>> {
    let mut out = Vec::new();
    loop {
        let text = state.list_operations("p", "global", params, now).unwrap();
        let page: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(page["kind"], "compute#operationList");
        out.push(page["items"].as_array().cloned().unwrap_or_default());
        match page.get("nextPageToken").and_then(Value::as_str) {
            Some(token) => params.page_token = Some(token.to_string()),
            None => return out,
        }
    }
}

/// Every operation, listed in name order and sorted newest first (stamp, then name).
fn expected(state: &mut State, now: Instant, filter: Option<&str>) -> Vec<String> {
    let mut params = ListParams {
        max_results: 500,
        filter: filter.map(|f| Filter::parse(f).unwrap()),
        ..Default::default()
    };
    let mut all: Vec<Value> = pages(state, now, &mut params).concat();
    let stamp = |v: &Value| v["insertTime"].as_str().unwrap().to_string();
    all.sort_by(|a, b| {
        stamp(b)
            .cmp(&stamp(a))
            .then(a["name"].as_str().cmp(&b["name"].as_str()))
    });
    all.iter()
        .map(|v| v["name"].as_str().unwrap().to_string())
        .collect()
}

fn names(pages: &[Vec<Value>]) -> Vec<String> {
    pages
        .iter()
        .flatten()
        .map(|v| v["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn newest_first_pages_through_every_operation_once_in_stamp_order() {
    let (mut state, now) = state_with(23);
    let want = expected(&mut state, now, None);
    assert_eq!(want.len(), 23);
    let mut params = ListParams {
        max_results: 5,
        order_by_creation_desc: true,
        ..Default::default()
    };
    let got = pages(&mut state, now, &mut params);
    assert_eq!(
        got.iter().map(Vec::len).collect::<Vec<_>>(),
        [5, 5, 5, 5, 3]
    );
    assert_eq!(names(&got), want);
    // Newest first: the last inserted address's operation leads.
    assert!(
        got[0][0]["targetLink"]
            .as_str()
            .unwrap()
            .ends_with("/addr-22")
    );
}

#[test]
fn newest_first_with_a_filter_pages_through_the_matches_only() {
    let (mut state, now) = state_with(12);
    let filter = "targetLink eq .*addr-1.*";
    let want = expected(&mut state, now, Some(filter));
    // addr-1, addr-10, addr-11.
    assert_eq!(want.len(), 3);
    let mut params = ListParams {
        max_results: 2,
        order_by_creation_desc: true,
        filter: Some(Filter::parse(filter).unwrap()),
        ..Default::default()
    };
    let got = pages(&mut state, now, &mut params);
    assert_eq!(got.iter().map(Vec::len).collect::<Vec<_>>(), [2, 1]);
    assert_eq!(names(&got), want);
}

#[test]
fn newest_first_rejects_a_token_it_did_not_issue() {
    let (mut state, now) = state_with(2);
    let params = ListParams {
        max_results: 5,
        order_by_creation_desc: true,
        page_token: Some("not-a-token".into()),
        ..Default::default()
    };
    let err = state
        .list_operations("p", "global", &params, now)
        .unwrap_err();
    assert_eq!(err.code, 400);
}

#[test]
fn a_filter_on_insert_time_and_status_selects_as_on_the_whole_operation() {
    let (mut state, now) = state_with(20);
    let mut all = ListParams {
        max_results: 500,
        ..Default::default()
    };
    let every: Vec<Value> = pages(&mut state, now, &mut all).concat();
    assert_eq!(every.len(), 20);
    // The tenth insert time (the list is in name order, and names do not follow time).
    let mut times: Vec<&str> = every
        .iter()
        .map(|op| op["insertTime"].as_str().unwrap())
        .collect();
    times.sort_unstable();
    let since = times[9].to_string();
    let text = format!("(status = DONE) AND (insertTime >= \"{since}\")");
    let want: Vec<String> = every
        .iter()
        .filter(|op| op["status"] == "DONE" && op["insertTime"].as_str().unwrap() >= since.as_str())
        .map(|op| op["name"].as_str().unwrap().to_string())
        .collect();
    assert!(want.len() >= 10 && want.len() < 20, "{}", want.len());
    let mut params = ListParams {
        max_results: 4,
        filter: Some(Filter::parse(&text).unwrap()),
        ..Default::default()
    };
    let got = pages(&mut state, now, &mut params);
    assert_eq!(names(&got), want);
    // What comes back is each operation whole, not the fields the filter read.
    assert!(got[0][0].get("selfLink").is_some());
    assert!(got[0][0].get("targetLink").is_some());
}
