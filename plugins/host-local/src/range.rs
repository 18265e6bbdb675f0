//! Address ranges and range sets: the validated form of the `ranges` config, the reference's
//! defaults (start = network+1, gateway = network+1, v4 end = broadcast-1, v6 end = last
//! address) and the round-robin candidate order the allocator walks.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;

/// Address family, from the width of an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(ip: IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    pub fn bits(self) -> u8 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }
}

/// The address as an integer, so ranges can be walked and compared without byte juggling.
pub fn to_int(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// Inverse of [`to_int`]; v4 values are truncated to 32 bits.
pub fn from_int(family: Family, v: u128) -> IpAddr {
    match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::from(v as u32)),
        Family::V6 => IpAddr::V6(Ipv6Addr::from(v)),
    }
}

fn all_ones(family: Family) -> u128 {
    match family {
        Family::V4 => u128::from(u32::MAX),
        Family::V6 => u128::MAX,
    }
}

fn mask(family: Family, prefix: u8) -> u128 {
    let host_bits = u32::from(family.bits().saturating_sub(prefix));
    let host = if host_bits >= 128 {
        u128::MAX
    } else {
        (1u128 << host_bits) - 1
    };
    all_ones(family) & !host
}

/// An IPv4-mapped IPv6 address is a v4 address, as Go's `To4` decides; everything that is
/// compared, stored or printed goes through this first.
pub fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// Parses an address the way Go's `net.ParseIP` does (no zones, no leading zeros in v4) and
/// canonicalizes it.
pub fn parse_ip(s: &str) -> Option<IpAddr> {
    s.parse::<IpAddr>().ok().map(canonical)
}

/// A CIDR as written: the address keeps its host bits (so "host bits set" can be reported)
/// and remembers whether it was written as v6, which matters for v4-mapped subnets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
    pub written: Family,
}

impl Cidr {
    /// Go's `net.ParseCIDR`: `addr/len`, decimal length (leading zeros allowed), no zone.
    pub fn parse(s: &str) -> Option<Cidr> {
        let (addr, len) = s.split_once('/')?;
        let raw: IpAddr = addr.parse().ok()?;
        if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let written = Family::of(raw);
        let digits = len.trim_start_matches('0');
        if digits.len() > 3 {
            return None;
        }
        let prefix: u32 = if digits.is_empty() {
            0
        } else {
            digits.parse().ok()?
        };
        if prefix > u32::from(written.bits()) {
            return None;
        }
        Some(Cidr {
            addr: canonical(raw),
            prefix: prefix as u8,
            written,
        })
    }

    /// The form Go's `IPNet.String()` prints (address not masked; a v4-mapped subnet shows
    /// the v4 address with the prefix reduced by 96).
    pub fn display(&self) -> String {
        let prefix = match (self.written, Family::of(self.addr)) {
            (Family::V6, Family::V4) => self.prefix.saturating_sub(96),
            _ => self.prefix,
        };
        format!("{}/{}", self.addr, prefix)
    }
}

/// Why a single range is invalid; the text is the reference's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    #[error("IP <nil> not v4 nor v6")]
    MissingSubnet,
    #[error("Network {0} too small to allocate from")]
    TooSmall(String),
    #[error("IPNet IP and Mask version mismatch")]
    VersionMismatch,
    #[error(
        "Network has host bits set. For a subnet mask of length {prefix} the network address is {network}"
    )]
    HostBits { prefix: u8, network: IpAddr },
    #[error("RangeStart {0} not in network {1}")]
    StartOutside(IpAddr, String),
    #[error("RangeEnd {0} not in network {1}")]
    EndOutside(IpAddr, String),
    /// The reference accepts this and then walks past the end of the subnet; refuse it.
    #[error("RangeStart {0} is after RangeEnd {1}")]
    StartAfterEnd(IpAddr, IpAddr),
}

/// Why a range set is invalid; the text is the reference's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeSetError {
    #[error("empty range set")]
    Empty,
    #[error("mixed address families")]
    MixedFamilies,
    #[error("subnets {0} and {1} overlap")]
    Overlap(String, String),
    #[error(transparent)]
    Range(#[from] RangeError),
}

/// One pool inside a subnet: `start..=end`, with the gateway never handed out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub subnet: IpNetwork,
    pub start: IpAddr,
    pub end: IpAddr,
    /// May be of another family or outside the subnet: the reference accepts that and then
    /// simply never meets it while iterating.
    pub gateway: IpAddr,
}

