//! Host-port mapping (the `portmap` plugin's firewall work).
//!
//! iptables layout (nat table), as the reference:
//! - `PREROUTING`, `OUTPUT`: `-m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT`
//! - `CNI-HOSTPORT-DNAT`: per protocol, groups of ≤15 host ports:
//!   `-p tcp -m comment --comment "dnat name: ..." -m multiport --dports 80,81 -j CNI-DN-<hash>`
//! - `CNI-DN-<hash>` (per container): per mapping, the hairpin and (IPv4) localhost
//!   mark rules, then the DNAT
//! - `CNI-HOSTPORT-SETMARK` sets the mark, `CNI-HOSTPORT-MASQ` (first in
//!   `POSTROUTING`) masquerades marked packets.
//!
//! nftables layout: tables `ip cni_hostport` and `ip6 cni_hostport`, one rule per
//! mapping commented with the container ID.

use ipnetwork::IpNetwork;

use super::Backend;
use super::driver::{NatDriver, PortHints};
use super::error::NatError;
use super::iptables::Iptables;
use super::lock::lock;
use super::model::{PortMapConfig, PortMapping, Proto, RuleRef, per_family};
use super::nftables::Nftables;
use super::sets::NftablesSets;
use crate::Family;
use crate::nftnl::conntrack::{DstFilter, delete_matching};
use crate::nftnl::{self, Monitor};

/// Installs the mappings of `config` towards `container_ips` (the first address of
/// each family is used). Idempotent: a repeated call replaces the container's rules.
/// Does nothing, and runs nothing, when there are no mappings.
pub fn forward_ports(
    backend: Backend,
    config: &PortMapConfig,
    container_ips: &[IpNetwork],
) -> Result<(), NatError> {
    forward_ports_tracked(backend, config, container_ips, None).map(drop)
}

/// [`forward_ports`] that also returns the handles of the rules a DEL will have to
/// remove (`None` when they could not all be learned), for
/// [`unforward_ports_tracked`]. `prior` is the record of an earlier ADD of the same
/// container (`Some(&[])`: there was none), which spares searching for its old rules.
pub fn forward_ports_tracked(
    backend: Backend,
    config: &PortMapConfig,
    container_ips: &[IpNetwork],
    prior: Option<&[RuleRef]>,
) -> Result<Option<Vec<RuleRef>>, NatError> {
    let targets = per_family(container_ips);
    if config.mappings.is_empty() || targets.is_empty() {
        return Ok(Some(Vec::new()));
    }
    let _lock = lock()?;
    if backend == Backend::NftablesSets {
        // Set elements are found again by their comment: nothing to track.
        return forward_locked(backend, config, &targets, prior).map(|()| Some(Vec::new()));
    }
    // Opened before any rule is written, so that no announcement is missed.
    let monitor = Monitor::open().ok();
    let result = forward_locked(backend, config, &targets, prior);
    let added = monitor.and_then(|m| {
        let added = m.added_rules().ok();
        nftnl::close_at_exit(m);
        added
    });
    result?;
    Ok(added.and_then(|added| match backend {
        Backend::Iptables => Iptables.select_tracked(&added, config, &targets),
        _ => Nftables.select_tracked(&added, config, &targets),
    }))
}

fn forward_locked(
    backend: Backend,
    config: &PortMapConfig,
    targets: &[IpNetwork],
    prior: Option<&[RuleRef]>,
) -> Result<(), NatError> {
    match backend {
        Backend::Iptables => Iptables.forward_ports(config, targets, prior),
        Backend::NftablesSets => NftablesSets.forward_ports(config, targets, prior),
        Backend::Nftables => Nftables.forward_ports(config, targets, prior),
    }
}

/// CHECK: every rule [`forward_ports`] would install is present.
pub fn check_ports(
    backend: Backend,
    config: &PortMapConfig,
    container_ips: &[IpNetwork],
) -> Result<(), NatError> {
    let targets = per_family(container_ips);
    if config.mappings.is_empty() {
        return Ok(());
    }
    match backend {
        Backend::Iptables => Iptables.check_ports(config, &targets),
        Backend::Nftables => Nftables.check_ports(config, &targets),
        Backend::NftablesSets => NftablesSets.check_ports(config, &targets),
    }
}

