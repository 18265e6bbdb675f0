//! Network namespace handles and entry.
//!
//! A plugin opens the host netns ([`NetNs::current`]) and the container netns
//! ([`NetNs::open`] on `CNI_NETNS`) as files and only switches the calling
//! thread into the container for the few things that must happen there:
//! opening a netlink socket (it stays bound to the netns it was created in) or
//! writing a `/proc/sys/net` file. [`NetNs::run`] and [`NetNs::enter`] always
//! switch back, also on error or panic.
//!
//! `setns` moves only the calling thread. Never spawn a child process or a
//! thread while switched: it would run in the container.

use std::fs::File;
use std::marker::PhantomData;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sched::{CloneFlags, setns};
use nix::sys::statfs::{NSFS_MAGIC, PROC_SUPER_MAGIC, statfs};

use crate::error::{Error, Result};

/// The calling thread's own network namespace. `/proc/self` would name the
/// main thread's, which differs once a thread has switched.
pub const THREAD_SELF_NETNS: &str = "/proc/thread-self/ns/net";

/// `NS_GET_NSTYPE` from `<linux/nsfs.h>`: `_IO(0xb7, 0x3)`.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// An open network namespace file (`/var/run/netns/x`, `/proc/<pid>/ns/net`).
///
/// The namespace stays alive as long as the handle is open, even if the path
/// is unmounted meanwhile.
#[derive(Debug)]
pub struct NetNs {
    file: File,
    path: PathBuf,
    /// (st_dev, st_ino) of the nsfs inode: two handles name the same netns
    /// exactly when these match.
    id: (u64, u64),
}

impl NetNs {
    /// Opens and validates a network namespace path.
    ///
    /// Errors: [`Error::NetnsNotFound`] when the path does not exist,
    /// [`Error::NotNetns`] when it is not a namespace file or names a
    /// namespace of another kind (mnt, pid, ...).
    pub fn open(path: impl AsRef<Path>) -> Result<NetNs> {
        let path = path.as_ref();
        // statfs before open: opening an arbitrary path (a FIFO) could block.
        let fs = match statfs(path) {
            Ok(fs) => fs,
            Err(Errno::ENOENT) => {
                return Err(Error::NetnsNotFound {
                    path: path.to_path_buf(),
                });
            }
            Err(e) => return Err(Error::os(format!("statfs {path:?}"), e)),
        };
        let magic = fs.filesystem_type();
        // Namespace files live on nsfs; kernels before 3.19 had them on procfs.
        if magic != NSFS_MAGIC && magic != PROC_SUPER_MAGIC {
            return Err(Error::NotNetns {
                path: path.to_path_buf(),
                detail: Some(format!("filesystem magic {:#x}", magic.0)),
            });
        }
        let file = File::open(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::NetnsNotFound {
                path: path.to_path_buf(),
            },
            _ => Error::io(format!("open netns {path:?}"), e),
        })?;
        let ns = NetNs::from_file(file, path)?;
        ns.check_is_net(magic == NSFS_MAGIC)?;
        Ok(ns)
    }

    /// The calling thread's current network namespace.
    pub fn current() -> Result<NetNs> {
        NetNs::open(THREAD_SELF_NETNS)
    }

    fn from_file(file: File, path: &Path) -> Result<NetNs> {
        let md = file
            .metadata()
            .map_err(|e| Error::io(format!("stat netns {path:?}"), e))?;
        Ok(NetNs {
            file,
            path: path.to_path_buf(),
            id: (md.dev(), md.ino()),
        })
    }

    fn check_is_net(&self, on_nsfs: bool) -> Result<()> {
        // SAFETY: NS_GET_NSTYPE takes no argument and only reads the fd.
        let r = unsafe { libc::ioctl(self.file.as_raw_fd(), NS_GET_NSTYPE as _) };
        if r < 0 {
            return match Errno::last() {
                // An nsfs file on a kernel before 4.11, which lacks the ioctl.
                Errno::ENOTTY if on_nsfs => Ok(()),
                // Any other /proc file.
                Errno::ENOTTY | Errno::EINVAL => Err(Error::NotNetns {
                    path: self.path.clone(),
                    detail: None,
                }),
                e => Err(Error::os(
                    format!("query namespace type of {:?}", self.path),
                    e,
                )),
            };
        }
        if r != libc::CLONE_NEWNET {
            return Err(Error::NotNetns {
                path: self.path.clone(),
                detail: Some("a namespace of another kind".into()),
            });
        }
        Ok(())
    }

    /// The path this handle was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether both handles name the same namespace.
    pub fn same_as(&self, other: &NetNs) -> bool {
        self.id == other.id
    }

    /// Whether this is the calling thread's current network namespace (a
    /// plugin asked to configure the host's own netns can refuse early).
    pub fn is_current(&self) -> Result<bool> {
        let md = std::fs::metadata(THREAD_SELF_NETNS)
            .map_err(|e| Error::io(format!("stat {THREAD_SELF_NETNS}"), e))?;
        Ok(self.id == (md.dev(), md.ino()))
    }

    /// Switches the calling thread into this namespace until the guard drops.
    ///
    /// Prefer [`NetNs::run`], which cannot outlive its closure.
    pub fn enter(&self) -> Result<NetNsGuard> {
        let prev = NetNs::current()?;
        setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET)
            .map_err(|e| Error::os(format!("enter netns {:?}", self.path), e))?;
        Ok(NetNsGuard {
            prev,
            _not_send: PhantomData,
        })
    }

    /// Runs `f` on the calling thread inside this namespace and switches back,
    /// whatever `f` returns.
    pub fn run<T, E, F>(&self, f: F) -> std::result::Result<T, E>
    where
        F: FnOnce() -> std::result::Result<T, E>,
        E: From<Error>,
    {
        let guard = self.enter()?;
        let out = f();
        drop(guard);
        out
    }
}

