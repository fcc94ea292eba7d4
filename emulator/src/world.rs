//! The world file: YAML that seeds the emulated cloud (projects, networks, subnetworks,
//! instances, quotas, rate limits, service accounts). A public interface: documented in
//! emulator/README.md; unknown keys are refused with their line number.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use serde::Deserialize;

use crate::ipnet::Cidr;
use crate::model::{BusyBehavior, Quotas, RateLimits};
use crate::names::valid_name;

/// The whole world file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct World {
    /// GCP projects.
    #[serde(default)]
    pub projects: Vec<ProjectSpec>,
    /// Service accounts whose JWT assertions /token accepts.
    #[serde(default)]
    pub service_accounts: Vec<ServiceAccountSpec>,
}

/// One project.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProjectSpec {
    /// Project id, e.g. `demo-project`.
    pub id: String,
    /// Resource quotas (defaults: the model values of docs/compute-api.md §11).
    #[serde(default)]
    pub quotas: Quotas,
    /// Per-minute API rate quotas, enforced by `--profile gcp`.
    #[serde(default)]
    pub rate_limits: RateLimits,
    /// Shared VPC: the host project whose networks this (service) project uses. A service
    /// project has no networks of its own; its instances' `network`/`subnetwork` name the host's.
    #[serde(default)]
    pub network_project: Option<String>,
    /// VPC networks.
    #[serde(default)]
    pub networks: Vec<NetworkSpec>,
    /// VM instances (service engines, gateways).
    #[serde(default)]
    pub instances: Vec<InstanceSpec>,
}

/// One VPC network.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkSpec {
    pub name: String,
    #[serde(default)]
    pub subnetworks: Vec<SubnetworkSpec>,
    /// Mutations (route and firewall inserts, deletes, patches) the network runs at once;
    /// absent = the `--network-concurrency` flag (unlimited by default).
    #[serde(default)]
    pub mutation_concurrency: Option<u32>,
    /// What happens to a mutation while the network is at its concurrency: `queue` or `refuse`;
    /// absent = the `--network-busy` flag.
    #[serde(default)]
    pub busy_behavior: Option<BusyBehavior>,
}

/// One subnetwork.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SubnetworkSpec {
    pub name: String,
    pub region: String,
    pub ip_cidr_range: String,
}

/// One VM instance.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InstanceSpec {
    pub name: String,
    pub zone: String,
    /// Network name (default `default`).
    #[serde(default = "default_network")]
    pub network: String,
    /// Subnetwork name; default: the network's subnetwork in the zone's region.
    #[serde(default)]
    pub subnetwork: Option<String>,
    /// Primary internal IP; default: the next free address of the subnetwork.
    #[serde(default, rename = "networkIP")]
    pub network_ip: Option<String>,
    /// `RUNNING` (default) or `TERMINATED`.
    #[serde(default = "default_status")]
    pub status: String,
    #[serde(default)]
    pub can_ip_forward: bool,
    #[serde(default)]
    pub tags: Vec<String>,
}

fn default_network() -> String {
    "default".into()
}

fn default_status() -> String {
    "RUNNING".into()
}

/// A service account key that /token accepts.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceAccountSpec {
    pub client_email: String,
    pub public_key_pem: String,
}

/// Why a world file was refused.
#[derive(Debug, thiserror::Error)]
pub enum WorldError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: String,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

/// The region of a zone: `us-central1-a` → `us-central1`.
pub fn region_of_zone(zone: &str) -> &str {
    zone.rsplit_once('-').map_or(zone, |(region, _)| region)
}

