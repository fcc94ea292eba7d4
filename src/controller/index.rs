//! What the fleet's objects name, kept current from the fleet kinds' watch streams, so that
//! questions asked often are answered without reading every object of the cluster:
//!
//! - who names an IPv4 address (the guard rail "an address another object holds", at every
//!   reconcile: at 50,000 objects that scan was most of the operator's CPU);
//! - which instances a cloud's objects use (every instance poll and every refresh: at 10,000
//!   objects, collecting 20,000 engine names each poll was a fifth of the operator's CPU over a
//!   rollout, and the poll runs as often at every N);
//! - which of a cloud's VirtualServices may be in ILB mode (every pass of the cloud's
//!   balancers).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;

use kube::runtime::watcher::Event;
use kube::{Resource, ResourceExt};

use crate::api::{VipMode, VirtualService, VpcRoute};

/// An object of a fleet kind, as (kind, namespace, name).
pub type Key = (&'static str, String, String);

/// An instance, as (zone, name).
pub type Instance = (String, String);

/// What one object names.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Named {
    /// The IPv4 address it names, if any.
    pub address: Option<String>,
    /// The GcpCloud it references.
    pub cloud: String,
    /// The instances it uses (service engines, a next-hop instance), without repeats.
    pub instances: Vec<Instance>,
    /// Its `spec.vipMode` (VirtualServices only; `None` when unset: the cloud's default).
    pub vip_mode: Option<VipMode>,
    /// Whether the store holds only a stub of it (`controller::slim`).
    pub stub: bool,
}

/// What the objects of one cloud name, counted.
#[derive(Debug, Default)]
struct CloudUses {
    /// Each instance in use, with the number of objects using it.
    instances: BTreeMap<Instance, usize>,
    /// Objects whose `spec.vipMode` is ILB.
    ilb: BTreeSet<Key>,
    /// Objects (VirtualServices) with no `spec.vipMode`: in the cloud's default mode. Only
    /// counted (most objects say nothing): a cloud whose default is ILB finds them by a scan.
    defaulted: usize,
    /// Objects the store holds as stubs.
    stubs: usize,
}

impl CloudUses {
    fn is_empty(&self) -> bool {
        self.instances.is_empty() && self.ilb.is_empty() && self.defaulted == 0 && self.stubs == 0
    }
}

#[derive(Debug, Default)]
struct Entries {
    /// Usually one object per address: a short list, not a tree node per address.
    by_address: HashMap<String, Vec<Key>>,
    by_cloud: HashMap<String, CloudUses>,
    of: HashMap<Key, Named>,
    /// How many of `of` are stubs.
    stubs: usize,
}

impl Entries {
    /// Sets what `key` names; says whether the instances in use may have changed.
    fn set(&mut self, key: Key, named: Option<Named>) -> bool {
        let changed = match (self.of.get(&key), named.as_ref()) {
            (Some(old), Some(new)) => old.cloud != new.cloud || old.instances != new.instances,
            (None, None) => false,
            _ => true,
        };
        if let Some(old) = self.of.remove(&key) {
            if old.stub {
                self.stubs -= 1;
            }
            if let Some(address) = &old.address
                && let Some(keys) = self.by_address.get_mut(address)
            {
                keys.retain(|k| k != &key);
                if keys.is_empty() {
                    self.by_address.remove(address);
                }
            }
            if let Some(uses) = self.by_cloud.get_mut(&old.cloud) {
                for instance in &old.instances {
                    if let Some(count) = uses.instances.get_mut(instance) {
                        *count -= 1;
                        if *count == 0 {
                            uses.instances.remove(instance);
                        }
                    }
                }
                uses.ilb.remove(&key);
                if key.0 == VirtualService::KIND && !old.stub && old.vip_mode.is_none() {
                    uses.defaulted -= 1;
                }
                if old.stub {
                    uses.stubs -= 1;
                }
                if uses.is_empty() {
                    self.by_cloud.remove(&old.cloud);
                }
            }
        }
        let Some(named) = named else {
            return changed;
        };
        if let Some(address) = &named.address {
            self.by_address
                .entry(address.clone())
                .or_default()
                .push(key.clone());
        }
        let uses = self.by_cloud.entry(named.cloud.clone()).or_default();
        if named.stub {
            uses.stubs += 1;
            self.stubs += 1;
        }
        for instance in &named.instances {
            *uses.instances.entry(instance.clone()).or_default() += 1;
        }
        match (key.0 == VirtualService::KIND && !named.stub, named.vip_mode) {
            (true, Some(VipMode::Ilb)) => {
                uses.ilb.insert(key.clone());
            }
            (true, None) => uses.defaulted += 1,
            _ => {}
        }
        self.of.insert(key, named);
        changed
    }
}

#[derive(Debug, Default)]
struct State {
    /// One index per kind, so that a kind's re-list replaces only its own entries.
    kinds: HashMap<&'static str, Entries>,
    /// A kind's re-list being gathered (between Init and InitDone).
    relisting: HashMap<&'static str, Entries>,
    /// Moves whenever the instances in use may have changed.
    instances_version: u64,
}