impl Range {
    /// Validates a range and fills in the reference's defaults. Checks run in the
    /// reference's order so the first error reported is the same.
    pub fn new(
        subnet: Option<Cidr>,
        start: Option<IpAddr>,
        end: Option<IpAddr>,
        gateway: Option<IpAddr>,
    ) -> Result<Range, RangeError> {
        let cidr = subnet.ok_or(RangeError::MissingSubnet)?;
        if cidr.prefix > cidr.written.bits() - 2 {
            return Err(RangeError::TooSmall(cidr.display()));
        }
        let family = Family::of(cidr.addr);
        if family != cidr.written {
            return Err(RangeError::VersionMismatch);
        }
        let addr = to_int(cidr.addr);
        let m = mask(family, cidr.prefix);
        let network = addr & m;
        if network != addr {
            return Err(RangeError::HostBits {
                prefix: cidr.prefix,
                network: from_int(family, network),
            });
        }
        let subnet = match IpNetwork::new(cidr.addr, cidr.prefix) {
            Ok(n) => n,
            Err(_) => return Err(RangeError::VersionMismatch),
        };
        let first = from_int(family, network + 1);
        let gateway = gateway.map(canonical).unwrap_or(first);
        let broadcast = network | (!m & all_ones(family));
        let default_end = match family {
            Family::V4 => broadcast - 1,
            Family::V6 => broadcast,
        };
        let shown = cidr.display();
        let in_subnet = |ip: IpAddr| Family::of(ip) == family && (to_int(ip) & m) == network;
        let start = start.map(canonical);
        let end = end.map(canonical);
        // The reference checks the start against a not-yet-defaulted end, so a start
        // beyond an explicit end is reported as a start outside the network.
        if let Some(s) = start {
            let before_end = match end {
                Some(e) if Family::of(e) == family => to_int(s) <= to_int(e),
                _ => true,
            };
            if !in_subnet(s) || !before_end {
                return Err(RangeError::StartOutside(s, shown));
            }
        }
        let start = start.unwrap_or(first);
        if let Some(e) = end
            && (!in_subnet(e) || to_int(e) < to_int(start))
        {
            return Err(RangeError::EndOutside(e, shown));
        }
        let end = end.unwrap_or(from_int(family, default_end));
        if to_int(start) > to_int(end) {
            return Err(RangeError::StartAfterEnd(start, end));
        }
        Ok(Range {
            subnet,
            start,
            end,
            gateway,
        })
    }

    pub fn family(&self) -> Family {
        Family::of(self.start)
    }

    /// Inside the subnet and between start and end, both inclusive.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        if Family::of(ip) != self.family() || !self.subnet.contains(ip) {
            return false;
        }
        let v = to_int(ip);
        to_int(self.start) <= v && v <= to_int(self.end)
    }

    /// Any end of one range inside the other (same family only).
    pub fn overlaps(&self, other: &Range) -> bool {
        self.family() == other.family()
            && (self.contains(other.start)
                || self.contains(other.end)
                || other.contains(self.start)
                || other.contains(self.end))
    }

    /// How many addresses the allocator can hand out from this range.
    pub fn capacity(&self) -> u128 {
        let span = to_int(self.end).saturating_sub(to_int(self.start));
        let gateway_inside = self.contains(self.gateway);
        // `span + 1` overflows only for a v6 ::/0 range with no gateway inside, which
        // cannot exist: the default gateway is always inside. Saturate to be safe.
        span.saturating_add(1) - u128::from(gateway_inside)
    }
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.start, self.end)
    }
}

/// The pools one address is taken from; all of one family, pairwise disjoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeSet {
    ranges: Vec<Range>,
}

impl RangeSet {
    pub fn new(ranges: Vec<Range>) -> Result<RangeSet, RangeSetError> {
        let Some(first) = ranges.first() else {
            return Err(RangeSetError::Empty);
        };
        let family = first.family();
        if ranges.iter().any(|r| r.family() != family) {
            return Err(RangeSetError::MixedFamilies);
        }
        for (i, a) in ranges.iter().enumerate() {
            for b in &ranges[i + 1..] {
                if a.overlaps(b) {
                    return Err(RangeSetError::Overlap(a.to_string(), b.to_string()));
                }
            }
        }
        Ok(RangeSet { ranges })
    }

    pub fn ranges(&self) -> &[Range] {
        &self.ranges
    }

    pub fn family(&self) -> Family {
        self.ranges[0].family()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.range_for(ip).is_some()
    }

    pub fn range_for(&self, ip: IpAddr) -> Option<&Range> {
        self.ranges.iter().find(|r| r.contains(ip))
    }

