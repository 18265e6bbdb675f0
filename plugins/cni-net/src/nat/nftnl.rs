//! A minimal nf_tables netlink client: list a chain's rules (handle, comment, jump
//! targets), ask whether a chain exists, and delete rules and chains in one batch.
//!
//! Why: finding one container's rules among a thousand through `nft -j list` or
//! `iptables-save` means a process that prints, and a parser that reads, the whole
//! table. The kernel hands over just the one chain's rules in well under a millisecond,
//! and deleting by handle needs no process at all. Both backends profit: nftables
//! rules are found by their comment, and iptables-nft's rules live in nf_tables too
//! (`table ip nat`), where the jumps to a container chain are immediate verdicts.
//!
//! Building rules' expressions is the caller's (see `masq_nftnl`); this module frames
//! the messages and batches. Callers treat every error here as "use the tools instead".

use std::io;

use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};

use crate::Family;

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_GETCHAIN: u16 = 4;
const NFT_MSG_DELCHAIN: u16 = 5;
const NFT_MSG_GETRULE: u16 = 7;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_DELRULE: u16 = 8;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_GETSETELEM: u16 = 13;
const NFT_MSG_DELSETELEM: u16 = 14;
/// Multicast group of nf_tables change notifications.
const NFNLGRP_NFTABLES: u32 = 7;
const NFNL_MSG_BATCH_BEGIN: u16 = 16;
const NFNL_MSG_BATCH_END: u16 = 17;

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
const NLA_F_NESTED: u16 = 0x8000;
const NLMSG_HDR_LEN: usize = 16;
const NFGENMSG_LEN: usize = 4;
const NLA_TYPE_MASK: u16 = 0x3fff;

const NFTA_TABLE_NAME: u16 = 1;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_HANDLE: u16 = 3;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_RULE_COMPAT: u16 = 5;
const NFTA_RULE_COMPAT_PROTO: u16 = 1;
const NFTA_RULE_COMPAT_FLAGS: u16 = 2;
const NFTA_RULE_USERDATA: u16 = 7;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_SET_ELEM_TIMEOUT: u16 = 4;
const NFTA_SET_ELEM_USERDATA: u16 = 6;
const NFTA_SET_ELEM_KEY_END: u16 = 10;
const NFTA_DATA_VALUE: u16 = 1;
pub(crate) const NFTA_LIST_ELEM: u16 = 1;
pub(crate) const NFTA_EXPR_NAME: u16 = 1;
pub(crate) const NFTA_EXPR_DATA: u16 = 2;
pub(crate) const NFTA_IMMEDIATE_DATA: u16 = 2;
pub(crate) const NFTA_DATA_VERDICT: u16 = 2;
pub(crate) const NFTA_VERDICT_CODE: u16 = 1;
pub(crate) const NFTA_VERDICT_CHAIN: u16 = 2;
/// libnftnl's user-data TLV type for a rule comment (what `nft ... comment` and
/// iptables-nft's `-m comment` store).
const NFTNL_UDATA_RULE_COMMENT: u8 = 0;
/// The same for a set element's comment (`NFTNL_UDATA_SET_ELEM_COMMENT`).
const NFTNL_UDATA_SET_ELEM_COMMENT: u8 = 0;
pub(crate) const NFT_JUMP: i32 = -3;
const NFT_GOTO: i32 = -4;

/// Generous: one dump datagram is at most a few pages, and a truncated read is an error.
const RECV_BUF: usize = 1 << 17;

/// One rule as the kernel reports it, reduced to what we select on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct KernelRule {
    pub handle: u64,
    pub comment: Option<String>,
    /// Chains this rule jumps or goes to.
    pub jumps: Vec<String>,
    /// The raw expression attributes, for coarse content checks.
    pub exprs: Vec<u8>,
}

/// One element of a set or map, in the kernel's byte layout: each field of a
/// concatenated key or value is padded to 4 bytes, numbers are big-endian.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Element {
    pub key: Vec<u8>,
    /// The last key of a range, for sets with `flags interval` over concatenations.
    pub key_end: Option<Vec<u8>>,
    /// The mapped value, for maps.
    pub data: Option<Vec<u8>>,
    pub comment: Option<String>,
    /// Milliseconds until the element expires: sent when set, and reported for
    /// elements that have a timeout (sets with `flags timeout`).
    pub timeout_ms: Option<u64>,
}

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

