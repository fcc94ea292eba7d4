//! A cloud's VIP pools at run time: which VirtualServices are pool members, the addresses they
//! hold (seeded from their status, so a restarted operator or a new leader hands out nothing
//! twice), and the signal that wakes the cloud's shared layout (`cloud/layout.rs`).

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::Mutex;

use ipnet::Ipv4Net;
use kube::ResourceExt;
use kube::runtime::reflector::Store;

use crate::api::{HaMode, VirtualService, VirtualServiceSpec};
use crate::plan::pool::{Allocations, PoolError};
use crate::plan::shared::Rule;
use crate::plan::virtualservice::{Hop, Opening};

/// What the quota forecast of the last layout pass found: (metric, what the objects need).
pub type Forecast = Vec<(String, f64)>;

/// The cloud's shared routes and rules as the inventory holds them (refreshed by every layout
/// pass): what a pool VIP selects now, and whether a rule opens it.
#[derive(Debug, Default, Clone)]
pub struct SharedView {
    /// (prefix, route, route name).
    pub routes: Vec<(Ipv4Net, Hop, String)>,
    /// (rule, rule name).
    pub rules: Vec<(Rule, String)>,
    /// Routes and rule ranges by (prefix length, network): a VIP is looked up once per length
    /// in use, not against every range (rules of a large pool hold thousands).
    index: std::sync::OnceLock<Index>,
}

#[derive(Debug, Default, Clone)]
struct Index {
    /// Prefix lengths in use, longest first.
    route_lengths: Vec<u8>,
    routes: HashMap<(u8, u32), Vec<usize>>,
    rule_lengths: Vec<u8>,
    rules: HashMap<(u8, u32), Vec<usize>>,
}

impl SharedView {
    /// A view of these routes and rules.
    pub fn new(routes: Vec<(Ipv4Net, Hop, String)>, rules: Vec<(Rule, String)>) -> Self {
        Self {
            routes,
            rules,
            index: std::sync::OnceLock::new(),
        }
    }

    fn index(&self) -> &Index {
        self.index.get_or_init(|| {
            let mut index = Index::default();
            for (i, (net, _, _)) in self.routes.iter().enumerate() {
                index
                    .routes
                    .entry((net.prefix_len(), u32::from(net.network())))
                    .or_default()
                    .push(i);
            }
            for (i, (rule, _)) in self.rules.iter().enumerate() {
                for net in &rule.ranges {
                    index
                        .rules
                        .entry((net.prefix_len(), u32::from(net.network())))
                        .or_default()
                        .push(i);
                }
            }
            let lengths = |keys: &HashMap<(u8, u32), Vec<usize>>| {
                let mut lengths: Vec<u8> = keys.keys().map(|k| k.0).collect();
                lengths.sort_unstable_by(|a, b| b.cmp(a));
                lengths.dedup();
                lengths
            };
            index.route_lengths = lengths(&index.routes);
            index.rule_lengths = lengths(&index.rules);
            index
        })
    }

    /// The route table, for `plan::shared::selected`.
    pub fn table(&self) -> Vec<(Ipv4Net, Hop)> {
        self.routes
            .iter()
            .map(|(n, h, _)| (*n, h.clone()))
            .collect()
    }

    /// Whether the shared resources carry `vip` exactly: it selects `hops` (when any engine
    /// runs) and a rule opens `opening` to it. With the names of what carries it.
    pub fn carries(&self, vip: Ipv4Addr, hops: &BTreeSet<Hop>, opening: &Opening) -> Carried {
        let index = self.index();
        let address = u32::from(vip);
        let masked = |len: u8| {
            if len == 0 {
                0
            } else {
                address & (u32::MAX << (32 - u32::from(len)))
            }
        };
        // The longest prefix that holds a route to it: Compute's first rule.
        let selected: &[usize] = index
            .route_lengths
            .iter()
            .find_map(|len| index.routes.get(&(*len, masked(*len))))
            .map_or(&[], Vec::as_slice);
        let selected_hops: BTreeSet<Hop> =
            selected.iter().map(|i| self.routes[*i].1.clone()).collect();
        let rule = index
            .rule_lengths
            .iter()
            .filter_map(|len| index.rules.get(&(*len, masked(*len))))
            .flatten()
            .map(|i| &self.rules[*i])
            .find(|(r, _)| &r.opening == opening)
            .map(|(_, name)| name.clone());
        let wanted_engines = crate::plan::shared::engines_at_best(hops);
        let reached = crate::plan::shared::engines_at_best(&selected_hops);
        Carried {
            exact: (hops.is_empty() || &selected_hops == hops) && rule.is_some(),
            serving: rule.is_some()
                && (hops.is_empty() || (!reached.is_empty() && reached.is_subset(&wanted_engines))),
            routes: selected.iter().map(|i| self.routes[*i].2.clone()).collect(),
            rule,
        }
    }
}

