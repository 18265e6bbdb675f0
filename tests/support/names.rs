//! Unique names, so that tests running in parallel (and other people's tests on the same
//! machine) never collide on an interface, namespace or directory name.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

/// Linux interface names are at most 15 bytes (IFNAMSIZ - 1).
const IFNAME_MAX: usize = 15;
const SUFFIX_LEN: usize = 6;

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A random number that also differs between calls in one process: `RandomState` is
/// seeded from the OS per process, and the counter separates calls within it.
pub fn random_u64() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u32(std::process::id());
    h.finish()
}

/// Lower-case base-36 text of `n`, exactly `len` characters.
pub(crate) fn base36(mut n: u64, len: usize) -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = vec![b'0'; len];
    for slot in out.iter_mut().rev() {
        *slot = DIGITS[(n % 36) as usize];
        n /= 36;
    }
    String::from_utf8(out).unwrap_or_default()
}

/// `prefix` followed by a random 6-character suffix, at most 15 bytes in all so it is
/// valid as an interface name (a longer prefix is cut).
pub fn unique_name(prefix: &str) -> String {
    let keep = prefix
        .char_indices()
        .map(|(i, c)| i + c.len_utf8())
        .take_while(|&end| end <= IFNAME_MAX - SUFFIX_LEN)
        .last()
        .unwrap_or(0);
    format!("{}{}", &prefix[..keep], base36(random_u64(), SUFFIX_LEN))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_in_ifnamsiz_and_differ() {
        let a = unique_name("a-very-long-prefix");
        let b = unique_name("a-very-long-prefix");
        assert!(a.len() <= IFNAME_MAX, "{a}");
        assert!(a.starts_with("a-very-lo"), "{a}");
        assert_ne!(a, b);
        assert_eq!(unique_name("veth").len(), 10);
    }
}
