//! portmap with nftables: tables `ip cni_hostport` / `ip6 cni_hostport`, a DNAT rule
//! per mapping in `hostports` and the masquerade rules in `masquerading`, all commented
//! with the container ID.

use std::net::IpAddr;

use ipnetwork::IpNetwork;

use super::tool::{NftRule, quote};
use crate::Family;
use crate::nat::error::NatError;
use crate::nat::model::PortMapConfig;
use crate::nat::names::{
    NFT_HOSTIP_HOSTPORTS_CHAIN, NFT_HOSTPORT_TABLE, NFT_HOSTPORT_TABLE_COMMENT,
    NFT_HOSTPORTS_ALL_CHAIN, NFT_HOSTPORTS_CHAIN, NFT_MASQUERADING_CHAIN, NFT_OUTPUT_CHAIN,
    NFT_PREROUTING_CHAIN,
};

fn ip_port(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    }
}

/// The chains our per-container rules live in (and DEL searches).
pub(crate) const CONTAINER_CHAINS: [&str; 3] = [
    NFT_HOSTPORTS_CHAIN,
    NFT_HOSTIP_HOSTPORTS_CHAIN,
    NFT_MASQUERADING_CHAIN,
];

/// Rules in `rules` that belong to `container_id`.
pub(crate) fn container_rules<'a>(rules: &'a [NftRule], container_id: &str) -> Vec<&'a NftRule> {
    rules
        .iter()
        .filter(|r| r.table == NFT_HOSTPORT_TABLE && CONTAINER_CHAINS.contains(&r.chain.as_str()))
        .filter(|r| r.comment.as_deref() == Some(container_id))
        .collect()
}

/// [`render`] with the skeleton, as a first ADD on a node commits it.
#[cfg(test)]
pub(crate) fn render_forward(
    stale: &[&NftRule],
    config: &PortMapConfig,
    container: IpNetwork,
) -> String {
    render(stale, config, container, true)
}

/// The transaction for one family: the skeleton (created if missing, the jump chains
/// rebuilt), the container's stale rules deleted, its rules added. The skeleton is
/// left out when `with_skeleton` is false because it was found complete: rebuilding its
/// base chains is most of an ADD's kernel time.
pub(crate) fn render(
    stale: &[&NftRule],
    config: &PortMapConfig,
    container: IpNetwork,
    with_skeleton: bool,
) -> String {
    let family = Family::of(container.ip());
    let ip_x = family.nft_word();
    let t = format!("{ip_x} {NFT_HOSTPORT_TABLE}");
    let comment = quote(&config.container_id);
    let mut conditions = config.conditions(family).join(" ");
    if !conditions.is_empty() {
        conditions.push(' ');
    }
    let mut out = String::new();
    let mut line = |s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    if with_skeleton {
        line(format!(
            "add table {t} {{ comment {} ; }}",
            quote(NFT_HOSTPORT_TABLE_COMMENT)
        ));
        line(format!("add chain {t} {NFT_HOSTPORTS_CHAIN}"));
        line(format!("add chain {t} {NFT_HOSTIP_HOSTPORTS_CHAIN}"));
        line(format!("add chain {t} {NFT_HOSTPORTS_ALL_CHAIN}"));
        line(format!("flush chain {t} {NFT_HOSTPORTS_ALL_CHAIN}"));
        line(format!(
            "add rule {t} {NFT_HOSTPORTS_ALL_CHAIN} jump {NFT_HOSTIP_HOSTPORTS_CHAIN}"
        ));
        line(format!(
            "add rule {t} {NFT_HOSTPORTS_ALL_CHAIN} jump {NFT_HOSTPORTS_CHAIN}"
        ));
        for (chain, hook) in [
            (NFT_PREROUTING_CHAIN, "prerouting"),
            (NFT_OUTPUT_CHAIN, "output"),
        ] {
            line(format!(
                "add chain {t} {chain} {{ type nat hook {hook} priority -100 ; }}"
            ));
            line(format!("flush chain {t} {chain}"));
            line(format!(
                "add rule {t} {chain} {conditions}fib daddr type local jump {NFT_HOSTPORTS_ALL_CHAIN}"
            ));
        }
        if config.snat {
            line(format!(
                "add chain {t} {NFT_MASQUERADING_CHAIN} {{ type nat hook postrouting priority 100 ; }}"
            ));
        }
    }
    for rule in stale {
        line(rule.delete_command());
    }
    for m in config.mappings.iter().filter(|m| m.applies_to(family)) {
        let dest = m
            .dest_ip()
            .map(|ip| format!("{ip_x} daddr {ip} "))
            .unwrap_or_default();
        line(format!(
            "add rule {t} {NFT_HOSTPORTS_CHAIN} {dest}{} dport {} dnat to {} comment {comment}",
            m.protocol.as_str(),
            m.host_port,
            ip_port(container.ip(), m.container_port)
        ));
    }
    if config.snat {
        let ip = container.ip();
        let source = match (config.masq_all, family) {
            (false, _) => ip.to_string(),
            (true, Family::V4) => "0.0.0.0/0".to_string(),
            (true, Family::V6) => "::/0".to_string(),
        };
        line(format!(
            "add rule {t} {NFT_MASQUERADING_CHAIN} {ip_x} saddr {source} {ip_x} daddr {ip} masquerade comment {comment}"
        ));
        if family == Family::V4 && !config.masq_all {
            line(format!(
                "add rule {t} {NFT_MASQUERADING_CHAIN} {ip_x} saddr 127.0.0.1 {ip_x} daddr {ip} masquerade comment {comment}"
            ));
        }
    }
    out
}

