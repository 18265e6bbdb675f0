//! portmap's common cases on iptables-nft, straight through nf_tables netlink.
//!
//! # Without reading the whole nat table
//! `iptables-save` costs time in proportion to every other container on the node. The
//! common cases need far less:
//! - DEL: the container's entry rules are found in `CNI-HOSTPORT-DNAT` (by dump, or by
//!   the handles recorded at ADD) and deleted with its chain in one netlink batch — no
//!   process at all;
//! - ADD of a new container on a node whose skeleton is in place: after a netlink look
//!   at the few small shared chains, its chain and entries are written in one batch
//!   (below), or by one `iptables-restore` that creates the chain with `-N`.
//!
//! Anything unusual — iptables-legacy, a missing or partial skeleton, a re-ADD, a chain
//! still referenced elsewhere, old SNAT chains, any netlink error — answers "not
//! handled" and the caller takes the general path (save, decide, restore).
//!
//! # A new container without `iptables-restore`
//!
//! Why: `iptables-restore` reads the whole nat table into its cache before it commits,
//! so its cost grows with every other container mapped on the node. This module sends
//! the batch `iptables-restore` would send for [`render_new_container`]'s lines — the
//! same native expressions in the same order, the same xtables `comment`/`multiport`
//! match and `DNAT` target blobs — so `iptables-save`, `iptables -C/-D`, the Go plugins
//! and our own teardown cannot tell the difference. The root test
//! `portmap_nftnl_rules_equal_iptables_restore` holds that against the installed
//! iptables.
//!
//! Only what that test covers is handled: TCP and UDP mappings without `hostIP`, and no
//! user conditions. Anything else keeps the `iptables-restore` path.
//!
//! [`render_new_container`]: super::super::portmap::render_new_container

use std::io;
use std::net::{IpAddr, Ipv4Addr};

use ipnetwork::IpNetwork;

use super::super::{portmap, tool};
use crate::Family;
use crate::nat::driver::pick_tracked;
use crate::nat::model::{PortMapConfig, Proto, RuleRef};
use crate::nat::names::{
    self, HOSTPORT_DNAT_CHAIN, HOSTPORT_MASQ_CHAIN, HOSTPORT_SETMARK_CHAIN, IPT_NAT_TABLE, OUTPUT,
    POSTROUTING, PREROUTING,
};
use crate::nftnl::expr::{
    Field, NFT_JUMP, Prefix, addr_match, comment, counter, dport, l4proto, verdict, xt_rev,
};
use crate::nftnl::{AddedRule, KernelRule, Nftnl, Op};