impl World {
    /// Reads and validates a world file.
    pub fn load(path: &std::path::Path) -> Result<World, WorldError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| WorldError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::parse(&text, &shown)
    }

    /// Parses and validates world YAML; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<World, WorldError> {
        let world: World = serde_yaml::from_str(text).map_err(|source| WorldError::Parse {
            path: origin.to_string(),
            source,
        })?;
        world.validate().map_err(|message| WorldError::Invalid {
            path: origin.to_string(),
            message,
        })?;
        Ok(world)
    }

    /// The project whose networks `project` uses: its Shared VPC host, or itself.
    pub fn network_owner<'a>(&'a self, project: &'a ProjectSpec) -> &'a ProjectSpec {
        project
            .network_project
            .as_deref()
            .and_then(|host| self.projects.iter().find(|p| p.id == host))
            .unwrap_or(project)
    }

    fn validate(&self) -> Result<(), String> {
        let mut project_ids = HashSet::new();
        for (p, project) in self.projects.iter().enumerate() {
            if project.id.is_empty() || !project_ids.insert(project.id.as_str()) {
                return Err(format!(
                    "projects[{p}].id: '{}' is empty or repeated",
                    project.id
                ));
            }
        }
        for (p, project) in self.projects.iter().enumerate() {
            let at = format!("projects[{p}]");
            if let Some(host) = &project.network_project {
                let Some(host_spec) = self.projects.iter().find(|h| &h.id == host) else {
                    return Err(format!(
                        "{at}.networkProject: no project '{host}' in this world"
                    ));
                };
                if host == &project.id {
                    return Err(format!(
                        "{at}.networkProject: a project cannot be its own Shared VPC host"
                    ));
                }
                if let Some(other) = &host_spec.network_project {
                    return Err(format!(
                        "{at}.networkProject: '{host}' is itself a service project of '{other}'"
                    ));
                }
                if !project.networks.is_empty() {
                    return Err(format!(
                        "{at}.networks: a Shared VPC service project (networkProject: {host}) \
                         has no networks of its own"
                    ));
                }
            }
            let mut networks = HashSet::new();
            for (n, network) in project.networks.iter().enumerate() {
                let at = format!("{at}.networks[{n}]");
                if !valid_name(&network.name) || !networks.insert(network.name.as_str()) {
                    return Err(format!(
                        "{at}.name: '{}' is not a valid resource name or is repeated",
                        network.name
                    ));
                }
                if network.mutation_concurrency == Some(0) {
                    return Err(format!("{at}.mutationConcurrency: must be at least 1"));
                }
                let mut subnets = HashSet::new();
                for (s, subnet) in network.subnetworks.iter().enumerate() {
                    let at = format!("{at}.subnetworks[{s}]");
                    if !valid_name(&subnet.name)
                        || !subnets.insert((subnet.region.as_str(), subnet.name.as_str()))
                    {
                        return Err(format!(
                            "{at}.name: '{}' is not a valid resource name or is repeated",
                            subnet.name
                        ));
                    }
                    match Cidr::parse(&subnet.ip_cidr_range) {
                        Some(cidr) if cidr.addr.is_ipv4() => {}
                        _ => {
                            return Err(format!(
                                "{at}.ipCidrRange: '{}' is not an IPv4 CIDR range",
                                subnet.ip_cidr_range
                            ));
                        }
                    }
                }
            }
            let mut instances = HashSet::new();
            for (i, instance) in project.instances.iter().enumerate() {
                let at = format!("{at}.instances[{i}]");
                if !valid_name(&instance.name)
                    || !instances.insert((instance.zone.as_str(), instance.name.as_str()))
                {
                    return Err(format!(
                        "{at}.name: '{}' is not a valid resource name or is repeated in its zone",
                        instance.name
                    ));
                }
                if !instance.zone.contains('-') || !valid_name(&instance.zone) {
                    return Err(format!("{at}.zone: '{}' is not a zone", instance.zone));
                }
                let owner = self.network_owner(project);
                if !owner.networks.iter().any(|n| n.name == instance.network) {
                    return Err(if owner.id == project.id {
                        format!(
                            "{at}.network: no network '{}' in this project",
                            instance.network
                        )
                    } else {
                        format!(
                            "{at}.network: no network '{}' in the host project '{}'",
                            instance.network, owner.id
                        )
                    });
                }
                if !matches!(instance.status.as_str(), "RUNNING" | "TERMINATED") {
                    return Err(format!(
                        "{at}.status: '{}' must be RUNNING or TERMINATED",
                        instance.status
                    ));
                }
                if let Some(ip) = &instance.network_ip
                    && ip.parse::<Ipv4Addr>().is_err()
                {
                    return Err(format!("{at}.networkIP: '{ip}' is not an IPv4 address"));
                }
            }
        }
        for (a, account) in self.service_accounts.iter().enumerate() {
            if !account.client_email.contains('@') {
                return Err(format!(
                    "serviceAccounts[{a}].clientEmail: '{}' is not an e-mail address",
                    account.client_email
                ));
            }
            if !account.public_key_pem.contains("PUBLIC KEY-----") {
                return Err(format!(
                    "serviceAccounts[{a}].publicKeyPem: not a PEM public key"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
projects:
  - id: demo-project
    quotas: {ROUTES: 2500, FIREWALLS: 1000, STATIC_ADDRESSES: 200, FORWARDING_RULES: 100}
    rateLimits: {readsPerMinute: 1500, writesPerMinute: 1500, operationReadsPerMinute: 3000}
    networks:
      - name: default
        subnetworks:
          - {name: default, region: us-central1, ipCidrRange: 10.128.0.0/20}
    instances:
      - {name: se-1, zone: us-central1-a, network: default, networkIP: 10.128.0.10, status: RUNNING, canIpForward: true}
"#;

    #[test]
    fn parses_the_documented_example() {
        let world = World::parse(EXAMPLE, "example").unwrap();
        let project = &world.projects[0];
        assert_eq!(project.quotas.routes, 2500);
        assert_eq!(
            project.quotas.static_routes_per_network, 200,
            "model default"
        );
        assert_eq!(project.rate_limits.operation_reads_per_minute, 3000);
        assert_eq!(project.rate_limits.regional_writes_per_minute, 1500);
        assert!(project.instances[0].can_ip_forward);
    }

    #[test]
    fn unknown_key_is_refused_with_its_line() {
        let text = EXAMPLE.replace("canIpForward: true", "canIpForwrd: true");
        let err = World::parse(&text, "w.yaml").unwrap_err().to_string();
        assert!(err.contains("canIpForwrd"), "{err}");
        assert!(err.contains("line 11"), "{err}"); // the text starts with a newline
    }

    #[test]
    fn bad_values_name_the_field() {
        let cases = [
            (
                EXAMPLE.replace("10.128.0.0/20", "10.128.0.1/20"),
                "subnetworks[0].ipCidrRange",
            ),
            (
                EXAMPLE.replace("network: default, networkIP", "network: nope, networkIP"),
                "instances[0].network",
            ),
            (
                EXAMPLE.replace("status: RUNNING", "status: SLEEPING"),
                "instances[0].status",
            ),
            (
                EXAMPLE.replace("name: se-1", "name: SE_1"),
                "instances[0].name",
            ),
        ];
        for (text, field) in cases {
            let err = World::parse(&text, "w.yaml").unwrap_err().to_string();
            assert!(err.contains(field), "{field}: {err}");
        }
    }

    #[test]
    fn shared_vpc_service_projects_use_their_hosts_networks() {
        let shared = "projects:
  - id: svc
    networkProject: host
    instances:
      - {name: vm, zone: us-central1-a, network: shared}
  - id: host
    networks:
      - name: shared
        subnetworks:
          - {name: s, region: us-central1, ipCidrRange: 10.0.0.0/24}
";
        let world = World::parse(shared, "w.yaml").unwrap();
        assert_eq!(world.projects[0].network_project.as_deref(), Some("host"));
        assert_eq!(world.network_owner(&world.projects[0]).id, "host");
        let cases = [
            (
                shared.replace(
                    "    instances:\n      - {name: vm",
                    "    networks: [{name: own}]\n    instances:\n      - {name: vm",
                ),
                "projects[0].networks: a Shared VPC service project (networkProject: host) has no networks of its own",
            ),
            (
                shared.replace("networkProject: host", "networkProject: nowhere"),
                "projects[0].networkProject: no project 'nowhere'",
            ),
            (
                shared.replace("networkProject: host", "networkProject: svc"),
                "projects[0].networkProject: a project cannot be its own",
            ),
            (
                shared.replace("network: shared}", "network: default}"),
                "projects[0].instances[0].network: no network 'default' in the host project 'host'",
            ),
            (
                format!("{shared}  - id: third\n    networkProject: svc\n"),
                "projects[2].networkProject: 'svc' is itself a service project of 'host'",
            ),
        ];
        for (text, expected) in cases {
            let err = World::parse(&text, "w.yaml").unwrap_err().to_string();
            assert!(err.contains(expected), "{expected}: {err}");
        }
    }

    #[test]
    fn zone_to_region() {
        assert_eq!(region_of_zone("us-central1-a"), "us-central1");
        assert_eq!(region_of_zone("europe-west4-b"), "europe-west4");
    }
}
