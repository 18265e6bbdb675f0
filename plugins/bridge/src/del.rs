//! DEL: best effort and idempotent. The container interface goes (which
//! removes the host end too), IPAM always releases, and the spoof-check and
//! ipMasq rules are removed by name, so nothing leaks when the netns is
//! already gone or `CNI_NETNS` is empty. The bridge is never removed.

use cni_net::netlink::Netlink;
use cni_net::netns::NetNs;
use cni_types::{Request, invoke};

use crate::config::BridgeConf;
use crate::error::BridgeError;
use crate::masq;
use crate::spoofcheck::SpoofCheck;

pub fn del(req: &Request) -> Result<(), BridgeError> {
    let conf = BridgeConf::parse(&req.stdin, &req.args)?;

    // Removing a veth costs the kernel two RCU grace periods (~20 ms); the
    // firewall teardown is a few tool runs that do not depend on it, so they
    // overlap. The worker never changes netns, so the tools it spawns run in
    // the host. IPAM still releases only after the interface is gone, so the
    // address cannot be handed out while the old interface holds it.
    let (iface, firewall, ipam) = std::thread::scope(|s| {
        let firewall = s.spawn(|| teardown_firewall(&conf, req));
        let iface = remove_iface_if_netns(req);
        let ipam = match (&iface, &conf.ipam_type) {
            (Ok(()), Some(ipam)) => invoke::delegate_del(ipam, req).map_err(BridgeError::Ipam),
            _ => Ok(()),
        };
        let firewall = firewall
            .join()
            .unwrap_or_else(|_| Err(BridgeError::Config("firewall teardown panicked".into())));
        (iface, firewall, ipam)
    });
    // Every step ran even if another failed, so a retried DEL has as little
    // as possible left to do.
    let mut errors: Vec<BridgeError> = [iface, ipam, firewall]
        .into_iter()
        .filter_map(Result::err)
        .collect();
    match errors.len() {
        0 => Ok(()),
        1 => Err(errors.remove(0)),
        _ => Err(BridgeError::Multiple(errors)),
    }
}

fn remove_iface_if_netns(req: &Request) -> Result<(), BridgeError> {
    let Some(path) = &req.netns else {
        return Ok(());
    };
    match NetNs::open(path) {
        Ok(ns) => remove_container_iface(&ns, &req.ifname),
        // The runtime removed the netns first (or it is a stale file left
        // after a reboot): its interfaces are gone with it.
        Err(e) if e.is_not_found() || matches!(e, cni_net::error::Error::NotNetns { .. }) => Ok(()),
        Err(source) => Err(BridgeError::Netns {
            path: path.display().to_string(),
            source,
        }),
    }
}

/// Spoof-check chains and ipMasq rules, found by name: no netns or
/// addresses needed.
fn teardown_firewall(conf: &BridgeConf, req: &Request) -> Result<(), BridgeError> {
    if conf.macspoofchk
        && let Err(e) = SpoofCheck::new(&req.container_id, &req.ifname).teardown()
    {
        // The reference only logs this; a stale chain matches no traffic.
        eprintln!("{e}");
    }
    if conf.is_layer3() && conf.ip_masq {
        masq::teardown(conf, &req.ifname, &req.container_id)?;
    }
    Ok(())
}

fn remove_container_iface(ns: &NetNs, ifname: &str) -> Result<(), BridgeError> {
    let mut nl = Netlink::open_in(ns)
        .map_err(|e| BridgeError::kernel("failed to open netlink socket in container", e))?;
    let link = nl
        .link_by_name(ifname)
        .map_err(|e| BridgeError::kernel(format!("failed to lookup {ifname:?}"), e))?;
    if let Some(link) = link {
        match nl.delete_link(&link) {
            Ok(()) => {}
            // A concurrent DEL got there first.
            Err(e) if e.is_not_found() => {}
            Err(e) => {
                return Err(BridgeError::kernel(
                    format!("failed to delete {ifname:?}"),
                    e,
                ));
            }
        }
    }
    Ok(())
}
