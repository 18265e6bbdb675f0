//! Picking addresses: one per range set, requested addresses first, otherwise round robin
//! from the set's last reserved address; rollback of everything this ADD took when any set
//! fails. Messages are the reference's, since runtimes and users grep for them.

use std::collections::HashSet;
use std::net::IpAddr;

use crate::ledger::{LedgerError, Session};
use crate::range::RangeSet;

/// After this many taken candidates in a row, list the directory once instead of trying
/// each address (a nearly full /16 would otherwise cost one failed open per address).
const PROBES_BEFORE_LISTING: usize = 32;

/// What the allocator needs from the ledger; the real one is a locked [`Session`].
pub trait Store {
    /// Every address (cid, ifname) holds, current and legacy files alike.
    fn held(&mut self, cid: &str, ifname: &str) -> Result<Vec<IpAddr>, LedgerError>;
    fn last_reserved(&self, set: usize) -> Option<IpAddr>;
    /// `Ok(false)` when the address is taken.
    fn reserve(
        &mut self,
        ip: IpAddr,
        cid: &str,
        ifname: &str,
        set: usize,
    ) -> Result<bool, LedgerError>;
    /// Addresses known to be taken, from one directory listing.
    fn taken(&self) -> Result<HashSet<IpAddr>, LedgerError>;
    fn rollback(&mut self, ips: &[IpAddr], cid: &str, ifname: &str);
}

