//! ipMasq's common cases on iptables-nft, straight through nf_tables netlink.
//!
//! # Without reading the whole nat table
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
//!
//! # A new chain without `iptables-restore`
//! [`add_new`] writes a new container's chain straight into iptables-nft's `nat` table.
//! Why: on a node whose iptables is the nf_tables flavour, `iptables-restore` is a
//! process that loads the xtables extensions, reads the table back and then sends one
//! netlink batch (~3.5 ms here, on the critical path of every ADD). This module sends
//! that batch itself: the kernel ends up holding exactly the rules `iptables-restore`
//! makes for the reference's lines — the same expressions, in the same order, with the
//! same xtables `comment` match and `MASQUERADE` target blobs — so `iptables-save`,
//! `iptables -C/-D`, the Go plugins and our own teardown cannot tell the difference.
//! The root test `masq_nftnl_rules_equal_iptables_restore` holds that against the
//! installed iptables.
//!
//! Only the common case is handled: a chain that does not exist yet, in a `nat` table
//! whose `POSTROUTING` exists. Any error (no table, a chain that appeared meanwhile, a
//! kernel without nft_compat) makes the caller use `iptables-restore`.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;

use super::super::masq;
use super::super::restore::Script;
use crate::Family;
use crate::nat::names::{self, IPT_NAT_TABLE, POSTROUTING};
use crate::nftnl::expr::{
    Field, NF_ACCEPT, NFT_JUMP, Prefix, addr_match, comment as comment_match, counter, verdict, xt,
};
use crate::nftnl::{Nftnl, Op, with_socket};
use crate::tools::iptables_is_nft;

/// The restore script for a container that has no masquerading chain in `family` yet,
/// or `None` when the general path must decide (chain present, iptables-legacy).
pub(crate) fn setup_new(
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
    Ok(masq::render_new(network, container_id, nets))
}

/// Removes the container's masquerading in `family`. `Ok(true)`: done (possibly there
/// was nothing); `Ok(false)`: the general path must do it.
pub(crate) fn teardown(
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

#[derive(Clone, Debug, PartialEq, Eq)]
enum Verdict {
    Accept,
    Masquerade,
    Jump(String),
}

/// One rule of the reference's ipMasq layout: `[!] -s|-d prefix -m comment --comment C`
/// followed by a verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
struct MasqRule {
    chain: String,
    field: Field,
    prefix: Prefix,
    negate: bool,
    verdict: Verdict,
}

/// The rules `iptables::masq::render_new` renders for the same arguments, in the same
/// order: the container chain's ACCEPTs, its MASQUERADE, then the POSTROUTING jumps.
fn layout(network: &str, container_id: &str, nets: &[IpNetwork]) -> Vec<MasqRule> {
    let chain = names::masq_chain(network, container_id);
    let mut accepts: Vec<MasqRule> = Vec::new();
    let mut jumps: Vec<MasqRule> = Vec::new();
    for net in nets {
        let accept = MasqRule {
            chain: chain.clone(),
            field: Field::Destination,
            prefix: Prefix {
                addr: net.network(),
                len: net.prefix(),
            },
            negate: false,
            verdict: Verdict::Accept,
        };
        if !accepts.contains(&accept) {
            accepts.push(accept);
        }
        let jump = MasqRule {
            chain: POSTROUTING.to_string(),
            field: Field::Source,
            prefix: Prefix {
                addr: net.ip(),
                len: if net.is_ipv4() { 32 } else { 128 },
            },
            negate: false,
            verdict: Verdict::Jump(chain.clone()),
        };
        if !jumps.contains(&jump) {
            jumps.push(jump);
        }
    }
    if let Some(first) = nets.first() {
        let multicast = match first {
            IpNetwork::V4(_) => Prefix {
                addr: IpAddr::V4(Ipv4Addr::new(224, 0, 0, 0)),
                len: 4,
            },
            IpNetwork::V6(_) => Prefix {
                addr: IpAddr::V6(Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0)),
                len: 8,
            },
        };
        accepts.push(MasqRule {
            chain: chain.clone(),
            field: Field::Destination,
            prefix: multicast,
            negate: true,
            verdict: Verdict::Masquerade,
        });
    }
    accepts.extend(jumps);
    accepts
}

/// The `NFTA_RULE_EXPRESSIONS` payload of one rule.
fn expressions(rule: &MasqRule, comment: &str) -> Vec<u8> {
    let mut out = Vec::new();
    addr_match(&mut out, rule.field, &rule.prefix, rule.negate);
    comment_match(&mut out, comment);
    counter(&mut out);
    match &rule.verdict {
        Verdict::Accept => verdict(&mut out, NF_ACCEPT, None),
        Verdict::Jump(chain) => verdict(&mut out, NFT_JUMP, Some(chain)),
        Verdict::Masquerade => {
            // libipt_MASQUERADE: one range, no flags (`struct
            // nf_nat_ipv4_multi_range_compat`); libip6t_MASQUERADE: an empty
            // `struct nf_nat_range`.
            let info: Vec<u8> = match rule.prefix.addr {
                IpAddr::V4(_) => {
                    let mut v = 1u32.to_ne_bytes().to_vec();
                    v.resize(24, 0);
                    v
                }
                IpAddr::V6(_) => vec![0; 40],
            };
            xt(&mut out, "target", "MASQUERADE", &info);
        }
    }
    out
}

