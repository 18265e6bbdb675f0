//! Links: lookup, bridge and veth creation, state changes.

use std::os::fd::{AsFd, AsRawFd};

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{
    InfoBridge, InfoBridgePort, InfoData, InfoKind, InfoPortData, InfoVeth, LinkAttribute,
    LinkExtentMask, LinkFlags, LinkInfo, LinkMessage,
};

use super::devconf::Ipv4Conf;
use super::socket::Netlink;
use super::types::{MacAddr, OperState};
use crate::error::{Error, Result};
use crate::netns::NetNs;

/// A network interface as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// The hardware address, when it is a 6-byte Ethernet one.
    pub mac: Option<MacAddr>,
    pub mtu: u32,
    /// The link kind (`"bridge"`, `"veth"`, `"vlan"`, ...); `None` for
    /// physical devices and loopback.
    pub kind: Option<String>,
    /// Index of the master device (the bridge of a bridge port).
    pub master: Option<u32>,
    /// Raw `IFF_*` flags.
    pub flags: u32,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// Promiscuous mode requested by user space (`IFF_PROMISC`); being a bridge
    /// port raises [`Link::promiscuity`] without setting this.
    pub promisc: bool,
    /// The kernel's promiscuity counter (`IFLA_PROMISCUITY`).
    pub promiscuity: u32,
    pub oper_state: OperState,
    /// `IFLA_LINK`: the peer of a veth or the lower device of a vlan. Only
    /// reported when it differs from `index`; lives in the netns named by
    /// `link_netnsid` when that is set.
    pub peer_index: Option<u32>,
    /// `IFLA_LINK_NETNSID`: the peer is in another netns, known by this id.
    pub link_netnsid: Option<i32>,
    /// For bridges: whether VLAN filtering is on.
    pub vlan_filtering: Option<bool>,
    /// For bridge ports: the port flags.
    pub bridge_port: Option<BridgePortInfo>,
    /// The `net/ipv4/conf/<if>/` settings at lookup time; `None` when the
    /// interface has no IPv4 state.
    pub ipv4_conf: Option<Ipv4Conf>,
    /// `IFLA_IFALIAS`, the free-text description (`ip link set X alias ...`);
    /// `None` when unset.
    pub alias: Option<String>,
}

/// Flags of a bridge port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BridgePortInfo {
    pub hairpin: bool,
    pub isolated: bool,
}

impl Link {
    pub fn is_bridge(&self) -> bool {
        self.kind.as_deref() == Some("bridge")
    }

    pub fn is_veth(&self) -> bool {
        self.kind.as_deref() == Some("veth")
    }

    pub(crate) fn from_msg(msg: LinkMessage) -> Link {
        let flags = msg.header.flags;
        let mut link = Link {
            index: msg.header.index,
            flags: flags.bits(),
            up: flags.contains(LinkFlags::Up),
            promisc: flags.contains(LinkFlags::Promisc),
            ..Link::default()
        };
        for attr in msg.attributes {
            match attr {
                LinkAttribute::IfName(n) => link.name = n,
                LinkAttribute::Address(a) => link.mac = MacAddr::from_slice(&a),
                LinkAttribute::Mtu(m) => link.mtu = m,
                LinkAttribute::Controller(m) if m != 0 => link.master = Some(m),
                LinkAttribute::Promiscuity(p) => link.promiscuity = p,
                LinkAttribute::OperState(s) => link.oper_state = OperState::from(u8::from(s)),
                LinkAttribute::Link(l) if l != 0 => link.peer_index = Some(l),
                LinkAttribute::LinkNetNsId(id) => link.link_netnsid = Some(id),
                LinkAttribute::IfAlias(a) if !a.is_empty() => link.alias = Some(a),
                LinkAttribute::LinkInfo(infos) => link.read_link_info(infos),
                LinkAttribute::AfSpecUnspec(specs) => {
                    link.ipv4_conf = Ipv4Conf::from_af_spec(&specs);
                }
                _ => {}
            }
        }
        link
    }