impl Store for Session<'_> {
    fn held(&mut self, cid: &str, ifname: &str) -> Result<Vec<IpAddr>, LedgerError> {
        let h = self.holdings(cid, ifname)?;
        let mut all = h.current;
        all.extend(h.legacy);
        Ok(all)
    }

    fn last_reserved(&self, set: usize) -> Option<IpAddr> {
        Session::last_reserved(self, set)
    }

    fn reserve(
        &mut self,
        ip: IpAddr,
        cid: &str,
        ifname: &str,
        set: usize,
    ) -> Result<bool, LedgerError> {
        Session::reserve(self, ip, cid, ifname, set)
    }

    fn taken(&self) -> Result<HashSet<IpAddr>, LedgerError> {
        Session::taken(self)
    }

    fn rollback(&mut self, ips: &[IpAddr], cid: &str, ifname: &str) {
        self.release_exact(ips, cid, ifname);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AllocError {
    #[error("{ip} not in range set {set}")]
    NotInSet { ip: IpAddr, set: String },
    #[error("requested ip {0} is subnet's gateway")]
    Gateway(IpAddr),
    #[error("requested IP address {ip} is not available in range set {set}")]
    Unavailable { ip: IpAddr, set: String },
    #[error("{ip} has been allocated to {cid}, duplicate allocation is not allowed")]
    Duplicate { ip: IpAddr, cid: String },
    #[error("no IP addresses available in range set: {0}")]
    Exhausted(String),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

#[derive(Debug, thiserror::Error)]
pub enum AddError {
    #[error("failed to allocate for range {index}: {source}")]
    Range { index: usize, source: AllocError },
    #[error("failed to allocate all requested IPs:{}", .0.iter().map(|ip| format!(" {ip}")).collect::<String>())]
    Unfulfilled(Vec<IpAddr>),
}

/// One address handed out: the address with its subnet's prefix, and the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allocation {
    pub ip: IpAddr,
    pub prefix: u8,
    pub gateway: IpAddr,
}

/// Allocates one address per range set for (cid, ifname).
pub fn add(
    store: &mut impl Store,
    sets: &[RangeSet],
    requested: &[IpAddr],
    cid: &str,
    ifname: &str,
) -> Result<Vec<Allocation>, AddError> {
    let mut pending: Vec<IpAddr> = requested.to_vec();
    let mut got: Vec<Allocation> = Vec::with_capacity(sets.len());
    // Looked up once: what this ADD reserves lands in other (disjoint) sets, so it cannot
    // change the answer for a later set.
    let mut held: Option<Vec<IpAddr>> = None;
    for (index, set) in sets.iter().enumerate() {
        let wanted = pending
            .iter()
            .position(|ip| set.contains(*ip))
            .map(|p| pending.remove(p));
        let result = match wanted {
            Some(ip) => reserve_requested(store, set, index, ip, cid, ifname),
            None => {
                let held = match &held {
                    Some(h) => h,
                    None => {
                        let mut h = match store.held(cid, ifname) {
                            Ok(h) => h,
                            Err(e) => {
                                rollback(store, &got, cid, ifname);
                                return Err(AddError::Range {
                                    index,
                                    source: e.into(),
                                });
                            }
                        };
                        // The reference reports the first match in directory-walk (name) order.
                        h.sort_by_cached_key(|ip| ip.to_string());
                        held.insert(h)
                    }
                };
                match held.iter().find(|ip| set.contains(**ip)) {
                    Some(&ip) => Err(AllocError::Duplicate {
                        ip,
                        cid: cid.to_string(),
                    }),
                    None => reserve_next(store, set, index, cid, ifname),
                }
            }
        };
        match result {
            Ok(a) => got.push(a),
            Err(source) => {
                rollback(store, &got, cid, ifname);
                return Err(AddError::Range { index, source });
            }
        }
    }
    if !pending.is_empty() {
        rollback(store, &got, cid, ifname);
        return Err(AddError::Unfulfilled(pending));
    }
    Ok(got)
}

fn rollback(store: &mut impl Store, got: &[Allocation], cid: &str, ifname: &str) {
    if !got.is_empty() {
        let ips: Vec<IpAddr> = got.iter().map(|a| a.ip).collect();
        store.rollback(&ips, cid, ifname);
    }
}

fn reserve_requested(
    store: &mut impl Store,
    set: &RangeSet,
    index: usize,
    ip: IpAddr,
    cid: &str,
    ifname: &str,
) -> Result<Allocation, AllocError> {
    let range = set.range_for(ip).ok_or_else(|| AllocError::NotInSet {
        ip,
        set: set.to_string(),
    })?;
    if ip == range.gateway {
        return Err(AllocError::Gateway(ip));
    }
    if !store.reserve(ip, cid, ifname, index)? {
        return Err(AllocError::Unavailable {
            ip,
            set: set.to_string(),
        });
    }
    Ok(Allocation {
        ip,
        prefix: range.subnet.prefix(),
        gateway: range.gateway,
    })
}

fn reserve_next(
    store: &mut impl Store,
    set: &RangeSet,
    index: usize,
    cid: &str,
    ifname: &str,
) -> Result<Allocation, AllocError> {
    let last = store.last_reserved(index);
    let mut misses = 0usize;
    let mut known_taken: Option<HashSet<IpAddr>> = None;
    for (r, ip) in set.candidates(last) {
        if known_taken.as_ref().is_some_and(|t| t.contains(&ip)) {
            continue;
        }
        if store.reserve(ip, cid, ifname, index)? {
            let range = &set.ranges()[r];
            return Ok(Allocation {
                ip,
                prefix: range.subnet.prefix(),
                gateway: range.gateway,
            });
        }
        misses += 1;
        if misses == PROBES_BEFORE_LISTING {
            known_taken = Some(store.taken()?);
        }
    }
    Err(AllocError::Exhausted(set.to_string()))
}

/// The first range set with no free address left, for STATUS.
pub fn first_exhausted(sets: &[RangeSet], taken: &HashSet<IpAddr>) -> Option<usize> {
    sets.iter().position(|set| {
        let used = taken
            .iter()
            .filter(|ip| set.range_for(**ip).is_some_and(|r| r.gateway != **ip))
            .count() as u128;
        used >= set.capacity()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::range::{Cidr, Range};
    use std::collections::HashMap;

    #[derive(Default)]
    struct Mem {
        files: HashMap<IpAddr, (String, String)>,
        last: HashMap<usize, IpAddr>,
        reserve_calls: usize,
        listings: usize,
    }

    impl Store for Mem {
        fn held(&mut self, cid: &str, ifname: &str) -> Result<Vec<IpAddr>, LedgerError> {
            Ok(self
                .files
                .iter()
                .filter(|(_, (c, i))| c == cid && (i == ifname || i.is_empty()))
                .map(|(ip, _)| *ip)
                .collect())
        }
        fn last_reserved(&self, set: usize) -> Option<IpAddr> {
            self.last.get(&set).copied()
        }
        fn reserve(
            &mut self,
            ip: IpAddr,
            cid: &str,
            ifname: &str,
            set: usize,
        ) -> Result<bool, LedgerError> {
            self.reserve_calls += 1;
            if self.files.contains_key(&ip) {
                return Ok(false);
            }
            self.files.insert(ip, (cid.into(), ifname.into()));
            self.last.insert(set, ip);
            Ok(true)
        }
        fn taken(&self) -> Result<HashSet<IpAddr>, LedgerError> {
            Ok(self.files.keys().copied().collect())
        }
        fn rollback(&mut self, ips: &[IpAddr], cid: &str, ifname: &str) {
            for ip in ips {
                if self
                    .files
                    .get(ip)
                    .is_some_and(|(c, i)| c == cid && i == ifname)
                {
                    self.files.remove(ip);
                }
            }
        }
    }

    impl Mem {
        fn taken_mut(&mut self) -> &mut HashMap<IpAddr, (String, String)> {
            self.listings += 1;
            &mut self.files
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn set(subnet: &str) -> RangeSet {
        RangeSet::new(vec![
            Range::new(Cidr::parse(subnet), None, None, None).unwrap(),
        ])
        .unwrap()
    }

    fn set_se(subnet: &str, start: &str, end: &str) -> RangeSet {
        RangeSet::new(vec![
            Range::new(Cidr::parse(subnet), Some(ip(start)), Some(ip(end)), None).unwrap(),
        ])
        .unwrap()
    }

    fn one(m: &mut Mem, sets: &[RangeSet], cid: &str) -> Result<Vec<String>, String> {
        add(m, sets, &[], cid, "eth0")
            .map(|v| {
                v.iter()
                    .map(|a| format!("{}/{} gw {}", a.ip, a.prefix, a.gateway))
                    .collect()
            })
            .map_err(|e| e.to_string())
    }

    #[test]
    fn dual_stack_first_allocation() {
        let mut m = Mem::default();
        let sets = [set("10.1.2.0/24"), set("2001:db8:1::/64")];
        assert_eq!(
            one(&mut m, &sets, "c1").unwrap(),
            [
                "10.1.2.2/24 gw 10.1.2.1",
                "2001:db8:1::2/64 gw 2001:db8:1::1"
            ]
        );
        assert_eq!(m.last[&0], ip("10.1.2.2"));
        assert_eq!(m.last[&1], ip("2001:db8:1::2"));
    }

    #[test]
    fn round_robin_skips_gateway_and_wraps() {
        let mut m = Mem::default();
        let sets = [set("10.1.2.0/29")];
        let mut seen = Vec::new();
        for i in 0..5 {
            seen.push(one(&mut m, &sets, &format!("c{i}")).unwrap()[0].clone());
        }
        assert_eq!(
            seen,
            [
                "10.1.2.2/29 gw 10.1.2.1",
                "10.1.2.3/29 gw 10.1.2.1",
                "10.1.2.4/29 gw 10.1.2.1",
                "10.1.2.5/29 gw 10.1.2.1",
                "10.1.2.6/29 gw 10.1.2.1"
            ]
        );
        assert_eq!(
            one(&mut m, &sets, "c9").unwrap_err(),
            "failed to allocate for range 0: no IP addresses available in range set: 10.1.2.1-10.1.2.6"
        );
        // Free one in the middle: the next one is found by wrapping past the end.
        m.files.remove(&ip("10.1.2.3"));
        assert_eq!(
            one(&mut m, &sets, "c10").unwrap()[0],
            "10.1.2.3/29 gw 10.1.2.1"
        );
        // Round robin continues after the last reservation, not at the lowest free one.
        m.files.remove(&ip("10.1.2.2"));
        m.files.remove(&ip("10.1.2.5"));
        assert_eq!(
            one(&mut m, &sets, "c11").unwrap()[0],
            "10.1.2.5/29 gw 10.1.2.1"
        );
    }

    #[test]
    fn exhaustion_message_matches_reference() {
        let mut m = Mem::default();
        let sets = [set("10.1.2.0/24")];
        for i in 0..253 {
            one(&mut m, &sets, &format!("c{i}")).unwrap();
        }
        assert_eq!(
            one(&mut m, &sets, "x").unwrap_err(),
            "failed to allocate for range 0: no IP addresses available in range set: 10.1.2.1-10.1.2.254"
        );
        assert_eq!(first_exhausted(&sets, &m.taken().unwrap()), Some(0));
    }

    #[test]
    fn duplicate_allocation_is_refused() {
        let mut m = Mem::default();
        let sets = [set("10.1.2.0/24")];
        one(&mut m, &sets, "c1").unwrap();
        assert_eq!(
            one(&mut m, &sets, "c1").unwrap_err(),
            "failed to allocate for range 0: 10.1.2.2 has been allocated to c1, duplicate allocation is not allowed"
        );
        // Another interface of the same container is a different attachment.
        assert_eq!(
            add(&mut m, &sets, &[], "c1", "eth1").unwrap()[0].ip,
            ip("10.1.2.3")
        );
        // A legacy (ID only) file counts too.
        m.files
            .insert(ip("10.1.2.50"), ("c7".into(), String::new()));
        assert!(
            one(&mut m, &sets, "c7")
                .unwrap_err()
                .contains("10.1.2.50 has been allocated to c7")
        );
    }

    #[test]
    fn failure_in_second_set_rolls_back_only_this_add() {
        let mut m = Mem::default();
        let sets = [
            set("10.1.2.0/24"),
            set_se("10.1.3.0/24", "10.1.3.5", "10.1.3.5"),
        ];
        one(&mut m, &sets, "c1").unwrap();
        assert_eq!(
            one(&mut m, &sets, "c2").unwrap_err(),
            "failed to allocate for range 1: no IP addresses available in range set: 10.1.3.5-10.1.3.5"
        );
        assert!(!m.files.contains_key(&ip("10.1.2.3")));
        assert_eq!(m.files.len(), 2);
    }

    #[test]
    fn requested_ips() {
        let mut m = Mem::default();
        let sets = [set("10.1.2.0/24"), set("2001:db8::/64")];
        let got = add(
            &mut m,
            &sets,
            &[ip("2001:db8::99"), ip("10.1.2.77")],
            "c1",
            "eth0",
        )
        .unwrap();
        assert_eq!(got[0].ip, ip("10.1.2.77"));
        assert_eq!(got[1].ip, ip("2001:db8::99"));
        let e = add(&mut m, &sets, &[ip("10.1.2.77")], "c2", "eth0").unwrap_err();
        assert_eq!(
            e.to_string(),
            "failed to allocate for range 0: requested IP address 10.1.2.77 is not available in range set 10.1.2.1-10.1.2.254"
        );
        let e = add(&mut m, &sets, &[ip("10.1.2.1")], "c2", "eth0").unwrap_err();
        assert_eq!(
            e.to_string(),
            "failed to allocate for range 0: requested ip 10.1.2.1 is subnet's gateway"
        );
        let before = m.files.len();
        let e = add(
            &mut m,
            &sets,
            &[ip("10.9.9.9"), ip("10.1.2.5"), ip("10.1.2.6")],
            "c3",
            "eth0",
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "failed to allocate all requested IPs: 10.9.9.9 10.1.2.6"
        );
        assert_eq!(
            m.files.len(),
            before,
            "everything this ADD took is released"
        );
        // A requested address skips the duplicate check, as in the reference.
        assert!(add(&mut m, &sets[..1], &[ip("10.1.2.8")], "c1", "eth0").is_ok());
    }

    #[test]
    fn long_taken_runs_list_the_directory_once() {
        let mut m = Mem::default();
        let sets = [set("10.1.0.0/16")];
        for i in 2..3000u32 {
            let a = IpAddr::V4(std::net::Ipv4Addr::from(0x0a01_0000 + i));
            m.taken_mut().insert(a, ("x".into(), "eth0".into()));
        }
        let got = one(&mut m, &sets, "c1").unwrap();
        assert_eq!(got[0], "10.1.11.184/16 gw 10.1.0.1");
        assert!(m.reserve_calls < 100, "{} reserve calls", m.reserve_calls);
    }

    #[test]
    fn status_capacity() {
        let sets = [set_se("10.1.2.0/24", "10.1.2.1", "10.1.2.3")];
        let mut taken: HashSet<IpAddr> = [ip("10.1.2.2")].into();
        assert_eq!(first_exhausted(&sets, &taken), None);
        taken.insert(ip("10.1.2.1"));
        assert_eq!(
            first_exhausted(&sets, &taken),
            None,
            "the gateway is not capacity"
        );
        taken.insert(ip("10.1.2.3"));
        assert_eq!(first_exhausted(&sets, &taken), Some(0));
        assert_eq!(first_exhausted(&[set("2001:db8::/64")], &taken), None);
    }
}
