//! Every name and comment the reference plugins write into the kernel.
//!
//! These strings are an interface: a node may run Go and Rust plugins side by side, and
//! each must find (and delete) what the other created. They live here, in one place, and
//! the tests pin them against the reference's own golden values.

use sha2::{Digest, Sha512};

/// Length of the per-container iptables chain names (`CNI-` + hash).
const CHAIN_NAME_LEN: usize = 28;
const CHAIN_PREFIX: &str = "CNI-";

/// nat table chain that `PREROUTING`/`OUTPUT` jump to for local destinations.
pub const HOSTPORT_DNAT_CHAIN: &str = "CNI-HOSTPORT-DNAT";
/// nat table chain that sets the masquerade mark.
pub const HOSTPORT_SETMARK_CHAIN: &str = "CNI-HOSTPORT-SETMARK";
/// nat table chain, first in `POSTROUTING`, masquerading marked packets.
pub const HOSTPORT_MASQ_CHAIN: &str = "CNI-HOSTPORT-MASQ";
/// Shared chain of portmap versions before 0.7; only ever torn down.
#[allow(dead_code)] // named for the record: only its per-container chains are removed
pub const OLD_HOSTPORT_SNAT_CHAIN: &str = "CNI-HOSTPORT-SNAT";
/// Comment on the rule in `CNI-HOSTPORT-SETMARK`.
pub const SETMARK_COMMENT: &str = "CNI portfwd masquerade mark";
/// Comment on the `POSTROUTING` jump to `CNI-HOSTPORT-MASQ`.
pub const MASQ_JUMP_COMMENT: &str = "CNI portfwd requiring masquerade";
/// iptables-nft keeps its nat table in nf_tables under this name.
pub const IPT_NAT_TABLE: &str = "nat";
/// Where the reference (and we) jump to a container's masquerading chain from, and
/// where `CNI-HOSTPORT-MASQ` is entered.
pub const POSTROUTING: &str = "POSTROUTING";
/// Where `CNI-HOSTPORT-DNAT` is entered from, for forwarded and local traffic.
pub const PREROUTING: &str = "PREROUTING";
pub const OUTPUT: &str = "OUTPUT";
/// portmap's default `markMasqBit`.
pub const DEFAULT_MARK_MASQ_BIT: u8 = 13;

/// nftables table (family `inet`) of the ipMasq backend.
pub const NFT_MASQ_TABLE: &str = "cni_plugins_masquerade";
/// Regular chain holding one masquerade rule per container address.
pub const NFT_MASQ_CHAIN: &str = "masq_checks";
/// Base chain (nat, postrouting, priority srcnat) of the ipMasq table.
pub const NFT_MASQ_POSTROUTING_CHAIN: &str = "postrouting";
pub const NFT_MASQ_TABLE_COMMENT: &str =
    "Masquerading for plugins from github.com/containernetworking/plugins";
pub const NFT_MASQ_CHAIN_COMMENT: &str =
    "Masquerade traffic from certain IPs to any (non-multicast) IP outside their subnet";

/// nftables table (families `ip` and `ip6`) of the portmap backend.
pub const NFT_HOSTPORT_TABLE: &str = "cni_hostport";
pub const NFT_HOSTPORT_TABLE_COMMENT: &str = "CNI portmap plugin";
/// Chain holding every DNAT rule, commented with the container ID.
pub const NFT_HOSTPORTS_CHAIN: &str = "hostports";
/// Used for host-IP rules by older versions; kept (empty) so upgrades stay transparent.
pub const NFT_HOSTIP_HOSTPORTS_CHAIN: &str = "hostip_hostports";
/// Intermediate chain jumping to both of the above.
pub const NFT_HOSTPORTS_ALL_CHAIN: &str = "hostports_all";
pub const NFT_PREROUTING_CHAIN: &str = "prerouting";
pub const NFT_OUTPUT_CHAIN: &str = "output";
pub const NFT_MASQUERADING_CHAIN: &str = "masquerading";
/// Ours only (the nftables-sets layout, see `sets`): ipMasq's table, per IP family.
pub const SETS_MASQ_TABLE: &str = "cni_rs_masquerade";
/// Ours only: portmap's table, per IP family.
pub const SETS_HOSTPORT_TABLE: &str = "cni_rs_hostport";
/// Sets of `cni_rs_masquerade`: pod addresses, and `address . subnet` intervals.
pub const SETS_PODS_SET: &str = "pods";
pub const SETS_LOCAL_SET: &str = "local";
/// Maps of `cni_rs_hostport`: `proto . port` and `host address . proto . port` to
/// `pod address . pod port`, and the set of `source . pod` pairs to masquerade.
pub const SETS_DNAT_ANY_MAP: &str = "dnat_any";
pub const SETS_DNAT_IP_MAP: &str = "dnat_ip";
pub const SETS_MASQ_SET: &str = "masq";
/// Ours only, every layout: the localnet guard (`guard.rs`), family `ip`. Its input
/// chain drops what pods send to 127.0.0.0/8 that is not part of a host connection.
pub const LOCALNET_GUARD_TABLE: &str = "cni_rs_localnet";
pub const LOCALNET_GUARD_CHAIN: &str = "input";
/// Sets of `cni_rs_localnet`: the interfaces it guards, and `interface . pod address`
/// per container that needs the interface guarded.
pub const LOCALNET_GUARDED_SET: &str = "guarded";
pub const LOCALNET_OWNERS_SET: &str = "owners";
/// knftables refuses longer comments; the reference truncates to this.
pub const NFT_COMMENT_MAX: usize = 128;
/// iptables' comment match limit.
const IPTABLES_COMMENT_MAX: usize = 255;

