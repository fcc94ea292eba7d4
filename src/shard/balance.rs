//! Which clouds a replica should contend for or hand back: a pure function of what every
//! replica reads from the Leases, so that each decides alone and they still agree.
//!
//! Every live replica aims at `ceil(clouds / live replicas)` clouds. One below its aim contends
//! for free clouds (no live holder), in the order of its rendezvous weights, so that replicas
//! starting together prefer different clouds; one above its aim hands one cloud back, but only
//! while another replica has room to take it. No replica contends beyond its aim, so none holds
//! more than `ceil(clouds / live) + 1` while others have room (the `+ 1` is the moment a
//! replica returns and the aim drops).

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};

/// What a replica knows of the fleet at one moment.
#[derive(Debug, Clone, Copy)]
pub struct View<'a> {
    /// This replica's identity.
    pub me: &'a str,
    /// Every GcpCloud.
    pub clouds: &'a BTreeSet<String>,
    /// Replicas whose membership Lease is live (this one included).
    pub members: &'a BTreeSet<String>,
    /// The live holder of each cloud's Lease (a lapsed Lease is no holder).
    pub holders: &'a BTreeMap<String, String>,
}

/// What to do now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision {
    /// Free clouds to contend for, best first, at most the room this replica has.
    pub contend: Vec<String>,
    /// A cloud to hand back (drain its engine, then release its Lease).
    pub release: Option<String>,
}

/// The clouds each replica should hold at most: `ceil(clouds / live replicas)`.
pub fn aim(clouds: usize, members: usize) -> usize {
    clouds.div_ceil(members.max(1))
}

/// How much `member` wants `cloud`: highest random weight hashing. Stable across processes
/// of one build (SipHash with fixed keys).
pub fn weight(cloud: &str, member: &str) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (cloud, member).hash(&mut hasher);
    hasher.finish()
}

/// The replica that speaks for a cloud nobody can hold (one that does not exist): the live
/// member with the highest weight for its name.
pub fn speaker<'a>(cloud: &str, members: &'a BTreeSet<String>) -> Option<&'a str> {
    members
        .iter()
        .max_by_key(|m| (weight(cloud, m), m.as_str()))
        .map(String::as_str)
}

