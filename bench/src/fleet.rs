//! The fleet: the emulator world (service-engine instances), the VirtualService manifests, and
//! which objects a stopped engine concerns. Pure: no I/O.

use serde_json::{Value, json};

pub const PROJECT: &str = "bench-project";
const ZONES: [&str; 3] = ["us-central1-a", "us-central1-b", "us-central1-c"];
/// Instances fit in the subnet 10.128.0.0/20 (4096 addresses).
const MAX_ENGINES: usize = 4000;

/// The shape of one fleet: `objects` VirtualServices over `engines` service engines, each engine
/// serving about five objects (so stopping 100 engines moves about 500 routes whatever N is).
#[derive(Debug, Clone, Copy)]
pub struct Fleet {
    pub objects: usize,
    pub engines: usize,
}

/// One service-engine instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Engine {
    pub name: String,
    pub zone: &'static str,
}

impl Fleet {
    pub fn new(objects: usize) -> Self {
        let engines = (objects * 2 / 5).clamp(200, MAX_ENGINES);
        Self { objects, engines }
    }

    pub fn engine(&self, index: usize) -> Engine {
        Engine {
            name: format!("se-{index:04}"),
            zone: ZONES[index % ZONES.len()],
        }
    }

    /// The two engines of object `i`: `i mod E` and its opposite half `i mod E + E/2`, so no
    /// object has both engines among the first E/2 (the ones failover scenarios stop).
    pub fn engines_of(&self, i: usize) -> [usize; 2] {
        let first = i % self.engines;
        [first, (first + self.engines / 2) % self.engines]
    }

    /// The world file: one project with quotas large enough for the fleet, and its engines.
    pub fn world(&self) -> String {
        let mut text = format!(
            "projects:
  - id: {PROJECT}
    quotas: {{ROUTES: 1000000, STATIC_ROUTES_PER_NETWORK: 1000000, FIREWALLS: 1000000}}
    networks:
      - name: default
        subnetworks:
          - {{name: default, region: us-central1, ipCidrRange: 10.128.0.0/20}}
    instances:
"
        );
        for j in 0..self.engines {
            let engine = self.engine(j);
            let host = j + 10;
            text.push_str(&format!(
                "      - {{name: {}, zone: {}, networkIP: 10.128.{}.{}, canIpForward: true}}\n",
                engine.name,
                engine.zone,
                host / 256,
                host % 256
            ));
        }
        text
    }

    pub fn object_name(i: usize) -> String {
        format!("vs-{i:05}")
    }

    /// VirtualService `i`: a /32 VIP outside the subnet, one port, ActiveActive over two engines
    /// (two routes and one firewall rule in GCP).
    pub fn virtual_service(&self, i: usize, cloud: &str) -> Value {
        let vip_index = i + 1;
        let vip = format!(
            "10.{}.{}.{}",
            64 + (vip_index >> 16),
            (vip_index >> 8) & 255,
            vip_index & 255
        );
        let engines: Vec<Value> = self
            .engines_of(i)
            .iter()
            .map(|j| {
                let engine = self.engine(*j);
                json!({"name": engine.name, "zone": engine.zone})
            })
            .collect();
        json!({
            "apiVersion": "adc.dev/v1alpha1",
            "kind": "VirtualService",
            "metadata": {"name": Self::object_name(i)},
            "spec": {
                "cloudRef": cloud,
                "vip": {"address": vip},
                "ports": [{"port": 443}],
                "sourceRanges": ["10.0.0.0/8"],
                "mode": "ActiveActive",
                "serviceEngines": engines,
            }
        })
    }

    /// Engines a failover of `k` stops: spread over the first half, so each object loses at most
    /// one of its two engines.
    pub fn stopped(&self, k: usize) -> Vec<Engine> {
        let half = self.engines / 2;
        let k = k.min(half);
        (0..k).map(|m| self.engine(m * half / k.max(1))).collect()
    }

    /// Routes of the converged fleet whose next hop is one of `engines`.
    pub fn routes_to(&self, engines: &[Engine]) -> usize {
        (0..self.objects)
            .flat_map(|i| self.engines_of(i))
            .filter(|j| engines.contains(&self.engine(*j)))
            .count()
    }

    /// GCP writes a converged fleet needs: two routes and one firewall rule per object.
    pub fn writes(&self) -> usize {
        self.objects * 3
    }
}

/// A list filter matching routes whose next hop is one of `engines`.
pub fn next_hop_filter(engines: &[Engine]) -> String {
    let names: Vec<&str> = engines.iter().map(|e| e.name.as_str()).collect();
    format!("nextHopInstance eq .*/instances/({})", names.join("|"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_engine_serves_about_five_objects_and_no_object_loses_both() {
        let fleet = Fleet::new(5000);
        assert_eq!(fleet.engines, 2000);
        let stopped: Vec<usize> = fleet
            .stopped(100)
            .iter()
            .map(|e| e.name[3..].parse().unwrap_or(usize::MAX))
            .collect();
        let mut affected_routes = 0;
        for i in 0..fleet.objects {
            let hit = fleet
                .engines_of(i)
                .iter()
                .filter(|j| stopped.contains(j))
                .count();
            assert!(hit <= 1, "object {i} loses both engines");
            affected_routes += hit;
        }
        assert_eq!(affected_routes, 500);
        assert_eq!(fleet.routes_to(&fleet.stopped(100)), 500);
    }

    #[test]
    fn vips_are_distinct_and_outside_the_subnet() {
        let fleet = Fleet::new(10_000);
        let mut vips = std::collections::BTreeSet::new();
        for i in 0..fleet.objects {
            let vs = fleet.virtual_service(i, "c");
            let vip = vs["spec"]["vip"]["address"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            assert!(!vip.starts_with("10.128."));
            assert!(vips.insert(vip));
        }
    }
}
