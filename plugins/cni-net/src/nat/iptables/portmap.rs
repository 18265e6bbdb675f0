//! portmap with iptables: the shared skeleton (`CNI-HOSTPORT-*`), created only where
//! missing, and the per-container `CNI-DN-<hash>` chain, rebuilt as a whole.

use ipnetwork::IpNetwork;

use super::restore::{Rule, Script};
use super::save::SavedTable;
use crate::Family;
use crate::nat::error::NatError;
use crate::nat::model::{PortMapConfig, Proto};
use crate::nat::names::{self, HOSTPORT_DNAT_CHAIN, HOSTPORT_MASQ_CHAIN, HOSTPORT_SETMARK_CHAIN};

/// multiport accepts at most 15 ports per rule.
const MULTIPORT_MAX: usize = 15;

fn host_cidr(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => format!("{v4}/32"),
        std::net::IpAddr::V6(v6) => format!("{v6}/128"),
    }
}

fn ip_port(ip: std::net::IpAddr, port: u16) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => format!("{v4}:{port}"),
        std::net::IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    }
}

fn setmark_rule(bit: u8) -> Rule {
    Rule::new(HOSTPORT_SETMARK_CHAIN)
        .comment(names::SETMARK_COMMENT)
        .args(&["-j", "MARK", "--set-xmark", &names::mark_value(bit)])
}

fn masq_rule(bit: u8) -> Rule {
    Rule::new(HOSTPORT_MASQ_CHAIN)
        .args(&["-m", "mark", "--mark", &names::mark_value(bit)])
        .jump("MASQUERADE")
}

fn masq_jump() -> Rule {
    Rule::new("POSTROUTING")
        .comment(names::MASQ_JUMP_COMMENT)
        .jump(HOSTPORT_MASQ_CHAIN)
}

fn dnat_jump(from: &str) -> Rule {
    Rule::new(from)
        .args(&["-m", "addrtype", "--dst-type", "LOCAL"])
        .jump(HOSTPORT_DNAT_CHAIN)
}

/// The entry rules into the container chain, without the user's conditions (those are
/// appended verbatim and may not survive an iptables-save round trip).
///
/// Like the reference, every mapping's host port is listed whatever its host IP family,
/// grouped by protocol in name order, ports in the order given.
fn entry_rules(config: &PortMapConfig) -> Vec<Rule> {
    let comment = names::dnat_comment(&config.network, &config.container_id);
    let mut protos: Vec<Proto> = config.mappings.iter().map(|m| m.protocol).collect();
    protos.sort();
    protos.dedup();
    let mut out = Vec::new();
    for proto in protos {
        let ports: Vec<String> = config
            .mappings
            .iter()
            .filter(|m| m.protocol == proto)
            .map(|m| m.host_port.to_string())
            .collect();
        for group in ports.chunks(MULTIPORT_MAX) {
            out.push(
                Rule::new(HOSTPORT_DNAT_CHAIN)
                    .args(&["-p", proto.as_str()])
                    .comment(&comment)
                    .args(&["-m", "multiport", "--dports", &group.join(",")]),
            );
        }
    }
    out
}

/// How many entry rules a container gets in `CNI-HOSTPORT-DNAT` (per family).
pub(crate) fn entry_count(config: &PortMapConfig) -> usize {
    entry_rules(config).len()
}

