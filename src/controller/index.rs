//! Who names which IPv4 address, kept current from the fleet kinds' watch streams: the guard
//! rail "an address another object holds" asks it for the few objects that name an address,
//! instead of reading every object of the cluster at every reconcile (at 50,000 objects that
//! scan was most of the operator's CPU).

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use kube::runtime::watcher::Event;
use kube::{Resource, ResourceExt};

use crate::api::{VirtualService, VpcRoute};

/// An object of a fleet kind, as (kind, namespace, name).
pub type Key = (&'static str, String, String);

/// Objects by the IPv4 address they name: a VirtualService by its VIP (`spec.vip.address`, else
/// `status.vip`), a VpcRoute by the address of a `/32` destination.
#[derive(Debug, Default)]
pub struct AddressIndex {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct Entries {
    by_address: HashMap<String, BTreeSet<Key>>,
    of: HashMap<Key, String>,
}

impl Entries {
    fn set(&mut self, key: Key, address: Option<String>) {
        if let Some(old) = self.of.remove(&key)
            && let Some(keys) = self.by_address.get_mut(&old)
        {
            keys.remove(&key);
            if keys.is_empty() {
                self.by_address.remove(&old);
            }
        }
        if let Some(address) = address {
            self.by_address
                .entry(address.clone())
                .or_default()
                .insert(key.clone());
            self.of.insert(key, address);
        }
    }
}

#[derive(Debug, Default)]
struct State {
    /// One index per kind, so that a kind's re-list replaces only its own entries.
    kinds: HashMap<&'static str, Entries>,
    /// A kind's re-list being gathered (between Init and InitDone).
    relisting: HashMap<&'static str, Entries>,
}

/// What a fleet kind names in the index.
pub trait Addressed: Resource<DynamicType = ()> {
    const KIND: &'static str;
    /// The address the object names, if any.
    fn address(&self) -> Option<String>;
}

impl Addressed for VirtualService {
    const KIND: &'static str = crate::plan::virtualservice::KIND;
    fn address(&self) -> Option<String> {
        self.spec
            .vip
            .address
            .clone()
            .or_else(|| self.status.as_ref().and_then(|s| s.vip.clone()))
    }
}

impl Addressed for VpcRoute {
    const KIND: &'static str = crate::plan::vpcroute::KIND;
    fn address(&self) -> Option<String> {
        self.spec.dest_range.strip_suffix("/32").map(str::to_string)
    }
}

fn key_of<K: Addressed>(object: &K) -> Key {
    (
        K::KIND,
        object.namespace().unwrap_or_default(),
        object.name_any(),
    )
}

impl AddressIndex {
    /// Takes one event of a kind's watch stream (after its reflector applied it).
    pub fn observe<K: Addressed>(&self, event: &Event<K>) {
        let mut state = match self.state.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        match event {
            Event::Apply(object) => state
                .kinds
                .entry(K::KIND)
                .or_default()
                .set(key_of(object), object.address()),
            Event::Delete(object) => state
                .kinds
                .entry(K::KIND)
                .or_default()
                .set(key_of(object), None),
            Event::Init => {
                state.relisting.insert(K::KIND, Entries::default());
            }
            Event::InitApply(object) => state
                .relisting
                .entry(K::KIND)
                .or_default()
                .set(key_of(object), object.address()),
            Event::InitDone => {
                let fresh = state.relisting.remove(K::KIND).unwrap_or_default();
                state.kinds.insert(K::KIND, fresh);
            }
        }
    }

    /// The objects that name `address`, of every kind.
    pub fn naming(&self, address: &str) -> Vec<Key> {
        let state = match self.state.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        state
            .kinds
            .values()
            .filter_map(|entries| entries.by_address.get(address))
            .flatten()
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vs(name: &str, address: Option<&str>, status_vip: Option<&str>) -> VirtualService {
        let mut vip = json!({});
        if let Some(a) = address {
            vip["address"] = json!(a);
        } else {
            vip["allocate"] = json!({"pool": "p"});
        }
        let mut object = json!({
            "apiVersion": "adc.dev/v1alpha1", "kind": "VirtualService",
            "metadata": {"name": name, "namespace": "ns"},
            "spec": {"cloudRef": "c", "vip": vip, "ports": [{"port": 443}],
                     "sourceRanges": ["10.0.0.0/8"],
                     "serviceEngines": [{"name": "se-1", "zone": "z"}]},
        });
        if let Some(v) = status_vip {
            object["status"] = json!({"vip": v});
        }
        serde_json::from_value(object).unwrap()
    }

    fn route(name: &str, dest: &str) -> VpcRoute {
        serde_json::from_value(json!({
            "apiVersion": "adc.dev/v1alpha1", "kind": "VpcRoute",
            "metadata": {"name": name, "namespace": "ns"},
            "spec": {"cloudRef": "c", "destRange": dest,
                     "nextHop": {"instance": {"name": "se-1", "zone": "z"}}},
        }))
        .unwrap()
    }

    fn names(index: &AddressIndex, address: &str) -> Vec<String> {
        let mut names: Vec<String> = index
            .naming(address)
            .into_iter()
            .map(|(kind, _, name)| format!("{kind}/{name}"))
            .collect();
        names.sort();
        names
    }

    #[test]
    fn the_index_follows_applies_deletes_and_relists() {
        let index = AddressIndex::default();
        index.observe(&Event::Apply(vs("a", Some("10.1.0.1"), None)));
        index.observe(&Event::Apply(vs("b", None, Some("10.1.0.1"))));
        index.observe(&Event::Apply(route("r", "10.1.0.1/32")));
        index.observe(&Event::Apply(route("wide", "10.1.0.0/24")));
        assert_eq!(
            names(&index, "10.1.0.1"),
            ["VirtualService/a", "VirtualService/b", "VpcRoute/r"]
        );
        // A move and a delete leave no stale entry.
        index.observe(&Event::Apply(vs("a", Some("10.1.0.2"), None)));
        index.observe(&Event::Delete(route("r", "10.1.0.1/32")));
        assert_eq!(names(&index, "10.1.0.1"), ["VirtualService/b"]);
        assert_eq!(names(&index, "10.1.0.2"), ["VirtualService/a"]);
        // A re-list of one kind replaces that kind's entries only, at its end.
        index.observe(&Event::<VirtualService>::Init);
        index.observe(&Event::InitApply(vs("c", Some("10.1.0.2"), None)));
        index.observe(&Event::Apply(route("r2", "10.1.0.2/32")));
        assert_eq!(
            names(&index, "10.1.0.2"),
            ["VirtualService/a", "VpcRoute/r2"],
            "the old list serves until the new one is complete"
        );
        index.observe(&Event::<VirtualService>::InitDone);
        assert_eq!(
            names(&index, "10.1.0.2"),
            ["VirtualService/c", "VpcRoute/r2"]
        );
        assert!(names(&index, "10.1.0.1").is_empty());
    }
}
