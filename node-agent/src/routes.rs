//! Routes as data, no kernel: what the routes to the other nodes should be (from the Node
//! objects) and the smallest set of operations that turns what the kernel has into that.
//! The reconciler feeds both from its caches; everything here is unit-tested without root.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::IpAddr;

use ipnetwork::IpNetwork;

use crate::node::NodeView;

/// A route the agent wants: a peer's pod CIDR via that peer's address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Want {
    pub dst: IpNetwork,
    pub gw: IpAddr,
    pub node: String,
}

/// A route in the kernel's main table, as a dump or a notification shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelRoute {
    pub dst: IpNetwork,
    pub gw: Option<IpAddr>,
    pub protocol: u8,
    pub priority: Option<u32>,
    pub oif: Option<u32>,
    /// Type unicast (not blackhole, unreachable, prohibit, throw).
    pub unicast: bool,
}

impl KernelRoute {
    /// The kernel's metric for a route without one: 0 for IPv4, 1024 for IPv6.
    pub fn metric(&self) -> u32 {
        self.priority
            .unwrap_or(if self.dst.is_ipv6() { 1024 } else { 0 })
    }
}

impl fmt::Display for KernelRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.unicast {
            write!(f, "(not unicast) ")?;
        }
        write!(f, "{}", self.dst)?;
        if let Some(gw) = self.gw {
            write!(f, " via {gw}")?;
        }
        if let Some(oif) = self.oif {
            write!(f, " dev #{oif}")?;
        }
        write!(f, " proto {}", self.protocol)?;
        if let Some(p) = self.priority {
            write!(f, " metric {p}")?;
        }
        Ok(())
    }
}

/// Why a Node's pod CIDR gets no route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    /// The Node has no InternalIP or ExternalIP of the CIDR's family.
    NoAddress { node: String, dst: IpNetwork },
    /// Another Node (earlier by name) already claims this CIDR.
    Duplicate {
        node: String,
        dst: IpNetwork,
        owner: String,
    },
    /// The CIDR overlaps this node's own pod CIDRs.
    OverlapsOwn { node: String, dst: IpNetwork },
    /// `spec.podCIDRs` holds something that is not a CIDR.
    BadCidr { node: String, text: String },
    /// The next hop is not on a directly connected network: a route via it would
    /// blackhole or bounce through a router that does not know the pod subnet.
    NotOnLink {
        node: String,
        dst: IpNetwork,
        gw: IpAddr,
        why: String,
    },
}

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Skip::NoAddress { node, dst } => write!(
                f,
                "node {node}: no route to its pod CIDR {dst}: it has no InternalIP or ExternalIP \
                 of that family"
            ),
            Skip::Duplicate { node, dst, owner } => write!(
                f,
                "node {node}: pod CIDR {dst} is also node {owner}'s; routing it to {owner} \
                 (check kube-controller-manager's --cluster-cidr and --node-cidr-mask-size)"
            ),
            Skip::OverlapsOwn { node, dst } => write!(
                f,
                "node {node}: pod CIDR {dst} overlaps this node's own pod CIDRs; not routed"
            ),
            Skip::BadCidr { node, text } => {
                write!(f, "node {node}: spec.podCIDRs entry {text:?} is not a CIDR")
            }
            Skip::NotOnLink { node, dst, gw, why } => write!(
                f,
                "node {node}: no route to its pod CIDR {dst}: its address {gw} is not on a \
                 directly connected network ({why}); this agent routes between nodes on one L2 \
                 network only"
            ),
        }
    }
}

/// The routes wanted, by destination, and the pod CIDRs that get none.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Desired {
    pub routes: BTreeMap<IpNetwork, Want>,
    pub skipped: Vec<Skip>,
}

