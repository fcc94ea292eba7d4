//! Optimal route aggregation with don't-care addresses (ORTC: Draves, King, Venkatachary, Zill,
//! "Constructing Optimal IP Routing Tables", INFOCOM 1999), generalised to weighted labels.
//!
//! Every address in use inside a pool has a *label*: the exact set of routes (next hop and
//! priority) it must select. Compute selects, for a destination, the routes of the most specific
//! prefix that contains it (then the smallest priority value, then ECMP: reference §12), so a
//! prefix carries exactly one label (the routes placed on it) and an address gets the label of the
//! longest prefix of the table that contains it. Addresses of a pool no object uses (and VIPs
//! none of whose engines runs) may select anything; addresses outside the pools must select
//! nothing, so no prefix leaves a pool.
//!
//! [`compress`] returns a table of least total weight (a label weighs its number of routes), in one
//! bottom-up and one top-down pass over a binary trie of the addresses in use: linear in the
//! trie's size times the labels that stay useful at a node (ORTC's sets, here with their costs).
//!
//! Per node `n` the bottom-up pass keeps `f(n)`, the least cost of the subtree when nothing
//! useful is inherited from above, and for the labels `M` that make it cheaper when inherited,
//! `g(n, M) < f(n)`. Every other label has `g(n, M) = f(n)`. With children `c`:
//! `S(M) = Σ g(c, M)`, `f(n) = min(Σ f(c), min_M w(M) + S(M))`, and `g(n, M) = S(M)` for the
//! labels where that is below `f(n)`. A leaf in use with label `L` has `f = w(L)`, `g(L) = 0`;
//! a don't-care subtree costs 0 whatever it inherits.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// One route prefix of the table and the label (index into the caller's labels) it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Aggregate {
    pub prefix: Ipv4Net,
    pub label: usize,
}

const NONE: u32 = u32::MAX;

#[derive(Debug, Clone)]
struct Node {
    children: [u32; 2],
    /// The label of an address in use (leaves only); None for a don't-care leaf.
    label: Option<usize>,
    f: u64,
    /// (label, g) for the labels with g < f, sorted by label.
    helps: Vec<(usize, u64)>,
}

impl Node {
    fn new() -> Self {
        Self {
            children: [NONE, NONE],
            label: None,
            f: 0,
            helps: Vec::new(),
        }
    }
}

/// The trie of one pool.
struct Trie {
    pool: Ipv4Net,
    nodes: Vec<Node>,
}

impl Trie {
    fn build(pool: Ipv4Net, addresses: &[(Ipv4Addr, Option<usize>)]) -> Self {
        let mut trie = Trie {
            pool,
            nodes: vec![Node::new()],
        };
        let base = u32::from(pool.network());
        let depth = 32 - u32::from(pool.prefix_len());
        for &(address, label) in addresses {
            let Some(label) = label else {
                // A VIP none of whose engines runs: it may select anything (it has nowhere to go).
                continue;
            };
            if !pool.contains(&address) {
                continue;
            }
            let offset = u32::from(address) - base;
            let mut node = 0usize;
            for level in (0..depth).rev() {
                let bit = ((offset >> level) & 1) as usize;
                let child = trie.nodes[node].children[bit];
                node = if child == NONE {
                    trie.nodes.push(Node::new());
                    let index = trie.nodes.len() - 1;
                    trie.nodes[node].children[bit] = index as u32;
                    index
                } else {
                    child as usize
                };
            }
            // The first label given for an address wins; callers give each address once.
            if trie.nodes[node].label.is_none() {
                trie.nodes[node].label = Some(label);
            }
        }
        trie
    }

