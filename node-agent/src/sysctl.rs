//! Node settings: forwarding on for each IP family the pods use (kubeadm's preflight
//! wants `net.ipv4.ip_forward=1` anyway), read over rtnetlink and written through
//! /proc as the plugins do. rp_filter is never changed; a strict setting is reported
//! when it would drop pod traffic.

use cni_net::netlink::{Family, Netlink};
use cni_net::sysctl;

fn key(family: Family) -> &'static str {
    match family {
        Family::V4 => "net/ipv4/ip_forward",
        Family::V6 => "net/ipv6/conf/all/forwarding",
    }
}

/// Turns forwarding on for `family` unless it is; returns whether it wrote.
pub fn ensure_forwarding(family: Family) -> Result<bool, String> {
    let on = Netlink::open()
        .and_then(|mut nl| nl.forwarding(family))
        .map_err(|e| e.to_string())?;
    if on == Some(true) {
        return Ok(false);
    }
    sysctl::set(key(family), "1").map_err(|e| {
        format!(
            "{e}: pods cannot reach other nodes without it; set {}=1",
            key(family)
        )
    })?;
    Ok(true)
}

/// The effective IPv4 rp_filter of an interface: the larger of `all` and its own.
pub fn rp_filter(ifname: &str) -> Option<u32> {
    let read = |k: String| sysctl::get(&k).ok()?.trim().parse::<u32>().ok();
    let all = read("net/ipv4/conf/all/rp_filter".to_owned())?;
    let own = read(format!("net/ipv4/conf/{ifname}/rp_filter")).unwrap_or(0);
    Some(all.max(own))
}

/// Name of an interface by index.
pub fn ifname(index: u32) -> Option<String> {
    let mut nl = Netlink::open().ok()?;
    nl.link_by_index(index).ok()?.map(|l| l.name.clone())
}