    fn read_link_info(&mut self, infos: Vec<LinkInfo>) {
        for info in infos {
            match info {
                LinkInfo::Kind(k) => self.kind = Some(k.to_string()),
                LinkInfo::Data(InfoData::Bridge(opts)) => {
                    for o in opts {
                        if let InfoBridge::VlanFiltering(v) = o {
                            self.vlan_filtering = Some(v);
                        }
                    }
                }
                LinkInfo::PortData(InfoPortData::BridgePort(opts)) => {
                    let mut port = BridgePortInfo::default();
                    for o in opts {
                        match o {
                            InfoBridgePort::HairpinMode(v) => port.hairpin = v,
                            InfoBridgePort::Isolated(v) => port.isolated = v,
                            _ => {}
                        }
                    }
                    self.bridge_port = Some(port);
                }
                _ => {}
            }
        }
    }
}

fn msg_for(index: u32) -> LinkMessage {
    let mut m = LinkMessage::default();
    m.header.index = index;
    m
}

fn into_link(reply: Option<RouteNetlinkMessage>) -> Option<Link> {
    match reply {
        Some(RouteNetlinkMessage::NewLink(m)) => Some(Link::from_msg(m)),
        _ => None,
    }
}

impl Netlink {
    /// The link called `name`, or `None` when there is none.
    pub fn link_by_name(&mut self, name: &str) -> Result<Option<Link>> {
        let mut m = msg_for(0);
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        m.attributes
            .push(LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats]));
        let reply = self.get(RouteNetlinkMessage::GetLink(m), || {
            format!("look up link {name:?}")
        })?;
        Ok(into_link(reply))
    }

    /// The link with this index, or `None` when there is none.
    pub fn link_by_index(&mut self, index: u32) -> Result<Option<Link>> {
        let mut m = msg_for(index);
        m.attributes
            .push(LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats]));
        let reply = self.get(RouteNetlinkMessage::GetLink(m), || {
            format!("look up link {index}")
        })?;
        Ok(into_link(reply))
    }

    /// All links of this socket's netns.
    pub fn links(&mut self) -> Result<Vec<Link>> {
        let mut m = msg_for(0);
        m.attributes
            .push(LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats]));
        let msgs = self.dump(RouteNetlinkMessage::GetLink(m), || "list links".into())?;
        Ok(msgs
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(m) => Some(Link::from_msg(m)),
                _ => None,
            })
            .collect())
    }

    /// Fetches a link that must exist (just created or just changed).
    fn must_link(&mut self, name: &str, op: &str) -> Result<Link> {
        self.link_by_name(name)?
            .ok_or_else(|| Error::protocol(op, "link vanished right after creation"))
    }

    /// Creates a bridge. VLAN filtering is only requested when asked for:
    /// kernels built without it reject even `vlan_filtering 0`.
    ///
    /// An existing link of that name fails with
    /// [`Error::is_exists`](crate::error::Error::is_exists), which concurrent
    /// ADDs tolerate.
    pub fn create_bridge(
        &mut self,
        name: &str,
        mtu: Option<u32>,
        vlan_filtering: bool,
    ) -> Result<Link> {
        let op = format!("create bridge {name:?}");
        let mut m = msg_for(0);
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        if let Some(mtu) = mtu {
            m.attributes.push(LinkAttribute::Mtu(mtu));
        }
        let mut info = vec![LinkInfo::Kind(InfoKind::Bridge)];
        if vlan_filtering {
            info.push(LinkInfo::Data(InfoData::Bridge(vec![
                InfoBridge::VlanFiltering(true),
            ])));
        }
        m.attributes.push(LinkAttribute::LinkInfo(info));
        self.ack(
            RouteNetlinkMessage::NewLink(m),
            NLM_F_CREATE | NLM_F_EXCL,
            || op.clone(),
        )?;
        self.must_link(name, &op)
    }

    /// Creates a veth pair: `name` in this socket's netns, `peer_name` in
    /// `peer_ns` (or here too when `None`). Both ends get `mtu`; `mac` is set
    /// on `name` only. Returns the local end.
    ///
    /// A name clash on either side fails with
    /// [`Error::is_exists`](crate::error::Error::is_exists); check which side
    /// clashed with [`Netlink::link_by_name`].
    pub fn create_veth(
        &mut self,
        name: &str,
        peer_name: &str,
        mtu: Option<u32>,
        mac: Option<MacAddr>,
        peer_ns: Option<&NetNs>,
    ) -> Result<Link> {
        let op = format!("create veth {name:?} with peer {peer_name:?}");
        let mut peer = msg_for(0);
        peer.attributes
            .push(LinkAttribute::IfName(peer_name.to_string()));
        if let Some(mtu) = mtu {
            peer.attributes.push(LinkAttribute::Mtu(mtu));
        }
        if let Some(ns) = peer_ns {
            peer.attributes
                .push(LinkAttribute::NetNsFd(ns.as_fd().as_raw_fd()));
        }
        let mut m = msg_for(0);
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        if let Some(mtu) = mtu {
            m.attributes.push(LinkAttribute::Mtu(mtu));
        }
        if let Some(mac) = mac {
            m.attributes.push(LinkAttribute::Address(mac.0.to_vec()));
        }
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
        ]));
        self.ack(
            RouteNetlinkMessage::NewLink(m),
            NLM_F_CREATE | NLM_F_EXCL,
            || op.clone(),
        )?;
        self.must_link(name, &op)
    }

    /// Deletes a link (for a veth, both ends go).
    pub fn delete_link(&mut self, link: &Link) -> Result<()> {
        self.ack(RouteNetlinkMessage::DelLink(msg_for(link.index)), 0, || {
            format!("delete link {:?}", link.name)
        })
    }

    fn set_flag(&mut self, link: &Link, flag: LinkFlags, on: bool, what: &str) -> Result<()> {
        let mut m = msg_for(link.index);
        m.header.change_mask = flag;
        if on {
            m.header.flags = flag;
        }
        self.ack(RouteNetlinkMessage::SetLink(m), 0, || {
            format!("set {:?} {what}", link.name)
        })
    }

    pub fn set_link_up(&mut self, link: &Link) -> Result<()> {
        self.set_flag(link, LinkFlags::Up, true, "up")
    }

    pub fn set_link_down(&mut self, link: &Link) -> Result<()> {
        self.set_flag(link, LinkFlags::Up, false, "down")
    }

    /// Sets or clears user-requested promiscuous mode.
    pub fn set_promisc(&mut self, link: &Link, on: bool) -> Result<()> {
        let what = if on { "promisc on" } else { "promisc off" };
        self.set_flag(link, LinkFlags::Promisc, on, what)
    }

    fn set_attr(&mut self, link: &Link, attr: LinkAttribute, what: String) -> Result<()> {
        let mut m = msg_for(link.index);
        m.attributes.push(attr);
        self.ack(RouteNetlinkMessage::SetLink(m), 0, || {
            format!("set {what} on {:?}", link.name)
        })
    }

    pub fn set_mtu(&mut self, link: &Link, mtu: u32) -> Result<()> {
        self.set_attr(link, LinkAttribute::Mtu(mtu), format!("mtu {mtu}"))
    }

    pub fn set_mac(&mut self, link: &Link, mac: MacAddr) -> Result<()> {
        self.set_attr(
            link,
            LinkAttribute::Address(mac.0.to_vec()),
            format!("mac {mac}"),
        )
    }

    /// Sets the link's alias (its free-text description); an empty one
    /// removes it.
    pub fn set_alias(&mut self, link: &Link, alias: &str) -> Result<()> {
        self.set_attr(
            link,
            LinkAttribute::IfAlias(alias.to_string()),
            format!("alias {alias:?}"),
        )
    }

    /// Enslaves `link` to `master` (a bridge), or frees it with `None`.
    pub fn set_master(&mut self, link: &Link, master: Option<&Link>) -> Result<()> {
        let (index, what) = match master {
            Some(m) => (m.index, format!("master {:?}", m.name)),
            None => (0, "no master".to_string()),
        };
        self.set_attr(link, LinkAttribute::Controller(index), what)
    }

    /// Moves `link` into another network namespace. Its index may change
    /// there; look it up again by name through a socket of that netns.
    pub fn set_netns(&mut self, link: &Link, ns: &NetNs) -> Result<()> {
        self.set_attr(
            link,
            LinkAttribute::NetNsFd(ns.as_fd().as_raw_fd()),
            format!("netns {:?}", ns.path()),
        )
    }

    /// Turns VLAN filtering on or off on an existing bridge.
    pub fn set_bridge_vlan_filtering(&mut self, bridge: &Link, on: bool) -> Result<()> {
        let mut m = msg_for(bridge.index);
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Bridge),
            LinkInfo::Data(InfoData::Bridge(vec![InfoBridge::VlanFiltering(on)])),
        ]));
        self.ack(RouteNetlinkMessage::NewLink(m), 0, || {
            format!("set vlan_filtering {} on {:?}", u8::from(on), bridge.name)
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::netns::testing::{fresh, unique};

    /// A veth pair inside one fresh netns, for tests that need a real link.
    pub fn netns_with_veth() -> (NetNs, Netlink, Link, Link) {
        let ns = fresh();
        let mut nl = Netlink::open_in(&ns).unwrap();
        let a = nl.create_veth("va", "vb", None, None, None).unwrap();
        let b = nl.link_by_name("vb").unwrap().unwrap();
        (ns, nl, a, b)
    }

    #[test]
    fn lookups_find_loopback_and_report_missing_links() {
        let ns = fresh();
        let mut nl = Netlink::open_in(&ns).unwrap();
        let lo = nl.link_by_name("lo").unwrap().unwrap();
        assert_eq!(lo.index, 1);
        assert_eq!(nl.link_by_index(1).unwrap().unwrap().name, "lo");
        assert!(nl.link_by_name("nosuch0").unwrap().is_none());
        assert!(nl.link_by_index(4242).unwrap().is_none());
        let all = nl.links().unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].name, "lo");
    }

    #[test]
    fn alias_is_set_read_back_and_removed() {
        let ns = fresh();
        let mut nl = Netlink::open_in(&ns).unwrap();
        let br = nl.create_bridge("br-alias", None, false).unwrap();
        assert_eq!(br.alias, None);
        nl.set_alias(&br, "made by a test").unwrap();
        let got = nl.link_by_index(br.index).unwrap().unwrap();
        assert_eq!(got.alias.as_deref(), Some("made by a test"));
        nl.set_alias(&br, "").unwrap();
        assert_eq!(nl.link_by_index(br.index).unwrap().unwrap().alias, None);
    }

    #[test]
    fn bridge_create_exists_and_attributes() {
        let ns = fresh();
        let mut nl = Netlink::open_in(&ns).unwrap();
        let br = nl.create_bridge("br-test", Some(1400), false).unwrap();
        assert!(br.is_bridge());
        assert_eq!(br.mtu, 1400);
        assert_eq!(br.vlan_filtering, Some(false));
        assert!(br.mac.is_some());

        let e = nl.create_bridge("br-test", None, false).unwrap_err();
        assert!(e.is_exists(), "{e}");
        assert!(
            e.to_string()
                .starts_with("create bridge \"br-test\": File exists"),
            "{e}"
        );

        nl.set_link_up(&br).unwrap();
        nl.set_promisc(&br, true).unwrap();
        let got = nl.link_by_index(br.index).unwrap().unwrap();
        assert!(got.up && got.promisc);
        nl.set_promisc(&br, false).unwrap();
        nl.set_link_down(&br).unwrap();
        let got = nl.link_by_index(br.index).unwrap().unwrap();
        assert!(!got.up && !got.promisc);

        nl.set_mtu(&br, 1300).unwrap();
        let mac: MacAddr = "0a:58:0a:01:02:03".parse().unwrap();
        nl.set_mac(&br, mac).unwrap();
        let got = nl.link_by_name("br-test").unwrap().unwrap();
        assert_eq!(got.mtu, 1300);
        assert_eq!(got.mac, Some(mac));

        nl.delete_link(&br).unwrap();
        assert!(nl.link_by_name("br-test").unwrap().is_none());
        let e = nl.delete_link(&br).unwrap_err();
        assert!(e.is_not_found(), "{e}");
    }

    #[test]
    fn vlan_filtering_bridge_or_not_supported() {
        let ns = fresh();
        let mut nl = Netlink::open_in(&ns).unwrap();
        match nl.create_bridge("br-vf", None, true) {
            Ok(br) => {
                assert_eq!(br.vlan_filtering, Some(true));
                nl.set_bridge_vlan_filtering(&br, false).unwrap();
                let br = nl.link_by_index(br.index).unwrap().unwrap();
                assert_eq!(br.vlan_filtering, Some(false));
            }
            // Kernels without CONFIG_BRIDGE_VLAN_FILTERING.
            Err(e) => assert!(e.is_not_supported(), "{e}"),
        }
    }

    #[test]
    fn veth_peer_goes_straight_into_another_netns() {
        let host = fresh();
        let ctr = fresh();
        let mut host_nl = Netlink::open_in(&host).unwrap();
        let mut ctr_nl = Netlink::open_in(&ctr).unwrap();
        let peer = unique("veth");
        let mac: MacAddr = "0a:58:0a:01:02:99".parse().unwrap();
        let eth0 = ctr_nl
            .create_veth("eth0", &peer, Some(1450), Some(mac), Some(&host))
            .unwrap();
        assert!(eth0.is_veth());
        assert_eq!(eth0.mtu, 1450);
        assert_eq!(eth0.mac, Some(mac));
        assert!(eth0.link_netnsid.is_some());
        assert!(ctr_nl.link_by_name(&peer).unwrap().is_none());

        let hv = host_nl.link_by_name(&peer).unwrap().unwrap();
        assert!(hv.is_veth());
        assert_eq!(hv.mtu, 1450);
        assert_eq!(hv.peer_index, Some(eth0.index));
        assert_eq!(eth0.peer_index, Some(hv.index));

        // Same container name again: EEXIST, whichever peer name is used.
        let e = ctr_nl
            .create_veth("eth0", &unique("veth"), None, None, Some(&host))
            .unwrap_err();
        assert!(e.is_exists(), "{e}");
        // Same peer name in the host: EEXIST too.
        let e = ctr_nl
            .create_veth("eth1", &peer, None, None, Some(&host))
            .unwrap_err();
        assert!(e.is_exists(), "{e}");
        assert!(ctr_nl.link_by_name("eth1").unwrap().is_none());

        // Deleting one end removes both.
        ctr_nl.delete_link(&eth0).unwrap();
        assert!(host_nl.link_by_name(&peer).unwrap().is_none());
    }

    #[test]
    fn set_netns_moves_a_link() {
        let (_ns, mut nl, a, _b) = netns_with_veth();
        let other = fresh();
        nl.set_netns(&a, &other).unwrap();
        assert!(nl.link_by_name("va").unwrap().is_none());
        let mut other_nl = Netlink::open_in(&other).unwrap();
        assert!(other_nl.link_by_name("va").unwrap().is_some());
    }

    #[test]
    fn master_and_port_info() {
        let (_ns, mut nl, a, _b) = netns_with_veth();
        let br = nl.create_bridge("br0", None, false).unwrap();
        nl.set_master(&a, Some(&br)).unwrap();
        let a2 = nl.link_by_index(a.index).unwrap().unwrap();
        assert_eq!(a2.master, Some(br.index));
        assert_eq!(a2.bridge_port, Some(BridgePortInfo::default()));
        assert!(!a2.promisc);
        assert!(a2.promiscuity >= 1);
        nl.set_master(&a, None).unwrap();
        let a3 = nl.link_by_index(a.index).unwrap().unwrap();
        assert_eq!(a3.master, None);
        assert_eq!(a3.bridge_port, None);
    }

    #[test]
    fn oper_state_follows_carrier() {
        let (_ns, mut nl, a, b) = netns_with_veth();
        nl.set_link_up(&a).unwrap();
        nl.set_link_up(&b).unwrap();
        let a = nl.link_by_index(a.index).unwrap().unwrap();
        assert_eq!(a.oper_state, OperState::Up);
        nl.set_link_down(&b).unwrap();
        let a = nl.link_by_index(a.index).unwrap().unwrap();
        assert_eq!(a.oper_state, OperState::LowerLayerDown);
        assert_eq!(a.oper_state.to_string(), "lower-layer-down");
    }
}