/// An open `NETLINK_NETFILTER` socket.
pub(crate) struct Nftnl {
    socket: Socket,
    seq: u32,
}

impl Nftnl {
    pub fn open() -> io::Result<Nftnl> {
        let mut socket = Socket::new(NETLINK_NETFILTER)?;
        socket.bind_auto()?;
        Ok(Nftnl { socket, seq: 0 })
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    fn send(&self, msg: &[u8]) -> io::Result<()> {
        self.socket.send_to(msg, &SocketAddr::new(0, 0), 0)?;
        Ok(())
    }

    /// Whether `table`/`chain` exists in `family`.
    pub fn chain_exists(&mut self, family: Family, table: &str, chain: &str) -> io::Result<bool> {
        let mut attrs = Vec::new();
        push_str_attr(&mut attrs, NFTA_CHAIN_TABLE, table);
        push_str_attr(&mut attrs, NFTA_CHAIN_NAME, chain);
        self.exists(NFT_MSG_GETCHAIN, family.nfproto(), &attrs)
    }

    /// Whether table `name` exists in `family`.
    pub fn table_exists(&mut self, family: Family, name: &str) -> io::Result<bool> {
        let mut attrs = Vec::new();
        push_str_attr(&mut attrs, NFTA_TABLE_NAME, name);
        self.exists(NFT_MSG_GETTABLE, family.nfproto(), &attrs)
    }

    /// The elements of `table`/`set`; empty when the set (or table) is missing.
    pub fn elements(&mut self, family: Family, table: &str, set: &str) -> io::Result<Vec<Element>> {
        let mut attrs = Vec::new();
        push_str_attr(&mut attrs, NFTA_SET_ELEM_LIST_TABLE, table);
        push_str_attr(&mut attrs, NFTA_SET_ELEM_LIST_SET, set);
        let mut out = Vec::new();
        self.get(
            NFT_MSG_GETSETELEM,
            true,
            family.nfproto(),
            &attrs,
            |payload| {
                out.extend(parse_elements(payload));
            },
        )?;
        Ok(out)
    }

    /// The element of `table`/`set` with `probe`'s key (and key end), if any. A point
    /// lookup: its cost does not grow with the set.
    pub fn element(
        &mut self,
        family: Family,
        table: &str,
        set: &str,
        probe: &Element,
    ) -> io::Result<Option<Element>> {
        let key_only = Element {
            key: probe.key.clone(),
            key_end: probe.key_end.clone(),
            ..Element::default()
        };
        let mut attrs = Vec::new();
        push_element_list(&mut attrs, table, set, &key_only);
        let mut found = None;
        self.get(
            NFT_MSG_GETSETELEM,
            false,
            family.nfproto(),
            &attrs,
            |payload| {
                found = parse_elements(payload).next();
            },
        )?;
        Ok(found)
    }

    /// Whether table `name` exists in the `inet` family.
    pub fn inet_table_exists(&mut self, name: &str) -> io::Result<bool> {
        let mut attrs = Vec::new();
        push_str_attr(&mut attrs, NFTA_TABLE_NAME, name);
        self.exists(NFT_MSG_GETTABLE, libc::NFPROTO_INET as u8, &attrs)
    }

    /// Whether the object a GET request `msg` names exists: the kernel answers with it,
    /// or with `ENOENT`.
    fn exists(&mut self, msg: u16, proto: u8, attrs: &[u8]) -> io::Result<bool> {
        let mut found = false;
        self.get(msg, false, proto, attrs, |_| found = true)?;
        Ok(found)
    }

    /// Sends GET request `msg` (a dump, or a single object) and hands each answer's
    /// payload to `on_msg`. A missing object, table or chain (`ENOENT`) is no error:
    /// there is simply nothing to hand over.
    fn get(
        &mut self,
        msg: u16,
        dump: bool,
        proto: u8,
        attrs: &[u8],
        on_msg: impl FnMut(&[u8]),
    ) -> io::Result<()> {
        let seq = self.next_seq();
        let flags = NLM_F_REQUEST | if dump { NLM_F_DUMP } else { NLM_F_ACK };
        self.send(&message(msg, flags, seq, proto, attrs))?;
        match self.replies(seq, !dump, on_msg) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            result => result,
        }
    }

