//! A pod's entries: their encoding in the kernel's byte layout, the owner comment
//! that finds them again, and how they are installed, looked up and removed (by
//! expiry), each in one netlink batch.

use std::net::{IpAddr, Ipv4Addr};

use ipnetwork::IpNetwork;

use crate::Family;
use crate::nat::error::NatError;
use crate::nat::model::{PortMapConfig, PortMapping};
use crate::nat::names::{
    SETS_DNAT_ANY_MAP as DNAT_ANY_MAP, SETS_DNAT_IP_MAP as DNAT_IP_MAP,
    SETS_LOCAL_SET as LOCAL_SET, SETS_MASQ_SET as MASQ_SET, SETS_PODS_SET as PODS_SET,
};
use crate::nftnl::{self, Element, Nftnl, Op};

/// The sets of each table, in the order DEL and GC search them.
pub(super) const MASQ_SETS: [&str; 2] = [PODS_SET, LOCAL_SET];
pub(super) const HOSTPORT_SETS: [&str; 3] = [DNAT_IP_MAP, DNAT_ANY_MAP, MASQ_SET];

/// Longest owner comment we write; the kernel's limit on user data is 256 bytes.
const MAX_COMMENT: usize = 200;

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

pub(super) fn masq_comment(network: &str, container_id: &str, ifname: &str) -> String {
    format!("{network} {container_id} {ifname}")
}

pub(super) fn hostport_comment(network: &str, container_id: &str) -> String {
    format!("{network} {container_id}")
}

/// Refuses owners whose comment the kernel could not store whole: a cut comment
/// would make the container's elements impossible to find again.
pub(super) fn check_comment(comment: &str) -> Result<(), NatError> {
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
pub(super) fn masq_elements(
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
pub(super) fn hostport_elements(
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

pub(super) fn kernel(
    what: &'static str,
    table: &'static str,
) -> impl Fn(std::io::Error) -> NatError {
    move |source| NatError::Kernel {
        context: format!("{what} nftables table {table}"),
        source,
    }
}

/// Runs `f` on a fresh nf_tables socket, closed at exit (see [`nftnl::close_at_exit`]).
pub(super) fn with_nl<R>(f: impl FnOnce(&mut Nftnl) -> Result<R, NatError>) -> Result<R, NatError> {
    let mut nl = Nftnl::open().map_err(|source| NatError::Kernel {
        context: "open nf_tables socket".into(),
        source,
    })?;
    let result = f(&mut nl);
    nftnl::close_at_exit(nl);
    result
}

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

/// Removes `doomed` by expiry (see [`Nftnl::expire_elements`]), and returns once they
/// are gone: when DEL returns the mapping is gone, as after a deletion.
pub(super) fn expire(
    nl: &mut Nftnl,
    family: Family,
    table: &'static str,
    doomed: Vec<(&'static str, Element)>,
) -> Result<(), NatError> {
    nl.expire_elements(family, table, &doomed, true)
        .map_err(|e| {
            let what = if e.looking_up { "look up" } else { "update" };
            kernel(what, table)(e.source)
        })
}

/// Installs the container's `wanted` elements, in one batch: each key is looked up
/// on its own, so the cost does not grow with the number of pods. An identical
/// element of ours stays. A key another owner holds is refused by name, except in
/// `addressed` sets, keyed by the container's own address: IPAM gave that address to
/// this container, so an entry of a former holder is stale (its DEL never came) and
/// is taken over. With `sweep`, our other elements (an earlier ADD's) go first.
#[allow(clippy::too_many_arguments)]
pub(super) fn install(
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

/// Those of `probes` that exist, belong to `comment`'s owner and are not expiring
/// already, as the kernel holds them.
pub(super) fn owned_among(
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

/// Removes, in every family, the elements `owned` accepts (a missing table lists none).
pub(super) fn sweep(
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

pub(super) fn describe(config: &PortMapConfig, target: IpNetwork) -> String {
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
