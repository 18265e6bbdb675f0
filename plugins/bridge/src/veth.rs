//! The veth pair: container end named `CNI_IFNAME`, host end `veth` + 8 hex
//! characters, enslaved to the bridge with the configured port flags.

use cni_net::netlink::{Link, MacAddr, Netlink};
use cni_net::netns::NetNs;
use cni_net::sysctl;

use crate::error::BridgeError;

/// How many random host-side names to try before giving up.
const NAME_ATTEMPTS: usize = 10;

/// Both ends, each as seen from its own netns.
#[derive(Debug)]
pub struct Pair {
    pub host: Link,
    pub inner: Link,
}

/// Port settings of the host end.
#[derive(Debug, Default, Clone)]
pub struct PortOptions {
    pub hairpin: bool,
    pub isolated: bool,
    /// Access VLAN: PVID, untagged.
    pub vlan: Option<u16>,
    /// Tagged VLANs.
    pub trunk: Vec<u16>,
    pub preserve_default_vlan: bool,
}

/// `veth` + 8 lowercase hex characters from 4 random bytes.
pub fn random_name() -> Result<String, BridgeError> {
    let mut buf = [0u8; 4];
    // SAFETY: getrandom writes at most buf.len() bytes into buf.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n != buf.len() as isize {
        return Err(BridgeError::Config(format!(
            "failed to generate random veth name: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(format!(
        "veth{:02x}{:02x}{:02x}{:02x}",
        buf[0], buf[1], buf[2], buf[3]
    ))
}

/// Creates the pair from `inner_nl`'s netns (the container, or the host for a
/// VLAN gateway) with the peer made directly in the host netns, so the host
/// end never shows up inside the container.
pub fn create(
    inner_nl: &mut Netlink,
    host_nl: &mut Netlink,
    host_ns: Option<&NetNs>,
    ifname: &str,
    mtu: Option<u32>,
    mac: Option<MacAddr>,
) -> Result<Pair, BridgeError> {
    for _ in 0..NAME_ATTEMPTS {
        let peer = random_name()?;
        let inner = match inner_nl.create_veth(ifname, &peer, mtu, mac, host_ns) {
            Ok(link) => link,
            Err(e) if e.is_exists() => {
                let peer_taken = host_nl
                    .link_by_name(&peer)
                    .map_err(|e| BridgeError::kernel("failed to make veth pair", e))?
                    .is_some();
                if peer_taken {
                    continue;
                }
                return Err(BridgeError::VethExists {
                    ifname: ifname.to_string(),
                    peer,
                });
            }
            Err(e) => return Err(BridgeError::kernel("failed to make veth pair", e)),
        };
        match bring_up_host_end(host_nl, &peer) {
            Ok(host) => return Ok(Pair { host, inner }),
            Err(e) => {
                // The caller only learns of a pair it got back: remove it here.
                let _ = inner_nl.delete_link(&inner);
                return Err(e);
            }
        }
    }
    Err(BridgeError::NoUniqueVethName)
}

fn bring_up_host_end(host_nl: &mut Netlink, peer: &str) -> Result<Link, BridgeError> {
    let host = host_nl
        .link_by_name(peer)
        .map_err(|e| BridgeError::kernel(format!("failed to lookup {peer:?}"), e))?
        .ok_or_else(|| BridgeError::Config(format!("failed to lookup {peer:?}: Link not found")))?;
    host_nl
        .set_link_up(&host)
        .map_err(|e| BridgeError::kernel(format!("failed to set {peer:?} up"), e))?;
    // Host ends carry no addresses of their own; ignore RAs on them.
    let _ = sysctl::set(&format!("net/ipv6/conf/{peer}/accept_ra"), "0");
    Ok(host)
}

/// Connects the host end to the bridge and applies hairpin, isolation and
/// VLAN membership.
pub fn attach(
    nl: &mut Netlink,
    host: &Link,
    bridge: &Link,
    opts: &PortOptions,
) -> Result<(), BridgeError> {
    let name = &host.name;
    nl.set_master(host, Some(bridge)).map_err(|e| {
        BridgeError::kernel(
            format!("failed to connect {name:?} to bridge {}", bridge.name),
            e,
        )
    })?;
    // A fresh port has both flags off: only a request to turn one on needs
    // a kernel round trip.
    if opts.hairpin {
        nl.set_port_hairpin(host, true).map_err(|e| {
            BridgeError::kernel(format!("failed to setup hairpin mode for {name}"), e)
        })?;
    }
    if opts.isolated {
        nl.set_port_isolated(host, true)
            .map_err(|e| BridgeError::kernel(format!("failed to set isolated on for {name}"), e))?;
    }
    let uses_vlans = opts.vlan.is_some() || !opts.trunk.is_empty();
    if uses_vlans && !opts.preserve_default_vlan {
        let current = nl.bridge_vlans(host).map_err(|e| {
            BridgeError::kernel(
                format!("failed to remove default vlan on interface {name:?}"),
                e,
            )
        })?;
        for v in current {
            nl.bridge_vlan_del(host, v.vid).map_err(|e| {
                BridgeError::kernel(
                    format!("failed to remove default vlan on interface {name:?}"),
                    e,
                )
            })?;
        }
    }
    if let Some(vid) = opts.vlan {
        nl.bridge_vlan_add(host, vid, true, true).map_err(|e| {
            BridgeError::kernel(format!("failed to setup vlan tag on interface {name:?}"), e)
        })?;
    }
    for &vid in &opts.trunk {
        nl.bridge_vlan_add(host, vid, false, false).map_err(|e| {
            BridgeError::kernel(format!("failed to setup vlan tag on interface {name:?}"), e)
        })?;
    }
    if opts.vlan.is_none() && !opts.trunk.is_empty() {
        // A trunk without `vlan` keeps VLAN 1 as its native (untagged) VLAN.
        nl.bridge_vlan_add(host, 1, true, true).map_err(|e| {
            BridgeError::kernel(
                format!("failed to setup default native vlan tag on interface {name:?}"),
                e,
            )
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_names_look_like_the_reference() {
        let a = random_name().unwrap();
        let b = random_name().unwrap();
        assert_eq!(a.len(), 12);
        assert!(a.starts_with("veth"));
        assert!(
            a[4..]
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_ne!(a, b);
    }
}
