//! The synchronous rtnetlink socket: request/ack, get and dump exchanges.

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_ACK_TLVS, NLM_F_CAPPED, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST,
    NLMSG_DONE, NLMSG_ERROR, NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload,
    NlaBuffer, NlasIterator,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use nix::errno::Errno;

use crate::error::{Error, Result};
use crate::netns::NetNs;

/// How often a dump is retried when the kernel flags it as interrupted by a
/// concurrent change (`NLM_F_DUMP_INTR`), like the reference's netlinksafe.
pub const DUMP_ATTEMPTS: u32 = 5;

/// `NLMSGERR_ATTR_MSG`: the human-readable extended-ack string.
const NLMSGERR_ATTR_MSG: u16 = 1;

const NLMSG_HDRLEN: usize = 16;

/// A NETLINK_ROUTE socket bound to the network namespace it was opened in.
///
/// The netns binding is fixed at creation: open the container's socket
/// inside `ns.run(Netlink::open)` (or [`Netlink::open_in`]) and use it from
/// anywhere afterwards. All calls block until the kernel answers.
///
/// Methods are named after kernel verbs and live in the `link`, `addr`,
/// `route` and `bridge` modules.
pub struct Netlink {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl std::fmt::Debug for Netlink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Netlink")
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

/// One finished exchange: the data messages and whether the kernel flagged
/// the dump as inconsistent.
struct Reply {
    msgs: Vec<RouteNetlinkMessage>,
    interrupted: bool,
}

impl Netlink {
    /// Opens a socket in the calling thread's current network namespace.
    pub fn open() -> Result<Netlink> {
        let op = "open rtnetlink socket";
        let mut sock = Socket::new(NETLINK_ROUTE).map_err(|e| Error::io(op, e))?;
        sock.bind_auto().map_err(|e| Error::io(op, e))?;
        // Both are optional niceties: kernel error text and shorter acks.
        let _ = sock.set_ext_ack(true);
        let _ = sock.set_cap_ack(true);
        Ok(Netlink {
            sock,
            seq: 0,
            buf: Vec::with_capacity(32 * 1024),
        })
    }

    /// Opens a socket inside `ns`; the calling thread is back in its own
    /// netns when this returns.
    pub fn open_in(ns: &NetNs) -> Result<Netlink> {
        ns.run(Netlink::open)
    }

    /// Sends a change request and waits for the kernel's ack.
    /// `flags` adds to `NLM_F_REQUEST | NLM_F_ACK` (e.g. `NLM_F_CREATE`).
    pub(crate) fn ack(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
        op: impl FnOnce() -> String,
    ) -> Result<()> {
        self.exchange(msg, NLM_F_ACK | flags)
            .map_err(|e| e.with_op(op()))?;
        Ok(())
    }

    /// Sends a single-object get (e.g. RTM_GETLINK by name) and returns the
    /// kernel's answer; `Ok(None)` when the object does not exist.
    pub(crate) fn get(
        &mut self,
        msg: RouteNetlinkMessage,
        op: impl FnOnce() -> String,
    ) -> Result<Option<RouteNetlinkMessage>> {
        match self.exchange(msg, NLM_F_ACK) {
            Ok(reply) => Ok(reply.msgs.into_iter().next()),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e.with_op(op())),
        }
    }

    /// Dumps a table, retrying when a concurrent change interrupted it.
    pub(crate) fn dump(
        &mut self,
        msg: RouteNetlinkMessage,
        op: impl Fn() -> String,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        for _ in 0..DUMP_ATTEMPTS {
            let reply = self
                .exchange(msg.clone(), NLM_F_DUMP)
                .map_err(|e| e.with_op(op()))?;
            if !reply.interrupted {
                return Ok(reply.msgs);
            }
        }
        Err(Error::DumpInterrupted {
            op: op(),
            attempts: DUMP_ATTEMPTS,
        })
    }

