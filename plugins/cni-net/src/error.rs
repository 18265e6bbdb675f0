//! The error type of the kernel plumbing (netns, netlink, sysctl).
//!
//! Every variant says what was attempted, so a plugin can print it as is:
//! `add 10.1.2.3/24 to eth0: File exists`. Callers that need to tolerate a
//! particular kernel answer (EEXIST on a concurrent bridge create, ENODEV on a
//! DEL of a link that is already gone) ask with [`Error::is_exists`],
//! [`Error::is_not_found`] or [`Error::errno`] instead of matching text.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;

use nix::errno::Errno;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A system call or a kernel netlink request failed.
    #[error("{op}: {}{}", errno_text(*errno), Detail(detail.as_deref()))]
    Os {
        /// What was attempted, e.g. `create bridge "cni0"`.
        op: String,
        errno: Errno,
        /// The kernel's extended-ack message, when it sent one.
        detail: Option<String>,
    },

    /// The kernel answered something this crate cannot make sense of.
    #[error("{op}: {msg}")]
    Protocol { op: String, msg: String },

    /// A netlink dump kept being interrupted by concurrent changes.
    #[error("{op}: dump interrupted {attempts} times in a row by concurrent changes")]
    DumpInterrupted { op: String, attempts: u32 },

    /// The netns path does not exist.
    #[error("netns path {path:?} does not exist")]
    NetnsNotFound { path: PathBuf },

    /// The path exists but is not a network namespace.
    #[error("{path:?} is not a network namespace{}", Detail(detail.as_deref()))]
    NotNetns {
        path: PathBuf,
        detail: Option<String>,
    },

    /// A sysctl key that would leave /proc/sys or is malformed.
    #[error("invalid sysctl key {key:?}")]
    InvalidSysctlKey { key: String },

    /// An IPv6 address failed duplicate address detection.
    #[error("link {link} has address {addr} in DADFAILED state")]
    DadFailed { link: String, addr: IpAddr },

    /// Addresses still tentative when the wait ran out.
    #[error("link {link} still has tentative addresses after {secs} seconds")]
    DadTimeout { link: String, secs: u64 },
}

/// The C library's text for an errno ("File exists"), without the
/// " (os error 17)" that `std::io::Error` appends.
pub fn errno_text(errno: Errno) -> String {
    let code = errno as i32;
    let full = std::io::Error::from_raw_os_error(code).to_string();
    match full.strip_suffix(&format!(" (os error {code})")) {
        Some(text) => text.to_string(),
        None => full,
    }
}

/// Renders an optional kernel detail as ` (detail)`.
struct Detail<'a>(Option<&'a str>);

impl fmt::Display for Detail<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(d) if !d.is_empty() => write!(f, " ({d})"),
            _ => Ok(()),
        }
    }
}

impl Error {
    pub(crate) fn os(op: impl Into<String>, errno: Errno) -> Self {
        Error::Os {
            op: op.into(),
            errno,
            detail: None,
        }
    }

    /// Wraps an `std::io::Error` from a syscall; non-OS errors become EIO.
    pub(crate) fn io(op: impl Into<String>, e: std::io::Error) -> Self {
        let errno = e.raw_os_error().map_or(Errno::EIO, Errno::from_raw);
        Error::os(op, errno)
    }

    pub(crate) fn protocol(op: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Protocol {
            op: op.into(),
            msg: msg.into(),
        }
    }

    /// The errno of a failed syscall or kernel request.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            Error::Os { errno, .. } => Some(*errno),
            _ => None,
        }
    }

    /// EEXIST: the link, address or route is already there.
    pub fn is_exists(&self) -> bool {
        self.errno() == Some(Errno::EEXIST)
    }

    /// The object the request names is not there: ENODEV (link), ENOENT,
    /// ESRCH (route), EADDRNOTAVAIL (address), or a missing netns path.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NetnsNotFound { .. })
            || matches!(
                self.errno(),
                Some(Errno::ENODEV | Errno::ENOENT | Errno::ESRCH | Errno::EADDRNOTAVAIL)
            )
    }

    /// EOPNOTSUPP: the kernel lacks the feature (e.g. bridge VLAN filtering).
    pub fn is_not_supported(&self) -> bool {
        self.errno() == Some(Errno::EOPNOTSUPP)
    }

    /// What was attempted, for errors that carry it.
    pub fn op(&self) -> Option<&str> {
        match self {
            Error::Os { op, .. }
            | Error::Protocol { op, .. }
            | Error::DumpInterrupted { op, .. } => Some(op),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_error_reads_like_a_sentence() {
        let e = Error::os("add 10.1.2.3/24 to eth0", Errno::EEXIST);
        assert_eq!(e.to_string(), "add 10.1.2.3/24 to eth0: File exists");
        assert!(e.is_exists());
        assert!(!e.is_not_found());

        let e = Error::Os {
            op: "create bridge \"cni0\"".into(),
            errno: Errno::EOPNOTSUPP,
            detail: Some("Unknown device type".into()),
        };
        assert_eq!(
            e.to_string(),
            "create bridge \"cni0\": Operation not supported (Unknown device type)"
        );
        assert!(e.is_not_supported());
    }

    #[test]
    fn not_found_covers_the_kernel_spellings() {
        for errno in [
            Errno::ENODEV,
            Errno::ENOENT,
            Errno::ESRCH,
            Errno::EADDRNOTAVAIL,
        ] {
            assert!(Error::os("x", errno).is_not_found(), "{errno}");
        }
        assert!(Error::NetnsNotFound { path: "/x".into() }.is_not_found());
    }
}
