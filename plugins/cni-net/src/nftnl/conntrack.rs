//! Conntrack cleanup over `NETLINK_NETFILTER` (ctnetlink), without the `conntrack`
//! binary.
//!
//! A UDP "connection" to a host port that existed before the port was mapped (or that
//! was mapped to a container now gone) keeps its old NAT decision for as long as
//! packets keep flowing, blackholing the new mapping. portmap deletes those entries.
//!
//! The kernel cannot delete by partial tuple, so like the reference (through
//! vishvananda/netlink) we dump the family's table, filter in process, and delete each
//! match by its exact original tuple — echoing back the tuple (and zone) attributes the
//! kernel sent us, so no tuple encoding of our own can disagree with the kernel's.

use std::io;
use std::net::IpAddr;

use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};

use super::close_at_exit;
use super::wire::{self, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, attributes_whole, find};
use crate::Family;
use crate::nat::error::NatError;
use crate::nat::model::Proto;

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;

const CTA_TUPLE_ORIG: u16 = 1;
const CTA_ZONE: u16 = 18;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_DST_PORT: u16 = 3;

/// Which entries to delete: protocol and original destination port, optionally the
/// original destination address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DstFilter {
    pub family: Family,
    pub protocol: Proto,
    pub port: u16,
    pub address: Option<IpAddr>,
}

/// Deletes every entry of `family` matching any of `filters`, with one dump.
pub fn delete_matching(family: Family, filters: &[DstFilter]) -> Result<usize, NatError> {
    if filters.is_empty() {
        return Ok(0);
    }
    let err = |context: &str| {
        let context = context.to_string();
        move |source: io::Error| NatError::Conntrack { context, source }
    };
    let mut socket =
        Socket::new(NETLINK_NETFILTER).map_err(err("open netfilter netlink socket"))?;
    socket
        .bind_auto()
        .map_err(err("bind netfilter netlink socket"))?;
    let result = delete_on(&socket, family, filters);
    // Its release would wait for nf_tables' pending deletions (see close_at_exit).
    close_at_exit(socket);
    result
}

/// [`delete_matching`] on an open ctnetlink socket.
fn delete_on(socket: &Socket, family: Family, filters: &[DstFilter]) -> Result<usize, NatError> {
    let err = |context: &str| {
        let context = context.to_string();
        move |source: io::Error| NatError::Conntrack { context, source }
    };
    let kernel = SocketAddr::new(0, 0);

    let dump = request(
        IPCTNL_MSG_CT_GET,
        NLM_F_REQUEST | NLM_F_DUMP,
        1,
        family,
        &[],
    );
    socket
        .send_to(&dump, &kernel, 0)
        .map_err(err("dump conntrack table"))?;
    let mut victims: Vec<Vec<u8>> = Vec::new();
    for_each_reply(socket, 1, |payload| {
        let entry = Entry::parse(payload);
        if filters
            .iter()
            .any(|f| f.family == family && entry.matches(f))
            && let Some(key) = entry.key
        {
            victims.push(key);
        }
    })
    .map_err(err("dump conntrack table"))?;

    let mut deleted = 0;
    for (i, key) in victims.iter().enumerate() {
        let seq = 2 + i as u32;
        let msg = request(
            IPCTNL_MSG_CT_DELETE,
            NLM_F_REQUEST | NLM_F_ACK,
            seq,
            family,
            key,
        );
        socket
            .send_to(&msg, &kernel, 0)
            .map_err(err("delete conntrack entry"))?;
        match for_each_reply(socket, seq, |_| {}) {
            Ok(()) => deleted += 1,
            // Expired or deleted by someone else since the dump: what we wanted.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(err("delete conntrack entry")(e)),
        }
    }
    Ok(deleted)
}

/// A ctnetlink request: netlink header, nfgenmsg, then `attrs` verbatim.
fn request(msg: u16, flags: u16, seq: u32, family: Family, attrs: &[u8]) -> Vec<u8> {
    let af = match family {
        Family::V4 => libc::AF_INET as u8,
        Family::V6 => libc::AF_INET6 as u8,
    };
    wire::message((NFNL_SUBSYS_CTNETLINK << 8) | msg, flags, seq, af, 0, attrs)
}

/// Reads replies to `seq` until DONE or the ACK, handing each data payload (after the
/// nfgenmsg) to `on_entry`. A netlink error becomes an `io::Error` with its errno.
fn for_each_reply(socket: &Socket, seq: u32, on_entry: impl FnMut(&[u8])) -> io::Result<()> {
    wire::replies(socket, seq, true, on_entry)
}

/// What we need from one dumped entry.
#[derive(Debug, Default, PartialEq, Eq)]
struct Entry {
    protocol: Option<u8>,
    dst_port: Option<u16>,
    dst_ip: Option<IpAddr>,
    /// The attributes identifying the entry for a delete: original tuple and zone.
    key: Option<Vec<u8>>,
}

