//! Guard rails: what an object may not do, whatever its schema allowed. A violation stalls the
//! object with a message that says what to change, and nothing of it is touched in GCP.

use std::net::IpAddr;

use ipnet::IpNet;

/// Parses a CIDR, or a bare address as a host route.
pub fn parse_range(text: &str) -> Option<IpNet> {
    text.parse::<IpNet>()
        .ok()
        .or_else(|| text.parse::<IpAddr>().ok().map(IpNet::from))
}

/// Whether `range` lies inside one of `allowed` (an empty list allows nothing).
pub fn range_allowed(range: &str, allowed: &[String]) -> bool {
    let Some(range) = parse_range(range) else {
        return false;
    };
    allowed
        .iter()
        .filter_map(|a| parse_range(a))
        .any(|a| a.contains(&range))
}

/// What the controller found out about an object's surroundings.
#[derive(Debug, Clone, Default)]
pub struct Surroundings {
    /// The cloud's allowedNamespaces selects the object's namespace.
    pub namespace_allowed: bool,
    pub allowed_ranges: Vec<String>,
    /// Empty: every range but a default route is allowed (the GcpCloud's documented default).
    pub allow_default_route: bool,
    /// Another object that holds the VIP (or, for a VpcRoute, the /32 destination) on the same
    /// network first: `Kind namespace/name`.
    pub vip_claimed_by: Option<String>,
    /// Engines with no instance in the inventory (`zone/name`).
    pub missing_engines: Vec<String>,
    /// The network's subnet ranges as (subnetwork, range): GCP refuses a route whose
    /// destination equals or lies inside one.
    pub subnet_ranges: Vec<(String, String)>,
    /// A subnetwork the object names that the region does not have.
    pub missing_subnetwork: Option<String>,
    /// A next-hop ILB (`region/name`) of the cloud's project that does not exist.
    pub missing_ilb: Option<String>,
}

/// The subnet range `range` lies in (equal or inside), as (subnetwork, range).
fn inside_subnet<'a>(range: &str, subnets: &'a [(String, String)]) -> Option<&'a (String, String)> {
    let range = parse_range(range)?;
    subnets
        .iter()
        .find(|(_, cidr)| parse_range(cidr).is_some_and(|net| net.contains(&range)))
}

/// Whether `range` is a CIDR whose address has host bits set (`10.1.2.3/8`), which Compute
/// refuses.
fn has_host_bits(range: &str) -> bool {
    range
        .parse::<IpNet>()
        .is_ok_and(|net| net.addr() != net.network())
}

/// The rules every kind's range follows; `field` is where the spec sets it.
fn common(range: &str, what: &str, field: &str, around: &Surroundings, problems: &mut Vec<String>) {
    if !around.namespace_allowed {
        problems.push("the GcpCloud's allowedNamespaces does not select this namespace; ask its owner to allow it, or use another GcpCloud".into());
    }
    if let Some(net) = parse_range(range) {
        if net.prefix_len() == 0 && !around.allow_default_route {
            problems.push(format!("{what} {range} is a default route; the GcpCloud must set allowDefaultRoute: true to permit it, or fix {field}"));
        } else if !around.allowed_ranges.is_empty() && !range_allowed(range, &around.allowed_ranges)
        {
            problems.push(format!(
                "{what} {range} is outside the GcpCloud's allowedDestinationRanges [{}]; fix {field}",
                around.allowed_ranges.join(", ")
            ));
        } else if let Some((subnet, cidr)) = inside_subnet(range, &around.subnet_ranges) {
            problems.push(format!(
                "{what} {range} is inside subnetwork '{subnet}' ({cidr}); GCP refuses a route into a subnet range: choose a {what} outside the network's subnets ({field})"
            ));
        }
    }
}

/// Where a VirtualService's VIP comes from: `spec.vip.address`, or its allocation.
const VIP_FIELD: &str = "spec.vip";

