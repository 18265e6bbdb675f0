//! The nftables-sets tables: fixed rules over sets and maps, written once per node
//! (the only `nft` process of the layout).

use super::elements::kernel;
use crate::Family;
use crate::nat::error::NatError;
use crate::nat::names::{
    SETS_DNAT_ANY_MAP as DNAT_ANY_MAP, SETS_DNAT_IP_MAP as DNAT_IP_MAP,
    SETS_HOSTPORT_TABLE as HOSTPORT_TABLE, SETS_LOCAL_SET as LOCAL_SET, SETS_MASQ_SET as MASQ_SET,
    SETS_MASQ_TABLE as MASQ_TABLE, SETS_PODS_SET as PODS_SET,
};
use crate::nftnl::Nftnl;
use crate::tools::{self, Tool};

fn addr_type(family: Family) -> &'static str {
    match family {
        Family::V4 => "ipv4_addr",
        Family::V6 => "ipv6_addr",
    }
}

/// The rules and sets of the ipMasq table, created once per node.
pub(super) fn masq_skeleton(family: Family) -> String {
    let (fam, addr) = (family.nft_word(), addr_type(family));
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
pub(super) fn hostport_skeleton(family: Family) -> String {
    let (fam, addr) = (family.nft_word(), addr_type(family));
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

/// Creates `table` from `skeleton` unless it exists. The caller holds the NAT lock, so
/// two of our processes never both create it.
pub(super) fn ensure_table(
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
    tools::run(Tool::Nft, &["-f", "-"], Some(skeleton)).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
