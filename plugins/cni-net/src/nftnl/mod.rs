//! A minimal netfilter netlink client (`NETLINK_NETFILTER`): nf_tables tables, chains,
//! rules and set elements, change notifications, and conntrack cleanup.
//!
//! Why: finding one container's rules among a thousand through `nft -j list` or
//! `iptables-save` means a process that prints, and a parser that reads, the whole
//! table. The kernel hands over just the one chain's rules in well under a millisecond,
//! and deleting by handle needs no process at all. Both reference layouts profit:
//! nftables rules are found by their comment, and iptables-nft's rules live in
//! nf_tables too (`table ip nat`), where the jumps to a container chain are immediate
//! verdicts.
//!
//! One [`Nftnl`] socket per call; methods are kernel verbs, a file per kernel object:
//!
//! ```ignore
//! let mut nl = Nftnl::open()?;
//! if !nl.chain_exists(Family::V4, "nat", &chain)? {
//!     nl.commit(Family::V4, "nat", &[Op::NewChain { chain }])?;
//! }
//! close_at_exit(nl);
//! ```
//!
//! Building rules' expressions is the caller's, from [`expr`]'s builders; this module
//! frames the messages and batches. Callers treat every error here as "use the tools
//! instead".

mod batch;
pub(crate) mod conntrack;
pub(crate) mod expr;
mod monitor;
mod rule;
mod set_elem;
mod table;
mod wire;

use std::io;

use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};

pub(crate) use batch::Op;
pub(crate) use monitor::{AddedRule, Monitor};
pub(crate) use rule::{KernelRule, expr_names};
pub(crate) use set_elem::Element;
use wire::{NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST};

/// The nf_tables subsystem of nfnetlink.
const NFNL_SUBSYS_NFTABLES: u16 = 10;
/// Batch delimiters, sent as they are (not as nf_tables messages).
const NFNL_MSG_BATCH_BEGIN: u16 = 16;
const NFNL_MSG_BATCH_END: u16 = 17;

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
        match wire::replies(&self.socket, seq, !dump, on_msg) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            result => result,
        }
    }
}

/// A nf_tables request: netlink header, nfgenmsg, then `attrs`.
fn message(msg: u16, flags: u16, seq: u32, family: u8, attrs: &[u8]) -> Vec<u8> {
    if (NFNL_MSG_BATCH_BEGIN..=NFNL_MSG_BATCH_END).contains(&msg) {
        // res_id: batch delimiters name the subsystem there.
        wire::message(msg, flags, seq, family, NFNL_SUBSYS_NFTABLES, attrs)
    } else {
        wire::message(
            (NFNL_SUBSYS_NFTABLES << 8) | msg,
            flags,
            seq,
            family,
            0,
            attrs,
        )
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_messages_keep_their_own_type() {
        let m = message(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, 1, 0, &[]);
        assert_eq!(u16::from_ne_bytes([m[4], m[5]]), 16);
        assert_eq!(u16::from_be_bytes([m[18], m[19]]), NFNL_SUBSYS_NFTABLES);
        let m = message(batch::NFT_MSG_DELRULE, NLM_F_REQUEST, 1, 2, &[]);
        assert_eq!(u16::from_ne_bytes([m[4], m[5]]), 0x0a08);
        assert_eq!(m[16], 2);
        assert_eq!(u16::from_be_bytes([m[18], m[19]]), 0);
    }
}
