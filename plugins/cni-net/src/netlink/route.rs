//! Routes.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;
use netlink_packet_core::{NLM_F_APPEND, NLM_F_CREATE};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteMetric, RouteProtocol, RouteScope, RouteType,
    RouteVia,
};

use super::socket::Netlink;
use super::types::{Family, Scope};
use crate::error::Result;

pub const RT_TABLE_MAIN: u32 = 254;
pub const RT_TABLE_LOCAL: u32 = 255;
/// `RTN_UNICAST`: a normal forwarding route.
pub const RTN_UNICAST: u8 = 1;
/// `RTPROT_BOOT`: what `ip route add` and the reference stamp on routes.
pub const RTPROT_BOOT: u8 = 3;

/// A route: what to add or delete, and what a dump returns.
///
/// Build one with [`Route::new`] and the builder methods; the defaults are
/// those of `ip route add`: main table, universe scope, unicast, proto boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Destination; `0.0.0.0/0` / `::/0` for a default route.
    pub dst: IpNetwork,
    pub gw: Option<IpAddr>,
    /// Outgoing interface index.
    pub oif: Option<u32>,
    /// Preferred source address.
    pub src: Option<IpAddr>,
    /// Metric.
    pub priority: Option<u32>,
    pub table: u32,
    pub scope: Scope,
    /// `RTPROT_*`.
    pub protocol: u8,
    /// `RTN_*` route type.
    pub kind: u8,
    pub mtu: Option<u32>,
    pub advmss: Option<u32>,
}

impl Route {
    pub fn new(dst: IpNetwork) -> Route {
        Route {
            dst,
            gw: None,
            oif: None,
            src: None,
            priority: None,
            table: RT_TABLE_MAIN,
            scope: Scope::Universe,
            protocol: RTPROT_BOOT,
            kind: RTN_UNICAST,
            mtu: None,
            advmss: None,
        }
    }

