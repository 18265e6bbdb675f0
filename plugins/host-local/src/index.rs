//! An on-disk hash table from owner (containerID+ifname, or a legacy containerID) to the
//! addresses it holds, kept beside the ledger as `.host-local-index`.
//!
//! Why: the reference answers "does this container already hold an address?" (asked on
//! every ADD) and "which files are this container's?" (DEL) by reading every reservation
//! file, so ADD slows down linearly as the network fills. With this index both are a couple
//! of small reads, whatever the size of the ledger.
//!
//! The index is only ever a cache. The reservation files stay the truth and keep the
//! reference's layout, so the Go plugin can still share the directory:
//! - The header records a stamp of the ledger directory (device, inode, mtime, ctime) and a
//!   hash of the `last_reserved_ip.*` files taken after our own last change. Any change made
//!   by someone else (a reservation creates a file and rewrites `last_reserved_ip.N`; a
//!   release unlinks a file) moves that stamp, and the next call rebuilds the index from the
//!   files. Kernels with multigrain timestamps (6.13+) guarantee the directory times move
//!   even within one clock tick; on older ones the `last_reserved_ip` hash still catches
//!   foreign reservations.
//! - Every hit is verified against the reservation file before it is trusted, so a stale
//!   entry can never release or report the wrong address.
//! - A missing, truncated or garbled index is rebuilt; errors writing it never fail a call.
//!
//! The file's content starts with a binary magic, so the reference's "release every file
//! whose content equals the ID" walk never matches it, and its name is not an address, so
//! the reference never reports it as a reservation.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use sha2::{Digest, Sha256};

pub const INDEX_FILE: &str = ".host-local-index";
pub const INDEX_TMP: &str = ".host-local-index.tmp";
const MAGIC: [u8; 8] = *b"HLIDX\0\0\x01";
const HEADER: u64 = 128;
const SLOT: usize = 40;
const MIN_CAP: u32 = 64;
/// Slots read per probe step: one read usually covers the whole probe chain.
const CHUNK: u32 = 16;

const EMPTY: u8 = 0;
const USED: u8 = 1;
const DELETED: u8 = 2;

/// Whom a reservation belongs to, as a fixed-size key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key([u8; 16]);

impl Key {
    /// Current-format owner: `containerID\r\nifname`.
    pub fn attachment(cid: &str, ifname: &str) -> Key {
        Key::hash(&[b"A", cid.as_bytes(), ifname.as_bytes()])
    }

    /// Files written by old reference versions hold only the container ID.
    pub fn legacy(cid: &str) -> Key {
        Key::hash(&[b"L", cid.as_bytes()])
    }

    fn hash(parts: &[&[u8]]) -> Key {
        let mut h = Sha256::new();
        for p in parts {
            // Length-prefixed so that no two different part lists hash alike.
            h.update((p.len() as u64).to_le_bytes());
            h.update(p);
        }
        let d = h.finalize();
        let mut k = [0u8; 16];
        k.copy_from_slice(&d[..16]);
        Key(k)
    }

    fn bucket(&self, cap: u32) -> u32 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.0[..8]);
        (u64::from_le_bytes(b) % u64::from(cap)) as u32
    }
}

/// What the ledger directory looked like right after our last change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stamp {
    dev: u64,
    ino: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    last_reserved: [u8; 16],
}

impl Stamp {
    /// Takes the stamp of `dir` now. `last_reserved` are the contents of the
    /// `last_reserved_ip.N` files for every range set in order (`None` when missing).
    pub fn take(dir: &Path, last_reserved: &[Option<Vec<u8>>]) -> io::Result<Stamp> {
        let md = std::fs::symlink_metadata(dir)?;
        let mut h = Sha256::new();
        for content in last_reserved {
            match content {
                Some(c) => {
                    h.update([1u8]);
                    h.update((c.len() as u64).to_le_bytes());
                    h.update(c);
                }
                None => h.update([0u8]),
            }
        }
        let d = h.finalize();
        let mut lr = [0u8; 16];
        lr.copy_from_slice(&d[..16]);
        Ok(Stamp {
            dev: md.dev(),
            ino: md.ino(),
            mtime: (md.mtime(), md.mtime_nsec()),
            ctime: (md.ctime(), md.ctime_nsec()),
            last_reserved: lr,
        })
    }

    fn encode(&self, out: &mut [u8]) {
        out[0..8].copy_from_slice(&self.dev.to_le_bytes());
        out[8..16].copy_from_slice(&self.ino.to_le_bytes());
        out[16..24].copy_from_slice(&self.mtime.0.to_le_bytes());
        out[24..32].copy_from_slice(&self.mtime.1.to_le_bytes());
        out[32..40].copy_from_slice(&self.ctime.0.to_le_bytes());
        out[40..48].copy_from_slice(&self.ctime.1.to_le_bytes());
        out[48..64].copy_from_slice(&self.last_reserved);
    }

