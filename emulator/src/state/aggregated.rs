//! `aggregatedList`: one collection across every scope of a project, in Compute's shape
//! (`items` maps `global`, `regions/R`, `zones/Z` to a scoped list; a scope with nothing on the
//! page carries a `NO_RESULTS_ON_PAGE` warning instead of its list).
//!
//! Paging counts items across scopes: scopes in key order, items in name order (or all items
//! newest first with `orderBy=creationTimestamp desc`). Every scope appears on every page.

use std::collections::BTreeMap;
use std::ops::Bound;

use serde_json::{Value, json};
use tokio::time::Instant;

use super::{
    ItemText, ListParams, Phase, Slot, State, bad_token, base64url, ordered_object, text,
    unbase64url,
};
use crate::error::ApiError;
use crate::filter::Filter;
use crate::kinds::{Aggregated, CollectionKey, Placement};
use crate::names::link;
use crate::operation::{Clock, Operation};

/// What one scope holds of the listed collection.
#[derive(Clone, Copy)]
enum Source<'a> {
    Slots(&'a BTreeMap<String, Slot>),
    Operations(&'a BTreeMap<String, Operation>),
}

impl<'a> Source<'a> {
    /// The visible items whose name sorts after `after`, in name order, rendered lazily.
    /// Operations `filter` rejects on the fields it reads are not rendered (the caller still
    /// applies it to what comes back).
    fn items_after(
        self,
        after: Option<&str>,
        project_id: &'a str,
        now: Instant,
        clock: &'a Clock,
        filter: Option<&'a Filter>,
    ) -> Box<dyn Iterator<Item = (&'a str, ItemText<'a>)> + 'a> {
        let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
        match self {
            Source::Slots(slots) => Box::new(
                slots
                    .range::<str, _>((lower, Bound::Unbounded))
                    .filter(|(_, slot)| slot.phase != Phase::Creating)
                    .map(|(name, slot)| (name.as_str(), ItemText::Raw(&slot.json))),
            ),
            Source::Operations(ops) => {
                let selects = super::selector(filter, project_id, now, clock);
                Box::new(
                    ops.range::<str, _>((lower, Bound::Unbounded))
                        .filter(move |(_, op)| selects(op))
                        .map(move |(name, op)| {
                            (
                                name.as_str(),
                                ItemText::Value(op.to_json(project_id, now, clock)),
                            )
                        }),
                )
            }
        }
    }
}

/// The scope key of a collection: `global`, `regions/R` or `zones/Z`.
fn scope_of(key: &CollectionKey) -> String {
    match key.kind.placement() {
        Placement::Global => "global".to_string(),
        Placement::Regional => format!("regions/{}", key.location),
        Placement::Zonal => format!("zones/{}", key.location),
    }
}

fn parse(item: &ItemText<'_>) -> Value {
    match item {
        ItemText::Raw(text) => serde_json::from_str(text).unwrap_or(Value::Null),
        ItemText::Text(text) => serde_json::from_str(text).unwrap_or(Value::Null),
        ItemText::Value(value) => value.clone(),
    }
}

/// The warning that stands for the list of a scope with nothing on this page.
fn no_results_warning(scope: &str) -> String {
    let data = ordered_object(&[("key", text("scope")), ("value", text(scope))]);
    ordered_object(&[
        ("code", text("NO_RESULTS_ON_PAGE")),
        (
            "message",
            text(&format!(
                "There are no results for scope '{scope}' on this page."
            )),
        ),
        ("data", format!("[{data}]")),
    ])
}

/// One item picked for the page: its scope, name, item and (when it had to be read) JSON.
type Picked<'a> = (&'a str, &'a str, ItemText<'a>, Option<Value>);