    /// Bottom-up: f and the helpful labels of every node.
    fn cost(&mut self, node: usize, weights: &[u64]) {
        let children = self.nodes[node].children;
        if children == [NONE, NONE] {
            let leaf = &mut self.nodes[node];
            match leaf.label {
                Some(label) => {
                    leaf.f = weights[label];
                    leaf.helps = vec![(label, 0)];
                }
                None => {
                    leaf.f = 0;
                    leaf.helps.clear();
                }
            }
            return;
        }
        for child in children.into_iter().filter(|c| *c != NONE) {
            self.cost(child as usize, weights);
        }
        let child = |c: u32| (c != NONE).then(|| &self.nodes[c as usize]);
        let (left, right) = (child(children[0]), child(children[1]));
        let f_of = |n: Option<&Node>| n.map_or(0, |n| n.f);
        let sum_f = f_of(left) + f_of(right);
        // S(M) for the labels that help a child: merge two sorted lists.
        let mut sums: Vec<(usize, u64)> = Vec::new();
        let empty = Vec::new();
        let (a, b) = (
            left.map_or(&empty, |n| &n.helps),
            right.map_or(&empty, |n| &n.helps),
        );
        let (mut i, mut j) = (0, 0);
        while i < a.len() || j < b.len() {
            let take_a = j >= b.len() || (i < a.len() && a[i].0 <= b[j].0);
            let take_b = i >= a.len() || (j < b.len() && b[j].0 <= a[i].0);
            let label = if take_a { a[i].0 } else { b[j].0 };
            let ga = if take_a { a[i].1 } else { f_of(left) };
            let gb = if take_b { b[j].1 } else { f_of(right) };
            sums.push((label, ga + gb));
            if take_a {
                i += 1;
            }
            if take_b {
                j += 1;
            }
        }
        let f = sums
            .iter()
            .map(|&(label, s)| weights[label] + s)
            .fold(sum_f, u64::min);
        sums.retain(|&(_, s)| s < f);
        let node = &mut self.nodes[node];
        node.f = f;
        node.helps = sums;
    }

    /// g(n, M): the cost of the subtree when M is inherited (f when M does not help).
    fn g(&self, node: u32, label: Option<usize>) -> u64 {
        if node == NONE {
            return 0;
        }
        let node = &self.nodes[node as usize];
        label
            .and_then(|label| {
                node.helps
                    .binary_search_by_key(&label, |h| h.0)
                    .ok()
                    .map(|i| node.helps[i].1)
            })
            .unwrap_or(node.f)
    }

    /// Top-down: places the routes of a least-cost table below `node` (prefix `net`) given the
    /// label it inherits.
    fn place(
        &self,
        node: u32,
        net: Ipv4Net,
        inherited: Option<usize>,
        weights: &[u64],
        out: &mut Vec<Aggregate>,
    ) {
        if node == NONE {
            return;
        }
        let n = &self.nodes[node as usize];
        if n.children == [NONE, NONE] {
            if let Some(label) = n.label
                && inherited != Some(label)
            {
                out.push(Aggregate { prefix: net, label });
            }
            return;
        }
        let target = self.g(node, inherited);
        let [left, right] = n.children;
        let keep = self.g(left, inherited) + self.g(right, inherited);
        // A label that helps a child and reaches the target here (see the module's recurrence).
        let mut route: Option<usize> = None;
        for label in self.nodes_helps(left).chain(self.nodes_helps(right)) {
            if Some(label) == inherited || route.is_some_and(|r| r <= label) {
                continue;
            }
            if weights[label] + self.g(left, Some(label)) + self.g(right, Some(label)) == target {
                route = Some(label);
            }
        }
        // Of two tables of equal weight, the one with the wider prefixes: a group growing inside
        // its block keeps its routes. Below an inherited label, adding nothing is as cheap.
        let chosen = match route {
            Some(label) if inherited.is_none() || keep != target => {
                out.push(Aggregate { prefix: net, label });
                Some(label)
            }
            _ => inherited,
        };
        let subnets: Vec<Ipv4Net> = net
            .subnets(net.prefix_len() + 1)
            .map(|s| s.collect())
            .unwrap_or_default();
        for (child, subnet) in [left, right].into_iter().zip(subnets) {
            self.place(child, subnet, chosen, weights, out);
        }
    }