/// Removes every mapping rule of (network, container) in both families, without
/// needing the mappings or addresses. Idempotent; absent chains and tables are fine.
pub fn unforward_ports(
    backend: Backend,
    network: &str,
    container_id: &str,
) -> Result<(), NatError> {
    unforward_ports_tracked(backend, network, container_id, None)
}

/// [`unforward_ports`] using the handles [`forward_ports_tracked`] returned (`None`
/// when there is no such record), so that no shared chain has to be searched.
pub fn unforward_ports_tracked(
    backend: Backend,
    network: &str,
    container_id: &str,
    known: Option<&[RuleRef]>,
) -> Result<(), NatError> {
    unforward_ports_installed(backend, network, container_id, known, None)
}

/// [`unforward_ports_tracked`] that also knows what the last ADD installed (its
/// recorded mappings and the container's addresses from prevResult), so that the
/// nftables-sets layout can look its entries up one by one instead of listing every
/// container's.
pub fn unforward_ports_installed(
    backend: Backend,
    network: &str,
    container_id: &str,
    known: Option<&[RuleRef]>,
    installed: Option<(&[PortMapping], &[IpNetwork])>,
) -> Result<(), NatError> {
    let _lock = lock()?;
    let installed = installed.map(|(mappings, ips)| (mappings, per_family(ips)));
    let installed = installed.as_ref().map(|(m, t)| (*m, t.as_slice()));
    let configured = unforward_locked(backend, network, container_id, known, installed);
    // A container added under another layout (the config changed since) is found too.
    let sets_layout = if backend != Backend::NftablesSets && NftablesSets.may_hold_ports() {
        NftablesSets.unforward_ports(network, container_id, &PortHints::default())
    } else {
        Ok(())
    };
    NatError::collect(
        configured
            .err()
            .into_iter()
            .chain(sets_layout.err())
            .collect(),
    )
}

fn unforward_locked(
    backend: Backend,
    network: &str,
    container_id: &str,
    known: Option<&[RuleRef]>,
    installed: Option<(&[PortMapping], &[IpNetwork])>,
) -> Result<(), NatError> {
    match backend {
        Backend::NftablesSets => {
            NftablesSets.unforward_ports(network, container_id, &PortHints { known, installed })
        }
        Backend::Iptables => {
            Iptables.unforward_ports(network, container_id, &PortHints { known, installed })
        }
        Backend::Nftables => {
            Nftables.unforward_ports(network, container_id, &PortHints { known, installed })
        }
    }
}

/// Deletes the UDP entries towards the host ports of `mappings` that apply to `family`
/// (a mapping with a specific host IP only flushes that destination). Returns how many
/// entries were deleted.
pub fn flush_udp_host_ports(mappings: &[PortMapping], family: Family) -> Result<usize, NatError> {
    let filters: Vec<DstFilter> = mappings
        .iter()
        .filter(|m| m.protocol == Proto::Udp && m.applies_to(family))
        .map(|m| DstFilter {
            family,
            protocol: Proto::Udp,
            port: m.host_port,
            address: m.dest_ip(),
        })
        .collect();
    delete_matching(family, &filters)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nat::model::Proto;

    #[test]
    fn udp_flush_only_covers_udp_mappings_of_the_family() {
        let m = |proto, ip: Option<&str>| PortMapping {
            host_port: 53,
            container_port: 53,
            protocol: proto,
            host_ip: ip.map(|s| s.parse().unwrap()),
        };
        // No UDP mapping for IPv6: returns before opening any socket.
        let mappings = [m(Proto::Tcp, None), m(Proto::Udp, Some("10.0.0.1"))];
        assert_eq!(flush_udp_host_ports(&mappings, Family::V6).unwrap(), 0);
    }
}
