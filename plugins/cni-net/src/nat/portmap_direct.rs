//! portmap's common cases without reading the whole ruleset.
//!
//! Reading the full nat table (`iptables-save`) or the whole `cni_hostport` table
//! (`nft -j list`) costs time in proportion to every other container on the node. The
//! common cases need far less:
//! - DEL: the container's rules are found in the kernel through [`nftnl`] (one chain's
//!   rules each) and deleted by handle in one netlink batch — no process at all;
//! - iptables ADD of a new container on a node whose skeleton is in place: one
//!   `iptables-restore` that creates the container chain (`-N`, so an existing one
//!   fails the commit) and appends its entries, after a netlink look at the few small
//!   shared chains;
//! - nftables ADD: the container's stale rules are listed through netlink.
//!
//! Anything unusual — iptables-legacy, a missing or partial skeleton, a re-ADD, a chain
//! still referenced elsewhere, old SNAT chains, any netlink error — answers "not
//! handled" and the caller takes the general path (save, decide, restore).

use std::io;

use ipnetwork::IpNetwork;

use super::Backend;
use super::iptables;
use super::model::{PortMapConfig, RuleRef};
use super::names::{
    self, HOSTPORT_DNAT_CHAIN, HOSTPORT_MASQ_CHAIN, HOSTPORT_SETMARK_CHAIN, IPT_NAT_TABLE,
    NFT_HOSTIP_HOSTPORTS_CHAIN, NFT_HOSTPORT_TABLE, NFT_HOSTPORTS_ALL_CHAIN, NFT_HOSTPORTS_CHAIN,
    NFT_MASQUERADING_CHAIN, NFT_OUTPUT_CHAIN, NFT_PREROUTING_CHAIN, OUTPUT, POSTROUTING,
    PREROUTING,
};
use super::nftables::NftRule;
use super::portmap_nftnl;
use crate::Family;
use crate::nftnl::{AddedRule, KernelRule, Nftnl, Op, expr_names};

/// The nftables chains holding per-container rules.
const NFT_CONTAINER_CHAINS: [&str; 3] = [
    NFT_HOSTPORTS_CHAIN,
    NFT_HOSTIP_HOSTPORTS_CHAIN,
    NFT_MASQUERADING_CHAIN,
];

/// DEL of one container's iptables rules in one family. `Ok(true)`: done (possibly
/// nothing was there); `Ok(false)`: needs the general path.
pub(crate) fn iptables_unforward(
    nl: &mut Nftnl,
    family: Family,
    network: &str,
    container_id: &str,
) -> io::Result<bool> {
    if has_old_snat_chain(nl, family, network, container_id)? {
        return Ok(false);
    }
    let chain = names::dnat_chain(network, container_id);
    let entries: Vec<u64> = nl
        .rules(family, IPT_NAT_TABLE, HOSTPORT_DNAT_CHAIN)?
        .into_iter()
        .filter(|r| r.jumps.contains(&chain))
        .map(|r| r.handle)
        .collect();
    remove_container(nl, family, chain, &entries)?;
    Ok(true)
}

/// Chains of portmap before 0.7 are rare enough to leave to the general path.
fn has_old_snat_chain(
    nl: &mut Nftnl,
    family: Family,
    network: &str,
    container_id: &str,
) -> io::Result<bool> {
    nl.chain_exists(
        family,
        IPT_NAT_TABLE,
        &names::old_snat_chain(network, container_id),
    )
}

/// One batch: the container's entry rules in CNI-HOSTPORT-DNAT (by handle), then its
/// chain, if it exists. Deleting the chain fails (and voids the batch) if anything we
/// did not know of still jumps to it.
fn remove_container(
    nl: &mut Nftnl,
    family: Family,
    chain: String,
    entry_handles: &[u64],
) -> io::Result<()> {
    let mut ops: Vec<Op> = entry_handles
        .iter()
        .map(|&handle| Op::DeleteRule {
            chain: HOSTPORT_DNAT_CHAIN.to_string(),
            handle,
        })
        .collect();
    if nl.chain_exists(family, IPT_NAT_TABLE, &chain)? {
        ops.push(Op::FlushChain {
            chain: chain.clone(),
        });
        ops.push(Op::DeleteChain { chain });
    }
    nl.commit(family, IPT_NAT_TABLE, &ops)
}

