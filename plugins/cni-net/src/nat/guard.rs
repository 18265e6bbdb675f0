//! The localnet guard: what keeps pods away from the host's 127.0.0.1 once portmap has
//! set `route_localnet` on the interface that leads to them (CVE-2020-8558 class).
//!
//! # Why it is needed
//! A connection to `127.0.0.1:<hostPort>` is DNATed to the pod and masqueraded; the
//! kernel only routes it (and accepts the replies, whose destination is 127.0.0.1
//! again after the reverse NAT) when `route_localnet=1` on the pod-facing interface.
//! That same switch makes the host accept *any* packet for 127.0.0.0/8 arriving there:
//! a pod routing 127.0.0.1 via its gateway (NET_ADMIN), or sending a hand-made frame to
//! the bridge's MAC (NET_RAW only, which pods get by default), reaches services the
//! host bound to loopback only.
//!
//! # What it is
//! A table of our own that every layout shares (`ip cni_rs_localnet`), written once per
//! node by `nft -f` (see [`skeleton`]), with one fixed rule in chain `input` (filter
//! hook input at priority -10, after conntrack and before any filter chain, iptables'
//! included) and two sets:
//!
//! ```text
//! set guarded { type ifname; flags timeout; }                 # pod-facing interfaces
//! set owners { type ifname . ipv4_addr; flags timeout; }      # who needs each guarded
//! iifname @guarded ip daddr 127.0.0.0/8 ct state & (established|related) == 0
//!     ct status & dnat == 0 drop
//! ```
//!
//! Replies of the host's own connections to a localhost host port are ESTABLISHED;
//! a pod's packet to `127.0.0.1:<hostPort>` is DNATed away in prerouting and never
//! reaches input; everything else a pod sends to 127.0.0.0/8 is dropped.
//!
//! Each container with localhost host ports owns one element of `owners`, keyed by
//! (pod-facing interface, pod IPv4) and commented `<network> <container ID> <if>`; an
//! interface is in `guarded` while at least one owner names it. The owners are the
//! count: nothing else is kept anywhere.
//!
//! # Why one table for every layout
//! The guard must hold whatever layout wrote the DNAT rules, on mixed nodes (Go and
//! Rust plugins, a layout switched with pods running) too. A table of our own is
//! untouched by `iptables -F`/`iptables-restore` of the filter table (firewalld,
//! an admin restoring a saved ruleset, kube-proxy), which would silently reopen the
//! hole for an iptables-filter rule. Each driver calls [`install`] before its DNAT
//! rules and [`remove`] after tearing them down, under the verbs' NAT lock.
//!
//! # Why sets, and expiry instead of deletion
//! Deleting anything from nf_tables (a rule, an element) makes the process wait an RCU
//! grace period (~10 ms) when its netfilter socket closes: with a rule per container,
//! every DEL of a host-port pod paid it. Here ADD only adds elements (point look-ups,
//! one batch) and DEL gives elements a 1 ms timeout, which the set's garbage collector
//! honours in the background (see `Nftnl::expire_elements`; kernels before 6.10 fall
//! back to a deletion). The table and its rule stay for good, like the sets layout's.
//!
//! # Lifetime
//! ADD adds the owner and the interface; DEL and GC (per container) expire the
//! container's owner, then, when no other live owner names its interface, put
//! `route_localnet` back to 0 there and only then expire the interface from `guarded`,
//! so the switch is never on without its guard (see [`remove`]).

use std::collections::HashSet;

use super::error::NatError;
use super::model::{LocalnetGuard, PortMapConfig};
use super::names::{
    LOCALNET_GUARD_CHAIN as CHAIN, LOCALNET_GUARD_TABLE as TABLE, LOCALNET_GUARDED_SET as GUARDED,
    LOCALNET_OWNERS_SET as OWNERS,
};
use crate::Family;
use crate::netlink::{Ipv4DevConf, Netlink};
use crate::nftnl::{self, Element, Nftnl, Op};
use crate::tools::{self, Tool};

/// `IFNAMSIZ`: nft keys interface names NUL-padded to it.
const IFNAMSIZ: usize = 16;
/// The kernel keeps at most 255 bytes of user data; the comment must stay whole to be
/// found again.
const MAX_COMMENT: usize = 250;
/// Look-ups before [`install`] gives up on an element that is expiring: about 40 ms,
/// far more than the jiffy or two an expiry takes.
const ATTEMPTS: usize = 20;

