//! nf_tables change notifications (`NFNLGRP_NFTABLES`): the rules other processes add.

use std::io;

use netlink_sys::{Socket, protocols::NETLINK_NETFILTER};

use super::NFNL_SUBSYS_NFTABLES;
use super::rule::{KernelRule, NFT_MSG_NEWRULE, parse_any_rule};
use super::wire::{NFGENMSG_LEN, RECV_BUF, messages};
use crate::Family;

/// Multicast group of nf_tables change notifications.
const NFNLGRP_NFTABLES: u32 = 7;

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
