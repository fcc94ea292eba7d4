//! The shared layout of a cloud's VIP pools: the fewest routes and firewall rules that carry
//! every pool VIP exactly as its own routes and rule would. Routes come from [`aggregate`]
//! (each distinct set of routes a VIP must select is a label weighing its number of routes);
//! firewall rules are shared by the VIPs that ask for the same opening, their
//! `destinationRanges` covering exactly those VIPs. The resources belong to the cloud (their
//! marker names the GcpCloud), not to one object.
//!
//! Also here, as pure functions of an inventory's routes and rules: what a VIP selects now
//! ([`selected`]) and whether a rule opens it ([`opens`]), which the controller uses to know
//! when the shared layout carries a VIP (and an object may drop its own routes, or be Ready).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde_json::json;

use super::aggregate::{self, Aggregate};
use super::names::{content_hash, object_hash, resource_name};
use super::owner::Owner;
use super::resource::Target;
use super::virtualservice::{Hop, Opening};
use super::{CloudView, DesiredResource};

/// The kind in the marker of the cloud's shared resources.
pub const KIND: &str = "GcpCloud";

/// Compute's limit on the ranges of one firewall rule (emulator/README.md, "Firewall rule
/// size": 5,000, a model value from Compute's published figures for firewall policy rules).
pub const MAX_RANGES_PER_RULE: usize = 5000;

/// A VIP of a pool and what it must get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub vip: Ipv4Addr,
    /// The routes it must select (empty: no engine runs; it may select anything in the pool).
    pub hops: BTreeSet<Hop>,
    pub opening: Opening,
}

/// The owner of a cloud's shared resources.
pub fn owner(cloud: &CloudView) -> Owner {
    Owner::new(&cloud.cluster_id, &cloud.cloud, KIND, "", &cloud.cloud)
}

/// The prefix of every shared resource's name: `{resource_prefix}{cloud hash}-`.
pub fn name_prefix(cloud: &CloudView) -> String {
    owner(cloud).name_prefix(&cloud.resource_prefix)
}

/// The shared layout: aggregated routes, then firewall rules.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Layout {
    pub desired: Vec<DesiredResource>,
    /// The route table as (prefix, hop), for [`selected`].
    pub table: Vec<(Ipv4Net, Hop)>,
}

/// Plans the shared resources of `members` inside `pools`.
pub fn layout(cloud: &CloudView, pools: &[Ipv4Net], members: &[Member]) -> Layout {
    let owner = owner(cloud);
    let description = owner.description();
    let object = object_hash(&cloud.cluster_id, KIND, "", &cloud.cloud);
    let network = format!("global/networks/{}", cloud.network);

    // Labels: the distinct sets of routes, in a stable order.
    let labels: Vec<&BTreeSet<Hop>> = members
        .iter()
        .map(|m| &m.hops)
        .filter(|h| !h.is_empty())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let weights: Vec<u64> = labels.iter().map(|l| l.len() as u64).collect();
    let addresses: Vec<(Ipv4Addr, Option<usize>)> = members
        .iter()
        .map(|m| (m.vip, labels.iter().position(|l| **l == m.hops)))
        .collect();
    let table = aggregate::compress(pools, &addresses, &weights);

    let mut desired = Vec::new();
    let mut routes = Vec::new();
    for Aggregate { prefix, label } in table {
        for hop in labels[label] {
            let mut body = json!({
                "description": description,
                "network": network,
                "destRange": prefix.to_string(),
                "priority": hop.priority,
                "nextHopInstance": format!("projects/{}/zones/{}/instances/{}", cloud.project, hop.zone, hop.instance),
            });
            let name = resource_name(&cloud.resource_prefix, &object, &content_hash(&body));
            body["name"] = json!(name);
            desired.push(DesiredResource {
                target: Target::route(name),
                body,
            });
            routes.push((prefix, hop.clone()));
        }
    }

    let mut by_opening: BTreeMap<&Opening, Vec<u32>> = BTreeMap::new();
    for member in members {
        by_opening
            .entry(&member.opening)
            .or_default()
            .push(u32::from(member.vip));
    }
    for (opening, mut vips) in by_opening {
        vips.sort_unstable();
        vips.dedup();
        let cover = exact_cover(&vips);
        for chunk in cover.chunks(MAX_RANGES_PER_RULE) {
            let ranges: Vec<String> = chunk.iter().map(ToString::to_string).collect();
            let mut body = json!({
                "description": description,
                "network": network,
                "direction": "INGRESS",
                "priority": 1000,
                "sourceRanges": opening.sources,
                "destinationRanges": ranges,
                "allowed": opening.allowed_json(),
            });
            let name = resource_name(
                &cloud.resource_prefix,
                &object,
                &format!("fw{}", &content_hash(&body)[..8]),
            );
            body["name"] = json!(name);
            desired.push(DesiredResource {
                target: Target::firewall(name),
                body,
            });
        }
    }
    Layout {
        desired,
        table: routes,
    }
}

