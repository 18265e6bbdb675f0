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

use std::path::Path;

use ipnetwork::IpNetwork;

use super::Backend;
use super::driver::{NatDriver, PortHints};
use super::error::NatError;
use super::guard;
use super::lock::{LOCK_PATH, lock_at};
use super::model::{PortMapConfig, PortMapping, Proto, RuleRef, per_family};
use crate::Family;
use crate::nftnl::conntrack::{DstFilter, delete_matching};
use crate::nftnl::{self, Monitor};

/// Installs the mappings of `config` towards `container_ips` (the first address of
/// each family is used). Idempotent: a repeated call replaces the container's rules.
/// Does nothing, and runs nothing, when there are no mappings.
///
/// Returns the handles of the rules a DEL will have to remove (`None` when they could
/// not all be learned), for [`PortHints::known`]. `prior` is the record of an earlier
/// ADD of the same container (`Some(&[])`: there was none), which spares searching for
/// its old rules.
pub fn forward_ports(
    backend: Backend,
    config: &PortMapConfig,
    container_ips: &[IpNetwork],
    prior: Option<&[RuleRef]>,
) -> Result<Option<Vec<RuleRef>>, NatError> {
    forward_with(
        backend.driver(),
        Path::new(LOCK_PATH),
        config,
        container_ips,
        prior,
    )
}

fn forward_with(
    driver: &dyn NatDriver,
    lock: &Path,
    config: &PortMapConfig,
    container_ips: &[IpNetwork],
    prior: Option<&[RuleRef]>,
) -> Result<Option<Vec<RuleRef>>, NatError> {
    let targets = per_family(container_ips);
    if config.mappings.is_empty() || targets.is_empty() {
        return Ok(Some(Vec::new()));
    }
    let _lock = lock_at(lock)?;
    if !driver.tracks_rules() {
        return driver
            .forward_ports(config, &targets, prior)
            .map(|()| Some(Vec::new()));
    }
    // Opened before any rule is written, so that no announcement is missed.
    let monitor = Monitor::open().ok();
    let result = driver.forward_ports(config, &targets, prior);
    let added = monitor.and_then(|m| {
        let added = m.added_rules().ok();
        nftnl::close_at_exit(m);
        added
    });
    result?;
    Ok(added.and_then(|added| driver.select_tracked(&added, config, &targets)))
}

/// CHECK: every rule [`forward_ports`] would install is present. Reads only: no lock.
pub fn check_ports(
    backend: Backend,
    config: &PortMapConfig,
    container_ips: &[IpNetwork],
) -> Result<(), NatError> {
    check_with(backend.driver(), config, container_ips)
}

fn check_with(
    driver: &dyn NatDriver,
    config: &PortMapConfig,
    container_ips: &[IpNetwork],
) -> Result<(), NatError> {
    if config.mappings.is_empty() {
        return Ok(());
    }
    driver.check_ports(config, &per_family(container_ips))
}

/// Removes every mapping rule of (network, container) in both families. Needs neither
/// the mappings nor the addresses; `hints` (what the last ADD recorded, and
/// prevResult's addresses) only spare searching. Idempotent; absent chains and tables
/// are fine.
///
/// A container added under another layout (the config changed since) is found too:
/// the nftables-sets layout is swept whenever another one is configured.
pub fn unforward_ports(
    backend: Backend,
    network: &str,
    container_id: &str,
    hints: &PortHints<'_>,
) -> Result<(), NatError> {
    let sets = Backend::NftablesSets.driver();
    let others: &[&dyn NatDriver] = if backend == Backend::NftablesSets {
        &[]
    } else {
        &[sets]
    };
    unforward_with(
        backend.driver(),
        others,
        Path::new(LOCK_PATH),
        network,
        container_id,
        hints,
    )
}