/// The table, written once per node. After conntrack (-200) and the nat hooks'
/// prerouting (-100), before filter (0).
pub(crate) fn skeleton() -> String {
    format!(
        "table ip {TABLE} {{\n\
         \tset {GUARDED} {{ type ifname; flags timeout; }}\n\
         \tset {OWNERS} {{ type ifname . ipv4_addr; flags timeout; }}\n\
         \tchain {CHAIN} {{\n\
         \t\ttype filter hook input priority -10; policy accept;\n\
         \t\tiifname @{GUARDED} ip daddr 127.0.0.0/8 \
         ct state & (established|related) == 0 ct status & dnat == 0 drop\n\
         \t}}\n\
         }}\n"
    )
}

/// The owner comment; CNI network names, container IDs and interface names contain
/// no spaces.
fn owner(network: &str, container_id: &str, ifname: &str) -> String {
    format!("{network} {container_id} {ifname}")
}

fn is_owned_by(comment: &str, network: &str, container_id: &str) -> bool {
    let prefix = format!("{network} {container_id} ");
    comment
        .strip_prefix(&prefix)
        .is_some_and(|i| !i.contains(' '))
}

/// An interface name as a key field.
fn ifname_field(ifname: &str) -> Vec<u8> {
    let mut name = ifname.as_bytes().to_vec();
    name.resize(IFNAMSIZ, 0);
    name
}

fn guarded_element(ifname_key: &[u8]) -> Element {
    Element {
        key: ifname_key.to_vec(),
        ..Element::default()
    }
}

fn owner_element(guard: &LocalnetGuard, comment: Option<&str>) -> Element {
    Element {
        key: [ifname_field(&guard.ifname), guard.pod.octets().to_vec()].concat(),
        comment: comment.map(str::to_string),
        ..Element::default()
    }
}

/// The interface field of an owner's key.
fn owner_if(owner: &Element) -> &[u8] {
    &owner.key[..owner.key.len().min(IFNAMSIZ)]
}

/// An owner that is not on its way out.
fn live(e: &Element) -> bool {
    e.timeout_ms.is_none()
}

fn kernel(what: &'static str) -> impl Fn(std::io::Error) -> NatError {
    move |source| NatError::Kernel {
        context: format!("{what} the localnet guard (nftables table {TABLE})"),
        source,
    }
}

/// Runs `f` on a fresh nf_tables socket, closed at exit (see [`nftnl::close_at_exit`]).
fn with_nl<R>(f: impl FnOnce(&mut Nftnl) -> Result<R, NatError>) -> Result<R, NatError> {
    let mut nl = Nftnl::open().map_err(kernel("open netlink for"))?;
    let result = f(&mut nl);
    nftnl::close_at_exit(nl);
    result
}

/// Guards `config.localnet_guard`'s interface on behalf of this container: the table
/// on a node's first use, then point look-ups and at most one netlink batch. Nothing
/// to do without an interface. The caller holds the NAT lock.
pub(crate) fn install(config: &PortMapConfig) -> Result<(), NatError> {
    let Some(guard) = config.localnet_guard.as_ref() else {
        return Ok(());
    };
    let ifname = guard.ifname.as_str();
    let comment = owner(&config.network, &config.container_id, ifname);
    if comment.len() > MAX_COMMENT || ifname.len() >= IFNAMSIZ || ifname.contains(' ') {
        return Err(NatError::Check(format!(
            "cannot guard the host's loopback for {}: owner {comment:?} too long",
            config.container_id
        )));
    }
    with_nl(|nl| install_with(nl, guard, &comment))
}