    /// The default route of a family.
    pub fn default_for(family: Family) -> Route {
        let any = match family {
            Family::V4 => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            Family::V6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        Route::new(net_or_host(any, 0))
    }

    pub fn via(mut self, gw: IpAddr) -> Route {
        self.gw = Some(gw);
        self
    }

    pub fn dev(mut self, oif: u32) -> Route {
        self.oif = Some(oif);
        self
    }

    pub fn src(mut self, src: IpAddr) -> Route {
        self.src = Some(src);
        self
    }

    pub fn priority(mut self, metric: u32) -> Route {
        self.priority = Some(metric);
        self
    }

    pub fn table(mut self, table: u32) -> Route {
        self.table = table;
        self
    }

    pub fn scope(mut self, scope: Scope) -> Route {
        self.scope = scope;
        self
    }

    pub fn mtu(mut self, mtu: u32) -> Route {
        self.mtu = Some(mtu);
        self
    }

    pub fn advmss(mut self, advmss: u32) -> Route {
        self.advmss = Some(advmss);
        self
    }

    pub fn family(&self) -> Family {
        Family::of(self.dst.ip())
    }

    pub fn is_default(&self) -> bool {
        self.dst.prefix() == 0
    }

    fn header(&self, msg: &mut RouteMessage) {
        let h = &mut msg.header;
        h.address_family = self.family().af();
        h.destination_prefix_length = self.dst.prefix();
        // Tables above 255 only fit in RTA_TABLE; iproute2 leaves the header 0.
        h.table = u8::try_from(self.table).unwrap_or(0);
    }

    /// The attributes naming this route (no metrics).
    fn key_attributes(&self, msg: &mut RouteMessage) {
        let a = &mut msg.attributes;
        if self.dst.prefix() > 0 {
            a.push(RouteAttribute::Destination(route_addr(self.dst.ip())));
        }
        if let Some(gw) = self.gw {
            if Family::of(gw) == self.family() {
                a.push(RouteAttribute::Gateway(route_addr(gw)));
            } else {
                // An IPv6 next hop for an IPv4 route (RFC 5549).
                a.push(RouteAttribute::Via(match gw {
                    IpAddr::V4(v) => RouteVia::Inet(v),
                    IpAddr::V6(v) => RouteVia::Inet6(v),
                }));
            }
        }
        if let Some(oif) = self.oif {
            a.push(RouteAttribute::Oif(oif));
        }
        if let Some(p) = self.priority {
            a.push(RouteAttribute::Priority(p));
        }
        a.push(RouteAttribute::Table(self.table));
    }

    fn from_msg(msg: RouteMessage) -> Vec<Route> {
        let h = &msg.header;
        let Some(family) = Family::from_af(h.address_family) else {
            return Vec::new();
        };
        let mut dst_ip = None;
        let mut route = Route::default_for(family);
        route.table = u32::from(h.table);
        route.scope = Scope::from(u8::from(h.scope));
        route.protocol = u8::from(h.protocol);
        route.kind = u8::from(h.kind);
        let mut hops = Vec::new();
        for attr in msg.attributes {
            match attr {
                RouteAttribute::Destination(a) => dst_ip = ip_of(&a),
                RouteAttribute::Gateway(a) => route.gw = ip_of(&a),
                RouteAttribute::Via(v) => route.gw = via_ip(&v),
                RouteAttribute::Oif(i) => route.oif = Some(i),
                RouteAttribute::PrefSource(a) => route.src = ip_of(&a),
                RouteAttribute::Priority(p) => route.priority = Some(p),
                RouteAttribute::Table(t) => route.table = t,
                RouteAttribute::Metrics(ms) => {
                    for m in ms {
                        match m {
                            RouteMetric::Mtu(v) => route.mtu = Some(v),
                            RouteMetric::Advmss(v) => route.advmss = Some(v),
                            _ => {}
                        }
                    }
                }
                RouteAttribute::MultiPath(nhs) => hops = nhs,
                _ => {}
            }
        }
        if let Some(ip) = dst_ip {
            route.dst = net_or_host(ip, h.destination_prefix_length);
        }
        if hops.is_empty() {
            return vec![route];
        }
        // ECMP siblings (IPv6 merges appended routes into one multipath
        // route): one entry per next hop, so lookups by gateway work alike
        // for both families.
        hops.into_iter()
            .map(|nh| {
                let mut r = route.clone();
                r.oif = (nh.interface_index != 0).then_some(nh.interface_index);
                for attr in nh.attributes {
                    match attr {
                        RouteAttribute::Gateway(a) => r.gw = ip_of(&a),
                        RouteAttribute::Via(v) => r.gw = via_ip(&v),
                        _ => {}
                    }
                }
                r
            })
            .collect()
    }
}

impl fmt::Display for Route {
    /// Reads like `ip route`: `10.0.0.0/8 via 10.1.2.1 dev #5 table 100 metric 10`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.dst)?;
        if let Some(gw) = self.gw {
            write!(f, " via {gw}")?;
        }
        if let Some(oif) = self.oif {
            write!(f, " dev #{oif}")?;
        }
        if self.table != RT_TABLE_MAIN {
            write!(f, " table {}", self.table)?;
        }
        if let Some(p) = self.priority {
            write!(f, " metric {p}")?;
        }
        Ok(())
    }
}

/// `ip/prefix`, falling back to a host route for a prefix the family cannot
/// have (never sent by the kernel).
fn net_or_host(ip: IpAddr, prefix: u8) -> IpNetwork {
    IpNetwork::new(ip, prefix).unwrap_or_else(|_| IpNetwork::from(ip))
}

fn route_addr(ip: IpAddr) -> RouteAddress {
    match ip {
        IpAddr::V4(v) => RouteAddress::Inet(v),
        IpAddr::V6(v) => RouteAddress::Inet6(v),
    }
}

fn ip_of(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v) => Some(IpAddr::V4(*v)),
        RouteAddress::Inet6(v) => Some(IpAddr::V6(*v)),
        _ => None,
    }
}

