//! One transaction: a batch of changes to one table, all applied or none.

use std::io;

use super::rule::{
    NFT_MSG_NEWRULE, NFTA_RULE_CHAIN, NFTA_RULE_EXPRESSIONS, NFTA_RULE_HANDLE, NFTA_RULE_TABLE,
};
use super::set_elem::{NFT_MSG_DELSETELEM, NFT_MSG_NEWSETELEM, push_element_list};
use super::table::{NFTA_CHAIN_NAME, NFTA_CHAIN_TABLE};
use super::wire::{
    self, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST, RECV_BUF, push_attr,
    push_nested, push_str_attr, push_u32_attr,
};
use super::{Element, NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END, Nftnl, message};
use crate::Family;

const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_DELCHAIN: u16 = 5;
pub(super) const NFT_MSG_DELRULE: u16 = 8;
const NFTA_RULE_COMPAT: u16 = 5;
const NFTA_RULE_COMPAT_PROTO: u16 = 1;
const NFTA_RULE_COMPAT_FLAGS: u16 = 2;
const NLMSG_ERROR: u16 = netlink_packet_core::NLMSG_ERROR;
const NLA_F_NESTED: u16 = netlink_packet_core::NLA_F_NESTED;

/// One change of a [`Nftnl::commit`] batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    DeleteRule {
        chain: String,
        handle: u64,
    },
    FlushChain {
        chain: String,
    },
    DeleteChain {
        chain: String,
    },
    /// Creates a chain that must not exist yet (`iptables -N`).
    NewChain {
        chain: String,
    },
    /// Appends a rule made of `exprs`, the `NFTA_RULE_EXPRESSIONS` payload.
    AppendRule {
        chain: String,
        exprs: Vec<u8>,
        /// The layer 4 protocol iptables' `-p` names, which xtables matches such as
        /// `multiport` check against (`NFTA_RULE_COMPAT`, as iptables-nft sends it).
        compat_proto: Option<u8>,
    },
    /// Adds an element to a set or map. An identical element already there is fine; one
    /// with the same key and other data fails the batch with `EEXIST`.
    AddElement {
        set: String,
        element: Element,
    },
    /// Removes an element (by its key; the comment and data are not compared).
    DeleteElement {
        set: String,
        element: Element,
    },
}

/// The message type, flags and attributes of `op` on `table`.
fn encode_op(op: &Op, table: &str) -> (u16, u16, Vec<u8>) {
    let mut attrs = Vec::new();
    let mut flags = NLM_F_REQUEST | NLM_F_ACK;
    let kind = match op {
        Op::DeleteRule { chain, handle } => {
            push_str_attr(&mut attrs, NFTA_RULE_TABLE, table);
            push_str_attr(&mut attrs, NFTA_RULE_CHAIN, chain);
            push_attr(&mut attrs, NFTA_RULE_HANDLE, &handle.to_be_bytes());
            NFT_MSG_DELRULE
        }
        Op::FlushChain { chain } => {
            push_str_attr(&mut attrs, NFTA_RULE_TABLE, table);
            push_str_attr(&mut attrs, NFTA_RULE_CHAIN, chain);
            NFT_MSG_DELRULE
        }
        Op::DeleteChain { chain } => {
            push_str_attr(&mut attrs, NFTA_CHAIN_TABLE, table);
            push_str_attr(&mut attrs, NFTA_CHAIN_NAME, chain);
            NFT_MSG_DELCHAIN
        }
        Op::NewChain { chain } => {
            push_str_attr(&mut attrs, NFTA_CHAIN_TABLE, table);
            push_str_attr(&mut attrs, NFTA_CHAIN_NAME, chain);
            flags |= NLM_F_CREATE | NLM_F_EXCL;
            NFT_MSG_NEWCHAIN
        }
        Op::AppendRule {
            chain,
            exprs,
            compat_proto,
        } => {
            push_str_attr(&mut attrs, NFTA_RULE_TABLE, table);
            push_str_attr(&mut attrs, NFTA_RULE_CHAIN, chain);
            push_attr(&mut attrs, NFTA_RULE_EXPRESSIONS | NLA_F_NESTED, exprs);
            if let Some(proto) = compat_proto {
                push_nested(&mut attrs, NFTA_RULE_COMPAT, |c| {
                    push_u32_attr(c, NFTA_RULE_COMPAT_PROTO, u32::from(*proto));
                    push_u32_attr(c, NFTA_RULE_COMPAT_FLAGS, 0);
                });
            }
            flags |= NLM_F_CREATE | NLM_F_APPEND;
            NFT_MSG_NEWRULE
        }
        Op::AddElement { set, element } => {
            push_element_list(&mut attrs, table, set, element);
            flags |= NLM_F_CREATE;
            NFT_MSG_NEWSETELEM
        }
        Op::DeleteElement { set, element } => {
            push_element_list(&mut attrs, table, set, &element.key_only());
            NFT_MSG_DELSETELEM
        }
    };
    (kind, flags, attrs)
}

impl Nftnl {
    /// Applies `ops` to `table` in `family` as one transaction: all or nothing.
    pub fn commit(&mut self, family: Family, table: &str, ops: &[Op]) -> io::Result<()> {
        if ops.is_empty() {
            return Ok(());
        }
        let mut batch = message(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, self.next_seq(), 0, &[]);
        let mut seqs = Vec::with_capacity(ops.len());
        for op in ops {
            let seq = self.next_seq();
            seqs.push(seq);
            let (kind, flags, attrs) = encode_op(op, table);
            batch.extend(message(kind, flags, seq, family.nfproto(), &attrs));
        }
        batch.extend(message(
            NFNL_MSG_BATCH_END,
            NLM_F_REQUEST,
            self.next_seq(),
            0,
            &[],
        ));
        self.send(&batch)?;
        self.read_acks(ops, &seqs)
    }

    /// Reads one ACK or error per message of the batch just sent; the batch is void if
    /// any of them failed, and the first failure names its op.
    fn read_acks(&mut self, ops: &[Op], seqs: &[u32]) -> io::Result<()> {
        let mut first_error = None;
        let mut pending = seqs.len();
        let mut buf: Vec<u8> = Vec::with_capacity(RECV_BUF);
        while pending > 0 {
            buf.clear();
            let n = self.socket.recv(&mut buf, 0)?;
            if n > buf.len() {
                return Err(io::Error::other("netlink reply truncated"));
            }
            for (kind, seq, body) in wire::messages(&buf)? {
                if kind != NLMSG_ERROR || !seqs.contains(&seq) {
                    continue;
                }
                pending = pending.saturating_sub(1);
                let code = wire::error_code(body)?;
                if code != 0 && first_error.is_none() {
                    let at = seqs.iter().position(|s| *s == seq).unwrap_or(0);
                    first_error = Some(io::Error::new(
                        io::Error::from_raw_os_error(-code).kind(),
                        format!("{:?}: {}", ops.get(at), io::Error::from_raw_os_error(-code)),
                    ));
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}
