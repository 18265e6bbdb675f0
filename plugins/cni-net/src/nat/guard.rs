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
//! One rule per container that has localhost host ports, in a table of our own that
//! every layout shares (`ip cni_rs_localnet`, chain `input`: filter hook input at
//! priority -10, after conntrack and before any filter chain, iptables' included):
//!
//! ```text
//! iifname "<pod-facing if>" ip daddr 127.0.0.0/8 ct state & (established|related) == 0
//!     ct status & dnat == 0 drop comment "<network> <container ID> <if>"
//! ```
//!
//! Replies of the host's own connections to a localhost host port are ESTABLISHED;
//! a pod's packet to `127.0.0.1:<hostPort>` is DNATed away in prerouting and never
//! reaches input; everything else a pod sends to 127.0.0.0/8 is dropped.
//!
//! # Why one table for every layout
//! The guard must hold whatever layout wrote the DNAT rules, on mixed nodes (Go and
//! Rust plugins, a layout switched with pods running) too. A table of our own is
//! untouched by `iptables -F`/`iptables-restore` of the filter table (firewalld,
//! an admin restoring a saved ruleset, kube-proxy), which would silently reopen the
//! hole for an iptables-filter rule; and it is written over netlink in one batch, so
//! no layout gains a process. Each driver calls [`install`] before its DNAT rules and
//! [`remove`] after tearing them down, under the verbs' NAT lock.
//!
//! # Lifetime
//! A rule lives exactly as long as its container's mappings: ADD installs it, DEL and
//! GC (which tear down per container) remove it, and the table goes with the last
//! rule. Several containers on one bridge each hold a rule, so no count is kept
//! anywhere: the rules are the count. When the last rule of an interface goes,
//! `route_localnet` is put back to 0 there, under the same lock, so the switch is never
//! on without its guard (see `remove`).

use std::collections::HashSet;

use super::error::NatError;
use super::model::PortMapConfig;
use super::names::{LOCALNET_GUARD_CHAIN as CHAIN, LOCALNET_GUARD_TABLE as TABLE};
use crate::Family;
use crate::netlink::{Ipv4DevConf, Netlink};
use crate::nftnl::expr::{Field, Prefix, addr_match, cmp_eq, ct, meta, none_of, verdict};
use crate::nftnl::{self, KernelRule, Nftnl, Op};

/// `NF_INET_LOCAL_IN`.
const HOOK_INPUT: u32 = 1;
/// After conntrack (-200) and the nat hooks' prerouting (-100), before filter (0).
const PRIORITY: i32 = -10;
const NFT_META_IIFNAME: u32 = 6;
const NFT_CT_STATE: u32 = 0;
const NFT_CT_STATUS: u32 = 2;
/// `NF_CT_STATE_BIT(IP_CT_ESTABLISHED) | NF_CT_STATE_BIT(IP_CT_RELATED)`.
const CT_ESTABLISHED_RELATED: u32 = (1 << 1) | (1 << 2);
/// `IPS_DST_NAT`.
const CT_STATUS_DNAT: u32 = 1 << 5;
const NF_DROP: i32 = 0;
/// `IFNAMSIZ`: nft compares exact interface names NUL-padded to it.
const IFNAMSIZ: usize = 16;
/// The kernel keeps at most 255 bytes of user data; the comment must stay whole to be
/// found again.
const MAX_COMMENT: usize = 250;

/// The owner comment; CNI network names, container IDs and interface names contain
/// no spaces.
fn owner(network: &str, container_id: &str, ifname: &str) -> String {
    format!("{network} {container_id} {ifname}")
}

/// The interface a guard rule protects, from its comment.
fn guarded_if(rule: &KernelRule) -> Option<&str> {
    rule.comment.as_deref()?.rsplit(' ').next()
}

