//! The on-disk store, byte-compatible with the reference so Go and Rust binaries can share
//! a node (and either can release the other's reservations):
//!
//! ```text
//! <dataDir>/<network>/            0755
//!     lock                        flock(LOCK_EX) target, 0750 like the reference creates it
//!     <ip>                        one per reserved address, canonical text as the name,
//!                                 content "<containerID>\r\n<ifname>" (no newline), 0600;
//!                                 files from old versions hold only the container ID
//!     last_reserved_ip.<set>      last address reserved from range set <set>, no newline
//!     .host-local-index           our lookup cache, see `index.rs`
//! ```
//!
//! Everything runs under the lock for the whole read-modify-write ([`Ledger::lock`]), which
//! the reference takes around each single operation; the Go binary therefore never sees a
//! half-made change of ours. Nothing here follows symlinks or opens anything that is not a
//! regular file, and the network name is checked so that no path can leave the directory.

use std::collections::HashSet;
use std::ffi::{CString, OsStr};
use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::index::{Hit, INDEX_FILE, INDEX_TMP, Index, Key, Stamp};
use crate::range::parse_ip;

pub const LOCK_FILE: &str = "lock";
pub const LAST_RESERVED_PREFIX: &str = "last_reserved_ip.";
/// A reservation file is a few dozen bytes; anything longer cannot match an owner.
const MAX_RECORD: u64 = 64 * 1024;
const MAX_NAME: usize = 255;

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error(
        "invalid network name {0:?}: must match [a-zA-Z0-9][a-zA-Z0-9_.-]* and be at most 255 bytes"
    )]
    NetworkName(String),
    #[error("invalid container ID {0:?}")]
    ContainerId(String),
    #[error("invalid interface name {0:?}")]
    Ifname(String),
    /// Filesystem failure, worded like Go's `*PathError` ("open /x: permission denied").
    #[error("{0}")]
    Io(String),
}

/// Go's `*PathError` text: `<op> <path>: <reason>` with the lower-case libc reason.
pub fn go_err(op: &str, path: &Path, e: &io::Error) -> String {
    let reason = match e.raw_os_error() {
        Some(code) => {
            let s = io::Error::from_raw_os_error(code).to_string();
            let s = s.split(" (os error").next().unwrap_or(&s).to_string();
            let mut c = s.chars();
            match c.next() {
                Some(first) => first.to_lowercase().chain(c).collect(),
                None => s,
            }
        }
        None => e.to_string(),
    };
    format!("{op} {}: {reason}", path.display())
}

fn io_err(op: &str, path: &Path, e: &io::Error) -> LedgerError {
    LedgerError::Io(go_err(op, path, e))
}

/// The reference's rule for names (network names, container IDs).
fn valid_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphanumeric())
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
}

fn check_cid(cid: &str) -> Result<(), LedgerError> {
    if valid_name(cid) {
        Ok(())
    } else {
        Err(LedgerError::ContainerId(cid.to_string()))
    }
}

fn check_ifname(ifname: &str) -> Result<(), LedgerError> {
    let bad = ifname.is_empty()
        || ifname.len() > MAX_NAME
        || ifname
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '/' || c == ':');
    if bad {
        Err(LedgerError::Ifname(ifname.to_string()))
    } else {
        Ok(())
    }
}

/// Who a reservation file says holds the address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    Attachment {
        cid: String,
        ifname: String,
    },
    /// Written by reference versions before ifname was recorded.
    Legacy(String),
    /// Empty, unreadable, not UTF-8 or too long: nobody can claim it.
    Unknown,
}

impl Owner {
    /// The reference compares the whitespace-trimmed content with `cid\r\nifname`, then
    /// with `cid` alone.
    pub fn parse(content: &[u8]) -> Owner {
        let Ok(text) = std::str::from_utf8(content) else {
            return Owner::Unknown;
        };
        let text = text.trim();
        if text.is_empty() {
            return Owner::Unknown;
        }
        match text.split_once("\r\n") {
            Some((cid, ifname)) => Owner::Attachment {
                cid: cid.to_string(),
                ifname: ifname.to_string(),
            },
            None => Owner::Legacy(text.to_string()),
        }
    }

    fn is(&self, cid: &str, ifname: &str) -> bool {
        matches!(self, Owner::Attachment { cid: c, ifname: i } if c == cid.trim() && i == ifname)
    }

    fn is_legacy(&self, cid: &str) -> bool {
        matches!(self, Owner::Legacy(c) if c == cid.trim())
    }

