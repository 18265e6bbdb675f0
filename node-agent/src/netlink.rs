//! The kernel side of the routes, over rtnetlink: a dump of the main table, route
//! add/replace/delete (many in flight at once), next-hop lookups, the MTU of the
//! interface holding an address, and route/link/address notifications.
//!
//! [`Kernel`] is the seam the reconciler is written against, so its decisions are
//! unit-tested with a fake; [`Rtnl`] is the real thing, tested as root in private
//! network namespaces.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::{StreamExt, TryStreamExt};
use ipnetwork::IpNetwork;
use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{LinkAttribute, LinkFlags};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::AsyncSocket;
use rtnetlink::{Handle, MulticastGroup, RouteMessageBuilder};
use tokio::sync::mpsc;

use crate::routes::{KernelRoute, Reach, RouteOp};

/// How many requests are in flight at once: enough to hide the round trip, few enough
/// that a burst does not overrun the kernel's socket buffer with replies.
const IN_FLIGHT: usize = 64;

const RT_TABLE_MAIN: u32 = RouteHeader::RT_TABLE_MAIN as u32;

#[derive(Debug, thiserror::Error)]
#[error("{op}: {msg}")]
pub struct KernelError {
    pub op: String,
    pub msg: String,
    /// The errno the kernel answered with, if it did.
    pub errno: Option<i32>,
}

impl KernelError {
    fn new(op: String, e: rtnetlink::Error) -> KernelError {
        match e {
            rtnetlink::Error::NetlinkError(m) => {
                let io = m.to_io();
                KernelError {
                    op,
                    msg: io.to_string(),
                    errno: io.raw_os_error(),
                }
            }
            other => KernelError {
                op,
                msg: other.to_string(),
                errno: None,
            },
        }
    }
}

/// What the reconciler needs from the kernel.
#[allow(async_fn_in_trait)]
pub trait Kernel {
    /// Every route of the main table, both families, any protocol.
    async fn dump_routes(&mut self) -> Result<Vec<KernelRoute>, KernelError>;
    /// Carries out `ops` (with protocol `proto`), concurrently; one result per op, in order.
    async fn apply(&mut self, proto: u8, ops: &[RouteOp]) -> Vec<Result<(), KernelError>>;
    /// MTU of the interface that holds `addr`, else of the one that reaches it.
    async fn mtu_for(&mut self, addr: IpAddr) -> Option<u32>;
}

/// rtnetlink in the agent's network namespace (the node's).
#[derive(Clone)]
pub struct Rtnl {
    handle: Handle,
}

impl Rtnl {
    /// Opens a socket with strict checking, so the kernel filters dumps by table
    /// itself, and spawns its connection on the current runtime.
    pub fn open() -> std::io::Result<Rtnl> {
        let (conn, handle, _) = rtnetlink::new_connection_with_strict_check()?;
        tokio::spawn(conn);
        Ok(Rtnl { handle })
    }

    async fn one(&self, proto: u8, op: &RouteOp) -> Result<(), KernelError> {
        let route = self.handle.route();
        let res = match op {
            RouteOp::Add { dst, gw } => {
                route
                    .add(message(*dst, Some(*gw), proto, None))
                    .execute()
                    .await
            }
            RouteOp::Replace { dst, gw, priority } => {
                route
                    .add(message(*dst, Some(*gw), proto, *priority))
                    .replace()
                    .execute()
                    .await
            }
            RouteOp::Delete(r) => {
                route
                    .del(message(r.dst, r.gw, proto, r.priority))
                    .execute()
                    .await
            }
        };
        res.map_err(|e| KernelError::new(op.to_string(), e))
    }

