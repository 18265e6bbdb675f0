//! IPv4 or IPv6, the one family type of the crate: rtnetlink, nf_tables and the NAT
//! layouts all take it.

use std::borrow::Borrow;
use std::fmt;
use std::net::IpAddr;
use std::path::Path;

/// An IP family. iptables programs each through its own tools, nf_tables and
/// rtnetlink through a protocol number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// The family of `ip`; by value or by reference.
    pub fn of(ip: impl Borrow<IpAddr>) -> Family {
        match ip.borrow() {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// Whether the kernel has this family at all (IPv6 can be disabled at boot, and then
    /// ip6tables fails on every call).
    pub fn enabled(self) -> bool {
        match self {
            Family::V4 => true,
            Family::V6 => Path::new("/proc/net/if_inet6").exists(),
        }
    }

    /// nft's word for the family's tables: `ip` or `ip6`.
    pub fn nft_word(self) -> &'static str {
        match self {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        }
    }

    /// The nf_tables protocol family (`nfgenmsg.nfgen_family`).
    pub(crate) fn nfproto(self) -> u8 {
        match self {
            Family::V4 => libc::NFPROTO_IPV4 as u8,
            Family::V6 => libc::NFPROTO_IPV6 as u8,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn of_takes_addresses_and_references() {
        let v4: IpAddr = "10.0.0.1".parse().unwrap();
        let v6: IpAddr = "fd00::1".parse().unwrap();
        assert_eq!(Family::of(v4), Family::V4);
        assert_eq!(Family::of(v6), Family::V6);
        assert_eq!(Family::V6.to_string(), "IPv6");
        assert_eq!(Family::V6.nft_word(), "ip6");
        assert!(Family::V4.enabled());
    }
}