    fn key(&self) -> Option<Key> {
        match self {
            Owner::Attachment { cid, ifname } => Some(Key::attachment(cid, ifname)),
            Owner::Legacy(cid) => Some(Key::legacy(cid)),
            Owner::Unknown => None,
        }
    }
}

/// One reservation file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub ip: IpAddr,
    pub owner: Owner,
}

/// The addresses one (containerID, ifname) holds, split by file format.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Holdings {
    pub current: Vec<IpAddr>,
    pub legacy: Vec<IpAddr>,
}

impl Holdings {
    pub fn is_empty(&self) -> bool {
        self.current.is_empty() && self.legacy.is_empty()
    }
}

/// The directory of one network.
#[derive(Debug)]
pub struct Ledger {
    dir: PathBuf,
}

impl Ledger {
    /// `<dataDir>/<network>`, refusing any name that could point elsewhere.
    pub fn path(data_dir: &Path, network: &str) -> Result<PathBuf, LedgerError> {
        if network.len() > MAX_NAME || !valid_name(network) {
            return Err(LedgerError::NetworkName(network.to_string()));
        }
        Ok(data_dir.join(network))
    }

    /// Opens the directory, creating it (0755) as the reference does on every call.
    pub fn create(data_dir: &Path, network: &str) -> Result<Ledger, LedgerError> {
        let dir = Ledger::path(data_dir, network)?;
        DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&dir)
            .map_err(|e| io_err("mkdir", &dir, &e))?;
        Ok(Ledger { dir })
    }

    /// Opens the directory only if it exists: read-mostly verbs must not create it.
    pub fn existing(data_dir: &Path, network: &str) -> Result<Option<Ledger>, LedgerError> {
        let dir = Ledger::path(data_dir, network)?;
        match std::fs::metadata(&dir) {
            Ok(m) if m.is_dir() => Ok(Some(Ledger { dir })),
            Ok(_) => Err(LedgerError::Io(format!(
                "{} is not a directory",
                dir.display()
            ))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("stat", &dir, &e)),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Addresses with a reservation file, from one directory read and no file reads. Safe
    /// without the lock: it is a snapshot for STATUS and a hint for the allocator.
    pub fn taken(&self) -> Result<HashSet<IpAddr>, LedgerError> {
        let dir = &self.dir;
        let entries = std::fs::read_dir(dir).map_err(|e| io_err("open", dir, &e))?;
        let mut out = HashSet::new();
        for entry in entries {
            let entry = entry.map_err(|e| io_err("readdirent", dir, &e))?;
            // A name that parses in any form occupies the address for the reference too.
            if let Some(ip) = entry.file_name().to_str().and_then(parse_ip) {
                out.insert(ip);
            }
        }
        Ok(out)
    }

    /// Takes the exclusive lock. `range_sets` is how many `last_reserved_ip.N` files the
    /// configuration uses (they are part of the index stamp).
    pub fn lock(&self, range_sets: usize) -> Result<Session<'_>, LedgerError> {
        let path = self.dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .write(true)
            .create(true)
            .mode(0o750)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| io_err("open", &path, &e))?;
        lock.lock().map_err(|e| io_err("flock", &path, &e))?;
        // Read once: nobody else can change them while we hold the lock.
        let last_reserved = (0..range_sets)
            .map(|i| read_small(&self.dir.join(format!("{LAST_RESERVED_PREFIX}{i}"))).ok())
            .collect();
        Ok(Session {
            ledger: self,
            _lock: lock,
            last_reserved,
            index: IndexState::Unloaded,
            changed: false,
        })
    }
}

enum IndexState {
    Unloaded,
    Ready(Index),
    /// Could not be read or written: every lookup scans the files.
    Off,
}

/// A locked ledger. Dropping it releases the lock; [`Session::finish`] first records the
/// index stamp so the next call can trust the index.
pub struct Session<'a> {
    ledger: &'a Ledger,
    _lock: File,
    /// Content of `last_reserved_ip.N` for each range set (`None`: missing or unreadable).
    last_reserved: Vec<Option<Vec<u8>>>,
    index: IndexState,
    changed: bool,
}

fn open_read(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
}

/// Reads at most `MAX_RECORD + 1` bytes of a regular file, never following links.
fn read_small(path: &Path) -> io::Result<Vec<u8>> {
    let f = open_read(path)?;
    if !f.metadata()?.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    let mut buf = Vec::new();
    f.take(MAX_RECORD + 1).read_to_end(&mut buf)?;
    Ok(buf)
}

