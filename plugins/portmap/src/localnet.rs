//! `route_localnet` on the host interface that leads to the pod, so that a connection
//! to `127.0.0.1:<hostPort>` (source 127.0.0.1, DNATed to the pod) is not dropped as
//! a martian when it leaves through that interface.
//!
//! The switch also lets pods reach the host's loopback, so ADD finds the interface
//! first ([`interface_for`]), has the NAT driver guard it together with the DNAT rules,
//! and only then [`enable`]s it. The guard's last DEL puts it back to 0 (see
//! `cni_net::nat`'s guard and the README's "Security").

use std::net::IpAddr;

use cni_net::netlink::{Family, Ipv4DevConf, Link, Netlink};

use crate::error::PortmapError;

/// Main routing table id; policy routing aside, it decides where the pod is reached.
const MAIN_TABLE: u32 = 254;

/// Sets `route_localnet=1` for the interface that routes to `pod`, writing only when
/// it is off (unguarded: tests only). No route (the pod is unreachable from here) means nothing to do, as in
/// the reference.
///
/// Read from the link lookup and written over netlink rather than through
/// `/proc/sys/net/ipv4/conf/<iface>/route_localnet`: with a thousand netns on the
/// node a path walk below `/proc/sys/net/ipv4` costs ~150 µs even from the host.
#[cfg(test)]
pub fn enable_for(pod: IpAddr) -> Result<(), PortmapError> {
    match interface_for(pod)? {
        Some(link) => enable(&link),
        None => Ok(()),
    }
}

/// The host interface that routes to `pod`, if any.
pub fn interface_for(pod: IpAddr) -> Result<Option<Link>, PortmapError> {
    let mut nl = Netlink::open().map_err(PortmapError::Localnet)?;
    routing_interface(&mut nl, pod)
}

/// Sets `route_localnet=1` on `link`, writing only when it is off. The caller has
/// guarded `link` first.
pub fn enable(link: &Link) -> Result<(), PortmapError> {
    let mut nl = Netlink::open().map_err(PortmapError::Localnet)?;
    nl.ensure_ipv4_conf(link, Ipv4DevConf::RouteLocalnet, 1)
        .map_err(PortmapError::Localnet)?;
    Ok(())
}

/// The interface of the most specific main-table route to `ip`.
///
/// The reference asks the kernel (`ip route get`); the longest matching prefix of
/// the main table is the same answer for the routes a bridge or ptp setup creates,
/// without policy rules that a CNI host-port path never depends on.
fn routing_interface(nl: &mut Netlink, ip: IpAddr) -> Result<Option<Link>, PortmapError> {
    let best = nl
        .routes(Family::of(ip))
        .map_err(PortmapError::Localnet)?
        .into_iter()
        .filter(|r| r.table == MAIN_TABLE && r.dst.contains(ip))
        .filter_map(|r| Some((r.dst.prefix(), r.priority.unwrap_or(0), r.oif?)))
        // Longest prefix first; among equals the lowest metric, as the kernel picks.
        .min_by_key(|(prefix, metric, _)| (std::cmp::Reverse(*prefix), *metric));
    let Some((_, _, oif)) = best else {
        return Ok(None);
    };
    nl.link_by_index(oif).map_err(PortmapError::Localnet)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cni_net::netns::NetNs;
    use std::process::Command;

    /// A netns made with `ip netns add`, deleted on drop even when the test panics.
    struct TempNs(String);

    impl TempNs {
        fn new() -> TempNs {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            let name = format!("pm-localnet-{}-{nanos:x}", std::process::id());
            let ok = Command::new("ip")
                .args(["netns", "add", &name])
                .status()
                .unwrap()
                .success();
            assert!(ok, "ip netns add {name}");
            TempNs(name)
        }
    }

    impl Drop for TempNs {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }

    fn enable_in(ns: &NetNs, pod: &str) {
        let pod: IpAddr = pod.parse().unwrap();
        ns.run(|| Ok::<_, cni_net::error::Error>(enable_for(pod)))
            .unwrap()
            .unwrap_or_else(|e| panic!("{e}"));
    }

    fn route_localnet(ns: &NetNs, ifname: &str) -> String {
        ns.run(|| cni_net::sysctl::get(&format!("net/ipv4/conf/{ifname}/route_localnet")))
            .unwrap()
    }

    #[test]
    fn sets_route_localnet_on_the_interface_routing_to_the_pod_only() {
        let tmp = TempNs::new();
        let ns = NetNs::open(format!("/run/netns/{}", tmp.0)).unwrap();
        let mut nl = Netlink::open_in(&ns).unwrap();
        let va = nl.create_veth("va", "vb", None, None, None).unwrap();
        let vb = nl.link_by_name("vb").unwrap().unwrap();
        nl.set_link_up(&va).unwrap();
        nl.set_link_up(&vb).unwrap();
        nl.add_addr(&va, "10.99.0.1/24".parse().unwrap()).unwrap();

        // Unroutable: nothing to do, no error.
        enable_in(&ns, "192.0.2.7");
        assert_eq!(route_localnet(&ns, "va"), "0");

        for _ in 0..2 {
            enable_in(&ns, "10.99.0.5");
            assert_eq!(route_localnet(&ns, "va"), "1");
            assert_eq!(route_localnet(&ns, "vb"), "0");
        }
    }
}