fn via_ip(v: &RouteVia) -> Option<IpAddr> {
    match v {
        RouteVia::Inet(v) => Some(IpAddr::V4(*v)),
        RouteVia::Inet6(v) => Some(IpAddr::V6(*v)),
        _ => None,
    }
}

impl Netlink {
    /// Routes of one family in every table of this socket's netns (the
    /// `local` table included; filter on [`Route::table`]).
    pub fn routes(&mut self, family: Family) -> Result<Vec<Route>> {
        let mut m = RouteMessage::default();
        m.header.address_family = family.af();
        let msgs = self.dump(RouteNetlinkMessage::GetRoute(m), || {
            format!("list {family} routes")
        })?;
        Ok(msgs
            .into_iter()
            .flat_map(|m| match m {
                RouteNetlinkMessage::NewRoute(m) => Route::from_msg(m),
                _ => Vec::new(),
            })
            .collect())
    }

    /// Adds a route. Like the reference this appends: a route to the same
    /// prefix through another gateway is added as an ECMP sibling instead of
    /// failing, while an identical route fails with
    /// [`Error::is_exists`](crate::error::Error::is_exists).
    pub fn add_route(&mut self, route: &Route) -> Result<()> {
        let mut m = RouteMessage::default();
        route.header(&mut m);
        m.header.scope = RouteScope::from(u8::from(route.scope));
        m.header.protocol = RouteProtocol::from(route.protocol);
        m.header.kind = RouteType::from(route.kind);
        route.key_attributes(&mut m);
        if let Some(src) = route.src {
            m.attributes
                .push(RouteAttribute::PrefSource(route_addr(src)));
        }
        let mut metrics = Vec::new();
        if let Some(v) = route.mtu {
            metrics.push(RouteMetric::Mtu(v));
        }
        if let Some(v) = route.advmss {
            metrics.push(RouteMetric::Advmss(v));
        }
        if !metrics.is_empty() {
            m.attributes.push(RouteAttribute::Metrics(metrics));
        }
        self.ack(
            RouteNetlinkMessage::NewRoute(m),
            NLM_F_CREATE | NLM_F_APPEND,
            || format!("add route {route}"),
        )
    }

