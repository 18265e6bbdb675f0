//! The nftables layouts' rules read and deleted straight through nf_tables netlink.
//!
//! Reading the whole `cni_hostport` table (`nft -j list`) costs time in proportion to
//! every other container on the node. The common cases need far less:
//! - DEL: the container's rules are found in the kernel (one chain's rules each, or
//!   the handles recorded at ADD) and deleted by handle in one netlink batch — no
//!   process at all;
//! - ADD: the container's stale rules are listed, and the skeleton checked, through
//!   netlink, so the one `nft -f` carries only what changes;
//! - DEL's probe of the ipMasq table, before any `nft` process.
//!
//! Any netlink error makes the driver use `nft` instead.

use std::io;

use ipnetwork::IpNetwork;

use super::portmap::{CONTAINER_CHAINS as NFT_CONTAINER_CHAINS, expected_rules};
use super::tool::NftRule;
use crate::Family;
use crate::nat::driver::pick_tracked;
use crate::nat::model::{PortMapConfig, RuleRef};
use crate::nat::names::{
    NFT_HOSTIP_HOSTPORTS_CHAIN, NFT_HOSTPORT_TABLE, NFT_HOSTPORTS_ALL_CHAIN, NFT_HOSTPORTS_CHAIN,
    NFT_MASQUERADING_CHAIN, NFT_OUTPUT_CHAIN, NFT_PREROUTING_CHAIN,
};
use crate::nftnl::{AddedRule, KernelRule, Nftnl, Op, expr_names};

/// The recorded rules of a container in `family` that are still its own, as stale
/// rules for a re-ADD or victims for a DEL; `None` when a handle now names a rule of
/// someone else (the record cannot be trusted).
pub(crate) fn known_rules(
    nl: &mut Nftnl,
    family: Family,
    container_id: &str,
    known: &[RuleRef],
) -> io::Result<Option<Vec<NftRule>>> {
    let mut out = Vec::new();
    for r in known.iter().filter(|r| r.family == family) {
        if r.table != NFT_HOSTPORT_TABLE || !NFT_CONTAINER_CHAINS.contains(&r.chain.as_str()) {
            return Ok(None);
        }
        match nl.rule(family, NFT_HOSTPORT_TABLE, &r.chain, r.handle)? {
            Some(rule) if rule.comment.as_deref() == Some(container_id) => out.push(NftRule {
                family: family.nft_word().to_string(),
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
/// by handle: nftables rules carrying the container ID. `None` unless every expected
/// rule was seen (a partial record would make DEL leak).
pub(crate) fn select_tracked(
    added: &[AddedRule],
    config: &PortMapConfig,
    targets: &[IpNetwork],
) -> Option<Vec<RuleRef>> {
    let mine = |a: &AddedRule| {
        a.table == NFT_HOSTPORT_TABLE
            && NFT_CONTAINER_CHAINS.contains(&a.chain.as_str())
            && a.rule.comment.as_deref() == Some(config.container_id.as_str())
    };
    pick_tracked(added, targets, mine, |family| {
        let (dnat, masq) = expected_rules(config, family);
        dnat + masq
    })
}

/// The container's rules in the `cni_hostport` table of `family`.
pub(crate) fn container_rules(
    nl: &mut Nftnl,
    family: Family,
    container_id: &str,
) -> io::Result<Vec<NftRule>> {
    let mut out = Vec::new();
    for chain in NFT_CONTAINER_CHAINS {
        for rule in nl.rules(family, NFT_HOSTPORT_TABLE, chain)? {
            if rule.comment.as_deref() == Some(container_id) {
                out.push(NftRule {
                    family: family.nft_word().to_string(),
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
pub(crate) fn unforward(nl: &mut Nftnl, family: Family, container_id: &str) -> io::Result<()> {
    let ops: Vec<Op> = container_rules(nl, family, container_id)?
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
pub(crate) fn skeleton_ready(nl: &mut Nftnl, family: Family, snat: bool) -> io::Result<bool> {
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

/// Whether nf_tables has table `name` in the `inet` family. DEL asks before running
/// `nft` to look into the nftables ipMasq table: on a node that never used that
/// backend the table is absent, and the answer costs a netlink round trip instead of a
/// process.
pub(crate) fn inet_table_exists(name: &str) -> io::Result<bool> {
    crate::nftnl::with_socket(|nl| nl.inet_table_exists(name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nat::driver::added_rule as added;

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
        let v4: IpNetwork = "10.0.0.2/24".parse().unwrap();

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
        let got = select_tracked(&seen, &config, &[v4]).unwrap();
        assert_eq!(
            got.iter().map(|r| r.handle).collect::<Vec<_>>(),
            [1, 2, 3, 4]
        );
        assert_eq!(select_tracked(&seen[1..], &config, &[v4]), None);
    }

    #[test]
    fn inet_table_lookup() {
        use crate::nat::tests::testns::TestNs;
        let Some(ns) = TestNs::new("nftnl-table") else {
            return;
        };
        assert!(!ns.run(|| inet_table_exists("cni_test_t")).unwrap());
        ns.exec(&["nft", "add", "table", "inet", "cni_test_t"]);
        assert!(ns.run(|| inet_table_exists("cni_test_t")).unwrap());
        ns.exec(&["nft", "add", "table", "ip", "cni_other"]);
        assert!(
            !ns.run(|| inet_table_exists("cni_other")).unwrap(),
            "ip, not inet"
        );
    }
}
