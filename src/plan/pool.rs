//! VIP pools: which address of a pool a VirtualService gets. Addresses of VIPs that select the
//! same routes (a *group*: the same engines, mode and priority) sit together in aligned blocks,
//! so that route aggregation (`aggregate`) covers a group with a prefix or a few.
//!
//! A group grows inside its *territory*: the widest aligned block around one of its addresses
//! that holds no address of another group. A new group (or one whose territories are full) starts
//! at the lowest address of the widest aligned block nobody uses: groups split the pool in
//! halves, quarters and so on, each with room to grow in place. Pure data and functions: the
//! controller keeps one [`Allocations`] per cloud and seeds it from the objects' status.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// Why no address could be given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    /// Every usable address of the pool is taken.
    #[error("VIP pool '{pool}' ({cidr}) has no free address ({used} in use)")]
    Exhausted {
        pool: String,
        cidr: Ipv4Net,
        used: usize,
    },
}

/// The first and last usable offsets of a pool: its network and broadcast addresses are left
/// out (clients and firewalls treat them specially), except in a /31 or /32.
fn usable(pool: Ipv4Net) -> (u32, u32) {
    let start = u32::from(pool.network());
    let end = u32::from(pool.broadcast());
    if pool.prefix_len() >= 31 {
        (start, end)
    } else {
        (start + 1, end - 1)
    }
}

/// The aligned block of `len` bits of prefix around `address`, as (first, last).
fn block(address: u32, len: u8) -> (u32, u32) {
    let size = 1u64 << (32 - u32::from(len));
    let first = (u64::from(address) / size) * size;
    (first as u32, (first + size - 1) as u32)
}

/// Picks an address of `pool` for a VIP of a group: `used` maps every address in use (of any
/// pool) to its holder, `mine` tells the group's holders, `own` holds the group's addresses and
/// `hint` the last address given to it (the next one up is tried first: a group growing in
/// its block costs a lookup, not a scan). None when the pool is full.
pub fn choose<G>(
    pool: Ipv4Net,
    used: &BTreeMap<u32, G>,
    mine: impl Fn(&G) -> bool,
    own: &BTreeSet<u32>,
    hint: Option<u32>,
) -> Option<Ipv4Addr> {
    let (lo, hi) = usable(pool);
    let foreign_in = |first: u32, last: u32| used.range(first..=last).any(|(_, g)| !mine(g));
    if let Some(last) = hint.filter(|h| own.contains(h) && *h >= lo && *h < hi) {
        let next = last + 1;
        let len = (last ^ next).leading_zeros() as u8;
        if !used.contains_key(&next) && len >= pool.prefix_len() {
            let (first, end) = block(last, len);
            if !foreign_in(first, end) {
                return Some(Ipv4Addr::from(next));
            }
        }
    }
    // Inside a territory of the group: the lowest free address of the first territory with room.
    let mut seen_until: Option<u32> = None;
    for &address in own.range(lo..=hi) {
        if seen_until.is_some_and(|until| address <= until) {
            continue;
        }
        // The territory grows from the address by buddies while no other group is inside.
        let (mut first, mut last) = (address, address);
        let mut len = 32u8;
        while len > pool.prefix_len() {
            let (f, l) = block(address, len - 1);
            let (from, to) = if f == first {
                (last + 1, l)
            } else {
                (f, first - 1)
            };
            if foreign_in(from, to) {
                break;
            }
            (first, last, len) = (f, l, len - 1);
        }
        seen_until = Some(last);
        if let Some(free) = lowest_free(used, first.max(lo), last.min(hi)) {
            return Some(Ipv4Addr::from(free));
        }
    }
    // Otherwise the start of the widest aligned block nobody uses.
    let mut best: Option<(u32, u8)> = None;
    let mut cursor = lo;
    let network = u32::from(pool.network());
    let broadcast = u32::from(pool.broadcast());
    let mut consider = |from: u32, to: u32| {
        if from > to {
            return;
        }
        // The pool's network address is left out, but the block it starts is still aligned.
        let aligned_from = if from == lo { network } else { from };
        let aligned_to = if to == hi { broadcast } else { to };
        if let Some((start, len)) =
            widest_aligned(aligned_from, aligned_to).map(|(s, l)| (s.max(from), l))
            && best.is_none_or(|(_, best_len)| len < best_len)
        {
            best = Some((start, len));
        }
    };
    for (&address, _) in used.range(lo..=hi) {
        if address > cursor {
            consider(cursor, address - 1);
        }
        cursor = address.saturating_add(1);
        if address == u32::MAX {
            return best.map(|(start, _)| Ipv4Addr::from(start));
        }
    }
    if cursor <= hi {
        consider(cursor, hi);
    }
    best.map(|(start, _)| Ipv4Addr::from(start))
}