/// DEL of one container's iptables rules in one family, with the entry rules' handles
/// recorded at ADD: each is looked up by handle (no dump of the shared chain) and must
/// still be an entry of this container. `Ok(false)`: needs the dump or general path.
pub(crate) fn iptables_unforward_known(
    nl: &mut Nftnl,
    family: Family,
    network: &str,
    container_id: &str,
    known: &[RuleRef],
) -> io::Result<bool> {
    if has_old_snat_chain(nl, family, network, container_id)? {
        return Ok(false);
    }
    let chain = names::dnat_chain(network, container_id);
    let mut entries = Vec::new();
    for r in known.iter().filter(|r| r.family == family) {
        if r.table != IPT_NAT_TABLE || r.chain != HOSTPORT_DNAT_CHAIN {
            return Ok(false);
        }
        match nl.rule(family, IPT_NAT_TABLE, HOSTPORT_DNAT_CHAIN, r.handle)? {
            Some(rule) if rule.jumps.contains(&chain) => entries.push(r.handle),
            // Gone already: nothing to delete.
            None => {}
            // The handle now names someone else's rule: the record is stale.
            Some(_) => return Ok(false),
        }
    }
    remove_container(nl, family, chain, &entries)?;
    Ok(true)
}

/// The recorded rules of a container in `family` that are still its own, as stale
/// rules for a re-ADD or victims for a DEL; `None` when a handle now names a rule of
/// someone else (the record cannot be trusted).
pub(crate) fn nft_known_rules(
    nl: &mut Nftnl,
    family: Family,
    container_id: &str,
    known: &[RuleRef],
) -> io::Result<Option<Vec<NftRule>>> {
    let family_name = match family {
        Family::V4 => "ip",
        Family::V6 => "ip6",
    };
    let mut out = Vec::new();
    for r in known.iter().filter(|r| r.family == family) {
        if r.table != NFT_HOSTPORT_TABLE || !NFT_CONTAINER_CHAINS.contains(&r.chain.as_str()) {
            return Ok(None);
        }
        match nl.rule(family, NFT_HOSTPORT_TABLE, &r.chain, r.handle)? {
            Some(rule) if rule.comment.as_deref() == Some(container_id) => out.push(NftRule {
                family: family_name.to_string(),
                table: NFT_HOSTPORT_TABLE.to_string(),
                chain: r.chain.clone(),
                handle: r.handle,
                comment: rule.comment,
            }),
            None => {}
            Some(_) => return Ok(None),
        }
    }
    Ok(Some(out))
}

/// Among the rules the kernel announced during an ADD, those a later DEL must remove
/// by handle: iptables entries jumping to the container chain, nftables rules carrying
/// the container ID. `None` unless every expected rule was seen (a partial record
/// would make DEL leak).
pub(crate) fn select_tracked(
    added: &[AddedRule],
    backend: Backend,
    config: &PortMapConfig,
    targets: &[IpNetwork],
) -> Option<Vec<RuleRef>> {
    let chain = names::dnat_chain(&config.network, &config.container_id);
    let mine = |a: &&AddedRule| match backend {
        Backend::Iptables => {
            a.table == IPT_NAT_TABLE
                && a.chain == HOSTPORT_DNAT_CHAIN
                && a.rule.jumps.contains(&chain)
        }
        Backend::Nftables => {
            a.table == NFT_HOSTPORT_TABLE
                && NFT_CONTAINER_CHAINS.contains(&a.chain.as_str())
                && a.rule.comment.as_deref() == Some(config.container_id.as_str())
        }
        Backend::NftablesSets => false,
    };
    let picked: Vec<RuleRef> = added
        .iter()
        .filter(mine)
        .map(|a| RuleRef {
            family: a.family,
            table: a.table.clone(),
            chain: a.chain.clone(),
            handle: a.rule.handle,
        })
        .collect();
    let expected: usize = targets
        .iter()
        .map(|t| expected_rules(backend, config, Family::of(t.ip())))
        .sum();
    (picked.len() == expected).then_some(picked)
}

/// How many rules of a container [`select_tracked`] must find in one family.
fn expected_rules(backend: Backend, config: &PortMapConfig, family: Family) -> usize {
    match backend {
        Backend::Iptables => iptables::portmap::entry_count(config),
        Backend::Nftables => {
            let dnat = config
                .mappings
                .iter()
                .filter(|m| m.applies_to(family))
                .count();
            let masq = match (config.snat, family, config.masq_all) {
                (false, _, _) => 0,
                (true, Family::V4, false) => 2,
                (true, _, _) => 1,
            };
            dnat + masq
        }
        Backend::NftablesSets => 0,
    }
}