fn is_owned_by(rule: &KernelRule, network: &str, container_id: &str) -> bool {
    let prefix = format!("{network} {container_id} ");
    rule.comment
        .as_deref()
        .is_some_and(|c| c.strip_prefix(&prefix).is_some_and(|i| !i.contains(' ')))
}

fn kernel(what: &'static str) -> impl Fn(std::io::Error) -> NatError {
    move |source| NatError::Kernel {
        context: format!("{what} the localnet guard (nftables table {TABLE})"),
        source,
    }
}

/// The rule's expressions: see the module doc.
pub(crate) fn guard_exprs(ifname: &str) -> Vec<u8> {
    let mut name = ifname.as_bytes().to_vec();
    name.resize(IFNAMSIZ, 0);
    let loopback = Prefix {
        addr: std::net::Ipv4Addr::new(127, 0, 0, 0).into(),
        len: 8,
    };
    let mut out = Vec::new();
    meta(&mut out, NFT_META_IIFNAME);
    cmp_eq(&mut out, &name);
    addr_match(&mut out, Field::Destination, &loopback, false);
    ct(&mut out, NFT_CT_STATE);
    none_of(&mut out, CT_ESTABLISHED_RELATED);
    ct(&mut out, NFT_CT_STATUS);
    none_of(&mut out, CT_STATUS_DNAT);
    verdict(&mut out, NF_DROP, None);
    out
}

/// Guards `config.localnet_guard` for this container, replacing a guard an earlier
/// ADD of it left, in one netlink batch (which also creates the table on a node's
/// first use). Nothing to do without an interface. The caller holds the NAT lock.
pub(crate) fn install(config: &PortMapConfig) -> Result<(), NatError> {
    let Some(ifname) = config.localnet_guard.as_deref() else {
        return Ok(());
    };
    let comment = owner(&config.network, &config.container_id, ifname);
    if comment.len() > MAX_COMMENT || ifname.len() >= IFNAMSIZ || ifname.contains(' ') {
        return Err(NatError::Check(format!(
            "cannot guard the host's loopback for {}: owner {comment:?} too long",
            config.container_id
        )));
    }
    let mut nl = Nftnl::open().map_err(kernel("open netlink for"))?;
    let result = install_with(&mut nl, config, ifname, comment);
    nftnl::close_at_exit(nl);
    result
}

fn install_with(
    nl: &mut Nftnl,
    config: &PortMapConfig,
    ifname: &str,
    comment: String,
) -> Result<(), NatError> {
    let mut ops = Vec::new();
    if nl
        .table_exists(Family::V4, TABLE)
        .map_err(kernel("look up"))?
    {
        let rules = nl.rules(Family::V4, TABLE, CHAIN).map_err(kernel("list"))?;
        ops.extend(
            rules
                .iter()
                .filter(|r| is_owned_by(r, &config.network, &config.container_id))
                .map(|r| Op::DeleteRule {
                    chain: CHAIN.to_string(),
                    handle: r.handle,
                }),
        );
    } else {
        ops.push(Op::NewTable);
        ops.push(Op::NewBaseChain {
            chain: CHAIN.to_string(),
            hook: HOOK_INPUT,
            priority: PRIORITY,
        });
    }
    ops.push(Op::AppendCommented {
        chain: CHAIN.to_string(),
        exprs: guard_exprs(ifname),
        comment,
    });
    nl.commit(Family::V4, TABLE, &ops)
        .map_err(kernel("install"))
}

/// Removes the container's guard rules (DEL, and GC per container); the table goes
/// with the last rule. Then, for each interface left without any guard, puts
/// `route_localnet` back to 0: only a guarded interface may keep it on.
///
/// That reset is unconditional: we cannot tell whether an admin, or the Go portmap on
/// the same bridge, also wanted it on. A pod-facing interface has no use for it but
/// localhost host ports, and the next ADD that needs it sets it again behind a guard.
/// Cheap when nothing is guarded: one netlink GET.
pub(crate) fn remove(network: &str, container_id: &str) -> Result<(), NatError> {
    let mut nl = Nftnl::open().map_err(kernel("open netlink for"))?;
    let result = remove_with(&mut nl, |r| is_owned_by(r, network, container_id));
    nftnl::close_at_exit(nl);
    let unguarded = result?;
    reset_route_localnet(&unguarded)
}

