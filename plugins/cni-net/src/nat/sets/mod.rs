//! `Backend::NftablesSets` (opt-in, ours only): ipMasq and host ports as set elements.
//!
//! # Why
//! Both reference layouts cost the kernel more per call as a node fills up. iptables
//! gives every pod its own chains, and every commit that adds a jump re-validates the
//! table's whole jump graph (`nft_table_validate`); nftables adds rules that `nft` must
//! first load into its cache. Here the rules are fixed, written once per node, and
//! look the pod up in sets and maps. A pod is a handful of set elements, added or
//! removed in one netlink batch that starts no process. Data maps hold no verdicts, so
//! changing them never re-validates anything: ADD and DEL cost the same with a
//! thousand pods as with none.
//!
//! # Layout, per IP family (tables `ip` and `ip6`)
//! - `cni_rs_masquerade` (bridge's `ipMasq`): set `pods` of container addresses and
//!   interval set `local` of `address . subnet`; postrouting masquerades traffic from
//!   `@pods` to anything outside the pod's own subnet and not multicast.
//! - `cni_rs_hostport` (portmap): maps `dnat_any` (`proto . port`) and `dnat_ip`
//!   (`host address . proto . port`) to `pod address . pod port`, consulted for locally
//!   addressed packets in prerouting and output; set `masq` of `source . pod address`
//!   pairs (hairpin, and 127.0.0.1 for IPv4) masqueraded after DNAT when `snat` is on.
//!
//! Each element's comment names its owner: `<network> <container ID>` (portmap) and
//! `<network> <container ID> <ifname>` (ipMasq), so DEL and GC need neither the
//! addresses nor the mappings. CNI network names and container IDs contain no spaces.
//!
//! The tables are ours alone: the reference plugins never read or write them, and the
//! reference layouts are left untouched.
//!
//! [`skeleton`] writes the fixed tables; [`elements`] encodes, installs and removes a
//! pod's entries.

mod elements;
mod skeleton;

use std::collections::HashSet;

use ipnetwork::IpNetwork;

use crate::Family;
use crate::nat::driver::{NatDriver, PortHints};
use crate::nat::error::NatError;
use crate::nat::guard;
use crate::nat::model::{Attachment, PortMapConfig, PortMapping, RuleRef};
use crate::nat::names::{
    SETS_HOSTPORT_TABLE as HOSTPORT_TABLE, SETS_MASQ_SET as MASQ_SET, SETS_MASQ_TABLE as MASQ_TABLE,
};
use crate::nftnl::Nftnl;
use crate::tools::Tool;
use elements::{
    HOSTPORT_SETS, MASQ_SETS, check_comment, describe, expire, hostport_comment, hostport_elements,
    install, kernel, masq_comment, masq_elements, owned_among, sweep, with_nl,
};
use skeleton::{ensure_table, hostport_skeleton, masq_skeleton};

/// The nftables-sets driver; stateless, one `static` in `backend.rs`.
pub(crate) struct NftablesSets;

