//! Desired against observed: what to insert, what to delete, what to replace.

use serde_json::Value;

use super::DesiredResource;
use super::adopt::{Adoption, adoptions, same_behaviour};
use super::resource::{Collection, Target, same_content};

/// The changes that take an object's GCP resources from observed to desired.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Diff {
    /// New resources (new names): inserted before anything is deleted.
    pub inserts: Vec<DesiredResource>,
    /// Resources this object owns that it no longer wants: deleted after the inserts.
    pub deletes: Vec<Target>,
    /// Resources whose name is desired but whose content drifted (changed behind the operator's
    /// back): deleted and inserted again under the same name.
    pub replaces: Vec<DesiredResource>,
    /// Foreign resources taken over (with adoption): firewall rules patched now, routes
    /// deleted once their twin (an insert above, or already made) exists.
    pub adoptions: Vec<Adoption>,
}

impl Diff {
    /// Whether nothing needs doing.
    pub fn is_empty(&self) -> bool {
        self.inserts.is_empty()
            && self.deletes.is_empty()
            && self.replaces.is_empty()
            && self.adoptions.is_empty()
    }
}

/// Compares `desired` with `owned` (what the inventory holds with this object's marker). A
/// firewall rule the object adopted keeps the name it was made with: it provides the desired
/// rule of the same behaviour.
pub fn diff(desired: &[DesiredResource], owned: &[(Target, Value)]) -> Diff {
    let mut result = Diff::default();
    let mut kept: Vec<&Target> = Vec::new();
    for want in desired {
        match owned.iter().find(|(target, _)| target == &want.target) {
            None => {
                let adopted = owned.iter().find(|(target, body)| {
                    target.collection == Collection::Firewalls
                        && !kept.contains(&target)
                        && !desired.iter().any(|d| &d.target == target)
                        && same_behaviour(want, body)
                });
                match adopted {
                    Some((target, _)) => kept.push(target),
                    None => result.inserts.push(want.clone()),
                }
            }
            Some((_, have)) if same_content(&want.body, have) => {}
            Some(_) => result.replaces.push(want.clone()),
        }
    }
    for (target, _) in owned {
        if !kept.contains(&target) && !desired.iter().any(|want| &want.target == target) {
            result.deletes.push(target.clone());
        }
    }
    result
}

/// [`diff`], taking over `foreign` resources (no cluster's marker) of exactly the content a
/// desired resource wants instead of inserting beside them.
pub fn diff_adopting(
    desired: &[DesiredResource],
    owned: &[(Target, Value)],
    foreign: &[(Target, Value)],
) -> Diff {
    let mut result = diff(desired, owned);
    let present: Vec<DesiredResource> = desired
        .iter()
        .filter(|d| {
            !result.inserts.iter().any(|i| i.target == d.target)
                && !result.replaces.iter().any(|r| r.target == d.target)
        })
        .cloned()
        .collect();
    let (found, provided) = adoptions(&result.inserts, &present, foreign);
    result.inserts.retain(|i| !provided.contains(&i.target));
    result.adoptions = found;
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn resource(name: &str, priority: u32) -> DesiredResource {
        DesiredResource {
            target: Target::route(name),
            body: json!({"name": name, "network": "global/networks/default", "priority": priority}),
        }
    }

    #[test]
    fn inserts_deletes_and_drift() {
        let desired = vec![resource("a", 1), resource("b", 1), resource("c", 1)];
        let observed = vec![
            (
                Target::route("a"),
                json!({"name": "a", "network": "https://www.googleapis.com/compute/v1/projects/p/global/networks/default", "priority": 1, "id": "7"}),
            ),
            (
                Target::route("b"),
                json!({"name": "b", "network": "global/networks/default", "priority": 9}),
            ),
            (Target::route("old"), json!({"name": "old"})),
        ];
        let result = diff(&desired, &observed);
        assert_eq!(result.inserts, vec![resource("c", 1)]);
        assert_eq!(result.replaces, vec![resource("b", 1)]);
        assert_eq!(result.deletes, vec![Target::route("old")]);
        assert!(diff(&desired[..1], &observed[..1]).is_empty());
    }
}
