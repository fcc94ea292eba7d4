//! Adoption, decided purely: which foreign route or firewall rule (one without any cluster's
//! ownership marker) has exactly the content an object wants, and how it is taken over without
//! a gap in traffic. A firewall rule is patched (its description gets the marker; it keeps its
//! name); a route, which Compute cannot change, gets an identical twin under the planned name,
//! and the original goes once the twin exists: an equal route at equal priority only widens
//! ECMP to the same next hop (reference §12), so no packet changes path.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use super::DesiredResource;
use super::resource::{Collection, Target, normalize_reference};

/// Whether an object adopts: its cloud allows adoption (`spec.adoption.enabled`) and the object
/// asks for it (annotation `adc.dev/adopt: "true"`). An annotation that is neither `true` nor
/// `false` is an error that names it.
pub fn wanted(cloud_allows: bool, annotation: Option<&str>) -> Result<bool, String> {
    match annotation.map(str::trim) {
        None | Some("false") => Ok(false),
        Some("true") => Ok(cloud_allows),
        Some(other) => Err(format!(
            "annotation {} is '{other}': use \"true\" or \"false\"",
            crate::api::policy::ADOPT_ANNOTATION
        )),
    }
}

/// How a foreign resource is taken over.
#[derive(Debug, Clone, PartialEq)]
pub enum How {
    /// Its description becomes the object's (the marker): a firewall rule.
    Patch(Value),
    /// The planned twin (this target) is inserted first, the foreign resource deleted once the
    /// twin exists: a route.
    Twin(Target),
}

/// One foreign resource an object takes over.
#[derive(Debug, Clone, PartialEq)]
pub struct Adoption {
    /// The foreign resource.
    pub foreign: Target,
    /// What GCP holds under it (for the plan's line and the delete's network).
    pub body: Value,
    pub how: How,
}

/// Fields that decide what a route does, with the value Compute assumes when one is missing.
const ROUTE_FIELDS: &[&str] = &[
    "network",
    "destRange",
    "priority",
    "tags",
    "nextHopInstance",
    "nextHopIp",
    "nextHopGateway",
    "nextHopIlb",
    "nextHopNetwork",
    "nextHopVpnTunnel",
];

/// Fields that decide what a firewall rule lets through.
const FIREWALL_FIELDS: &[&str] = &[
    "network",
    "direction",
    "priority",
    "sourceRanges",
    "destinationRanges",
    "sourceTags",
    "targetTags",
    "sourceServiceAccounts",
    "targetServiceAccounts",
    "allowed",
    "denied",
    "disabled",
];

/// What a resource does, in a form where two resources that do the same compare equal:
/// references by their path below the project, lists as sets, Compute's defaults filled in.
/// Name and description (identity, not behaviour) are left out.
pub fn behaviour(collection: Collection, body: &Value) -> Value {
    let (fields, defaults): (&[&str], Value) = match collection {
        Collection::Routes => (ROUTE_FIELDS, json!({"priority": 1000})),
        Collection::Firewalls => (
            FIREWALL_FIELDS,
            json!({"direction": "INGRESS", "priority": 1000, "disabled": false}),
        ),
        _ => return Value::Null,
    };
    let mut out = Map::new();
    for field in fields {
        let value = body
            .get(*field)
            .filter(|v| !v.is_null())
            .or_else(|| defaults.get(*field))
            .cloned()
            .unwrap_or(Value::Null);
        let value = canonical(field, value);
        // An empty list is the same as none.
        if value.is_null() || value.as_array().is_some_and(Vec::is_empty) {
            continue;
        }
        out.insert((*field).to_string(), value);
    }
    Value::Object(out)
}

fn canonical(field: &str, value: Value) -> Value {
    match value {
        Value::String(text) if text.contains('/') => {
            Value::String(normalize_reference(&text).to_string())
        }
        Value::String(text) if field == "direction" => Value::String(text.to_ascii_uppercase()),
        Value::Array(items) => {
            // Lists are sets to Compute (ranges, tags, allowed entries and their ports).
            let set: BTreeSet<String> = items
                .into_iter()
                .map(|item| match item {
                    Value::Object(entry) => {
                        let protocol = entry
                            .get("IPProtocol")
                            .and_then(Value::as_str)
                            .unwrap_or("all")
                            .to_ascii_lowercase();
                        let ports: BTreeSet<String> = entry
                            .get("ports")
                            .and_then(Value::as_array)
                            .map(|p| {
                                p.iter()
                                    .filter_map(Value::as_str)
                                    .map(str::to_string)
                                    .collect()
                            })
                            .unwrap_or_default();
                        format!(
                            "{protocol}:{}",
                            ports.into_iter().collect::<Vec<_>>().join(",")
                        )
                    }
                    Value::String(text) => normalize_reference(&text).to_string(),
                    other => other.to_string(),
                })
                .collect();
            Value::Array(set.into_iter().map(Value::String).collect())
        }
        other => other,
    }
}

