//! The host bridge: created on first use, reused afterwards, and removed again
//! when every ADD that used it has failed.
//!
//! A bridge made by an ADD carries the alias [`PENDING`] until an ADD on it
//! succeeds. A failed ADD removes the bridge when it still carries it and has no
//! port left, so a host where every ADD failed is as it was before them, while a
//! bridge that ever served a pod stays (as in the reference, DEL never removes it).
//!
//! The race to guard against: ADD A finds the bridge, and before A's veth is a
//! port of it, ADD B fails, sees no port and removes the bridge; A's veth is then
//! attached to nothing. [`PortLock`] closes it: every ADD holds it shared from
//! before it looks the bridge up until its veth is a port, and takes it exclusive
//! to create or remove the bridge. ADDs on an existing bridge never wait for each
//! other; an ADD that creates the bridge holds it exclusive until its own veth is
//! attached, so no other ADD sees the bridge before it is marked.

use std::fs::File;

use cni_net::netlink::{Link, Netlink};
use cni_net::netns::THREAD_SELF_NETNS;
use cni_net::sysctl;

use crate::config::BridgeConf;
use crate::error::BridgeError;

/// The alias of a bridge no ADD has succeeded on yet.
pub const PENDING: &str = "cni: made by an ADD that has not succeeded yet";

fn context(conf: &BridgeConf) -> String {
    format!("failed to create bridge {:?}", conf.bridge)
}

/// A lock on the host's bridges: `flock` on the host netns file itself, so it is
/// per network namespace by construction, needs no file of its own, and goes
/// with the process however it ends (kill -9 included).
pub struct PortLock {
    _file: File,
}

impl PortLock {
    fn take(exclusive: bool) -> Result<PortLock, BridgeError> {
        let lock_err = |e: std::io::Error| {
            BridgeError::Config(format!(
                "failed to lock the host netns {THREAD_SELF_NETNS}: {e}"
            ))
        };
        let file = File::open(THREAD_SELF_NETNS).map_err(lock_err)?;
        if exclusive {
            file.lock().map_err(lock_err)?;
        } else {
            file.lock_shared().map_err(lock_err)?;
        }
        Ok(PortLock { _file: file })
    }
}

/// Finds the bridge, or creates it (marked [`PENDING`]), and brings it up.
///
/// The returned lock must be held until the caller's veth is a port of the
/// bridge; drop it then, and before calling [`remove_if_unused`].
pub fn ensure(nl: &mut Netlink, conf: &BridgeConf) -> Result<(Link, PortLock), BridgeError> {
    let lock = PortLock::take(false)?;
    if let Some(br) = find(nl, conf)? {
        return Ok((prepare(nl, conf, br)?, lock));
    }
    drop(lock);
    let lock = PortLock::take(true)?;
    let name = conf.bridge.as_str();
    let br = match nl.create_bridge(name, conf.mtu, conf.vlan_filtering) {
        Ok(br) => {
            // Best effort: unmarked, the bridge merely stays as it always did.
            let _ = nl.set_alias(&br, PENDING);
            Link {
                alias: Some(PENDING.to_string()),
                ..br
            }
        }
        // Made by an ADD that held the lock before us.
        Err(e) if e.is_exists() => lookup(nl, conf)?,
        Err(e) => return Err(BridgeError::kernel(context(conf), e)),
    };
    Ok((prepare(nl, conf, br)?, lock))
}

/// Promiscuous mode when asked for, no router advertisements, up.
fn prepare(nl: &mut Netlink, conf: &BridgeConf, mut br: Link) -> Result<Link, BridgeError> {
    let name = conf.bridge.as_str();
    if conf.promisc_mode && !br.promisc {
        nl.set_promisc(&br, true).map_err(|e| {
            BridgeError::kernel(
                format!(
                    "{}: could not set promiscuous mode on {name:?}",
                    context(conf)
                ),
                e,
            )
        })?;
        br.promisc = true;
    }
    // The plugin owns this bridge's routes; router advertisements must not
    // add their own. Best effort, as in the reference.
    let _ = sysctl::set(&format!("net/ipv6/conf/{name}/accept_ra"), "0");
    if !br.up {
        nl.set_link_up(&br)
            .map_err(|e| BridgeError::kernel(context(conf), e))?;
        br.up = true;
    }
    Ok(br)
}