impl State {
    /// `aggregatedList` of one collection of a project.
    pub fn aggregated_list(
        &mut self,
        project_id: &str,
        what: Aggregated,
        params: &ListParams,
        include_all_scopes: bool,
        now: Instant,
    ) -> Result<String, ApiError> {
        self.advance(now);
        let clock = self.clock;
        let project = self
            .projects
            .get(project_id)
            .ok_or_else(|| ApiError::not_found(&format!("projects/{project_id}")))?;

        // Every scope of the listed types the project knows, then what each holds.
        let placements: &[Placement] = if include_all_scopes {
            &[Placement::Global, Placement::Regional, Placement::Zonal]
        } else {
            what.placements()
        };
        let mut scopes: BTreeMap<String, Option<Source<'_>>> = BTreeMap::new();
        for placement in placements {
            match placement {
                Placement::Global => {
                    scopes.insert("global".to_string(), None);
                }
                Placement::Regional => {
                    for region in &project.regions {
                        scopes.insert(format!("regions/{region}"), None);
                    }
                }
                Placement::Zonal => {
                    for zone in &project.zones {
                        scopes.insert(format!("zones/{zone}"), None);
                    }
                }
            }
        }
        if what == Aggregated::Operations {
            for (scope, ops) in &project.operations {
                scopes.insert(scope.clone(), Some(Source::Operations(ops)));
            }
        } else {
            for (key, slots) in &project.collections {
                if what.kinds().contains(&key.kind) {
                    scopes.insert(scope_of(key), Some(Source::Slots(slots)));
                }
            }
        }

        let filter = params.filter.as_ref().filter(|f| !f.is_match_all());
        let matches = |parsed: &Option<Value>| match (filter, parsed) {
            (Some(filter), Some(value)) => filter.matches(value),
            _ => true,
        };
        let token = params
            .page_token
            .as_deref()
            .map(|t| unbase64url(t).ok_or_else(|| bad_token(t)))
            .transpose()?;
        let max = params.max_results;
        let mut picked: Vec<Picked<'_>> = Vec::new();
        let mut next_token = None;
        if params.order_by_creation_desc {
            // Newest first across scopes; the token is the offset of the next page.
            let offset: usize = match (&token, &params.page_token) {
                (Some(decoded), Some(raw)) => decoded
                    .strip_prefix("offset:")
                    .and_then(|n| n.parse().ok())
                    .ok_or_else(|| bad_token(raw))?,
                _ => 0,
            };
            let mut all: Vec<Picked<'_>> = Vec::new();
            for (scope, source) in &scopes {
                let Some(source) = source else { continue };
                for (name, item) in
                    source.items_after(None, project_id, now, &clock, params.filter.as_ref())
                {
                    let parsed = Some(parse(&item));
                    if matches(&parsed) {
                        all.push((scope.as_str(), name, item, parsed));
                    }
                }
            }
            let stamp = |parsed: &Option<Value>| {
                parsed
                    .as_ref()
                    .and_then(|v| v.get("creationTimestamp").or_else(|| v.get("insertTime")))
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            };
            // Newest first; equal timestamps in scope and name order.
            all.sort_by_cached_key(|(scope, name, _, parsed)| {
                (std::cmp::Reverse(stamp(parsed)), *scope, *name)
            });
            let end = offset.saturating_add(max).min(all.len());
            if end < all.len() {
                next_token = Some(base64url(&format!("offset:{end}")));
            }
            picked = all
                .into_iter()
                .skip(offset)
                .take(end.saturating_sub(offset))
                .collect();
        } else {
            // Scopes in key order, names in order; the token is the last `scope/name` served.
            let cursor = match (&token, &params.page_token) {
                (Some(decoded), Some(raw)) => {
                    Some(decoded.rsplit_once('/').ok_or_else(|| bad_token(raw))?)
                }
                _ => None,
            };
            'scopes: for (scope, source) in &scopes {
                let Some(source) = source else { continue };
                let after = match cursor {
                    Some((at, _)) if scope.as_str() < at => continue,
                    Some((at, name)) if scope.as_str() == at => Some(name),
                    _ => None,
                };
                for (name, item) in
                    source.items_after(after, project_id, now, &clock, params.filter.as_ref())
                {
                    let parsed = filter.map(|_| parse(&item));
                    if !matches(&parsed) {
                        continue;
                    }
                    if picked.len() >= max {
                        next_token = picked
                            .last()
                            .map(|(scope, name, _, _)| base64url(&format!("{scope}/{name}")));
                        break 'scopes;
                    }
                    picked.push((scope.as_str(), name, item, parsed));
                }
            }
        }

