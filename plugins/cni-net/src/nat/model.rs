//! The data the NAT verbs and drivers share: mappings, their configuration, recorded
//! rules and attachments. No behaviour beyond small accessors.

use std::net::IpAddr;

use ipnetwork::IpNetwork;

use super::names;
use crate::Family;

/// One entry of `cni.dev/valid-attachments`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Attachment<'a> {
    pub container_id: &'a str,
    pub ifname: &'a str,
}

/// Transport protocol of a mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    // Declared in name order: the reference sorts protocols by name.
    Sctp,
    Tcp,
    Udp,
}

impl Proto {
    /// Lower-case name, as iptables and nft spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Sctp => "sctp",
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }

    /// Case-insensitive: runtimes send `tcp`, users sometimes write `TCP`.
    pub fn parse(value: &str) -> Option<Proto> {
        match value.to_ascii_lowercase().as_str() {
            "tcp" => Some(Proto::Tcp),
            "udp" => Some(Proto::Udp),
            "sctp" => Some(Proto::Sctp),
            _ => None,
        }
    }

    /// IANA protocol number.
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
            Proto::Sctp => 132,
        }
    }
}

/// One `portMappings` entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PortMapping {
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: Proto,
    /// `None` when `hostIP` was absent or empty. Keep `0.0.0.0` / `::` as `Some`: they
    /// mean "any address" but still restrict the mapping to their family, as in the
    /// reference.
    pub host_ip: Option<IpAddr>,
}

impl PortMapping {
    /// Whether this mapping applies to a container address of `family`.
    pub fn applies_to(&self, family: Family) -> bool {
        self.host_ip.is_none_or(|ip| Family::of(ip) == family)
    }

    /// The destination address to match, if any (unspecified addresses match all).
    pub fn dest_ip(&self) -> Option<IpAddr> {
        self.host_ip.filter(|ip| !ip.is_unspecified())
    }
}

/// Everything the rules of one container depend on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortMapConfig {
    /// Network name (iptables chain names hash it with the container ID).
    pub network: String,
    pub container_id: String,
    pub mappings: Vec<PortMapping>,
    /// Install the hairpin/localhost masquerade rules (`snat`, default true).
    pub snat: bool,
    /// Masquerade traffic from any source, not only hairpin and localhost.
    pub masq_all: bool,
    /// `markMasqBit`, 0..=31 (validated by the plugin), default 13. iptables only.
    pub mark_masq_bit: u8,
    /// `externalSetMarkChain`: jump there instead of our own SETMARK chain.
    pub external_set_mark_chain: Option<String>,
    /// Extra match tokens for the entry rules, in the backend's syntax.
    pub conditions_v4: Vec<String>,
    pub conditions_v6: Vec<String>,
    /// The host interface leading to the pod, when `route_localnet` will be set on it
    /// (snat on, IPv4): the driver guards it before (see `guard.rs`).
    pub localnet_guard: Option<LocalnetGuard>,
}

/// What the localnet guard keys a container's claim on an interface by (see
/// `guard.rs`): the host interface that will have `route_localnet`, and the pod's
/// IPv4 address behind it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalnetGuard {
    pub ifname: String,
    pub pod: std::net::Ipv4Addr,
}

impl PortMapConfig {
    /// The reference defaults: snat on, masqAll off, mark bit 13, no conditions.
    pub fn new(network: &str, container_id: &str, mappings: Vec<PortMapping>) -> PortMapConfig {
        PortMapConfig {
            network: network.to_string(),
            container_id: container_id.to_string(),
            mappings,
            snat: true,
            masq_all: false,
            mark_masq_bit: names::DEFAULT_MARK_MASQ_BIT,
            external_set_mark_chain: None,
            conditions_v4: Vec::new(),
            conditions_v6: Vec::new(),
            localnet_guard: None,
        }
    }

    pub(crate) fn conditions(&self, family: Family) -> &[String] {
        match family {
            Family::V4 => &self.conditions_v4,
            Family::V6 => &self.conditions_v6,
        }
    }
}

/// One installed rule, by handle: what an ADD learned so the DEL can remove it without
/// searching. Only iptables-nft and nftables rules have handles we can see.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RuleRef {
    pub family: Family,
    pub table: String,
    pub chain: String,
    pub handle: u64,
}

/// The first address of each family: the reference maps one IPv4 and one IPv6 address.
pub(crate) fn per_family(container_ips: &[IpNetwork]) -> Vec<IpNetwork> {
    let mut out: Vec<IpNetwork> = Vec::new();
    for net in container_ips {
        if !out
            .iter()
            .any(|o| Family::of(o.ip()) == Family::of(net.ip()))
        {
            out.push(*net);
        }
    }
    out
}

/// Test fixtures shared by the iptables and nftables renderers' golden tests.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::{PortMapping, Proto};

    /// A mapping from literals; `ip` is a host IP such as `"0.0.0.0"`.
    pub fn mapping(host: u16, ctr: u16, protocol: Proto, ip: Option<&str>) -> PortMapping {
        PortMapping {
            host_port: host,
            container_port: ctr,
            protocol,
            host_ip: ip.map(|s| s.parse().expect("test host IP")),
        }
    }

    /// The mappings of the reference's own portmap tests (portmap_iptables_test.go and
    /// portmap_nftables_test.go use the same list).
    pub fn reference_mappings() -> Vec<PortMapping> {
        vec![
            mapping(8080, 80, Proto::Tcp, None),
            mapping(8081, 80, Proto::Tcp, None),
            mapping(8080, 81, Proto::Udp, None),
            mapping(8082, 82, Proto::Udp, None),
            mapping(8083, 83, Proto::Tcp, Some("192.168.0.2")),
            mapping(8084, 84, Proto::Tcp, Some("0.0.0.0")),
            mapping(8085, 85, Proto::Tcp, Some("2001:db8:a::1")),
            mapping(8086, 86, Proto::Tcp, Some("::")),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocols_parse_case_insensitively_and_sort_by_name() {
        assert_eq!(Proto::parse("TCP"), Some(Proto::Tcp));
        assert_eq!(Proto::parse("udp"), Some(Proto::Udp));
        assert_eq!(Proto::parse("Sctp"), Some(Proto::Sctp));
        assert_eq!(Proto::parse("icmp"), None);
        let mut v = vec![Proto::Udp, Proto::Tcp, Proto::Sctp];
        v.sort();
        assert_eq!(v, [Proto::Sctp, Proto::Tcp, Proto::Udp]);
    }

    #[test]
    fn host_ip_family_filtering() {
        let m = |ip: Option<&str>| PortMapping {
            host_port: 1,
            container_port: 1,
            protocol: Proto::Tcp,
            host_ip: ip.map(|s| s.parse().unwrap()),
        };
        assert!(m(None).applies_to(Family::V4) && m(None).applies_to(Family::V6));
        assert!(m(Some("0.0.0.0")).applies_to(Family::V4));
        assert!(!m(Some("0.0.0.0")).applies_to(Family::V6));
        assert_eq!(m(Some("0.0.0.0")).dest_ip(), None);
        assert_eq!(m(Some("::")).dest_ip(), None);
        assert!(m(Some("192.168.0.2")).dest_ip().is_some());
    }

    #[test]
    fn one_target_per_family() {
        let ips: Vec<IpNetwork> = ["10.0.0.2/24", "10.0.0.3/24", "2001:db8::2/64"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let t = per_family(&ips);
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].ip().to_string(), "10.0.0.2");
    }
}
