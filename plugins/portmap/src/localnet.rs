//! `route_localnet` on the host interface that leads to the pod, so that a connection
//! to `127.0.0.1:<hostPort>` (source 127.0.0.1, DNATed to the pod) is not dropped as
//! a martian when it leaves through that interface.

use std::net::IpAddr;

use cni_net::netlink::{Family, Netlink};

use crate::error::PortmapError;

/// Main routing table id; policy routing aside, it decides where the pod is reached.
const MAIN_TABLE: u32 = 254;

/// Sets `net/ipv4/conf/<iface>/route_localnet=1` for the interface that routes to
/// `pod`. No route (the pod is unreachable from here) means nothing to do, as in the
/// reference.
pub fn enable_for(pod: IpAddr) -> Result<(), PortmapError> {
    let Some(iface) = routing_interface(pod)? else {
        return Ok(());
    };
    cni_net::sysctl::ensure(&format!("net/ipv4/conf/{iface}/route_localnet"), "1")
        .map_err(PortmapError::Localnet)?;
    Ok(())
}

/// The name of the interface of the most specific main-table route to `ip`.
///
/// The reference asks the kernel (`ip route get`); the longest matching prefix of
/// the main table is the same answer for the routes a bridge or ptp setup creates,
/// without policy rules that a CNI host-port path never depends on.
fn routing_interface(ip: IpAddr) -> Result<Option<String>, PortmapError> {
    let mut nl = Netlink::open().map_err(PortmapError::Localnet)?;
    let best = nl
        .routes(Family::of(&ip))
        .map_err(PortmapError::Localnet)?
        .into_iter()
        .filter(|r| r.table == MAIN_TABLE && r.dst.contains(ip))
        .filter_map(|r| Some((r.dst.prefix(), r.priority.unwrap_or(0), r.oif?)))
        // Longest prefix first; among equals the lowest metric, as the kernel picks.
        .min_by_key(|(prefix, metric, _)| (std::cmp::Reverse(*prefix), *metric));
    let Some((_, _, oif)) = best else {
        return Ok(None);
    };
    Ok(nl
        .link_by_index(oif)
        .map_err(PortmapError::Localnet)?
        .map(|link| link.name))
}
