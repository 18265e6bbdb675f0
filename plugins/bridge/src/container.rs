//! Inside the container: DAD and ARP settings, addresses, link up, routes.

use std::net::IpAddr;
use std::time::Duration;

use cni_net::netlink::{Ipv4DevConf, Link, Netlink, Route, Scope};
use cni_net::netns::NetNs;
use cni_net::sysctl;
use cni_types::CniResult;

use crate::error::BridgeError;

/// How long the reference lets IPv6 DAD run before giving up.
const DAD_SETTLE: Duration = Duration::from_secs(5);

/// The IPv6 sysctls the container interface needs, written in one visit to
/// the container netns. Best-effort ones are ignored as in the reference.
fn sysctls(ns: &NetNs, ifname: &str, enable_dad: bool, has_v6: bool) -> Result<(), BridgeError> {
    ns.run(|| -> Result<(), BridgeError> {
        // DAD on a fresh veth only delays the pod: the peer is a bridge port
        // we just made. accept_dad=0 must precede the first address and the
        // link going up, or the link-local address starts DAD anyway.
        if enable_dad {
            let _ = sysctl::set(&format!("net/ipv6/conf/{ifname}/enhanced_dad"), "1");
            let _ = sysctl::set(&format!("net/ipv6/conf/{ifname}/accept_dad"), "1");
        } else {
            let _ = sysctl::set(&format!("net/ipv6/conf/{ifname}/accept_dad"), "0");
        }
        if has_v6 {
            for iface in ["lo", ifname] {
                let key = format!("net/ipv6/conf/{iface}/disable_ipv6");
                let Ok(value) = sysctl::get(&key) else {
                    continue;
                };
                if value == "0" {
                    continue;
                }
                sysctl::set(&key, "0").map_err(|e| {
                    BridgeError::kernel(
                        format!("failed to enable IPv6 for interface {iface:?} ({key}={value})"),
                        e,
                    )
                })?;
            }
            // Keep the addresses when something takes the link down briefly.
            sysctl::set(&format!("net/ipv6/conf/{ifname}/keep_addr_on_down"), "1").map_err(
                |e| {
                    BridgeError::kernel(
                        format!("failed to enable keep_addr_on_down for interface {ifname:?}"),
                        e,
                    )
                },
            )?;
        }
        Ok(())
    })
}

/// Applies the result's addresses and routes to the container interface.
pub fn configure(
    nl: &mut Netlink,
    ns: &NetNs,
    link: &Link,
    result: &CniResult,
    enable_dad: bool,
) -> Result<(), BridgeError> {
    let ifname = link.name.as_str();
    let has_v6 = result.ips.iter().any(|ip| ip.address.is_ipv6());
    sysctls(ns, ifname, enable_dad, has_v6)?;
    // Announce the new MAC to neighbours when the link comes up; best-effort
    // as in the reference. Through netlink rather than /proc: with a thousand
    // netns the first walk below /proc/sys/net/ipv4 in a fresh one costs up
    // to a millisecond.
    let _ = nl.ensure_ipv4_conf(link, Ipv4DevConf::ArpNotify, 1);

    let mut v4gw: Option<IpAddr> = None;
    let mut v6gw: Option<IpAddr> = None;
    for ip in &result.ips {
        if ip.interface.is_none() {
            continue;
        }
        nl.add_addr(link, ip.address).map_err(|e| {
            BridgeError::kernel(
                format!("failed to add IP addr {} to {ifname:?}", ip.address),
                e,
            )
        })?;
        if let Some(gw) = ip.gateway {
            let slot = if gw.is_ipv4() { &mut v4gw } else { &mut v6gw };
            if slot.is_none() {
                *slot = Some(gw);
            }
        }
    }

    nl.set_link_up(link)
        .map_err(|e| BridgeError::kernel(format!("failed to set {ifname:?} UP"), e))?;

    // Without DAD nothing is tentative: no reason to look, let alone wait.
    if v6gw.is_some() && enable_dad {
        nl.settle_addrs(link, DAD_SETTLE).map_err(|e| {
            BridgeError::kernel(format!("failed to settle addresses for {ifname:?}"), e)
        })?;
    }

    for r in &result.routes {
        let gw = r.gw.or(if r.dst.is_ipv4() { v4gw } else { v6gw });
        let mut route = Route::new(r.dst).dev(link.index);
        if let Some(gw) = gw {
            route = route.via(gw);
        }
        if let Some(p) = r.priority {
            route = route.priority(p);
        }
        if let Some(t) = r.table {
            route = route.table(t);
        }
        if let Some(s) = r.scope {
            route = route.scope(Scope::from(s));
        }
        if let Some(m) = r.mtu {
            route = route.mtu(m);
        }
        if let Some(a) = r.advmss {
            route = route.advmss(a);
        }
        nl.add_route(&route).map_err(|e| {
            let via = gw.map(|g| g.to_string()).unwrap_or_else(|| "<nil>".into());
            BridgeError::kernel(
                format!(
                    "failed to add route '{} via {via} dev {ifname} metric {}'",
                    r.dst,
                    r.priority.unwrap_or(0)
                ),
                e,
            )
        })?;
    }
    Ok(())
}