fn unforward_with(
    configured: &dyn NatDriver,
    others: &[&dyn NatDriver],
    lock: &Path,
    network: &str,
    container_id: &str,
    hints: &PortHints<'_>,
) -> Result<(), NatError> {
    let _lock = lock_at(lock)?;
    let targets = hints.installed.map(|(_, ips)| per_family(ips));
    let hints = PortHints {
        known: hints.known,
        localnet: hints.localnet,
        installed: hints
            .installed
            .zip(targets.as_deref())
            .map(|((m, _), t)| (m, t)),
    };
    let mut errors: Vec<NatError> = configured
        .unforward_ports(network, container_id, &hints)
        .err()
        .into_iter()
        .collect();
    for other in others.iter().filter(|d| d.may_hold_ports()) {
        if let Err(e) = other.unforward_ports(network, container_id, &PortHints::default()) {
            errors.push(e);
        }
    }
    NatError::collect(errors)
}

/// GC of the localnet guards (one claim per container with localhost host ports, in a
/// table every layout shares): releases those of `network`'s containers not in
/// `valid`. The per-container DELs of GC release the rest with their rules.
pub fn gc_port_guards(network: &str, valid: &[&str]) -> Result<(), NatError> {
    let _lock = lock_at(Path::new(LOCK_PATH))?;
    let valid: std::collections::HashSet<&str> = valid.iter().copied().collect();
    guard::gc(network, &valid).map_err(|e| e.context(|| format!("GC localnet guards of {network}")))
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
    use super::super::driver::testing::{Call, RecordingDriver, lock_file};
    use super::*;

    fn config(id: &str) -> PortMapConfig {
        let tcp = PortMapping {
            host_port: 8080,
            container_port: 80,
            protocol: Proto::Tcp,
            host_ip: None,
        };
        PortMapConfig::new("net", id, vec![tcp])
    }

    fn ips() -> Vec<IpNetwork> {
        ["10.0.0.2/24", "10.0.0.3/24", "fd00::2/64"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect()
    }

    #[test]
    fn forward_maps_one_address_per_family_under_the_lock() {
        let (lock, _dir) = lock_file("forward");
        let d = RecordingDriver::new("a", &lock);
        let tracked = forward_with(&d, &lock, &config("c1"), &ips(), Some(&[])).unwrap();
        assert_eq!(
            tracked,
            Some(Vec::new()),
            "nothing to track: an empty record"
        );
        assert_eq!(
            d.calls(),
            [Call::locked("forward_ports c1 to 2 targets, prior 0")]
        );
        // Without mappings or addresses nothing runs, not even the lock.
        let none = PortMapConfig::new("net", "c2", Vec::new());
        forward_with(&d, &lock, &none, &ips(), None).unwrap();
        forward_with(&d, &lock, &config("c3"), &[], None).unwrap();
        assert_eq!(d.calls().len(), 1);
    }

    #[test]
    fn check_takes_no_lock() {
        let (lock, _dir) = lock_file("check");
        let d = RecordingDriver::new("a", &lock);
        check_with(&d, &config("c1"), &ips()).unwrap();
        assert_eq!(d.calls(), [Call::unlocked("check_ports c1")]);
    }

    #[test]
    fn unforward_uses_the_hints_then_sweeps_the_other_layouts() {
        let (lock, _dir) = lock_file("unforward");
        let configured = RecordingDriver::new("a", &lock).failing();
        let holding = RecordingDriver::new("b", &lock);
        let empty = RecordingDriver::new("c", &lock).holding_nothing();
        let mappings = config("c1").mappings;
        let addresses = ips();
        let hints = PortHints {
            known: None,
            installed: Some((&mappings, &addresses)),
            localnet: None,
        };
        let err = unforward_with(&configured, &[&holding, &empty], &lock, "net", "c1", &hints)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "a: unforward_ports c1, 0 known, 2 addresses failed"
        );
        assert_eq!(
            configured.calls(),
            [Call::locked("unforward_ports c1, 0 known, 2 addresses")],
            "one address per family reaches the driver"
        );
        // The configured layout failed; the others are still swept, with no hints
        // (what the record says is about the configured layout).
        assert_eq!(
            holding.calls(),
            [Call::locked("unforward_ports c1, 0 known, 0 addresses")]
        );
        assert_eq!(empty.calls(), []);
    }

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
