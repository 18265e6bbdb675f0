//! CHECK: the kernel still matches the prevResult this plugin produced:
//! bridge, container veth, its host peer on the bridge, addresses, routes.
//! Unlike the reference, an L2-only config (no IPAM) can be checked too.

use cni_net::netlink::{Family, Link, Netlink, Route as KernelRoute};
use cni_net::netns::NetNs;
use cni_types::{CniResult, Interface, Request, Route, invoke};
use ipnetwork::IpNetwork;

use crate::config::BridgeConf;
use crate::error::BridgeError;

/// Kernel main routing table.
const RT_TABLE_MAIN: u32 = 254;

fn fail(msg: String) -> BridgeError {
    BridgeError::Check(msg)
}

/// A result interface resolved to its kernel link, with the reference's
/// messages for missing names and misplaced sandboxes.
fn resolve(nl: &mut Netlink, intf: &Interface, in_sandbox: bool) -> Result<Link, BridgeError> {
    if intf.name.is_empty() {
        return Err(fail("Interface name missing ".into()));
    }
    let link = nl
        .link_by_name(&intf.name)
        .ok()
        .flatten()
        .ok_or_else(|| fail(format!("Interface name {} not found", intf.name)))?;
    let has_sandbox = intf.sandbox.as_deref().is_some_and(|s| !s.is_empty());
    if in_sandbox && !has_sandbox {
        return Err(fail(format!(
            "Interface {} is expected to be in a sandbox",
            intf.name
        )));
    }
    if !in_sandbox && has_sandbox {
        return Err(fail(format!(
            "Interface {} should not be in sandbox",
            intf.name
        )));
    }
    Ok(link)
}

fn mac_text(link: &Link) -> String {
    link.mac.map(|m| m.to_string()).unwrap_or_default()
}

fn check_bridge(
    nl: &mut Netlink,
    intf: &Interface,
    conf: &BridgeConf,
) -> Result<Link, BridgeError> {
    let link = resolve(nl, intf, false)?;
    if !link.is_bridge() {
        return Err(fail(format!(
            "Interface {} does not have link type of bridge",
            intf.name
        )));
    }
    if let Some(mac) = intf.mac.as_deref().filter(|m| !m.is_empty())
        && !mac.eq_ignore_ascii_case(&mac_text(&link))
    {
        return Err(fail(format!(
            "Bridge interface {} Mac doesn't match: {mac}",
            intf.name
        )));
    }
    if link.promisc != conf.promisc_mode {
        return Err(fail(format!(
            "Bridge interface {} configured Promisc Mode {} doesn't match current state: {} ",
            intf.name, conf.promisc_mode, link.promisc
        )));
    }
    Ok(link)
}

fn check_container(nl: &mut Netlink, intf: &Interface) -> Result<Link, BridgeError> {
    let link = resolve(nl, intf, true)?;
    if !link.is_veth() {
        return Err(fail(format!(
            "Error: Container interface {} not of type veth",
            link.name
        )));
    }
    if link.peer_index.is_none() {
        return Err(fail(format!(
            "Unable to obtain veth peer index for veth {}",
            link.name
        )));
    }
    if let Some(mac) = intf.mac.as_deref().filter(|m| !m.is_empty())
        && !mac.eq_ignore_ascii_case(&mac_text(&link))
    {
        return Err(fail(format!(
            "Interface {} Mac {mac} doesn't match container Mac: {}",
            intf.name,
            mac_text(&link)
        )));
    }
    Ok(link)
}

/// Some other result interface must be the container's peer on the bridge.
fn find_host_veth(
    nl: &mut Netlink,
    result: &CniResult,
    skip: [&str; 2],
    br: &Link,
    ctr: &Link,
) -> Result<bool, BridgeError> {
    for intf in &result.interfaces {
        if skip.contains(&intf.name.as_str()) {
            continue;
        }
        let link = resolve(nl, intf, false)?;
        if !link.is_veth() {
            continue;
        }
        let is_peer = Some(link.index) == ctr.peer_index
            && link.peer_index == Some(ctr.index)
            && link.master == Some(br.index);
        if !is_peer {
            continue;
        }
        if let Some(mac) = intf.mac.as_deref().filter(|m| !m.is_empty())
            && !mac.eq_ignore_ascii_case(&mac_text(&link))
        {
            return Err(fail(format!(
                "Interface {} Mac doesn't match: {mac} not found",
                intf.name
            )));
        }
        return Ok(true);
    }
    Ok(false)
}

fn family_of(net: &IpNetwork) -> Family {
    if net.is_ipv4() {
        Family::V4
    } else {
        Family::V6
    }
}

fn route_matches(k: &KernelRoute, want: &Route) -> bool {
    let table = want.table.unwrap_or(RT_TABLE_MAIN);
    if k.table != table || k.dst.prefix() != want.dst.prefix() {
        return false;
    }
    if want.dst.prefix() == 0 {
        // The reference matches default routes by destination only.
        return true;
    }
    k.dst.network() == want.dst.network() && (want.gw.is_none() || k.gw == want.gw)
}