/// The fleet's objects by what they name (see the module's documentation).
#[derive(Debug, Default)]
pub struct FleetIndex {
    state: Mutex<State>,
}

/// A fleet kind, as the index reads it.
pub trait Indexed: Resource<DynamicType = ()> {
    const KIND: &'static str;
    /// What the object names.
    fn named(&self) -> Named;
}

impl Indexed for VirtualService {
    const KIND: &'static str = crate::plan::virtualservice::KIND;
    fn named(&self) -> Named {
        Named {
            address: self
                .spec
                .vip
                .address
                .clone()
                .or_else(|| self.status.as_ref().and_then(|s| s.vip.clone())),
            cloud: self.spec.cloud_ref.clone(),
            instances: distinct(
                self.spec
                    .service_engines
                    .iter()
                    .map(|e| (e.zone.clone(), e.name.clone())),
            ),
            vip_mode: self.spec.vip_mode,
            stub: super::slim::is_stub(self),
        }
    }
}

impl Indexed for VpcRoute {
    const KIND: &'static str = crate::plan::vpcroute::KIND;
    fn named(&self) -> Named {
        Named {
            address: self.spec.dest_range.strip_suffix("/32").map(str::to_string),
            cloud: self.spec.cloud_ref.clone(),
            instances: distinct(
                self.spec
                    .next_hop
                    .instance
                    .iter()
                    .map(|i| (i.zone.clone(), i.name.clone())),
            ),
            vip_mode: None,
            stub: super::slim::is_stub(self),
        }
    }
}

fn distinct(instances: impl Iterator<Item = Instance>) -> Vec<Instance> {
    let mut instances: Vec<Instance> = instances.collect();
    instances.sort();
    instances.dedup();
    instances
}

fn key_of<K: Indexed>(object: &K) -> Key {
    (
        K::KIND,
        object.namespace().unwrap_or_default(),
        object.name_any(),
    )
}

impl FleetIndex {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Takes one event of a kind's watch stream (after its reflector applied it).
    pub fn observe<K: Indexed>(&self, event: &Event<K>) {
        let mut state = self.lock();
        match event {
            Event::Apply(object) => {
                let changed = state
                    .kinds
                    .entry(K::KIND)
                    .or_default()
                    .set(key_of(object), Some(object.named()));
                state.instances_version += u64::from(changed);
            }
            Event::Delete(object) => {
                let changed = state
                    .kinds
                    .entry(K::KIND)
                    .or_default()
                    .set(key_of(object), None);
                state.instances_version += u64::from(changed);
            }
            Event::Init => {
                state.relisting.insert(K::KIND, Entries::default());
            }
            Event::InitApply(object) => {
                state
                    .relisting
                    .entry(K::KIND)
                    .or_default()
                    .set(key_of(object), Some(object.named()));
            }
            Event::InitDone => {
                let fresh = state.relisting.remove(K::KIND).unwrap_or_default();
                state.kinds.insert(K::KIND, fresh);
                state.instances_version += 1;
            }
        }
    }

    /// The objects that name `address`, of every kind.
    pub fn naming(&self, address: &str) -> Vec<Key> {
        self.lock()
            .kinds
            .values()
            .filter_map(|entries| entries.by_address.get(address))
            .flatten()
            .cloned()
            .collect()
    }

    /// A number that moves whenever the instances in use (of any cloud) may have changed: what
    /// [`FleetIndex::instances_of`] said stays true while it stands still.
    pub fn instances_version(&self) -> u64 {
        self.lock().instances_version
    }

    /// The instances the objects of `cloud` use, of every kind: `(zone, name)`, sorted.
    pub fn instances_of(&self, cloud: &str) -> BTreeSet<Instance> {
        self.lock()
            .kinds
            .values()
            .filter_map(|entries| entries.by_cloud.get(cloud))
            .flat_map(|uses| uses.instances.keys().cloned())
            .collect()
    }

    /// How many objects of `kind` the store keeps: (whole, as stubs).
    pub fn stored(&self, kind: &str) -> (usize, usize) {
        self.lock()
            .kinds
            .get(kind)
            .map_or((0, 0), |e| (e.of.len() - e.stubs, e.stubs))
    }

    /// Whether the stores hold any object of `cloud` only as a stub (a cloud just acquired,
    /// until the re-list brings its objects whole).
    pub fn has_stubs(&self, cloud: &str) -> bool {
        self.lock()
            .kinds
            .values()
            .filter_map(|entries| entries.by_cloud.get(cloud))
            .any(|uses| uses.stubs > 0)
    }