/// The container's rules in the `cni_hostport` table of `family`.
pub(crate) fn nft_container_rules(
    nl: &mut Nftnl,
    family: Family,
    container_id: &str,
) -> io::Result<Vec<NftRule>> {
    let family_name = match family {
        Family::V4 => "ip",
        Family::V6 => "ip6",
    };
    let mut out = Vec::new();
    for chain in NFT_CONTAINER_CHAINS {
        for rule in nl.rules(family, NFT_HOSTPORT_TABLE, chain)? {
            if rule.comment.as_deref() == Some(container_id) {
                out.push(NftRule {
                    family: family_name.to_string(),
                    table: NFT_HOSTPORT_TABLE.to_string(),
                    chain: chain.to_string(),
                    handle: rule.handle,
                    comment: rule.comment,
                });
            }
        }
    }
    Ok(out)
}

/// DEL of one container's nftables rules in one family.
pub(crate) fn nft_unforward(nl: &mut Nftnl, family: Family, container_id: &str) -> io::Result<()> {
    let ops: Vec<Op> = nft_container_rules(nl, family, container_id)?
        .into_iter()
        .map(|r| Op::DeleteRule {
            chain: r.chain,
            handle: r.handle,
        })
        .collect();
    nl.commit(family, NFT_HOSTPORT_TABLE, &ops)
}

/// Whether the `cni_hostport` skeleton of `family` is exactly what an ADD without
/// conditions would rebuild: the regular chains, `hostports_all` jumping to both,
/// `prerouting` and `output` each holding the one `fib daddr type local jump
/// hostports_all` rule, and `masquerading` when `snat`.
pub(crate) fn nft_skeleton_ready(nl: &mut Nftnl, family: Family, snat: bool) -> io::Result<bool> {
    let t = NFT_HOSTPORT_TABLE;
    let mut needed = vec![NFT_HOSTPORTS_CHAIN, NFT_HOSTIP_HOSTPORTS_CHAIN];
    if snat {
        needed.push(NFT_MASQUERADING_CHAIN);
    }
    for chain in needed {
        if !nl.chain_exists(family, t, chain)? {
            return Ok(false);
        }
    }
    let shape = |rules: &[KernelRule]| -> Vec<(Vec<String>, Vec<String>)> {
        rules
            .iter()
            .map(|r| (expr_names(&r.exprs), r.jumps.clone()))
            .collect()
    };
    let words = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let all = shape(&nl.rules(family, t, NFT_HOSTPORTS_ALL_CHAIN)?);
    if all
        != [
            (words(&["immediate"]), words(&[NFT_HOSTIP_HOSTPORTS_CHAIN])),
            (words(&["immediate"]), words(&[NFT_HOSTPORTS_CHAIN])),
        ]
    {
        return Ok(false);
    }
    for hook in [NFT_PREROUTING_CHAIN, NFT_OUTPUT_CHAIN] {
        let rules = shape(&nl.rules(family, t, hook)?);
        if rules
            != [(
                words(&["fib", "cmp", "immediate"]),
                words(&[NFT_HOSTPORTS_ALL_CHAIN]),
            )]
        {
            return Ok(false);
        }
    }
    Ok(true)
}

/// ADD of a container that has no chain yet, on a node whose skeleton is complete.
/// `Ok(false)`: the general path must do it.
pub(crate) fn iptables_forward_new(
    nl: &mut Nftnl,
    config: &PortMapConfig,
    container: IpNetwork,
) -> io::Result<bool> {
    let family = Family::of(container.ip());
    let chain = names::dnat_chain(&config.network, &config.container_id);
    if nl.chain_exists(family, IPT_NAT_TABLE, &chain)? || !skeleton_ready(nl, family, config)? {
        return Ok(false);
    }
    if portmap_nftnl::supported(config, family) {
        // A failed batch (the chain appeared meanwhile, no nft_compat) changed nothing.
        return Ok(nl
            .commit(
                family,
                IPT_NAT_TABLE,
                &portmap_nftnl::ops(config, container),
            )
            .is_ok());
    }
    let script = iptables::portmap::render_new_container(config, container);
    // A failed commit (someone created the chain meanwhile, the skeleton went away)
    // changed nothing: the general path sorts it out.
    Ok(iptables::restore(family, &script).is_ok())
}

