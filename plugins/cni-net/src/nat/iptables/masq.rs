//! ipMasq with iptables: per container a nat chain `CNI-<hash>` that accepts traffic to
//! the container's own subnet and masquerades the rest (multicast excepted), entered
//! from `POSTROUTING` for each container address.

use std::collections::HashSet;

use ipnetwork::IpNetwork;

use super::restore::{Rule, Script};
use super::save::SavedTable;
use crate::nat::names;

fn host_cidr(net: &IpNetwork) -> String {
    match net {
        IpNetwork::V4(n) => format!("{}/32", n.ip()),
        IpNetwork::V6(n) => format!("{}/128", n.ip()),
    }
}

fn subnet(net: &IpNetwork) -> String {
    format!("{}/{}", net.network(), net.prefix())
}

fn multicast(net: &IpNetwork) -> &'static str {
    match net {
        IpNetwork::V4(_) => "224.0.0.0/4",
        IpNetwork::V6(_) => "ff00::/8",
    }
}

/// The chain's rules and the `POSTROUTING` jumps for `nets` (all of one family).
///
/// The reference appends, per address, ACCEPT then MASQUERADE (skipping duplicates), so
/// a second address in another subnet gets its ACCEPT after the MASQUERADE, where it
/// never matches. We put every ACCEPT first; with one address per family (the usual
/// case) the chain is identical to the reference's.
fn desired(network: &str, container_id: &str, nets: &[IpNetwork]) -> (Vec<Rule>, Vec<Rule>) {
    let chain = names::masq_chain(network, container_id);
    let comment = names::masq_comment(network, container_id);
    let mut chain_rules: Vec<Rule> = Vec::new();
    let mut jumps: Vec<Rule> = Vec::new();
    for net in nets {
        let accept = Rule::new(&chain)
            .args(&["-d", &subnet(net)])
            .comment(&comment)
            .jump("ACCEPT");
        if !chain_rules.contains(&accept) {
            chain_rules.push(accept);
        }
        let jump = Rule::new("POSTROUTING")
            .args(&["-s", &host_cidr(net)])
            .comment(&comment)
            .jump(&chain);
        if !jumps.contains(&jump) {
            jumps.push(jump);
        }
    }
    if let Some(first) = nets.first() {
        chain_rules.push(
            Rule::new(&chain)
                .args(&["!", "-d", multicast(first)])
                .comment(&comment)
                .jump("MASQUERADE"),
        );
    }
    (chain_rules, jumps)
}

/// Script that makes the table hold exactly this container's masquerading for `nets`,
/// or `None` when it already does.
pub(crate) fn render_setup(
    saved: &SavedTable,
    network: &str,
    container_id: &str,
    nets: &[IpNetwork],
) -> Option<Script> {
    if nets.is_empty() {
        return None;
    }
    let chain = names::masq_chain(network, container_id);
    let (chain_rules, jumps) = desired(network, container_id, nets);

    let existing_jumps = saved.entries_of(&chain);
    let chain_ok = saved.chain_holds(&chain, chain_rules.iter().map(Rule::tokens));
    let jumps_ok = existing_jumps.len() == jumps.len()
        && jumps.iter().all(|j| saved.has_rule(&j.chain, &j.tokens()));
    if chain_ok && jumps_ok {
        return None;
    }

    let mut script = Script::new();
    script.declare(&chain);
    for old in existing_jumps {
        script.delete(old);
    }
    for rule in chain_rules.iter().chain(&jumps) {
        script.append(rule);
    }
    Some(script)
}

/// Script that creates this container's masquerading from nothing: for a chain known
/// to be absent, so it is made with `-N` (a concurrent creator fails the commit rather
/// than being flushed) and no saved table is needed.
pub(crate) fn render_new(network: &str, container_id: &str, nets: &[IpNetwork]) -> Option<Script> {
    if nets.is_empty() {
        return None;
    }
    let (chain_rules, jumps) = desired(network, container_id, nets);
    let mut script = Script::new();
    script.create(&names::masq_chain(network, container_id));
    for rule in chain_rules.iter().chain(&jumps) {
        script.append(rule);
    }
    Some(script)
}

/// Removes the container's chain and everything jumping to it.
pub(crate) fn render_teardown(
    saved: &SavedTable,
    network: &str,
    container_id: &str,
) -> Option<Script> {
    let mut script = Script::new();
    script.remove_chain(saved, &names::masq_chain(network, container_id));
    (!script.is_empty()).then_some(script)
}

/// Removes the masq chains of `network` whose container is not in `valid_ids`.
///
/// A chain is attributed by the comment on its rules (or on the jumps to it), and only
/// when the chain name is the hash of that comment's (network, id): a chain that merely
/// looks like ours is never touched.
pub(crate) fn render_gc(
    saved: &SavedTable,
    network: &str,
    valid_ids: &HashSet<&str>,
) -> Option<Script> {
    let mut script = Script::new();
    for chain in saved.chains() {
        if !is_masq_chain_name(chain) {
            continue;
        }
        let owner = saved
            .rules_in(chain)
            .chain(saved.jumps_to(chain))
            .filter_map(|r| r.comment())
            .filter_map(names::parse_masq_comment)
            .find(|(net, id)| names::masq_chain(net, id) == chain);
        if let Some((net, id)) = owner
            && net == network
            && !valid_ids.contains(id.as_str())
        {
            script.remove_chain(saved, chain);
        }
    }
    (!script.is_empty()).then_some(script)
}