fn sha512_hex(input: &str) -> String {
    let digest = Sha512::digest(input.as_bytes());
    let mut out = String::with_capacity(digest.len() * 2);
    for byte in digest {
        out.push(char::from_digit(u32::from(byte >> 4), 16).unwrap_or('0'));
        out.push(char::from_digit(u32::from(byte & 0xf), 16).unwrap_or('0'));
    }
    out
}

/// `prefix` followed by the hex SHA-512 of `to_hash`, cut to `len` characters.
///
/// Like the reference this is byte-oriented; prefixes are ASCII so the cut is safe.
pub fn hash_with_prefix(len: usize, prefix: &str, to_hash: &str) -> String {
    let mut out = String::with_capacity(prefix.len() + 128);
    out.push_str(prefix);
    out.push_str(&sha512_hex(to_hash));
    out.truncate(len.min(out.len()));
    out
}

/// The ipMasq chain of one container: `CNI-` + 24 hex of sha512(network + container ID).
pub fn masq_chain(network: &str, container_id: &str) -> String {
    chain_with_prefix(network, container_id, "")
}

/// `CNI-<prefix><hash>`, always 28 characters (the reference's
/// `MustFormatChainNameWithPrefix`).
pub fn chain_with_prefix(network: &str, container_id: &str, prefix: &str) -> String {
    let mut full_prefix = String::from(CHAIN_PREFIX);
    full_prefix.push_str(prefix);
    let mut to_hash = String::with_capacity(network.len() + container_id.len());
    to_hash.push_str(network);
    to_hash.push_str(container_id);
    hash_with_prefix(CHAIN_NAME_LEN, &full_prefix, &to_hash)
}

/// Per-container portmap DNAT chain, `CNI-DN-` + 21 hex.
pub fn dnat_chain(network: &str, container_id: &str) -> String {
    chain_with_prefix(network, container_id, "DN-")
}

/// Per-container SNAT chain of old portmap versions (torn down only).
pub fn old_snat_chain(network: &str, container_id: &str) -> String {
    chain_with_prefix(network, container_id, "SN-")
}

/// Go's `%q` for the strings we put in comments. Network names and container IDs are
/// validated to `[a-zA-Z0-9_.-]`, so in practice this only adds the quotes; the escapes
/// keep a hand-written config from producing a comment iptables cannot parse back.
fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Cuts a comment to iptables' limit with a `...` suffix, as portmap does. (portmap keeps
/// 253 bytes plus the dots, one more than the kernel accepts; we stay within the limit.)
fn trim_iptables_comment(comment: String) -> String {
    if comment.len() <= IPTABLES_COMMENT_MAX {
        return comment;
    }
    let mut cut = IPTABLES_COMMENT_MAX - 3;
    while !comment.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut out = comment[..cut].to_string();
    out.push_str("...");
    out
}

/// ipMasq iptables comment: `name: "<net>" id: "<cid>"`.
pub fn masq_comment(network: &str, container_id: &str) -> String {
    trim_iptables_comment(format!(
        "name: {} id: {}",
        go_quote(network),
        go_quote(container_id)
    ))
}

/// Parses a [`masq_comment`] back into `(network, container_id)`.
pub fn parse_masq_comment(comment: &str) -> Option<(String, String)> {
    let rest = comment.strip_prefix("name: ")?;
    let (network, rest) = parse_go_quoted(rest)?;
    let rest = rest.strip_prefix(" id: ")?;
    let (id, rest) = parse_go_quoted(rest)?;
    rest.is_empty().then_some((network, id))
}

/// Reads one `%q`-quoted string at the start of `s`, returning it and the rest.
fn parse_go_quoted(s: &str) -> Option<(String, &str)> {
    let mut chars = s.char_indices();
    if chars.next()?.1 != '"' {
        return None;
    }
    let mut out = String::new();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((out, &s[i + 1..])),
            '\\' => match chars.next()?.1 {
                'n' => out.push('\n'),
                'r' => out.push('\r'),
                't' => out.push('\t'),
                'x' => {
                    let hi = chars.next()?.1.to_digit(16)?;
                    let lo = chars.next()?.1.to_digit(16)?;
                    out.push(char::from_u32(hi * 16 + lo)?);
                }
                other => out.push(other),
            },
            c => out.push(c),
        }
    }
    None
}

/// portmap's comment on the `CNI-HOSTPORT-DNAT` entry rules.
pub fn dnat_comment(network: &str, container_id: &str) -> String {
    // The reference uses `%s` inside literal quotes here, not `%q`.
    trim_iptables_comment(format!("dnat name: \"{network}\" id: \"{container_id}\""))
}