    fn decode(b: &[u8]) -> Stamp {
        let u = |r: std::ops::Range<usize>| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[r]);
            a
        };
        let mut lr = [0u8; 16];
        lr.copy_from_slice(&b[48..64]);
        Stamp {
            dev: u64::from_le_bytes(u(0..8)),
            ino: u64::from_le_bytes(u(8..16)),
            mtime: (i64::from_le_bytes(u(16..24)), i64::from_le_bytes(u(24..32))),
            ctime: (i64::from_le_bytes(u(32..40)), i64::from_le_bytes(u(40..48))),
            last_reserved: lr,
        }
    }
}

/// One live entry found by a lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hit {
    pub slot: u32,
    pub ip: IpAddr,
}

#[derive(Clone, Copy)]
struct Slot {
    state: u8,
    key: Key,
    ip: IpAddr,
}

impl Slot {
    fn encode(&self) -> [u8; SLOT] {
        let mut b = [0u8; SLOT];
        b[0] = self.state;
        let (fam, bytes) = match self.ip {
            IpAddr::V4(a) => (4u8, a.to_ipv6_mapped().octets()),
            IpAddr::V6(a) => (6u8, a.octets()),
        };
        b[1] = fam;
        b[8..24].copy_from_slice(&self.key.0);
        b[24..40].copy_from_slice(&bytes);
        b
    }

    fn decode(b: &[u8]) -> Slot {
        let mut key = [0u8; 16];
        key.copy_from_slice(&b[8..24]);
        let mut ip = [0u8; 16];
        ip.copy_from_slice(&b[24..40]);
        let v6 = Ipv6Addr::from(ip);
        let ip = match (b[1], v6.to_ipv4_mapped()) {
            (4, Some(v4)) => IpAddr::V4(v4),
            (4, None) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            _ => IpAddr::V6(v6),
        };
        Slot {
            state: b[0],
            key: Key(key),
            ip,
        }
    }
}

pub struct Index {
    file: File,
    cap: u32,
    used: u32,
    deleted: u32,
}