/// The container chain's rules: per mapping of this family, hairpin mark, localhost mark
/// (IPv4, unless masqAll), DNAT — the marks first so they see the original destination.
fn chain_rules(config: &PortMapConfig, container: IpNetwork) -> Vec<Rule> {
    let family = Family::of(container.ip());
    let chain = names::dnat_chain(&config.network, &config.container_id);
    let set_mark = config
        .external_set_mark_chain
        .as_deref()
        .unwrap_or(HOSTPORT_SETMARK_CHAIN);
    let subnet = format!("{}/{}", container.network(), container.prefix());
    let mut out = Vec::new();
    for m in config.mappings.iter().filter(|m| m.applies_to(family)) {
        let dest: Vec<String> = m
            .dest_ip()
            .map(|ip| vec!["-d".to_string(), host_cidr(ip)])
            .unwrap_or_default();
        let port = m.host_port.to_string();
        let proto = m.protocol.as_str();
        let matches = ["-p", proto, "-m", proto, "--dport", &port];
        if config.snat {
            // masqAll's 0.0.0.0/0 (::/0) source is "any", which iptables-save omits.
            let hairpin_src: Vec<String> = if config.masq_all {
                Vec::new()
            } else {
                vec!["-s".to_string(), subnet.clone()]
            };
            out.push(
                Rule::new(&chain)
                    .words(&hairpin_src)
                    .words(&dest)
                    .args(&matches)
                    .jump(set_mark),
            );
            if family == Family::V4 && !config.masq_all {
                out.push(
                    Rule::new(&chain)
                        .args(&["-s", "127.0.0.1/32"])
                        .words(&dest)
                        .args(&matches)
                        .jump(set_mark),
                );
            }
        }
        out.push(
            Rule::new(&chain)
                .words(&dest)
                .args(&matches)
                .args(&["-j", "DNAT", "--to-destination"])
                .args(&[&ip_port(container.ip(), m.container_port)]),
        );
    }
    out
}

/// Script that installs `config` for the `container` address, or `None` when the table
/// already holds exactly that.
pub(crate) fn render_forward(
    saved: &SavedTable,
    config: &PortMapConfig,
    container: IpNetwork,
) -> Option<Script> {
    let family = Family::of(container.ip());
    let chain = names::dnat_chain(&config.network, &config.container_id);
    let conditions = config.conditions(family);
    let mut script = Script::new();

    // Shared skeleton: created and filled only where missing (see `Script`).
    let own_mark_chains = config.snat && config.external_set_mark_chain.is_none();
    if own_mark_chains {
        for (shared, rule) in [
            (HOSTPORT_SETMARK_CHAIN, setmark_rule(config.mark_masq_bit)),
            (HOSTPORT_MASQ_CHAIN, masq_rule(config.mark_masq_bit)),
        ] {
            if !saved.has_chain(shared) {
                script.create(shared);
            }
            if !saved.has_rule(shared, &rule.tokens()) {
                script.append(&rule);
            }
        }
        if !saved
            .rules_in("POSTROUTING")
            .any(|r| r.target() == Some(HOSTPORT_MASQ_CHAIN))
        {
            // First in POSTROUTING, ahead of the bridge/ptp masquerade chains.
            script.insert_first(&masq_jump());
        }
    }
    if !saved.has_chain(HOSTPORT_DNAT_CHAIN) {
        script.create(HOSTPORT_DNAT_CHAIN);
    }
    for from in ["PREROUTING", "OUTPUT"] {
        if !saved
            .rules_in(from)
            .any(|r| r.target() == Some(HOSTPORT_DNAT_CHAIN))
        {
            script.append(&dnat_jump(from));
        }
    }

    // The container's own chain and entries, compared as a whole.
    let rules = chain_rules(config, container);
    let entries: Vec<Rule> = entry_rules(config)
        .into_iter()
        .map(|r| r.words(conditions).jump(&chain))
        .collect();
    let existing_entries = saved.entries_of(&chain);
    let chain_ok = saved.chain_holds(&chain, rules.iter().map(Rule::tokens));
    let entries_ok = existing_entries.len() == entries.len()
        && existing_entries
            .iter()
            .zip(&entries)
            .all(|(old, new)| old.chain == new.chain && old.tokens == new.tokens());
    if chain_ok && entries_ok && script.is_empty() {
        return None;
    }
    if !(chain_ok && entries_ok) {
        script.declare(&chain);
        for old in existing_entries {
            script.delete(old);
        }
        for rule in rules.iter().chain(&entries) {
            script.append(rule);
        }
    }
    Some(script)
}