/// Writes `content` as the whole file. Replacing existing content is done by overwriting
/// and then cutting to length rather than with O_TRUNC: ext4 flushes a file on close after
/// a truncate to zero (auto_da_alloc), which made every ADD wait for the disk.
fn write_file(path: &Path, content: &[u8]) -> io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    f.write_all(content)?;
    f.set_len(content.len() as u64)?;
    Ok(())
}

/// Creates `path` with `content`, failing with `AlreadyExists` when it exists. The file
/// appears whole or not at all: it is written unnamed (`O_TMPFILE`) and then linked into
/// place, so a process killed in between leaves nothing, where an empty file would hold
/// the address with an owner nobody's DEL matches. Filesystems without `O_TMPFILE` get
/// create-then-write, whose file a failed write removes again.
fn create_file(path: &Path, content: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let unnamed = OpenOptions::new()
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_TMPFILE | libc::O_CLOEXEC)
        .open(dir);
    let mut f = match unnamed {
        Ok(f) => f,
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL)
            ) =>
        {
            return create_then_write(path, content);
        }
        Err(e) => return Err(e),
    };
    f.write_all(content)?;
    match link_into_place(&f, path) {
        // No /proc to name the unnamed file by.
        Err(e)
            if e.raw_os_error() == Some(libc::ENOENT) && !Path::new("/proc/self/fd").exists() =>
        {
            create_then_write(path, content)
        }
        other => other,
    }
}

/// `linkat` of an `O_TMPFILE` file through its `/proc/self/fd` name (which, unlike
/// `AT_EMPTY_PATH`, needs no capability).
fn link_into_place(f: &File, path: &Path) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    use std::os::unix::ffi::OsStrExt;
    let from = CString::new(format!("/proc/self/fd/{}", f.as_raw_fd()))
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let to = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: both are NUL-terminated paths that outlive the call.
    let r = unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn create_then_write(path: &Path, content: &[u8]) -> io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    if let Err(e) = f.write_all(content) {
        // A partial file would block the address forever.
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    Ok(())
}