    /// The rules of `table`/`chain` in order; empty when the chain (or table) is
    /// missing.
    pub fn rules(
        &mut self,
        family: Family,
        table: &str,
        chain: &str,
    ) -> io::Result<Vec<KernelRule>> {
        let mut attrs = Vec::new();
        push_str_attr(&mut attrs, NFTA_RULE_TABLE, table);
        push_str_attr(&mut attrs, NFTA_RULE_CHAIN, chain);
        let mut out = Vec::new();
        self.get(NFT_MSG_GETRULE, true, family.nfproto(), &attrs, |payload| {
            // Kernels that ignore the dump filter send every rule: keep ours only.
            if let Some(rule) = parse_rule(payload, table, chain) {
                out.push(rule);
            }
        })?;
        Ok(out)
    }

    /// One rule by its handle, or `None` when no such rule is in that chain.
    pub fn rule(
        &mut self,
        family: Family,
        table: &str,
        chain: &str,
        handle: u64,
    ) -> io::Result<Option<KernelRule>> {
        let mut attrs = Vec::new();
        push_str_attr(&mut attrs, NFTA_RULE_TABLE, table);
        push_str_attr(&mut attrs, NFTA_RULE_CHAIN, chain);
        push_attr(&mut attrs, NFTA_RULE_HANDLE, &handle.to_be_bytes());
        let mut found = None;
        self.get(
            NFT_MSG_GETRULE,
            false,
            family.nfproto(),
            &attrs,
            |payload| {
                found = parse_rule(payload, table, chain).filter(|r| r.handle == handle);
            },
        )?;
        Ok(found)
    }

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
                    let key_only = Element {
                        key: element.key.clone(),
                        key_end: element.key_end.clone(),
                        ..Element::default()
                    };
                    push_element_list(&mut attrs, table, set, &key_only);
                    NFT_MSG_DELSETELEM
                }
            };
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

        // One ACK or error per message; the batch is void if any of them failed.
        let mut first_error = None;
        let mut pending = seqs.len();
        let mut buf: Vec<u8> = Vec::with_capacity(RECV_BUF);
        while pending > 0 {
            buf.clear();
            let n = self.socket.recv(&mut buf, 0)?;
            if n > buf.len() {
                return Err(io::Error::other("netlink reply truncated"));
            }
            for (kind, seq, body) in messages(&buf)? {
                if kind != NLMSG_ERROR || !seqs.contains(&seq) {
                    continue;
                }
                pending = pending.saturating_sub(1);
                let code = error_code(body)?;
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

    /// Reads the replies to `seq`, handing each data payload (after the nfgenmsg) to
    /// `on_msg`, until DONE or (for `ack`) the acknowledgement.
    fn replies(&self, seq: u32, ack: bool, mut on_msg: impl FnMut(&[u8])) -> io::Result<()> {
        let mut buf: Vec<u8> = Vec::with_capacity(RECV_BUF);
        loop {
            buf.clear();
            let n = self.socket.recv(&mut buf, 0)?;
            if n > buf.len() {
                return Err(io::Error::other("netlink reply truncated"));
            }
            for (kind, msg_seq, body) in messages(&buf)? {
                if msg_seq != seq {
                    continue;
                }
                match kind {
                    NLMSG_DONE => return Ok(()),
                    NLMSG_ERROR => {
                        let code = error_code(body)?;
                        if code != 0 {
                            return Err(io::Error::from_raw_os_error(-code));
                        }
                        if ack {
                            return Ok(());
                        }
                    }
                    _ => {
                        if let Some(payload) = body.get(NFGENMSG_LEN..) {
                            on_msg(payload);
                        }
                    }
                }
            }
        }
    }
}

/// How many netfilter sockets [`close_at_exit`] keeps; past that they close at once.
const PARKED_MAX: usize = 16;

static PARKED: std::sync::Mutex<Vec<Box<dyn std::any::Any + Send>>> =
    std::sync::Mutex::new(Vec::new());

/// Keeps a netfilter netlink socket open until the process exits instead of closing it
/// now. Every netfilter socket of a plugin call goes here: nf_tables, ctnetlink, the
/// notification listener.
///
/// Why: the kernel (nf_tables' `NETLINK_URELEASE` handler) makes whoever closes a
/// netfilter socket wait, with the netns's nf_tables commit mutex held, until the
/// memory of every deletion committed so far is released, which takes an RCU grace
/// period (~10 ms). Every interface removal in the netns takes that mutex too (the
/// netdev notifier of nf_tables). A DEL that closed its socket right after deleting its
/// rules would therefore hold up its own veth removal by a grace period, making the two
/// waits consecutive; left to the process exit, the grace period runs while the veth
/// goes and has usually passed when the socket closes. Plugins are short-lived; a
/// longer-lived caller leaks at most [`PARKED_MAX`] descriptors.
pub(crate) fn close_at_exit<T: Send + 'static>(socket: T) {
    if let Ok(mut parked) = PARKED.lock()
        && parked.len() < PARKED_MAX
    {
        parked.push(Box::new(socket));
    }
}

