//! ipMasq with nftables: table `inet cni_plugins_masquerade`, one rule per container
//! address in `masq_checks`, each commented with a hash of (network, ifname, container)
//! so DEL and GC find their rules without the addresses.

use std::collections::HashSet;

use ipnetwork::IpNetwork;

use serde_json::{Value, json};

use super::tool::{NftRule, quote};
use crate::nat::model::Attachment;
use crate::nat::names::{
    self, NFT_MASQ_CHAIN, NFT_MASQ_CHAIN_COMMENT, NFT_MASQ_POSTROUTING_CHAIN, NFT_MASQ_TABLE,
    NFT_MASQ_TABLE_COMMENT,
};

fn prefix() -> String {
    format!("inet {NFT_MASQ_TABLE}")
}

/// The transaction for one attachment: unless `skeleton_ready`, ensure the table and
/// chains and rebuild the (shared, constant) postrouting chain; then drop the
/// attachment's stale rules and add its new ones.
pub(crate) fn render_setup(
    skeleton_ready: bool,
    stale: &[&NftRule],
    network: &str,
    ifname: &str,
    container_id: &str,
    nets: &[IpNetwork],
) -> String {
    let t = prefix();
    let comment = quote(&names::nft_masq_comment(network, ifname, container_id));
    let mut out = String::new();
    let mut line = |s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    if !skeleton_ready {
        render_skeleton(&mut line);
    }
    for rule in stale {
        line(rule.delete_command());
    }
    for net in nets {
        let ip = match net {
            IpNetwork::V4(_) => "ip",
            IpNetwork::V6(_) => "ip6",
        };
        line(format!(
            "add rule {t} {NFT_MASQ_CHAIN} {ip} saddr == {} {ip} daddr != {}/{} masquerade comment {comment}",
            net.ip(),
            net.network(),
            net.prefix()
        ));
    }
    out
}

fn render_skeleton(line: &mut impl FnMut(String)) {
    let t = prefix();
    line(format!(
        "add table {t} {{ comment {} ; }}",
        quote(NFT_MASQ_TABLE_COMMENT)
    ));
    line(format!(
        "add chain {t} {NFT_MASQ_CHAIN} {{ comment {} ; }}",
        quote(NFT_MASQ_CHAIN_COMMENT)
    ));
    line(format!(
        "add chain {t} {NFT_MASQ_POSTROUTING_CHAIN} {{ type nat hook postrouting priority 100 ; }}"
    ));
    line(format!("flush chain {t} {NFT_MASQ_POSTROUTING_CHAIN}"));
    line(format!(
        "add rule {t} {NFT_MASQ_POSTROUTING_CHAIN} ip daddr == 224.0.0.0/4  return"
    ));
    line(format!(
        "add rule {t} {NFT_MASQ_POSTROUTING_CHAIN} ip6 daddr == ff00::/8  return"
    ));
    line(format!(
        "add rule {t} {NFT_MASQ_POSTROUTING_CHAIN} goto {NFT_MASQ_CHAIN}"
    ));
}

/// Whether the listed table already holds what [`render_skeleton`] would make:
/// `masq_checks`, and `postrouting` hooked as nat/postrouting/100 with exactly the two
/// multicast returns and the goto. Rebuilding means flushing `postrouting`, and a
/// commit that deletes anything in nf_tables makes the next close of a netfilter socket
/// wait for an RCU grace period (~10 ms): an ADD that would change nothing skips it.
/// Anything unexpected (another nft version's JSON included) answers no: rebuild.
pub(crate) fn skeleton_ready(doc: &Value) -> bool {
    let Some(items) = doc.get("nftables").and_then(Value::as_array) else {
        return false;
    };
    let mut checks = false;
    let mut hook = false;
    let mut post_rules = Vec::new();
    for item in items {
        if let Some(chain) = item.get("chain") {
            match chain.get("name").and_then(Value::as_str) {
                Some(NFT_MASQ_CHAIN) => checks = true,
                Some(NFT_MASQ_POSTROUTING_CHAIN) => {
                    hook = chain.get("type") == Some(&json!("nat"))
                        && chain.get("hook") == Some(&json!("postrouting"))
                        && chain.get("prio") == Some(&json!(100));
                }
                _ => {}
            }
        } else if let Some(rule) = item.get("rule")
            && rule.get("chain").and_then(Value::as_str) == Some(NFT_MASQ_POSTROUTING_CHAIN)
        {
            post_rules.push(rule.get("expr").cloned().unwrap_or(Value::Null));
        }
    }
    let multicast_return = |proto: &str, addr: &str, len: u8| {
        json!([
            {"match": {"op": "==",
                       "left": {"payload": {"protocol": proto, "field": "daddr"}},
                       "right": {"prefix": {"addr": addr, "len": len}}}},
            {"return": null}
        ])
    };
    let wanted = [
        multicast_return("ip", "224.0.0.0", 4),
        multicast_return("ip6", "ff00::", 8),
        json!([{"goto": {"target": NFT_MASQ_CHAIN}}]),
    ];
    checks && hook && post_rules == wanted
}