    pub fn overlaps(&self, other: &RangeSet) -> bool {
        self.ranges
            .iter()
            .any(|a| other.ranges.iter().any(|b| a.overlaps(b)))
    }

    pub fn capacity(&self) -> u128 {
        self.ranges
            .iter()
            .fold(0u128, |acc, r| acc.saturating_add(r.capacity()))
    }

    /// Candidates in round-robin order: from the address after `last_reserved` (when it is
    /// still inside this set) through the end of its range, on through the following ranges
    /// and around, ending with `last_reserved` itself; otherwise from the first range's start.
    /// Gateways are never produced.
    pub fn candidates(&self, last_reserved: Option<IpAddr>) -> Candidates<'_> {
        let resume = last_reserved.map(canonical).and_then(|ip| {
            self.ranges
                .iter()
                .position(|r| r.contains(ip))
                .map(|idx| (idx, to_int(ip)))
        });
        let first = match resume {
            Some(pos) => self.step(pos),
            None => (0, to_int(self.ranges[0].start)),
        };
        Candidates {
            set: self,
            first,
            next: Some(first),
        }
    }

    fn step(&self, (idx, v): (usize, u128)) -> (usize, u128) {
        if v == to_int(self.ranges[idx].end) {
            let idx = (idx + 1) % self.ranges.len();
            (idx, to_int(self.ranges[idx].start))
        } else {
            (idx, v + 1)
        }
    }
}

impl fmt::Display for RangeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

/// Iterator over allocation candidates: `(range index, address)`.
pub struct Candidates<'a> {
    set: &'a RangeSet,
    first: (usize, u128),
    next: Option<(usize, u128)>,
}