    /// The VirtualServices of `cloud` that are in ILB mode when the cloud's default mode is
    /// `default`: those that say ILB, and with an ILB default those that say nothing.
    pub fn ilb_candidates(&self, cloud: &str, default: VipMode) -> Vec<Key> {
        let state = self.lock();
        let Some(uses) = state
            .kinds
            .get(VirtualService::KIND)
            .and_then(|entries| entries.by_cloud.get(cloud))
        else {
            return Vec::new();
        };
        let mut keys: Vec<Key> = uses.ilb.iter().cloned().collect();
        if default == VipMode::Ilb && uses.defaulted > 0 {
            let entries = &state.kinds[VirtualService::KIND];
            keys.extend(
                entries
                    .of
                    .iter()
                    .filter(|(_, n)| n.cloud == cloud && !n.stub && n.vip_mode.is_none())
                    .map(|(k, _)| k.clone()),
            );
        }
        keys
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

    fn names(index: &FleetIndex, address: &str) -> Vec<String> {
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
        let index = FleetIndex::default();
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

    fn engines(index: &FleetIndex, cloud: &str) -> Vec<String> {
        index
            .instances_of(cloud)
            .into_iter()
            .map(|(zone, name)| format!("{zone}/{name}"))
            .collect()
    }

    fn with(mut object: VirtualService, cloud: &str, engines: &[&str]) -> VirtualService {
        object.spec.cloud_ref = cloud.to_string();
        object.spec.service_engines = engines
            .iter()
            .map(|e| serde_json::from_value(json!({"name": e, "zone": "z"})).unwrap())
            .collect();
        object
    }

    #[test]
    fn instances_in_use_are_counted_per_cloud_and_follow_changes() {
        let index = FleetIndex::default();
        index.observe(&Event::Apply(with(
            vs("a", None, None),
            "c",
            &["se-1", "se-2"],
        )));
        index.observe(&Event::Apply(with(
            vs("b", None, None),
            "c",
            &["se-2", "se-2"],
        )));
        index.observe(&Event::Apply(with(vs("x", None, None), "other", &["se-9"])));
        index.observe(&Event::Apply(route("r", "10.1.0.0/24")));
        assert_eq!(engines(&index, "c"), ["z/se-1", "z/se-2"]);
        assert_eq!(engines(&index, "other"), ["z/se-9"]);
        // The version moves with the instances, not with anything else.
        let version = index.instances_version();
        index.observe(&Event::Apply(with(
            vs("a", Some("10.9.9.9"), None),
            "c",
            &["se-2", "se-1"],
        )));
        assert_eq!(
            index.instances_version(),
            version,
            "only the address changed"
        );
        index.observe(&Event::Apply(with(
            vs("a", None, None),
            "c",
            &["se-1", "se-2", "se-3"],
        )));
        assert!(index.instances_version() > version);
        index.observe(&Event::Apply(with(
            vs("a", None, None),
            "c",
            &["se-1", "se-2"],
        )));
        // se-2 stays while one object still names it; se-1 goes with its last user.
        index.observe(&Event::Delete(with(
            vs("a", None, None),
            "c",
            &["se-1", "se-2"],
        )));
        assert_eq!(
            engines(&index, "c"),
            ["z/se-1", "z/se-2"],
            "the VpcRoute r names se-1"
        );
        index.observe(&Event::Delete(route("r", "10.1.0.0/24")));
        assert_eq!(engines(&index, "c"), ["z/se-2"]);
        // An object that moves to another cloud takes its engines along.
        index.observe(&Event::Apply(with(vs("b", None, None), "other", &["se-2"])));
        assert!(engines(&index, "c").is_empty());
        assert_eq!(engines(&index, "other"), ["z/se-2", "z/se-9"]);
        // A re-list replaces the counts whole.
        index.observe(&Event::<VirtualService>::Init);
        index.observe(&Event::InitApply(with(vs("n", None, None), "c", &["se-3"])));
        index.observe(&Event::<VirtualService>::InitDone);
        assert_eq!(engines(&index, "c"), ["z/se-3"]);
        assert!(engines(&index, "other").is_empty());
    }

    #[test]
    fn ilb_candidates_follow_the_mode_and_the_default() {
        let index = FleetIndex::default();
        let mut ilb = with(vs("i", Some("10.0.0.5"), None), "c", &["se-1"]);
        ilb.spec.vip_mode = Some(VipMode::Ilb);
        let mut routes = with(vs("r", Some("10.0.0.6"), None), "c", &["se-1"]);
        routes.spec.vip_mode = Some(VipMode::Routes);
        let unset = with(vs("u", Some("10.0.0.7"), None), "c", &["se-1"]);
        for object in [&ilb, &routes, &unset] {
            index.observe(&Event::Apply(object.clone()));
        }
        let names = |default| {
            let mut names: Vec<String> = index
                .ilb_candidates("c", default)
                .into_iter()
                .map(|(_, _, name)| name)
                .collect();
            names.sort();
            names
        };
        assert_eq!(names(VipMode::Routes), ["i"]);
        assert_eq!(names(VipMode::Ilb), ["i", "u"]);
        assert!(index.ilb_candidates("other", VipMode::Ilb).is_empty());
        ilb.spec.vip_mode = Some(VipMode::Routes);
        index.observe(&Event::Apply(ilb));
        assert!(names(VipMode::Routes).is_empty());
    }
}