/// Decides, for `view.me`, what to contend for and what to hand back.
pub fn decide(view: View<'_>) -> Decision {
    let mut members = view.members.clone();
    members.insert(view.me.to_string());
    let aim = aim(view.clouds.len(), members.len());
    let mut held: BTreeMap<&str, usize> = members.iter().map(|m| (m.as_str(), 0)).collect();
    for (cloud, holder) in view.holders {
        if view.clouds.contains(cloud) {
            *held.entry(holder.as_str()).or_default() += 1;
        }
    }
    let mine: Vec<&String> = view
        .clouds
        .iter()
        .filter(|c| view.holders.get(*c).map(String::as_str) == Some(view.me))
        .collect();
    let by_weight = |clouds: &mut Vec<&String>| {
        clouds.sort_by_key(|c| std::cmp::Reverse((weight(c, view.me), c.as_str().to_string())));
    };
    if mine.len() > aim {
        let someone_has_room = members
            .iter()
            .any(|m| m != view.me && held.get(m.as_str()).copied().unwrap_or(0) < aim);
        if someone_has_room {
            let mut mine = mine;
            by_weight(&mut mine);
            return Decision {
                contend: Vec::new(),
                release: mine.last().map(|c| c.to_string()),
            };
        }
        return Decision::default();
    }
    let mut free: Vec<&String> = view
        .clouds
        .iter()
        .filter(|c| !view.holders.contains_key(*c))
        .collect();
    by_weight(&mut free);
    Decision {
        contend: free
            .into_iter()
            .take(aim - mine.len())
            .map(String::to_string)
            .collect(),
        release: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn clouds(n: usize) -> BTreeSet<String> {
        (0..n).map(|i| format!("cloud-{i}")).collect()
    }

    #[test]
    fn a_lone_replica_contends_for_every_cloud() {
        let clouds = clouds(6);
        let members = set(&["a"]);
        let decision = decide(View {
            me: "a",
            clouds: &clouds,
            members: &members,
            holders: &BTreeMap::new(),
        });
        assert_eq!(decision.contend.len(), 6);
        assert_eq!(decision.release, None);
    }

    #[test]
    fn three_replicas_each_aim_at_two_of_six() {
        let clouds = clouds(6);
        let members = set(&["a", "b", "c"]);
        let holders = BTreeMap::from([
            ("cloud-0".to_string(), "a".to_string()),
            ("cloud-1".to_string(), "b".to_string()),
        ]);
        let a = decide(View {
            me: "a",
            clouds: &clouds,
            members: &members,
            holders: &holders,
        });
        assert_eq!(a.contend.len(), 1, "a holds one of its two");
        assert!(!a.contend.contains(&"cloud-0".to_string()));
        assert!(!a.contend.contains(&"cloud-1".to_string()), "held by b");
    }

    #[test]
    fn a_replica_over_its_aim_hands_back_only_when_another_has_room() {
        let clouds = clouds(6);
        let all_a: BTreeMap<String, String> = clouds
            .iter()
            .map(|c| (c.clone(), "a".to_string()))
            .collect();
        // b just returned: a holds 6, the aim is 3 and b has room.
        let members = set(&["a", "b"]);
        let decision = decide(View {
            me: "a",
            clouds: &clouds,
            members: &members,
            holders: &all_a,
        });
        assert!(decision.release.is_some());
        assert!(decision.contend.is_empty());
        // Alone, a keeps them all.
        let alone = set(&["a"]);
        let decision = decide(View {
            me: "a",
            clouds: &clouds,
            members: &alone,
            holders: &all_a,
        });
        assert_eq!(decision, Decision::default());
    }

    #[test]
    fn a_missing_cloud_has_one_speaker() {
        let members = set(&["a", "b", "c"]);
        let speaker = speaker("gone", &members).unwrap();
        assert!(members.contains(speaker));
        assert_eq!(speaker, super::speaker("gone", &members.clone()).unwrap());
        assert_eq!(super::speaker("gone", &BTreeSet::new()), None);
    }

    proptest! {
        /// Played in rounds where each replica takes what it contends for if still free and
        /// hands back what it releases, any start ends with every cloud held by exactly one
        /// live replica and none above the aim, within a bounded number of rounds.
        #[test]
        fn rounds_converge_to_a_balanced_exact_assignment(
            n_clouds in 0usize..12,
            n_members in 1usize..5,
            start in proptest::collection::vec(0usize..6, 0..12),
        ) {
            let clouds = clouds(n_clouds);
            let members: BTreeSet<String> = (0..n_members).map(|i| format!("r-{i}")).collect();
            let names: Vec<&String> = members.iter().collect();
            // A start where some clouds are held, some by replicas that are gone (not members).
            let mut holders: BTreeMap<String, String> = BTreeMap::new();
            for (cloud, who) in clouds.iter().zip(start) {
                if who < n_members {
                    holders.insert(cloud.clone(), names[who].clone());
                }
            }
            for _ in 0..(4 * n_clouds + 4) {
                for me in &members {
                    let decision = decide(View { me, clouds: &clouds, members: &members, holders: &holders });
                    if let Some(cloud) = decision.release {
                        holders.remove(&cloud);
                    }
                    for cloud in decision.contend {
                        holders.entry(cloud).or_insert_with(|| me.clone());
                    }
                }
            }
            let aim = aim(n_clouds, n_members);
            for cloud in &clouds {
                prop_assert!(holders.contains_key(cloud), "{cloud} held by nobody");
            }
            for member in &members {
                let held = holders.values().filter(|h| *h == member).count();
                prop_assert!(held <= aim, "{member} holds {held} > aim {aim}");
            }
        }
    }
}