/// Of the routes and rules a layout still lacks, those to insert now: every rule, and the
/// routes of the longest prefix length among the missing ones. A route at a prefix changes what
/// every VIP under it selects until the longer prefixes the layout puts under it exist: made
/// longest first, each VIP selects at every moment its old routes, its new ones, or (at a
/// prefix both layouts share) some of both, never a neighbour's.
pub fn next_inserts<'a>(missing: &[&'a DesiredResource]) -> Vec<&'a DesiredResource> {
    let length = |d: &DesiredResource| {
        d.body["destRange"]
            .as_str()
            .and_then(|r| r.parse::<Ipv4Net>().ok())
            .map(|n| n.prefix_len())
    };
    let longest = missing.iter().filter_map(|d| length(d)).max();
    missing
        .iter()
        .copied()
        .filter(|d| match length(d) {
            Some(len) => Some(len) == longest,
            None => true,
        })
        .collect()
}

/// The fewest prefixes that cover exactly `addresses` (sorted, unique): runs of consecutive
/// addresses split into aligned blocks.
pub fn exact_cover(addresses: &[u32]) -> Vec<Ipv4Net> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < addresses.len() {
        // The run of consecutive addresses starting at i.
        let mut j = i;
        while j + 1 < addresses.len() && addresses[j + 1] == addresses[j].wrapping_add(1) {
            j += 1;
        }
        let (mut start, end) = (u64::from(addresses[i]), u64::from(addresses[j]));
        while start <= end {
            // The widest aligned block that starts at `start` and ends by `end`.
            let mut size = if start == 0 {
                1u64 << 32
            } else {
                1u64 << start.trailing_zeros().min(32)
            };
            while start + size - 1 > end {
                size >>= 1;
            }
            let len = 32 - size.trailing_zeros() as u8;
            if let Ok(net) = Ipv4Net::new(Ipv4Addr::from(start as u32), len) {
                out.push(net);
            }
            start += size;
        }
        i = j + 1;
    }
    out
}

/// The routes `vip` selects in `table` under Compute's rule: those of the longest prefix that
/// contains it (every priority: the smallest value carries traffic, the others stand by).
pub fn selected(table: &[(Ipv4Net, Hop)], vip: Ipv4Addr) -> BTreeSet<Hop> {
    let longest = table
        .iter()
        .filter(|(prefix, _)| prefix.contains(&vip))
        .map(|(prefix, _)| prefix.prefix_len())
        .max();
    table
        .iter()
        .filter(|(prefix, _)| Some(prefix.prefix_len()) == longest && prefix.contains(&vip))
        .map(|(_, hop)| hop.clone())
        .collect()
}

/// The engines that carry `vip`'s traffic in `table`: the selected routes of the smallest
/// priority value (ECMP among them).
pub fn carrying(table: &[(Ipv4Net, Hop)], vip: Ipv4Addr) -> BTreeSet<(String, String)> {
    engines_at_best(&selected(table, vip))
}

/// The engines of the smallest priority value among `hops`.
pub fn engines_at_best(hops: &BTreeSet<Hop>) -> BTreeSet<(String, String)> {
    let best = hops.iter().map(|h| h.priority).min();
    hops.iter()
        .filter(|h| Some(h.priority) == best)
        .map(|h| (h.zone.clone(), h.instance.clone()))
        .collect()
}

/// A firewall rule as the shared layout writes it: what it opens, and to which ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub opening: Opening,
    pub ranges: Vec<Ipv4Net>,
}

