//! Waiting for link changes without sleep-polling: the host port coming up
//! (ADD), the container interface going (DEL).
//!
//! The kernel updates a veth's operational state from a workqueue shortly
//! after its peer comes up, so a read right after bringing the container end
//! up can still say "lower-layer-down". Instead of re-reading on a timer (as
//! the reference does: 0, 50, 500, 1000, 1000 ms), subscribe to link
//! notifications first, read the state once, and if it is not up yet, sleep
//! in `poll` until the kernel announces the change.

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// `RTMGRP_LINK`: the link notification group, as a bind mask.
const RTMGRP_LINK: u32 = 1;
const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const IFLA_OPERSTATE: u16 = 16;
const IF_OPER_UP: u8 = 6;
const NLMSG_HDRLEN: usize = 16;
const IFINFOMSG_LEN: usize = 16;

/// The longest the reference waits in total.
pub const PORT_UP_TIMEOUT: Duration = Duration::from_millis(2550);

/// A subscription to link notifications of the netns it was opened in.
pub struct LinkEvents {
    sock: Socket,
    buf: Vec<u8>,
}

impl LinkEvents {
    pub fn subscribe() -> std::io::Result<LinkEvents> {
        let mut sock = Socket::new(NETLINK_ROUTE)?;
        sock.bind(&SocketAddr::new(0, RTMGRP_LINK))?;
        Ok(LinkEvents {
            sock,
            buf: Vec::with_capacity(16 * 1024),
        })
    }

    /// Waits until a notification says link `index` is operationally up;
    /// false when `timeout` passes first.
    pub fn wait_up(&mut self, index: u32, timeout: Duration) -> bool {
        self.wait_for(timeout, |buf| says_up(buf, index))
    }

    /// Waits until the kernel announces that link `index` is gone; false when
    /// `timeout` passes first.
    pub fn wait_gone(&mut self, index: u32, timeout: Duration) -> bool {
        self.wait_for(timeout, |buf| says_gone(buf, index))
    }