/// Runs `f` on a fresh socket, which is then kept open until exit ([`close_at_exit`]).
pub(crate) fn with_socket<R>(f: impl FnOnce(&mut Nftnl) -> io::Result<R>) -> io::Result<R> {
    let mut nl = Nftnl::open()?;
    let result = f(&mut nl);
    close_at_exit(nl);
    result
}

/// A rule some process just added, as the kernel announced it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct AddedRule {
    pub family: Family,
    pub table: String,
    pub chain: String,
    pub rule: KernelRule,
}

/// Listens to nf_tables change notifications, to learn the handles of the rules a
/// tool (`nft`, `iptables-restore`) adds: the kernel announces every committed rule,
/// handle included, before the tool's own transaction returns.
pub(crate) struct Monitor {
    socket: Socket,
}

impl Monitor {
    pub fn open() -> io::Result<Monitor> {
        let mut socket = Socket::new(NETLINK_NETFILTER)?;
        socket.bind_auto()?;
        // Room for a few thousand announcements; a lost one only costs a slower DEL.
        let _ = socket.set_rx_buf_sz(4usize << 20);
        socket.add_membership(NFNLGRP_NFTABLES)?;
        Ok(Monitor { socket })
    }

    /// Every rule added since [`Monitor::open`]. An overflowed queue (`ENOBUFS`) is an
    /// error: the list would be incomplete.
    pub fn added_rules(&self) -> io::Result<Vec<AddedRule>> {
        self.socket.set_non_blocking(true)?;
        let mut out = Vec::new();
        let mut buf: Vec<u8> = Vec::with_capacity(RECV_BUF);
        loop {
            buf.clear();
            let n = match self.socket.recv(&mut buf, 0) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(out),
                Err(e) => return Err(e),
            };
            if n > buf.len() {
                return Err(io::Error::other("netlink notification truncated"));
            }
            for (kind, _, body) in messages(&buf)? {
                if kind != (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWRULE {
                    continue;
                }
                let family = match body.first().map(|f| i32::from(*f)) {
                    Some(libc::NFPROTO_IPV4) => Family::V4,
                    Some(libc::NFPROTO_IPV6) => Family::V6,
                    _ => continue,
                };
                if let Some((table, chain, rule)) =
                    body.get(NFGENMSG_LEN..).and_then(parse_any_rule)
                {
                    out.push(AddedRule {
                        family,
                        table,
                        chain,
                        rule,
                    });
                }
            }
        }
    }
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// A nf_tables request: netlink header, nfgenmsg, then `attrs`.
fn message(msg: u16, flags: u16, seq: u32, family: u8, attrs: &[u8]) -> Vec<u8> {
    let kind = if (NFNL_MSG_BATCH_BEGIN..=NFNL_MSG_BATCH_END).contains(&msg) {
        msg
    } else {
        (NFNL_SUBSYS_NFTABLES << 8) | msg
    };
    let len = NLMSG_HDR_LEN + NFGENMSG_LEN + attrs.len();
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&(len as u32).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.push(family);
    out.push(0); // NFNETLINK_V0
    // res_id: batch delimiters name the subsystem there, other messages leave it zero.
    let res_id = if kind == msg { NFNL_SUBSYS_NFTABLES } else { 0 };
    out.extend_from_slice(&res_id.to_be_bytes());
    out.extend_from_slice(attrs);
    out
}

pub(crate) fn push_attr(out: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(payload);
    out.resize(out.len() + align4(len) - len, 0);
}

pub(crate) fn push_str_attr(out: &mut Vec<u8>, kind: u16, text: &str) {
    let mut payload = text.as_bytes().to_vec();
    payload.push(0);
    push_attr(out, kind, &payload);
}

/// nf_tables numbers are big-endian on the wire.
pub(crate) fn push_u32_attr(out: &mut Vec<u8>, kind: u16, value: u32) {
    push_attr(out, kind, &value.to_be_bytes());
}

/// A nested attribute whose content `build` appends.
pub(crate) fn push_nested(out: &mut Vec<u8>, kind: u16, build: impl FnOnce(&mut Vec<u8>)) {
    let mut inner = Vec::new();
    build(&mut inner);
    push_attr(out, kind | NLA_F_NESTED, &inner);
}

/// `(type, seq, body after the header)` of each message in a datagram.
fn messages(mut buf: &[u8]) -> io::Result<Vec<(u16, u32, &[u8])>> {
    let mut out = Vec::new();
    while buf.len() >= NLMSG_HDR_LEN {
        let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        let kind = u16::from_ne_bytes([buf[4], buf[5]]);
        let seq = u32::from_ne_bytes([buf[8], buf[9], buf[10], buf[11]]);
        if len < NLMSG_HDR_LEN || len > buf.len() {
            return Err(io::Error::other("malformed netlink message"));
        }
        out.push((kind, seq, &buf[NLMSG_HDR_LEN..len]));
        buf = &buf[align4(len).min(buf.len())..];
    }
    Ok(out)
}

fn error_code(body: &[u8]) -> io::Result<i32> {
    body.get(..4)
        .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| io::Error::other("short netlink error message"))
}