impl Iterator for Candidates<'_> {
    type Item = (usize, IpAddr);

    fn next(&mut self) -> Option<(usize, IpAddr)> {
        loop {
            let pos = self.next?;
            let following = self.set.step(pos);
            self.next = (following.1 != self.first.1).then_some(following);
            let range = &self.set.ranges[pos.0];
            let ip = from_int(range.family(), pos.1);
            if ip != range.gateway {
                return Some((pos.0, ip));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn range(subnet: &str) -> Range {
        Range::new(Cidr::parse(subnet), None, None, None).unwrap()
    }

    fn range_se(subnet: &str, start: &str, end: &str) -> Range {
        Range::new(Cidr::parse(subnet), Some(ip(start)), Some(ip(end)), None).unwrap()
    }

    #[test]
    fn cidr_parse_follows_go() {
        assert_eq!(Cidr::parse("10.1.2.0/024").unwrap().prefix, 24);
        assert!(Cidr::parse("10.1.2.0").is_none());
        assert!(Cidr::parse("010.1.2.0/24").is_none());
        assert!(Cidr::parse("10.1.2.0/33").is_none());
        assert!(Cidr::parse("10.1.2.0/").is_none());
        assert!(Cidr::parse("10.1.2.0/+4").is_none());
        assert!(Cidr::parse("2001:db8::/129").is_none());
        assert!(Cidr::parse("fe80::%eth0/64").is_none());
        assert_eq!(Cidr::parse("2001:db8::/0000064").unwrap().prefix, 64);
        let mapped = Cidr::parse("::ffff:10.1.2.0/120").unwrap();
        assert_eq!(mapped.addr, ip("10.1.2.0"));
        assert_eq!(mapped.written, Family::V6);
    }

    #[test]
    fn defaults_v4() {
        let r = range("10.1.2.0/24");
        assert_eq!(r.start, ip("10.1.2.1"));
        assert_eq!(r.end, ip("10.1.2.254"));
        assert_eq!(r.gateway, ip("10.1.2.1"));
        assert_eq!(r.to_string(), "10.1.2.1-10.1.2.254");
        assert_eq!(r.capacity(), 253);
    }

    #[test]
    fn defaults_v6_end_is_all_ones() {
        let r = range("2001:db8:1::/64");
        assert_eq!(r.start, ip("2001:db8:1::1"));
        assert_eq!(r.end, ip("2001:db8:1::ffff:ffff:ffff:ffff"));
        assert_eq!(r.gateway, ip("2001:db8:1::1"));
        let r = range("::/0");
        assert_eq!(r.end, ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"));
        let r = range("0.0.0.0/0");
        assert_eq!(r.end, ip("255.255.255.254"));
    }

    #[test]
    fn validation_messages() {
        let cases: &[(&str, Option<&str>, Option<&str>, &str)] = &[
            (
                "10.1.2.1/24",
                None,
                None,
                "Network has host bits set. For a subnet mask of length 24 the network address is 10.1.2.0",
            ),
            (
                "10.1.2.0/31",
                None,
                None,
                "Network 10.1.2.0/31 too small to allocate from",
            ),
            (
                "10.1.2.3/32",
                None,
                None,
                "Network 10.1.2.3/32 too small to allocate from",
            ),
            (
                "2001:db8::/127",
                None,
                None,
                "Network 2001:db8::/127 too small to allocate from",
            ),
            (
                "::ffff:10.1.2.0/120",
                None,
                None,
                "IPNet IP and Mask version mismatch",
            ),
            (
                "::ffff:10.1.2.0/127",
                None,
                None,
                "Network 10.1.2.0/31 too small to allocate from",
            ),
            (
                "10.1.2.0/24",
                Some("10.1.3.1"),
                None,
                "RangeStart 10.1.3.1 not in network 10.1.2.0/24",
            ),
            (
                "10.1.2.0/24",
                None,
                Some("10.1.3.1"),
                "RangeEnd 10.1.3.1 not in network 10.1.2.0/24",
            ),
            (
                "10.1.2.0/24",
                Some("10.1.2.50"),
                Some("10.1.2.40"),
                "RangeStart 10.1.2.50 not in network 10.1.2.0/24",
            ),
            (
                "10.1.2.0/24",
                Some("2001:db8::1"),
                None,
                "RangeStart 2001:db8::1 not in network 10.1.2.0/24",
            ),
            (
                "10.1.2.0/24",
                None,
                Some("2001:db8::1"),
                "RangeEnd 2001:db8::1 not in network 10.1.2.0/24",
            ),
            (
                "10.1.2.0/24",
                Some("10.1.2.255"),
                None,
                "RangeStart 10.1.2.255 is after RangeEnd 10.1.2.254",
            ),
        ];
        for (subnet, start, end, want) in cases {
            let err =
                Range::new(Cidr::parse(subnet), start.map(ip), end.map(ip), None).unwrap_err();
            assert_eq!(err.to_string(), *want, "{subnet} {start:?} {end:?}");
        }
        assert_eq!(
            Range::new(None, None, None, None).unwrap_err().to_string(),
            "IP <nil> not v4 nor v6"
        );
    }

    #[test]
    fn start_end_inclusive_and_mapped_start() {
        let r = Range::new(
            Cidr::parse("10.1.2.0/24"),
            Some(ip("::ffff:10.1.2.10")),
            Some(ip("10.1.2.10")),
            None,
        )
        .unwrap();
        assert_eq!(r.start, ip("10.1.2.10"));
        assert!(r.contains(ip("10.1.2.10")));
        assert!(!r.contains(ip("10.1.2.11")));
        assert_eq!(r.capacity(), 1);
    }

    #[test]
    fn contains_checks_family_subnet_and_bounds() {
        let r = range_se("10.1.2.0/24", "10.1.2.10", "10.1.2.20");
        assert!(r.contains(ip("10.1.2.10")));
        assert!(r.contains(ip("10.1.2.20")));
        assert!(r.contains(ip("::ffff:10.1.2.15")));
        assert!(!r.contains(ip("10.1.2.9")));
        assert!(!r.contains(ip("10.1.2.21")));
        assert!(!r.contains(ip("2001:db8::1")));
    }

    #[test]
    fn overlap_rules() {
        let a = range("10.1.2.0/24");
        let b = range("10.1.2.0/25");
        let c = range_se("10.1.2.0/24", "10.1.2.100", "10.1.2.200");
        let d = range_se("10.1.2.0/24", "10.1.2.201", "10.1.2.250");
        let e = range("2001:db8::/64");
        assert!(a.overlaps(&b));
        assert!(b.overlaps(&a));
        assert!(c.overlaps(&a));
        assert!(!c.overlaps(&d));
        assert!(!a.overlaps(&e));
    }

    #[test]
    fn rangeset_validation() {
        assert_eq!(
            RangeSet::new(vec![]).unwrap_err().to_string(),
            "empty range set"
        );
        assert_eq!(
            RangeSet::new(vec![range("10.1.2.0/24"), range("2001:db8::/64")])
                .unwrap_err()
                .to_string(),
            "mixed address families"
        );
        assert_eq!(
            RangeSet::new(vec![range("10.1.2.0/24"), range("10.1.2.0/25")])
                .unwrap_err()
                .to_string(),
            "subnets 10.1.2.1-10.1.2.254 and 10.1.2.1-10.1.2.126 overlap"
        );
        let set = RangeSet::new(vec![range("10.1.2.0/24"), range("10.1.4.0/24")]).unwrap();
        assert_eq!(set.to_string(), "10.1.2.1-10.1.2.254,10.1.4.1-10.1.4.254");
        assert_eq!(set.capacity(), 506);
    }

    fn take(set: &RangeSet, last: Option<&str>, n: usize) -> Vec<String> {
        set.candidates(last.map(ip))
            .take(n)
            .map(|(_, a)| a.to_string())
            .collect()
    }

    #[test]
    fn candidates_from_start_skip_gateway() {
        let set = RangeSet::new(vec![range("10.1.2.0/29")]).unwrap();
        assert_eq!(
            take(&set, None, 100),
            ["10.1.2.2", "10.1.2.3", "10.1.2.4", "10.1.2.5", "10.1.2.6"]
        );
    }

    #[test]
    fn candidates_resume_in_middle_and_wrap() {
        let set = RangeSet::new(vec![range("10.1.2.0/29")]).unwrap();
        assert_eq!(
            take(&set, Some("10.1.2.4"), 100),
            ["10.1.2.5", "10.1.2.6", "10.1.2.2", "10.1.2.3", "10.1.2.4"]
        );
        // Resuming at the end wraps straight to the start.
        assert_eq!(
            take(&set, Some("10.1.2.6"), 100),
            ["10.1.2.2", "10.1.2.3", "10.1.2.4", "10.1.2.5", "10.1.2.6"]
        );
    }

    #[test]
    fn candidates_never_broadcast_and_gateway_in_middle() {
        let r = Range::new(Cidr::parse("10.1.2.0/29"), None, None, Some(ip("10.1.2.4"))).unwrap();
        let set = RangeSet::new(vec![r]).unwrap();
        assert_eq!(
            take(&set, None, 100),
            ["10.1.2.1", "10.1.2.2", "10.1.2.3", "10.1.2.5", "10.1.2.6"]
        );
        // The last reserved address being the gateway itself still resumes after it.
        assert_eq!(take(&set, Some("10.1.2.4"), 1), ["10.1.2.5"]);
    }

    #[test]
    fn candidates_last_reserved_outside_set_restarts() {
        let set = RangeSet::new(vec![range("10.1.2.0/29")]).unwrap();
        assert_eq!(take(&set, Some("10.9.9.9"), 1), ["10.1.2.2"]);
        assert_eq!(take(&set, Some("2001:db8::5"), 1), ["10.1.2.2"]);
    }

    #[test]
    fn candidates_cross_ranges() {
        let set = RangeSet::new(vec![
            range_se("10.1.2.0/24", "10.1.2.10", "10.1.2.11"),
            range_se("10.1.3.0/24", "10.1.3.10", "10.1.3.11"),
        ])
        .unwrap();
        assert_eq!(
            take(&set, None, 100),
            ["10.1.2.10", "10.1.2.11", "10.1.3.10", "10.1.3.11"]
        );
        // Last reserved at the end of one range continues at the next range's start.
        assert_eq!(
            take(&set, Some("10.1.2.11"), 100),
            ["10.1.3.10", "10.1.3.11", "10.1.2.10", "10.1.2.11"]
        );
        assert_eq!(take(&set, Some("10.1.3.11"), 1), ["10.1.2.10"]);
    }

    #[test]
    fn candidates_single_address_that_is_gateway() {
        let r = Range::new(
            Cidr::parse("10.1.2.0/24"),
            Some(ip("10.1.2.1")),
            Some(ip("10.1.2.1")),
            None,
        )
        .unwrap();
        let set = RangeSet::new(vec![r]).unwrap();
        assert_eq!(take(&set, None, 10), Vec::<String>::new());
        assert_eq!(take(&set, Some("10.1.2.1"), 10), Vec::<String>::new());
    }

    #[test]
    fn candidates_v6_end_of_space() {
        let set = RangeSet::new(vec![
            Range::new(
                Cidr::parse("2001:db8::/64"),
                Some(ip("2001:db8::ffff:ffff:ffff:fffe")),
                None,
                None,
            )
            .unwrap(),
        ])
        .unwrap();
        assert_eq!(
            take(&set, None, 10),
            [
                "2001:db8::ffff:ffff:ffff:fffe",
                "2001:db8::ffff:ffff:ffff:ffff"
            ]
        );
        let top = RangeSet::new(vec![
            Range::new(
                Cidr::parse("ffff:ffff:ffff:ffff::/64"),
                Some(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe")),
                None,
                None,
            )
            .unwrap(),
        ])
        .unwrap();
        assert_eq!(
            take(&top, Some("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"), 10).len(),
            2
        );
    }
}