/// Whether `other` does exactly what `desired` asks for (name and description aside).
pub fn same_behaviour(desired: &DesiredResource, other: &Value) -> bool {
    matches!(
        desired.target.collection,
        Collection::Routes | Collection::Firewalls
    ) && behaviour(desired.target.collection, &desired.body)
        == behaviour(desired.target.collection, other)
}

/// The adoptions that give an object what it wants from `foreign` resources (no marker of any
/// cluster), each foreign resource at most once. `missing` are the desired resources nothing
/// owned provides; `present` those that exist already (a route twin made, its original not yet
/// gone). Desired names are never adopted from (a resource under a planned name stays a
/// `NameConflict`). Returns the adoptions and the desired resources a patch provides (no
/// insert is needed for them).
pub fn adoptions(
    missing: &[DesiredResource],
    present: &[DesiredResource],
    foreign: &[(Target, Value)],
) -> (Vec<Adoption>, Vec<Target>) {
    let planned: BTreeSet<&Target> = missing.iter().chain(present).map(|d| &d.target).collect();
    let mut taken: BTreeSet<&Target> = BTreeSet::new();
    let mut found = Vec::new();
    let mut provided = Vec::new();
    let take = |want: &DesiredResource, taken: &BTreeSet<&Target>| {
        foreign
            .iter()
            .filter(|(target, _)| {
                target.collection == want.target.collection
                    && !planned.contains(target)
                    && !taken.contains(target)
            })
            .find(|(_, body)| same_behaviour(want, body))
            .cloned()
    };
    for want in missing {
        let Some((target, body)) = take(want, &taken) else {
            continue;
        };
        let how = match want.target.collection {
            Collection::Firewalls => {
                provided.push(want.target.clone());
                How::Patch(json!({"description": want.body["description"].clone()}))
            }
            _ => How::Twin(want.target.clone()),
        };
        if let Some((t, _)) = foreign.iter().find(|(t, _)| t == &target) {
            taken.insert(t);
        }
        found.push(Adoption {
            foreign: target,
            body,
            how,
        });
    }
    // A twin that exists: what it copied goes now (every identical foreign route; firewall
    // rules are patched, never twinned).
    for want in present
        .iter()
        .filter(|w| w.target.collection == Collection::Routes)
    {
        while let Some((target, body)) = take(want, &taken) {
            if let Some((t, _)) = foreign.iter().find(|(t, _)| t == &target) {
                taken.insert(t);
            }
            found.push(Adoption {
                foreign: target,
                body,
                how: How::Twin(want.target.clone()),
            });
        }
    }
    (found, provided)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(name: &str, vip: &str, hop: &str, priority: u32) -> DesiredResource {
        DesiredResource {
            target: Target::route(name),
            body: json!({"name": name, "description": "adc.dev/owner=c/x/VirtualService/ns/web",
                "network": "global/networks/vpc", "destRange": format!("{vip}/32"),
                "priority": priority, "nextHopInstance": format!("projects/p/zones/z/instances/{hop}")}),
        }
    }

    fn foreign_route(name: &str, vip: &str, hop: &str, priority: u32) -> (Target, Value) {
        (
            Target::route(name),
            json!({"name": name, "kind": "compute#route", "id": "1", "description": "made by the ADC",
                "network": "https://www.googleapis.com/compute/v1/projects/p/global/networks/vpc",
                "destRange": format!("{vip}/32"), "priority": priority, "tags": [],
                "nextHopInstance": format!("https://www.googleapis.com/compute/v1/projects/p/zones/z/instances/{hop}")}),
        )
    }

    fn firewall(name: &str, sources: &[&str], ports: &[&str]) -> DesiredResource {
        DesiredResource {
            target: Target::firewall(name),
            body: json!({"name": name, "description": "adc.dev/owner=c/x/VirtualService/ns/web",
                "network": "global/networks/vpc", "direction": "INGRESS", "priority": 1000,
                "sourceRanges": sources, "destinationRanges": ["10.1.0.5/32"],
                "allowed": [{"IPProtocol": "tcp", "ports": ports}]}),
        }
    }

    #[test]
    fn a_route_is_twinned_and_its_original_goes_once_the_twin_exists() {
        let want = route("adc-a", "10.1.0.5", "se-1", 900);
        let foreign = vec![
            foreign_route("avi-1", "10.1.0.5", "se-1", 900),
            foreign_route("avi-2", "10.1.0.5", "se-2", 900),
        ];
        let (found, provided) = adoptions(std::slice::from_ref(&want), &[], &foreign);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].foreign, Target::route("avi-1"));
        assert_eq!(found[0].how, How::Twin(Target::route("adc-a")));
        assert!(provided.is_empty(), "a route twin is inserted");
        // The twin exists: the original is still to go.
        let (found, _) = adoptions(&[], std::slice::from_ref(&want), &foreign);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].foreign, Target::route("avi-1"));
    }

    #[test]
    fn anything_different_is_not_adopted() {
        let want = route("adc-a", "10.1.0.5", "se-1", 900);
        for other in [
            foreign_route("p", "10.1.0.5", "se-1", 901),
            foreign_route("h", "10.1.0.5", "se-2", 900),
            foreign_route("d", "10.1.0.6", "se-1", 900),
        ] {
            assert!(
                adoptions(std::slice::from_ref(&want), &[], &[other])
                    .0
                    .is_empty()
            );
        }
        let mut tagged = foreign_route("t", "10.1.0.5", "se-1", 900);
        tagged.1["tags"] = json!(["only-some"]);
        assert!(
            adoptions(std::slice::from_ref(&want), &[], &[tagged])
                .0
                .is_empty(),
            "a route limited to tagged instances does less than the one wanted"
        );
        // A foreign resource under the planned name is a NameConflict, not an adoption.
        let same_name = foreign_route("adc-a", "10.1.0.5", "se-1", 900);
        assert!(adoptions(&[want], &[], &[same_name]).0.is_empty());
    }

    #[test]
    fn a_firewall_rule_is_patched_and_lists_compare_as_sets() {
        let want = firewall("adc-fw", &["10.0.0.0/8", "192.168.0.0/16"], &["80", "443"]);
        let foreign = (
            Target::firewall("avi-fw"),
            json!({"name": "avi-fw", "description": "", "network": "projects/p/global/networks/vpc",
                "sourceRanges": ["192.168.0.0/16", "10.0.0.0/8"], "destinationRanges": ["10.1.0.5/32"],
                "allowed": [{"IPProtocol": "TCP", "ports": ["443", "80"]}], "disabled": false}),
        );
        let (found, provided) = adoptions(
            std::slice::from_ref(&want),
            &[],
            std::slice::from_ref(&foreign),
        );
        assert_eq!(found.len(), 1);
        assert_eq!(
            found[0].how,
            How::Patch(json!({"description": want.body["description"]}))
        );
        assert_eq!(provided, vec![Target::firewall("adc-fw")]);
        let mut narrower = foreign;
        narrower.1["targetTags"] = json!(["se"]);
        assert!(adoptions(&[want], &[], &[narrower]).0.is_empty());
    }

    #[test]
    fn adoption_needs_the_cloud_and_the_object() {
        assert_eq!(wanted(true, Some("true")), Ok(true));
        assert_eq!(wanted(false, Some("true")), Ok(false));
        assert_eq!(wanted(true, None), Ok(false));
        assert_eq!(wanted(true, Some("false")), Ok(false));
        let err = wanted(true, Some("yes")).unwrap_err();
        assert!(
            err.contains("adc.dev/adopt") && err.contains("'yes'"),
            "{err}"
        );
    }

    #[test]
    fn each_foreign_resource_is_adopted_once() {
        let a = route("adc-a", "10.1.0.5", "se-1", 900);
        let b = route("adc-b", "10.1.0.5", "se-1", 900);
        let foreign = vec![foreign_route("avi-1", "10.1.0.5", "se-1", 900)];
        let (found, _) = adoptions(&[a, b], &[], &foreign);
        assert_eq!(found.len(), 1);
    }
}
