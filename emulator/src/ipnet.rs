//! CIDR ranges: parsing as Compute validates them, containment and overlap.

use std::net::{IpAddr, Ipv4Addr};

/// An IPv4 or IPv6 network in CIDR form, with no host bits set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    /// Parses `a.b.c.d/n` or an IPv6 CIDR; host bits must be zero. A bare address is refused.
    pub fn parse(text: &str) -> Option<Cidr> {
        let (addr, prefix) = text.split_once('/')?;
        let addr: IpAddr = addr.parse().ok()?;
        if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) || prefix.len() > 3 {
            return None;
        }
        let prefix: u8 = prefix.parse().ok()?;
        let cidr = Cidr { addr, prefix };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max || cidr.network_bits() != cidr.bits() {
            return None;
        }
        Some(cidr)
    }

    fn bits(&self) -> u128 {
        match self.addr {
            IpAddr::V4(v4) => u128::from(u32::from(v4)),
            IpAddr::V6(v6) => u128::from(v6),
        }
    }

    fn width(&self) -> u8 {
        if self.addr.is_ipv4() { 32 } else { 128 }
    }

    fn mask(&self) -> u128 {
        let width = u32::from(self.width());
        let host = width - u32::from(self.prefix);
        let all = if width == 128 {
            u128::MAX
        } else {
            (1u128 << width) - 1
        };
        if host >= 128 {
            0
        } else {
            all & !((1u128 << host) - 1) & all
        }
    }

    fn network_bits(&self) -> u128 {
        self.bits() & self.mask()
    }

    /// Whether `ip` lies inside this range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        if ip.is_ipv4() != self.addr.is_ipv4() {
            return false;
        }
        let bits = match ip {
            IpAddr::V4(v4) => u128::from(u32::from(v4)),
            IpAddr::V6(v6) => u128::from(v6),
        };
        bits & self.mask() == self.network_bits()
    }

    /// Whether `other` lies entirely inside this range (equal counts).
    pub fn covers(&self, other: &Cidr) -> bool {
        other.prefix >= self.prefix && self.contains(other.addr)
    }

    /// The `index`-th IPv4 address of the range, if inside it.
    pub fn nth_v4(&self, index: u32) -> Option<Ipv4Addr> {
        let IpAddr::V4(base) = self.addr else {
            return None;
        };
        let size = 1u64 << (32 - u32::from(self.prefix));
        if u64::from(index) >= size {
            return None;
        }
        Some(Ipv4Addr::from(u32::from(base).wrapping_add(index)))
    }

    /// Number of addresses in an IPv4 range.
    pub fn size_v4(&self) -> u64 {
        if self.addr.is_ipv4() {
            1u64 << (32 - u32::from(self.prefix))
        } else {
            0
        }
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses() {
        assert!(Cidr::parse("10.0.0.0/8").is_some());
        assert!(Cidr::parse("10.10.0.5/32").is_some());
        assert!(Cidr::parse("0.0.0.0/0").is_some());
        assert!(Cidr::parse("2001:db8::/32").is_some());
        assert!(Cidr::parse("10.0.0.1/8").is_none(), "host bits set");
        assert!(Cidr::parse("10.0.0.0/33").is_none());
        assert!(Cidr::parse("10.0.0.0").is_none());
        assert!(Cidr::parse("10.0.0.0/").is_none());
        assert!(Cidr::parse("10.0.0.0/+8").is_none());
        assert!(Cidr::parse("300.0.0.0/8").is_none());
    }

    #[test]
    fn containment() {
        let net = Cidr::parse("10.128.0.0/20").unwrap();
        assert!(net.contains("10.128.15.255".parse().unwrap()));
        assert!(!net.contains("10.128.16.0".parse().unwrap()));
        assert!(net.covers(&Cidr::parse("10.128.0.10/32").unwrap()));
        assert!(net.covers(&net));
        assert!(!net.covers(&Cidr::parse("10.0.0.0/8").unwrap()));
        assert!(
            Cidr::parse("0.0.0.0/0")
                .unwrap()
                .contains("1.2.3.4".parse().unwrap())
        );
        assert_eq!(net.nth_v4(2), Some("10.128.0.2".parse().unwrap()));
        assert_eq!(net.size_v4(), 4096);
    }
}