/// The guard rails of a VirtualService with VIP `vip` (None while an allocated VIP is pending)
/// and firewall sources `source_ranges`. The schema checks the ranges too; this catches objects
/// stored before it did, so that nothing Compute would refuse is ever sent.
pub fn check_virtual_service(
    vip: Option<&str>,
    source_ranges: &[String],
    around: &Surroundings,
) -> Vec<String> {
    let mut problems = Vec::new();
    match vip {
        Some(vip) => common(vip, "VIP", VIP_FIELD, around, &mut problems),
        None if !around.namespace_allowed => common("", "VIP", VIP_FIELD, around, &mut problems),
        None => {}
    }
    if let Some(other) = &around.vip_claimed_by {
        problems.push(format!(
            "VIP {} is already claimed by {other}; choose another VIP",
            vip.unwrap_or_default()
        ));
    }
    let bad_sources: Vec<&str> = source_ranges
        .iter()
        .filter(|r| !matches!(r.parse::<IpNet>(), Ok(IpNet::V4(_))) || has_host_bits(r))
        .map(String::as_str)
        .collect();
    if !bad_sources.is_empty() {
        problems.push(format!(
            "sourceRanges {} must be IPv4 CIDR ranges with no host bits set; fix spec.sourceRanges",
            bad_sources.join(", ")
        ));
    }
    if !around.missing_engines.is_empty() {
        problems.push(format!(
            "service engine instance(s) {} do not exist in the project; fix spec.serviceEngines",
            around.missing_engines.join(", ")
        ));
    }
    if let Some(subnetwork) = &around.missing_subnetwork {
        problems.push(format!(
            "subnetwork '{subnetwork}' does not exist in the GcpCloud's region and network; fix spec.vip.allocate.subnetwork"
        ));
    }
    problems
}

/// The guard rails of a VpcRoute.
pub fn check_vpc_route(dest_range: &str, around: &Surroundings) -> Vec<String> {
    let mut problems = Vec::new();
    if has_host_bits(dest_range) {
        let network = dest_range
            .parse::<IpNet>()
            .map(|n| n.trunc().to_string())
            .unwrap_or_default();
        problems.push(format!(
            "destRange {dest_range} has host bits set; write the network address {network}"
        ));
    } else {
        common(
            dest_range,
            "destRange",
            "spec.destRange",
            around,
            &mut problems,
        );
    }
    if let Some(other) = &around.vip_claimed_by {
        problems.push(format!(
            "destRange {dest_range} is the VIP of {other}, which holds it first; a route to it would take its traffic: choose another destRange"
        ));
    }
    if !around.missing_engines.is_empty() {
        problems.push(format!(
            "next-hop instance {} does not exist in the project; fix spec.nextHop.instance",
            around.missing_engines.join(", ")
        ));
    }
    if let Some(ilb) = &around.missing_ilb {
        problems.push(format!(
            "next-hop ILB forwarding rule {ilb} does not exist in the project; fix spec.nextHop.ilb"
        ));
    }
    problems
}

