//! Netns-wide forwarding state through RTM_GETNETCONF.
//!
//! `net.ipv4.ip_forward` is the `all` entry of the IPv4 per-interface
//! settings, which RTM_GETNETCONF reports for `NETCONFA_IFINDEX_ALL`; asking
//! there spares a walk below `/proc/sys/net/ipv4`, which with a thousand
//! network namespaces costs ~150 µs even from the host. `netlink-packet-route`
//! has no netconf messages, so these are encoded here.
//!
//! Only reading: the kernel has no netlink verb that changes `all`, and the
//! `/proc` write also fans out to every interface.

use netlink_packet_core::{NlaBuffer, NlasIterator};

use super::socket::Netlink;
use super::types::Family;
use crate::error::{Error, Result};

const RTM_NEWNETCONF: u16 = 80;
const RTM_GETNETCONF: u16 = 82;
const NETCONFA_IFINDEX: u16 = 1;
const NETCONFA_FORWARDING: u16 = 2;
/// The `all` entry (`net/ipv4/conf/all`, which `ip_forward` also is).
const NETCONFA_IFINDEX_ALL: i32 = -1;
/// `struct netconfmsg` is one family byte, padded to 4 in a message.
const NETCONFMSG_LEN: usize = 4;

fn forwarding_request(family: Family) -> Vec<u8> {
    let mut req = vec![0u8; NETCONFMSG_LEN];
    req[0] = u8::from(family.af());
    req.extend_from_slice(&8u16.to_ne_bytes());
    req.extend_from_slice(&NETCONFA_IFINDEX.to_ne_bytes());
    req.extend_from_slice(&NETCONFA_IFINDEX_ALL.to_ne_bytes());
    req
}

/// `NETCONFA_FORWARDING` of an RTM_NEWNETCONF payload.
fn forwarding_in(payload: &[u8]) -> Option<i32> {
    let attrs = payload.get(NETCONFMSG_LEN..)?;
    for nla in NlasIterator::new(attrs) {
        let nla: NlaBuffer<&[u8]> = nla.ok()?;
        if nla.kind() == NETCONFA_FORWARDING {
            return Some(i32::from_ne_bytes(nla.value().get(..4)?.try_into().ok()?));
        }
    }
    None
}

impl Netlink {
    /// Whether forwarding is on netns-wide: `net/ipv4/ip_forward` or
    /// `net/ipv6/conf/all/forwarding`. `None` when the kernel answers without
    /// saying.
    pub fn forwarding(&mut self, family: Family) -> Result<Option<bool>> {
        let op = || format!("read {family} forwarding");
        let reply = self.get_raw(RTM_GETNETCONF, &forwarding_request(family), op)?;
        let Some((mtype, payload)) = reply else {
            return Ok(None);
        };
        if mtype != RTM_NEWNETCONF || payload.first() != Some(&u8::from(family.af())) {
            return Err(Error::protocol(
                op(),
                format!("unexpected reply type {mtype}"),
            ));
        }
        Ok(forwarding_in(&payload).map(|v| v != 0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netns::testing::fresh;

    fn proc_forwarding(ns: &crate::netns::NetNs, family: Family) -> String {
        let key = match family {
            Family::V4 => "net/ipv4/ip_forward",
            Family::V6 => "net/ipv6/conf/all/forwarding",
        };
        ns.run(|| crate::sysctl::get(key)).unwrap()
    }

    #[test]
    fn forwarding_follows_proc_in_both_families() {
        let ns = fresh();
        let mut nl = Netlink::open_in(&ns).unwrap();
        for family in [Family::V4, Family::V6] {
            let key = match family {
                Family::V4 => "net/ipv4/ip_forward",
                Family::V6 => "net/ipv6/conf/all/forwarding",
            };
            let now = nl.forwarding(family).unwrap();
            assert_eq!(now, Some(proc_forwarding(&ns, family) != "0"), "{family}");
            for (value, on) in [("1", true), ("0", false)] {
                ns.run(|| crate::sysctl::set(key, value)).unwrap();
                assert_eq!(nl.forwarding(family).unwrap(), Some(on), "{family}");
            }
        }
    }

    #[test]
    fn request_is_family_then_ifindex_all() {
        let req = forwarding_request(Family::V4);
        assert_eq!(req.len(), 12);
        assert_eq!(req[0], 2);
        assert_eq!(&req[4..8], &[8, 0, 1, 0]);
        assert_eq!(&req[8..], &(-1i32).to_ne_bytes());
        assert_eq!(
            forwarding_in(&[2, 0, 0, 0, 8, 0, 2, 0, 1, 0, 0, 0]),
            Some(1)
        );
        assert_eq!(forwarding_in(&[2, 0, 0, 0]), None);
        assert_eq!(forwarding_in(&[2]), None);
    }
}