fn check_addressing(nl: &mut Netlink, ctr: &Link, result: &CniResult) -> Result<(), BridgeError> {
    let addrs = nl
        .addrs(Some(ctr.index), None)
        .map_err(|e| BridgeError::kernel("Cannot obtain List of IP Addresses", e))?;
    let mut tables: [Option<Vec<KernelRoute>>; 2] = [None, None];
    let mut routes_of = |nl: &mut Netlink, fam: Family| -> Result<Vec<KernelRoute>, BridgeError> {
        let slot = &mut tables[usize::from(fam != Family::V4)];
        if slot.is_none() {
            *slot = Some(
                nl.routes(fam)
                    .map_err(|e| BridgeError::kernel("list routes", e))?,
            );
        }
        Ok(slot.clone().unwrap_or_default())
    };
    for ip in &result.ips {
        if !addrs.iter().any(|a| a.net == ip.address) {
            return Err(fail(format!(
                "Failed to match addr {} on interface {}",
                ip.address, ctr.name
            )));
        }
        let prefix = IpNetwork::new(ip.address.network(), ip.address.prefix())
            .map_err(|e| fail(e.to_string()))?;
        let routes = routes_of(nl, family_of(&ip.address))?;
        if !routes.iter().any(|r| r.dst == prefix) {
            let gw = ip
                .gateway
                .map(|g| g.to_string())
                .unwrap_or_else(|| "<nil>".into());
            return Err(fail(format!(
                "Failed to find Gateway {gw} for interface {}",
                ctr.name
            )));
        }
    }
    for want in &result.routes {
        let routes = routes_of(nl, family_of(&want.dst))?;
        if !routes.iter().any(|k| route_matches(k, want)) {
            let gw = want.gw.map(|g| format!(" via {g}")).unwrap_or_default();
            return Err(fail(format!(
                "Expected Route {}{gw} not found in routing table",
                want.dst
            )));
        }
    }
    Ok(())
}

pub fn check(req: &Request) -> Result<(), BridgeError> {
    let conf = BridgeConf::parse(&req.stdin, &req.args)?;
    let netns_path = req.netns_required().map_err(BridgeError::Cni)?;
    let sandbox = netns_path.display().to_string();
    let ns = NetNs::open(netns_path).map_err(|source| BridgeError::Netns {
        path: sandbox.clone(),
        source,
    })?;

    if let Some(ipam) = &conf.ipam_type {
        invoke::delegate_check(ipam, req).map_err(BridgeError::Ipam)?;
    }
    let result = req
        .prev_result()
        .map_err(BridgeError::Cni)?
        .ok_or_else(|| fail("Required prevResult missing".into()))?;

    let br_intf = result
        .interfaces
        .iter()
        .find(|i| i.name == conf.bridge)
        .cloned()
        .unwrap_or_default();
    let ctr_intf = result
        .interfaces
        .iter()
        .find(|i| i.name == req.ifname && i.sandbox.as_deref() == Some(sandbox.as_str()))
        .cloned()
        .unwrap_or_default();

    let mut host_nl =
        Netlink::open().map_err(|e| BridgeError::kernel("failed to open netlink socket", e))?;
    let br = check_bridge(&mut host_nl, &br_intf, &conf)?;
    if ctr_intf.sandbox.as_deref() != Some(sandbox.as_str()) {
        return Err(fail(format!(
            "Sandbox in prevResult {} doesn't match configured netns: {sandbox}",
            ctr_intf.sandbox.as_deref().unwrap_or("")
        )));
    }
    let mut ctr_nl = Netlink::open_in(&ns).map_err(|source| BridgeError::Netns {
        path: sandbox.clone(),
        source,
    })?;
    let ctr = check_container(&mut ctr_nl, &ctr_intf)?;
    let skip = [br_intf.name.as_str(), ctr_intf.name.as_str()];
    if !find_host_veth(&mut host_nl, &result, skip, &br, &ctr)? {
        return Err(fail(format!(
            "CNI veth created for bridge {} was not found",
            conf.bridge
        )));
    }
    check_addressing(&mut ctr_nl, &ctr, &result)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kroute(dst: &str, gw: Option<&str>, table: u32) -> KernelRoute {
        let mut r = KernelRoute::new(dst.parse().unwrap());
        if let Some(g) = gw {
            r = r.via(g.parse().unwrap());
        }
        r.table(table)
    }

    #[test]
    fn route_matching_rules() {
        let want = Route::new(
            "10.9.0.0/16".parse().unwrap(),
            Some("10.1.2.1".parse().unwrap()),
        );
        assert!(route_matches(
            &kroute("10.9.0.0/16", Some("10.1.2.1"), 254),
            &want
        ));
        assert!(!route_matches(
            &kroute("10.9.0.0/16", Some("10.1.2.2"), 254),
            &want
        ));
        assert!(!route_matches(
            &kroute("10.9.0.0/16", Some("10.1.2.1"), 100),
            &want
        ));
        assert!(!route_matches(
            &kroute("10.8.0.0/16", Some("10.1.2.1"), 254),
            &want
        ));

        let no_gw = Route::new("10.9.0.0/16".parse().unwrap(), None);
        assert!(route_matches(
            &kroute("10.9.0.0/16", Some("10.1.2.7"), 254),
            &no_gw
        ));

        let default = Route::new(
            "0.0.0.0/0".parse().unwrap(),
            Some("10.1.2.1".parse().unwrap()),
        );
        assert!(route_matches(
            &kroute("0.0.0.0/0", Some("10.1.2.99"), 254),
            &default
        ));
        assert!(!route_matches(
            &kroute("10.0.0.0/8", Some("10.1.2.1"), 254),
            &default
        ));
    }
}