/// ILB mode: the subnetwork whose primary range holds the VIP (`subnets` are the network's
/// ranges in the cloud's region, as [`Surroundings::subnet_ranges`] lists them; secondary
/// ranges, named `subnet/range`, cannot hold a forwarding rule's address), and what stops it:
/// a VIP outside every subnetwork, or one another forwarding rule holds.
pub fn check_ilb_vip(
    vip: Option<&str>,
    subnets: &[(String, String)],
    taken_by: Option<&str>,
) -> (Option<String>, Vec<String>) {
    let mut problems = Vec::new();
    let Some(vip) = vip else {
        return (None, problems);
    };
    let primary: Vec<(String, String)> = subnets
        .iter()
        .filter(|(name, _)| !name.contains('/'))
        .cloned()
        .collect();
    let subnetwork = inside_subnet(vip, &primary).map(|(name, _)| name.clone());
    if subnetwork.is_none() {
        let ranges: Vec<String> = primary
            .iter()
            .map(|(name, cidr)| format!("{name} {cidr}"))
            .collect();
        problems.push(format!(
            "ILB VIP {vip} lies in no subnetwork of the cloud's network and region ({}); an internal load balancer's address must be one of a subnetwork: fix {VIP_FIELD}, or use vip.allocate: {{type: Internal, subnetwork: ...}}",
            if ranges.is_empty() { "it has none".to_string() } else { ranges.join(", ") }
        ));
    }
    if let Some(rule) = taken_by {
        problems.push(format!(
            "ILB VIP {vip} is already taken by forwarding rule {rule}; choose another VIP ({VIP_FIELD})"
        ));
    }
    (subnetwork, problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_into_a_subnet_range_are_refused() {
        let around = Surroundings {
            subnet_ranges: vec![
                ("default".into(), "10.128.0.0/20".into()),
                ("pods".into(), "10.4.0.0/14".into()),
            ],
            ..allowed()
        };
        let vip = check_virtual_service(Some("10.128.0.79"), &[], &around);
        assert!(
            vip.iter()
                .any(|p| p.contains("inside subnetwork 'default' (10.128.0.0/20)")),
            "{vip:?}"
        );
        assert!(check_vpc_route("10.4.0.0/14", &around)[0].contains("'pods'"));
        // A wider range than a subnet is a valid route; so is a range beside it.
        assert!(check_vpc_route("10.0.0.0/8", &around).is_empty());
        assert!(check_virtual_service(Some("10.129.0.1"), &[], &around).is_empty());
        let missing = Surroundings {
            missing_subnetwork: Some("no-such".into()),
            ..allowed()
        };
        assert!(check_virtual_service(None, &[], &missing)[0].contains("'no-such'"));
    }

    fn allowed() -> Surroundings {
        Surroundings {
            namespace_allowed: true,
            allowed_ranges: vec!["10.0.0.0/8".into()],
            ..Default::default()
        }
    }

    #[test]
    fn ranges_must_fall_inside_the_allowed_ones() {
        assert!(range_allowed("10.10.0.5", &["10.0.0.0/8".into()]));
        assert!(range_allowed("10.10.0.0/16", &["10.0.0.0/8".into()]));
        assert!(!range_allowed("10.0.0.0/7", &["10.0.0.0/8".into()]));
        assert!(!range_allowed("192.168.0.1", &["10.0.0.0/8".into()]));
        assert!(!range_allowed("10.0.0.1", &[]));
        let open = Surroundings {
            namespace_allowed: true,
            ..Default::default()
        };
        assert!(
            check_virtual_service(Some("172.16.0.1"), &[], &open).is_empty(),
            "no list: no restriction"
        );
        assert!(
            !check_vpc_route("0.0.0.0/0", &open).is_empty(),
            "but never a default route"
        );
        assert!(check_virtual_service(Some("10.1.2.3"), &[], &allowed()).is_empty());
        let outside = check_virtual_service(Some("192.168.1.1"), &[], &allowed());
        assert!(
            outside[0].contains("outside the GcpCloud's allowedDestinationRanges"),
            "{outside:?}"
        );
    }

    #[test]
    fn default_routes_need_explicit_permission() {
        let mut around = allowed();
        around.allowed_ranges = vec!["0.0.0.0/0".into()];
        assert!(check_vpc_route("0.0.0.0/0", &around)[0].contains("allowDefaultRoute"));
        around.allow_default_route = true;
        assert!(check_vpc_route("0.0.0.0/0", &around).is_empty());
    }

    #[test]
    fn namespace_claims_and_engines() {
        let mut around = allowed();
        around.namespace_allowed = false;
        around.vip_claimed_by = Some("VirtualService team-b/api".into());
        around.missing_engines = vec!["us-central1-a/se-9".into()];
        let problems = check_virtual_service(Some("10.1.2.3"), &[], &around);
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[1].contains("claimed by VirtualService team-b/api"));
        assert!(problems[2].contains("se-9"));
        let route = check_vpc_route("10.1.2.3/32", &around);
        assert!(
            route
                .iter()
                .any(|p| p.contains("is the VIP of VirtualService team-b/api")),
            "{route:?}"
        );
    }

    #[test]
    fn ranges_compute_would_refuse_are_caught() {
        let around = allowed();
        let host_bits = check_vpc_route("10.77.1.5/16", &around);
        assert_eq!(host_bits.len(), 1, "{host_bits:?}");
        assert!(
            host_bits[0].contains("network address 10.77.0.0/16"),
            "{host_bits:?}"
        );
        assert!(check_vpc_route("10.77.0.0/16", &around).is_empty());
        let sources = |ranges: &[&str]| {
            let ranges: Vec<String> = ranges.iter().map(|r| r.to_string()).collect();
            check_virtual_service(Some("10.1.2.3"), &ranges, &around)
        };
        assert!(sources(&["10.0.0.0/8", "192.168.0.0/16"]).is_empty());
        let bad = sources(&["10.0.0.0/8", "10.1.2.3/8", "fd00::/8"]);
        assert_eq!(bad.len(), 1, "{bad:?}");
        assert!(bad[0].contains("10.1.2.3/8, fd00::/8"), "{bad:?}");
    }

    #[test]
    fn an_ilb_vip_must_lie_in_a_primary_range_and_be_free() {
        let subnets = vec![
            ("se-subnet".to_string(), "10.128.0.0/20".to_string()),
            ("se-subnet/pods".to_string(), "10.4.0.0/14".to_string()),
        ];
        assert_eq!(
            check_ilb_vip(Some("10.128.0.50"), &subnets, None),
            (Some("se-subnet".to_string()), Vec::new())
        );
        let (subnet, problems) = check_ilb_vip(Some("10.4.0.9"), &subnets, None);
        assert_eq!(subnet, None, "a secondary range holds no forwarding rule");
        assert!(
            problems[0].contains("lies in no subnetwork")
                && problems[0].contains("se-subnet 10.128.0.0/20")
        );
        let (_, problems) = check_ilb_vip(
            Some("10.128.0.50"),
            &subnets,
            Some("regions/us-central1/forwardingRules/other"),
        );
        assert!(problems[0].contains(
            "already taken by forwarding rule regions/us-central1/forwardingRules/other"
        ));
        assert_eq!(check_ilb_vip(None, &subnets, None), (None, Vec::new()));
    }
}