/// GC: removes the guards of `network`'s containers not in `valid` (a container whose
/// record was lost is found here too).
pub(crate) fn gc(network: &str, valid: &HashSet<&str>) -> Result<(), NatError> {
    let mut nl = Nftnl::open().map_err(kernel("open netlink for"))?;
    let prefix = format!("{network} ");
    let result = remove_with(&mut nl, |r| {
        r.comment
            .as_deref()
            .and_then(|c| c.strip_prefix(&prefix))
            .and_then(|rest| rest.split_once(' '))
            .is_some_and(|(id, ifname)| !ifname.contains(' ') && !valid.contains(id))
    });
    nftnl::close_at_exit(nl);
    reset_route_localnet(&result?)
}

/// Deletes the rules `doomed` selects; returns the interfaces that no rule guards any
/// more.
fn remove_with(
    nl: &mut Nftnl,
    doomed: impl Fn(&KernelRule) -> bool,
) -> Result<Vec<String>, NatError> {
    if !nl
        .table_exists(Family::V4, TABLE)
        .map_err(kernel("look up"))?
    {
        return Ok(Vec::new());
    }
    let rules = nl.rules(Family::V4, TABLE, CHAIN).map_err(kernel("list"))?;
    let (gone, kept): (Vec<&KernelRule>, Vec<&KernelRule>) = rules.iter().partition(|r| doomed(r));
    if gone.is_empty() {
        return Ok(Vec::new());
    }
    let ops: Vec<Op> = if kept.is_empty() {
        vec![Op::DeleteTable]
    } else {
        gone.iter()
            .map(|r| Op::DeleteRule {
                chain: CHAIN.to_string(),
                handle: r.handle,
            })
            .collect()
    };
    nl.commit(Family::V4, TABLE, &ops)
        .map_err(kernel("remove"))?;
    let still: HashSet<&str> = kept.iter().filter_map(|r| guarded_if(r)).collect();
    let mut unguarded: Vec<String> = gone
        .iter()
        .filter_map(|r| guarded_if(r))
        .filter(|i| !still.contains(i))
        .map(str::to_string)
        .collect();
    unguarded.sort();
    unguarded.dedup();
    Ok(unguarded)
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

    fn rule(comment: &str) -> KernelRule {
        KernelRule {
            comment: Some(comment.to_string()),
            ..KernelRule::default()
        }
    }

    #[test]
    fn owners_are_matched_whole() {
        assert!(is_owned_by(&rule("net c1 cni0"), "net", "c1"));
        assert!(!is_owned_by(&rule("net c10 cni0"), "net", "c1"));
        assert!(!is_owned_by(&rule("net2 c1 cni0"), "net", "c1"));
        assert!(!is_owned_by(&rule("net c1 cni0 x"), "net", "c1"));
        assert_eq!(guarded_if(&rule("net c1 cni0")), Some("cni0"));
        assert_eq!(owner("net", "c1", "cni0"), "net c1 cni0");
    }

    #[test]
    fn the_rule_matches_the_interface_loopback_and_conntrack_then_drops() {
        let exprs = guard_exprs("cni0");
        let names = crate::nftnl::expr_names(&exprs);
        assert_eq!(
            names,
            [
                "meta",
                "cmp",
                "payload",
                "cmp",
                "ct",
                "bitwise",
                "cmp",
                "ct",
                "bitwise",
                "cmp",
                "immediate"
            ]
        );
        let mut padded = b"cni0".to_vec();
        padded.resize(IFNAMSIZ, 0);
        assert!(exprs.windows(IFNAMSIZ).any(|w| w == padded.as_slice()));
    }
}