/// Creates the container's masquerading chain and rules for `nets` (all of `family`)
/// in one transaction. The caller has seen that the chain does not exist and that
/// iptables is the nf_tables flavour; any error means nothing was changed.
pub(crate) fn add_new(
    family: Family,
    network: &str,
    container_id: &str,
    nets: &[IpNetwork],
) -> io::Result<()> {
    let rules = layout(network, container_id, nets);
    if rules.is_empty() {
        return Ok(());
    }
    let comment = names::masq_comment(network, container_id);
    let mut ops = vec![Op::NewChain {
        chain: names::masq_chain(network, container_id),
    }];
    ops.extend(rules.iter().map(|rule| Op::AppendRule {
        chain: rule.chain.clone(),
        exprs: expressions(rule, &comment),
        compat_proto: None,
    }));
    with_socket(|nl| nl.commit(family, IPT_NAT_TABLE, &ops))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nat::iptables::masq::render_new;

    fn nets(list: &[&str]) -> Vec<IpNetwork> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    /// The same rules, in the same order, as the golden-tested restore script.
    #[test]
    fn layout_is_the_restore_scripts() {
        for case in [
            &["10.88.0.2/16"][..],
            &["2001:db8::2/64"][..],
            &["10.88.0.2/16", "10.99.0.7/24"][..],
            &["10.88.0.2/16", "10.88.0.3/16"][..],
        ] {
            let nets = nets(case);
            let script = render_new("test", "1234", &nets).unwrap().render();
            let expected: Vec<String> = script
                .lines()
                .filter(|l| l.starts_with("-A "))
                .map(|l| {
                    // "-A CHAIN [!] -s|-d NET -m comment ... -j TARGET"
                    let w: Vec<&str> = l.split_whitespace().collect();
                    let neg = w[2] == "!";
                    let at = if neg { 3 } else { 2 };
                    format!(
                        "{} {}{} {} {}",
                        w[1],
                        if neg { "!" } else { "" },
                        w[at],
                        w[at + 1],
                        w[w.len() - 1]
                    )
                })
                .collect();
            let got: Vec<String> = layout("test", "1234", &nets)
                .iter()
                .map(|r| {
                    format!(
                        "{} {}{} {} {}",
                        r.chain,
                        if r.negate { "!" } else { "" },
                        if r.field == Field::Source { "-s" } else { "-d" },
                        r.prefix,
                        match &r.verdict {
                            Verdict::Accept => "ACCEPT".to_string(),
                            Verdict::Masquerade => "MASQUERADE".to_string(),
                            Verdict::Jump(c) => c.clone(),
                        }
                    )
                })
                .collect();
            assert_eq!(got, expected, "{case:?}");
        }
    }

    /// In two fresh namespaces holding the same other container: the new container's
    /// masquerading made by `iptables-restore` in one and by [`add_new`] in the other
    /// reads back identically — the kernel's expressions byte for byte, and the text
    /// of `iptables-save` — and `iptables -C` (what the Go plugins use) finds each rule.
    #[test]
    fn masq_nftnl_rules_equal_iptables_restore() {
        use crate::nat::iptables::restore::Script;
        use crate::nat::tests::testns::TestNs;
        use crate::nftnl::Nftnl;
        use crate::tools::iptables_is_nft;

        if !iptables_is_nft(Family::V4) || !iptables_is_nft(Family::V6) {
            eprintln!("skipping: iptables is not the nf_tables flavour");
            return;
        }
        let (Some(tool_ns), Some(our_ns)) = (TestNs::new("nftnl-ipt"), TestNs::new("nftnl-ours"))
        else {
            return;
        };
        let restore = |ns: &TestNs, v6: bool, script: &Script| {
            let tool = if v6 {
                "ip6tables-restore"
            } else {
                "iptables-restore"
            };
            ns.exec_with(&[tool, "-w", "--noflush"], &[], Some(&script.render()))
                .unwrap();
        };
        for (family, other, mine) in [
            (
                Family::V4,
                "10.88.0.9/16",
                &["10.88.0.2/16", "10.99.3.7/20"][..],
            ),
            (Family::V6, "2001:db8::9/64", &["2001:db8::2/64"][..]),
        ] {
            let v6 = family == Family::V6;
            let first = render_new("net", "other", &nets(&[other])).unwrap();
            restore(&tool_ns, v6, &first);
            restore(&our_ns, v6, &first);
            let mine = nets(mine);
            restore(&tool_ns, v6, &render_new("net", "new", &mine).unwrap());
            our_ns.run(|| add_new(family, "net", "new", &mine)).unwrap();

            assert_eq!(tool_ns.nat_dump(v6), our_ns.nat_dump(v6), "{family}");
            let chain = names::masq_chain("net", "new");
            for c in [chain.as_str(), POSTROUTING] {
                let read = |ns: &TestNs| {
                    ns.run(|| {
                        Nftnl::open()
                            .unwrap()
                            .rules(family, IPT_NAT_TABLE, c)
                            .unwrap()
                    })
                    .into_iter()
                    .map(|r| (r.exprs, r.comment))
                    .collect::<Vec<_>>()
                };
                assert_eq!(read(&tool_ns), read(&our_ns), "{family} {c}");
            }
            for rule in our_ns.nat_rules(v6) {
                let spec: Vec<String> = crate::nat::iptables::save::tokenize(&rule[3..]).unwrap();
                let mut args = vec![if v6 { "ip6tables" } else { "iptables" }, "-t", "nat", "-C"];
                args.extend(spec.iter().map(String::as_str));
                our_ns.exec(&args);
            }
            // The chain exists now: a second add changes nothing.
            assert!(our_ns.run(|| add_new(family, "net", "new", &mine)).is_err());
        }
    }
}
