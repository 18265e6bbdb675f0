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

    if let Some(path) = &req.netns {
        match NetNs::open(path) {
            Ok(ns) => remove_container_iface(&ns, &req.ifname)?,
            // The runtime removed the netns first (or it is a stale file left
            // after a reboot): its interfaces are gone with it.
            Err(e) if e.is_not_found() || matches!(e, cni_net::error::Error::NotNetns { .. }) => {}
            Err(source) => {
                return Err(BridgeError::Netns {
                    path: path.display().to_string(),
                    source,
                });
            }
        }
    }

    // Every step below runs even if an earlier one failed, so a retried DEL
    // has as little as possible left to do.
    let mut errors = Vec::new();
    if let Some(ipam) = &conf.ipam_type
        && let Err(e) = invoke::delegate_del(ipam, req)
    {
        errors.push(BridgeError::Ipam(e));
    }
    if conf.macspoofchk
        && let Err(e) = SpoofCheck::new(&req.container_id, &req.ifname).teardown()
    {
        // The reference only logs this; a stale chain matches no traffic.
        eprintln!("{e}");
    }
    if conf.is_layer3()
        && conf.ip_masq
        && let Err(e) = masq::teardown(&conf, &req.ifname, &req.container_id)
    {
        errors.push(e);
    }
    match errors.len() {
        0 => Ok(()),
        1 => Err(errors.remove(0)),
        _ => Err(BridgeError::Multiple(errors)),
    }
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