        let mut on_page: BTreeMap<&str, Vec<&ItemText<'_>>> = BTreeMap::new();
        for (scope, _, item, _) in &picked {
            on_page.entry(*scope).or_default().push(item);
        }
        let list_path = format!("projects/{project_id}/aggregated/{}", what.segment());
        let mut out = String::with_capacity(256 + scopes.len() * 160 + picked.len() * 512);
        out.push_str("{\"kind\":");
        out.push_str(&text(what.list_kind()));
        out.push_str(",\"id\":");
        out.push_str(&text(&list_path));
        if !scopes.is_empty() {
            out.push_str(",\"items\":{");
            for (i, scope) in scopes.keys().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&text(scope));
                out.push(':');
                match on_page.get(scope.as_str()) {
                    Some(items) => {
                        out.push('{');
                        out.push_str(&text(what.segment()));
                        out.push_str(":[");
                        for (j, item) in items.iter().enumerate() {
                            if j > 0 {
                                out.push(',');
                            }
                            match item {
                                ItemText::Raw(text) => out.push_str(text),
                                ItemText::Text(text) => out.push_str(text),
                                ItemText::Value(value) => out.push_str(&value.to_string()),
                            }
                        }
                        out.push_str("]}");
                    }
                    None => {
                        out.push_str("{\"warning\":");
                        out.push_str(&no_results_warning(scope));
                        out.push('}');
                    }
                }
            }
            out.push('}');
        }
        if let Some(token) = next_token {
            out.push_str(",\"nextPageToken\":");
            out.push_str(&json!(token).to_string());
        }
        out.push_str(",\"selfLink\":");
        out.push_str(&text(&link(&list_path)));
        out.push('}');
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::filter::Filter;
    use crate::kinds::Kind;
    use crate::state::MutationContext;

    const WORLD: &str = "projects:
  - id: p
    quotas: {STATIC_ADDRESSES: 50}
    networks:
      - name: default
        subnetworks:
          - {name: default, region: us-central1, ipCidrRange: 10.128.0.0/20}
          - {name: eu, region: europe-west1, ipCidrRange: 10.132.0.0/20}
    instances:
      - {name: b-1, zone: us-central1-b}
      - {name: a-2, zone: us-central1-a, status: TERMINATED}
      - {name: a-1, zone: us-central1-a}
      - {name: e-1, zone: europe-west1-c}
