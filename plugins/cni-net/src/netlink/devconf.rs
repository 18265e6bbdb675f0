//! IPv4 per-interface settings (`/proc/sys/net/ipv4/conf/<if>/<key>`) over
//! rtnetlink.
//!
//! With a thousand network namespaces the first path walk below
//! `/proc/sys/net/ipv4` in a process costs 0.15-1.5 ms (see `sysctl`); the
//! same values travel in every RTM_GETLINK reply (`IFLA_AF_SPEC` / `AF_INET` /
//! `IFLA_INET_CONF`) and RTM_SETLINK changes them with nested
//! `IFLA_INET_CONF` attributes, one per `IPV4_DEVCONF_*` id with a u32
//! payload (the kernel's `inet_set_link_af`).
//!
//! The kernel stores such a write exactly as a `/proc` write would, but skips
//! the side effects some `/proc` handlers add: turning `forwarding` on this
//! way does not disable LRO nor notify netconf listeners, and clearing
//! `route_localnet` or `accept_local` does not flush the route cache. Use it
//! for settings without such effects, or in the direction that has none.

use netlink_packet_core::{DefaultNla, NLA_F_NESTED};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{
    AfSpecInet, AfSpecUnspec, InetDevConf, LinkAttribute, LinkMessage,
};

use super::link::Link;
use super::socket::Netlink;
use crate::error::Result;

/// `IFLA_INET_CONF` inside `IFLA_AF_SPEC` / `AF_INET`.
const IFLA_INET_CONF: u16 = 1;

/// An IPv4 per-interface setting, named as below `/proc/sys/net/ipv4/conf/<if>/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Ipv4DevConf {
    Forwarding,
    ProxyArp,
    RpFilter,
    /// Send gratuitous ARP when the link comes up or its MAC changes.
    ArpNotify,
    AcceptLocal,
    /// Route 127.0.0.0/8 sources and destinations through this interface.
    RouteLocalnet,
}

impl Ipv4DevConf {
    /// The `IPV4_DEVCONF_*` id (include/uapi/linux/ip.h); the kernel's array
    /// is indexed by id - 1.
    pub fn id(self) -> u16 {
        match self {
            Ipv4DevConf::Forwarding => 1,
            Ipv4DevConf::ProxyArp => 3,
            Ipv4DevConf::RpFilter => 8,
            Ipv4DevConf::ArpNotify => 22,
            Ipv4DevConf::AcceptLocal => 23,
            Ipv4DevConf::RouteLocalnet => 26,
        }
    }

    /// The key's name below `net/ipv4/conf/<if>/`.
    pub fn name(self) -> &'static str {
        match self {
            Ipv4DevConf::Forwarding => "forwarding",
            Ipv4DevConf::ProxyArp => "proxy_arp",
            Ipv4DevConf::RpFilter => "rp_filter",
            Ipv4DevConf::ArpNotify => "arp_notify",
            Ipv4DevConf::AcceptLocal => "accept_local",
            Ipv4DevConf::RouteLocalnet => "route_localnet",
        }
    }
}

/// An interface's IPv4 settings as of the RTM_GETLINK that produced the
/// [`Link`]; a snapshot, not a live view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Ipv4Conf(InetDevConf);

impl Ipv4Conf {
    /// The value the kernel reported. The kernel stores these as ints; all of
    /// the settings named by [`Ipv4DevConf`] are small and non-negative.
    pub fn get(&self, key: Ipv4DevConf) -> i32 {
        let c = &self.0;
        match key {
            Ipv4DevConf::Forwarding => c.forwarding,
            Ipv4DevConf::ProxyArp => c.proxy_arp,
            Ipv4DevConf::RpFilter => c.rp_filter,
            Ipv4DevConf::ArpNotify => c.arp_notify,
            Ipv4DevConf::AcceptLocal => c.accept_local,
            Ipv4DevConf::RouteLocalnet => c.route_localnet,
        }
    }

    /// Finds the IPv4 block of a link's `IFLA_AF_SPEC`; absent when the
    /// interface has no IPv4 state (MTU below 68).
    pub(crate) fn from_af_spec(specs: &[AfSpecUnspec]) -> Option<Ipv4Conf> {
        specs.iter().find_map(|s| match s {
            AfSpecUnspec::Inet(inet) => inet.iter().find_map(|a| match a {
                AfSpecInet::DevConf(c) => Some(Ipv4Conf(*c)),
                _ => None,
            }),
            _ => None,
        })
    }
}

fn describe(values: &[(Ipv4DevConf, u32)]) -> String {
    let parts: Vec<String> = values
        .iter()
        .map(|(k, v)| format!("{}={v}", k.name()))
        .collect();
    parts.join(" ")
}

