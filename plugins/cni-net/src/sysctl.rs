//! /proc/sys access.
//!
//! `/proc/sys/net` resolves against the network namespace of the calling
//! thread when the file is opened, so to touch a container's sysctls enter
//! its netns first (`ns.run(|| sysctl::set(...))`).
//!
//! Keys are slash-separated paths below `/proc/sys`, e.g.
//! `net/ipv6/conf/eth0/accept_ra`. The dotted `sysctl(8)` form is not
//! accepted: interface names may contain dots (`cni0.100`).
//!
//! # Why files below `/proc/sys/net` are opened through cached directories
//!
//! `/proc/sys/net` itself is one directory shared by all namespaces, but each
//! of its children (`ipv4`, `ipv6`, `core`, ...) exists once per netns: all
//! those dentries have the same parent and name, so they sit in one dcache
//! hash bucket, and a path walk compares against them one by one, each
//! comparison asking whether that entry belongs to the caller's netns. With a
//! thousand pods a lookup of `/proc/sys/net/ipv4` costs ~150 µs from the host
//! netns (its entry is the oldest, at the end of the chain) and 0.3-1 ms the
//! first time in a new netns (a miss walks the chain several times); a new
//! netns's entries go to the front, so later lookups there are cheap.
//!
//! So the first use of `net/<dir>` in a netns opens that directory once and
//! keeps the fd; later keys below it are opened with `openat`, which never
//! looks at the shared bucket again. The first use per process and netns
//! still pays the walk. Such a directory fd stays bound to the
//! netns it was opened in, whatever netns the thread is in later, so the
//! cache is keyed by the identity of the thread's current netns.
//!
//! The cache does not keep namespaces alive. A dead netns's number can be
//! handed to a new one; a directory of the dead one then fails every lookup
//! and `fstat` with ENOENT, which is how a stale entry is told apart from a
//! key that is really missing.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use nix::fcntl::{OFlag, openat};
use nix::sys::stat::{Mode, fstat};

use crate::error::{Error, Result};
use crate::netns::THREAD_SELF_NETNS;

const ROOT: &str = "/proc/sys";

/// More than one plugin run needs (host and container, ipv4 and ipv6), small
/// enough that a linear scan is the fastest lookup.
const CACHE_SLOTS: usize = 16;

/// (st_dev, st_ino) of a netns file.
type NetnsId = (u64, u64);

struct CachedDir {
    netns: NetnsId,
    /// The component below `net/`: `ipv4`, `ipv6`, `core`, ...
    name: String,
    dir: Arc<File>,
}

static CACHE: Mutex<Vec<CachedDir>> = Mutex::new(Vec::new());

fn check_key(key: &str) -> Result<()> {
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
    Ok(())
}

/// Splits `net/<dir>/<rest>` into `<dir>` and `<rest>`; other keys are not
/// per-netns directories worth caching.
fn split_net(key: &str) -> Option<(&str, &str)> {
    let below = key.strip_prefix("net/")?;
    below.split_once('/')
}

fn current_netns() -> Option<NetnsId> {
    // A stat of the nsfs link walks /proc/thread-self, not /proc/sys.
    let md = std::fs::metadata(THREAD_SELF_NETNS).ok()?;
    Some((md.dev(), md.ino()))
}

fn cached(netns: NetnsId, name: &str) -> Option<Arc<File>> {
    let cache = CACHE.lock().unwrap_or_else(PoisonError::into_inner);
    cache
        .iter()
        .find(|c| c.netns == netns && c.name == name)
        .map(|c| Arc::clone(&c.dir))
}

fn remember(netns: NetnsId, name: &str, dir: File) -> Arc<File> {
    let dir = Arc::new(dir);
    let mut cache = CACHE.lock().unwrap_or_else(PoisonError::into_inner);
    cache.retain(|c| !(c.netns == netns && c.name == name));
    if cache.len() >= CACHE_SLOTS {
        cache.remove(0);
    }
    cache.push(CachedDir {
        netns,
        name: name.into(),
        dir: Arc::clone(&dir),
    });
    dir
}

fn open_plain(key: &str, write: bool) -> io::Result<File> {
    // No O_CREAT: a missing interface must read as ENOENT, not EACCES.
    OpenOptions::new()
        .read(!write)
        .write(write)
        .open(PathBuf::from(ROOT).join(key))
}

