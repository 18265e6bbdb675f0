//! The `nftables-sets` layout (opt-in): ipMasq and host ports as set elements.
//!
//! # Why
//! Both reference layouts cost the kernel more per call as a node fills up. iptables
//! gives every pod its own chains, and every commit that adds a jump re-validates the
//! table's whole jump graph (`nft_table_validate`); nftables adds rules that `nft` must
//! first load into its cache. Here the rules are fixed, written once per node, and
//! look the pod up in sets and maps. A pod is a handful of set elements, added or
//! removed in one netlink batch that starts no process. Data maps hold no verdicts, so
//! changing them never re-validates anything: ADD and DEL cost the same with a
//! thousand pods as with none.
//!
//! # Layout, per IP family (tables `ip` and `ip6`)
//! - `cni_rs_masquerade` (bridge's `ipMasq`): set `pods` of container addresses and
//!   interval set `local` of `address . subnet`; postrouting masquerades traffic from
//!   `@pods` to anything outside the pod's own subnet and not multicast.
//! - `cni_rs_hostport` (portmap): maps `dnat_any` (`proto . port`) and `dnat_ip`
//!   (`host address . proto . port`) to `pod address . pod port`, consulted for locally
//!   addressed packets in prerouting and output; set `masq` of `source . pod address`
//!   pairs (hairpin, and 127.0.0.1 for IPv4) masqueraded after DNAT when `snat` is on.
//!
//! Each element's comment names its owner: `<network> <container ID>` (portmap) and
//! `<network> <container ID> <ifname>` (ipMasq), so DEL and GC need neither the
//! addresses nor the mappings. CNI network names and container IDs contain no spaces.
//!
//! The tables are ours alone: the reference plugins never read or write them, and the
//! reference layouts are left untouched.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};

use ipnetwork::IpNetwork;

use super::error::NatError;
use super::model::Attachment;
use super::model::{PortMapConfig, PortMapping};
use super::nftables;
use crate::Family;
use crate::nftnl::{self, Element, Nftnl, Op};

use super::names::{
    SETS_DNAT_ANY_MAP as DNAT_ANY_MAP, SETS_DNAT_IP_MAP as DNAT_IP_MAP,
    SETS_HOSTPORT_TABLE as HOSTPORT_TABLE, SETS_LOCAL_SET as LOCAL_SET, SETS_MASQ_SET as MASQ_SET,
    SETS_MASQ_TABLE as MASQ_TABLE, SETS_PODS_SET as PODS_SET,
};

const MASQ_SETS: [&str; 2] = [PODS_SET, LOCAL_SET];
const HOSTPORT_SETS: [&str; 3] = [DNAT_IP_MAP, DNAT_ANY_MAP, MASQ_SET];

/// Longest owner comment we write; the kernel's limit on user data is 256 bytes.
const MAX_COMMENT: usize = 200;

fn family_word(family: Family) -> &'static str {
    match family {
        Family::V4 => "ip",
        Family::V6 => "ip6",
    }
}

fn addr_type(family: Family) -> &'static str {
    match family {
        Family::V4 => "ipv4_addr",
        Family::V6 => "ipv6_addr",
    }
}

/// The rules and sets of the ipMasq table, created once per node.
pub(crate) fn masq_skeleton(family: Family) -> String {
    let (fam, addr) = (family_word(family), addr_type(family));
    let multicast = match family {
        Family::V4 => "224.0.0.0/4",
        Family::V6 => "ff00::/8",
    };
    format!(
        "table {fam} {MASQ_TABLE} {{\n\
         \tset {PODS_SET} {{ type {addr}; flags timeout; }}\n\
         \tset {LOCAL_SET} {{ type {addr} . {addr}; flags interval,timeout; }}\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority 100; policy accept;\n\
         \t\t{fam} saddr @{PODS_SET} {fam} saddr . {fam} daddr != @{LOCAL_SET} \
         {fam} daddr != {multicast} masquerade\n\
         \t}}\n\
         }}\n"
    )
}