fn is_masq_chain_name(chain: &str) -> bool {
    chain.len() == 28
        && chain.strip_prefix("CNI-").is_some_and(|h| {
            h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNetwork> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    const EMPTY: &str = "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n";

    /// What Debian's bridge v1.1.1 leaves for net "test", id "1234", 10.88.0.2/16.
    const REFERENCE_V4: &str = r#"*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:CNI-2bbe0c48b91a7d1b8a6753a8 - [0:0]
-A POSTROUTING -s 10.88.0.2/32 -m comment --comment "name: \"test\" id: \"1234\"" -j CNI-2bbe0c48b91a7d1b8a6753a8
-A CNI-2bbe0c48b91a7d1b8a6753a8 -d 10.88.0.0/16 -m comment --comment "name: \"test\" id: \"1234\"" -j ACCEPT
-A CNI-2bbe0c48b91a7d1b8a6753a8 ! -d 224.0.0.0/4 -m comment --comment "name: \"test\" id: \"1234\"" -j MASQUERADE
COMMIT
"#;

    #[test]
    fn setup_v4_renders_reference_rules() {
        let saved = SavedTable::parse(EMPTY, "nat").unwrap();
        let script = render_setup(&saved, "test", "1234", &nets(&["10.88.0.2/16"])).unwrap();
        assert_eq!(
            script.render(),
            r#"*nat
:CNI-2bbe0c48b91a7d1b8a6753a8 - [0:0]
-A CNI-2bbe0c48b91a7d1b8a6753a8 -d 10.88.0.0/16 -m comment --comment "name: \"test\" id: \"1234\"" -j ACCEPT
-A CNI-2bbe0c48b91a7d1b8a6753a8 ! -d 224.0.0.0/4 -m comment --comment "name: \"test\" id: \"1234\"" -j MASQUERADE
-A POSTROUTING -s 10.88.0.2/32 -m comment --comment "name: \"test\" id: \"1234\"" -j CNI-2bbe0c48b91a7d1b8a6753a8
COMMIT
"#
        );
    }

    #[test]
    fn new_chain_is_created_with_dash_n_and_the_same_rules() {
        let script = render_new("test", "1234", &nets(&["10.88.0.2/16"])).unwrap();
        assert_eq!(
            script.render(),
            r#"*nat
-N CNI-2bbe0c48b91a7d1b8a6753a8
-A CNI-2bbe0c48b91a7d1b8a6753a8 -d 10.88.0.0/16 -m comment --comment "name: \"test\" id: \"1234\"" -j ACCEPT
-A CNI-2bbe0c48b91a7d1b8a6753a8 ! -d 224.0.0.0/4 -m comment --comment "name: \"test\" id: \"1234\"" -j MASQUERADE
-A POSTROUTING -s 10.88.0.2/32 -m comment --comment "name: \"test\" id: \"1234\"" -j CNI-2bbe0c48b91a7d1b8a6753a8
COMMIT
"#
        );
        assert!(render_new("test", "1234", &[]).is_none());
    }

    #[test]
    fn setup_v6_renders_reference_rules() {
        let saved = SavedTable::parse(EMPTY, "nat").unwrap();
        let script = render_setup(&saved, "test", "1234", &nets(&["2001:db8:1::2/64"])).unwrap();
        assert_eq!(
            script.render(),
            r#"*nat
:CNI-2bbe0c48b91a7d1b8a6753a8 - [0:0]
-A CNI-2bbe0c48b91a7d1b8a6753a8 -d 2001:db8:1::/64 -m comment --comment "name: \"test\" id: \"1234\"" -j ACCEPT
-A CNI-2bbe0c48b91a7d1b8a6753a8 ! -d ff00::/8 -m comment --comment "name: \"test\" id: \"1234\"" -j MASQUERADE
-A POSTROUTING -s 2001:db8:1::2/128 -m comment --comment "name: \"test\" id: \"1234\"" -j CNI-2bbe0c48b91a7d1b8a6753a8
COMMIT
"#
        );
    }

    #[test]
    fn setup_is_a_no_op_when_the_reference_already_did_it() {
        let saved = SavedTable::parse(REFERENCE_V4, "nat").unwrap();
        assert!(render_setup(&saved, "test", "1234", &nets(&["10.88.0.2/16"])).is_none());
    }

    #[test]
    fn setup_replaces_stale_jumps() {
        let saved = SavedTable::parse(REFERENCE_V4, "nat").unwrap();
        let script = render_setup(&saved, "test", "1234", &nets(&["10.88.0.3/16"])).unwrap();
        assert_eq!(
            script.render(),
            r#"*nat
:CNI-2bbe0c48b91a7d1b8a6753a8 - [0:0]
-D POSTROUTING -s 10.88.0.2/32 -m comment --comment "name: \"test\" id: \"1234\"" -j CNI-2bbe0c48b91a7d1b8a6753a8
-A CNI-2bbe0c48b91a7d1b8a6753a8 -d 10.88.0.0/16 -m comment --comment "name: \"test\" id: \"1234\"" -j ACCEPT
-A CNI-2bbe0c48b91a7d1b8a6753a8 ! -d 224.0.0.0/4 -m comment --comment "name: \"test\" id: \"1234\"" -j MASQUERADE
-A POSTROUTING -s 10.88.0.3/32 -m comment --comment "name: \"test\" id: \"1234\"" -j CNI-2bbe0c48b91a7d1b8a6753a8
COMMIT
"#
        );
    }

    #[test]
    fn two_addresses_accept_both_subnets_before_masquerading() {
        let saved = SavedTable::parse(EMPTY, "nat").unwrap();
        let script = render_setup(
            &saved,
            "n",
            "c",
            &nets(&["10.1.0.5/24", "10.2.0.5/24", "10.1.0.6/24"]),
        )
        .unwrap();
        let text = script.render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 9, "{text}");
        assert!(lines[2].contains("-d 10.1.0.0/24") && lines[2].ends_with("-j ACCEPT"));
        assert!(lines[3].contains("-d 10.2.0.0/24") && lines[3].ends_with("-j ACCEPT"));
        assert!(lines[4].ends_with("-j MASQUERADE"));
        assert!(lines[5].starts_with("-A POSTROUTING -s 10.1.0.5/32"));
        assert!(lines[7].starts_with("-A POSTROUTING -s 10.1.0.6/32"));
    }

    #[test]
    fn teardown_finds_everything_from_the_chain_name_alone() {
        let saved = SavedTable::parse(REFERENCE_V4, "nat").unwrap();
        assert_eq!(
            render_teardown(&saved, "test", "1234").unwrap().render(),
            r#"*nat
-D POSTROUTING -s 10.88.0.2/32 -m comment --comment "name: \"test\" id: \"1234\"" -j CNI-2bbe0c48b91a7d1b8a6753a8
-F CNI-2bbe0c48b91a7d1b8a6753a8
-X CNI-2bbe0c48b91a7d1b8a6753a8
COMMIT
"#
        );
        assert!(render_teardown(&saved, "test", "other").is_none());
        let empty = SavedTable::parse(EMPTY, "nat").unwrap();
        assert!(render_teardown(&empty, "test", "1234").is_none());
    }

    #[test]
    fn teardown_also_removes_the_old_cidr_jump_form() {
        let old = REFERENCE_V4.replace(
            "COMMIT",
            "-A POSTROUTING -s 10.88.0.2/16 -m comment --comment \"name: \\\"test\\\" id: \\\"1234\\\"\" -j CNI-2bbe0c48b91a7d1b8a6753a8\nCOMMIT",
        );
        let saved = SavedTable::parse(&old, "nat").unwrap();
        let text = render_teardown(&saved, "test", "1234").unwrap().render();
        assert_eq!(text.matches("-D POSTROUTING").count(), 2, "{text}");
    }

    #[test]
    fn gc_removes_only_invalid_containers_of_this_network() {
        let mut dump = String::from(EMPTY.trim_end_matches("COMMIT\n"));
        for (net, id, ip) in [
            ("test", "keep", "10.88.0.2"),
            ("test", "gone", "10.88.0.3"),
            ("other", "gone2", "10.99.0.3"),
        ] {
            let saved = SavedTable::parse(EMPTY, "nat").unwrap();
            let script = render_setup(&saved, net, id, &nets(&[&format!("{ip}/16")])).unwrap();
            for line in script.render().lines() {
                if let Some(rest) = line.strip_prefix("-A ") {
                    dump.push_str(&format!("-A {rest}\n"));
                } else if line.starts_with(':') {
                    dump.push_str(&format!("{line}\n"));
                }
            }
        }
        dump.push_str("COMMIT\n");
        let saved = SavedTable::parse(&dump, "nat").unwrap();
        let valid: HashSet<&str> = ["keep"].into_iter().collect();
        let text = render_gc(&saved, "test", &valid).unwrap().render();
        let gone = names::masq_chain("test", "gone");
        assert!(text.contains(&format!("-X {gone}")), "{text}");
        assert_eq!(text.matches("-X ").count(), 1, "{text}");
        assert!(render_gc(&saved, "nobody", &valid).is_none());
    }

    #[test]
    fn gc_ignores_chains_whose_name_does_not_match_the_comment() {
        let dump = r#"*nat
:POSTROUTING ACCEPT [0:0]
:CNI-000000000000000000000000 - [0:0]
-A CNI-000000000000000000000000 -m comment --comment "name: \"test\" id: \"x\"" -j ACCEPT
COMMIT
"#;
        let saved = SavedTable::parse(dump, "nat").unwrap();
        assert!(render_gc(&saved, "test", &HashSet::new()).is_none());
    }
}