/// For every other Node with pod CIDRs: each CIDR via that Node's address of the same
/// family. `nodes` may come in any order; on a clash the Node first by name keeps the
/// CIDR, so the outcome does not flap with the order the API server lists them in.
pub fn desired<'a>(own: &str, nodes: impl IntoIterator<Item = &'a NodeView>) -> Desired {
    let mut nodes: Vec<&NodeView> = nodes.into_iter().collect();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    let own_cidrs: Vec<IpNetwork> = nodes
        .iter()
        .find(|n| n.name == own)
        .map(|n| n.pod_cidrs.clone())
        .unwrap_or_default();
    let mut out = Desired::default();
    for n in nodes.into_iter().filter(|n| n.name != own) {
        for text in &n.bad_cidrs {
            out.skipped.push(Skip::BadCidr {
                node: n.name.clone(),
                text: text.clone(),
            });
        }
        for &dst in &n.pod_cidrs {
            let node = n.name.clone();
            if own_cidrs.iter().any(|o| overlaps(*o, dst)) {
                out.skipped.push(Skip::OverlapsOwn { node, dst });
                continue;
            }
            let Some(gw) = n.address(dst.is_ipv6()) else {
                out.skipped.push(Skip::NoAddress { node, dst });
                continue;
            };
            if let Some(w) = out.routes.get(&dst) {
                let owner = w.node.clone();
                out.skipped.push(Skip::Duplicate { node, dst, owner });
                continue;
            }
            out.routes.insert(dst, Want { dst, gw, node });
        }
    }
    out
}

pub fn overlaps(a: IpNetwork, b: IpNetwork) -> bool {
    a.is_ipv4() == b.is_ipv4() && (a.contains(b.network()) || b.contains(a.network()))
}

/// How the kernel reaches a next hop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reach {
    /// On a directly connected network, through interface `oif`.
    OnLink { oif: u32 },
    /// Not on-link; the reason, for the log.
    No(String),
}

/// How a next hop is reached, from the main table's routes other than ours (the
/// connected routes of the node's interfaces, its default route, an admin's): the most
/// specific covering route decides, as the kernel's lookup does (policy routing rules
/// aside). Computed here rather than asked of the kernel: a change of those few routes
/// then costs no lookup per node, and the kernel still refuses an add whose next hop
/// is not on-link.
pub fn reach<'a>(gw: IpAddr, routes: impl IntoIterator<Item = &'a KernelRoute>) -> Reach {
    let mut best: Option<&KernelRoute> = None;
    for r in routes {
        if r.dst.is_ipv4() != gw.is_ipv4() || !r.dst.contains(gw) {
            continue;
        }
        let better = match best {
            None => true,
            Some(b) => {
                (r.dst.prefix(), std::cmp::Reverse(r.metric()))
                    > (b.dst.prefix(), std::cmp::Reverse(b.metric()))
            }
        };
        if better {
            best = Some(r);
        }
    }
    match best {
        None => Reach::No("no route to it".into()),
        Some(r) if !r.unicast => Reach::No(format!("the route covering it is {r}")),
        Some(KernelRoute { gw: Some(via), .. }) => Reach::No(format!("reached via gateway {via}")),
        Some(KernelRoute { oif: Some(oif), .. }) => Reach::OnLink { oif: *oif },
        Some(r) => Reach::No(format!("the route covering it, {r}, names no interface")),
    }
}

/// Drops the wanted routes whose next hop is not on-link (per `reach`; a next hop missing
/// from it counts as not on-link), recording why.
pub fn keep_on_link(desired: &mut Desired, reach: &HashMap<IpAddr, Reach>) {
    let mut dropped = Vec::new();
    desired.routes.retain(|_, w| match reach.get(&w.gw) {
        Some(Reach::OnLink { .. }) => true,
        other => {
            let why = match other {
                Some(Reach::No(why)) => why.clone(),
                _ => "not looked up".into(),
            };
            dropped.push(Skip::NotOnLink {
                node: w.node.clone(),
                dst: w.dst,
                gw: w.gw,
                why,
            });
            false
        }
    });
    desired.skipped.extend(dropped);
}