fn open_below(dir: &File, rest: &str, write: bool) -> io::Result<File> {
    let access = if write {
        OFlag::O_WRONLY
    } else {
        OFlag::O_RDONLY
    };
    let fd = openat(dir.as_fd(), rest, access | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(io::Error::from)?;
    Ok(File::from(fd))
}

/// Opens a checked key, through the calling thread's netns's cached
/// `net/<dir>` when the key lies below one.
fn open(key: &str, write: bool) -> io::Result<File> {
    let Some((name, rest)) = split_net(key) else {
        return open_plain(key, write);
    };
    // Without /proc/thread-self (kernels before 3.17) the netns cannot be
    // told apart: no caching then.
    let Some(netns) = current_netns() else {
        return open_plain(key, write);
    };
    if let Some(dir) = cached(netns, name) {
        match open_below(&dir, rest, write) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                // A live directory answers fstat: the key is really missing.
                if fstat(dir.as_fd()).is_ok() {
                    return Err(e);
                }
                // The netns this was opened in is gone and its number reused.
            }
            other => return other,
        }
    }
    let dir = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
        .open(PathBuf::from(ROOT).join("net").join(name))?;
    let dir = remember(netns, name, dir);
    open_below(&dir, rest, write)
}

/// Reads a sysctl, without the trailing newline.
pub fn get(key: &str) -> Result<String> {
    check_key(key)?;
    let op = || format!("read sysctl {key}");
    let mut s = String::new();
    open(key, false)
        .and_then(|mut f| f.read_to_string(&mut s))
        .map_err(|e| Error::io(op(), e))?;
    while s.ends_with('\n') {
        s.pop();
    }
    Ok(s)
}