    /// Deletes the route matching `route`'s destination, table and, when
    /// set, gateway, interface and metric. A missing route fails with
    /// [`Error::is_not_found`](crate::error::Error::is_not_found).
    pub fn del_route(&mut self, route: &Route) -> Result<()> {
        let mut m = RouteMessage::default();
        route.header(&mut m);
        // Match any scope and protocol, as `ip route del` does.
        m.header.scope = RouteScope::NoWhere;
        m.header.protocol = RouteProtocol::Unspec;
        m.header.kind = RouteType::from(route.kind);
        route.key_attributes(&mut m);
        self.ack(RouteNetlinkMessage::DelRoute(m), 0, || {
            format!("delete route {route}")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::link::tests::netns_with_veth;

    fn net(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn setup() -> (crate::netns::NetNs, Netlink, super::super::Link) {
        let (ns, mut nl, a, b) = netns_with_veth();
        ns.run(|| crate::sysctl::set("net/ipv6/conf/va/accept_dad", "0"))
            .unwrap();
        nl.add_addr(&a, net("10.1.2.3/24")).unwrap();
        nl.add_addr(&a, net("2001:db8::3/64")).unwrap();
        nl.set_link_up(&a).unwrap();
        nl.set_link_up(&b).unwrap();
        (ns, nl, a)
    }

    #[test]
    fn default_route_v4_and_v6() {
        let (_ns, mut nl, a) = setup();
        for (fam, gw) in [(Family::V4, "10.1.2.1"), (Family::V6, "2001:db8::1")] {
            let r = Route::default_for(fam).via(ip(gw)).dev(a.index);
            nl.add_route(&r).unwrap();
            let got: Vec<Route> = nl
                .routes(fam)
                .unwrap()
                .into_iter()
                .filter(|r| r.is_default() && r.table == RT_TABLE_MAIN)
                .collect();
            assert_eq!(got.len(), 1, "{got:?}");
            assert_eq!(got[0].gw, Some(ip(gw)));
            assert_eq!(got[0].oif, Some(a.index));
            assert_eq!(got[0].protocol, RTPROT_BOOT);
            assert_eq!(got[0].src, None);

            let e = nl.add_route(&r).unwrap_err();
            assert!(e.is_exists(), "{e}");

            nl.del_route(&r).unwrap();
            assert!(!nl.routes(fam).unwrap().iter().any(|r| r.is_default()));
            let e = nl.del_route(&r).unwrap_err();
            assert!(e.is_not_found(), "{e}");
        }
    }

    #[test]
    fn table_priority_scope_and_metrics() {
        let (_ns, mut nl, a) = setup();
        let r = Route::new(net("192.168.0.0/16"))
            .via(ip("10.1.2.1"))
            .dev(a.index)
            .table(1000)
            .priority(42)
            .mtu(1300)
            .advmss(1200);
        nl.add_route(&r).unwrap();
        let direct = Route::new(net("172.16.0.0/12"))
            .dev(a.index)
            .scope(Scope::Link)
            .table(100);
        nl.add_route(&direct).unwrap();

        let got = nl.routes(Family::V4).unwrap();
        let g = got.iter().find(|x| x.dst == net("192.168.0.0/16")).unwrap();
        assert_eq!(g.table, 1000);
        assert_eq!(g.priority, Some(42));
        assert_eq!(g.mtu, Some(1300));
        assert_eq!(g.advmss, Some(1200));
        assert_eq!(g.gw, Some(ip("10.1.2.1")));
        let d = got.iter().find(|x| x.dst == net("172.16.0.0/12")).unwrap();
        assert_eq!(d.table, 100);
        assert_eq!(d.scope, Scope::Link);
        assert_eq!(d.gw, None);
        // The connected route the address brought, and the local table.
        assert!(
            got.iter()
                .any(|x| x.dst == net("10.1.2.0/24") && x.table == RT_TABLE_MAIN)
        );
        assert!(got.iter().any(|x| x.table == RT_TABLE_LOCAL));

        // Delete by key only: no metrics, no scope needed.
        nl.del_route(&Route::new(net("192.168.0.0/16")).table(1000).priority(42))
            .unwrap();
        nl.del_route(&Route::new(net("172.16.0.0/12")).table(100))
            .unwrap();
        let got = nl.routes(Family::V4).unwrap();
        assert!(!got.iter().any(|x| x.table == 1000 || x.table == 100));
    }

    #[test]
    fn same_prefix_other_gateway_is_appended() {
        let (_ns, mut nl, a) = setup();
        for (fam, gws) in [
            (Family::V4, ["10.1.2.1", "10.1.2.2"]),
            (Family::V6, ["2001:db8::1", "2001:db8::2"]),
        ] {
            let dst = if fam == Family::V4 {
                net("10.9.0.0/16")
            } else {
                net("2001:db8:9::/48")
            };
            for gw in gws {
                nl.add_route(&Route::new(dst).via(ip(gw)).dev(a.index))
                    .unwrap();
            }
            let got: Vec<Route> = nl
                .routes(fam)
                .unwrap()
                .into_iter()
                .filter(|r| r.dst == dst)
                .collect();
            let mut seen: Vec<IpAddr> = got.iter().filter_map(|r| r.gw).collect();
            seen.sort();
            assert_eq!(seen, vec![ip(gws[0]), ip(gws[1])], "{got:?}");
            assert!(got.iter().all(|r| r.oif == Some(a.index)));
        }
    }

    #[test]
    fn display_reads_like_ip_route() {
        let r = Route::new(net("10.0.0.0/8"))
            .via(ip("10.1.2.1"))
            .dev(5)
            .table(100)
            .priority(10);
        assert_eq!(
            r.to_string(),
            "10.0.0.0/8 via 10.1.2.1 dev #5 table 100 metric 10"
        );
        assert_eq!(Route::default_for(Family::V6).to_string(), "::/0");
    }
}