    async fn reach_one(&self, gw: IpAddr) -> Reach {
        // A get with the header all zero but family and length: strict checking refuses
        // any other header field in a single-route get.
        let mut msg = RouteMessage::default();
        msg.header.address_family = family(gw);
        msg.header.destination_prefix_length = if gw.is_ipv4() { 32 } else { 128 };
        msg.attributes
            .push(RouteAttribute::Destination(RouteAddress::from(gw)));
        let reply = self.handle.route().get(msg).execute().try_next().await;
        match reply {
            Ok(Some(r)) => {
                let k = parse_route(&r);
                if r.header.kind == RouteType::Local {
                    Reach::No("it is an address of this node".into())
                } else if r.header.kind != RouteType::Unicast {
                    Reach::No(format!(
                        "the kernel's route to it is of type {:?}",
                        r.header.kind
                    ))
                } else if let Some(via) = k.and_then(|k| k.gw) {
                    Reach::No(format!("reached via gateway {via}"))
                } else {
                    let oif = r.attributes.iter().find_map(|a| match a {
                        RouteAttribute::Oif(i) => Some(*i),
                        _ => None,
                    });
                    oif.map_or_else(
                        || Reach::No("no outgoing interface".into()),
                        |oif| Reach::OnLink { oif },
                    )
                }
            }
            Ok(None) => Reach::No("no route to it".into()),
            Err(e) => Reach::No(KernelError::new("route lookup".into(), e).msg),
        }
    }

    /// How the kernel reaches each of `gws`, in order (its own route lookup).
    pub async fn reach(&mut self, gws: &[IpAddr]) -> Vec<Reach> {
        futures::stream::iter(gws)
            .map(|gw| self.reach_one(*gw))
            .buffered(IN_FLIGHT)
            .collect()
            .await
    }

    async fn link_mtu(&self, index: u32) -> Option<u32> {
        let link = self
            .handle
            .link()
            .get()
            .match_index(index)
            .execute()
            .try_next()
            .await
            .ok()??;
        link.attributes.iter().find_map(|a| match a {
            LinkAttribute::Mtu(m) => Some(*m),
            _ => None,
        })
    }
}

fn family(ip: IpAddr) -> AddressFamily {
    if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

/// A main-table unicast route message with our protocol.
fn message(dst: IpNetwork, gw: Option<IpAddr>, proto: u8, priority: Option<u32>) -> RouteMessage {
    let proto = RouteProtocol::from(proto);
    match dst {
        IpNetwork::V4(d) => {
            let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(d.network(), d.prefix())
                .protocol(proto);
            if let Some(IpAddr::V4(g)) = gw {
                b = b.gateway(g);
            }
            if let Some(p) = priority {
                b = b.priority(p);
            }
            b.build()
        }
        IpNetwork::V6(d) => {
            let mut b = RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(d.network(), d.prefix())
                .protocol(proto);
            if let Some(IpAddr::V6(g)) = gw {
                b = b.gateway(g);
            }
            if let Some(p) = priority {
                b = b.priority(p);
            }
            b.build()
        }
    }
}

fn addr_of(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// A main-table route message as a [`KernelRoute`]; `None` for other tables and
/// families.
pub fn parse_route(m: &RouteMessage) -> Option<KernelRoute> {
    let unspecified = match m.header.address_family {
        AddressFamily::Inet => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        AddressFamily::Inet6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        _ => return None,
    };
    let mut table = u32::from(m.header.table);
    let (mut dst, mut gw, mut priority, mut oif) = (unspecified, None, None, None);
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(d) => dst = addr_of(d)?,
            RouteAttribute::Gateway(g) => gw = addr_of(g),
            RouteAttribute::Priority(p) => priority = Some(*p),
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Table(t) => table = *t,
            _ => {}
        }
    }
    if table != RT_TABLE_MAIN {
        return None;
    }
    Some(KernelRoute {
        dst: IpNetwork::new(dst, m.header.destination_prefix_length).ok()?,
        gw,
        protocol: u8::from(m.header.protocol),
        priority,
        oif,
        unicast: m.header.kind == RouteType::Unicast,
    })
}

