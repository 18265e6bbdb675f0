//! ipMasq's common cases on iptables-nft without reading the whole nat table.
//!
//! `iptables-save -t nat` prints every container's rules, so an ADD or DEL that starts
//! with it costs time in proportion to the pods on the node, plus a process. The common
//! cases need only the one container's chain, which the kernel reports through
//! [`Nftnl`] in well under a millisecond:
//! - ADD of a container whose chain does not exist yet: nothing of it can be in the
//!   table (nf_tables refuses a jump to a missing chain), so one `iptables-restore` that
//!   creates the chain with `-N` and appends its rules is the whole job;
//! - DEL: the jumps to the container's chain (found by verdict in `POSTROUTING`), the
//!   chain's rules and the chain itself go in one netlink batch, no process at all; a
//!   family whose chain is absent costs one lookup.
//!
//! Anything else — iptables-legacy, an existing chain on ADD (a re-ADD), a chain still
//! referenced from elsewhere, any netlink error — answers "not handled" and the caller
//! takes the general path (save, decide, restore).

use std::io;

use ipnetwork::IpNetwork;

use super::iptables::{self, restore::Script};
use super::names::{self, IPT_NAT_TABLE, POSTROUTING};
use crate::Family;
use crate::nftnl::{Nftnl, Op};
use crate::tools::iptables_is_nft;

/// The restore script for a container that has no masquerading chain in `family` yet,
/// or `None` when the general path must decide (chain present, iptables-legacy).
pub(crate) fn iptables_setup_new(
    nl: &mut Nftnl,
    family: Family,
    network: &str,
    container_id: &str,
    nets: &[IpNetwork],
) -> io::Result<Option<Script>> {
    if !iptables_is_nft(family) {
        return Ok(None);
    }
    let chain = names::masq_chain(network, container_id);
    if nl.chain_exists(family, IPT_NAT_TABLE, &chain)? {
        return Ok(None);
    }
    Ok(iptables::masq::render_new(network, container_id, nets))
}

/// Removes the container's masquerading in `family`. `Ok(true)`: done (possibly there
/// was nothing); `Ok(false)`: the general path must do it.
pub(crate) fn iptables_teardown(
    nl: &mut Nftnl,
    family: Family,
    network: &str,
    container_id: &str,
) -> io::Result<bool> {
    if !iptables_is_nft(family) {
        return Ok(false);
    }
    let chain = names::masq_chain(network, container_id);
    if !nl.chain_exists(family, IPT_NAT_TABLE, &chain)? {
        return Ok(true);
    }
    let mut ops: Vec<Op> = nl
        .rules(family, IPT_NAT_TABLE, POSTROUTING)?
        .into_iter()
        .filter(|r| r.jumps.contains(&chain))
        .map(|r| Op::DeleteRule {
            chain: POSTROUTING.to_string(),
            handle: r.handle,
        })
        .collect();
    ops.push(Op::FlushChain {
        chain: chain.clone(),
    });
    // Fails (voiding the whole batch) if a rule outside POSTROUTING still jumps here;
    // the general path then finds it in the saved table.
    ops.push(Op::DeleteChain { chain });
    nl.commit(family, IPT_NAT_TABLE, &ops)?;
    Ok(true)
}