/// The rules and maps of the host-port table, created once per node.
pub(crate) fn hostport_skeleton(family: Family) -> String {
    let (fam, addr) = (family_word(family), addr_type(family));
    let entry = "fib daddr type local jump hostports";
    format!(
        "table {fam} {HOSTPORT_TABLE} {{\n\
         \tmap {DNAT_IP_MAP} {{ type {addr} . inet_proto . inet_service : {addr} . inet_service; flags timeout; }}\n\
         \tmap {DNAT_ANY_MAP} {{ type inet_proto . inet_service : {addr} . inet_service; flags timeout; }}\n\
         \tset {MASQ_SET} {{ type {addr} . {addr}; flags timeout; }}\n\
         \tchain hostports {{\n\
         \t\tdnat {fam} to {fam} daddr . meta l4proto . th dport map @{DNAT_IP_MAP}\n\
         \t\tdnat {fam} to meta l4proto . th dport map @{DNAT_ANY_MAP}\n\
         \t}}\n\
         \tchain prerouting {{\n\
         \t\ttype nat hook prerouting priority -100; policy accept;\n\
         \t\t{entry}\n\
         \t}}\n\
         \tchain output {{\n\
         \t\ttype nat hook output priority -100; policy accept;\n\
         \t\t{entry}\n\
         \t}}\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority 100; policy accept;\n\
         \t\tct status dnat {fam} saddr . {fam} daddr @{MASQ_SET} masquerade\n\
         \t}}\n\
         }}\n"
    )
}

/// An address as a key field.
fn addr_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(ip) => ip.octets().to_vec(),
        IpAddr::V6(ip) => ip.octets().to_vec(),
    }
}

/// A protocol number as a key field: one byte, padded to a 4-byte register.
fn proto_field(number: u8) -> [u8; 4] {
    [number, 0, 0, 0]
}

/// A port as a key or value field: big-endian, padded to a 4-byte register.
fn port_field(port: u16) -> [u8; 4] {
    let [hi, lo] = port.to_be_bytes();
    [hi, lo, 0, 0]
}

/// The last address of `net`.
fn last_addr(net: IpNetwork) -> IpAddr {
    match net {
        IpNetwork::V4(n) => IpAddr::V4(n.broadcast()),
        IpNetwork::V6(n) => {
            let host_bits = 128 - u32::from(n.prefix());
            let mask = if host_bits >= 128 {
                u128::MAX
            } else {
                (1u128 << host_bits) - 1
            };
            IpAddr::V6((u128::from(n.network()) | mask).into())
        }
    }
}

fn masq_comment(network: &str, container_id: &str, ifname: &str) -> String {
    format!("{network} {container_id} {ifname}")
}

fn hostport_comment(network: &str, container_id: &str) -> String {
    format!("{network} {container_id}")
}

/// Refuses owners whose comment the kernel could not store whole: a cut comment
/// would make the container's elements impossible to find again.
fn check_comment(comment: &str) -> Result<(), NatError> {
    if comment.len() > MAX_COMMENT {
        return Err(NatError::Check(format!(
            "network name and container ID are too long for the nftables-sets layout \
             ({} bytes, at most {MAX_COMMENT})",
            comment.len()
        )));
    }
    Ok(())
}

/// The ipMasq elements of the container's addresses of `family`.
fn masq_elements(
    family: Family,
    nets: &[IpNetwork],
    comment: &str,
) -> Vec<(&'static str, Element)> {
    let mut out = Vec::new();
    for net in nets.iter().filter(|n| Family::of(n.ip()) == family) {
        let ip = addr_bytes(net.ip());
        let key = |first: IpAddr| [ip.clone(), addr_bytes(first)].concat();
        out.push((
            PODS_SET,
            Element {
                key: ip.clone(),
                comment: Some(comment.to_string()),
                ..Element::default()
            },
        ));
        out.push((
            LOCAL_SET,
            Element {
                key: key(net.network()),
                key_end: Some(key(last_addr(*net))),
                comment: Some(comment.to_string()),
                ..Element::default()
            },
        ));
    }
    out
}