/// How the shared resources carry one VIP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Carried {
    /// Exactly as its own routes and rule would.
    pub exact: bool,
    /// Its ports open and its traffic on some of the engines that should carry it, none else:
    /// what a layout change in progress may leave for a moment (ECMP over fewer engines).
    pub serving: bool,
    /// The shared routes it selects.
    pub routes: Vec<String>,
    /// The shared rule that opens it.
    pub rule: Option<String>,
}

/// The pools of one cloud and who holds which address.
#[derive(Debug, Default)]
pub struct Pools {
    /// (name, block), as the cloud's spec lists them.
    pub pools: Vec<(String, Ipv4Net)>,
    allocations: Mutex<Option<Allocations>>,
    /// Wakes the shared layout: a member came, changed or went.
    pub wake: std::sync::Arc<tokio::sync::Notify>,
    /// What the objects of the cloud need of each resource quota, from the last layout pass.
    pub forecast: Mutex<Option<Forecast>>,
    /// The shared resources as the last layout pass saw them.
    pub view: std::sync::RwLock<std::sync::Arc<SharedView>>,
    /// Whether a layout pass has looked at the inventory since the engine started.
    pub viewed: std::sync::atomic::AtomicBool,
    /// The last error of a shared resource the layout needs (a quota, a refusal): what the
    /// VIPs waiting for it say.
    pub error: Mutex<Option<crate::gcp::GcpError>>,
}

/// How a VirtualService relates to the cloud's pools.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Membership {
    /// Not a pool VIP: its own routes and firewall rule.
    None,
    /// A VIP of this pool (allocated from it, or a fixed address inside it).
    Pool { name: String, cidr: Ipv4Net },
    /// `vip.allocate.pool` names a pool the cloud does not have.
    Missing(String),
}