/// Whether one of `rules` opens exactly what `opening` asks for to `vip`.
pub fn opens(rules: &[Rule], vip: Ipv4Addr, opening: &Opening) -> bool {
    rules
        .iter()
        .any(|r| &r.opening == opening && r.ranges.iter().any(|n| n.contains(&vip)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cloud() -> CloudView {
        CloudView {
            cluster_id: "c1".into(),
            cloud: "prod".into(),
            project: "demo-project".into(),
            network_project: "demo-project".into(),
            network: "default".into(),
            region: "us-central1".into(),
            resource_prefix: "adc-".into(),
        }
    }

    fn hop(engine: usize, priority: u32) -> Hop {
        Hop {
            zone: "us-central1-a".into(),
            instance: format!("se-{engine}"),
            priority,
        }
    }

    fn opening(template: usize) -> Opening {
        Opening {
            allowed: vec![("tcp".into(), vec![(443 + template).to_string()])],
            sources: vec!["10.0.0.0/8".into()],
        }
    }

    fn table_of(layout: &Layout) -> Vec<(Ipv4Net, Hop)> {
        layout.table.clone()
    }

    fn rules_of(layout: &Layout) -> Vec<Rule> {
        layout
            .desired
            .iter()
            .filter(|d| d.target.collection == super::super::resource::Collection::Firewalls)
            .map(|d| Rule {
                opening: Opening {
                    allowed: d.body["allowed"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|a| {
                            (
                                a["IPProtocol"].as_str().unwrap().to_string(),
                                a["ports"]
                                    .as_array()
                                    .unwrap()
                                    .iter()
                                    .map(|p| p.as_str().unwrap().to_string())
                                    .collect(),
                            )
                        })
                        .collect(),
                    sources: d.body["sourceRanges"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|s| s.as_str().unwrap().to_string())
                        .collect(),
                },
                ranges: d.body["destinationRanges"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| r.as_str().unwrap().parse().unwrap())
                    .collect(),
            })
            .collect()
    }

    #[test]
    fn covers_are_exact_and_few() {
        let a = |s: &str| u32::from(s.parse::<Ipv4Addr>().unwrap());
        let addresses = [
            a("10.0.0.1"),
            a("10.0.0.2"),
            a("10.0.0.3"),
            a("10.0.0.4"),
            a("10.0.0.9"),
        ];
        let cover: Vec<String> = exact_cover(&addresses)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            cover,
            ["10.0.0.1/32", "10.0.0.2/31", "10.0.0.4/32", "10.0.0.9/32"]
        );
        assert!(exact_cover(&[]).is_empty());
    }

    #[test]
    fn a_pair_of_engines_is_two_routes_and_one_rule() {
        let pool: Ipv4Net = "10.100.0.0/24".parse().unwrap();
        let members: Vec<Member> = (1..=50)
            .map(|i| Member {
                vip: Ipv4Addr::new(10, 100, 0, i),
                hops: [hop(1, 2000), hop(2, 2000)].into(),
                opening: opening(0),
            })
            .collect();
        let layout = layout(&cloud(), &[pool], &members);
        let routes: Vec<_> = layout
            .desired
            .iter()
            .filter(|d| d.body.get("destRange").is_some())
            .collect();
        assert_eq!(routes.len(), 2);
        assert!(
            routes
                .iter()
                .all(|r| r.body["destRange"] == "10.100.0.0/24")
        );
        let rules = rules_of(&layout);
        assert_eq!(rules.len(), 1);
        assert_eq!(
            rules[0]
                .ranges
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            [
                "10.100.0.1/32",
                "10.100.0.2/31",
                "10.100.0.4/30",
                "10.100.0.8/29",
                "10.100.0.16/28",
                "10.100.0.32/28",
                "10.100.0.48/31",
                "10.100.0.50/32"
            ]
        );
        for d in &layout.desired {
            assert!(
                d.target.name.starts_with(&name_prefix(&cloud())),
                "{}",
                d.target.name
            );
            assert!(d.target.name.len() <= 63);
            assert!(
                d.body["description"]
                    .as_str()
                    .unwrap()
                    .contains("adc.dev/owner=c1/prod/GcpCloud//prod")
            );
        }
        let again = super::layout(&cloud(), &[pool], &members);
        assert_eq!(layout, again, "deterministic");
    }

    /// A random fleet: members on random addresses of a /26 pool, each on a random pair or
    /// trio of 6 engines, ActiveActive or ActiveStandby, with one of 3 openings.
    fn fleet() -> impl Strategy<Value = Vec<(u32, Vec<usize>, bool, usize)>> {
        proptest::collection::btree_map(
            1u32..63,
            (
                proptest::sample::subsequence((0..6).collect::<Vec<_>>(), 1..=3).prop_shuffle(),
                proptest::bool::weighted(0.2),
                0usize..3,
            ),
            0..40,
        )
        .prop_map(|m| m.into_iter().map(|(a, (e, s, o))| (a, e, s, o)).collect())
    }

    /// The members of a fleet with some engines down.
    fn members(fleet: &[(u32, Vec<usize>, bool, usize)], down: &BTreeSet<usize>) -> Vec<Member> {
        fleet
            .iter()
            .map(|(offset, engines, standby, template)| {
                let mut hops = BTreeSet::new();
                for engine in engines.iter().filter(|e| !down.contains(e)) {
                    let priority = if *standby && !hops.is_empty() {
                        2001
                    } else {
                        2000
                    };
                    hops.insert(hop(*engine, priority));
                }
                Member {
                    vip: Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 100, 0, 0)) + offset),
                    hops,
                    opening: opening(*template),
                }
            })
            .collect()
    }

    fn exact(layout: &Layout, members: &[Member], pool: Ipv4Net) -> Result<(), TestCaseError> {
        let table = table_of(layout);
        for (prefix, _) in &table {
            prop_assert!(pool.contains(prefix), "{prefix} leaves the pool");
        }
        let rules = rules_of(layout);
        for member in members {
            if !member.hops.is_empty() {
                prop_assert_eq!(
                    &selected(&table, member.vip),
                    &member.hops,
                    "{}",
                    member.vip
                );
            }
            prop_assert!(opens(&rules, member.vip, &member.opening));
        }
        // No rule opens a port to an address whose object did not ask for it.
        for rule in &rules {
            for range in &rule.ranges {
                for address in range.hosts().chain([range.network(), range.broadcast()]) {
                    let asked = members
                        .iter()
                        .any(|m| m.vip == address && m.opening == rule.opening);
                    prop_assert!(asked, "{} opened to {}", range, address);
                }
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        /// Every VIP selects exactly its routes, nothing leaves the pool, rules are exact; an
        /// engine stop withdrawn from the old table (before any re-layout) leaves every VIP on
        /// exactly its remaining engines; and while the old and the new layout both exist (make
        /// before break) every VIP reaches some of its engines and only engines it had or has.
        #[test]
        fn aggregated_layouts_keep_every_vip_exact(fleet in fleet(), dead in 0usize..6, moved in 0usize..40) {
            let pool: Ipv4Net = "10.100.0.0/26".parse().unwrap();
            let before = members(&fleet, &BTreeSet::new());
            let old = layout(&cloud(), &[pool], &before);
            exact(&old, &before, pool)?;

            // Failover: the dead engine's routes go at once, nothing else changes.
            let withdrawn: Vec<(Ipv4Net, Hop)> = old.table.iter().filter(|(_, h)| h.instance != format!("se-{dead}")).cloned().collect();
            // Exactly what its own /32 routes would carry after the same withdrawal.
            for member in &before {
                let own: BTreeSet<Hop> = member.hops.iter().filter(|h| h.instance != format!("se-{dead}")).cloned().collect();
                if !own.is_empty() {
                    prop_assert_eq!(carrying(&withdrawn, member.vip), engines_at_best(&own), "{} after se-{} stopped", member.vip, dead);
                }
            }
            let after = members(&fleet, &[dead].into());
            // The re-layout, made before the old one breaks: a deletion and a move too.
            let mut changed = fleet.clone();
            if !changed.is_empty() {
                let i = moved % changed.len();
                if moved % 2 == 0 { changed.remove(i); } else { changed[i].1.reverse(); changed[i].2 = !changed[i].2; }
            }
            let next_members = members(&changed, &[dead].into());
            let new = layout(&cloud(), &[pool], &next_members);
            exact(&new, &next_members, pool)?;
            // Route by route, as the layout task sends them: the missing ones in rounds of
            // next_inserts (each round done before the next), then the old ones deleted one by
            // one; every VIP is checked after every single change.
            let check = |state: &[(Ipv4Net, Hop)], step: &str| -> Result<(), TestCaseError> {
                for member in &next_members {
                    if member.hops.is_empty() { continue; }
                    let had = after.iter().find(|m| m.vip == member.vip).map(|m| m.hops.clone()).unwrap_or_default();
                    let allowed: BTreeSet<(String, String)> = had.iter().chain(&member.hops).map(|h| (h.zone.clone(), h.instance.clone())).collect();
                    let reached = carrying(state, member.vip);
                    prop_assert!(!reached.is_empty(), "{} unrouted {}", member.vip, step);
                    prop_assert!(reached.is_subset(&allowed), "{} reaches {:?}, not in {:?}, {}", member.vip, reached, allowed, step);
                }
                Ok(())
            };
            let route_of = |d: &DesiredResource| -> Option<(Ipv4Net, Hop)> {
                let prefix = d.body["destRange"].as_str()?.parse().ok()?;
                let link = d.body["nextHopInstance"].as_str()?;
                let parts: Vec<&str> = link.split('/').collect();
                Some((prefix, Hop {
                    zone: parts[parts.len() - 3].to_string(),
                    instance: parts[parts.len() - 1].to_string(),
                    priority: d.body["priority"].as_u64()? as u32,
                }))
            };
            let mut state = withdrawn.clone();
            loop {
                let missing: Vec<&DesiredResource> = new.desired.iter()
                    .filter(|d| route_of(d).is_some_and(|r| !state.contains(&r)))
                    .collect();
                if missing.is_empty() { break; }
                for d in next_inserts(&missing) {
                    state.push(route_of(d).unwrap());
                    check(&state, "while the new layout is made")?;
                }
            }
            let stale: Vec<(Ipv4Net, Hop)> = state.iter().filter(|r| !new.table.contains(r)).cloned().collect();
            for route in stale {
                state.retain(|r| r != &route);
                check(&state, "while the old layout goes")?;
            }
        }
    }
}