impl AsFd for NetNs {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// Returned by [`NetNs::enter`]; switches the thread back when dropped.
///
/// Not `Send`: the switch belongs to the thread that made it.
#[must_use = "the thread returns to its previous netns when the guard drops"]
#[derive(Debug)]
pub struct NetNsGuard {
    prev: NetNs,
    _not_send: PhantomData<*const ()>,
}

impl Drop for NetNsGuard {
    fn drop(&mut self) {
        if let Err(e) = setns(self.prev.file.as_fd(), CloneFlags::CLONE_NEWNET) {
            // Carrying on would apply host-side changes inside the container.
            panic!(
                "cannot return to network namespace {:?}: {}",
                self.prev.path,
                e.desc()
            );
        }
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! Throw-away namespaces for tests.

    use std::path::PathBuf;
    use std::sync::atomic::{AtomicU32, Ordering};

    use nix::mount::{MntFlags, MsFlags, mount, umount2};
    use nix::sched::{CloneFlags, unshare};

    use super::NetNs;

    /// A fresh, empty network namespace that lives as long as the handle.
    ///
    /// A thread that unshares gets its own netns; the open handle keeps it
    /// alive after the thread exits, so nothing needs cleaning up.
    pub fn fresh() -> NetNs {
        std::thread::spawn(|| {
            unshare(CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
            NetNs::current().expect("open fresh netns")
        })
        .join()
        .expect("netns thread")
    }

    /// A unique name for test objects: pid + counter + clock.
    pub fn unique(prefix: &str) -> String {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        format!("{prefix}{:x}", (std::process::id() << 8) ^ (t >> 4) ^ n)
    }

    /// A netns bind-mounted at a path, like `ip netns add` makes; removed on drop.
    pub struct Named {
        pub path: PathBuf,
    }

    impl Named {
        pub fn new() -> Named {
            let dir = PathBuf::from("/run/netns");
            std::fs::create_dir_all(&dir).expect("mkdir /run/netns");
            let path = dir.join(unique("cninet-test-"));
            std::fs::File::create(&path).expect("create netns mount point");
            let target = path.clone();
            std::thread::spawn(move || {
                unshare(CloneFlags::CLONE_NEWNET).expect("unshare");
                mount(
                    Some(super::THREAD_SELF_NETNS),
                    &target,
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                )
                .expect("bind-mount netns");
            })
            .join()
            .expect("netns thread");
            Named { path }
        }
    }

    impl Drop for Named {
        fn drop(&mut self) {
            let _ = umount2(&self.path, MntFlags::MNT_DETACH);
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{Named, fresh};
    use super::*;

    #[test]
    fn open_reports_missing_and_non_netns_paths() {
        let e = NetNs::open("/nonexistent/netns/x").unwrap_err();
        assert!(matches!(e, Error::NetnsNotFound { .. }), "{e}");
        assert!(e.is_not_found());

        let e = NetNs::open("/proc/self/status").unwrap_err();
        assert!(matches!(e, Error::NotNetns { .. }), "{e}");

        let e = NetNs::open("/etc/hostname").unwrap_err();
        assert!(matches!(e, Error::NotNetns { .. }), "{e}");
        assert!(e.to_string().contains("is not a network namespace"), "{e}");

        // A namespace file, but of the mount namespace.
        let e = NetNs::open("/proc/thread-self/ns/mnt").unwrap_err();
        assert!(matches!(e, Error::NotNetns { .. }), "{e}");
    }

    #[test]
    fn current_is_current_and_fresh_is_not() {
        let here = NetNs::current().unwrap();
        assert!(here.is_current().unwrap());
        let other = fresh();
        assert!(!other.is_current().unwrap());
        assert!(!other.same_as(&here));
        assert!(here.same_as(&NetNs::current().unwrap()));
    }

    #[test]
    fn run_switches_in_and_back_even_on_error() {
        let here = NetNs::current().unwrap();
        let other = fresh();
        let inside: Result<bool> = other.run(|| NetNs::current().map(|c| c.same_as(&other)));
        assert!(inside.unwrap());
        assert!(here.is_current().unwrap());

        let failed: Result<()> = other.run(|| Err(Error::protocol("test", "boom")));
        assert!(failed.is_err());
        assert!(here.is_current().unwrap());
    }

    #[test]
    fn named_netns_opens_by_path() {
        let named = Named::new();
        let ns = NetNs::open(&named.path).unwrap();
        assert!(!ns.is_current().unwrap());
        assert_eq!(ns.path(), named.path.as_path());
        let again = NetNs::open(&named.path).unwrap();
        assert!(ns.same_as(&again));
    }
}