/// Script for a container whose chain does not exist yet, on a node whose skeleton is
/// known to be in place: `-N` the chain (failing the commit if it exists after all),
/// fill it, append its entries. No saved table needed.
pub(crate) fn render_new_container(config: &PortMapConfig, container: IpNetwork) -> Script {
    let family = Family::of(container.ip());
    let chain = names::dnat_chain(&config.network, &config.container_id);
    let mut script = Script::new();
    script.create(&chain);
    for rule in chain_rules(config, container) {
        script.append(&rule);
    }
    for entry in entry_rules(config) {
        script.append(&entry.words(config.conditions(family)).jump(&chain));
    }
    script
}

/// Removes the container chain (and the pre-0.7 SNAT chain) with all jumps to them.
pub(crate) fn render_unforward(
    saved: &SavedTable,
    network: &str,
    container_id: &str,
) -> Option<Script> {
    let mut script = Script::new();
    script.remove_chain(saved, &names::dnat_chain(network, container_id));
    script.remove_chain(saved, &names::old_snat_chain(network, container_id));
    (!script.is_empty()).then_some(script)
}

/// CHECK: the container chain holds every expected rule and each entry rule exists
/// (the user's conditions are not compared: iptables-save may print them reordered).
pub(crate) fn check(
    saved: &SavedTable,
    config: &PortMapConfig,
    container: IpNetwork,
) -> Result<(), NatError> {
    let chain = names::dnat_chain(&config.network, &config.container_id);
    if !saved.has_chain(&chain) {
        return Err(NatError::Check(format!(
            "chain {chain} not found in iptables table nat"
        )));
    }
    for rule in chain_rules(config, container) {
        if !saved.has_rule(&chain, &rule.tokens()) {
            return Err(NatError::Check(format!(
                "rule {} in chain {chain} not found in table nat",
                rule.spec()
            )));
        }
    }
    for entry in entry_rules(config) {
        let want = entry.tokens();
        let found = saved
            .jumps_to(&chain)
            .any(|r| r.chain == HOSTPORT_DNAT_CHAIN && r.tokens.starts_with(&want));
        if !found {
            return Err(NatError::Check(format!(
                "rule {} in chain {HOSTPORT_DNAT_CHAIN} not found in table nat",
                entry.jump(&chain).spec()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nat::model::fixtures::{mapping as m, reference_mappings};

    /// The reference's test mappings (portmap_iptables_test.go).
    fn reference_config() -> PortMapConfig {
        let mut c = PortMapConfig::new("test", "1234", reference_mappings());
        c.conditions_v4 = vec!["-a".into(), "b".into()];
        c.conditions_v6 = vec!["-c".into(), "d".into()];
        c
    }

    const EMPTY: &str = "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n";
    const DN: &str = "CNI-DN-2bbe0c48b91a7d1b8a675";

    #[test]
    fn first_forward_v4_renders_reference_layout() {
        let saved = SavedTable::parse(EMPTY, "nat").unwrap();
        let script =
            render_forward(&saved, &reference_config(), "10.0.0.2/24".parse().unwrap()).unwrap();
        let expected = format!(
            r#"*nat
:{DN} - [0:0]
-N CNI-HOSTPORT-SETMARK
-N CNI-HOSTPORT-MASQ
-N CNI-HOSTPORT-DNAT
-A CNI-HOSTPORT-SETMARK -m comment --comment "CNI portfwd masquerade mark" -j MARK --set-xmark 0x2000/0x2000
-A CNI-HOSTPORT-MASQ -m mark --mark 0x2000/0x2000 -j MASQUERADE
-I POSTROUTING 1 -m comment --comment "CNI portfwd requiring masquerade" -j CNI-HOSTPORT-MASQ
-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
-A OUTPUT -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
-A {DN} -s 10.0.0.0/24 -p tcp -m tcp --dport 8080 -j CNI-HOSTPORT-SETMARK
-A {DN} -s 127.0.0.1/32 -p tcp -m tcp --dport 8080 -j CNI-HOSTPORT-SETMARK
-A {DN} -p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.0.0.2:80
-A {DN} -s 10.0.0.0/24 -p tcp -m tcp --dport 8081 -j CNI-HOSTPORT-SETMARK
-A {DN} -s 127.0.0.1/32 -p tcp -m tcp --dport 8081 -j CNI-HOSTPORT-SETMARK
-A {DN} -p tcp -m tcp --dport 8081 -j DNAT --to-destination 10.0.0.2:80
-A {DN} -s 10.0.0.0/24 -p udp -m udp --dport 8080 -j CNI-HOSTPORT-SETMARK
-A {DN} -s 127.0.0.1/32 -p udp -m udp --dport 8080 -j CNI-HOSTPORT-SETMARK
-A {DN} -p udp -m udp --dport 8080 -j DNAT --to-destination 10.0.0.2:81
-A {DN} -s 10.0.0.0/24 -p udp -m udp --dport 8082 -j CNI-HOSTPORT-SETMARK
-A {DN} -s 127.0.0.1/32 -p udp -m udp --dport 8082 -j CNI-HOSTPORT-SETMARK
-A {DN} -p udp -m udp --dport 8082 -j DNAT --to-destination 10.0.0.2:82
-A {DN} -s 10.0.0.0/24 -d 192.168.0.2/32 -p tcp -m tcp --dport 8083 -j CNI-HOSTPORT-SETMARK
-A {DN} -s 127.0.0.1/32 -d 192.168.0.2/32 -p tcp -m tcp --dport 8083 -j CNI-HOSTPORT-SETMARK
-A {DN} -d 192.168.0.2/32 -p tcp -m tcp --dport 8083 -j DNAT --to-destination 10.0.0.2:83
-A {DN} -s 10.0.0.0/24 -p tcp -m tcp --dport 8084 -j CNI-HOSTPORT-SETMARK
-A {DN} -s 127.0.0.1/32 -p tcp -m tcp --dport 8084 -j CNI-HOSTPORT-SETMARK
-A {DN} -p tcp -m tcp --dport 8084 -j DNAT --to-destination 10.0.0.2:84
-A CNI-HOSTPORT-DNAT -p tcp -m comment --comment "dnat name: \"test\" id: \"1234\"" -m multiport --dports 8080,8081,8083,8084,8085,8086 -a b -j {DN}
-A CNI-HOSTPORT-DNAT -p udp -m comment --comment "dnat name: \"test\" id: \"1234\"" -m multiport --dports 8080,8082 -a b -j {DN}
COMMIT
"#
        );
        assert_eq!(script.render(), expected);
    }

    #[test]
    fn forward_v6_has_no_localhost_rule_and_brackets_the_address() {
        let saved = SavedTable::parse(EMPTY, "nat").unwrap();
        let mut config = reference_config();
        config.mappings.truncate(1);
        config
            .mappings
            .push(m(8085, 85, Proto::Tcp, Some("2001:db8:a::1")));
        config
            .mappings
            .push(m(8084, 84, Proto::Tcp, Some("0.0.0.0")));
        let script = render_forward(&saved, &config, "2001:db8::2/64".parse().unwrap()).unwrap();
        let text = script.render();
        let dn: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with(&format!("-A {DN}")))
            .collect();
        assert_eq!(
            dn,
            [
                format!(
                    "-A {DN} -s 2001:db8::/64 -p tcp -m tcp --dport 8080 -j CNI-HOSTPORT-SETMARK"
                ),
                format!(
                    "-A {DN} -p tcp -m tcp --dport 8080 -j DNAT --to-destination [2001:db8::2]:80"
                ),
                format!(
                    "-A {DN} -s 2001:db8::/64 -d 2001:db8:a::1/128 -p tcp -m tcp --dport 8085 -j CNI-HOSTPORT-SETMARK"
                ),
                format!(
                    "-A {DN} -d 2001:db8:a::1/128 -p tcp -m tcp --dport 8085 -j DNAT --to-destination [2001:db8::2]:85"
                ),
            ]
        );
        assert!(text.contains("--dports 8080,8085,8084 -c d -j"), "{text}");
    }

    #[test]
    fn snat_off_external_mark_and_mark_bit() {
        let saved = SavedTable::parse(EMPTY, "nat").unwrap();
        let mut config = PortMapConfig::new("test", "1234", vec![m(8080, 80, Proto::Tcp, None)]);
        config.snat = false;
        let text = render_forward(&saved, &config, "10.0.0.2/24".parse().unwrap())
            .unwrap()
            .render();
        assert!(
            !text.contains("SETMARK") && !text.contains("MASQ"),
            "{text}"
        );
        assert!(text.contains(&format!(
            "-A {DN} -p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.0.0.2:80"
        )));

        config.snat = true;
        config.external_set_mark_chain = Some("PLZ-SET-MARK".into());
        let text = render_forward(&saved, &config, "10.0.0.2/24".parse().unwrap())
            .unwrap()
            .render();
        assert!(!text.contains("CNI-HOSTPORT-SETMARK") && !text.contains("CNI-HOSTPORT-MASQ"));
        assert!(text.contains(&format!(
            "-A {DN} -s 127.0.0.1/32 -p tcp -m tcp --dport 8080 -j PLZ-SET-MARK"
        )));

        config.external_set_mark_chain = None;
        config.mark_masq_bit = 5;
        let text = render_forward(&saved, &config, "10.0.0.2/24".parse().unwrap())
            .unwrap()
            .render();
        assert!(text.contains("--set-xmark 0x20/0x20") && text.contains("--mark 0x20/0x20"));
    }

    #[test]
    fn masq_all_marks_every_source_once() {
        let saved = SavedTable::parse(EMPTY, "nat").unwrap();
        let mut config = PortMapConfig::new("test", "1234", vec![m(8080, 80, Proto::Tcp, None)]);
        config.masq_all = true;
        let text = render_forward(&saved, &config, "10.0.0.2/24".parse().unwrap())
            .unwrap()
            .render();
        let dn: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with(&format!("-A {DN}")))
            .collect();
        assert_eq!(
            dn,
            [
                format!("-A {DN} -p tcp -m tcp --dport 8080 -j CNI-HOSTPORT-SETMARK"),
                format!("-A {DN} -p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.0.0.2:80"),
            ]
        );
    }

    #[test]
    fn multiport_groups_hold_at_most_fifteen_ports() {
        let mappings = (0..20).map(|i| m(9000 + i, 80, Proto::Tcp, None)).collect();
        let config = PortMapConfig::new("test", "1234", mappings);
        let entries = entry_rules(&config);
        assert_eq!(entries.len(), 2);
        assert!(entries[0].spec().ends_with(
            "--dports 9000,9001,9002,9003,9004,9005,9006,9007,9008,9009,9010,9011,9012,9013,9014"
        ));
        assert!(
            entries[1]
                .spec()
                .ends_with("--dports 9015,9016,9017,9018,9019")
        );
    }

    /// Debian's portmap v1.1.1 output for one tcp mapping (net "test", id "1234").
    const REFERENCE_DUMP: &str = r#"*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:CNI-DN-2bbe0c48b91a7d1b8a675 - [0:0]
:CNI-HOSTPORT-DNAT - [0:0]
:CNI-HOSTPORT-MASQ - [0:0]
:CNI-HOSTPORT-SETMARK - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
-A OUTPUT -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
-A POSTROUTING -m comment --comment "CNI portfwd requiring masquerade" -j CNI-HOSTPORT-MASQ
-A CNI-DN-2bbe0c48b91a7d1b8a675 -s 10.88.0.0/16 -p tcp -m tcp --dport 8080 -j CNI-HOSTPORT-SETMARK
-A CNI-DN-2bbe0c48b91a7d1b8a675 -s 127.0.0.1/32 -p tcp -m tcp --dport 8080 -j CNI-HOSTPORT-SETMARK
-A CNI-DN-2bbe0c48b91a7d1b8a675 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.88.0.2:80
-A CNI-HOSTPORT-DNAT -p tcp -m comment --comment "dnat name: \"test\" id: \"1234\"" -m multiport --dports 8080 -j CNI-DN-2bbe0c48b91a7d1b8a675
-A CNI-HOSTPORT-MASQ -m mark --mark 0x2000/0x2000 -j MASQUERADE
-A CNI-HOSTPORT-SETMARK -m comment --comment "CNI portfwd masquerade mark" -j MARK --set-xmark 0x2000/0x2000
COMMIT
"#;

    #[test]
    fn forward_over_reference_state_is_a_no_op_and_check_passes() {
        let saved = SavedTable::parse(REFERENCE_DUMP, "nat").unwrap();
        let config = PortMapConfig::new("test", "1234", vec![m(8080, 80, Proto::Tcp, None)]);
        let ip = "10.88.0.2/16".parse().unwrap();
        assert!(render_forward(&saved, &config, ip).is_none());
        check(&saved, &config, ip).unwrap();
        let other = PortMapConfig::new("test", "1234", vec![m(8081, 80, Proto::Tcp, None)]);
        assert!(check(&saved, &other, ip).is_err());
    }

    #[test]
    fn second_container_only_adds_its_own_chain() {
        let saved = SavedTable::parse(REFERENCE_DUMP, "nat").unwrap();
        let config = PortMapConfig::new("test", "5678", vec![m(9090, 90, Proto::Udp, None)]);
        let dn = names::dnat_chain("test", "5678");
        let text = render_forward(&saved, &config, "10.88.0.3/16".parse().unwrap())
            .unwrap()
            .render();
        assert_eq!(
            text,
            format!(
                r#"*nat
:{dn} - [0:0]
-A {dn} -s 10.88.0.0/16 -p udp -m udp --dport 9090 -j CNI-HOSTPORT-SETMARK
-A {dn} -s 127.0.0.1/32 -p udp -m udp --dport 9090 -j CNI-HOSTPORT-SETMARK
-A {dn} -p udp -m udp --dport 9090 -j DNAT --to-destination 10.88.0.3:90
-A CNI-HOSTPORT-DNAT -p udp -m comment --comment "dnat name: \"test\" id: \"5678\"" -m multiport --dports 9090 -j {dn}
COMMIT
"#
            )
        );
    }

    #[test]
    fn readd_replaces_the_container_entries() {
        let saved = SavedTable::parse(REFERENCE_DUMP, "nat").unwrap();
        let config = PortMapConfig::new("test", "1234", vec![m(8081, 80, Proto::Tcp, None)]);
        let text = render_forward(&saved, &config, "10.88.0.2/16".parse().unwrap())
            .unwrap()
            .render();
        assert!(text.contains(&format!(":{DN} - [0:0]")));
        assert!(text.contains(&format!("-D CNI-HOSTPORT-DNAT -p tcp -m comment --comment \"dnat name: \\\"test\\\" id: \\\"1234\\\"\" -m multiport --dports 8080 -j {DN}")), "{text}");
        assert!(text.contains("--dports 8081 -j"));
    }

    #[test]
    fn unforward_leaves_the_skeleton() {
        let saved = SavedTable::parse(REFERENCE_DUMP, "nat").unwrap();
        let text = render_unforward(&saved, "test", "1234").unwrap().render();
        assert_eq!(
            text,
            format!(
                r#"*nat
-D CNI-HOSTPORT-DNAT -p tcp -m comment --comment "dnat name: \"test\" id: \"1234\"" -m multiport --dports 8080 -j {DN}
-F {DN}
-X {DN}
COMMIT
"#
            )
        );
        assert!(render_unforward(&saved, "test", "nope").is_none());
    }

    #[test]
    fn unforward_removes_the_old_snat_chain_too() {
        let sn = names::old_snat_chain("test", "1234");
        let dump = format!(
            "*nat\n:CNI-HOSTPORT-SNAT - [0:0]\n:{sn} - [0:0]\n-A CNI-HOSTPORT-SNAT -j {sn}\n-A {sn} -j MASQUERADE\nCOMMIT\n"
        );
        let saved = SavedTable::parse(&dump, "nat").unwrap();
        let text = render_unforward(&saved, "test", "1234").unwrap().render();
        assert_eq!(
            text,
            format!("*nat\n-D CNI-HOSTPORT-SNAT -j {sn}\n-F {sn}\n-X {sn}\nCOMMIT\n")
        );
    }
}