/// `(type, payload)` of each attribute.
fn attributes(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        let kind = u16::from_ne_bytes([buf[2], buf[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > buf.len() {
            return None;
        }
        let item = (kind, &buf[4..len]);
        buf = &buf[align4(len).min(buf.len())..];
        Some(item)
    })
}

fn find(buf: &[u8], kind: u16) -> Option<&[u8]> {
    attributes(buf).find(|(k, _)| *k == kind).map(|(_, p)| p)
}

fn c_string(bytes: &[u8]) -> Option<String> {
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    std::str::from_utf8(&bytes[..end]).ok().map(str::to_string)
}

/// The attributes of a NEWSETELEM/DELSETELEM request carrying one element.
fn push_element_list(out: &mut Vec<u8>, table: &str, set: &str, element: &Element) {
    push_str_attr(out, NFTA_SET_ELEM_LIST_TABLE, table);
    push_str_attr(out, NFTA_SET_ELEM_LIST_SET, set);
    push_nested(out, NFTA_SET_ELEM_LIST_ELEMENTS, |list| {
        push_nested(list, NFTA_LIST_ELEM, |e| {
            push_nested(e, NFTA_SET_ELEM_KEY, |k| {
                push_attr(k, NFTA_DATA_VALUE, &element.key)
            });
            if let Some(end) = &element.key_end {
                push_nested(e, NFTA_SET_ELEM_KEY_END, |k| {
                    push_attr(k, NFTA_DATA_VALUE, end)
                });
            }
            if let Some(data) = &element.data {
                push_nested(e, NFTA_SET_ELEM_DATA, |d| {
                    push_attr(d, NFTA_DATA_VALUE, data)
                });
            }
            if let Some(ms) = element.timeout_ms {
                push_attr(e, NFTA_SET_ELEM_TIMEOUT, &ms.to_be_bytes());
            }
            if let Some(comment) = &element.comment {
                let mut udata = vec![NFTNL_UDATA_SET_ELEM_COMMENT];
                // Callers keep comments short (see `sets`); the kernel caps user data
                // at 256 bytes and the TLV length is one byte.
                let text: Vec<u8> = comment.bytes().take(250).chain([0]).collect();
                udata.push(text.len() as u8);
                udata.extend_from_slice(&text);
                push_attr(e, NFTA_SET_ELEM_USERDATA, &udata);
            }
        });
    });
}

/// The elements of one NEWSETELEM payload (a dump part or a GET answer).
fn parse_elements(payload: &[u8]) -> impl Iterator<Item = Element> + '_ {
    find(payload, NFTA_SET_ELEM_LIST_ELEMENTS)
        .into_iter()
        .flat_map(attributes)
        .filter(|(kind, _)| *kind == NFTA_LIST_ELEM)
        .filter_map(|(_, elem)| parse_element(elem))
}

