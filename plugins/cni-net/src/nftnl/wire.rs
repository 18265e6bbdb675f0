//! The one copy of netfilter netlink framing: the netlink header and `nfgenmsg`
//! around a request, the messages of a datagram, and the attribute TLVs inside them.
//! Shared by nf_tables ([`super::Nftnl`]) and ctnetlink ([`super::conntrack`]).

use std::io;

use netlink_packet_core::{NLA_F_NESTED, NLA_TYPE_MASK, NLMSG_DONE, NLMSG_ERROR};
use netlink_sys::Socket;

pub(crate) use netlink_packet_core::{
    NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST,
};

/// `struct nlmsghdr`.
pub(crate) const NLMSG_HDR_LEN: usize = 16;
/// `struct nfgenmsg`: family, version, resource id.
pub(crate) const NFGENMSG_LEN: usize = 4;

/// Generous: one dump datagram is at most a few pages, and a truncated read is an error.
pub(crate) const RECV_BUF: usize = 1 << 17;

pub(crate) fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// A netfilter request: netlink header of type `kind`, nfgenmsg (`family`, version 0,
/// `res_id`), then `attrs` verbatim.
pub(crate) fn message(
    kind: u16,
    flags: u16,
    seq: u32,
    family: u8,
    res_id: u16,
    attrs: &[u8],
) -> Vec<u8> {
    let len = NLMSG_HDR_LEN + NFGENMSG_LEN + attrs.len();
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&(len as u32).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.push(family);
    out.push(0); // NFNETLINK_V0
    out.extend_from_slice(&res_id.to_be_bytes());
    out.extend_from_slice(attrs);
    out
}

/// `(type, seq, body after the header)` of each message in a datagram.
pub(crate) fn messages(mut buf: &[u8]) -> io::Result<Vec<(u16, u32, &[u8])>> {
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

/// The (negative errno or zero) code of an `NLMSG_ERROR` body.
pub(crate) fn error_code(body: &[u8]) -> io::Result<i32> {
    body.get(..4)
        .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| io::Error::other("short netlink error message"))
}

/// Reads the replies to `seq` on `socket`, handing each data payload (after the
/// nfgenmsg) to `on_msg`, until DONE or (for `ack`) the acknowledgement. A netlink
/// error becomes an `io::Error` with its errno.
pub(crate) fn replies(
    socket: &Socket,
    seq: u32,
    ack: bool,
    mut on_msg: impl FnMut(&[u8]),
) -> io::Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(RECV_BUF);
    loop {
        buf.clear();
        let n = socket.recv(&mut buf, 0)?;
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

/// `(type, payload, whole attribute incl. header and padding)` of each attribute.
pub(crate) fn attributes_whole(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8], &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        let kind = u16::from_ne_bytes([buf[2], buf[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > buf.len() {
            return None;
        }
        let whole = align4(len).min(buf.len());
        let item = (kind, &buf[4..len], &buf[..whole]);
        buf = &buf[whole..];
        Some(item)
    })
}

/// `(type, payload)` of each attribute.
pub(crate) fn attributes(buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    attributes_whole(buf).map(|(kind, payload, _)| (kind, payload))
}

/// The payload of the first attribute of type `kind`.
pub(crate) fn find(buf: &[u8], kind: u16) -> Option<&[u8]> {
    attributes(buf).find(|(k, _)| *k == kind).map(|(_, p)| p)
}

/// A NUL-terminated string attribute.
pub(crate) fn c_string(bytes: &[u8]) -> Option<String> {
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    std::str::from_utf8(&bytes[..end]).ok().map(str::to_string)
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

/// netfilter numbers are big-endian on the wire.
pub(crate) fn push_u32_attr(out: &mut Vec<u8>, kind: u16, value: u32) {
    push_attr(out, kind, &value.to_be_bytes());
}

/// A nested attribute whose content `build` appends.
pub(crate) fn push_nested(out: &mut Vec<u8>, kind: u16, build: impl FnOnce(&mut Vec<u8>)) {
    let mut inner = Vec::new();
    build(&mut inner);
    push_attr(out, kind | NLA_F_NESTED, &inner);
}

#[cfg(test)]
pub(crate) mod testing {
    //! Hand-made attributes for the decoders' tests.
    use super::push_attr;

    pub(crate) fn attr(kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        push_attr(&mut out, kind, payload);
        out
    }

    pub(crate) fn nested(kind: u16, parts: &[Vec<u8>]) -> Vec<u8> {
        attr(kind | 0x8000, &parts.concat())
    }

    pub(crate) fn cstr(s: &str) -> Vec<u8> {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_padded_and_read_back() {
        let mut buf = Vec::new();
        push_str_attr(&mut buf, 1, "abc");
        push_u32_attr(&mut buf, 2, 7);
        assert_eq!(buf.len(), 8 + 8);
        assert_eq!(find(&buf, 1).and_then(c_string).as_deref(), Some("abc"));
        assert_eq!(find(&buf, 2), Some(&7u32.to_be_bytes()[..]));
        let whole: Vec<usize> = attributes_whole(&buf).map(|(_, _, w)| w.len()).collect();
        assert_eq!(whole, [8, 8]);
    }
}