/// After a successful ADD: the bridge has served a pod and stays for good.
/// Best effort: a mark left behind only lets a later failed ADD remove the
/// bridge once it has no port, which the next ADD undoes by making it again.
pub fn settle(nl: &mut Netlink, br: &Link) {
    if br.alias.as_deref() == Some(PENDING) {
        let _ = nl.set_alias(br, "");
    }
}

/// After a failed ADD (whose own veth is gone already): removes the bridge if no
/// ADD has succeeded on it and nothing is attached to it, together with the VLAN
/// gateway interfaces (`<bridge>.<vlan>`) made for it. Best effort: the ADD's
/// own error is what the user needs to see.
pub fn remove_if_unused(nl: &mut Netlink, conf: &BridgeConf) {
    let Ok(_lock) = PortLock::take(true) else {
        return;
    };
    let Ok(Some(br)) = find(nl, conf) else {
        return;
    };
    if br.alias.as_deref() != Some(PENDING) {
        return;
    }
    let Ok(links) = nl.links() else {
        return;
    };
    let gateways: Vec<&Link> = links
        .iter()
        .filter(|l| l.is_veth() && is_vlan_gateway_name(&conf.bridge, &l.name))
        .collect();
    let attached_elsewhere = links.iter().any(|port| {
        port.master == Some(br.index)
            && !gateways
                .iter()
                .any(|gw| gw.peer_index == Some(port.index) && gw.link_netnsid.is_none())
    });
    if attached_elsewhere {
        return;
    }
    for gw in gateways {
        if links
            .iter()
            .any(|p| Some(p.index) == gw.peer_index && p.master == Some(br.index))
        {
            let _ = nl.delete_link(gw);
        }
    }
    let _ = nl.delete_link(&br);
}

/// `<bridge>.<digits>`, the name [`BridgeConf::vlan_gateway_name`] gives.
fn is_vlan_gateway_name(bridge: &str, name: &str) -> bool {
    name.strip_prefix(bridge)
        .and_then(|rest| rest.strip_prefix('.'))
        .is_some_and(|vid| !vid.is_empty() && vid.bytes().all(|b| b.is_ascii_digit()))
}

/// The bridge by name, `None` when there is no link of that name, refusing a
/// non-bridge link.
fn find(nl: &mut Netlink, conf: &BridgeConf) -> Result<Option<Link>, BridgeError> {
    let name = conf.bridge.as_str();
    let link = nl.link_by_name(name).map_err(|e| {
        BridgeError::kernel(format!("{}: could not lookup {name:?}", context(conf)), e)
    })?;
    match link {
        Some(l) if !l.is_bridge() => Err(BridgeError::NotABridge {
            bridge: name.to_string(),
        }),
        other => Ok(other),
    }
}

/// The bridge by name, which must exist.
pub fn lookup(nl: &mut Netlink, conf: &BridgeConf) -> Result<Link, BridgeError> {
    find(nl, conf)?.ok_or_else(|| {
        // Deleted between our create and lookup by someone else.
        BridgeError::Config(format!(
            "{}: could not lookup {:?}: Link not found",
            context(conf),
            conf.bridge
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vlan_gateway_names() {
        assert!(is_vlan_gateway_name("cni0", "cni0.100"));
        assert!(!is_vlan_gateway_name("cni0", "cni0."));
        assert!(!is_vlan_gateway_name("cni0", "cni0.1a"));
        assert!(!is_vlan_gateway_name("cni0", "cni01.1"));
        assert!(!is_vlan_gateway_name("cni0", "veth1234"));
    }
}