impl Session<'_> {
    fn path(&self, name: impl AsRef<OsStr>) -> PathBuf {
        self.ledger.dir.join(name.as_ref())
    }

    fn ip_path(&self, ip: IpAddr) -> PathBuf {
        self.path(ip.to_string())
    }

    fn last_reserved_path(&self, set: usize) -> PathBuf {
        self.path(format!("{LAST_RESERVED_PREFIX}{set}"))
    }

    /// The address last reserved from range set `set`. Parsed like the reference (no
    /// trimming), so anything odd in the file just restarts the round robin.
    pub fn last_reserved(&self, set: usize) -> Option<IpAddr> {
        let raw = self.last_reserved.get(set)?.as_ref()?;
        parse_ip(std::str::from_utf8(raw).ok()?)
    }

    fn stamp(&self) -> io::Result<Stamp> {
        Stamp::take(&self.ledger.dir, &self.last_reserved)
    }

    /// Every reservation file: regular files whose name is an address in canonical form.
    /// `lock`, `last_reserved_ip.*`, the index and anything else are never touched.
    pub fn scan(&self) -> Result<Vec<Record>, LedgerError> {
        let dir = &self.ledger.dir;
        let entries = std::fs::read_dir(dir).map_err(|e| io_err("open", dir, &e))?;
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| io_err("readdirent", dir, &e))?;
            let Some(ip) = entry.file_name().to_str().and_then(parse_record_name) else {
                continue;
            };
            if !entry.file_type().is_ok_and(|t| t.is_file()) {
                continue;
            }
            let owner = match read_small(&entry.path()) {
                Ok(c) if c.len() as u64 <= MAX_RECORD => Owner::parse(&c),
                _ => Owner::Unknown,
            };
            out.push(Record { ip, owner });
        }
        Ok(out)
    }

    /// Addresses with a reservation file, without reading any of them (one directory read).
    pub fn taken(&self) -> Result<HashSet<IpAddr>, LedgerError> {
        self.ledger.taken()
    }

    /// The owner recorded for `ip`, or `None` when there is no reservation file.
    pub fn owner_of(&self, ip: IpAddr) -> Option<Owner> {
        let path = self.ip_path(ip);
        match read_small(&path) {
            Ok(c) if c.len() as u64 <= MAX_RECORD => Some(Owner::parse(&c)),
            Ok(_) => Some(Owner::Unknown),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(_) => Some(Owner::Unknown),
        }
    }

    /// Loads the index, rebuilding it from the files when it is missing or stale.
    fn index(&mut self) -> Option<&mut Index> {
        if let IndexState::Unloaded = self.index {
            self.index = self.load_index();
        }
        match &mut self.index {
            IndexState::Ready(idx) => Some(idx),
            _ => None,
        }
    }

    fn load_index(&mut self) -> IndexState {
        if let Some((idx, stamp)) = Index::open(&self.ledger.dir)
            && self.stamp().is_ok_and(|now| now == stamp)
        {
            return IndexState::Ready(idx);
        }
        let Ok(records) = self.scan() else {
            return IndexState::Off;
        };
        let entries: Vec<(Key, IpAddr)> = records
            .iter()
            .filter_map(|r| r.owner.key().map(|k| (k, r.ip)))
            .collect();
        match Index::build(&self.ledger.dir, &entries) {
            Ok(idx) => {
                // The rename changed the directory: the stamp must be taken again.
                self.changed = true;
                IndexState::Ready(idx)
            }
            Err(_) => IndexState::Off,
        }
    }

    fn index_failed(&mut self) {
        self.index = IndexState::Off;
        // A half-updated index must not be trusted by the next call either.
        let _ = std::fs::remove_file(self.path(INDEX_FILE));
        self.changed = true;
    }

    /// Index hits for `key`, each checked against its reservation file; stale entries are
    /// dropped from the index on the way.
    fn verified(&mut self, key: Key, matches: impl Fn(&Owner) -> bool) -> Option<Vec<IpAddr>> {
        let hits: Vec<Hit> = {
            let idx = self.index()?;
            match idx.lookup(key) {
                Ok(h) => h,
                Err(_) => {
                    self.index_failed();
                    return None;
                }
            }
        };
        let mut out = Vec::new();
        let mut stale = Vec::new();
        for hit in hits {
            match self.owner_of(hit.ip) {
                Some(o) if matches(&o) => out.push(hit.ip),
                _ => stale.push(hit),
            }
        }
        if !stale.is_empty()
            && let IndexState::Ready(idx) = &mut self.index
        {
            let failed = stale.into_iter().any(|h| idx.remove(h).is_err());
            if failed {
                self.index_failed();
            }
        }
        Some(out)
    }

    /// What (cid, ifname) holds, in both file formats.
    pub fn holdings(&mut self, cid: &str, ifname: &str) -> Result<Holdings, LedgerError> {
        let current = self.verified(Key::attachment(cid.trim(), ifname), |o| o.is(cid, ifname));
        let legacy = self.verified(Key::legacy(cid.trim()), |o| o.is_legacy(cid));
        if let (Some(current), Some(legacy)) = (current, legacy) {
            return Ok(Holdings { current, legacy });
        }
        let mut h = Holdings::default();
        for r in self.scan()? {
            if r.owner.is(cid, ifname) {
                h.current.push(r.ip);
            } else if r.owner.is_legacy(cid) {
                h.legacy.push(r.ip);
            }
        }
        Ok(h)
    }

    /// Creates the reservation file for `ip` unless it exists, and records it as the range
    /// set's last reserved address. `Ok(false)`: somebody holds it already.
    pub fn reserve(
        &mut self,
        ip: IpAddr,
        cid: &str,
        ifname: &str,
        set: usize,
    ) -> Result<bool, LedgerError> {
        check_cid(cid.trim())?;
        check_ifname(ifname)?;
        let path = self.ip_path(ip);
        let content = format!("{}\r\n{}", cid.trim(), ifname);
        match create_file(&path, content.as_bytes()) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(io_err("open", &path, &e)),
        }
        self.changed = true;
        let last = self.last_reserved_path(set);
        let text = ip.to_string().into_bytes();
        if let Err(e) = write_file(&last, &text) {
            let _ = std::fs::remove_file(&path);
            return Err(io_err("open", &last, &e));
        }
        if let Some(slot) = self.last_reserved.get_mut(set) {
            *slot = Some(text);
        }
        let dir = self.ledger.dir.clone();
        if let Some(idx) = self.index()
            && idx
                .insert(&dir, Key::attachment(cid.trim(), ifname), ip)
                .is_err()
        {
            self.index_failed();
        }
        Ok(true)
    }

    /// Removes the reservation files of `ips` that still belong to `owner_matches`.
    fn remove_files(
        &mut self,
        ips: &[IpAddr],
        key: Key,
        owner_matches: impl Fn(&Owner) -> bool,
    ) -> Vec<IpAddr> {
        let mut removed = Vec::new();
        for &ip in ips {
            if !self.owner_of(ip).is_some_and(|o| owner_matches(&o)) {
                continue;
            }
            if std::fs::remove_file(self.ip_path(ip)).is_ok() {
                self.changed = true;
                removed.push(ip);
            }
        }
        if let IndexState::Ready(idx) = &mut self.index {
            let mut failed = false;
            if let Ok(hits) = idx.lookup(key) {
                for h in hits.into_iter().filter(|h| removed.contains(&h.ip)) {
                    failed |= idx.remove(h).is_err();
                }
            } else {
                failed = true;
            }
            if failed {
                self.index_failed();
            }
        }
        removed
    }

    /// Releases everything (cid, ifname) holds; when it holds nothing in the current
    /// format, everything a legacy file gives to `cid`. Returns what was released.
    pub fn release(&mut self, cid: &str, ifname: &str) -> Result<Vec<IpAddr>, LedgerError> {
        self.remove_stale_temporary();
        let h = self.holdings(cid, ifname)?;
        if !h.current.is_empty() {
            let key = Key::attachment(cid.trim(), ifname);
            return Ok(self.remove_files(&h.current, key, |o| o.is(cid, ifname)));
        }
        let key = Key::legacy(cid.trim());
        Ok(self.remove_files(&h.legacy, key, |o| o.is_legacy(cid)))
    }

    /// Releases exactly `ips`, if they still belong to (cid, ifname): the rollback of a
    /// failed ADD, which must not touch what the container held before.
    pub fn release_exact(&mut self, ips: &[IpAddr], cid: &str, ifname: &str) -> Vec<IpAddr> {
        let key = Key::attachment(cid.trim(), ifname);
        self.remove_files(ips, key, |o| o.is(cid, ifname))
    }

    /// Releases every reservation whose owner `keep` rejects. Files nobody can claim
    /// (empty, garbage, unreadable) are released too.
    pub fn release_unless(
        &mut self,
        keep: impl Fn(&Owner) -> bool,
    ) -> Result<Vec<IpAddr>, LedgerError> {
        self.remove_stale_temporary();
        let mut released = Vec::new();
        let mut errors = Vec::new();
        for r in self.scan()? {
            if keep(&r.owner) {
                continue;
            }
            let path = self.ip_path(r.ip);
            match std::fs::remove_file(&path) {
                Ok(()) => released.push(r.ip),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => errors.push(go_err("remove", &path, &e)),
            }
        }
        if !released.is_empty() {
            self.changed = true;
            // Cheaper and simpler to rebuild on the next call than to patch every entry.
            self.index_failed();
        }
        if errors.is_empty() {
            Ok(released)
        } else {
            Err(LedgerError::Io(errors.join("; ")))
        }
    }

    /// The index is rebuilt through a temporary file, only ever written under the lock
    /// we hold: one that exists now is what a call killed mid-rebuild left. DEL and GC
    /// remove it, so that a node's DELs after a crash leave nothing behind.
    fn remove_stale_temporary(&self) {
        let _ = std::fs::remove_file(self.path(INDEX_TMP));
    }

    /// Records the directory's final state in the index and releases the lock.
    pub fn finish(mut self) {
        if !self.changed {
            return;
        }
        let stamp = self.stamp();
        if let (IndexState::Ready(idx), Ok(stamp)) = (&mut self.index, stamp)
            && idx.set_stamp(&stamp).is_err()
        {
            self.index_failed();
        }
    }
}

