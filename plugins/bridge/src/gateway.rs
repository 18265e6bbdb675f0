//! Gateway side of L3 mode: which gateway each IP uses, default routes for
//! `isDefaultGateway`, gateway addresses on the bridge, IP forwarding.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;

use cni_net::netlink::{Family, Link, Netlink};
use cni_net::sysctl;
use cni_types::{CniResult, Route};

use crate::config::BridgeConf;
use crate::error::BridgeError;

/// Index of the container interface in the result.
pub const CONTAINER_IFACE: usize = 2;

/// Gateway addresses (gateway IP + the container's prefix) per family, in
/// result order.
#[derive(Debug, Default, PartialEq)]
pub struct Gateways {
    pub v4: Vec<IpNetwork>,
    pub v6: Vec<IpNetwork>,
}

impl Gateways {
    pub fn families(&self) -> [(Family, &[IpNetwork]); 2] {
        [(Family::V4, &self.v4), (Family::V6, &self.v6)]
    }
}

/// The first address of the subnet after the network address.
pub fn first_host(net: &IpNetwork) -> IpAddr {
    match net {
        IpNetwork::V4(n) => IpAddr::V4(Ipv4Addr::from(u32::from(n.network()).wrapping_add(1))),
        IpNetwork::V6(n) => IpAddr::V6(Ipv6Addr::from(u128::from(n.network()).wrapping_add(1))),
    }
}

fn default_dst(v4: bool) -> IpNetwork {
    if v4 {
        IpNetwork::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0)
    } else {
        IpNetwork::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0)
    }
    .unwrap_or_else(|_| unreachable!("prefix 0 is valid for both families"))
}

/// Points every IP at the container interface, fills in missing gateways
/// (network + 1) when the bridge is the gateway, adds one default route per
/// family for `isDefaultGateway` unless IPAM already gave one with a gateway,
/// and collects the gateway addresses for the bridge.
pub fn calc(result: &mut CniResult, conf: &BridgeConf) -> Gateways {
    let mut gws = Gateways::default();
    let mut default_found = [false, false];
    for i in 0..result.ips.len() {
        let ip = &mut result.ips[i];
        ip.interface = Some(CONTAINER_IFACE);
        let v4 = ip.address.is_ipv4();
        if ip.gateway.is_none() && conf.is_gateway {
            ip.gateway = Some(first_host(&ip.address));
        }
        let (address, gateway) = (ip.address, ip.gateway);
        let fam = usize::from(!v4);
        if conf.is_default_gateway && !default_found[fam] {
            let dst = default_dst(v4);
            let have = result.routes.iter().any(|r| r.gw.is_some() && r.dst == dst);
            if !have {
                result.routes.push(Route::new(dst, gateway));
            }
            default_found[fam] = true;
        }
        if conf.is_gateway
            && let Some(gw) = gateway
            && let Ok(net) = IpNetwork::new(gw, address.prefix())
        {
            if v4 {
                gws.v4.push(net);
            } else {
                gws.v6.push(net);
            }
        }
    }
    gws
}

/// Puts `want` on `link` (the bridge or its VLAN gateway). An IPv4 bridge
/// holds one address, an IPv6 bridge any number of non-overlapping ones; a
/// conflicting address is replaced only with `forceAddress`. Concurrent ADDs
/// adding the same address are fine.
pub fn ensure_addr(
    nl: &mut Netlink,
    link: &Link,
    want: IpNetwork,
    force: bool,
    context: &'static str,
) -> Result<(), BridgeError> {
    let family = Family::of(want.ip());
    let existing = nl.addrs(Some(link.index), Some(family)).map_err(|e| {
        BridgeError::kernel(format!("{context}: could not get list of IP addresses"), e)
    })?;
    for a in &existing {
        if a.net == want {
            return Ok(());
        }
        let conflicts =
            family == Family::V4 || a.net.contains(want.ip()) || want.contains(a.net.ip());
        if !conflicts {
            continue;
        }
        if !force {
            return Err(BridgeError::AddrConflict {
                context,
                bridge: link.name.clone(),
                addr: want.to_string(),
            });
        }
        nl.del_addr(link, a.net).map_err(|e| {
            BridgeError::kernel(
                format!(
                    "{context}: could not remove IP address from {:?}",
                    link.name
                ),
                e,
            )
        })?;
    }
    match nl.add_addr(link, want) {
        Ok(()) => {}
        Err(e) if e.is_exists() => {}
        Err(e) => {
            return Err(BridgeError::kernel(
                format!(
                    "{context}: could not add IP address {want} to {:?}",
                    link.name
                ),
                e,
            ));
        }
    }
    // A bridge without an explicit MAC takes the lowest of its ports' and
    // changes as ports come and go; setting the MAC it had before this ADD
    // attached a port pins it. A bridge made portless by other tools can
    // report an all-zero MAC, which the kernel refuses (the reference then
    // fails with "invalid argument"): pin what it has now instead.
    let mut mac = link.mac.filter(|m| m.0 != [0; 6]);
    if mac.is_none() {
        mac = nl
            .link_by_name(&link.name)
            .ok()
            .flatten()
            .and_then(|l| l.mac)
            .filter(|m| m.0 != [0; 6]);
    }
    if let Some(mac) = mac {
        nl.set_mac(link, mac).map_err(|e| {
            BridgeError::kernel(format!("{context}: could not set bridge's mac"), e)
        })?;
    }
    Ok(())
}