/// The lowest address in first..=last that `used` does not hold.
fn lowest_free<G>(used: &BTreeMap<u32, G>, first: u32, last: u32) -> Option<u32> {
    let mut expected = first;
    for (&address, _) in used.range(first..=last) {
        if address != expected {
            return Some(expected);
        }
        if address == last {
            return None;
        }
        expected = address + 1;
    }
    (expected <= last).then_some(expected)
}

/// The widest aligned block inside from..=to, as (start, prefix length); the lowest of equals.
fn widest_aligned(from: u32, to: u32) -> Option<(u32, u8)> {
    (0..=32u8).find_map(|len| {
        let size = 1u64 << (32 - u32::from(len));
        let start = u64::from(from).div_ceil(size) * size;
        (start + size - 1 <= u64::from(to)).then_some((start as u32, len))
    })
}

/// Who holds an address.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Holder {
    object: String,
    group: String,
}

/// The addresses of one cloud's pools: who holds which, and which were released but may still
/// be open in a firewall rule (they are not handed out again until [`Allocations::settle`]).
#[derive(Debug, Default, Clone)]
pub struct Allocations {
    by_address: BTreeMap<u32, Holder>,
    by_object: HashMap<String, u32>,
    released: BTreeSet<u32>,
    /// Each group's addresses, and the last one given to it.
    by_group: HashMap<String, BTreeSet<u32>>,
    last_given: HashMap<String, u32>,
}

/// The holder group of a released address: no group matches it.
const RELEASED: &str = "";

impl Allocations {
    /// Records that `object` holds `address` (seeding from status, or a fixed address inside a
    /// pool). False when another object holds it already: the first holder keeps it.
    pub fn hold(&mut self, object: &str, address: Ipv4Addr, group: &str) -> bool {
        let key = u32::from(address);
        match self.by_address.get(&key) {
            Some(holder) if holder.object != object && holder.group != RELEASED => return false,
            _ => {}
        }
        if let Some(previous) = self.by_object.get(object).copied()
            && previous != key
        {
            self.release_address(previous);
        }
        self.released.remove(&key);
        if let Some(previous) = self.by_address.insert(
            key,
            Holder {
                object: object.to_string(),
                group: group.to_string(),
            },
        ) {
            self.forget_in_group(&previous.group, key);
        }
        self.by_group
            .entry(group.to_string())
            .or_default()
            .insert(key);
        self.by_object.insert(object.to_string(), key);
        true
    }

    fn forget_in_group(&mut self, group: &str, address: u32) {
        if let Some(addresses) = self.by_group.get_mut(group) {
            addresses.remove(&address);
            if addresses.is_empty() {
                self.by_group.remove(group);
                self.last_given.remove(group);
            }
        }
    }

    /// The address `object` holds, if any.
    pub fn address_of(&self, object: &str) -> Option<Ipv4Addr> {
        self.by_object.get(object).map(|a| Ipv4Addr::from(*a))
    }

    /// The object holding `address`, if any.
    pub fn holder_of(&self, address: Ipv4Addr) -> Option<&str> {
        self.by_address
            .get(&u32::from(address))
            .filter(|h| h.group != RELEASED)
            .map(|h| h.object.as_str())
    }

    /// An address of `pool` for `object`: the one it holds, else `wanted` (the address its status
    /// shows) when free, else a new one chosen by [`choose`].
    pub fn assign(
        &mut self,
        pool_name: &str,
        pool: Ipv4Net,
        object: &str,
        group: &str,
        wanted: Option<Ipv4Addr>,
    ) -> Result<Ipv4Addr, PoolError> {
        if let Some(held) = self.address_of(object)
            && pool.contains(&held)
        {
            self.hold(object, held, group);
            return Ok(held);
        }
        if let Some(wanted) = wanted.filter(|w| pool.contains(w))
            && !self.released.contains(&u32::from(wanted))
            && self.hold(object, wanted, group)
        {
            return Ok(wanted);
        }
        let empty = BTreeSet::new();
        let own = self.by_group.get(group).unwrap_or(&empty);
        let hint = self.last_given.get(group).copied();
        match choose(pool, &self.by_address, |h| h.group == group, own, hint) {
            Some(address) => {
                self.hold(object, address, group);
                self.last_given
                    .insert(group.to_string(), u32::from(address));
                Ok(address)
            }
            None => Err(PoolError::Exhausted {
                pool: pool_name.to_string(),
                cidr: pool,
                used: self
                    .by_address
                    .range(usable(pool).0..=usable(pool).1)
                    .count(),
            }),
        }
    }

    /// `object` gives its address back; it stays out of use until [`Allocations::settle`].
    pub fn release(&mut self, object: &str) {
        if let Some(address) = self.by_object.remove(object) {
            self.release_address(address);
        }
    }

    fn release_address(&mut self, address: u32) {
        if let Some(holder) = self.by_address.get(&address) {
            let group = holder.group.clone();
            self.forget_in_group(&group, address);
        }
        self.by_address.insert(
            address,
            Holder {
                object: String::new(),
                group: RELEASED.to_string(),
            },
        );
        self.released.insert(address);
    }