    /// Reads notifications until one datagram satisfies `seen`.
    fn wait_for(&mut self, timeout: Duration, seen: impl Fn(&[u8]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let mut pfd = libc::pollfd {
                fd: self.sock.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = left.as_millis().min(i32::MAX as u128) as i32;
            // SAFETY: one valid pollfd for the duration of the call.
            let n = unsafe { libc::poll(&mut pfd, 1, ms.max(1)) };
            if n < 0 {
                if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return false;
            }
            if n == 0 {
                return false;
            }
            self.buf.clear();
            match self.sock.recv(&mut self.buf, 0) {
                Ok(_) => {}
                // ENOBUFS: notifications were dropped; the caller re-reads.
                Err(_) => return false,
            }
            if seen(&self.buf) {
                return true;
            }
        }
    }
}

fn u16_at(b: &[u8], o: usize) -> Option<u16> {
    b.get(o..o + 2).map(|s| u16::from_ne_bytes([s[0], s[1]]))
}

fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    b.get(o..o + 4)
        .map(|s| u32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
}

/// The messages of a datagram of rtnetlink messages of type `kind` about link
/// `index`.
fn link_messages(buf: &[u8], kind: u16, index: u32) -> impl Iterator<Item = &[u8]> {
    let mut off = 0;
    std::iter::from_fn(move || {
        while let Some(len) = u32_at(buf, off).map(|l| l as usize) {
            if len < NLMSG_HDRLEN || off + len > buf.len() {
                return None;
            }
            let msg = &buf[off..off + len];
            off += (len + 3) & !3;
            if u16_at(msg, 4) == Some(kind) && u32_at(msg, NLMSG_HDRLEN + 4) == Some(index) {
                return Some(msg);
            }
        }
        None
    })
}

/// Whether a datagram has an RTM_DELLINK for `index`.
fn says_gone(buf: &[u8], index: u32) -> bool {
    link_messages(buf, RTM_DELLINK, index).next().is_some()
}

/// Whether a datagram of rtnetlink messages has an RTM_NEWLINK for `index`
/// with IFLA_OPERSTATE up.
fn says_up(buf: &[u8], index: u32) -> bool {
    for msg in link_messages(buf, RTM_NEWLINK, index) {
        let mut a = NLMSG_HDRLEN + IFINFOMSG_LEN;
        while let (Some(alen), Some(kind)) = (u16_at(msg, a), u16_at(msg, a + 2)) {
            let alen = usize::from(alen);
            if alen < 4 || a + alen > msg.len() {
                break;
            }
            if kind == IFLA_OPERSTATE {
                return msg.get(a + 4) == Some(&IF_OPER_UP);
            }
            a += (alen + 3) & !3;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn newlink(index: u32, oper: Option<u8>) -> Vec<u8> {
        let mut attrs = Vec::new();
        // IFLA_MTU first, so the parser has to skip an attribute.
        attrs.extend_from_slice(&8u16.to_ne_bytes());
        attrs.extend_from_slice(&4u16.to_ne_bytes());
        attrs.extend_from_slice(&1500u32.to_ne_bytes());
        if let Some(o) = oper {
            attrs.extend_from_slice(&5u16.to_ne_bytes());
            attrs.extend_from_slice(&IFLA_OPERSTATE.to_ne_bytes());
            attrs.extend_from_slice(&[o, 0, 0, 0]);
        }
        let len = (NLMSG_HDRLEN + IFINFOMSG_LEN + attrs.len()) as u32;
        let mut m = Vec::new();
        m.extend_from_slice(&len.to_ne_bytes());
        m.extend_from_slice(&RTM_NEWLINK.to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(&[0, 0, 1, 0]);
        m.extend_from_slice(&index.to_ne_bytes());
        m.extend_from_slice(&[0; 8]);
        m.extend(attrs);
        m
    }

    /// In a private netns of a test thread: a veth's host end becomes
    /// operationally up once its peer does, and the notification says so.
    #[test]
    fn wakes_up_when_the_port_comes_up() {
        std::thread::spawn(|| {
            // SAFETY: only this thread's netns changes; it exits afterwards.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                eprintln!("SKIP: unshare(CLONE_NEWNET) needs root");
                return;
            }
            let ip = |args: &[&str]| {
                let ok = std::process::Command::new("ip").args(args).status();
                assert!(ok.is_ok_and(|s| s.success()), "ip {args:?}");
            };
            ip(&["link", "add", "pw0", "type", "veth", "peer", "name", "pw1"]);
            ip(&["link", "set", "pw0", "up"]);
            // /sys shows the process's netns, not this thread's: ask `ip`.
            let out = std::process::Command::new("ip")
                .args(["-o", "link", "show", "pw0"])
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let index: u32 = text.split(':').next().unwrap().trim().parse().unwrap();
            let mut events = LinkEvents::subscribe().unwrap();
            assert!(
                !events.wait_up(index, Duration::from_millis(100)),
                "peer still down"
            );
            ip(&["link", "set", "pw1", "up"]);
            assert!(events.wait_up(index, Duration::from_secs(2)));
        })
        .join()
        .unwrap();
    }

    #[test]
    fn recognises_the_removal_of_the_right_link() {
        let mut del = newlink(7, None);
        del[4..6].copy_from_slice(&RTM_DELLINK.to_ne_bytes());
        assert!(says_gone(&del, 7));
        assert!(!says_gone(&del, 8));
        assert!(!says_gone(&newlink(7, Some(IF_OPER_UP)), 7));
        // A removal after another link's news in the same datagram.
        let both = [newlink(3, Some(IF_OPER_UP)), del].concat();
        assert!(says_gone(&both, 7));
    }

    #[test]
    fn recognises_oper_up_of_the_right_link() {
        assert!(says_up(&newlink(7, Some(IF_OPER_UP)), 7));
        assert!(!says_up(&newlink(7, Some(IF_OPER_UP)), 8));
        assert!(!says_up(&newlink(7, Some(3)), 7));
        assert!(!says_up(&newlink(7, None), 7));
        let mut two = newlink(5, Some(2));
        two.extend(newlink(7, Some(IF_OPER_UP)));
        assert!(says_up(&two, 7));
        assert!(!says_up(&two[..10], 7), "truncated input is no");
    }
}
