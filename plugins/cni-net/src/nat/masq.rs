//! ipMasq (bridge's `ipMasq`): masquerade traffic from a container's addresses leaving
//! their subnet.

use ipnetwork::IpNetwork;

use super::Backend;
use super::driver::NatDriver;
use super::error::NatError;
use super::iptables::Iptables;
use super::lock::lock;
use super::model::Attachment;
use super::nftables::Nftables;
use super::sets::NftablesSets;

/// Installs masquerading for `ips` of the container. Idempotent: the container's rules
/// are replaced, and nothing is committed when they are already right.
///
/// The iptables layout ignores `ifname` (as the reference does); nftables comments carry
/// it.
pub fn setup_masq(
    backend: Backend,
    network: &str,
    ifname: &str,
    container_id: &str,
    ips: &[IpNetwork],
) -> Result<(), NatError> {
    if ips.is_empty() {
        return Ok(());
    }
    let _lock = lock()?;
    match backend {
        Backend::Iptables => Iptables.setup_masq(network, ifname, container_id, ips),
        Backend::Nftables => Nftables.setup_masq(network, ifname, container_id, ips),
        Backend::NftablesSets => NftablesSets.setup_masq(network, ifname, container_id, ips),
    }
}

/// Removes the container's masquerading from **every** layout (it may have been set up
/// by another version or configuration), without needing its addresses: safe on DEL
/// with the netns gone and no prevResult. Absent chains/tables are fine; a backend whose
/// tools are not installed is skipped. Errors are collected, not short-circuited.
///
/// `addresses` (prevResult's, when the runtime sent it) only speed up the
/// nftables-sets layout: its entries are then looked up one by one instead of listed.
pub fn teardown_masq(
    network: &str,
    ifname: &str,
    container_id: &str,
    addresses: Option<&[IpNetwork]>,
) -> Result<(), NatError> {
    let _lock = lock()?;
    let mut errors = Vec::new();
    if Iptables.may_hold_masq()
        && let Err(e) = Iptables.teardown_masq(network, ifname, container_id, addresses)
    {
        errors.push(e);
    }
    if Nftables.may_hold_masq()
        && let Err(e) = Nftables.teardown_masq(network, ifname, container_id, addresses)
    {
        errors.push(e);
    }
    if NftablesSets.may_hold_masq()
        && let Err(e) = NftablesSets.teardown_masq(network, ifname, container_id, addresses)
    {
        errors.push(e);
    }
    NatError::collect(errors)
}

/// GC: removes this network's masquerading for every attachment not in `valid`, in both
/// backends. iptables chains are per container (any ifname keeps them); nftables rules
/// are per attachment, as in the reference.
pub fn gc_masq(network: &str, valid: &[Attachment<'_>]) -> Result<(), NatError> {
    let _lock = lock()?;
    let mut errors = Vec::new();
    if Iptables.may_hold_masq()
        && let Err(e) = Iptables.gc_masq(network, valid)
    {
        errors.push(e);
    }
    if Nftables.may_hold_masq()
        && let Err(e) = Nftables.gc_masq(network, valid)
    {
        errors.push(e);
    }
    if NftablesSets.may_hold_masq()
        && let Err(e) = NftablesSets.gc_masq(network, valid)
    {
        errors.push(e);
    }
    NatError::collect(errors)
}