/// The mark value and mask, `0x2000/0x2000` for bit 13.
pub fn mark_value(bit: u8) -> String {
    let value = 1u64 << u32::from(bit.min(31));
    format!("{value:#x}/{value:#x}")
}

/// First 16 hex of sha512(network): the prefix shared by all of a network's nft masq rules.
pub fn nft_masq_network_hash(network: &str) -> String {
    hash_with_prefix(16, "", network)
}

/// `<h16(net)>-<h16(ifname:cid)>`: identifies one attachment's nft masq rules.
pub fn nft_masq_instance_hash(network: &str, ifname: &str, container_id: &str) -> String {
    let mut out = nft_masq_network_hash(network);
    out.push('-');
    out.push_str(&hash_with_prefix(
        16,
        "",
        &format!("{ifname}:{container_id}"),
    ));
    out
}

/// Comment on an nft masq rule: the instance hash, then a readable description.
pub fn nft_masq_comment(network: &str, ifname: &str, container_id: &str) -> String {
    let strip = |s: &str| s.replace('"', "");
    let mut comment = format!(
        "{}, net: {}, if: {}, id: {}",
        nft_masq_instance_hash(network, ifname, container_id),
        strip(network),
        strip(ifname),
        strip(container_id)
    );
    if comment.len() > NFT_COMMENT_MAX {
        let mut cut = NFT_COMMENT_MAX;
        while !comment.is_char_boundary(cut) {
            cut -= 1;
        }
        comment.truncate(cut);
    }
    comment
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masq_chain_matches_reference_golden() {
        assert_eq!(masq_chain("test", "1234"), "CNI-2bbe0c48b91a7d1b8a6753a8");
        assert_eq!(
            chain_with_prefix("test", "1234", "PREFIX-"),
            "CNI-PREFIX-2bbe0c48b91a7d1b8"
        );
        assert_eq!(masq_chain("test", "1234").len(), 28);
    }

    #[test]
    fn portmap_chains_match_reference_golden() {
        let long_id = "icee6giejonei6sohng6ahngee7laquohquee9shiGo7fohferakah3Feiyoolu2pei7ciPhoh7shaoX6vai3vuf0ahfaeng8yohb9ceu0daez5hashee8ooYai5wa3y";
        assert_eq!(
            dnat_chain("testNetName", long_id),
            "CNI-DN-bfd599665540dd91d5d28"
        );
        assert_eq!(dnat_chain("test", long_id), "CNI-DN-67e92b96e692a494b6b85");
        // Observed from Debian's portmap v1.1.1 for net "test", id "1234".
        assert_eq!(dnat_chain("test", "1234"), "CNI-DN-2bbe0c48b91a7d1b8a675");
        assert!(old_snat_chain("test", "1234").starts_with("CNI-SN-2bbe0c48"));
    }

    #[test]
    fn comments_match_reference() {
        assert_eq!(masq_comment("test", "1234"), r#"name: "test" id: "1234""#);
        assert_eq!(
            dnat_comment("test", "1234"),
            r#"dnat name: "test" id: "1234""#
        );
        assert_eq!(mark_value(13), "0x2000/0x2000");
        assert_eq!(mark_value(5), "0x20/0x20");
        assert_eq!(mark_value(0), "0x1/0x1");
        assert_eq!(mark_value(31), "0x80000000/0x80000000");
    }

    #[test]
    fn long_dnat_comment_is_trimmed_like_portmap() {
        let id = "x".repeat(300);
        let c = dnat_comment("n", &id);
        assert_eq!(c.len(), 255);
        assert!(c.ends_with("..."));
    }

    #[test]
    fn masq_comment_round_trips() {
        for (net, id) in [("test", "1234"), ("we\"ird\\", "a\tb"), ("", "")] {
            let c = masq_comment(net, id);
            assert_eq!(
                parse_masq_comment(&c),
                Some((net.to_string(), id.to_string()))
            );
        }
        assert_eq!(parse_masq_comment("dnat name: \"a\" id: \"b\""), None);
        assert_eq!(parse_masq_comment("name: \"a\" id: \"b\" x"), None);
    }

    #[test]
    fn nft_masq_comments_match_reference_golden() {
        assert_eq!(
            nft_masq_comment("unit-test", "eth0", "one"),
            "6fd94d501e58f0aa-287fc69eff0574a2, net: unit-test, if: eth0, id: one"
        );
        assert_eq!(
            nft_masq_comment("unit-test", "eth0", "two"),
            "6fd94d501e58f0aa-d750b2c8f0f25d5f, net: unit-test, if: eth0, id: two"
        );
        assert_eq!(
            nft_masq_comment("alternate", "net1", "three"),
            "82783ef24bdc7036-acb19d111858e348, net: alternate, if: net1, id: three"
        );
        assert_eq!(nft_masq_network_hash("unit-test"), "6fd94d501e58f0aa");
        let long = nft_masq_comment("n", "eth0", &"c".repeat(200));
        assert_eq!(long.len(), NFT_COMMENT_MAX);
    }
}