/// The shared chains and jumps the general path would create are all there.
fn skeleton_ready(nl: &mut Nftnl, family: Family, config: &PortMapConfig) -> io::Result<bool> {
    let jumps_to = |rules: &[KernelRule], target: &str| {
        rules.iter().any(|r| r.jumps.iter().any(|j| j == target))
    };
    for from in [PREROUTING, OUTPUT] {
        if !jumps_to(&nl.rules(family, IPT_NAT_TABLE, from)?, HOSTPORT_DNAT_CHAIN) {
            return Ok(false);
        }
    }
    if config.snat && config.external_set_mark_chain.is_none() {
        if !jumps_to(
            &nl.rules(family, IPT_NAT_TABLE, POSTROUTING)?,
            HOSTPORT_MASQ_CHAIN,
        ) {
            return Ok(false);
        }
        // The mark is kernel data in host byte order inside the rules' expressions.
        let mark = (1u32 << u32::from(config.mark_masq_bit.min(31))).to_ne_bytes();
        for shared in [HOSTPORT_SETMARK_CHAIN, HOSTPORT_MASQ_CHAIN] {
            let rules = nl.rules(family, IPT_NAT_TABLE, shared)?;
            if !rules.iter().any(|r| contains(&r.exprs, &mark)) {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn added(
        family: Family,
        table: &str,
        chain: &str,
        handle: u64,
        comment: Option<&str>,
        jumps: &[&str],
    ) -> AddedRule {
        AddedRule {
            family,
            table: table.into(),
            chain: chain.into(),
            rule: KernelRule {
                handle,
                comment: comment.map(str::to_string),
                jumps: jumps.iter().map(|j| j.to_string()).collect(),
                exprs: Vec::new(),
            },
        }
    }

    #[test]
    fn tracking_keeps_only_this_containers_rules_and_only_when_complete() {
        use crate::nat::model::{PortMapping, Proto};
        let tcp = |port| PortMapping {
            host_port: port,
            container_port: 80,
            protocol: Proto::Tcp,
            host_ip: None,
        };
        let config = PortMapConfig::new("net", "c1", vec![tcp(8080), tcp(8081)]);
        let chain = names::dnat_chain("net", "c1");
        let v4: IpNetwork = "10.0.0.2/24".parse().unwrap();
        let v6: IpNetwork = "fd00::2/64".parse().unwrap();

        // iptables: one multiport entry per family, jumping to the container chain.
        let seen = [
            added(Family::V4, "nat", HOSTPORT_DNAT_CHAIN, 7, None, &[&chain]),
            added(
                Family::V4,
                "nat",
                &chain,
                8,
                None,
                &[HOSTPORT_SETMARK_CHAIN],
            ),
            added(
                Family::V4,
                "nat",
                HOSTPORT_DNAT_CHAIN,
                9,
                None,
                &["CNI-DN-other"],
            ),
            added(Family::V6, "nat", HOSTPORT_DNAT_CHAIN, 3, None, &[&chain]),
        ];
        let got = select_tracked(&seen, Backend::Iptables, &config, &[v4, v6]).unwrap();
        assert_eq!(
            got.iter().map(|r| (r.family, r.handle)).collect::<Vec<_>>(),
            [(Family::V4, 7), (Family::V6, 3)]
        );
        assert_eq!(
            select_tracked(&seen[..3], Backend::Iptables, &config, &[v4, v6]),
            None,
            "the v6 entry was not seen: incomplete"
        );

        // nftables: two DNAT rules and two masquerade rules (v4) with the ID.
        let t = NFT_HOSTPORT_TABLE;
        let seen = [
            added(Family::V4, t, NFT_HOSTPORTS_CHAIN, 1, Some("c1"), &[]),
            added(Family::V4, t, NFT_HOSTPORTS_CHAIN, 2, Some("c1"), &[]),
            added(Family::V4, t, NFT_MASQUERADING_CHAIN, 3, Some("c1"), &[]),
            added(Family::V4, t, NFT_MASQUERADING_CHAIN, 4, Some("c1"), &[]),
            added(Family::V4, t, NFT_HOSTPORTS_CHAIN, 5, Some("c2"), &[]),
            added(
                Family::V4,
                t,
                NFT_PREROUTING_CHAIN,
                6,
                None,
                &[NFT_HOSTPORTS_ALL_CHAIN],
            ),
        ];
        let got = select_tracked(&seen, Backend::Nftables, &config, &[v4]).unwrap();
        assert_eq!(
            got.iter().map(|r| r.handle).collect::<Vec<_>>(),
            [1, 2, 3, 4]
        );
        assert_eq!(
            select_tracked(&seen[1..], Backend::Nftables, &config, &[v4]),
            None
        );
    }

    #[test]
    fn byte_search() {
        assert!(contains(
            &[1, 2, 3, 4, 0, 32, 0, 0],
            &0x2000u32.to_le_bytes()
        ));
        assert!(!contains(&[1, 2], &0x2000u32.to_le_bytes()));
    }
}