impl NatDriver for NftablesSets {
    fn name(&self) -> &'static str {
        "nftables-sets"
    }

    fn setup_masq(
        &self,
        network: &str,
        ifname: &str,
        container_id: &str,
        ips: &[IpNetwork],
    ) -> Result<(), NatError> {
        // The sets layout needs `nft` once per node, to create its tables.
        if !Tool::Nft.available() {
            return Err(NatError::ToolMissing("nft"));
        }
        masq_setup(network, ifname, container_id, ips)
            .map_err(|e| e.context(|| format!("set up ipMasq (nftables-sets) for {container_id}")))
    }

    fn may_hold_masq(&self) -> bool {
        table_may_exist(MASQ_TABLE)
    }

    fn teardown_masq(
        &self,
        network: &str,
        ifname: &str,
        container_id: &str,
        addresses: Option<&[IpNetwork]>,
    ) -> Result<(), NatError> {
        masq_teardown(network, ifname, container_id, addresses).map_err(|e| {
            e.context(|| format!("tear down ipMasq (nftables-sets) for {container_id}"))
        })
    }

    fn gc_masq(&self, network: &str, valid: &[Attachment<'_>]) -> Result<(), NatError> {
        masq_gc(network, valid)
            .map_err(|e| e.context(|| format!("GC ipMasq (nftables-sets) of network {network}")))
    }

    /// Set elements are found again by their comment: nothing to track.
    fn forward_ports(
        &self,
        config: &PortMapConfig,
        targets: &[IpNetwork],
        prior: Option<&[RuleRef]>,
    ) -> Result<(), NatError> {
        // Without a record of an earlier ADD there is nothing of ours to sweep first.
        let readd = prior.is_none_or(|p| !p.is_empty());
        // Before the DNAT elements, so route_localnet (set after) is never unguarded.
        guard::install(config)
            .and_then(|()| hostport_forward(config, targets, readd))
            .map_err(|e| {
                e.context(|| {
                    format!(
                        "set up port mappings (nftables-sets) for {}",
                        config.container_id
                    )
                })
            })
    }

    fn check_ports(&self, config: &PortMapConfig, targets: &[IpNetwork]) -> Result<(), NatError> {
        hostport_check(config, targets)
    }

    fn may_hold_ports(&self) -> bool {
        table_may_exist(HOSTPORT_TABLE)
    }

    fn unforward_ports(
        &self,
        network: &str,
        container_id: &str,
        hints: &PortHints<'_>,
    ) -> Result<(), NatError> {
        let elements = hostport_unforward(network, container_id, hints.installed).map_err(|e| {
            e.context(|| format!("tear down port mappings (nftables-sets) for {container_id}"))
        });
        let guard = guard::remove(network, container_id, hints.localnet);
        NatError::collect(elements.err().into_iter().chain(guard.err()).collect())
    }
}

/// ipMasq ADD for the container's `ips`. The caller holds the NAT lock.
fn masq_setup(
    network: &str,
    ifname: &str,
    container_id: &str,
    ips: &[IpNetwork],
) -> Result<(), NatError> {
    let comment = masq_comment(network, container_id, ifname);
    check_comment(&comment)?;
    with_nl(|nl| masq_setup_with(nl, &comment, ips))
}

fn masq_setup_with(nl: &mut Nftnl, comment: &str, ips: &[IpNetwork]) -> Result<(), NatError> {
    for family in [Family::V4, Family::V6] {
        if !ips.iter().any(|n| Family::of(n.ip()) == family) {
            continue;
        }
        ensure_table(nl, family, MASQ_TABLE, &masq_skeleton(family))?;
        let wanted = masq_elements(family, ips, comment);
        // No sweep: host-local refuses a second ADD of an attachment, and DEL removes
        // every element of the attachment, whatever its address.
        install(
            nl, family, MASQ_TABLE, &MASQ_SETS, &MASQ_SETS, comment, &wanted, false,
        )?;
    }
    Ok(())
}

/// ipMasq DEL: removes the attachment's elements, wherever the tables exist.
///
/// With the attachment's `addresses` its entries are looked up one by one (the cost
/// does not grow with the pods); without, every entry is listed and ours picked by
/// comment. Only the addresses of the last ADD are looked up: an attachment is added
/// once (host-local refuses a second ADD), and GC lists everything anyway.
fn masq_teardown(
    network: &str,
    ifname: &str,
    container_id: &str,
    addresses: Option<&[IpNetwork]>,
) -> Result<(), NatError> {
    let comment = masq_comment(network, container_id, ifname);
    let Some(addresses) = addresses.filter(|a| !a.is_empty()) else {
        return sweep(MASQ_TABLE, &MASQ_SETS, |c| c == comment);
    };
    // A family without addresses has no probes; a missing table answers every look-up
    // with "no such element".
    with_nl(|nl| {
        for family in [Family::V4, Family::V6] {
            let probes = masq_elements(family, addresses, &comment);
            let doomed = owned_among(nl, family, MASQ_TABLE, probes, &comment)?;
            expire(nl, family, MASQ_TABLE, doomed)?;
        }
        Ok(())
    })
}