    /// Released addresses that no GCP resource opens any more become free again.
    pub fn settle(&mut self, still_open: impl Fn(Ipv4Addr) -> bool) {
        let free: Vec<u32> = self
            .released
            .iter()
            .copied()
            .filter(|a| !still_open(Ipv4Addr::from(*a)))
            .collect();
        for address in free {
            self.released.remove(&address);
            self.by_address.remove(&address);
        }
    }

    /// Addresses in use (held, not released).
    pub fn len(&self) -> usize {
        self.by_object.len()
    }

    /// Whether no address is held.
    pub fn is_empty(&self) -> bool {
        self.by_object.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn groups_split_the_pool_and_grow_in_place() {
        let pool = net("10.100.0.0/24");
        let mut a = Allocations::default();
        let first = a.assign("p", pool, "x1", "A", None).unwrap();
        assert_eq!(first, "10.100.0.1".parse::<Ipv4Addr>().unwrap());
        let other = a.assign("p", pool, "y1", "B", None).unwrap();
        assert_eq!(other, "10.100.0.128".parse::<Ipv4Addr>().unwrap());
        let third = a.assign("p", pool, "z1", "C", None).unwrap();
        assert_eq!(third, "10.100.0.64".parse::<Ipv4Addr>().unwrap());
        // A grows after its first address, B after its own.
        assert_eq!(
            a.assign("p", pool, "x2", "A", None).unwrap(),
            "10.100.0.2".parse::<Ipv4Addr>().unwrap()
        );
        assert_eq!(
            a.assign("p", pool, "y2", "B", None).unwrap(),
            "10.100.0.129".parse::<Ipv4Addr>().unwrap()
        );
        // Stable: asking again gives the same address.
        assert_eq!(a.assign("p", pool, "x1", "A", None).unwrap(), first);
    }

    #[test]
    fn status_addresses_are_kept_and_released_ones_wait() {
        let pool = net("10.100.0.0/29");
        let mut a = Allocations::default();
        let wanted: Ipv4Addr = "10.100.0.5".parse().unwrap();
        assert_eq!(a.assign("p", pool, "x", "A", Some(wanted)).unwrap(), wanted);
        a.release("x");
        assert_eq!(a.holder_of(wanted), None);
        // Still open in a firewall rule: not handed out.
        assert_ne!(a.assign("p", pool, "y", "A", Some(wanted)).unwrap(), wanted);
        a.settle(|_| false);
        assert_eq!(a.assign("p", pool, "z", "A", Some(wanted)).unwrap(), wanted);
    }

    #[test]
    fn a_full_pool_says_so_and_fixed_addresses_are_avoided() {
        let pool = net("10.100.0.0/30");
        let mut a = Allocations::default();
        assert!(a.hold("fixed", "10.100.0.1".parse().unwrap(), "A"));
        assert!(!a.hold("other", "10.100.0.1".parse().unwrap(), "A"));
        assert_eq!(
            a.assign("p", pool, "x", "A", None).unwrap(),
            "10.100.0.2".parse::<Ipv4Addr>().unwrap()
        );
        let err = a.assign("p", pool, "y", "A", None).unwrap_err();
        assert!(err.to_string().contains("no free address"), "{err}");
    }

    proptest! {
        /// Never two objects on one address, always inside the pool's usable range, and a
        /// fleet placed group by group in random order needs few prefixes per group.
        #[test]
        fn allocations_are_unique_and_clustered(order in proptest::collection::vec(0usize..6, 1..300)) {
            let pool = net("10.64.0.0/20");
            let mut a = Allocations::default();
            let mut seen = BTreeSet::new();
            let mut per_group: BTreeMap<usize, Vec<Ipv4Addr>> = BTreeMap::new();
            for (i, group) in order.iter().enumerate() {
                let address = a.assign("p", pool, &format!("o{i}"), &format!("g{group}"), None).unwrap();
                prop_assert!(pool.contains(&address));
                prop_assert!(address != pool.network() && address != pool.broadcast());
                prop_assert!(seen.insert(address), "{} handed out twice", address);
                per_group.entry(*group).or_default().push(address);
            }
            // Every group lives in one aligned block that no other group enters.
            for (group, addresses) in &per_group {
                let lo = addresses.iter().min().unwrap();
                let hi = addresses.iter().max().unwrap();
                let span = u32::from(*lo) ^ u32::from(*hi);
                let len = span.leading_zeros() as u8;
                let cover = Ipv4Net::new(*lo, len).unwrap().trunc();
                for (other, others) in &per_group {
                    if other != group {
                        prop_assert!(others.iter().all(|o| !cover.contains(o)), "group {} in {}", other, cover);
                    }
                }
            }
        }
    }
}