/// Turns on forwarding for a family, writing only when it is off.
///
/// On a node it is nearly always on already, and rtnetlink says so without
/// the walk below `/proc/sys/net/ipv4` that costs ~0.5 ms with a thousand
/// netns. `/proc` stays the way to turn it on (netlink cannot) and the
/// fallback whenever netlink does not give a clear answer.
pub fn enable_forwarding(nl: &mut Netlink, family: Family) -> Result<(), BridgeError> {
    if let Ok(Some(true)) = nl.forwarding(family) {
        return Ok(());
    }
    let key = match family {
        Family::V4 => "net/ipv4/ip_forward",
        _ => "net/ipv6/conf/all/forwarding",
    };
    sysctl::ensure(key, "1")
        .map(drop)
        .map_err(|e| BridgeError::kernel("failed to enable forwarding", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cni_types::IpConfig;
    use serde_json::json;

    fn conf(v: serde_json::Value) -> BridgeConf {
        BridgeConf::parse(v.to_string().as_bytes(), &cni_types::CniArgs::default()).unwrap()
    }

    fn ip(addr: &str, gw: Option<&str>) -> IpConfig {
        IpConfig {
            address: addr.parse().unwrap(),
            gateway: gw.map(|g| g.parse().unwrap()),
            interface: None,
        }
    }

    #[test]
    fn gateway_defaults_to_network_plus_one() {
        let c = conf(json!({"name": "n", "isGateway": true}));
        let mut r = CniResult {
            ips: vec![ip("10.1.2.7/24", None), ip("2001:db8::7/64", None)],
            ..Default::default()
        };
        let g = calc(&mut r, &c);
        assert_eq!(r.ips[0].gateway.unwrap().to_string(), "10.1.2.1");
        assert_eq!(r.ips[1].gateway.unwrap().to_string(), "2001:db8::1");
        assert!(r.ips.iter().all(|i| i.interface == Some(2)));
        assert_eq!(g.v4, ["10.1.2.1/24".parse::<IpNetwork>().unwrap()]);
        assert_eq!(g.v6, ["2001:db8::1/64".parse::<IpNetwork>().unwrap()]);
        assert!(
            r.routes.is_empty(),
            "no default route without isDefaultGateway"
        );
    }

    #[test]
    fn ipam_gateway_is_kept_and_no_bridge_address_without_is_gateway() {
        let c = conf(json!({"name": "n"}));
        let mut r = CniResult {
            ips: vec![
                ip("10.1.2.7/24", Some("10.1.2.254")),
                ip("10.9.0.2/16", None),
            ],
            ..Default::default()
        };
        let g = calc(&mut r, &c);
        assert_eq!(r.ips[0].gateway.unwrap().to_string(), "10.1.2.254");
        assert_eq!(r.ips[1].gateway, None);
        assert_eq!(g, Gateways::default());
    }

    #[test]
    fn default_route_once_per_family_unless_ipam_has_one_with_gw() {
        let c = conf(json!({"name": "n", "isDefaultGateway": true}));
        let mut r = CniResult {
            ips: vec![
                ip("10.1.2.7/24", None),
                ip("10.1.3.7/24", None),
                ip("2001:db8::7/64", None),
            ],
            ..Default::default()
        };
        let g = calc(&mut r, &c);
        let dsts: Vec<String> = r
            .routes
            .iter()
            .map(|r| format!("{} {}", r.dst, r.gw.unwrap()))
            .collect();
        assert_eq!(dsts, ["0.0.0.0/0 10.1.2.1", "::/0 2001:db8::1"]);
        assert_eq!(g.v4.len(), 2, "one gateway address per IP");

        // IPAM's default route without a gateway does not count.
        let mut r = CniResult {
            ips: vec![ip("10.1.2.7/24", None)],
            routes: vec![
                Route::new("0.0.0.0/0".parse().unwrap(), None),
                Route::new(
                    "::/0".parse().unwrap(),
                    Some("2001:db8::99".parse().unwrap()),
                ),
            ],
            ..Default::default()
        };
        calc(&mut r, &c);
        assert_eq!(r.routes.len(), 3);
        assert_eq!(r.routes[2].gw.unwrap().to_string(), "10.1.2.1");

        let mut r = CniResult {
            ips: vec![ip("10.1.2.7/24", None)],
            routes: vec![Route::new(
                "0.0.0.0/0".parse().unwrap(),
                Some("10.1.2.9".parse().unwrap()),
            )],
            ..Default::default()
        };
        calc(&mut r, &c);
        assert_eq!(r.routes.len(), 1);
    }

    #[test]
    fn first_host_of_odd_prefixes() {
        assert_eq!(
            first_host(&"10.1.2.200/25".parse().unwrap()).to_string(),
            "10.1.2.129"
        );
        assert_eq!(
            first_host(&"2001:db8:1::5/48".parse().unwrap()).to_string(),
            "2001:db8:1::1"
        );
    }
}