/// Rules whose comment starts with `prefix`, the reference's selection.
fn with_comment_prefix<'a>(rules: &'a [NftRule], prefix: &str) -> Vec<&'a NftRule> {
    rules
        .iter()
        .filter(|r| r.chain == NFT_MASQ_CHAIN)
        .filter(|r| r.comment.as_deref().is_some_and(|c| c.starts_with(prefix)))
        .collect()
}

pub(crate) fn instance_rules<'a>(
    rules: &'a [NftRule],
    network: &str,
    ifname: &str,
    container_id: &str,
) -> Vec<&'a NftRule> {
    with_comment_prefix(
        rules,
        &names::nft_masq_instance_hash(network, ifname, container_id),
    )
}

/// This network's rules whose comment is not that of a valid attachment.
pub(crate) fn gc_rules<'a>(
    rules: &'a [NftRule],
    network: &str,
    valid: &[Attachment<'_>],
) -> Vec<&'a NftRule> {
    let keep: HashSet<String> = valid
        .iter()
        .map(|a| names::nft_masq_comment(network, a.ifname, a.container_id))
        .collect();
    with_comment_prefix(rules, &names::nft_masq_network_hash(network))
        .into_iter()
        .filter(|r| !r.comment.as_ref().is_some_and(|c| keep.contains(c)))
        .collect()
}