/// Decodes one element of a GETSETELEM reply.
fn parse_element(elem: &[u8]) -> Option<Element> {
    let value = |kind| find(elem, kind).and_then(|v| find(v, NFTA_DATA_VALUE));
    Some(Element {
        key: value(NFTA_SET_ELEM_KEY)?.to_vec(),
        key_end: value(NFTA_SET_ELEM_KEY_END).map(<[u8]>::to_vec),
        data: value(NFTA_SET_ELEM_DATA).map(<[u8]>::to_vec),
        comment: find(elem, NFTA_SET_ELEM_USERDATA).and_then(udata_comment),
        timeout_ms: find(elem, NFTA_SET_ELEM_TIMEOUT)
            .and_then(|t| <[u8; 8]>::try_from(t).ok())
            .map(u64::from_be_bytes),
    })
}

/// Decodes one NEWRULE payload, or `None` when it belongs to another table or chain.
fn parse_rule(payload: &[u8], table: &str, chain: &str) -> Option<KernelRule> {
    let (t, c, rule) = parse_any_rule(payload)?;
    (t == table && c == chain).then_some(rule)
}

/// Decodes one NEWRULE payload into its table, chain and rule.
fn parse_any_rule(payload: &[u8]) -> Option<(String, String, KernelRule)> {
    let mut rule = KernelRule::default();
    let (mut table, mut chain) = (None, None);
    for (kind, body) in attributes(payload) {
        match kind {
            NFTA_RULE_TABLE => table = c_string(body),
            NFTA_RULE_CHAIN => chain = c_string(body),
            NFTA_RULE_HANDLE => {
                rule.handle = u64::from_be_bytes(body.try_into().ok()?);
            }
            NFTA_RULE_EXPRESSIONS => {
                rule.exprs = body.to_vec();
                rule.jumps = jump_targets(body);
            }
            NFTA_RULE_USERDATA => rule.comment = udata_comment(body),
            _ => {}
        }
    }
    Some((table?, chain?, rule))
}

/// The expression names of a rule, in order (`fib`, `cmp`, `immediate`, ...).
pub(crate) fn expr_names(exprs: &[u8]) -> Vec<String> {
    attributes(exprs)
        .filter(|(kind, _)| *kind == NFTA_LIST_ELEM)
        .filter_map(|(_, elem)| find(elem, NFTA_EXPR_NAME).and_then(c_string))
        .collect()
}

/// Chains named by `jump`/`goto` verdicts of `immediate` expressions.
fn jump_targets(exprs: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    for (kind, elem) in attributes(exprs) {
        if kind != NFTA_LIST_ELEM {
            continue;
        }
        if find(elem, NFTA_EXPR_NAME).and_then(c_string).as_deref() != Some("immediate") {
            continue;
        }
        let verdict = find(elem, NFTA_EXPR_DATA)
            .and_then(|d| find(d, NFTA_IMMEDIATE_DATA))
            .and_then(|d| find(d, NFTA_DATA_VERDICT));
        let Some(verdict) = verdict else { continue };
        let code = find(verdict, NFTA_VERDICT_CODE)
            .and_then(|c| <[u8; 4]>::try_from(c).ok())
            .map(i32::from_be_bytes);
        if matches!(code, Some(NFT_JUMP | NFT_GOTO))
            && let Some(target) = find(verdict, NFTA_VERDICT_CHAIN).and_then(c_string)
        {
            out.push(target);
        }
    }
    out
}