impl Kernel for Rtnl {
    async fn dump_routes(&mut self) -> Result<Vec<KernelRoute>, KernelError> {
        let mut out = Vec::new();
        for af in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut msg = RouteMessage::default();
            msg.header.address_family = af;
            msg.header.table = RouteHeader::RT_TABLE_MAIN;
            let mut dump = self.handle.route().get(msg).execute();
            while let Some(r) = dump
                .try_next()
                .await
                .map_err(|e| KernelError::new(format!("dump {af:?} routes"), e))?
            {
                out.extend(parse_route(&r));
            }
        }
        Ok(out)
    }

    async fn apply(&mut self, proto: u8, ops: &[RouteOp]) -> Vec<Result<(), KernelError>> {
        futures::stream::iter(ops)
            .map(|op| self.one(proto, op))
            .buffered(IN_FLIGHT)
            .collect()
            .await
    }

    async fn mtu_for(&mut self, addr: IpAddr) -> Option<u32> {
        let mut addrs = self
            .handle
            .address()
            .get()
            .set_address_filter(addr)
            .execute();
        while let Ok(Some(a)) = addrs.try_next().await {
            let holds = a.attributes.iter().any(|at| {
                matches!(at, AddressAttribute::Address(ip) | AddressAttribute::Local(ip) if *ip == addr)
            });
            if holds {
                return self.link_mtu(a.header.index).await;
            }
        }
        match self.reach_one(addr).await {
            Reach::OnLink { oif } => self.link_mtu(oif).await,
            Reach::No(_) => None,
        }
    }
}

/// A change the kernel announced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelEvent {
    /// A main-table route appeared or changed (`added`) or went away.
    Route { route: KernelRoute, added: bool },
    /// A link changed: `up` false when it is down or gone.
    Link { index: u32, up: bool },
    /// An address came or went; `gone` names a global address that was removed.
    Address { gone: Option<IpAddr> },
    /// Notifications were lost (the socket buffer overflowed): re-read everything.
    Overrun,
}

/// Subscribes to route, link and address notifications; events arrive on the returned
/// channel until the socket fails.
pub fn monitor() -> std::io::Result<mpsc::UnboundedReceiver<KernelEvent>> {
    let groups = [
        MulticastGroup::Link,
        MulticastGroup::Ipv4Route,
        MulticastGroup::Ipv6Route,
        MulticastGroup::Ipv4Ifaddr,
        MulticastGroup::Ipv6Ifaddr,
    ];
    let (mut conn, _handle, mut messages) = rtnetlink::new_multicast_connection(&groups)?;
    // Room for the notifications of thousands of route changes at once (our own at
    // start-up); an overflow still only costs a re-dump.
    let _ = conn.socket_mut().socket_mut().set_rx_buf_sz(8 << 20);
    tokio::spawn(conn);
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some((msg, _)) = messages.next().await {
            let ev = match event(msg) {
                Some(ev) => ev,
                None => continue,
            };
            if tx.send(ev).is_err() {
                break;
            }
        }
    });
    Ok(rx)
}

fn event(msg: NetlinkMessage<RouteNetlinkMessage>) -> Option<KernelEvent> {
    match msg.payload {
        NetlinkPayload::Overrun(_) => Some(KernelEvent::Overrun),
        NetlinkPayload::InnerMessage(m) => match m {
            RouteNetlinkMessage::NewRoute(r) => {
                parse_route(&r).map(|route| KernelEvent::Route { route, added: true })
            }
            RouteNetlinkMessage::DelRoute(r) => parse_route(&r).map(|route| KernelEvent::Route {
                route,
                added: false,
            }),
            RouteNetlinkMessage::NewLink(l) => Some(KernelEvent::Link {
                index: l.header.index,
                up: l.header.flags.contains(LinkFlags::Up),
            }),
            RouteNetlinkMessage::DelLink(l) => Some(KernelEvent::Link {
                index: l.header.index,
                up: false,
            }),
            RouteNetlinkMessage::NewAddress(_) => Some(KernelEvent::Address { gone: None }),
            RouteNetlinkMessage::DelAddress(a) => {
                // Link-local addresses come and go with every pod's veth; only a global
                // one can be what a connection of ours was using.
                let gone = a.attributes.iter().find_map(|at| match at {
                    AddressAttribute::Address(ip) | AddressAttribute::Local(ip) => Some(*ip),
                    _ => None,
                });
                let global = |ip: &IpAddr| match ip {
                    IpAddr::V4(v4) => !v4.is_link_local() && !v4.is_loopback(),
                    IpAddr::V6(v6) => !v6.is_unicast_link_local() && !v6.is_loopback(),
                };
                Some(KernelEvent::Address {
                    gone: gone.filter(global),
                })
            }
            _ => None,
        },
        _ => None,
    }
}
