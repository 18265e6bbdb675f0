//! ipMasq (bridge's `ipMasq`): masquerade traffic from a container's addresses leaving
//! their subnet.

use std::collections::HashSet;

use ipnetwork::IpNetwork;

use super::error::NatError;
use super::lock::lock;
use super::model::Attachment;
use super::{Backend, iptables, masq_direct, masq_nftnl, names, nftables, sets};
use crate::Family;
use crate::nftnl::{self, Nftnl};

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
        Backend::Iptables => {
            // Netlink only spares work: without it, everything takes the general path.
            let mut nl = Nftnl::open().ok();
            for family in [Family::V4, Family::V6] {
                let nets: Vec<IpNetwork> = ips
                    .iter()
                    .filter(|n| Family::of(n.ip()) == family)
                    .copied()
                    .collect();
                if nets.is_empty() {
                    continue;
                }
                let new_chain = nl.as_mut().and_then(|nl| {
                    masq_direct::iptables_setup_new(nl, family, network, container_id, &nets)
                        .ok()
                        .flatten()
                });
                if let Some(script) = new_chain {
                    // Straight into nf_tables when the nat table is in place (every ADD
                    // but a node's first); iptables-restore makes the same rules otherwise.
                    if masq_nftnl::add_new(family, network, container_id, &nets).is_ok() {
                        continue;
                    }
                    match iptables::restore(family, &script) {
                        Ok(()) => continue,
                        // The chain appeared since we looked (`-N` failed): decide from
                        // the saved table instead.
                        Err(NatError::ToolFailed { .. }) => {}
                        Err(e) => {
                            return Err(e.context(|| {
                                format!("set up ipMasq ({family}) for {container_id}")
                            }));
                        }
                    }
                }
                iptables::transact(family, |saved| {
                    iptables::masq::render_setup(saved, network, container_id, &nets)
                })
                .map_err(|e| {
                    e.context(|| format!("set up ipMasq ({family}) for {container_id}"))
                })?;
            }
            Ok(())
        }
        Backend::Nftables => {
            if !Backend::Nftables.available() {
                return Err(NatError::ToolMissing("nft"));
            }
            nftables::masq::setup(network, ifname, container_id, ips)
                .map_err(|e| e.context(|| format!("set up ipMasq (nftables) for {container_id}")))
        }
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
    let mut nl = Nftnl::open().ok();
    for family in [Family::V4, Family::V6] {
        if !family.enabled() || !iptables::available(family) {
            continue;
        }
        if let Some(nl) = nl.as_mut()
            && let Ok(true) = masq_direct::iptables_teardown(nl, family, network, container_id)
        {
            continue;
        }
        if let Err(e) = iptables::transact(family, |saved| {
            iptables::masq::render_teardown(saved, network, container_id)
        }) {
            errors.push(e.context(|| format!("tear down ipMasq ({family}) for {container_id}")));
        }
    }
    // Closing it now would wait for the release of what it deleted, and block the
    // caller's interface removal meanwhile.
    if let Some(nl) = nl {
        nftnl::close_at_exit(nl);
    }
    if nft_masq_table_may_exist()
        && let Err(e) = nftables::masq::teardown(network, ifname, container_id)
    {
        errors.push(e.context(|| format!("tear down ipMasq (nftables) for {container_id}")));
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
    let valid_ids: HashSet<&str> = valid.iter().map(|a| a.container_id).collect();
    for family in [Family::V4, Family::V6] {
        if !family.enabled() || !iptables::available(family) {
            continue;
        }
        if let Err(e) = iptables::transact(family, |saved| {
            iptables::masq::render_gc(saved, network, &valid_ids)
        }) {
            errors.push(e.context(|| format!("GC ipMasq ({family}) of network {network}")));
        }
    }
    if nft_masq_table_may_exist()
        && let Err(e) = nftables::masq::gc(network, valid)
    {
        errors.push(e.context(|| format!("GC ipMasq (nftables) of network {network}")));
    }
    if sets::table_may_exist(names::SETS_MASQ_TABLE)
        && let Err(e) = sets::masq_gc(network, valid)
    {
        errors.push(e.context(|| format!("GC ipMasq (nftables-sets) of network {network}")));
    }
    NatError::collect(errors)
}

/// Whether the nftables ipMasq table needs looking into: `nft` is installed and the
/// kernel does not say the table is absent (a netlink error means "maybe").
fn nft_masq_table_may_exist() -> bool {
    Backend::Nftables.available()
        && masq_nftnl::inet_table_exists(names::NFT_MASQ_TABLE).unwrap_or(true)
}