    fn nodes_helps(&self, node: u32) -> impl Iterator<Item = usize> + '_ {
        (node != NONE)
            .then(|| self.nodes[node as usize].helps.iter().map(|h| h.0))
            .into_iter()
            .flatten()
    }
}

/// The least-weight table for `addresses` (address, label; None: it may select anything) inside
/// `pools` (which must not overlap). `weights[label]` is a label's cost (its number of routes).
/// Addresses outside every pool are left out: they need routes of their own.
pub fn compress(
    pools: &[Ipv4Net],
    addresses: &[(Ipv4Addr, Option<usize>)],
    weights: &[u64],
) -> Vec<Aggregate> {
    let mut by_pool: BTreeMap<Ipv4Net, Vec<(Ipv4Addr, Option<usize>)>> = BTreeMap::new();
    for &(address, label) in addresses {
        if let Some(pool) = pools.iter().find(|p| p.contains(&address)) {
            by_pool.entry(*pool).or_default().push((address, label));
        }
    }
    let mut out = Vec::new();
    for (pool, members) in by_pool {
        let mut trie = Trie::build(pool, &members);
        trie.cost(0, weights);
        trie.place(0, trie.pool, None, weights, &mut out);
    }
    out.sort();
    out
}

/// The label an address selects in `table`: that of the longest prefix containing it.
pub fn select(table: &[Aggregate], address: Ipv4Addr) -> Option<usize> {
    table
        .iter()
        .filter(|a| a.prefix.contains(&address))
        .max_by_key(|a| a.prefix.prefix_len())
        .map(|a| a.label)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn one_group_is_one_prefix_per_pool() {
        let pools = [net("10.100.0.0/24")];
        let addresses: Vec<_> = (1..40)
            .map(|i| (Ipv4Addr::new(10, 100, 0, i), Some(0)))
            .collect();
        let table = compress(&pools, &addresses, &[2]);
        assert_eq!(
            table,
            vec![Aggregate {
                prefix: pools[0],
                label: 0
            }]
        );
    }

    #[test]
    fn an_exception_inside_a_block_costs_its_own_routes() {
        let pools = [net("10.100.0.0/28")];
        let mut addresses: Vec<_> = (0..8)
            .map(|i| (Ipv4Addr::new(10, 100, 0, i), Some(0)))
            .collect();
        addresses.push((ip("10.100.0.9"), Some(1)));
        // Label 0 weighs 2 routes, label 1 weighs 1: the pool carries 0, the /32 carries 1.
        let table = compress(&pools, &addresses, &[2, 1]);
        assert_eq!(table.len(), 2);
        for (address, label) in &addresses {
            assert_eq!(select(&table, *address), *label, "{address}");
        }
        assert_eq!(
            table
                .iter()
                .map(|a| a.prefix.prefix_len())
                .collect::<Vec<_>>(),
            vec![28, 32]
        );
    }

    #[test]
    fn heavier_labels_take_the_wide_prefix() {
        // Three addresses of a light label, one of a heavy one: the heavy label is placed once
        // on the pool and the light ones get their own prefixes, since 4 + 1 + 1 < 1 + 4 … the
        // least weight wins whatever the counts.
        let pools = [net("10.0.0.0/30")];
        let addresses = vec![
            (ip("10.0.0.0"), Some(0)),
            (ip("10.0.0.1"), Some(0)),
            (ip("10.0.0.2"), Some(0)),
            (ip("10.0.0.3"), Some(1)),
        ];
        let weights = [1, 4];
        let table = compress(&pools, &addresses, &weights);
        let total: u64 = table.iter().map(|a| weights[a.label]).sum();
        assert_eq!(total, 5, "{table:?}");
        for (address, label) in &addresses {
            assert_eq!(select(&table, *address), *label);
        }
    }

    #[test]
    fn nothing_leaves_a_pool_and_dont_cares_cost_nothing() {
        let pools = [net("10.1.0.0/29"), net("10.2.0.0/29")];
        let addresses = vec![
            (ip("10.1.0.3"), Some(0)),
            (ip("10.1.0.4"), None),
            (ip("10.9.9.9"), Some(0)),
        ];
        let table = compress(&pools, &addresses, &[3]);
        assert_eq!(
            table,
            vec![Aggregate {
                prefix: pools[0],
                label: 0
            }]
        );
    }

    /// The least weight by exhaustive search: every prefix of the pool either carries no route
    /// or one of the labels. Only for tiny pools.
    fn exhaustive(pool: Ipv4Net, addresses: &[(Ipv4Addr, Option<usize>)], weights: &[u64]) -> u64 {
        let prefixes: Vec<Ipv4Net> = (pool.prefix_len()..=32)
            .flat_map(|len| pool.subnets(len).unwrap())
            .collect();
        let choices = weights.len() + 1;
        let mut best = u64::MAX;
        let mut assignment = vec![0usize; prefixes.len()];
        loop {
            let table: Vec<Aggregate> = prefixes
                .iter()
                .zip(&assignment)
                .filter(|(_, c)| **c > 0)
                .map(|(p, c)| Aggregate {
                    prefix: *p,
                    label: c - 1,
                })
                .collect();
            let cost: u64 = table.iter().map(|a| weights[a.label]).sum();
            if cost < best
                && addresses
                    .iter()
                    .all(|(a, l)| l.is_none() || select(&table, *a) == *l)
            {
                best = cost;
            }
            let mut i = 0;
            loop {
                if i == assignment.len() {
                    return best;
                }
                assignment[i] += 1;
                if assignment[i] < choices {
                    break;
                }
                assignment[i] = 0;
                i += 1;
            }
        }
    }

    type Fleet = (Ipv4Net, Vec<(Ipv4Addr, Option<usize>)>, Vec<u64>);

    fn fleet(prefix_len: u8, labels: usize) -> impl Strategy<Value = Fleet> {
        let size = 1u32 << (32 - prefix_len);
        (
            0u32..256,
            proptest::collection::vec(1u64..5, labels),
            proptest::collection::btree_map(
                0..size,
                proptest::option::weighted(0.9, 0..labels),
                0..=size as usize,
            ),
        )
            .prop_map(move |(block, weights, members)| {
                let pool =
                    Ipv4Net::new(Ipv4Addr::from((10 << 24) | (block << 16)), prefix_len).unwrap();
                let base = u32::from(pool.network());
                let addresses = members
                    .into_iter()
                    .map(|(offset, label)| (Ipv4Addr::from(base + offset), label))
                    .collect();
                (pool, addresses, weights)
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        /// Exact for every address in use, never outside the pool, and as light as an
        /// exhaustive search finds (pools of 4 addresses, 3 labels: 4^7 tables each).
        #[test]
        fn least_weight_and_exact_on_tiny_pools((pool, addresses, weights) in fleet(30, 3)) {
            let table = compress(&[pool], &addresses, &weights);
            for aggregate in &table {
                prop_assert!(pool.contains(&aggregate.prefix), "{aggregate:?} leaves {pool}");
            }
            for (address, label) in &addresses {
                if label.is_some() {
                    prop_assert_eq!(select(&table, *address), *label, "{}", address);
                }
            }
            let cost: u64 = table.iter().map(|a| weights[a.label]).sum();
            prop_assert_eq!(cost, exhaustive(pool, &addresses, &weights));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Exact on larger pools, and no prefix twice.
        #[test]
        fn exact_on_larger_pools((pool, addresses, weights) in fleet(24, 6)) {
            let table = compress(&[pool], &addresses, &weights);
            let mut prefixes: Vec<_> = table.iter().map(|a| a.prefix).collect();
            prefixes.dedup();
            prop_assert_eq!(prefixes.len(), table.len());
            for (address, label) in &addresses {
                if label.is_some() {
                    prop_assert_eq!(select(&table, *address), *label, "{}", address);
                }
            }
            let own_routes: u64 = addresses.iter().filter_map(|(_, l)| l.map(|l| weights[l])).sum();
            let cost: u64 = table.iter().map(|a| weights[a.label]).sum();
            prop_assert!(cost <= own_routes);
        }
    }
}