/// Deletion of the container's rules in both families, `None` when there are none.
pub(crate) fn render_unforward(rules: &[NftRule], container_id: &str) -> Option<String> {
    let picked = container_rules(rules, container_id);
    if picked.is_empty() {
        return None;
    }
    Some(picked.iter().map(|r| r.delete_command() + "\n").collect())
}

/// How many rules of the container one family holds: its DNAT rules in `hostports`
/// and its masquerade rules in `masquerading`.
pub(crate) fn expected_rules(config: &PortMapConfig, family: Family) -> (usize, usize) {
    let host_ports = config
        .mappings
        .iter()
        .filter(|m| m.applies_to(family))
        .count();
    let masquerades = match (config.snat, family, config.masq_all) {
        (false, _, _) => 0,
        (true, Family::V4, false) => 2,
        (true, _, _) => 1,
    };
    (host_ports, masquerades)
}

/// The reference's CHECK: enough rules carry the container's comment in each chain.
pub(crate) fn check_rules(
    rules: &[NftRule],
    config: &PortMapConfig,
    family: Family,
) -> Result<(), NatError> {
    let (host_ports, masquerades) = expected_rules(config, family);
    for (chain, want) in [
        (NFT_HOSTPORTS_CHAIN, host_ports),
        (NFT_MASQUERADING_CHAIN, masquerades),
    ] {
        if want == 0 {
            continue;
        }
        let found = rules
            .iter()
            .filter(|r| r.chain == chain && r.comment.as_deref() == Some(&config.container_id))
            .count();
        if found < want {
            return Err(NatError::Check(format!(
                "missing hostport rules in {chain:?} chain"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nat::model::Proto;
    use crate::nat::model::fixtures::{mapping as m, reference_mappings};

    /// portmap_nftables_test.go's configuration.
    fn reference_config() -> PortMapConfig {
        let mut c = PortMapConfig::new("test", "icee6giejonei6so", reference_mappings());
        c.conditions_v4 = vec!["a".into(), "b".into()];
        c.conditions_v6 = vec!["c".into(), "d".into()];
        c
    }

    #[test]
    fn forward_v4_renders_reference_rules() {
        let text = render_forward(&[], &reference_config(), "10.0.0.2/24".parse().unwrap());
        assert_eq!(
            text,
            r#"add table ip cni_hostport { comment "CNI portmap plugin" ; }
add chain ip cni_hostport hostports
add chain ip cni_hostport hostip_hostports
add chain ip cni_hostport hostports_all
flush chain ip cni_hostport hostports_all
add rule ip cni_hostport hostports_all jump hostip_hostports
add rule ip cni_hostport hostports_all jump hostports
add chain ip cni_hostport prerouting { type nat hook prerouting priority -100 ; }
flush chain ip cni_hostport prerouting
add rule ip cni_hostport prerouting a b fib daddr type local jump hostports_all
add chain ip cni_hostport output { type nat hook output priority -100 ; }
flush chain ip cni_hostport output
add rule ip cni_hostport output a b fib daddr type local jump hostports_all
add chain ip cni_hostport masquerading { type nat hook postrouting priority 100 ; }
add rule ip cni_hostport hostports tcp dport 8080 dnat to 10.0.0.2:80 comment "icee6giejonei6so"
add rule ip cni_hostport hostports tcp dport 8081 dnat to 10.0.0.2:80 comment "icee6giejonei6so"
add rule ip cni_hostport hostports udp dport 8080 dnat to 10.0.0.2:81 comment "icee6giejonei6so"
add rule ip cni_hostport hostports udp dport 8082 dnat to 10.0.0.2:82 comment "icee6giejonei6so"
add rule ip cni_hostport hostports ip daddr 192.168.0.2 tcp dport 8083 dnat to 10.0.0.2:83 comment "icee6giejonei6so"
add rule ip cni_hostport hostports tcp dport 8084 dnat to 10.0.0.2:84 comment "icee6giejonei6so"
add rule ip cni_hostport masquerading ip saddr 10.0.0.2 ip daddr 10.0.0.2 masquerade comment "icee6giejonei6so"
add rule ip cni_hostport masquerading ip saddr 127.0.0.1 ip daddr 10.0.0.2 masquerade comment "icee6giejonei6so"
"#
        );
    }

    #[test]
    fn forward_v6_without_snat_renders_reference_rules() {
        let mut config = reference_config();
        config.snat = false;
        let text = render_forward(&[], &config, "2001:db8::2/64".parse().unwrap());
        assert_eq!(
            text,
            r#"add table ip6 cni_hostport { comment "CNI portmap plugin" ; }
add chain ip6 cni_hostport hostports
add chain ip6 cni_hostport hostip_hostports
add chain ip6 cni_hostport hostports_all
flush chain ip6 cni_hostport hostports_all
add rule ip6 cni_hostport hostports_all jump hostip_hostports
add rule ip6 cni_hostport hostports_all jump hostports
add chain ip6 cni_hostport prerouting { type nat hook prerouting priority -100 ; }
flush chain ip6 cni_hostport prerouting
add rule ip6 cni_hostport prerouting c d fib daddr type local jump hostports_all
add chain ip6 cni_hostport output { type nat hook output priority -100 ; }
flush chain ip6 cni_hostport output
add rule ip6 cni_hostport output c d fib daddr type local jump hostports_all
add rule ip6 cni_hostport hostports tcp dport 8080 dnat to [2001:db8::2]:80 comment "icee6giejonei6so"
add rule ip6 cni_hostport hostports tcp dport 8081 dnat to [2001:db8::2]:80 comment "icee6giejonei6so"
add rule ip6 cni_hostport hostports udp dport 8080 dnat to [2001:db8::2]:81 comment "icee6giejonei6so"
add rule ip6 cni_hostport hostports udp dport 8082 dnat to [2001:db8::2]:82 comment "icee6giejonei6so"
add rule ip6 cni_hostport hostports ip6 daddr 2001:db8:a::1 tcp dport 8085 dnat to [2001:db8::2]:85 comment "icee6giejonei6so"
add rule ip6 cni_hostport hostports tcp dport 8086 dnat to [2001:db8::2]:86 comment "icee6giejonei6so"
"#
        );
    }

    #[test]
    fn masq_all_uses_any_source_and_no_localhost_rule() {
        let mut config = PortMapConfig::new("test", "c1", vec![m(8080, 80, Proto::Tcp, None)]);
        config.masq_all = true;
        let v4 = render_forward(&[], &config, "10.0.0.2/24".parse().unwrap());
        assert!(v4.contains(
            "add rule ip cni_hostport masquerading ip saddr 0.0.0.0/0 ip daddr 10.0.0.2 masquerade comment \"c1\"\n"
        ));
        assert!(!v4.contains("127.0.0.1"));
        assert!(v4.contains(
            "add rule ip cni_hostport prerouting fib daddr type local jump hostports_all\n"
        ));
        let v6 = render_forward(&[], &config, "2001:db8::2/64".parse().unwrap());
        assert!(v6.contains(
            "add rule ip6 cni_hostport masquerading ip6 saddr ::/0 ip6 daddr 2001:db8::2 masquerade comment \"c1\"\n"
        ));
    }

    fn nft_rule(family: &str, chain: &str, handle: u64, comment: Option<&str>) -> NftRule {
        NftRule {
            family: family.into(),
            table: NFT_HOSTPORT_TABLE.into(),
            chain: chain.into(),
            handle,
            comment: comment.map(str::to_string),
        }
    }

    #[test]
    fn unforward_deletes_by_comment_in_both_families() {
        let rules = vec![
            nft_rule("ip", "hostports", 10, Some("c1")),
            nft_rule("ip", "hostports", 11, Some("c2")),
            nft_rule("ip", "masquerading", 12, Some("c1")),
            nft_rule("ip", "hostports_all", 13, None),
            nft_rule("ip6", "hostip_hostports", 14, Some("c1")),
        ];
        assert_eq!(
            render_unforward(&rules, "c1").unwrap(),
            "delete rule ip cni_hostport hostports handle 10\ndelete rule ip cni_hostport masquerading handle 12\ndelete rule ip6 cni_hostport hostip_hostports handle 14\n"
        );
        assert!(render_unforward(&rules, "c3").is_none());
    }

    #[test]
    fn check_counts_rules_like_the_reference() {
        let config = PortMapConfig::new("test", "c1", vec![m(8080, 80, Proto::Tcp, None)]);
        let mut rules = vec![nft_rule("ip", "hostports", 1, Some("c1"))];
        let err = check_rules(&rules, &config, Family::V4).unwrap_err();
        assert_eq!(
            err.to_string(),
            "missing hostport rules in \"masquerading\" chain"
        );
        rules.push(nft_rule("ip", "masquerading", 2, Some("c1")));
        rules.push(nft_rule("ip", "masquerading", 3, Some("c1")));
        check_rules(&rules, &config, Family::V4).unwrap();
    }
}