/// The host-port elements of `config` towards `target`.
fn hostport_elements(
    config: &PortMapConfig,
    target: IpNetwork,
    comment: &str,
) -> Vec<(&'static str, Element)> {
    let family = Family::of(target.ip());
    let pod = addr_bytes(target.ip());
    let mut out = Vec::new();
    for m in config.mappings.iter().filter(|m| m.applies_to(family)) {
        let (map, mut key) = match m.dest_ip() {
            Some(ip) => (DNAT_IP_MAP, addr_bytes(ip)),
            None => (DNAT_ANY_MAP, Vec::new()),
        };
        key.extend_from_slice(&proto_field(m.protocol.number()));
        key.extend_from_slice(&port_field(m.host_port));
        out.push((
            map,
            Element {
                key,
                data: Some([pod.clone(), port_field(m.container_port).to_vec()].concat()),
                comment: Some(comment.to_string()),
                ..Element::default()
            },
        ));
    }
    if config.snat && !out.is_empty() {
        let mut sources = vec![target.ip()];
        if family == Family::V4 {
            sources.push(IpAddr::V4(Ipv4Addr::LOCALHOST));
        }
        for source in sources {
            out.push((
                MASQ_SET,
                Element {
                    key: [addr_bytes(source), pod.clone()].concat(),
                    comment: Some(comment.to_string()),
                    ..Element::default()
                },
            ));
        }
    }
    out
}

/// Creates `table` from `skeleton` unless it exists. The caller holds the NAT lock, so
/// two of our processes never both create it.
fn ensure_table(
    nl: &mut Nftnl,
    family: Family,
    table: &'static str,
    skeleton: &str,
) -> Result<(), NatError> {
    if nl
        .table_exists(family, table)
        .map_err(kernel("look up", table))?
    {
        return Ok(());
    }
    nftables::apply(skeleton)
}

fn kernel(what: &'static str, table: &'static str) -> impl Fn(std::io::Error) -> NatError {
    move |source| NatError::Kernel {
        context: format!("{what} nftables table {table}"),
        source,
    }
}

/// Runs `f` on a fresh nf_tables socket, closed at exit (see [`nftnl::close_at_exit`]).
fn with_nl<R>(f: impl FnOnce(&mut Nftnl) -> Result<R, NatError>) -> Result<R, NatError> {
    let mut nl = Nftnl::open().map_err(|source| NatError::Kernel {
        context: "open nf_tables socket".into(),
        source,
    })?;
    let result = f(&mut nl);
    nftnl::close_at_exit(nl);
    result
}

/// How long a removed element lingers, in milliseconds. See [`expire`].
const EXPIRE_MS: u64 = 1;