/// The comment in libnftnl's user-data TLVs (`type u8, len u8, value`).
fn udata_comment(mut buf: &[u8]) -> Option<String> {
    while buf.len() >= 2 {
        let (kind, len) = (buf[0], buf[1] as usize);
        let value = buf.get(2..2 + len)?;
        // Set element comments use the same TLV type (NFTNL_UDATA_SET_ELEM_COMMENT).
        if kind == NFTNL_UDATA_RULE_COMMENT {
            return c_string(value);
        }
        buf = &buf[2 + len..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        push_attr(&mut out, kind, payload);
        out
    }

    fn nested(kind: u16, parts: &[Vec<u8>]) -> Vec<u8> {
        attr(kind | 0x8000, &parts.concat())
    }

    fn cstr(s: &str) -> Vec<u8> {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        v
    }

    fn jump_expr(code: i32, chain: &str) -> Vec<u8> {
        nested(
            NFTA_LIST_ELEM,
            &[
                attr(NFTA_EXPR_NAME, &cstr("immediate")),
                nested(
                    NFTA_EXPR_DATA,
                    &[
                        attr(1, &0u32.to_be_bytes()),
                        nested(
                            NFTA_IMMEDIATE_DATA,
                            &[nested(
                                NFTA_DATA_VERDICT,
                                &[
                                    attr(NFTA_VERDICT_CODE, &code.to_be_bytes()),
                                    attr(NFTA_VERDICT_CHAIN, &cstr(chain)),
                                ],
                            )],
                        ),
                    ],
                ),
            ],
        )
    }

    fn rule_payload(
        table: &str,
        chain: &str,
        handle: u64,
        exprs: &[Vec<u8>],
        udata: &[u8],
    ) -> Vec<u8> {
        [
            attr(NFTA_RULE_TABLE, &cstr(table)),
            attr(NFTA_RULE_CHAIN, &cstr(chain)),
            attr(NFTA_RULE_HANDLE, &handle.to_be_bytes()),
            nested(NFTA_RULE_EXPRESSIONS, exprs),
            attr(NFTA_RULE_USERDATA, udata),
        ]
        .concat()
    }

    #[test]
    fn decodes_handle_comment_and_jumps() {
        let counter = nested(NFTA_LIST_ELEM, &[attr(NFTA_EXPR_NAME, &cstr("counter"))]);
        let mut udata = vec![NFTNL_UDATA_RULE_COMMENT, 5];
        udata.extend_from_slice(b"c-12\0");
        let p = rule_payload(
            "nat",
            "CNI-HOSTPORT-DNAT",
            42,
            &[counter, jump_expr(NFT_JUMP, "CNI-DN-abc")],
            &udata,
        );
        let rule = parse_rule(&p, "nat", "CNI-HOSTPORT-DNAT").unwrap();
        assert_eq!(expr_names(&rule.exprs), ["counter", "immediate"]);
        assert_eq!(rule.handle, 42);
        assert_eq!(rule.comment.as_deref(), Some("c-12"));
        assert_eq!(rule.jumps, ["CNI-DN-abc"]);
        assert!(parse_rule(&p, "nat", "OUTPUT").is_none());
        assert!(parse_rule(&p, "filter", "CNI-HOSTPORT-DNAT").is_none());

        // An accept verdict names no chain; a goto does.
        let p = rule_payload(
            "t",
            "c",
            1,
            &[jump_expr(1, ""), jump_expr(NFT_GOTO, "X")],
            &[],
        );
        let rule = parse_rule(&p, "t", "c").unwrap();
        assert_eq!(rule.jumps, ["X"]);
        assert_eq!(rule.comment, None);
    }

    #[test]
    fn user_data_skips_other_tlvs() {
        let mut udata = vec![7, 2, 0xaa, 0xbb, NFTNL_UDATA_RULE_COMMENT, 3];
        udata.extend_from_slice(b"hi\0");
        assert_eq!(udata_comment(&udata).as_deref(), Some("hi"));
        assert_eq!(udata_comment(&[NFTNL_UDATA_RULE_COMMENT, 9, b'x']), None);
    }

    #[test]
    fn batch_messages_keep_their_own_type() {
        let m = message(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, 1, 0, &[]);
        assert_eq!(u16::from_ne_bytes([m[4], m[5]]), 16);
        assert_eq!(u16::from_be_bytes([m[18], m[19]]), NFNL_SUBSYS_NFTABLES);
        let m = message(NFT_MSG_DELRULE, NLM_F_REQUEST, 1, 2, &[]);
        assert_eq!(u16::from_ne_bytes([m[4], m[5]]), 0x0a08);
        assert_eq!(m[16], 2);
        assert_eq!(u16::from_be_bytes([m[18], m[19]]), 0);
    }
}