fn install_with(nl: &mut Nftnl, guard: &LocalnetGuard, comment: &str) -> Result<(), NatError> {
    // Under the NAT lock: two of our processes never both write it.
    if !nl
        .table_exists(Family::V4, TABLE)
        .map_err(kernel("look up"))?
    {
        tools::run(Tool::Nft, &["-f", "-"], Some(&skeleton()))?;
    }
    let owner = owner_element(guard, Some(comment));
    let guarded = guarded_element(&ifname_field(&guard.ifname));
    for _ in 0..ATTEMPTS {
        let held = nl
            .element(Family::V4, TABLE, OWNERS, &owner)
            .map_err(kernel("look up"))?;
        let on = nl
            .element(Family::V4, TABLE, GUARDED, &guarded)
            .map_err(kernel("look up"))?;
        // An element a DEL has just expired is still there for a jiffy or two, and
        // adding it again now would not revive it: wait it out.
        if held.iter().chain(on.iter()).any(|e| !live(e)) {
            std::thread::sleep(std::time::Duration::from_millis(2));
            continue;
        }
        let mut ops = Vec::new();
        if on.is_none() {
            ops.push(Op::AddElement {
                set: GUARDED.to_string(),
                element: guarded.clone(),
            });
        }
        match held {
            Some(e) if e.comment.as_deref() == Some(comment) => {}
            stale => {
                // Another owner at our key: IPAM gave that address to this container,
                // so its former holder's DEL never came. An add would keep its comment.
                if stale.is_some() {
                    ops.push(Op::DeleteElement {
                        set: OWNERS.to_string(),
                        element: owner.clone(),
                    });
                }
                ops.push(Op::AddElement {
                    set: OWNERS.to_string(),
                    element: owner.clone(),
                });
            }
        }
        if ops.is_empty() {
            return Ok(());
        }
        match nl.commit(Family::V4, TABLE, &ops) {
            // A deletion raced an expiry: look again.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            result => return result.map_err(kernel("install")),
        }
    }
    Err(NatError::Conflict(format!(
        "{TABLE}: entries of a removed container did not expire"
    )))
}

/// Releases the container's claims (DEL, and GC per container): expires its owner
/// elements, then releases each interface no other live owner names (see
/// [`release`]). `hint` (the last ADD's record) makes finding the owner one look-up;
/// without one, `owners` is listed once. When nothing of the container is there, DEL
/// costs that one look-up (or listing) and nothing else.
pub(crate) fn remove(
    network: &str,
    container_id: &str,
    hint: Option<&LocalnetGuard>,
) -> Result<(), NatError> {
    with_nl(|nl| {
        let mut mine: Vec<Element> = Vec::new();
        if let Some(guard) = hint {
            let found = nl
                .element(Family::V4, TABLE, OWNERS, &owner_element(guard, None))
                .map_err(kernel("look up"))?;
            mine.extend(found.filter(|e| {
                live(e)
                    && e.comment
                        .as_deref()
                        .is_some_and(|c| is_owned_by(c, network, container_id))
            }));
            if mine.is_empty() {
                return Ok(());
            }
        }
        // Also the claims an earlier ADD of the container made elsewhere, if any.
        let all = nl
            .elements(Family::V4, TABLE, OWNERS)
            .map_err(kernel("list"))?;
        for e in all.iter().filter(|e| live(e)) {
            let owned = e
                .comment
                .as_deref()
                .is_some_and(|c| is_owned_by(c, network, container_id));
            if owned && !mine.iter().any(|m| m.key == e.key) {
                mine.push(e.clone());
            }
        }
        release(nl, &mine, &all)
    })
}

/// GC: releases the claims of `network`'s containers not in `valid` (a container whose
/// record was lost is found here too).
pub(crate) fn gc(network: &str, valid: &HashSet<&str>) -> Result<(), NatError> {
    let prefix = format!("{network} ");
    with_nl(|nl| {
        let all = nl
            .elements(Family::V4, TABLE, OWNERS)
            .map_err(kernel("list"))?;
        let doomed: Vec<Element> = all
            .iter()
            .filter(|e| live(e))
            .filter(|e| {
                e.comment
                    .as_deref()
                    .and_then(|c| c.strip_prefix(&prefix))
                    .and_then(|rest| rest.split_once(' '))
                    .is_some_and(|(id, ifname)| !ifname.contains(' ') && !valid.contains(id))
            })
            .cloned()
            .collect();
        release(nl, &doomed, &all)
    })
}

