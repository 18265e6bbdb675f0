//! The host bridge: created on first use, reused afterwards.

use cni_net::netlink::{Link, Netlink};
use cni_net::sysctl;

use crate::config::BridgeConf;
use crate::error::BridgeError;

fn context(conf: &BridgeConf) -> String {
    format!("failed to create bridge {:?}", conf.bridge)
}

/// Creates the bridge or adopts an existing one, and brings it up.
///
/// Concurrent ADDs race to create it: EEXIST just means someone else won.
pub fn ensure(nl: &mut Netlink, conf: &BridgeConf) -> Result<Link, BridgeError> {
    let name = conf.bridge.as_str();
    let created = match nl.create_bridge(name, conf.mtu, conf.vlan_filtering) {
        Ok(link) => Some(link),
        Err(e) if e.is_exists() => None,
        Err(e) => return Err(BridgeError::kernel(context(conf), e)),
    };
    let mut br = match created {
        Some(link) => link,
        None => lookup(nl, conf)?,
    };
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

/// The bridge by name, refusing a non-bridge link of that name.
pub fn lookup(nl: &mut Netlink, conf: &BridgeConf) -> Result<Link, BridgeError> {
    let name = conf.bridge.as_str();
    let link = nl.link_by_name(name).map_err(|e| {
        BridgeError::kernel(format!("{}: could not lookup {name:?}", context(conf)), e)
    })?;
    match link {
        Some(l) if l.is_bridge() => Ok(l),
        Some(_) => Err(BridgeError::NotABridge {
            bridge: name.to_string(),
        }),
        // Deleted between our create and lookup by someone else.
        None => Err(BridgeError::Config(format!(
            "{}: could not lookup {name:?}: Link not found",
            context(conf)
        ))),
    }
}