";

    fn state() -> State {
        let world = crate::world::World::parse(WORLD, "test").unwrap();
        State::new(&world, 0, None, crate::model::BusyBehavior::Queue)
    }

    fn ctx() -> MutationContext {
        MutationContext {
            now: Instant::now(),
            user: "u@example.com".into(),
            request_id: None,
            pending: Duration::ZERO,
            run_for: Duration::ZERO,
            fail: false,
        }
    }

    fn params(max_results: usize) -> ListParams {
        ListParams {
            max_results,
            ..Default::default()
        }
    }

    fn list(state: &mut State, what: Aggregated, params: &ListParams) -> Value {
        let text = state
            .aggregated_list("p", what, params, false, Instant::now())
            .unwrap();
        serde_json::from_str(&text).unwrap()
    }

    /// `scope → [names]` of the scopes that carry items.
    fn names(page: &Value, field: &str) -> Vec<(String, Vec<String>)> {
        page["items"]
            .as_object()
            .unwrap()
            .iter()
            .filter_map(|(scope, scoped)| {
                let items = scoped.get(field)?.as_array()?;
                Some((
                    scope.clone(),
                    items
                        .iter()
                        .map(|i| i["name"].as_str().unwrap().to_string())
                        .collect(),
                ))
            })
            .collect()
    }

    #[test]
    fn instances_are_keyed_by_zone_and_empty_zones_carry_the_warning() {
        let mut state = state();
        let page = list(&mut state, Aggregated::Instances, &params(500));
        assert_eq!(page["kind"], "compute#instanceAggregatedList");
        assert_eq!(page["id"], "projects/p/aggregated/instances");
        assert_eq!(
            page["selfLink"],
            "https://www.googleapis.com/compute/v1/projects/p/aggregated/instances"
        );
        assert!(page.get("nextPageToken").is_none());
        let scopes: Vec<&String> = page["items"].as_object().unwrap().keys().collect();
        // Every zone the world knows: the subnet regions' a, b, c, f and the instances' zones.
        assert_eq!(
            scopes,
            [
                "zones/europe-west1-a",
                "zones/europe-west1-b",
                "zones/europe-west1-c",
                "zones/europe-west1-f",
                "zones/us-central1-a",
                "zones/us-central1-b",
                "zones/us-central1-c",
                "zones/us-central1-f",
            ]
        );
        assert_eq!(
            names(&page, "instances"),
            [
                ("zones/europe-west1-c".into(), vec!["e-1".into()]),
                (
                    "zones/us-central1-a".into(),
                    vec!["a-1".into(), "a-2".into()]
                ),
                ("zones/us-central1-b".into(), vec!["b-1".into()]),
            ]
        );
        assert_eq!(
            page["items"]["zones/us-central1-f"],
            json!({"warning": {
                "code": "NO_RESULTS_ON_PAGE",
                "message": "There are no results for scope 'zones/us-central1-f' on this page.",
                "data": [{"key": "scope", "value": "zones/us-central1-f"}],
            }})
        );
        // Compute's field order: code, message, data.
        let text = state
            .aggregated_list(
                "p",
                Aggregated::Instances,
                &params(500),
                false,
                Instant::now(),
            )
            .unwrap();
        assert!(text.contains(
            "{\"warning\":{\"code\":\"NO_RESULTS_ON_PAGE\",\"message\":\"There are no results \
             for scope 'zones/europe-west1-a' on this page.\",\"data\":[{\"key\":\"scope\",\
             \"value\":\"zones/europe-west1-a\"}]}}"
        ));
        assert!(text.starts_with("{\"kind\":\"compute#instanceAggregatedList\",\"id\":"));
    }

    #[test]
    fn pages_count_items_across_scopes_and_every_scope_shows_on_every_page() {
        let mut state = state();
        let mut seen = Vec::new();
        let mut token = None;
        let mut pages = 0;
        loop {
            let mut p = params(1);
            p.page_token = token.clone();
            let page = list(&mut state, Aggregated::Instances, &p);
            pages += 1;
            assert_eq!(
                page["items"].as_object().unwrap().len(),
                8,
                "all zones each page"
            );
            let on_page = names(&page, "instances");
            assert_eq!(on_page.len(), 1);
            for (scope, names) in on_page {
                seen.extend(names.into_iter().map(|n| format!("{scope}/{n}")));
            }
            match page["nextPageToken"].as_str() {
                Some(next) => token = Some(next.to_string()),
                None => break,
            }
        }
        assert_eq!(pages, 4);
        assert_eq!(
            seen,
            [
                "zones/europe-west1-c/e-1",
                "zones/us-central1-a/a-1",
                "zones/us-central1-a/a-2",
                "zones/us-central1-b/b-1"
            ]
        );
        let mut p = params(3);
        p.page_token = Some("!!".into());
        let err = state
            .aggregated_list("p", Aggregated::Instances, &p, false, Instant::now())
            .unwrap_err();
        assert_eq!((err.code, err.reason), (400, "invalid"));
        p.page_token = Some(base64url("no-slash"));
        assert!(
            state
                .aggregated_list("p", Aggregated::Instances, &p, false, Instant::now())
                .is_err()
        );
    }

    #[test]
    fn filter_applies_to_each_item_and_emptied_scopes_get_the_warning() {
        let mut state = state();
        let mut p = params(500);
        p.filter = Some(Filter::parse("status = TERMINATED").unwrap());
        let page = list(&mut state, Aggregated::Instances, &p);
        assert_eq!(
            names(&page, "instances"),
            [("zones/us-central1-a".into(), vec!["a-2".into()])]
        );
        assert_eq!(
            page["items"]["zones/us-central1-b"]["warning"]["code"],
            "NO_RESULTS_ON_PAGE"
        );
        // A filter with a page limit: the token continues after the last match.
        let mut p = params(1);
        p.filter = Some(Filter::parse("name eq [ab]-.*").unwrap());
        let first = list(&mut state, Aggregated::Instances, &p);
        assert_eq!(
            names(&first, "instances"),
            [("zones/us-central1-a".into(), vec!["a-1".into()])]
        );
        p.page_token = first["nextPageToken"].as_str().map(str::to_string);
        let second = list(&mut state, Aggregated::Instances, &p);
        assert_eq!(
            names(&second, "instances"),
            [("zones/us-central1-a".into(), vec!["a-2".into()])]
        );
        p.page_token = second["nextPageToken"].as_str().map(str::to_string);
        let third = list(&mut state, Aggregated::Instances, &p);
        assert_eq!(
            names(&third, "instances"),
            [("zones/us-central1-b".into(), vec!["b-1".into()])]
        );
        assert!(third.get("nextPageToken").is_none());
    }

    #[test]
    fn addresses_forwarding_rules_and_operations_have_their_scopes() {
        let mut state = state();
        let regional = CollectionKey {
            kind: Kind::Address,
            location: "us-central1".into(),
        };
        let global = CollectionKey {
            kind: Kind::GlobalAddress,
            location: String::new(),
        };
        state
            .insert("p", regional, &json!({"name": "r-addr"}), &ctx())
            .unwrap();
        state
            .insert("p", global, &json!({"name": "g-addr"}), &ctx())
            .unwrap();
        let zonal = state
            .instance_power("p", "us-central1-a", "a-1", false, &ctx())
            .unwrap();

        let addresses = list(&mut state, Aggregated::Addresses, &params(500));
        assert_eq!(addresses["kind"], "compute#addressAggregatedList");
        let scopes: Vec<&String> = addresses["items"].as_object().unwrap().keys().collect();
        assert_eq!(
            scopes,
            ["global", "regions/europe-west1", "regions/us-central1"]
        );
        assert_eq!(
            names(&addresses, "addresses"),
            [
                ("global".into(), vec!["g-addr".into()]),
                ("regions/us-central1".into(), vec!["r-addr".into()]),
            ]
        );

        let rules = list(&mut state, Aggregated::ForwardingRules, &params(500));
        assert_eq!(rules["kind"], "compute#forwardingRuleAggregatedList");
        assert_eq!(rules["items"].as_object().unwrap().len(), 3);
        assert!(names(&rules, "forwardingRules").is_empty());
        assert_eq!(
            rules["items"]["global"]["warning"]["data"][0]["value"],
            "global"
        );

        let ops = list(&mut state, Aggregated::Operations, &params(500));
        assert_eq!(ops["kind"], "compute#operationAggregatedList");
        assert_eq!(ops["id"], "projects/p/aggregated/operations");
        // global + 2 regions + 8 zones.
        assert_eq!(ops["items"].as_object().unwrap().len(), 11);
        let zonal_ops = ops["items"]["zones/us-central1-a"]["operations"]
            .as_array()
            .unwrap();
        assert_eq!(
            zonal_ops,
            &[state
                .operation(
                    "p",
                    "zones/us-central1-a",
                    zonal["name"].as_str().unwrap(),
                    Instant::now()
                )
                .unwrap()]
        );
        assert_eq!(
            ops["items"]["global"]["operations"][0]["operationType"],
            "insert"
        );
        assert_eq!(
            ops["items"]["regions/us-central1"]["operations"][0]["targetLink"],
            "https://www.googleapis.com/compute/v1/projects/p/regions/us-central1/addresses/r-addr"
        );

        // includeAllScopes lists every scope type.
        let all: Value = serde_json::from_str(
            &state
                .aggregated_list(
                    "p",
                    Aggregated::Instances,
                    &params(500),
                    true,
                    Instant::now(),
                )
                .unwrap(),
        )
        .unwrap();
        assert_eq!(all["items"].as_object().unwrap().len(), 11);
        assert!(all["items"]["global"]["warning"].is_object());
    }

    #[test]
    fn newest_first_pages_by_offset() {
        let mut state = state();
        for i in 0..3 {
            let key = CollectionKey {
                kind: Kind::Address,
                location: if i == 1 {
                    "europe-west1"
                } else {
                    "us-central1"
                }
                .into(),
            };
            let mut c = ctx();
            c.now = Instant::now() + Duration::from_millis(10 * i);
            state
                .insert("p", key, &json!({"name": format!("addr-{i}")}), &c)
                .unwrap();
        }
        let mut p = params(2);
        p.order_by_creation_desc = true;
        let first = list(&mut state, Aggregated::Addresses, &p);
        assert_eq!(
            names(&first, "addresses"),
            [
                ("regions/europe-west1".into(), vec!["addr-1".into()]),
                ("regions/us-central1".into(), vec!["addr-2".into()]),
            ]
        );
        p.page_token = first["nextPageToken"].as_str().map(str::to_string);
        let second = list(&mut state, Aggregated::Addresses, &p);
        assert_eq!(
            names(&second, "addresses"),
            [("regions/us-central1".into(), vec!["addr-0".into()])]
        );
        assert!(second.get("nextPageToken").is_none());
    }

    #[test]
    fn unknown_project_is_404() {
        let err = state()
            .aggregated_list(
                "nope",
                Aggregated::Instances,
                &params(5),
                false,
                Instant::now(),
            )
            .unwrap_err();
        assert_eq!(err.code, 404);
        assert_eq!(err.message, "The resource 'projects/nope' was not found");
    }
}
