//! ipMasq (bridge's `ipMasq`): masquerade traffic from a container's addresses leaving
//! their subnet.

use ipnetwork::IpNetwork;

use super::driver::NatDriver;
use super::error::NatError;
use super::iptables::Iptables;
use super::lock::lock;
use super::model::Attachment;
use super::nftables::Nftables;
use super::{Backend, names, sets};

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
        Backend::NftablesSets => {
            if !Backend::NftablesSets.available() {
                return Err(NatError::ToolMissing("nft"));
            }
            sets::masq_setup(network, ifname, container_id, ips).map_err(|e| {
                e.context(|| format!("set up ipMasq (nftables-sets) for {container_id}"))
            })
        }
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
    if sets::table_may_exist(names::SETS_MASQ_TABLE)
        && let Err(e) = sets::masq_teardown(network, ifname, container_id, addresses)
    {
        errors.push(e.context(|| format!("tear down ipMasq (nftables-sets) for {container_id}")));
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
    if sets::table_may_exist(names::SETS_MASQ_TABLE)
        && let Err(e) = sets::masq_gc(network, valid)
    {
        errors.push(e.context(|| format!("GC ipMasq (nftables-sets) of network {network}")));
    }
    NatError::collect(errors)
}