/// One change to the kernel's main table, always with the agent's protocol number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteOp {
    /// A new route (the kernel's default metric).
    Add { dst: IpNetwork, gw: IpAddr },
    /// Replace the route to `dst` with this `priority` (ours with a wrong next hop, or,
    /// adopting, someone else's) by one via `gw`.
    Replace {
        dst: IpNetwork,
        gw: IpAddr,
        priority: Option<u32>,
    },
    /// Delete one of our routes.
    Delete(KernelRoute),
}

impl fmt::Display for RouteOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RouteOp::Add { dst, gw } => write!(f, "add {dst} via {gw}"),
            RouteOp::Replace { dst, gw, .. } => write!(f, "replace {dst} via {gw}"),
            RouteOp::Delete(r) => write!(f, "delete {r}"),
        }
    }
}

/// A wanted route that another protocol's route to the same destination stands in for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub want: Want,
    pub foreign: KernelRoute,
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "route {} is not ours (node {} wants {} via {}); left alone: delete it, or run \
             with --adopt-routes to take it over",
            self.foreign, self.want.node, self.want.dst, self.want.gw
        )
    }
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub ops: Vec<RouteOp>,
    pub conflicts: Vec<Conflict>,
}

/// The operations that turn `ours` (the kernel's routes with our protocol, by
/// destination) into `wanted`, never touching `foreign` routes (any other protocol)
/// except to take one over when `adopt` says so.
pub fn plan(
    wanted: &BTreeMap<IpNetwork, Want>,
    ours: &BTreeMap<IpNetwork, Vec<KernelRoute>>,
    foreign: &BTreeMap<IpNetwork, Vec<KernelRoute>>,
    adopt: bool,
) -> Plan {
    let mut out = Plan::default();
    for (dst, want) in wanted {
        let mine = ours.get(dst).map(Vec::as_slice).unwrap_or_default();
        let theirs = foreign.get(dst).map(Vec::as_slice).unwrap_or_default();
        if mine.is_empty() {
            match theirs.first() {
                Some(f) if adopt => out.ops.push(RouteOp::Replace {
                    dst: *dst,
                    gw: want.gw,
                    priority: f.priority,
                }),
                Some(f) => out.conflicts.push(Conflict {
                    want: want.clone(),
                    foreign: f.clone(),
                }),
                None => out.ops.push(RouteOp::Add {
                    dst: *dst,
                    gw: want.gw,
                }),
            }
        } else {
            // Keep the right one if there is one, else repoint the first; extra copies
            // (another metric, e.g. from a crashed run) go.
            let keep = mine.iter().position(|r| r.gw == Some(want.gw));
            let keep = match keep {
                Some(i) => i,
                None => {
                    out.ops.push(RouteOp::Replace {
                        dst: *dst,
                        gw: want.gw,
                        priority: mine[0].priority,
                    });
                    0
                }
            };
            for (i, r) in mine.iter().enumerate() {
                if i != keep {
                    out.ops.push(RouteOp::Delete(r.clone()));
                }
            }
            for f in theirs {
                out.conflicts.push(Conflict {
                    want: want.clone(),
                    foreign: f.clone(),
                });
            }
        }
    }
    for (dst, rs) in ours {
        if !wanted.contains_key(dst) {
            out.ops.extend(rs.iter().cloned().map(RouteOp::Delete));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::NodeView;

    fn net(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }
    fn view(name: &str, cidrs: &[&str], ips: &[&str]) -> NodeView {
        NodeView {
            name: name.into(),
            pod_cidrs: cidrs.iter().map(|c| net(c)).collect(),
            bad_cidrs: vec![],
            internal_ips: ips.iter().map(|i| ip(i)).collect(),
            external_ips: vec![],
        }
    }
    fn kr(dst: &str, gw: &str, proto: u8) -> KernelRoute {
        KernelRoute {
            dst: net(dst),
            gw: Some(ip(gw)),
            protocol: proto,
            priority: None,
            oif: Some(2),
            unicast: true,
        }
    }
    fn wants(pairs: &[(&str, &str)]) -> BTreeMap<IpNetwork, Want> {
        pairs
            .iter()
            .map(|(d, g)| {
                (
                    net(d),
                    Want {
                        dst: net(d),
                        gw: ip(g),
                        node: "n".into(),
                    },
                )
            })
            .collect()
    }
    fn by_dst(rs: &[KernelRoute]) -> BTreeMap<IpNetwork, Vec<KernelRoute>> {
        let mut m: BTreeMap<IpNetwork, Vec<KernelRoute>> = BTreeMap::new();
        for r in rs {
            m.entry(r.dst).or_default().push(r.clone());
        }
        m
    }

    #[test]
    fn every_other_nodes_cidrs_via_its_address_of_the_same_family() {
        let nodes = [
            view(
                "n1",
                &["10.244.1.0/24", "fd00:1::/64"],
                &["10.0.0.1", "fd00::1"],
            ),
            view(
                "n2",
                &["fd00:2::/64", "10.244.2.0/24"],
                &["10.0.0.2", "fd00::2"],
            ),
            view("n3", &["10.244.3.0/24"], &["10.0.0.3"]),
            view("n4", &[], &["10.0.0.4"]),
        ];
        let d = desired("n1", &nodes);
        let got: Vec<String> = d
            .routes
            .values()
            .map(|w| format!("{} {} {}", w.dst, w.gw, w.node))
            .collect();
        assert_eq!(
            got,
            [
                "10.244.2.0/24 10.0.0.2 n2",
                "10.244.3.0/24 10.0.0.3 n3",
                "fd00:2::/64 fd00::2 n2",
            ]
        );
        assert!(d.skipped.is_empty(), "{:?}", d.skipped);
    }

    #[test]
    fn clashes_keep_the_first_node_by_name_whatever_the_order() {
        let a = view("a", &["10.244.9.0/24"], &["10.0.0.1"]);
        let b = view("b", &["10.244.9.0/24"], &["10.0.0.2"]);
        for order in [[&a, &b], [&b, &a]] {
            let d = desired("me", order);
            assert_eq!(d.routes[&net("10.244.9.0/24")].node, "a");
            assert!(
                matches!(&d.skipped[..], [Skip::Duplicate { node, owner, .. }]
                if node == "b" && owner == "a")
            );
        }
    }

    #[test]
    fn never_routes_into_the_own_subnet_or_without_an_address() {
        let nodes = [
            view("me", &["10.244.0.0/16"], &["10.0.0.1"]),
            view("x", &["10.244.5.0/24"], &["10.0.0.2"]),
            view("y", &["fd00:7::/64"], &["10.0.0.3"]),
        ];
        let d = desired("me", &nodes);
        assert!(d.routes.is_empty());
        assert!(matches!(d.skipped[0], Skip::OverlapsOwn { .. }));
        assert!(matches!(d.skipped[1], Skip::NoAddress { .. }));
        assert!(d.skipped[1].to_string().contains("no InternalIP"));
    }

    #[test]
    fn next_hops_off_link_are_dropped_with_the_reason() {
        let nodes = [
            view("a", &["10.244.1.0/24"], &["10.0.0.1"]),
            view("b", &["10.244.2.0/24"], &["192.168.7.2"]),
        ];
        let mut d = desired("me", &nodes);
        let reach = HashMap::from([
            (ip("10.0.0.1"), Reach::OnLink { oif: 2 }),
            (
                ip("192.168.7.2"),
                Reach::No("reached via gateway 10.0.0.254".into()),
            ),
        ]);
        keep_on_link(&mut d, &reach);
        assert_eq!(d.routes.len(), 1);
        let msg = d.skipped[0].to_string();
        assert!(
            msg.contains("192.168.7.2") && msg.contains("via gateway"),
            "{msg}"
        );
    }

    #[test]
    fn the_most_specific_covering_route_decides_reachability() {
        let connected = KernelRoute {
            gw: None,
            ..kr("10.0.0.0/24", "0.0.0.0", 2)
        };
        let default = kr("0.0.0.0/0", "10.0.0.254", 16);
        let mut black = kr("10.0.0.128/25", "0.0.0.0", 4);
        black.gw = None;
        black.unicast = false;
        let routes = [default.clone(), connected.clone(), black];
        assert_eq!(reach(ip("10.0.0.7"), &routes), Reach::OnLink { oif: 2 });
        assert!(
            matches!(reach(ip("192.0.2.1"), &routes), Reach::No(w) if w.contains("via gateway 10.0.0.254"))
        );
        assert!(
            matches!(reach(ip("10.0.0.200"), &routes), Reach::No(w) if w.contains("not unicast"))
        );
        assert!(matches!(reach(ip("fd00::1"), &routes), Reach::No(w) if w == "no route to it"));
    }

    #[test]
    fn plan_adds_replaces_and_deletes_only_ours() {
        let wanted = wants(&[
            ("10.244.1.0/24", "10.0.0.1"), // missing: add
            ("10.244.2.0/24", "10.0.0.9"), // renumbered: replace
            ("10.244.3.0/24", "10.0.0.3"), // right: nothing
        ]);
        let ours = by_dst(&[
            kr("10.244.2.0/24", "10.0.0.2", 61),
            kr("10.244.3.0/24", "10.0.0.3", 61),
            kr("10.244.4.0/24", "10.0.0.4", 61), // node gone: delete
        ]);
        let foreign = by_dst(&[kr("192.168.0.0/16", "10.0.0.254", 3)]);
        let p = plan(&wanted, &ours, &foreign, false);
        let ops: Vec<String> = p.ops.iter().map(ToString::to_string).collect();
        assert_eq!(
            ops,
            [
                "add 10.244.1.0/24 via 10.0.0.1",
                "replace 10.244.2.0/24 via 10.0.0.9",
                "delete 10.244.4.0/24 via 10.0.0.4 dev #2 proto 61",
            ]
        );
        assert!(p.conflicts.is_empty());
        // Applied, the same inputs plan nothing.
        let ours = by_dst(&[
            kr("10.244.1.0/24", "10.0.0.1", 61),
            kr("10.244.2.0/24", "10.0.0.9", 61),
            kr("10.244.3.0/24", "10.0.0.3", 61),
        ]);
        assert_eq!(plan(&wanted, &ours, &foreign, false), Plan::default());
    }

    #[test]
    fn foreign_routes_are_reported_or_adopted() {
        let wanted = wants(&[("10.244.1.0/24", "10.0.0.1")]);
        let mut hand = kr("10.244.1.0/24", "10.0.0.7", 3);
        hand.priority = Some(5);
        let foreign = by_dst(&[hand.clone()]);
        let p = plan(&wanted, &BTreeMap::new(), &foreign, false);
        assert!(p.ops.is_empty());
        assert_eq!(p.conflicts[0].foreign, hand);
        assert!(p.conflicts[0].to_string().contains("--adopt-routes"));
        let p = plan(&wanted, &BTreeMap::new(), &foreign, true);
        assert_eq!(
            p.ops,
            [RouteOp::Replace {
                dst: net("10.244.1.0/24"),
                gw: ip("10.0.0.1"),
                priority: Some(5)
            }]
        );
        assert!(p.conflicts.is_empty());
    }

    #[test]
    fn duplicate_copies_of_ours_are_removed() {
        let wanted = wants(&[("10.244.1.0/24", "10.0.0.1")]);
        let mut other_metric = kr("10.244.1.0/24", "10.0.0.5", 61);
        other_metric.priority = Some(100);
        let ours = by_dst(&[other_metric.clone(), kr("10.244.1.0/24", "10.0.0.1", 61)]);
        let p = plan(&wanted, &ours, &BTreeMap::new(), false);
        assert_eq!(p.ops, [RouteOp::Delete(other_metric)]);
    }
}
