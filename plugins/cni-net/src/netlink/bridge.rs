//! Bridge ports: port flags (IFLA_PROTINFO) and VLAN membership (IFLA_AF_SPEC),
//! both sent as AF_BRIDGE link requests that the kernel hands to the port's
//! master bridge.

use netlink_packet_core::DefaultNla;
use netlink_packet_route::link::{
    AfSpecBridge, BridgeFlag, BridgeVlanInfo, BridgeVlanInfoFlags, LinkAttribute, LinkExtentMask,
    LinkMessage, LinkProtoInfoBridge,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::link::Link;
use super::socket::Netlink;
use crate::error::Result;

const IFLA_BRPORT_MODE: u16 = 4;
const IFLA_BRPORT_ISOLATED: u16 = 33;

/// A VLAN a bridge port (or the bridge itself) is a member of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BridgeVlan {
    pub vid: u16,
    /// Untagged ingress frames are put into this VLAN.
    pub pvid: bool,
    /// Frames of this VLAN leave the port untagged.
    pub untagged: bool,
}

fn bridge_msg(index: u32) -> LinkMessage {
    let mut m = LinkMessage::default();
    m.header.interface_family = AddressFamily::Bridge;
    m.header.index = index;
    m
}

fn vlan_spec(vid: u16, pvid: bool, untagged: bool, on_bridge_itself: bool) -> LinkAttribute {
    let mut flags = BridgeVlanInfoFlags::empty();
    if pvid {
        flags |= BridgeVlanInfoFlags::Pvid;
    }
    if untagged {
        flags |= BridgeVlanInfoFlags::Untagged;
    }
    let target = if on_bridge_itself {
        BridgeFlag::LowerDev
    } else {
        BridgeFlag::Controller
    };
    LinkAttribute::AfSpecBridge(vec![
        AfSpecBridge::Flags(target),
        AfSpecBridge::VlanInfo(BridgeVlanInfo { flags, vid }),
    ])
}

impl Netlink {
    fn set_port_flag(&mut self, port: &Link, attr: u16, on: bool, what: &str) -> Result<()> {
        let mut m = bridge_msg(port.index);
        m.attributes.push(LinkAttribute::ProtoInfoBridge(vec![
            LinkProtoInfoBridge::Other(DefaultNla::new(attr, vec![u8::from(on)])),
        ]));
        self.ack(RouteNetlinkMessage::SetLink(m), 0, || {
            format!(
                "set {what} {} on bridge port {:?}",
                if on { "on" } else { "off" },
                port.name
            )
        })
    }

    /// Hairpin mode: frames may leave through the port they came in on (lets
    /// a container reach itself through a Service VIP).
    pub fn set_port_hairpin(&mut self, port: &Link, on: bool) -> Result<()> {
        self.set_port_flag(port, IFLA_BRPORT_MODE, on, "hairpin")
    }

    /// Isolated ports cannot talk to each other, only to non-isolated ports.
    pub fn set_port_isolated(&mut self, port: &Link, on: bool) -> Result<()> {
        self.set_port_flag(port, IFLA_BRPORT_ISOLATED, on, "isolated")
    }

    fn vlan_change(
        &mut self,
        link: &Link,
        spec: LinkAttribute,
        add: bool,
        what: String,
    ) -> Result<()> {
        let mut m = bridge_msg(link.index);
        m.attributes.push(spec);
        let req = if add {
            RouteNetlinkMessage::SetLink(m)
        } else {
            RouteNetlinkMessage::DelLink(m)
        };
        self.ack(req, 0, || format!("{what} on {:?}", link.name))
    }

    /// Adds a VLAN to a bridge port (`bridge vlan add dev PORT vid N [pvid]
    /// [untagged] master`). Needs a kernel with bridge VLAN filtering, else
    /// [`Error::is_not_supported`](crate::error::Error::is_not_supported).
    pub fn bridge_vlan_add(
        &mut self,
        port: &Link,
        vid: u16,
        pvid: bool,
        untagged: bool,
    ) -> Result<()> {
        let spec = vlan_spec(vid, pvid, untagged, false);
        self.vlan_change(port, spec, true, format!("add vlan {vid}"))
    }

    /// Removes a VLAN from a bridge port (`bridge vlan del dev PORT vid N`).
    pub fn bridge_vlan_del(&mut self, port: &Link, vid: u16) -> Result<()> {
        let spec = vlan_spec(vid, false, false, false);
        self.vlan_change(port, spec, false, format!("delete vlan {vid}"))
    }

    /// Adds a VLAN to the bridge device itself (`bridge vlan add dev BR vid N
    /// self`), for traffic the bridge's own IP stack sends and receives.
    pub fn bridge_vlan_add_self(
        &mut self,
        bridge: &Link,
        vid: u16,
        pvid: bool,
        untagged: bool,
    ) -> Result<()> {
        let spec = vlan_spec(vid, pvid, untagged, true);
        self.vlan_change(bridge, spec, true, format!("add vlan {vid} self"))
    }

    /// Removes a VLAN from the bridge device itself.
    pub fn bridge_vlan_del_self(&mut self, bridge: &Link, vid: u16) -> Result<()> {
        let spec = vlan_spec(vid, false, false, true);
        self.vlan_change(bridge, spec, false, format!("delete vlan {vid} self"))
    }