impl Netlink {
    /// Sets IPv4 per-interface settings in one RTM_SETLINK, as writing
    /// `net/ipv4/conf/<if>/<key>` would (see the module notes for the side
    /// effects that are skipped).
    pub fn set_ipv4_conf(&mut self, link: &Link, values: &[(Ipv4DevConf, u32)]) -> Result<()> {
        // Hand-encoded rather than the crate's request form, which drops
        // zero values and so cannot turn a setting off.
        let mut nested = Vec::with_capacity(values.len() * 8);
        for &(key, value) in values {
            nested.extend_from_slice(&8u16.to_ne_bytes());
            nested.extend_from_slice(&key.id().to_ne_bytes());
            nested.extend_from_slice(&value.to_ne_bytes());
        }
        let mut m = LinkMessage::default();
        m.header.index = link.index;
        m.attributes
            .push(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet(vec![
                AfSpecInet::Other(DefaultNla::new(IFLA_INET_CONF | NLA_F_NESTED, nested)),
            ])]));
        self.ack(RouteNetlinkMessage::SetLink(m), 0, || {
            format!("set IPv4 {} on {:?}", describe(values), link.name)
        })
    }

    /// Sets one IPv4 per-interface setting unless `link` (a recent lookup)
    /// already shows that value; returns whether it wrote. Like
    /// `sysctl::ensure`, but without touching `/proc`.
    pub fn ensure_ipv4_conf(&mut self, link: &Link, key: Ipv4DevConf, value: u32) -> Result<bool> {
        let have = link.ipv4_conf.map(|c| c.get(key));
        if have.is_some_and(|v| i64::from(v) == i64::from(value)) {
            return Ok(false);
        }
        self.set_ipv4_conf(link, &[(key, value)])?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::link::tests::netns_with_veth;
    use crate::netns::NetNs;

    fn proc_value(ns: &NetNs, ifname: &str, key: Ipv4DevConf) -> String {
        let path = format!("/proc/sys/net/ipv4/conf/{ifname}/{}", key.name());
        ns.run(|| {
            std::fs::read_to_string(&path).map_err(|e| crate::error::Error::io(path.clone(), e))
        })
        .unwrap()
        .trim()
        .to_string()
    }

    #[test]
    fn ids_match_the_kernel_header() {
        // include/uapi/linux/ip.h: FORWARDING=1, then one each in order.
        let ids: Vec<u16> = [
            Ipv4DevConf::Forwarding,
            Ipv4DevConf::ProxyArp,
            Ipv4DevConf::RpFilter,
            Ipv4DevConf::ArpNotify,
            Ipv4DevConf::AcceptLocal,
            Ipv4DevConf::RouteLocalnet,
        ]
        .map(Ipv4DevConf::id)
        .to_vec();
        assert_eq!(ids, [1, 3, 8, 22, 23, 26]);
    }

    #[test]
    fn lookups_report_ipv4_conf_matching_proc() {
        let (ns, mut nl, a, _b) = netns_with_veth();
        let conf = a.ipv4_conf.expect("a veth has IPv4 state");
        for key in [
            Ipv4DevConf::ArpNotify,
            Ipv4DevConf::RouteLocalnet,
            Ipv4DevConf::RpFilter,
            Ipv4DevConf::Forwarding,
        ] {
            assert_eq!(
                conf.get(key).to_string(),
                proc_value(&ns, "va", key),
                "{key:?}"
            );
        }
        let all = nl.links().unwrap();
        assert!(all.iter().all(|l| l.ipv4_conf.is_some()));
    }

    #[test]
    fn set_writes_what_proc_then_shows_and_zero_turns_off() {
        let (ns, mut nl, a, _b) = netns_with_veth();
        nl.set_ipv4_conf(
            &a,
            &[(Ipv4DevConf::ArpNotify, 1), (Ipv4DevConf::RouteLocalnet, 1)],
        )
        .unwrap();
        assert_eq!(proc_value(&ns, "va", Ipv4DevConf::ArpNotify), "1");
        assert_eq!(proc_value(&ns, "va", Ipv4DevConf::RouteLocalnet), "1");
        // The peer is untouched.
        assert_eq!(proc_value(&ns, "vb", Ipv4DevConf::ArpNotify), "0");
        let a = nl.link_by_index(a.index).unwrap().unwrap();
        let conf = a.ipv4_conf.unwrap();
        assert_eq!(conf.get(Ipv4DevConf::ArpNotify), 1);
        assert_eq!(conf.get(Ipv4DevConf::RouteLocalnet), 1);

        nl.set_ipv4_conf(&a, &[(Ipv4DevConf::ArpNotify, 0)])
            .unwrap();
        assert_eq!(proc_value(&ns, "va", Ipv4DevConf::ArpNotify), "0");
        assert_eq!(proc_value(&ns, "va", Ipv4DevConf::RouteLocalnet), "1");
    }

    #[test]
    fn ensure_writes_only_when_the_lookup_differs() {
        let (ns, mut nl, a, _b) = netns_with_veth();
        assert!(
            nl.ensure_ipv4_conf(&a, Ipv4DevConf::RouteLocalnet, 1)
                .unwrap()
        );
        assert_eq!(proc_value(&ns, "va", Ipv4DevConf::RouteLocalnet), "1");
        let a = nl.link_by_index(a.index).unwrap().unwrap();
        assert!(
            !nl.ensure_ipv4_conf(&a, Ipv4DevConf::RouteLocalnet, 1)
                .unwrap()
        );
    }

    #[test]
    fn errors_name_the_setting_and_link() {
        let (_ns, mut nl, a, _b) = netns_with_veth();
        nl.delete_link(&a).unwrap();
        let e = nl
            .set_ipv4_conf(&a, &[(Ipv4DevConf::ArpNotify, 1)])
            .unwrap_err();
        assert!(e.is_not_found(), "{e}");
        assert!(
            e.to_string()
                .starts_with("set IPv4 arp_notify=1 on \"va\": "),
            "{e}"
        );
    }
}
