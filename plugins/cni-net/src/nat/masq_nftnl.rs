//! A new container's ipMasq chain written straight into iptables-nft's `nat` table over
//! nf_tables netlink, instead of through an `iptables-restore` process.
//!
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

use super::names;
use super::nftnl::{
    NFT_JUMP, NFTA_DATA_VERDICT, NFTA_EXPR_DATA, NFTA_EXPR_NAME, NFTA_IMMEDIATE_DATA,
    NFTA_LIST_ELEM, NFTA_VERDICT_CHAIN, NFTA_VERDICT_CODE, Op, push_attr, push_nested,
    push_str_attr, push_u32_attr, with_socket,
};
use crate::Family;

pub(super) const NFTA_PAYLOAD_DREG: u16 = 1;
pub(super) const NFTA_PAYLOAD_BASE: u16 = 2;
pub(super) const NFTA_PAYLOAD_OFFSET: u16 = 3;
pub(super) const NFTA_PAYLOAD_LEN: u16 = 4;
const NFTA_BITWISE_SREG: u16 = 1;
const NFTA_BITWISE_DREG: u16 = 2;
const NFTA_BITWISE_LEN: u16 = 3;
const NFTA_BITWISE_MASK: u16 = 4;
const NFTA_BITWISE_XOR: u16 = 5;
pub(super) const NFTA_CMP_SREG: u16 = 1;
pub(super) const NFTA_CMP_OP: u16 = 2;
pub(super) const NFTA_CMP_DATA: u16 = 3;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_IMMEDIATE_DREG: u16 = 1;
/// xtables match/target attributes (`nft_compat`): name, revision, info blob.
const NFTA_XT_NAME: u16 = 1;
const NFTA_XT_REV: u16 = 2;
const NFTA_XT_INFO: u16 = 3;

const NFT_REG_VERDICT: u32 = 0;
/// iptables-nft works in the first 16-byte register.
pub(super) const NFT_REG_1: u32 = 1;
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
pub(super) const NFT_CMP_EQ: u32 = 0;
const NFT_CMP_NEQ: u32 = 1;
const NF_ACCEPT: i32 = 1;
/// `struct xt_comment_info`: the comment, NUL-padded.
pub(super) const XT_COMMENT_INFO_LEN: usize = 256;

/// iptables-nft's nat table and where container chains are entered from.
const NAT_TABLE: &str = "nat";
const POSTROUTING: &str = "POSTROUTING";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Field {
    Source,
    Destination,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Verdict {
    Accept,
    Masquerade,
    Jump(String),
}

/// An address with its prefix length, as `-s`/`-d` take it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Prefix {
    pub(super) addr: IpAddr,
    pub(super) len: u8,
}