/// Writes a sysctl.
pub fn set(key: &str, value: &str) -> Result<()> {
    check_key(key)?;
    let op = || format!("set sysctl {key}={value}");
    let mut f = open(key, true).map_err(|e| Error::io(op(), e))?;
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
        // Again, now that net/ipv6 of this netns is cached and alive.
        let e = ns
            .run(|| get("net/ipv6/conf/nosuchif0/accept_ra"))
            .unwrap_err();
        assert!(e.is_not_found(), "{e}");
        assert!(
            e.to_string()
                .starts_with("read sysctl net/ipv6/conf/nosuchif0/accept_ra: "),
            "{e}"
        );
    }

    /// What /proc/sys shows to a plain path walk, bypassing the cache.
    fn uncached(key: &str) -> String {
        let s = std::fs::read_to_string(PathBuf::from(ROOT).join(key)).unwrap();
        s.trim_end().to_string()
    }

    #[test]
    fn per_device_values_do_not_bleed_between_namespaces() {
        const KEY: &str = "net/ipv4/conf/lo/arp_notify";
        let host = get(KEY).unwrap();
        let (a, b) = (fresh(), fresh());
        // Alternate several times so each netns is served from its cached
        // directory after the first round.
        for round in 0..4 {
            let (va, vb) = if round % 2 == 0 {
                ("1", "0")
            } else {
                ("0", "1")
            };
            a.run(|| set(KEY, va)).unwrap();
            b.run(|| set(KEY, vb)).unwrap();
            a.run(|| -> Result<()> {
                assert_eq!(get(KEY)?, va, "round {round}");
                assert_eq!(uncached(KEY), va, "round {round}");
                let id = current_netns().unwrap();
                assert!(cached(id, "ipv4").is_some(), "net/ipv4 of a not cached");
                Ok(())
            })
            .unwrap();
            b.run(|| -> Result<()> {
                assert_eq!(get(KEY)?, vb, "round {round}");
                assert_eq!(uncached(KEY), vb, "round {round}");
                Ok(())
            })
            .unwrap();
        }
        assert_eq!(get(KEY).unwrap(), host);
        assert_eq!(uncached(KEY), host);
    }

    #[test]
    fn stale_directory_of_a_dead_netns_is_replaced() {
        // A netns number can be reused once its netns is gone: plant the
        // net/ipv4 directory of a dead netns under the key of a live one.
        let dead = fresh();
        let dir = dead
            .run(|| -> Result<File> {
                set("net/ipv4/conf/lo/arp_notify", "1")?;
                Ok(File::open("/proc/sys/net/ipv4").unwrap())
            })
            .unwrap();
        drop(dead);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while fstat(dir.as_fd()).is_ok() {
            assert!(std::time::Instant::now() < deadline, "netns never died");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let live = fresh();
        live.run(|| -> Result<()> {
            set("net/ipv4/conf/lo/arp_notify", "0")?;
            let id = current_netns().unwrap();
            remember(id, "ipv4", dir);
            assert_eq!(get("net/ipv4/conf/lo/arp_notify")?, "0");
            let now = cached(id, "ipv4").unwrap();
            assert!(fstat(now.as_fd()).is_ok(), "stale entry kept");
            Ok(())
        })
        .unwrap();
    }

    /// Cost of a sysctl read with many namespaces on the node:
    /// `cargo test -p cni-net --release sysctl::tests::bench -- --ignored --nocapture`.
    #[test]
    #[ignore = "creates 1000 namespaces; a measurement, not a check"]
    fn bench_with_many_namespaces() {
        const KEY: &str = "net/ipv4/conf/lo/arp_notify";
        const ROUNDS: u32 = 200;
        let count = std::env::var("SYSCTL_BENCH_NETNS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(1000usize);
        // Handles keep the namespaces alive; dropping them (also on panic)
        // removes them all.
        let mut many = Vec::with_capacity(count);
        for _ in 0..count {
            let ns = fresh();
            // As a pod would: its net/ipv4 and net/ipv6 entries exist.
            ns.run(|| -> Result<()> {
                open_plain("net/ipv4/conf/lo/arp_notify", false).unwrap();
                open_plain("net/ipv6/conf/lo/accept_ra", false).unwrap();
                Ok(())
            })
            .unwrap();
            many.push(ns);
        }
        let time = |what: &str, f: &dyn Fn()| {
            let t = std::time::Instant::now();
            for _ in 0..ROUNDS {
                f();
            }
            let us = t.elapsed().as_secs_f64() * 1e6 / f64::from(ROUNDS);
            eprintln!("{count} netns, {what}: {us:.1} us/read");
        };
        let plain = || {
            let mut s = String::new();
            open_plain(KEY, false)
                .unwrap()
                .read_to_string(&mut s)
                .unwrap();
        };
        let cached = || {
            get(KEY).unwrap();
        };
        time("netns identity (stat of the nsfs link)", &|| {
            current_netns().unwrap();
        });
        time("host netns, path walk", &plain);
        time("host netns, cached dir", &cached);
        let first = |label: &str, f: &dyn Fn()| {
            let ns = fresh();
            ns.run(|| -> Result<()> {
                let t = std::time::Instant::now();
                f();
                let us = t.elapsed().as_secs_f64() * 1e6;
                eprintln!("{count} netns, {label}: {us:.1} us");
                Ok(())
            })
            .unwrap();
            ns
        };
        let ns = first("first read in a new netns, path walk", &plain);
        ns.run(|| -> Result<()> {
            time("new netns, path walk", &plain);
            time("new netns, cached dir", &cached);
            Ok(())
        })
        .unwrap();
        let mut more = vec![ns];
        for _ in 0..3 {
            more.push(first("first read in a new netns, path walk", &plain));
            more.push(first("first read in a new netns, get()", &cached));
        }
        // What one bridge ADD process does, starting with an empty cache:
        // host side (read only here: a write walks the same path) and the
        // container side in a new netns.
        let host_keys = [
            "net/ipv4/ip_forward",
            "net/ipv4/ip_forward",
            "net/ipv6/conf/lo/accept_ra",
            "net/ipv6/conf/lo/accept_ra",
        ];
        let ctr_keys = [
            "net/ipv6/conf/lo/enhanced_dad",
            "net/ipv6/conf/lo/accept_dad",
            "net/ipv4/conf/lo/arp_notify",
            "net/ipv6/conf/lo/disable_ipv6",
            "net/ipv6/conf/lo/keep_addr_on_down",
        ];
        let by_path = |keys: &[&str]| {
            for k in keys {
                let mut s = String::new();
                open_plain(k, false)
                    .unwrap()
                    .read_to_string(&mut s)
                    .unwrap();
            }
        };
        let by_cache = |keys: &[&str]| {
            CACHE.lock().unwrap().clear();
            for k in keys {
                get(k).unwrap();
            }
        };
        // Medians over rounds, alternating which goes first: the box is
        // shared and single runs vary by a factor of two.
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let (mut host_path, mut host_cache, mut ctr_path, mut ctr_cache) =
            (vec![], vec![], vec![], vec![]);
        for round in 0..9 {
            let mut order = [true, false];
            if round % 2 == 1 {
                order.reverse();
            }
            for use_cache in order {
                let t = std::time::Instant::now();
                if use_cache {
                    by_cache(&host_keys);
                    host_cache.push(t.elapsed().as_secs_f64() * 1e6);
                } else {
                    by_path(&host_keys);
                    host_path.push(t.elapsed().as_secs_f64() * 1e6);
                }
                let ns = fresh();
                ns.run(|| -> Result<()> {
                    let t = std::time::Instant::now();
                    if use_cache {
                        by_cache(&ctr_keys);
                        ctr_cache.push(t.elapsed().as_secs_f64() * 1e6);
                    } else {
                        by_path(&ctr_keys);
                        ctr_path.push(t.elapsed().as_secs_f64() * 1e6);
                    }
                    Ok(())
                })
                .unwrap();
                more.push(ns);
            }
        }
        eprintln!(
            "{count} netns, one ADD's host side: path {:.0} us, cached {:.0} us",
            median(host_path),
            median(host_cache)
        );
        eprintln!(
            "{count} netns, one ADD's container side: path {:.0} us, cached {:.0} us",
            median(ctr_path),
            median(ctr_cache)
        );
        drop(more);
        drop(many);
    }
}