impl Entry {
    fn parse(payload: &[u8]) -> Entry {
        let mut entry = Entry::default();
        let mut key = Vec::new();
        for (kind, body, whole) in attributes_whole(payload) {
            match kind {
                CTA_TUPLE_ORIG => {
                    key.extend_from_slice(whole);
                    if let Some(ip) = find(body, CTA_TUPLE_IP) {
                        entry.dst_ip = find(ip, CTA_IP_V4_DST)
                            .and_then(|b| <[u8; 4]>::try_from(b).ok())
                            .map(IpAddr::from)
                            .or_else(|| {
                                find(ip, CTA_IP_V6_DST)
                                    .and_then(|b| <[u8; 16]>::try_from(b).ok())
                                    .map(IpAddr::from)
                            });
                    }
                    if let Some(proto) = find(body, CTA_TUPLE_PROTO) {
                        entry.protocol =
                            find(proto, CTA_PROTO_NUM).and_then(|b| b.first().copied());
                        entry.dst_port = find(proto, CTA_PROTO_DST_PORT)
                            .and_then(|b| <[u8; 2]>::try_from(b).ok())
                            .map(u16::from_be_bytes);
                    }
                }
                CTA_ZONE => key.extend_from_slice(whole),
                _ => {}
            }
        }
        if !key.is_empty() {
            entry.key = Some(key);
        }
        entry
    }

    fn matches(&self, filter: &DstFilter) -> bool {
        self.protocol == Some(filter.protocol.number())
            && self.dst_port == Some(filter.port)
            && filter.address.is_none_or(|a| self.dst_ip == Some(a))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::super::wire::testing::{attr, nested};

    fn udp_entry(dst: [u8; 4], dport: u16) -> (Vec<u8>, Vec<u8>) {
        let orig = nested(
            CTA_TUPLE_ORIG,
            &[
                nested(
                    CTA_TUPLE_IP,
                    &[attr(1, &[10, 0, 0, 1]), attr(CTA_IP_V4_DST, &dst)],
                ),
                nested(
                    CTA_TUPLE_PROTO,
                    &[
                        attr(CTA_PROTO_NUM, &[17]),
                        attr(2, &5555u16.to_be_bytes()),
                        attr(CTA_PROTO_DST_PORT, &dport.to_be_bytes()),
                    ],
                ),
            ],
        );
        let reply = nested(2, &[nested(CTA_TUPLE_IP, &[attr(1, &[1, 2, 3, 4])])]);
        let zone = attr(CTA_ZONE, &7u16.to_be_bytes());
        let status = attr(3, &0u32.to_be_bytes());
        let payload = [orig.clone(), reply, status, zone.clone()].concat();
        (payload, [orig, zone].concat())
    }

    #[test]
    fn parses_dumped_entry_and_keeps_its_tuple_as_delete_key() {
        let (payload, key) = udp_entry([192, 168, 0, 2], 8080);
        let entry = Entry::parse(&payload);
        assert_eq!(entry.protocol, Some(17));
        assert_eq!(entry.dst_port, Some(8080));
        assert_eq!(entry.dst_ip, Some("192.168.0.2".parse().unwrap()));
        assert_eq!(entry.key, Some(key));
        let f = |address: Option<&str>, port| DstFilter {
            family: Family::V4,
            protocol: Proto::Udp,
            port,
            address: address.map(|a| a.parse().unwrap()),
        };
        assert!(entry.matches(&f(None, 8080)));
        assert!(entry.matches(&f(Some("192.168.0.2"), 8080)));
        assert!(!entry.matches(&f(Some("192.168.0.3"), 8080)));
        assert!(!entry.matches(&f(None, 8081)));
        let tcp = DstFilter {
            protocol: Proto::Tcp,
            ..f(None, 8080)
        };
        assert!(!entry.matches(&tcp));
    }

    #[test]
    fn request_layout() {
        let msg = request(
            IPCTNL_MSG_CT_DELETE,
            NLM_F_REQUEST | NLM_F_ACK,
            9,
            Family::V6,
            &[1, 2, 3, 4],
        );
        assert_eq!(msg.len(), 24);
        assert_eq!(u32::from_ne_bytes(msg[0..4].try_into().unwrap()), 24);
        assert_eq!(u16::from_ne_bytes(msg[4..6].try_into().unwrap()), 0x0102);
        assert_eq!(u16::from_ne_bytes(msg[6..8].try_into().unwrap()), 0x5);
        assert_eq!(u32::from_ne_bytes(msg[8..12].try_into().unwrap()), 9);
        assert_eq!(&msg[16..20], &[libc::AF_INET6 as u8, 0, 0, 0]);
        assert_eq!(&msg[20..], &[1, 2, 3, 4]);
    }

    #[test]
    fn truncated_attributes_stop_parsing_instead_of_panicking() {
        let (payload, _) = udp_entry([1, 1, 1, 1], 1);
        for cut in 0..payload.len() {
            let _ = Entry::parse(&payload[..cut]);
        }
    }
}