    fn send(&mut self, msg: RouteNetlinkMessage, flags: u16) -> Result<u32, OpError> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        packet.finalize();
        let mut out = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut out);
        self.send_bytes(&out)
    }

    /// Sends a message `netlink-packet-route` has no type for: a bare
    /// `nlmsghdr` in front of `payload`.
    fn send_raw(&mut self, msg_type: u16, flags: u16, payload: &[u8]) -> Result<u32, OpError> {
        self.seq = self.seq.wrapping_add(1);
        let len = u32::try_from(NLMSG_HDRLEN + payload.len())
            .map_err(|_| OpError::protocol("request too large"))?;
        let mut out = Vec::with_capacity(NLMSG_HDRLEN + payload.len());
        out.extend_from_slice(&len.to_ne_bytes());
        out.extend_from_slice(&msg_type.to_ne_bytes());
        out.extend_from_slice(&(NLM_F_REQUEST | flags).to_ne_bytes());
        out.extend_from_slice(&self.seq.to_ne_bytes());
        // nlmsg_pid 0: the kernel fills in this socket's port.
        out.extend_from_slice(&0u32.to_ne_bytes());
        out.extend_from_slice(payload);
        self.send_bytes(&out)
    }

    fn send_bytes(&mut self, out: &[u8]) -> Result<u32, OpError> {
        let kernel = SocketAddr::new(0, 0);
        loop {
            match self.sock.send_to(out, &kernel, 0) {
                Ok(_) => return Ok(self.seq),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => return Err(OpError::io("send", e)),
            }
        }
    }

    /// Sends a single-object get `netlink-packet-route` cannot express and
    /// returns the answer's type and payload (after the `nlmsghdr`);
    /// `Ok(None)` when the object does not exist.
    pub(crate) fn get_raw(
        &mut self,
        msg_type: u16,
        payload: &[u8],
        op: impl FnOnce() -> String,
    ) -> Result<Option<(u16, Vec<u8>)>> {
        let result = self.send_raw(msg_type, NLM_F_ACK, payload).and_then(|seq| {
            let mut first = None;
            self.receive(seq, |mtype, msg| {
                if first.is_none() {
                    first = Some((mtype, msg[NLMSG_HDRLEN..].to_vec()));
                }
                Ok(())
            })?;
            Ok(first)
        });
        match result {
            Ok(first) => Ok(first),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e.with_op(op())),
        }
    }

    /// Receives one whole datagram into `self.buf`, sized by a peek so large
    /// link dumps are never truncated.
    fn recv_datagram(&mut self) -> Result<(), OpError> {
        loop {
            self.buf.clear();
            let peeked = match self
                .sock
                .recv(&mut self.buf, libc::MSG_PEEK | libc::MSG_TRUNC)
            {
                Ok(n) => n,
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => return Err(OpError::io("receive", e)),
            };
            self.buf.clear();
            self.buf.reserve(peeked);
            match self.sock.recv(&mut self.buf, 0) {
                Ok(_) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => return Err(OpError::io("receive", e)),
            }
        }
    }

    fn exchange(&mut self, msg: RouteNetlinkMessage, flags: u16) -> Result<Reply, OpError> {
        let seq = self.send(msg, flags)?;
        let mut msgs = Vec::new();
        let interrupted = self.receive(seq, |_, bytes| {
            match NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes) {
                Ok(m) => {
                    if let NetlinkPayload::InnerMessage(inner) = m.payload {
                        msgs.push(inner);
                    }
                    Ok(())
                }
                // One object with an attribute this crate cannot parse
                // (an exotic link type) must not hide all the others.
                Err(_) if flags & NLM_F_DUMP == NLM_F_DUMP => Ok(()),
                Err(e) => Err(OpError::protocol(format!("cannot parse reply: {e}"))),
            }
        })?;
        Ok(Reply { msgs, interrupted })
    }

    /// Reads the answers to request `seq` until its ack or `NLMSG_DONE`,
    /// handing each data message (header included) to `on_msg`; returns
    /// whether the kernel flagged the dump as interrupted.
    fn receive(
        &mut self,
        seq: u32,
        mut on_msg: impl FnMut(u16, &[u8]) -> Result<(), OpError>,
    ) -> Result<bool, OpError> {
        let mut interrupted = false;
        loop {
            self.recv_datagram()?;
            let mut off = 0;
            while off < self.buf.len() {
                let bytes = &self.buf[off..];
                let nl = NetlinkBuffer::new_checked(bytes)
                    .map_err(|e| OpError::protocol(format!("malformed reply: {e}")))?;
                let len = nl.length() as usize;
                let (mtype, mflags, mseq) = (nl.message_type(), nl.flags(), nl.sequence_number());
                off += align4(len);
                // Leftovers of an earlier exchange that ended in an error.
                if mseq != seq {
                    continue;
                }
                if mflags & NLM_F_DUMP_INTR != 0 {
                    interrupted = true;
                }
                let payload = &bytes[NLMSG_HDRLEN..len];
                match mtype {
                    NLMSG_ERROR => {
                        let code = read_i32(payload)
                            .ok_or_else(|| OpError::protocol("short NLMSG_ERROR"))?;
                        if code == 0 {
                            return Ok(interrupted);
                        }
                        let tlvs = ack_tlvs(&payload[4..], mflags);
                        return Err(OpError::kernel(code, tlvs));
                    }
                    NLMSG_DONE => {
                        let code = read_i32(payload).unwrap_or(0);
                        if code < 0 {
                            let tlvs = if mflags & NLM_F_ACK_TLVS != 0 {
                                payload.get(4..)
                            } else {
                                None
                            };
                            return Err(OpError::kernel(code, tlvs));
                        }
                        return Ok(interrupted);
                    }
                    _ => {}
                }
                on_msg(mtype, &bytes[..len])?;
                // A single-object get without NLM_F_ACK would end here; ours
                // always carries NLM_F_ACK, so keep reading until the ack.
            }
        }
    }
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