pub(crate) fn render_delete(rules: &[&NftRule]) -> Option<String> {
    if rules.is_empty() {
        return None;
    }
    Some(rules.iter().map(|r| r.delete_command() + "\n").collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(handle: u64, comment: &str) -> NftRule {
        NftRule {
            family: "inet".into(),
            table: NFT_MASQ_TABLE.into(),
            chain: NFT_MASQ_CHAIN.into(),
            handle,
            comment: Some(comment.into()),
        }
    }

    #[test]
    fn setup_renders_reference_transaction() {
        let nets: Vec<IpNetwork> = ["192.168.1.2/24", "2001:db8::2/64"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let stale = rule(
            9,
            "6fd94d501e58f0aa-d750b2c8f0f25d5f, net: unit-test, if: eth0, id: two",
        );
        assert_eq!(
            render_setup(false, &[&stale], "unit-test", "eth0", "two", &nets),
            r#"add table inet cni_plugins_masquerade { comment "Masquerading for plugins from github.com/containernetworking/plugins" ; }
add chain inet cni_plugins_masquerade masq_checks { comment "Masquerade traffic from certain IPs to any (non-multicast) IP outside their subnet" ; }
add chain inet cni_plugins_masquerade postrouting { type nat hook postrouting priority 100 ; }
flush chain inet cni_plugins_masquerade postrouting
add rule inet cni_plugins_masquerade postrouting ip daddr == 224.0.0.0/4  return
add rule inet cni_plugins_masquerade postrouting ip6 daddr == ff00::/8  return
add rule inet cni_plugins_masquerade postrouting goto masq_checks
delete rule inet cni_plugins_masquerade masq_checks handle 9
add rule inet cni_plugins_masquerade masq_checks ip saddr == 192.168.1.2 ip daddr != 192.168.1.0/24 masquerade comment "6fd94d501e58f0aa-d750b2c8f0f25d5f, net: unit-test, if: eth0, id: two"
add rule inet cni_plugins_masquerade masq_checks ip6 saddr == 2001:db8::2 ip6 daddr != 2001:db8::/64 masquerade comment "6fd94d501e58f0aa-d750b2c8f0f25d5f, net: unit-test, if: eth0, id: two"
"#
        );
    }

    #[test]
    fn setup_on_a_ready_skeleton_only_adds_and_deletes_the_instance() {
        let nets: Vec<IpNetwork> = vec!["192.168.1.2/24".parse().unwrap()];
        let stale = rule(9, "x");
        assert_eq!(
            render_setup(true, &[&stale], "unit-test", "eth0", "two", &nets),
            r#"delete rule inet cni_plugins_masquerade masq_checks handle 9
add rule inet cni_plugins_masquerade masq_checks ip saddr == 192.168.1.2 ip daddr != 192.168.1.0/24 masquerade comment "6fd94d501e58f0aa-d750b2c8f0f25d5f, net: unit-test, if: eth0, id: two"
"#
        );
    }

    /// What `nft -j list table inet cni_plugins_masquerade` (nftables 1.0.6) prints
    /// after one setup.
    fn listed(post_rules: &str, prio: u32) -> Value {
        let doc = format!(
            r#"{{"nftables": [{{"metainfo": {{"version": "1.0.6", "json_schema_version": 1}}}},
 {{"table": {{"family": "inet", "name": "cni_plugins_masquerade", "handle": 1, "comment": "c"}}}},
 {{"chain": {{"family": "inet", "table": "cni_plugins_masquerade", "name": "masq_checks", "handle": 1, "comment": "x"}}}},
 {{"chain": {{"family": "inet", "table": "cni_plugins_masquerade", "name": "postrouting", "handle": 2, "type": "nat", "hook": "postrouting", "prio": {prio}, "policy": "accept"}}}},
 {post_rules}
 {{"rule": {{"family": "inet", "table": "cni_plugins_masquerade", "chain": "masq_checks", "handle": 6, "comment": "abc", "expr": [{{"masquerade": null}}]}}}}]}}"#
        );
        serde_json::from_str(&doc).unwrap()
    }

    const POST_RULES: &str = r#"{"rule": {"family": "inet", "table": "cni_plugins_masquerade", "chain": "postrouting", "handle": 3, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": {"prefix": {"addr": "224.0.0.0", "len": 4}}}}, {"return": null}]}},
 {"rule": {"family": "inet", "table": "cni_plugins_masquerade", "chain": "postrouting", "handle": 4, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip6", "field": "daddr"}}, "right": {"prefix": {"addr": "ff00::", "len": 8}}}}, {"return": null}]}},
 {"rule": {"family": "inet", "table": "cni_plugins_masquerade", "chain": "postrouting", "handle": 5, "expr": [{"goto": {"target": "masq_checks"}}]}},"#;

    #[test]
    fn skeleton_is_ready_only_when_exactly_as_rendered() {
        assert!(skeleton_ready(&listed(POST_RULES, 100)));
        assert!(!skeleton_ready(&listed(POST_RULES, 90)), "other priority");
        let missing_goto = POST_RULES.rsplit_once("\n").unwrap().0;
        assert!(!skeleton_ready(&listed(missing_goto, 100)), "a rule gone");
        let doubled = format!("{POST_RULES}{POST_RULES}");
        assert!(!skeleton_ready(&listed(&doubled, 100)), "rules twice");
        assert!(!skeleton_ready(&json!({"nftables": []})));
    }

    #[test]
    fn teardown_selects_only_the_instance_even_with_a_reused_address() {
        let rules = vec![
            rule(1, &names::nft_masq_comment("unit-test", "eth0", "one")),
            rule(2, &names::nft_masq_comment("unit-test", "eth0", "four")),
            rule(3, &names::nft_masq_comment("unit-test", "eth0", "one")),
        ];
        let picked = instance_rules(&rules, "unit-test", "eth0", "one");
        assert_eq!(
            render_delete(&picked).unwrap(),
            "delete rule inet cni_plugins_masquerade masq_checks handle 1\ndelete rule inet cni_plugins_masquerade masq_checks handle 3\n"
        );
        assert!(render_delete(&instance_rules(&rules, "unit-test", "eth1", "one")).is_none());
    }

    #[test]
    fn gc_keeps_valid_attachments_and_other_networks() {
        let rules = vec![
            rule(1, &names::nft_masq_comment("unit-test", "eth0", "one")),
            rule(2, &names::nft_masq_comment("unit-test", "eth0", "two")),
            rule(3, &names::nft_masq_comment("alternate", "eth0", "three")),
        ];
        let valid = [Attachment {
            container_id: "one",
            ifname: "eth0",
        }];
        let picked: Vec<u64> = gc_rules(&rules, "unit-test", &valid)
            .iter()
            .map(|r| r.handle)
            .collect();
        assert_eq!(picked, [2]);
    }
}