/// The address a reservation file name stands for. Only canonical names count, so the
/// file we open for an address is always the one the reference would create.
fn parse_record_name(name: &str) -> Option<IpAddr> {
    let ip = parse_ip(name)?;
    (ip.to_string() == name).then_some(ip)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    struct TempDir(PathBuf);
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn tempdir() -> TempDir {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let d = std::env::temp_dir().join(format!(
            "hl-ledger-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn layout_is_the_reference_one() {
        let t = tempdir();
        let l = Ledger::create(&t.0, "mynet").unwrap();
        let mut s = l.lock(2).unwrap();
        assert!(s.reserve(ip("10.1.2.2"), "dummy", "eth0", 0).unwrap());
        assert!(
            s.reserve(ip("2001:db8:1::2"), " dummy ", "eth0", 1)
                .unwrap()
        );
        assert!(!s.reserve(ip("10.1.2.2"), "other", "eth0", 0).unwrap());
        s.finish();
        let dir = t.0.join("mynet");
        assert_eq!(
            std::fs::read(dir.join("10.1.2.2")).unwrap(),
            b"dummy\r\neth0"
        );
        assert_eq!(
            std::fs::read(dir.join("2001:db8:1::2")).unwrap(),
            b"dummy\r\neth0"
        );
        assert_eq!(
            std::fs::read(dir.join("last_reserved_ip.0")).unwrap(),
            b"10.1.2.2"
        );
        assert_eq!(
            std::fs::read(dir.join("last_reserved_ip.1")).unwrap(),
            b"2001:db8:1::2"
        );
        assert_eq!(mode(&dir), 0o755);
        assert_eq!(mode(&dir.join("10.1.2.2")), 0o600);
        assert_eq!(mode(&dir.join("last_reserved_ip.0")), 0o600);
        assert_eq!(mode(&dir.join("lock")), 0o750);
        assert_eq!(std::fs::read(dir.join("lock")).unwrap(), b"");
    }

    #[test]
    fn reservations_appear_whole_and_stale_temporaries_go() {
        let t = tempdir();
        let p = t.0.join("10.0.0.9");
        create_file(&p, b"c1\r\neth0").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"c1\r\neth0");
        assert_eq!(mode(&p), 0o600);
        let taken = create_file(&p, b"c2\r\neth0").unwrap_err();
        assert_eq!(taken.kind(), io::ErrorKind::AlreadyExists);
        // The fallback for filesystems without O_TMPFILE behaves the same.
        let q = t.0.join("10.0.0.8");
        create_then_write(&q, b"c1\r\neth0").unwrap();
        assert_eq!(std::fs::read(&q).unwrap(), b"c1\r\neth0");
        let taken = create_then_write(&q, b"c2").unwrap_err();
        assert_eq!(taken.kind(), io::ErrorKind::AlreadyExists);
        let names: Vec<_> = std::fs::read_dir(&t.0)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names.len(), 2, "no temporary names: {names:?}");

        // An index rebuild killed midway leaves its temporary: DEL and GC remove it.
        let l = Ledger::create(&t.0, "n").unwrap();
        for gc in [false, true] {
            std::fs::write(l.dir().join(INDEX_TMP), b"").unwrap();
            let mut s = l.lock(1).unwrap();
            if gc {
                s.release_unless(|_| true).unwrap();
            } else {
                s.release("c1", "eth0").unwrap();
            }
            s.finish();
            assert!(!l.dir().join(INDEX_TMP).exists(), "gc: {gc}");
        }
    }

    #[test]
    fn traversal_names_are_refused() {
        let t = tempdir();
        let long = "a".repeat(256);
        for bad in [
            "", ".", "..", "../x", "a/b", "/abs", "a\0b", ".hidden", "-x", &long,
        ] {
            assert!(
                matches!(Ledger::create(&t.0, bad), Err(LedgerError::NetworkName(_))),
                "{bad:?}"
            );
            assert!(matches!(
                Ledger::existing(&t.0, bad),
                Err(LedgerError::NetworkName(_))
            ));
        }
        assert_eq!(std::fs::read_dir(&t.0).unwrap().count(), 0);
        let l = Ledger::create(&t.0, "net").unwrap();
        let mut s = l.lock(1).unwrap();
        for bad in ["../x", "a/b", "", "a\r\nb", "a b"] {
            assert!(
                s.reserve(ip("10.0.0.2"), bad, "eth0", 0).is_err(),
                "{bad:?}"
            );
        }
        for bad in ["", "a/b", "e th0", "x\r\ny", "a:b"] {
            assert!(s.reserve(ip("10.0.0.2"), "cid", bad, 0).is_err(), "{bad:?}");
        }
        assert!(s.scan().unwrap().is_empty());
    }

    #[test]
    fn owner_parsing_including_garbage() {
        assert_eq!(
            Owner::parse(b"c1\r\neth0"),
            Owner::Attachment {
                cid: "c1".into(),
                ifname: "eth0".into()
            }
        );
        assert_eq!(
            Owner::parse(b"  c1\r\neth0\n\n"),
            Owner::Attachment {
                cid: "c1".into(),
                ifname: "eth0".into()
            }
        );
        assert_eq!(Owner::parse(b"c1\n"), Owner::Legacy("c1".into()));
        assert_eq!(Owner::parse(b""), Owner::Unknown);
        assert_eq!(Owner::parse(b" \r\n "), Owner::Unknown);
        assert_eq!(Owner::parse(&[0xff, 0xfe, 0x00]), Owner::Unknown);
        // Truncated after the CRLF: an ifname of "" matches nobody.
        assert_eq!(
            Owner::parse(b"c1\r\n"),
            Owner::Legacy("c1".into()),
            "trimmed like the reference, so a cut-off file reads as a legacy one"
        );
    }

    #[test]
    fn release_current_then_legacy() {
        let t = tempdir();
        let l = Ledger::create(&t.0, "n").unwrap();
        let dir = l.dir().to_path_buf();
        std::fs::write(dir.join("10.0.0.5"), "c1").unwrap();
        std::fs::write(dir.join("10.0.0.6"), "c1\r\neth0").unwrap();
        std::fs::write(dir.join("10.0.0.7"), "c1\r\neth1").unwrap();
        std::fs::write(dir.join("10.0.0.8"), "  c2 \n").unwrap();
        let mut s = l.lock(1).unwrap();
        let h = s.holdings("c1", "eth0").unwrap();
        assert_eq!(h.current, [ip("10.0.0.6")]);
        assert_eq!(h.legacy, [ip("10.0.0.5")]);
        // Current-format files first; the legacy one stays.
        assert_eq!(s.release("c1", "eth0").unwrap(), [ip("10.0.0.6")]);
        assert!(dir.join("10.0.0.5").exists());
        // Nothing current left for eth0: the legacy file goes.
        assert_eq!(s.release("c1", "eth0").unwrap(), [ip("10.0.0.5")]);
        assert!(dir.join("10.0.0.7").exists());
        assert_eq!(s.release("c2", "eth9").unwrap(), [ip("10.0.0.8")]);
        assert_eq!(s.release("nobody", "eth0").unwrap(), Vec::<IpAddr>::new());
        s.finish();
    }

    #[test]
    fn garbage_files_never_crash() {
        let t = tempdir();
        let l = Ledger::create(&t.0, "n").unwrap();
        let dir = l.dir().to_path_buf();
        std::fs::write(dir.join("10.0.0.2"), b"").unwrap();
        std::fs::write(dir.join("10.0.0.3"), [0xffu8; 10]).unwrap();
        std::fs::write(dir.join("10.0.0.4"), vec![b'x'; 200_000]).unwrap();
        std::fs::create_dir(dir.join("10.0.0.5")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.join("10.0.0.6")).unwrap();
        std::fs::write(dir.join("010.0.0.7"), b"c1\r\neth0").unwrap();
        std::fs::write(dir.join("last_reserved_ip.0"), b"garbage\n").unwrap();
        std::fs::write(dir.join("README"), b"c1\r\neth0").unwrap();
        std::fs::write(dir.join(INDEX_FILE), b"not an index").unwrap();
        let mut s = l.lock(1).unwrap();
        assert_eq!(s.last_reserved(0), None);
        let records = s.scan().unwrap();
        let mut ips: Vec<String> = records.iter().map(|r| r.ip.to_string()).collect();
        ips.sort();
        assert_eq!(ips, ["10.0.0.2", "10.0.0.3", "10.0.0.4"]);
        assert!(records.iter().all(|r| r.owner == Owner::Unknown));
        assert!(s.holdings("c1", "eth0").unwrap().is_empty());
        assert_eq!(s.release("c1", "eth0").unwrap(), Vec::<IpAddr>::new());
        // Every name that parses as an address blocks it, symlinks and directories too.
        let taken = s.taken().unwrap();
        for a in ["10.0.0.2", "10.0.0.5", "10.0.0.6"] {
            assert!(taken.contains(&ip(a)));
        }
        assert!(!s.reserve(ip("10.0.0.6"), "c1", "eth0", 0).unwrap());
        s.finish();
        assert!(!std::fs::read_to_string("/etc/passwd").unwrap().is_empty());
        assert!(dir.join("README").exists());
    }

    #[test]
    fn last_reserved_is_not_trimmed() {
        let t = tempdir();
        let l = Ledger::create(&t.0, "n").unwrap();
        std::fs::write(l.dir().join("last_reserved_ip.0"), b"10.0.0.9").unwrap();
        std::fs::write(l.dir().join("last_reserved_ip.1"), b"10.0.0.9\n").unwrap();
        std::fs::write(l.dir().join("last_reserved_ip.2"), b"::ffff:10.0.0.9").unwrap();
        let s = l.lock(3).unwrap();
        assert_eq!(s.last_reserved(0), Some(ip("10.0.0.9")));
        assert_eq!(s.last_reserved(1), None);
        assert_eq!(s.last_reserved(2), Some(ip("10.0.0.9")));
        assert_eq!(s.last_reserved(3), None);
    }

    #[test]
    fn index_follows_foreign_changes() {
        let t = tempdir();
        let l = Ledger::create(&t.0, "n").unwrap();
        let dir = l.dir().to_path_buf();
        let mut s = l.lock(1).unwrap();
        assert!(s.reserve(ip("10.0.0.2"), "c1", "eth0", 0).unwrap());
        s.finish();
        assert!(dir.join(INDEX_FILE).exists());

        // Another implementation reserves and releases behind our back.
        std::fs::write(dir.join("10.0.0.3"), "c2\r\neth0").unwrap();
        std::fs::write(dir.join("last_reserved_ip.0"), "10.0.0.3").unwrap();
        std::fs::remove_file(dir.join("10.0.0.2")).unwrap();

        let mut s = l.lock(1).unwrap();
        assert!(s.holdings("c1", "eth0").unwrap().is_empty());
        assert_eq!(s.holdings("c2", "eth0").unwrap().current, [ip("10.0.0.3")]);
        assert_eq!(s.release("c2", "eth0").unwrap(), [ip("10.0.0.3")]);
        s.finish();

        // Only a foreign reservation, with the directory times unchanged: the
        // last_reserved hash still invalidates the index.
        let mut s = l.lock(1).unwrap();
        assert!(s.reserve(ip("10.0.0.4"), "c4", "eth0", 0).unwrap());
        s.finish();
        let (_, stamp_before) = Index::open(&dir).unwrap();
        std::fs::write(dir.join("last_reserved_ip.0"), "10.0.0.9").unwrap();
        let s = l.lock(1).unwrap();
        assert_ne!(s.stamp().unwrap(), stamp_before);
        drop(s);

        // Stale index entries are verified away, never trusted.
        let mut s = l.lock(1).unwrap();
        std::fs::write(dir.join("10.0.0.4"), "someone\r\neth0").unwrap();
        assert!(s.holdings("c4", "eth0").unwrap().is_empty());
        assert_eq!(s.release("c4", "eth0").unwrap(), Vec::<IpAddr>::new());
        assert!(dir.join("10.0.0.4").exists());
        s.finish();
    }

    #[test]
    fn release_exact_leaves_earlier_holdings() {
        let t = tempdir();
        let l = Ledger::create(&t.0, "n").unwrap();
        let mut s = l.lock(2).unwrap();
        assert!(s.reserve(ip("10.0.0.2"), "c1", "eth0", 0).unwrap());
        assert!(s.reserve(ip("10.0.0.3"), "c1", "eth0", 0).unwrap());
        assert_eq!(
            s.release_exact(&[ip("10.0.0.3")], "c1", "eth0"),
            [ip("10.0.0.3")]
        );
        assert_eq!(s.holdings("c1", "eth0").unwrap().current, [ip("10.0.0.2")]);
        s.finish();
    }

    #[test]
    fn release_unless_keeps_valid_and_bookkeeping() {
        let t = tempdir();
        let l = Ledger::create(&t.0, "n").unwrap();
        let dir = l.dir().to_path_buf();
        let mut s = l.lock(1).unwrap();
        assert!(s.reserve(ip("10.0.0.2"), "keep", "eth0", 0).unwrap());
        assert!(s.reserve(ip("10.0.0.3"), "gone", "eth0", 0).unwrap());
        s.finish();
        std::fs::write(dir.join("10.0.0.4"), "").unwrap();
        std::fs::write(dir.join("10.0.0.5"), "keep").unwrap();
        let mut s = l.lock(1).unwrap();
        let mut released = s
            .release_unless(|o| match o {
                Owner::Attachment { cid, ifname } => cid == "keep" && ifname == "eth0",
                Owner::Legacy(cid) => cid == "keep",
                Owner::Unknown => false,
            })
            .unwrap();
        released.sort();
        assert_eq!(released, [ip("10.0.0.3"), ip("10.0.0.4")]);
        s.finish();
        for f in ["10.0.0.2", "10.0.0.5", "lock", "last_reserved_ip.0"] {
            assert!(dir.join(f).exists(), "{f}");
        }
    }

    #[test]
    fn go_error_text() {
        let e = io::Error::from_raw_os_error(libc::EACCES);
        assert_eq!(
            go_err("mkdir", Path::new("/x"), &e),
            "mkdir /x: permission denied"
        );
    }
}