impl std::fmt::Display for Prefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl Prefix {
    /// The address and its netmask, byte for byte.
    fn bytes(&self) -> (Vec<u8>, Vec<u8>) {
        let addr = match self.addr {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        };
        let mut left = usize::from(self.len);
        let mask = addr
            .iter()
            .map(|_| {
                let bits = left.min(8);
                left -= bits;
                (0xff00u16 >> bits) as u8
            })
            .collect();
        (addr, mask)
    }
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

/// One element of a rule's expression list.
pub(super) fn expr(out: &mut Vec<u8>, name: &str, data: impl FnOnce(&mut Vec<u8>)) {
    push_nested(out, NFTA_LIST_ELEM, |e| {
        push_str_attr(e, NFTA_EXPR_NAME, name);
        push_nested(e, NFTA_EXPR_DATA, data);
    });
}

pub(super) fn data_value(out: &mut Vec<u8>, kind: u16, bytes: &[u8]) {
    push_nested(out, kind, |d| push_attr(d, NFTA_DATA_VALUE, bytes));
}

/// `-s`/`-d` the way iptables-nft matches them: load only the whole bytes of a prefix
/// that ends on a byte boundary; otherwise load the full address and mask it first.
pub(super) fn addr_match(out: &mut Vec<u8>, field: Field, prefix: &Prefix, negate: bool) {
    let offset: u32 = match (prefix.addr, field) {
        (IpAddr::V4(_), Field::Source) => 12,
        (IpAddr::V4(_), Field::Destination) => 16,
        (IpAddr::V6(_), Field::Source) => 8,
        (IpAddr::V6(_), Field::Destination) => 24,
    };
    let (addr, mask) = prefix.bytes();
    let whole = mask.iter().take_while(|b| **b == 0xff).count();
    let bitwise = mask[whole..].iter().any(|b| *b != 0);
    let len = if bitwise { mask.len() } else { whole };
    if len == 0 {
        // A /0 matches everything: iptables emits no match at all.
        return;
    }
    let data: Vec<u8> = addr
        .iter()
        .zip(&mask)
        .map(|(a, m)| a & m)
        .take(len)
        .collect();
    expr(out, "payload", |d| {
        push_u32_attr(d, NFTA_PAYLOAD_DREG, NFT_REG_1);
        push_u32_attr(d, NFTA_PAYLOAD_BASE, NFT_PAYLOAD_NETWORK_HEADER);
        push_u32_attr(d, NFTA_PAYLOAD_OFFSET, offset);
        push_u32_attr(d, NFTA_PAYLOAD_LEN, len as u32);
    });
    if bitwise {
        expr(out, "bitwise", |d| {
            push_u32_attr(d, NFTA_BITWISE_SREG, NFT_REG_1);
            push_u32_attr(d, NFTA_BITWISE_DREG, NFT_REG_1);
            push_u32_attr(d, NFTA_BITWISE_LEN, len as u32);
            data_value(d, NFTA_BITWISE_MASK, &mask[..len]);
            data_value(d, NFTA_BITWISE_XOR, &vec![0; len]);
        });
    }
    expr(out, "cmp", |d| {
        push_u32_attr(d, NFTA_CMP_SREG, NFT_REG_1);
        push_u32_attr(
            d,
            NFTA_CMP_OP,
            if negate { NFT_CMP_NEQ } else { NFT_CMP_EQ },
        );
        data_value(d, NFTA_CMP_DATA, &data);
    });
}

fn xt(out: &mut Vec<u8>, kind: &str, name: &str, info: &[u8]) {
    xt_rev(out, kind, name, 0, info);
}

/// An xtables match or target (`nft_compat`) of a given revision with its info blob.
pub(super) fn xt_rev(out: &mut Vec<u8>, kind: &str, name: &str, rev: u32, info: &[u8]) {
    expr(out, kind, |d| {
        push_str_attr(d, NFTA_XT_NAME, name);
        push_u32_attr(d, NFTA_XT_REV, rev);
        push_attr(d, NFTA_XT_INFO, info);
    });
}

pub(super) fn verdict(out: &mut Vec<u8>, code: i32, chain: Option<&str>) {
    expr(out, "immediate", |d| {
        push_u32_attr(d, NFTA_IMMEDIATE_DREG, NFT_REG_VERDICT);
        push_nested(d, NFTA_IMMEDIATE_DATA, |v| {
            push_nested(v, NFTA_DATA_VERDICT, |v| {
                push_attr(v, NFTA_VERDICT_CODE, &code.to_be_bytes());
                if let Some(chain) = chain {
                    push_str_attr(v, NFTA_VERDICT_CHAIN, chain);
                }
            });
        });
    });
}

/// The `NFTA_RULE_EXPRESSIONS` payload of one rule.
fn expressions(rule: &MasqRule, comment: &str) -> Vec<u8> {
    let mut out = Vec::new();
    addr_match(&mut out, rule.field, &rule.prefix, rule.negate);
    let mut info = comment.as_bytes().to_vec();
    // xt_comment keeps at most 255 bytes and a NUL; iptables refuses longer comments.
    info.truncate(XT_COMMENT_INFO_LEN - 1);
    info.resize(XT_COMMENT_INFO_LEN, 0);
    xt(&mut out, "match", "comment", &info);
    // iptables-nft counts every rule; `counter` without attributes starts at zero.
    expr(&mut out, "counter", |_| {});
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
    with_socket(|nl| nl.commit(family, NAT_TABLE, &ops))
}

/// Whether nf_tables has table `name` in the `inet` family. DEL asks before running
/// `nft` to look into the nftables ipMasq table: on a node that never used that
/// backend the table is absent, and the answer costs a netlink round trip instead of a
/// process.
pub(crate) fn inet_table_exists(name: &str) -> io::Result<bool> {
    with_socket(|nl| nl.inet_table_exists(name))
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
        use crate::nat::nftnl::Nftnl;
        use crate::nat::portmap_direct::iptables_is_nft;
        use crate::nat::testns::TestNs;

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
                    ns.run(|| Nftnl::open().unwrap().rules(family, NAT_TABLE, c).unwrap())
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

    #[test]
    fn inet_table_lookup() {
        use crate::nat::testns::TestNs;
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

    #[test]
    fn prefixes_load_whole_bytes_or_mask() {
        let p = |s: &str| {
            let (a, l) = s.split_once('/').unwrap();
            Prefix {
                addr: a.parse().unwrap(),
                len: l.parse().unwrap(),
            }
        };
        assert_eq!(p("10.0.0.0/12").bytes().1, [255, 240, 0, 0]);
        assert_eq!(p("::/0").bytes().1, [0; 16]);
        let mut out = Vec::new();
        addr_match(&mut out, Field::Destination, &p("10.244.1.0/24"), false);
        // payload of 3 bytes at offset 16, then cmp: no bitwise.
        assert!(!out.windows(7).any(|w| w == b"bitwise"));
        assert!(out.windows(3).any(|w| w == [10, 244, 1]));
        let mut out = Vec::new();
        addr_match(&mut out, Field::Destination, &p("224.0.0.0/4"), true);
        assert!(out.windows(7).any(|w| w == b"bitwise"));
        let mut out = Vec::new();
        addr_match(&mut out, Field::Destination, &p("0.0.0.0/0"), false);
        assert!(out.is_empty());
    }
}