/// DEL of one container's iptables rules in one family. `Ok(true)`: done (possibly
/// nothing was there); `Ok(false)`: needs the general path.
pub(crate) fn unforward(
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
pub(crate) fn unforward_known(
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

/// ADD of a container that has no chain yet, on a node whose skeleton is complete.
/// `Ok(false)`: the general path must do it.
pub(crate) fn forward_new(
    nl: &mut Nftnl,
    config: &PortMapConfig,
    container: IpNetwork,
) -> io::Result<bool> {
    let family = Family::of(container.ip());
    let chain = names::dnat_chain(&config.network, &config.container_id);
    if nl.chain_exists(family, IPT_NAT_TABLE, &chain)? || !skeleton_ready(nl, family, config)? {
        return Ok(false);
    }
    if supported(config, family) {
        // A failed batch (the chain appeared meanwhile, no nft_compat) changed nothing.
        return Ok(nl
            .commit(family, IPT_NAT_TABLE, &ops(config, container))
            .is_ok());
    }
    let script = portmap::render_new_container(config, container);
    // A failed commit (someone created the chain meanwhile, the skeleton went away)
    // changed nothing: the general path sorts it out.
    Ok(tool::restore(family, &script).is_ok())
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

/// Among the rules the kernel announced during an ADD, those a later DEL must remove
/// by handle: the entries jumping to the container chain. `None` unless every expected
/// rule was seen.
pub(crate) fn select_tracked(
    added: &[AddedRule],
    config: &PortMapConfig,
    targets: &[IpNetwork],
) -> Option<Vec<RuleRef>> {
    let chain = names::dnat_chain(&config.network, &config.container_id);
    let mine = |a: &AddedRule| {
        a.table == IPT_NAT_TABLE && a.chain == HOSTPORT_DNAT_CHAIN && a.rule.jumps.contains(&chain)
    };
    pick_tracked(added, targets, mine, |_| portmap::entry_count(config))
}

/// multiport accepts at most 15 ports per rule (as `iptables::portmap` groups them).
const MULTIPORT_MAX: usize = 15;
/// `struct xt_multiport_v1`, padded to `XT_ALIGN`.
const XT_MULTIPORT_V1_LEN: usize = 48;
const XT_MULTIPORT_DESTINATION: u8 = 1;
/// `struct nf_nat_range2`, padded to `XT_ALIGN`.
const NF_NAT_RANGE2_LEN: usize = 48;
const NF_NAT_RANGE_MAP_IPS: u32 = 1;
const NF_NAT_RANGE_PROTO_SPECIFIED: u32 = 2;

/// Whether [`ops`] can write `config` for a container of `family` byte-identically.
pub(crate) fn supported(config: &PortMapConfig, family: Family) -> bool {
    config.conditions(family).is_empty()
        && !config.mappings.is_empty()
        && config
            .mappings
            .iter()
            .all(|m| m.host_ip.is_none() && matches!(m.protocol, Proto::Tcp | Proto::Udp))
}

/// One hairpin/localhost mark rule or DNAT rule of the container chain.
fn chain_rule(
    proto: Proto,
    source: Option<Prefix>,
    port: u16,
    then: impl FnOnce(&mut Vec<u8>),
) -> Vec<u8> {
    let mut out = Vec::new();
    l4proto(&mut out, proto.number());
    if let Some(prefix) = source {
        addr_match(&mut out, Field::Source, &prefix, false);
    }
    dport(&mut out, port);
    counter(&mut out);
    then(&mut out);
    out
}

/// `-j DNAT --to-destination IP:PORT` as libxt_DNAT revision 2 sends it: an
/// `nf_nat_range2` with one address and one port (addresses and ports in network order).
fn dnat_info(ip: IpAddr, port: u16) -> Vec<u8> {
    let mut info = (NF_NAT_RANGE_MAP_IPS | NF_NAT_RANGE_PROTO_SPECIFIED)
        .to_ne_bytes()
        .to_vec();
    let mut addr = match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    addr.resize(16, 0);
    info.extend_from_slice(&addr);
    info.extend_from_slice(&addr);
    info.extend_from_slice(&port.to_be_bytes());
    info.extend_from_slice(&port.to_be_bytes());
    info.resize(NF_NAT_RANGE2_LEN, 0);
    info
}

/// `-m multiport --dports A,B,...` as libxt_multiport revision 1 sends it (ports in
/// host order).
fn multiport_info(ports: &[u16]) -> Vec<u8> {
    let mut info = vec![XT_MULTIPORT_DESTINATION, ports.len() as u8];
    for i in 0..MULTIPORT_MAX {
        info.extend_from_slice(&ports.get(i).copied().unwrap_or(0).to_ne_bytes());
    }
    info.resize(XT_MULTIPORT_V1_LEN, 0);
    info
}

/// The batch creating the container chain, its rules and its entries, in the order of
/// `render_new_container`. The caller has checked [`supported`].
pub(crate) fn ops(config: &PortMapConfig, container: IpNetwork) -> Vec<Op> {
    let family = Family::of(container.ip());
    let chain = names::dnat_chain(&config.network, &config.container_id);
    let set_mark = config
        .external_set_mark_chain
        .as_deref()
        .unwrap_or(HOSTPORT_SETMARK_CHAIN);
    let subnet = Prefix {
        addr: container.network(),
        len: container.prefix(),
    };
    let localhost = Prefix {
        addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
        len: 32,
    };
    let mut ops = vec![Op::NewChain {
        chain: chain.clone(),
    }];
    let mut append = |proto: Proto, exprs: Vec<u8>| {
        ops.push(Op::AppendRule {
            chain: chain.clone(),
            exprs,
            compat_proto: Some(proto.number()),
        })
    };
    for m in config.mappings.iter().filter(|m| m.applies_to(family)) {
        let (proto, port) = (m.protocol, m.host_port);
        let mark = |out: &mut Vec<u8>| verdict(out, NFT_JUMP, Some(set_mark));
        if config.snat {
            // masqAll's any-source hairpin rule carries no source match at all.
            let hairpin = (!config.masq_all).then_some(subnet);
            append(proto, chain_rule(proto, hairpin, port, mark));
            if family == Family::V4 && !config.masq_all {
                append(proto, chain_rule(proto, Some(localhost), port, mark));
            }
        }
        let info = dnat_info(container.ip(), m.container_port);
        append(
            proto,
            chain_rule(proto, None, port, |out| {
                xt_rev(out, "target", "DNAT", 2, &info)
            }),
        );
    }
    let dnat_comment = names::dnat_comment(&config.network, &config.container_id);
    let mut protos: Vec<Proto> = config.mappings.iter().map(|m| m.protocol).collect();
    protos.sort();
    protos.dedup();
    for proto in protos {
        let ports: Vec<u16> = config
            .mappings
            .iter()
            .filter(|m| m.protocol == proto)
            .map(|m| m.host_port)
            .collect();
        for group in ports.chunks(MULTIPORT_MAX) {
            let mut out = Vec::new();
            l4proto(&mut out, proto.number());
            comment(&mut out, &dnat_comment);
            xt_rev(&mut out, "match", "multiport", 1, &multiport_info(group));
            counter(&mut out);
            verdict(&mut out, NFT_JUMP, Some(&chain));
            ops.push(Op::AppendRule {
                chain: HOSTPORT_DNAT_CHAIN.to_string(),
                exprs: out,
                compat_proto: Some(proto.number()),
            });
        }
    }
    ops
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nat::driver::added_rule as added;
    use crate::nat::iptables::portmap::{render_forward, render_new_container};
    use crate::nat::iptables::save::{SavedTable, tokenize};
    use crate::nat::model::fixtures::mapping as m;
    use crate::nat::names::HOSTPORT_SETMARK_CHAIN;
    use crate::nat::tests::testns::TestNs;
    use crate::nftnl::Nftnl;
    use crate::tools::iptables_is_nft;

    const EMPTY: &str = "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n";

    fn configs() -> Vec<PortMapConfig> {
        let mixed = vec![
            m(8080, 80, Proto::Tcp, None),
            m(5353, 53, Proto::Udp, None),
            m(8081, 81, Proto::Tcp, None),
        ];
        let many: Vec<_> = (0..20)
            .map(|i| m(20_000 + i, 80 + i, Proto::Tcp, None))
            .collect();
        let mut snat_off = PortMapConfig::new("net", "new", mixed.clone());
        snat_off.snat = false;
        let mut masq_all = PortMapConfig::new("net", "new", mixed.clone());
        masq_all.masq_all = true;
        let mut external = PortMapConfig::new("net", "new", mixed.clone());
        external.external_set_mark_chain = Some("KUBE-MARK-MASQ".into());
        let mut bit5 = PortMapConfig::new("net", "new", mixed.clone());
        bit5.mark_masq_bit = 5;
        vec![
            PortMapConfig::new("net", "new", mixed),
            PortMapConfig::new("net", "new", many),
            snat_off,
            masq_all,
            external,
            bit5,
        ]
    }

    /// In two fresh namespaces holding the same other container: the new container's
    /// portmap rules made by `iptables-restore` in one and by [`ops`] in the other read
    /// back identically — every chain's expressions byte for byte, and the text of
    /// `iptables-save` — and `iptables -C` finds each rule.
    #[test]
    fn portmap_nftnl_rules_equal_iptables_restore() {
        if !iptables_is_nft(Family::V4) || !iptables_is_nft(Family::V6) {
            eprintln!("skipping: iptables is not the nf_tables flavour");
            return;
        }
        for (i, config) in configs().into_iter().enumerate() {
            for container in ["10.88.3.7/16", "10.99.3.7/20", "2001:db8::2/64"] {
                let container: IpNetwork = container.parse().unwrap();
                let family = Family::of(container.ip());
                let v6 = family == Family::V6;
                assert!(supported(&config, family));
                let (Some(tool_ns), Some(our_ns)) =
                    (TestNs::new("pmnl-ipt"), TestNs::new("pmnl-ours"))
                else {
                    return;
                };
                let (save, restore) = if v6 {
                    ("ip6tables", "ip6tables-restore")
                } else {
                    ("iptables", "iptables-restore")
                };
                let mut other = config.clone();
                other.container_id = "other".into();
                let saved = SavedTable::parse(EMPTY, "nat").unwrap();
                let first = render_forward(&saved, &other, container).unwrap();
                for ns in [&tool_ns, &our_ns] {
                    ns.exec(&[save, "-w", "-t", "nat", "-N", "KUBE-MARK-MASQ"]);
                    ns.exec_with(&[restore, "-w", "--noflush"], &[], Some(&first.render()))
                        .unwrap();
                }
                let script = render_new_container(&config, container);
                tool_ns
                    .exec_with(&[restore, "-w", "--noflush"], &[], Some(&script.render()))
                    .unwrap();
                let ops = ops(&config, container);
                our_ns
                    .run(|| Nftnl::open()?.commit(family, "nat", &ops))
                    .unwrap();

                let what = format!("config {i}, {container}");
                assert_eq!(tool_ns.nat_dump(v6), our_ns.nat_dump(v6), "{what}");
                let chains = [
                    HOSTPORT_DNAT_CHAIN.to_string(),
                    names::dnat_chain("net", "new"),
                ];
                for c in &chains {
                    let read = |ns: &TestNs| {
                        ns.run(|| Nftnl::open().unwrap().rules(family, "nat", c).unwrap())
                            .into_iter()
                            .map(|r| (r.exprs, r.comment))
                            .collect::<Vec<_>>()
                    };
                    assert_eq!(read(&tool_ns), read(&our_ns), "{what} {c}");
                }
                for rule in our_ns.nat_rules(v6) {
                    let spec: Vec<String> = tokenize(&rule[3..]).unwrap();
                    let mut args = vec![save, "-t", "nat", "-C"];
                    args.extend(spec.iter().map(String::as_str));
                    our_ns.exec(&args);
                }
                // The chain exists now: a second batch changes nothing.
                assert!(
                    our_ns
                        .run(|| Nftnl::open()?.commit(family, "nat", &ops))
                        .is_err()
                );
            }
        }
    }

    #[test]
    fn supports_only_plain_tcp_and_udp() {
        let plain = PortMapConfig::new("n", "c", vec![m(80, 80, Proto::Tcp, None)]);
        assert!(supported(&plain, Family::V4));
        for other in [
            m(80, 80, Proto::Sctp, None),
            m(80, 80, Proto::Tcp, Some("0.0.0.0")),
        ] {
            let c = PortMapConfig::new("n", "c", vec![other]);
            assert!(!supported(&c, Family::V4));
        }
        let mut cond = plain.clone();
        cond.conditions_v6 = vec!["-s".into(), "2001:db8::/64".into()];
        assert!(supported(&cond, Family::V4));
        assert!(!supported(&cond, Family::V6));
    }

    #[test]
    fn tracking_keeps_only_this_containers_rules_and_only_when_complete() {
        use crate::nat::model::PortMapping;
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
        let got = select_tracked(&seen, &config, &[v4, v6]).unwrap();
        assert_eq!(
            got.iter().map(|r| (r.family, r.handle)).collect::<Vec<_>>(),
            [(Family::V4, 7), (Family::V6, 3)]
        );
        assert_eq!(
            select_tracked(&seen[..3], &config, &[v4, v6]),
            None,
            "the v6 entry was not seen: incomplete"
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