/// ipMasq GC: removes this network's elements of attachments not in `valid`.
fn masq_gc(network: &str, valid: &[Attachment<'_>]) -> Result<(), NatError> {
    let valid: HashSet<String> = valid
        .iter()
        .map(|a| masq_comment(network, a.container_id, a.ifname))
        .collect();
    let prefix = format!("{network} ");
    sweep(MASQ_TABLE, &MASQ_SETS, |c| {
        c.starts_with(&prefix) && !valid.contains(c)
    })
}

/// Whether any family has the table: lets the other layouts' DEL skip us cheaply.
fn table_may_exist(table: &str) -> bool {
    with_nl(|nl| {
        Ok([Family::V4, Family::V6]
            .into_iter()
            .any(|f| f.enabled() && nl.table_exists(f, table).unwrap_or(true)))
    })
    .unwrap_or(true)
}

/// portmap ADD towards `targets` (one address per family). The caller holds the lock.
/// `readd`: an earlier ADD of this container may have left elements this one does not
/// want (portmap's record says so), to be swept first.
fn hostport_forward(
    config: &PortMapConfig,
    targets: &[IpNetwork],
    readd: bool,
) -> Result<(), NatError> {
    let comment = hostport_comment(&config.network, &config.container_id);
    check_comment(&comment)?;
    with_nl(|nl| {
        for &target in targets {
            let family = Family::of(target.ip());
            ensure_table(nl, family, HOSTPORT_TABLE, &hostport_skeleton(family))?;
            let wanted = hostport_elements(config, target, &comment);
            install(
                nl,
                family,
                HOSTPORT_TABLE,
                &HOSTPORT_SETS,
                &[MASQ_SET],
                &comment,
                &wanted,
                readd,
            )?;
        }
        Ok(())
    })
}

/// portmap DEL (and GC, per container): removes the container's elements.
///
/// With `installed` (the last ADD's mappings and addresses), its entries are looked up
/// one by one, which costs the same with a thousand pods as with none; otherwise every
/// entry is listed and ours are picked by their comment.
fn hostport_unforward(
    network: &str,
    container_id: &str,
    installed: Option<(&[PortMapping], &[IpNetwork])>,
) -> Result<(), NatError> {
    let comment = hostport_comment(network, container_id);
    let Some((mappings, targets)) = installed.filter(|(m, t)| !m.is_empty() && !t.is_empty())
    else {
        return sweep(HOSTPORT_TABLE, &HOSTPORT_SETS, |c| c == comment);
    };
    // snat on: its entries are a superset of snat off's, and absent ones are skipped.
    let config = PortMapConfig::new(network, container_id, mappings.to_vec());
    with_nl(|nl| {
        // A missing table answers every look-up with "no such element".
        for &target in targets {
            let family = Family::of(target.ip());
            let probes = hostport_elements(&config, target, &comment);
            let doomed = owned_among(nl, family, HOSTPORT_TABLE, probes, &comment)?;
            expire(nl, family, HOSTPORT_TABLE, doomed)?;
        }
        Ok(())
    })
}

/// portmap CHECK: every element ADD would add is there, owned by this container.
fn hostport_check(config: &PortMapConfig, targets: &[IpNetwork]) -> Result<(), NatError> {
    let comment = hostport_comment(&config.network, &config.container_id);
    with_nl(|nl| {
        for &target in targets {
            let family = Family::of(target.ip());
            for (set, wanted) in hostport_elements(config, target, &comment) {
                // An expiring entry is a DEL's, not this container's mapping.
                let present = nl
                    .element(family, HOSTPORT_TABLE, set, &wanted)
                    .map_err(kernel("look up", HOSTPORT_TABLE))?
                    .is_some_and(|e| {
                        e.data == wanted.data
                            && e.comment == wanted.comment
                            && e.timeout_ms.is_none()
                    });
                if !present {
                    return Err(NatError::Check(format!(
                        "missing host port entry in {} {HOSTPORT_TABLE} {set} for {}",
                        family.nft_word(),
                        describe(config, target)
                    )));
                }
            }
        }
        Ok(())
    })
}