/// The container's elements of `sets` (by `owned` on their comment).
fn owned_elements(
    nl: &mut Nftnl,
    family: Family,
    table: &'static str,
    sets: &[&'static str],
    owned: impl Fn(&str) -> bool,
) -> Result<Vec<(&'static str, Element)>, NatError> {
    let mut out = Vec::new();
    for set in sets {
        for element in nl
            .elements(family, table, set)
            .map_err(kernel("list", table))?
        {
            if element.comment.as_deref().is_some_and(&owned) {
                out.push((*set, element));
            }
        }
    }
    Ok(out)
}

/// Removes `doomed` by giving each a timeout of [`EXPIRE_MS`] instead of deleting it,
/// and returns once they are gone.
///
/// Why: a deletion leaves memory for the kernel to free after an RCU grace period,
/// and whoever closes a netfilter socket next (this process, at exit) waits for that
/// with the nf_tables commit mutex held: about 10 ms on every DEL. An expired element
/// matches no packet and is invisible to lookups and listings, and the set's own
/// garbage collector frees it in the background. Expiry takes effect at the next
/// jiffy (up to 4 ms at HZ=250): waited for here, so that when DEL returns the
/// mapping is gone, as after a deletion. Kernels that cannot change an element's
/// timeout (before 6.10) leave it unchanged; sets made without `flags timeout` refuse
/// it. Both are detected, and what is left is deleted the classic way.
fn expire(
    nl: &mut Nftnl,
    family: Family,
    table: &'static str,
    doomed: Vec<(&'static str, Element)>,
) -> Result<(), NatError> {
    if doomed.is_empty() {
        return Ok(());
    }
    let ops: Vec<Op> = doomed
        .iter()
        .map(|(set, element)| Op::AddElement {
            set: set.to_string(),
            element: Element {
                timeout_ms: Some(EXPIRE_MS),
                ..element.clone()
            },
        })
        .collect();
    if nl.commit(family, table, &ops).is_ok() && expired(nl, family, table, &doomed)? {
        return Ok(());
    }
    let mut ops = Vec::new();
    for (set, element) in doomed {
        if nl
            .element(family, table, set, &element)
            .map_err(kernel("look up", table))?
            .is_some()
        {
            ops.push(Op::DeleteElement {
                set: set.to_string(),
                element,
            });
        }
    }
    nl.commit(family, table, &ops)
        .map_err(kernel("update", table))
}

/// Polls until every element of `doomed` has expired: `false` when the kernel kept one
/// without a timeout, or it outlived [`EXPIRY_WAIT`].
fn expired(
    nl: &mut Nftnl,
    family: Family,
    table: &'static str,
    doomed: &[(&'static str, Element)],
) -> Result<bool, NatError> {
    let start = std::time::Instant::now();
    for (set, element) in doomed {
        loop {
            match nl
                .element(family, table, set, element)
                .map_err(kernel("look up", table))?
            {
                None => break,
                Some(e) if e.timeout_ms.is_none() => return Ok(false),
                Some(_) if start.elapsed() > EXPIRY_WAIT => return Ok(false),
                Some(_) => std::thread::sleep(std::time::Duration::from_micros(500)),
            }
        }
    }
    Ok(true)
}

/// Far more than the jiffy or two an expiry takes.
const EXPIRY_WAIT: std::time::Duration = std::time::Duration::from_millis(50);

/// Installs the container's `wanted` elements, in one batch: each key is looked up
/// on its own, so the cost does not grow with the number of pods. An identical
/// element of ours stays. A key another owner holds is refused by name, except in
/// `addressed` sets, keyed by the container's own address: IPAM gave that address to
/// this container, so an entry of a former holder is stale (its DEL never came) and
/// is taken over. With `sweep`, our other elements (an earlier ADD's) go first.
#[allow(clippy::too_many_arguments)]
fn install(
    nl: &mut Nftnl,
    family: Family,
    table: &'static str,
    sets: &[&'static str],
    addressed: &[&'static str],
    comment: &str,
    wanted: &[(&'static str, Element)],
    sweep: bool,
) -> Result<(), NatError> {
    if sweep {
        let stale: Vec<(&'static str, Element)> =
            owned_elements(nl, family, table, sets, |c| c == comment)?
                .into_iter()
                .filter(|(set, e)| {
                    !wanted
                        .iter()
                        .any(|(s, w)| s == set && w.key == e.key && w.key_end == e.key_end)
                })
                .collect();
        expire(nl, family, table, stale)?;
    }
    // An element a DEL has just expired may still be there for a jiffy or two: wait
    // it out (see `install_ops`). A deletion can also race an expiry and fail with
    // ENOENT: look again.
    for _ in 0..ATTEMPTS {
        let Some(ops) = install_ops(nl, family, table, addressed, comment, wanted)? else {
            std::thread::sleep(std::time::Duration::from_millis(2));
            continue;
        };
        match nl.commit(family, table, &ops) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            result => return result.map_err(kernel("update", table)),
        }
    }
    Err(NatError::Conflict(format!(
        "{table}: entries of a removed container did not expire"
    )))
}

/// Look-ups before [`install`] gives up: about 40 ms of expiring entries.
const ATTEMPTS: usize = 20;

/// The batch that installs `wanted`, or `None` while a key is held by an element that
/// is about to expire: re-adding it now would not revive it (an add of an identical
/// element changes nothing), and deleting it can race its expiry.
fn install_ops(
    nl: &mut Nftnl,
    family: Family,
    table: &'static str,
    addressed: &[&'static str],
    comment: &str,
    wanted: &[(&'static str, Element)],
) -> Result<Option<Vec<Op>>, NatError> {
    let mut ops = Vec::new();
    for (set, element) in wanted {
        let existing = nl
            .element(family, table, set, element)
            .map_err(kernel("look up", table))?;
        let replace = match existing {
            None => false,
            Some(e) if e.timeout_ms.is_some() => return Ok(None),
            Some(e) if e.comment.as_deref() == Some(comment) => {
                if e.data == element.data {
                    continue;
                }
                true
            }
            Some(_) if addressed.contains(set) => true,
            Some(e) => {
                return Err(NatError::Conflict(format!(
                    "{table} {set}: the entry this container needs is held by {}",
                    e.comment.as_deref().unwrap_or("another container")
                )));
            }
        };
        if replace {
            ops.push(Op::DeleteElement {
                set: set.to_string(),
                element: element.clone(),
            });
        }
        ops.push(Op::AddElement {
            set: set.to_string(),
            element: element.clone(),
        });
    }
    Ok(Some(ops))
}

/// ipMasq ADD for the container's `ips`. The caller holds the NAT lock.
pub(crate) fn masq_setup(
    network: &str,
    ifname: &str,
    container_id: &str,
    ips: &[IpNetwork],
) -> Result<(), NatError> {
    let comment = masq_comment(network, container_id, ifname);
    check_comment(&comment)?;
    with_nl(|nl| masq_setup_with(nl, &comment, ips))
}

fn masq_setup_with(nl: &mut Nftnl, comment: &str, ips: &[IpNetwork]) -> Result<(), NatError> {
    for family in [Family::V4, Family::V6] {
        if !ips.iter().any(|n| Family::of(n.ip()) == family) {
            continue;
        }
        ensure_table(nl, family, MASQ_TABLE, &masq_skeleton(family))?;
        let wanted = masq_elements(family, ips, comment);
        // No sweep: host-local refuses a second ADD of an attachment, and DEL removes
        // every element of the attachment, whatever its address.
        install(
            nl, family, MASQ_TABLE, &MASQ_SETS, &MASQ_SETS, comment, &wanted, false,
        )?;
    }
    Ok(())
}

/// ipMasq DEL: removes the attachment's elements, wherever the tables exist.
///
/// With the attachment's `addresses` its entries are looked up one by one (the cost
/// does not grow with the pods); without, every entry is listed and ours picked by
/// comment. Only the addresses of the last ADD are looked up: an attachment is added
/// once (host-local refuses a second ADD), and GC lists everything anyway.
pub(crate) fn masq_teardown(
    network: &str,
    ifname: &str,
    container_id: &str,
    addresses: Option<&[IpNetwork]>,
) -> Result<(), NatError> {
    let comment = masq_comment(network, container_id, ifname);
    let Some(addresses) = addresses.filter(|a| !a.is_empty()) else {
        return sweep(MASQ_TABLE, &MASQ_SETS, |c| c == comment);
    };
    // A family without addresses has no probes; a missing table answers every look-up
    // with "no such element".
    with_nl(|nl| {
        for family in [Family::V4, Family::V6] {
            let probes = masq_elements(family, addresses, &comment);
            let doomed = owned_among(nl, family, MASQ_TABLE, probes, &comment)?;
            expire(nl, family, MASQ_TABLE, doomed)?;
        }
        Ok(())
    })
}

/// Those of `probes` that exist, belong to `comment`'s owner and are not expiring
/// already, as the kernel holds them.
fn owned_among(
    nl: &mut Nftnl,
    family: Family,
    table: &'static str,
    probes: Vec<(&'static str, Element)>,
    comment: &str,
) -> Result<Vec<(&'static str, Element)>, NatError> {
    let mut owned = Vec::new();
    for (set, probe) in probes {
        let found = nl
            .element(family, table, set, &probe)
            .map_err(kernel("look up", table))?;
        if let Some(e) =
            found.filter(|e| e.comment.as_deref() == Some(comment) && e.timeout_ms.is_none())
        {
            owned.push((set, e));
        }
    }
    Ok(owned)
}

/// ipMasq GC: removes this network's elements of attachments not in `valid`.
pub(crate) fn masq_gc(network: &str, valid: &[Attachment<'_>]) -> Result<(), NatError> {
    let valid: HashSet<String> = valid
        .iter()
        .map(|a| masq_comment(network, a.container_id, a.ifname))
        .collect();
    let prefix = format!("{network} ");
    sweep(MASQ_TABLE, &MASQ_SETS, |c| {
        c.starts_with(&prefix) && !valid.contains(c)
    })
}

/// Removes, in every family, the elements `owned` accepts (a missing table lists none).
fn sweep(
    table: &'static str,
    sets: &[&'static str],
    owned: impl Fn(&str) -> bool,
) -> Result<(), NatError> {
    with_nl(|nl| {
        for family in [Family::V4, Family::V6].into_iter().filter(|f| f.enabled()) {
            let doomed = owned_elements(nl, family, table, sets, &owned)?;
            expire(nl, family, table, doomed)?;
        }
        Ok(())
    })
}

/// Whether any family has the table: lets the other layouts' DEL skip us cheaply.
pub(crate) fn table_may_exist(table: &str) -> bool {
    with_nl(|nl| {
        Ok([Family::V4, Family::V6]
            .into_iter()
            .any(|f| f.enabled() && nl.table_exists(f, table).unwrap_or(true)))
    })
    .unwrap_or(true)
}

/// portmap ADD towards `targets` (one address per family). The caller holds the lock.
/// `readd`: an earlier ADD of this container may have left elements this one does not
/// want (portmap's record says so), to be swept first.
pub(crate) fn hostport_forward(
    config: &PortMapConfig,
    targets: &[IpNetwork],
    readd: bool,
) -> Result<(), NatError> {
    let comment = hostport_comment(&config.network, &config.container_id);
    check_comment(&comment)?;
    with_nl(|nl| {
        for &target in targets {
            let family = Family::of(target.ip());
            ensure_table(nl, family, HOSTPORT_TABLE, &hostport_skeleton(family))?;
            let wanted = hostport_elements(config, target, &comment);
            install(
                nl,
                family,
                HOSTPORT_TABLE,
                &HOSTPORT_SETS,
                &[MASQ_SET],
                &comment,
                &wanted,
                readd,
            )?;
        }
        Ok(())
    })
}

/// portmap DEL (and GC, per container): removes the container's elements.
///
/// With `installed` (the last ADD's mappings and addresses), its entries are looked up
/// one by one, which costs the same with a thousand pods as with none; otherwise every
/// entry is listed and ours are picked by their comment.
pub(crate) fn hostport_unforward(
    network: &str,
    container_id: &str,
    installed: Option<(&[PortMapping], &[IpNetwork])>,
) -> Result<(), NatError> {
    let comment = hostport_comment(network, container_id);
    let Some((mappings, targets)) = installed.filter(|(m, t)| !m.is_empty() && !t.is_empty())
    else {
        return sweep(HOSTPORT_TABLE, &HOSTPORT_SETS, |c| c == comment);
    };
    // snat on: its entries are a superset of snat off's, and absent ones are skipped.
    let config = PortMapConfig::new(network, container_id, mappings.to_vec());
    with_nl(|nl| {
        // A missing table answers every look-up with "no such element".
        for &target in targets {
            let family = Family::of(target.ip());
            let probes = hostport_elements(&config, target, &comment);
            let doomed = owned_among(nl, family, HOSTPORT_TABLE, probes, &comment)?;
            expire(nl, family, HOSTPORT_TABLE, doomed)?;
        }
        Ok(())
    })
}

/// portmap CHECK: every element ADD would add is there, owned by this container.
pub(crate) fn hostport_check(
    config: &PortMapConfig,
    targets: &[IpNetwork],
) -> Result<(), NatError> {
    let comment = hostport_comment(&config.network, &config.container_id);
    with_nl(|nl| {
        for &target in targets {
            let family = Family::of(target.ip());
            for (set, wanted) in hostport_elements(config, target, &comment) {
                // An expiring entry is a DEL's, not this container's mapping.
                let present = nl
                    .element(family, HOSTPORT_TABLE, set, &wanted)
                    .map_err(kernel("look up", HOSTPORT_TABLE))?
                    .is_some_and(|e| {
                        e.data == wanted.data
                            && e.comment == wanted.comment
                            && e.timeout_ms.is_none()
                    });
                if !present {
                    return Err(NatError::Check(format!(
                        "missing host port entry in {} {HOSTPORT_TABLE} {set} for {}",
                        family_word(family),
                        describe(config, target)
                    )));
                }
            }
        }
        Ok(())
    })
}

fn describe(config: &PortMapConfig, target: IpNetwork) -> String {
    let ports: Vec<String> = config
        .mappings
        .iter()
        .filter(|m| m.applies_to(Family::of(target.ip())))
        .map(|m: &PortMapping| format!("{}/{}", m.protocol.as_str(), m.host_port))
        .collect();
    format!("{} ({})", target.ip(), ports.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nat::model::Proto;

    #[test]
    fn skeletons_name_the_sets_the_elements_go_to() {
        let v4 = hostport_skeleton(Family::V4);
        assert!(v4.starts_with("table ip cni_rs_hostport {"));
        assert!(v4.contains("dnat ip to ip daddr . meta l4proto . th dport map @dnat_ip"));
        assert!(v4.contains("ct status dnat ip saddr . ip daddr @masq masquerade"));
        let v6 = masq_skeleton(Family::V6);
        assert!(v6.contains("set local { type ipv6_addr . ipv6_addr; flags interval,timeout; }"));
        assert!(v6.contains("ip6 daddr != ff00::/8 masquerade"));
    }

    /// The bytes `nft --debug=netlink` shows for `udp . 5353 : 10.244.1.5 . 53`.
    #[test]
    fn elements_use_the_kernels_register_layout() {
        let config = PortMapConfig::new(
            "n",
            "c",
            vec![PortMapping {
                host_port: 5353,
                container_port: 53,
                protocol: Proto::Udp,
                host_ip: None,
            }],
        );
        let target: IpNetwork = "10.244.1.5/24".parse().unwrap();
        let elems = hostport_elements(&config, target, "n c");
        assert_eq!(elems[0].0, DNAT_ANY_MAP);
        assert_eq!(elems[0].1.key, [17, 0, 0, 0, 0x14, 0xe9, 0, 0]);
        assert_eq!(
            elems[0].1.data.as_deref(),
            Some(&[10, 244, 1, 5, 0, 53, 0, 0][..])
        );
        // Hairpin, then localhost.
        assert_eq!(elems[1].1.key, [10, 244, 1, 5, 10, 244, 1, 5]);
        assert_eq!(elems[2].1.key, [127, 0, 0, 1, 10, 244, 1, 5]);

        let masq = masq_elements(Family::V4, &[target], "n c eth0");
        assert_eq!(masq[1].1.key, [10, 244, 1, 5, 10, 244, 1, 0]);
        assert_eq!(
            masq[1].1.key_end.as_deref(),
            Some(&[10, 244, 1, 5, 10, 244, 1, 255][..])
        );
        let v6: IpNetwork = "fd00::5/64".parse().unwrap();
        let end = last_addr(v6);
        assert_eq!(end.to_string(), "fd00::ffff:ffff:ffff:ffff");
    }

    #[test]
    fn long_owners_are_refused_not_cut() {
        assert!(check_comment(&"x".repeat(MAX_COMMENT)).is_ok());
        assert!(check_comment(&"x".repeat(MAX_COMMENT + 1)).is_err());
    }
}