/// Expires the owners `doomed` (without waiting: one lingering a jiffy guards nothing
/// extra), then, for each of their interfaces that no other live owner of `all`
/// names: `route_localnet` back to 0 first (never on without a guard), then the
/// interface expired from `guarded`.
///
/// That reset is unconditional: we cannot tell whether an admin, or the Go portmap on
/// the same bridge, also wanted it on. A pod-facing interface has no use for it but
/// localhost host ports, and the next ADD that needs it sets it again behind a guard.
fn release(nl: &mut Nftnl, doomed: &[Element], all: &[Element]) -> Result<(), NatError> {
    if doomed.is_empty() {
        return Ok(());
    }
    let claims: Vec<(&str, Element)> = doomed.iter().map(|e| (OWNERS, e.clone())).collect();
    expire(nl, &claims)?;
    let needed: HashSet<&[u8]> = all
        .iter()
        .filter(|e| live(e) && !doomed.iter().any(|d| d.key == e.key))
        .map(owner_if)
        .collect();
    let mut freed: Vec<&[u8]> = doomed
        .iter()
        .map(owner_if)
        .filter(|i| !needed.contains(i))
        .collect();
    freed.sort();
    freed.dedup();
    if freed.is_empty() {
        return Ok(());
    }
    let names: Vec<String> = freed
        .iter()
        .map(|i| {
            String::from_utf8_lossy(i)
                .trim_end_matches('\0')
                .to_string()
        })
        .collect();
    reset_route_localnet(&names)?;
    let interfaces: Vec<(&str, Element)> = freed
        .iter()
        .map(|i| (GUARDED, guarded_element(i)))
        .collect();
    expire(nl, &interfaces)
}

fn expire(nl: &mut Nftnl, doomed: &[(&str, Element)]) -> Result<(), NatError> {
    nl.expire_elements(Family::V4, TABLE, doomed, false)
        .map_err(|e| kernel(if e.looking_up { "look up" } else { "release" })(e.source))
}

/// `route_localnet=0` on each interface that still exists.
fn reset_route_localnet(ifnames: &[String]) -> Result<(), NatError> {
    if ifnames.is_empty() {
        return Ok(());
    }
    let failed = |source: crate::error::Error| NatError::Kernel {
        context: "put route_localnet back to 0 on an unguarded interface".to_string(),
        source: std::io::Error::other(source.to_string()),
    };
    let mut nl = Netlink::open().map_err(failed)?;
    for ifname in ifnames {
        if let Some(link) = nl.link_by_name(ifname).map_err(failed)? {
            nl.ensure_ipv4_conf(&link, Ipv4DevConf::RouteLocalnet, 0)
                .map_err(failed)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_are_matched_whole() {
        assert!(is_owned_by("net c1 cni0", "net", "c1"));
        assert!(!is_owned_by("net c10 cni0", "net", "c1"));
        assert!(!is_owned_by("net2 c1 cni0", "net", "c1"));
        assert!(!is_owned_by("net c1 cni0 x", "net", "c1"));
        assert_eq!(owner("net", "c1", "cni0"), "net c1 cni0");
    }

    /// The bytes `nft --debug=netlink` shows for `"cni0" . 10.1.2.3`: the name
    /// NUL-padded to 16 bytes, then the address in network order.
    #[test]
    fn owner_keys_use_the_kernels_layout() {
        let guard = LocalnetGuard {
            ifname: "cni0".into(),
            pod: std::net::Ipv4Addr::new(10, 1, 2, 3),
        };
        let e = owner_element(&guard, Some("net c1 cni0"));
        let mut want = b"cni0".to_vec();
        want.resize(IFNAMSIZ, 0);
        assert_eq!(guarded_element(&ifname_field("cni0")).key, want);
        want.extend([10, 1, 2, 3]);
        assert_eq!(e.key, want);
        assert_eq!(owner_if(&e), ifname_field("cni0").as_slice());
        assert_eq!(e.comment.as_deref(), Some("net c1 cni0"));
    }

    #[test]
    fn the_skeleton_drops_new_loopback_traffic_from_guarded_interfaces() {
        let text = skeleton();
        assert!(text.starts_with("table ip cni_rs_localnet {"));
        assert!(text.contains("set guarded { type ifname; flags timeout; }"));
        assert!(text.contains("set owners { type ifname . ipv4_addr; flags timeout; }"));
        assert!(text.contains("type filter hook input priority -10; policy accept;"));
        assert!(text.contains(
            "iifname @guarded ip daddr 127.0.0.0/8 ct state & (established|related) == 0 \
             ct status & dnat == 0 drop"
        ));
    }
}
