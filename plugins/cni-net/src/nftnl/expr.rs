//! Expression builders for rules written straight into nf_tables, shared by both
//! iptables-nft writers (ipMasq and portmap): each builds what iptables-nft itself
//! sends for the same match or target, so the kernel cannot tell the writers apart.

use std::net::IpAddr;

use super::rule::{
    NFTA_DATA_VALUE, NFTA_DATA_VERDICT, NFTA_EXPR_DATA, NFTA_EXPR_NAME, NFTA_IMMEDIATE_DATA,
    NFTA_LIST_ELEM, NFTA_VERDICT_CHAIN, NFTA_VERDICT_CODE,
};
use super::wire::{push_attr, push_nested, push_str_attr, push_u32_attr};

pub(crate) use super::rule::NFT_JUMP;

const NFTA_PAYLOAD_DREG: u16 = 1;
const NFTA_PAYLOAD_BASE: u16 = 2;
const NFTA_PAYLOAD_OFFSET: u16 = 3;
const NFTA_PAYLOAD_LEN: u16 = 4;
const NFTA_BITWISE_SREG: u16 = 1;
const NFTA_BITWISE_DREG: u16 = 2;
const NFTA_BITWISE_LEN: u16 = 3;
const NFTA_BITWISE_MASK: u16 = 4;
const NFTA_BITWISE_XOR: u16 = 5;
const NFTA_CMP_SREG: u16 = 1;
const NFTA_CMP_OP: u16 = 2;
const NFTA_CMP_DATA: u16 = 3;
const NFTA_IMMEDIATE_DREG: u16 = 1;
const NFTA_META_DREG: u16 = 1;
const NFTA_META_KEY: u16 = 2;
/// xtables match/target attributes (`nft_compat`): name, revision, info blob.
const NFTA_XT_NAME: u16 = 1;
const NFTA_XT_REV: u16 = 2;
const NFTA_XT_INFO: u16 = 3;

const NFT_REG_VERDICT: u32 = 0;
/// iptables-nft works in the first 16-byte register.
const NFT_REG_1: u32 = 1;
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
const NFT_META_L4PROTO: u32 = 16;
const NFT_CMP_EQ: u32 = 0;
const NFT_CMP_NEQ: u32 = 1;
pub(crate) const NF_ACCEPT: i32 = 1;
/// `struct xt_comment_info`: the comment, NUL-padded.
pub(crate) const XT_COMMENT_INFO_LEN: usize = 256;

/// Which address of the IP header a match loads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Field {
    Source,
    Destination,
}

/// An address with its prefix length, as `-s`/`-d` take it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Prefix {
    pub(crate) addr: IpAddr,
    pub(crate) len: u8,
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

/// One element of a rule's expression list.
pub(crate) fn expr(out: &mut Vec<u8>, name: &str, data: impl FnOnce(&mut Vec<u8>)) {
    push_nested(out, NFTA_LIST_ELEM, |e| {
        push_str_attr(e, NFTA_EXPR_NAME, name);
        push_nested(e, NFTA_EXPR_DATA, data);
    });
}

fn data_value(out: &mut Vec<u8>, kind: u16, bytes: &[u8]) {
    push_nested(out, kind, |d| push_attr(d, NFTA_DATA_VALUE, bytes));
}

/// `-s`/`-d` the way iptables-nft matches them: load only the whole bytes of a prefix
/// that ends on a byte boundary; otherwise load the full address and mask it first.
pub(crate) fn addr_match(out: &mut Vec<u8>, field: Field, prefix: &Prefix, negate: bool) {
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

/// An xtables match or target (`nft_compat`) of revision 0 with its info blob.
pub(crate) fn xt(out: &mut Vec<u8>, kind: &str, name: &str, info: &[u8]) {
    xt_rev(out, kind, name, 0, info);
}

/// An xtables match or target (`nft_compat`) of a given revision with its info blob.
pub(crate) fn xt_rev(out: &mut Vec<u8>, kind: &str, name: &str, rev: u32, info: &[u8]) {
    expr(out, kind, |d| {
        push_str_attr(d, NFTA_XT_NAME, name);
        push_u32_attr(d, NFTA_XT_REV, rev);
        push_attr(d, NFTA_XT_INFO, info);
    });
}

/// A verdict (`NF_ACCEPT`, `NFT_JUMP` to `chain`, ...).
pub(crate) fn verdict(out: &mut Vec<u8>, code: i32, chain: Option<&str>) {
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

/// `-p PROTO`: iptables-nft matches the layer 4 protocol natively.
pub(crate) fn l4proto(out: &mut Vec<u8>, protocol_number: u8) {
    expr(out, "meta", |d| {
        push_u32_attr(d, NFTA_META_KEY, NFT_META_L4PROTO);
        push_u32_attr(d, NFTA_META_DREG, NFT_REG_1);
    });
    cmp_eq(out, &[protocol_number]);
}

fn cmp_eq(out: &mut Vec<u8>, data: &[u8]) {
    expr(out, "cmp", |d| {
        push_u32_attr(d, NFTA_CMP_SREG, NFT_REG_1);
        push_u32_attr(d, NFTA_CMP_OP, NFT_CMP_EQ);
        data_value(d, NFTA_CMP_DATA, data);
    });
}

/// `-m tcp|udp --dport N`: a native load of the transport header's destination port.
pub(crate) fn dport(out: &mut Vec<u8>, port: u16) {
    expr(out, "payload", |d| {
        push_u32_attr(d, NFTA_PAYLOAD_DREG, NFT_REG_1);
        push_u32_attr(d, NFTA_PAYLOAD_BASE, NFT_PAYLOAD_TRANSPORT_HEADER);
        push_u32_attr(d, NFTA_PAYLOAD_OFFSET, 2);
        push_u32_attr(d, NFTA_PAYLOAD_LEN, 2);
    });
    cmp_eq(out, &port.to_be_bytes());
}

/// iptables-nft counts every rule; `counter` without attributes starts at zero.
pub(crate) fn counter(out: &mut Vec<u8>) {
    expr(out, "counter", |_| {});
}

/// `-m comment --comment C`: the comment NUL-padded into `struct xt_comment_info`.
pub(crate) fn comment(out: &mut Vec<u8>, text: &str) {
    let mut info = text.as_bytes().to_vec();
    // xt_comment keeps at most 255 bytes and a NUL; iptables refuses longer comments.
    info.truncate(XT_COMMENT_INFO_LEN - 1);
    info.resize(XT_COMMENT_INFO_LEN, 0);
    xt(out, "match", "comment", &info);
}

#[cfg(test)]
mod tests {
    use super::*;

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