fn open_rw(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

impl Index {
    /// Opens the index of `dir` and returns it with the stamp it was last left at, or `None`
    /// when there is no usable index.
    pub fn open(dir: &Path) -> Option<(Index, Stamp)> {
        let file = open_rw(&dir.join(INDEX_FILE)).ok()?;
        let mut h = [0u8; HEADER as usize];
        file.read_exact_at(&mut h, 0).ok()?;
        if h[0..8] != MAGIC {
            return None;
        }
        let word = |o: usize| u32::from_le_bytes([h[o], h[o + 1], h[o + 2], h[o + 3]]);
        let (cap, used, deleted) = (word(8), word(12), word(16));
        let len = file.metadata().ok()?.len();
        if cap < MIN_CAP
            || !cap.is_power_of_two()
            || used.checked_add(deleted)? > cap
            || len != HEADER + u64::from(cap) * SLOT as u64
        {
            return None;
        }
        let stamp = Stamp::decode(&h[24..88]);
        Some((
            Index {
                file,
                cap,
                used,
                deleted,
            },
            stamp,
        ))
    }

    /// Writes a fresh index holding `entries` (replacing any old one atomically). The stamp
    /// is left blank: the caller sets it once the ledger directory is final.
    pub fn build(dir: &Path, entries: &[(Key, IpAddr)]) -> io::Result<Index> {
        let cap = capacity_for(entries.len());
        let mut slots = vec![[0u8; SLOT]; cap as usize];
        for (key, ip) in entries {
            let mut b = key.bucket(cap);
            loop {
                let s = &mut slots[b as usize];
                if s[0] == EMPTY {
                    *s = Slot {
                        state: USED,
                        key: *key,
                        ip: *ip,
                    }
                    .encode();
                    break;
                }
                if Slot::decode(s).key == *key && Slot::decode(s).ip == *ip {
                    break;
                }
                b = (b + 1) % cap;
            }
        }
        let used = slots.iter().filter(|s| s[0] == USED).count() as u32;
        let mut buf = Vec::with_capacity(HEADER as usize + slots.len() * SLOT);
        buf.extend_from_slice(&header(cap, used, 0, &Stamp::default()));
        for s in &slots {
            buf.extend_from_slice(s);
        }
        let tmp = dir.join(INDEX_TMP);
        let written = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
            .and_then(|mut f| {
                f.write_all(&buf)?;
                std::fs::rename(&tmp, dir.join(INDEX_FILE))?;
                Ok(f)
            });
        let f = match written {
            Ok(f) => f,
            Err(e) => {
                // A full disk must not leave the temporary behind.
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        };
        Ok(Index {
            file: f,
            cap,
            used,
            deleted: 0,
        })
    }

    /// Every live entry of `key` (unverified: the caller checks the reservation file).
    pub fn lookup(&self, key: Key) -> io::Result<Vec<Hit>> {
        let mut hits = Vec::new();
        self.probe(key, |slot, s| {
            if s.state == USED && s.key == key {
                hits.push(Hit { slot, ip: s.ip });
            }
            false
        })?;
        Ok(hits)
    }

    /// Records that `key` holds `ip`. Grows the table when it gets half full.
    pub fn insert(&mut self, dir: &Path, key: Key, ip: IpAddr) -> io::Result<()> {
        if (self.used + self.deleted + 1) * 2 > self.cap {
            self.rehash(dir)?;
        }
        let mut present = false;
        let mut free: Option<(u32, u8)> = None;
        self.probe(key, |slot, s| {
            if s.state == USED && s.key == key && s.ip == ip {
                present = true;
                return true;
            }
            if s.state != USED && free.is_none() {
                free = Some((slot, s.state));
            }
            false
        })?;
        if present {
            return Ok(());
        }
        let (slot, was) = match free {
            Some(f) => f,
            None => return Err(io::Error::other("index full")),
        };
        self.write_slot(
            slot,
            &Slot {
                state: USED,
                key,
                ip,
            },
        )?;
        self.used += 1;
        if was == DELETED {
            self.deleted -= 1;
        }
        self.write_counts()
    }

    /// Forgets one entry found by [`Index::lookup`].
    pub fn remove(&mut self, hit: Hit) -> io::Result<()> {
        let mut b = [0u8; SLOT];
        self.file.read_exact_at(&mut b, slot_offset(hit.slot))?;
        let s = Slot::decode(&b);
        if s.state != USED || s.ip != hit.ip {
            return Ok(());
        }
        self.write_slot(
            hit.slot,
            &Slot {
                state: DELETED,
                ..s
            },
        )?;
        self.used -= 1;
        self.deleted += 1;
        self.write_counts()
    }

    pub fn set_stamp(&mut self, stamp: &Stamp) -> io::Result<()> {
        let mut b = [0u8; 64];
        stamp.encode(&mut b);
        self.file.write_all_at(&b, 24)
    }

    /// Walks the probe chain of `key` from its bucket to the first never-used slot, calling
    /// `visit` on each slot; stops early when `visit` returns true.
    fn probe(&self, key: Key, mut visit: impl FnMut(u32, &Slot) -> bool) -> io::Result<()> {
        let mut pos = key.bucket(self.cap);
        let mut seen = 0u32;
        let mut buf = vec![0u8; CHUNK as usize * SLOT];
        while seen < self.cap {
            let n = CHUNK.min(self.cap - pos).min(self.cap - seen);
            let bytes = &mut buf[..n as usize * SLOT];
            self.file.read_exact_at(bytes, slot_offset(pos))?;
            for i in 0..n {
                let s = Slot::decode(&bytes[i as usize * SLOT..(i as usize + 1) * SLOT]);
                if s.state == EMPTY {
                    visit(pos + i, &s);
                    return Ok(());
                }
                if visit(pos + i, &s) {
                    return Ok(());
                }
            }
            seen += n;
            pos = (pos + n) % self.cap;
        }
        Ok(())
    }

    fn rehash(&mut self, dir: &Path) -> io::Result<()> {
        let mut all = vec![0u8; self.cap as usize * SLOT];
        self.file.read_exact_at(&mut all, HEADER)?;
        let live: Vec<(Key, IpAddr)> = all
            .chunks_exact(SLOT)
            .map(Slot::decode)
            .filter(|s| s.state == USED)
            .map(|s| (s.key, s.ip))
            .collect();
        *self = Index::build(dir, &live)?;
        Ok(())
    }

    fn write_slot(&self, slot: u32, s: &Slot) -> io::Result<()> {
        self.file.write_all_at(&s.encode(), slot_offset(slot))
    }

    fn write_counts(&self) -> io::Result<()> {
        let mut b = [0u8; 8];
        b[0..4].copy_from_slice(&self.used.to_le_bytes());
        b[4..8].copy_from_slice(&self.deleted.to_le_bytes());
        self.file.write_all_at(&b, 12)
    }
}

fn slot_offset(slot: u32) -> u64 {
    HEADER + u64::from(slot) * SLOT as u64
}

fn capacity_for(entries: usize) -> u32 {
    let want = (entries.saturating_add(1)).saturating_mul(4);
    (want.max(MIN_CAP as usize) as u32).next_power_of_two()
}

fn header(cap: u32, used: u32, deleted: u32, stamp: &Stamp) -> [u8; HEADER as usize] {
    let mut h = [0u8; HEADER as usize];
    h[0..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&cap.to_le_bytes());
    h[12..16].copy_from_slice(&used.to_le_bytes());
    h[16..20].copy_from_slice(&deleted.to_le_bytes());
    stamp.encode(&mut h[24..88]);
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!(
            "hl-index-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_failed_build_leaves_no_temporary() {
        let d = tmpdir();
        // The index's name is taken by a directory: the rename fails.
        std::fs::create_dir_all(d.join(INDEX_FILE).join("x")).unwrap();
        assert!(Index::build(&d, &[]).is_err());
        assert!(!d.join(INDEX_TMP).exists());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn keys_differ_by_kind_and_parts() {
        assert_ne!(Key::attachment("a", "b"), Key::legacy("a"));
        assert_ne!(Key::attachment("ab", ""), Key::attachment("a", "b"));
        assert_eq!(Key::attachment("a", "b"), Key::attachment("a", "b"));
    }

    #[test]
    fn build_lookup_insert_remove_grow() {
        let d = tmpdir();
        let k1 = Key::attachment("c1", "eth0");
        let k2 = Key::attachment("c2", "eth0");
        let mut idx = Index::build(&d, &[(k1, ip("10.0.0.2")), (k1, ip("2001:db8::2"))]).unwrap();
        let hits: Vec<IpAddr> = idx.lookup(k1).unwrap().iter().map(|h| h.ip).collect();
        assert_eq!(hits.len(), 2);
        assert!(hits.contains(&ip("10.0.0.2")) && hits.contains(&ip("2001:db8::2")));
        assert!(idx.lookup(k2).unwrap().is_empty());

        // Enough inserts to force several rehashes.
        for i in 0..500u32 {
            let k = Key::attachment(&format!("x{i}"), "eth0");
            idx.insert(&d, k, IpAddr::V4(Ipv4Addr::from(0x0a01_0000 + i)))
                .unwrap();
        }
        idx.insert(&d, k1, ip("10.0.0.2")).unwrap();
        assert_eq!(idx.lookup(k1).unwrap().len(), 2);
        for i in (0..500u32).step_by(7) {
            let k = Key::attachment(&format!("x{i}"), "eth0");
            let hits = idx.lookup(k).unwrap();
            assert_eq!(
                hits,
                [Hit {
                    slot: hits[0].slot,
                    ip: IpAddr::V4(Ipv4Addr::from(0x0a01_0000 + i))
                }]
            );
            idx.remove(hits[0]).unwrap();
            assert!(idx.lookup(k).unwrap().is_empty());
        }

        let stamp = Stamp::take(&d, &[Some(b"10.0.0.2".to_vec()), None]).unwrap();
        idx.set_stamp(&stamp).unwrap();
        drop(idx);
        let (idx, got) = Index::open(&d).unwrap();
        assert_eq!(got, stamp);
        assert_eq!(idx.lookup(Key::attachment("x1", "eth0")).unwrap().len(), 1);
        assert!(
            idx.lookup(Key::attachment("x7", "eth0"))
                .unwrap()
                .is_empty()
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn garbage_index_is_ignored() {
        let d = tmpdir();
        assert!(Index::open(&d).is_none());
        for junk in [
            &b""[..],
            b"HLIDX",
            b"garbage garbage garbage",
            &[0u8; 500][..],
        ] {
            std::fs::write(d.join(INDEX_FILE), junk).unwrap();
            assert!(Index::open(&d).is_none());
        }
        // Right magic, wrong size.
        let idx = Index::build(&d, &[]).unwrap();
        drop(idx);
        let f = OpenOptions::new()
            .write(true)
            .open(d.join(INDEX_FILE))
            .unwrap();
        f.set_len(HEADER + 10).unwrap();
        assert!(Index::open(&d).is_none());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn stamp_moves_when_directory_changes() {
        let d = tmpdir();
        let a = Stamp::take(&d, &[]).unwrap();
        std::fs::write(d.join("10.0.0.9"), b"x").unwrap();
        let b = Stamp::take(&d, &[]).unwrap();
        assert_ne!(a, b);
        assert_ne!(b, Stamp::take(&d, &[Some(b"10.0.0.9".to_vec())]).unwrap());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