/// The key an object holds its address under.
pub fn key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// The group of a VirtualService: VIPs of one group select the same routes while every engine
/// runs, and are placed side by side.
pub fn group(spec: &VirtualServiceSpec) -> String {
    let mut engines: Vec<String> = spec
        .service_engines
        .iter()
        .map(|e| format!("{}/{}", e.zone, e.name))
        .collect();
    if spec.mode == HaMode::ActiveActive {
        engines.sort();
    }
    format!(
        "{:?}/{}/{}",
        spec.mode,
        spec.route_priority,
        engines.join(",")
    )
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

impl Pools {
    /// The pools of a cloud's spec (CEL refuses malformed ones; any that slip through are
    /// left out).
    pub fn from_spec(spec: &crate::api::GcpCloudSpec) -> Self {
        Self {
            pools: spec
                .vip_pools
                .iter()
                .filter_map(|p| p.cidr.parse().ok().map(|cidr| (p.name.clone(), cidr)))
                .collect(),
            ..Self::default()
        }
    }

    /// The blocks, for the layout.
    pub fn blocks(&self) -> Vec<Ipv4Net> {
        self.pools.iter().map(|(_, cidr)| *cidr).collect()
    }

    /// Whether and where `spec`'s VIP is a pool VIP.
    pub fn membership(&self, spec: &VirtualServiceSpec) -> Membership {
        if let Some(pool) = spec.vip.allocate.as_ref().and_then(|a| a.pool.as_ref()) {
            return match self.pools.iter().find(|(name, _)| name == pool) {
                Some((name, cidr)) => Membership::Pool {
                    name: name.clone(),
                    cidr: *cidr,
                },
                None => Membership::Missing(pool.clone()),
            };
        }
        let fixed = spec
            .vip
            .address
            .as_deref()
            .and_then(|a| a.parse::<Ipv4Addr>().ok());
        match fixed.and_then(|ip| self.pools.iter().find(|(_, cidr)| cidr.contains(&ip))) {
            Some((name, cidr)) => Membership::Pool {
                name: name.clone(),
                cidr: *cidr,
            },
            None => Membership::None,
        }
    }

    /// Runs `work` on the allocations, seeding them first from the objects of `cloud` in
    /// `store`: the address each status shows (or each fixed address), so nothing already
    /// handed out is handed out again.
    fn with<R>(
        &self,
        cloud: &str,
        store: &Store<VirtualService>,
        work: impl FnOnce(&mut Allocations) -> R,
    ) -> R {
        let mut guard = lock(&self.allocations);
        let allocations = guard.get_or_insert_with(|| {
            let mut seeded = Allocations::default();
            for object in store.state() {
                if object.spec.cloud_ref != cloud || object.metadata.deletion_timestamp.is_some() {
                    continue;
                }
                let Membership::Pool { cidr, .. } = self.membership(&object.spec) else {
                    continue;
                };
                let address = object
                    .spec
                    .vip
                    .address
                    .clone()
                    .or_else(|| object.status.as_ref().and_then(|s| s.vip.clone()));
                if let Some(ip) = address
                    .and_then(|a| a.parse::<Ipv4Addr>().ok())
                    .filter(|ip| cidr.contains(ip))
                {
                    let key = key(&object.namespace().unwrap_or_default(), &object.name_any());
                    seeded.hold(&key, ip, &group(&object.spec));
                }
            }
            seeded
        });
        work(allocations)
    }

    /// The address of a pool member: a fixed one is held (false: another object holds it), an
    /// allocated one is kept or chosen.
    pub fn assign(
        &self,
        cloud: &str,
        store: &Store<VirtualService>,
        object: &VirtualService,
        pool: (&str, Ipv4Net),
    ) -> Result<Option<Ipv4Addr>, PoolError> {
        let key = key(&object.namespace().unwrap_or_default(), &object.name_any());
        let group = group(&object.spec);
        let fixed = object
            .spec
            .vip
            .address
            .as_deref()
            .and_then(|a| a.parse::<Ipv4Addr>().ok());
        self.with(cloud, store, |allocations| match fixed {
            Some(ip) => Ok(allocations.hold(&key, ip, &group).then_some(ip)),
            None => {
                let wanted = object
                    .status
                    .as_ref()
                    .and_then(|s| s.vip.as_deref())
                    .and_then(|a| a.parse().ok());
                allocations
                    .assign(pool.0, pool.1, &key, &group, wanted)
                    .map(Some)
            }
        })
    }

    /// The address an object holds.
    pub fn address_of(
        &self,
        cloud: &str,
        store: &Store<VirtualService>,
        key: &str,
    ) -> Option<Ipv4Addr> {
        self.with(cloud, store, |a| a.address_of(key))
    }

    /// An object gives its address back (it was deleted or left its pool).
    pub fn release(&self, cloud: &str, store: &Store<VirtualService>, key: &str) {
        let released = self.with(cloud, store, |a| {
            let held = a.address_of(key).is_some();
            a.release(key);
            held
        });
        if released {
            self.wake.notify_one();
        }
    }

    /// Released addresses no rule opens any more become free.
    pub fn settle(&self, still_open: impl Fn(Ipv4Addr) -> bool) {
        if let Some(allocations) = lock(&self.allocations).as_mut() {
            allocations.settle(still_open);
        }
    }

    /// The shared resources as the last layout pass saw them.
    pub fn view(&self) -> std::sync::Arc<SharedView> {
        match self.view.read() {
            Ok(guard) => std::sync::Arc::clone(&guard),
            Err(poisoned) => std::sync::Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Records what a layout pass saw.
    pub fn set_view(&self, view: std::sync::Arc<SharedView>) {
        match self.view.write() {
            Ok(mut guard) => *guard = view,
            Err(poisoned) => *poisoned.into_inner() = view,
        }
        self.viewed
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// The last error of a shared resource the layout needs.
    pub fn error(&self) -> Option<crate::gcp::GcpError> {
        lock(&self.error).clone()
    }

    /// The last quota forecast.
    pub fn forecast(&self) -> Option<Forecast> {
        lock(&self.forecast).clone()
    }

    /// Records a quota forecast.
    pub fn set_forecast(&self, forecast: Forecast) {
        *lock(&self.forecast) = Some(forecast);
    }
}

/// The subnetwork of the cloud's network that `pool` overlaps, as (name, range): a pool must
/// lie outside every subnetwork (Compute refuses a static route inside a subnet range).
pub fn overlapped_subnet(
    runtime: &super::context::CloudRuntime,
    pool: Ipv4Net,
) -> Option<(String, String)> {
    runtime
        .engine
        .inventory()
        .read(|s| s.subnets(&runtime.view.network))
        .into_iter()
        .find(|(_, range)| {
            range
                .parse::<Ipv4Net>()
                .is_ok_and(|r| r.contains(&pool) || pool.contains(&r))
        })
}