fn read_i32(b: &[u8]) -> Option<i32> {
    Some(i32::from_ne_bytes(b.get(..4)?.try_into().ok()?))
}

/// The extended-ack TLVs that follow the echoed request in an NLMSG_ERROR.
fn ack_tlvs(echoed: &[u8], flags: u16) -> Option<&[u8]> {
    if flags & NLM_F_ACK_TLVS == 0 {
        return None;
    }
    let skip = if flags & NLM_F_CAPPED != 0 {
        NLMSG_HDRLEN
    } else {
        align4(u32::from_ne_bytes(echoed.get(..4)?.try_into().ok()?) as usize)
    };
    echoed.get(skip..)
}

fn extack_message(tlvs: &[u8]) -> Option<String> {
    for nla in NlasIterator::new(tlvs) {
        let nla: NlaBuffer<&[u8]> = nla.ok()?;
        if nla.kind() == NLMSGERR_ATTR_MSG {
            let v = nla.value();
            let end = v.iter().position(|&b| b == 0).unwrap_or(v.len());
            let s = String::from_utf8_lossy(&v[..end]).trim().to_string();
            return (!s.is_empty()).then_some(s);
        }
    }
    None
}

/// An exchange failure before the caller's description is attached.
enum OpError {
    Os {
        errno: Errno,
        detail: Option<String>,
    },
    Protocol(String),
}

impl OpError {
    fn io(what: &str, e: std::io::Error) -> OpError {
        let errno = e.raw_os_error().map_or(Errno::EIO, Errno::from_raw);
        OpError::Os {
            errno,
            detail: Some(format!("netlink {what}")),
        }
    }

    fn protocol(msg: impl Into<String>) -> OpError {
        OpError::Protocol(msg.into())
    }

    fn kernel(code: i32, tlvs: Option<&[u8]>) -> OpError {
        OpError::Os {
            errno: Errno::from_raw(code.saturating_abs()),
            detail: tlvs.and_then(extack_message),
        }
    }

    fn is_not_found(&self) -> bool {
        matches!(
            self,
            OpError::Os {
                errno: Errno::ENODEV | Errno::ENOENT,
                ..
            }
        )
    }

    fn with_op(self, op: String) -> Error {
        match self {
            OpError::Os { errno, detail } => Error::Os { op, errno, detail },
            OpError::Protocol(msg) => Error::Protocol { op, msg },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extack_message_is_read_from_tlvs() {
        // NLA: len 12, type 1, "bad mtu\0" (8 bytes incl. NUL)
        let mut tlv = vec![12u8, 0, 1, 0];
        tlv.extend_from_slice(b"bad mtu\0");
        assert_eq!(extack_message(&tlv).as_deref(), Some("bad mtu"));

        let mut echoed = vec![0u8; NLMSG_HDRLEN];
        echoed.extend_from_slice(&tlv);
        let tlvs = ack_tlvs(&echoed, NLM_F_ACK_TLVS | NLM_F_CAPPED).unwrap();
        assert_eq!(extack_message(tlvs).as_deref(), Some("bad mtu"));
        assert!(ack_tlvs(&echoed, 0).is_none());
    }

    #[test]
    fn opens_in_another_netns() {
        let ns = crate::netns::testing::fresh();
        let _nl = Netlink::open_in(&ns).unwrap();
        assert!(ns.is_current().map(|c| !c).unwrap());
    }
}