    /// The VLANs of a bridge port (or of the bridge itself), sorted by id.
    /// Empty when VLAN filtering is unsupported or the link is no port.
    pub fn bridge_vlans(&mut self, link: &Link) -> Result<Vec<BridgeVlan>> {
        let mut m = bridge_msg(0);
        m.attributes
            .push(LinkAttribute::ExtMask(vec![LinkExtentMask::Brvlan]));
        let msgs = self.dump(RouteNetlinkMessage::GetLink(m), || {
            format!("list bridge vlans of {:?}", link.name)
        })?;
        let mut out = Vec::new();
        for msg in msgs {
            let RouteNetlinkMessage::NewLink(msg) = msg else {
                continue;
            };
            if msg.header.index != link.index {
                continue;
            }
            for attr in msg.attributes {
                let LinkAttribute::AfSpecBridge(specs) = attr else {
                    continue;
                };
                for spec in specs {
                    if let AfSpecBridge::VlanInfo(v) = spec {
                        out.push(BridgeVlan {
                            vid: v.vid,
                            pvid: v.flags.contains(BridgeVlanInfoFlags::Pvid),
                            untagged: v.flags.contains(BridgeVlanInfoFlags::Untagged),
                        });
                    }
                }
            }
        }
        out.sort_by_key(|v| v.vid);
        out.dedup();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use netlink_packet_core::Emitable;

    use super::*;
    use crate::netlink::BridgePortInfo;
    use crate::netlink::link::tests::netns_with_veth;

    #[test]
    fn vlan_request_encodes_like_iproute2() {
        let mut m = bridge_msg(7);
        m.attributes.push(vlan_spec(100, true, true, false));
        let mut buf = vec![0u8; m.buffer_len()];
        m.emit(&mut buf);
        // ifinfomsg: AF_BRIDGE (7), index 7.
        assert_eq!(buf[0], libc::AF_BRIDGE as u8);
        assert_eq!(&buf[4..8], &7u32.to_ne_bytes());
        let attrs = &buf[16..];
        // IFLA_AF_SPEC (26), len 4 + 8 (flags) + 8 (vlan info).
        assert_eq!(&attrs[0..4], &[20, 0, 26, 0]);
        // IFLA_BRIDGE_FLAGS (0) = BRIDGE_FLAGS_MASTER (1), padded.
        assert_eq!(&attrs[4..12], &[6, 0, 0, 0, 1, 0, 0, 0]);
        // IFLA_BRIDGE_VLAN_INFO (2): flags PVID|UNTAGGED (2|4), vid 100.
        assert_eq!(&attrs[12..20], &[8, 0, 2, 0, 6, 0, 100, 0]);
    }

    #[test]
    fn hairpin_and_isolated_flags() {
        let (_ns, mut nl, a, _b) = netns_with_veth();
        let br = nl.create_bridge("br0", None, false).unwrap();
        nl.set_master(&a, Some(&br)).unwrap();
        nl.set_port_hairpin(&a, true).unwrap();
        let got = nl.link_by_index(a.index).unwrap().unwrap();
        assert_eq!(
            got.bridge_port,
            Some(BridgePortInfo {
                hairpin: true,
                isolated: false
            })
        );
        nl.set_port_isolated(&a, true).unwrap();
        nl.set_port_hairpin(&a, false).unwrap();
        let got = nl.link_by_index(a.index).unwrap().unwrap();
        assert_eq!(
            got.bridge_port,
            Some(BridgePortInfo {
                hairpin: false,
                isolated: true
            })
        );
    }

    #[test]
    fn port_flags_need_a_master() {
        let (_ns, mut nl, a, _b) = netns_with_veth();
        let e = nl.set_port_hairpin(&a, true).unwrap_err();
        assert!(e.is_not_supported(), "{e}");
        assert!(
            e.to_string()
                .starts_with("set hairpin on on bridge port \"va\": "),
            "{e}"
        );
    }

    #[test]
    fn vlans_on_ports_or_not_supported() {
        let (_ns, mut nl, a, _b) = netns_with_veth();
        let br = match nl.create_bridge("br0", None, true) {
            Ok(br) => br,
            Err(e) if e.is_not_supported() => {
                // Kernel without CONFIG_BRIDGE_VLAN_FILTERING: requests must
                // fail cleanly rather than half-apply.
                let br = nl.create_bridge("br0", None, false).unwrap();
                nl.set_master(&a, Some(&br)).unwrap();
                let e = nl.bridge_vlan_add(&a, 10, true, true).unwrap_err();
                assert!(e.is_not_supported(), "{e}");
                assert!(nl.bridge_vlans(&a).unwrap().is_empty());
                return;
            }
            Err(e) => panic!("{e}"),
        };
        nl.set_master(&a, Some(&br)).unwrap();
        // A new port starts in the default VLAN 1 as pvid untagged.
        assert_eq!(
            nl.bridge_vlans(&a).unwrap(),
            vec![BridgeVlan {
                vid: 1,
                pvid: true,
                untagged: true
            }]
        );
        nl.bridge_vlan_del(&a, 1).unwrap();
        nl.bridge_vlan_add(&a, 10, true, true).unwrap();
        nl.bridge_vlan_add(&a, 20, false, false).unwrap();
        assert_eq!(
            nl.bridge_vlans(&a).unwrap(),
            vec![
                BridgeVlan {
                    vid: 10,
                    pvid: true,
                    untagged: true
                },
                BridgeVlan {
                    vid: 20,
                    pvid: false,
                    untagged: false
                }
            ]
        );
        nl.bridge_vlan_add_self(&br, 10, false, false).unwrap();
        assert!(nl.bridge_vlans(&br).unwrap().iter().any(|v| v.vid == 10));
        nl.bridge_vlan_del_self(&br, 10).unwrap();
        nl.bridge_vlan_del(&a, 20).unwrap();
        assert_eq!(nl.bridge_vlans(&a).unwrap().len(), 1);
    }
}
