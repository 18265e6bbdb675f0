//! /proc/sys access.
//!
//! `/proc/sys/net` resolves against the network namespace of the calling
//! thread when the file is opened, so to touch a container's sysctls enter
//! its netns first (`ns.run(|| sysctl::set(...))`).
//!
//! Keys are slash-separated paths below `/proc/sys`, e.g.
//! `net/ipv6/conf/eth0/accept_ra`. The dotted `sysctl(8)` form is not
//! accepted: interface names may contain dots (`cni0.100`).

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;

use crate::error::{Error, Result};

const ROOT: &str = "/proc/sys";

fn path_of(key: &str) -> Result<PathBuf> {
    // Keys embed interface names from the runtime (CNI_IFNAME): refuse
    // anything that could step outside /proc/sys.
    let bad = key.is_empty()
        || key.starts_with('/')
        || key.contains('\0')
        || key
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..");
    if bad {
        return Err(Error::InvalidSysctlKey { key: key.into() });
    }
    Ok(PathBuf::from(ROOT).join(key))
}

/// Reads a sysctl, without the trailing newline.
pub fn get(key: &str) -> Result<String> {
    let path = path_of(key)?;
    let mut s =
        std::fs::read_to_string(&path).map_err(|e| Error::io(format!("read sysctl {key}"), e))?;
    while s.ends_with('\n') {
        s.pop();
    }
    Ok(s)
}

/// Writes a sysctl.
pub fn set(key: &str, value: &str) -> Result<()> {
    let path = path_of(key)?;
    let op = || format!("set sysctl {key}={value}");
    // No O_CREAT: a missing interface must read as ENOENT, not EACCES.
    let mut f = OpenOptions::new()
        .write(true)
        .open(&path)
        .map_err(|e| Error::io(op(), e))?;
    // One write call: proc handlers parse each write separately.
    let n = f.write(value.as_bytes()).map_err(|e| Error::io(op(), e))?;
    if n != value.len() {
        return Err(Error::protocol(
            op(),
            format!("short write ({n} of {} bytes)", value.len()),
        ));
    }
    Ok(())
}

/// Writes a sysctl only when its current value differs; returns whether it
/// wrote. Spares a write (and the kernel's reaction to it, e.g. a forwarding
/// toggle resetting per-interface settings) when nothing changes.
pub fn ensure(key: &str, value: &str) -> Result<bool> {
    if get(key)? == value {
        return Ok(false);
    }
    set(key, value)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netns::testing::fresh;

    #[test]
    fn rejects_keys_that_escape_proc_sys() {
        for key in [
            "",
            "/etc/passwd",
            "net/../../etc/passwd",
            "net//x",
            "net/./x",
            "net/",
        ] {
            let e = get(key).unwrap_err();
            assert!(matches!(e, Error::InvalidSysctlKey { .. }), "{key}: {e}");
        }
    }

    #[test]
    fn reads_and_writes_in_the_entered_netns_only() {
        let host_forward = get("net/ipv4/ip_forward").unwrap();
        let ns = fresh();
        // Flip whatever the new netns starts with (hosts may make new
        // namespaces inherit the host's values).
        let flipped = ns
            .run(|| -> Result<&str> {
                let start = get("net/ipv4/ip_forward")?;
                let flipped = if start == "1" { "0" } else { "1" };
                assert!(ensure("net/ipv4/ip_forward", flipped)?);
                assert!(!ensure("net/ipv4/ip_forward", flipped)?);
                assert_eq!(get("net/ipv4/ip_forward")?, flipped);
                set("net/ipv6/conf/lo/accept_ra", "0")?;
                assert_eq!(get("net/ipv6/conf/lo/accept_ra")?, "0");
                Ok(flipped)
            })
            .unwrap();
        assert_eq!(get("net/ipv4/ip_forward").unwrap(), host_forward);
        ns.run(|| -> Result<()> {
            assert_eq!(get("net/ipv4/ip_forward")?, flipped);
            Ok(())
        })
        .unwrap();
    }

    #[test]
    fn missing_interface_is_not_found() {
        let ns = fresh();
        let e = ns
            .run(|| set("net/ipv6/conf/nosuchif0/accept_ra", "0"))
            .unwrap_err();
        assert!(e.is_not_found(), "{e}");
        assert!(
            e.to_string()
                .starts_with("set sysctl net/ipv6/conf/nosuchif0/accept_ra=0: "),
            "{e}"
        );
    }
}
