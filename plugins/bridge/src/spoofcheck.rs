//! `macspoofchk`: nftables rules in the bridge family that drop frames from
//! the container's port unless they carry the container's MAC.
//!
//! Layout and names are the reference's, so either implementation can tear
//! down what the other made: table `bridge nat`, base chain `PREROUTING`
//! (filter, prerouting, priority -300), per attachment
//! `cni-br-iface-<cid>-<ifname>` and `...-mac`, every rule commented
//! `macspoofchk-<cid>-<ifname>`.

use cni_net::nat::NatError;
use cni_net::tools::{self, Tool, nft_quote as quote};
use serde_json::Value;

use crate::error::BridgeError;

const TABLE: &str = "nat";
const BASE_CHAIN: &str = "PREROUTING";

/// One attachment's rules.
#[derive(Debug, Clone)]
pub struct SpoofCheck {
    id: String,
}

/// Runs `nft args`, feeding `input`; returns stdout. Failures read as before the
/// runner was shared: `nft <args> failed (<status>): <stderr>`.
fn nft(args: &[&str], input: Option<&str>) -> Result<String, String> {
    tools::run(Tool::Nft, args, input).map_err(|e| match e {
        NatError::ToolFailed { status, detail, .. } => {
            format!("nft {} failed ({status}): {detail}", args.join(" "))
        }
        other => other.to_string(),
    })
}

impl SpoofCheck {
    pub fn new(container_id: &str, ifname: &str) -> SpoofCheck {
        SpoofCheck {
            id: format!("{container_id}-{ifname}"),
        }
    }

    pub fn iface_chain(&self) -> String {
        format!("cni-br-iface-{}", self.id)
    }

    pub fn mac_chain(&self) -> String {
        format!("{}-mac", self.iface_chain())
    }

    pub fn comment(&self) -> String {
        format!("macspoofchk-{}", self.id)
    }

    /// The whole setup as one nft transaction.
    pub fn setup_script(&self, host_iface: &str, mac: &str) -> String {
        // nft takes chain names only as bare words; container IDs and
        // interface names are restricted to characters that fit.
        let (ic, mc, c) = (self.iface_chain(), self.mac_chain(), quote(&self.comment()));
        format!(
            "add table bridge {TABLE}\n\
             add chain bridge {TABLE} {BASE_CHAIN} {{ type filter hook prerouting priority -300; policy accept; }}\n\
             add chain bridge {TABLE} {ic}\n\
             add chain bridge {TABLE} {mc}\n\
             flush chain bridge {TABLE} {ic}\n\
             flush chain bridge {TABLE} {mc}\n\
             add rule bridge {TABLE} {BASE_CHAIN} iifname {iface} jump {ic} comment {c}\n\
             add rule bridge {TABLE} {ic} jump {mc} comment {c}\n\
             add rule bridge {TABLE} {mc} ether saddr {mac} return comment {c}\n\
             add rule bridge {TABLE} {mc} drop comment {c}\n",
            iface = quote(host_iface),
        )
    }

    pub fn setup(&self, host_iface: &str, mac: &str) -> Result<(), BridgeError> {
        nft(&["-f", "-"], Some(&self.setup_script(host_iface, mac)))
            .map(drop)
            .map_err(BridgeError::SpoofCheck)
    }

    /// What to delete, from `nft -j list table bridge nat` output: the jump
    /// rules in PREROUTING carrying our comment, then our two chains.
    pub fn teardown_script(&self, listing: &Value) -> Option<String> {
        let (ic, mc, comment) = (self.iface_chain(), self.mac_chain(), self.comment());
        let mut script = String::new();
        let mut chains = Vec::new();
        for item in listing
            .get("nftables")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(rule) = item.get("rule") {
                let in_base = rule.get("chain").and_then(Value::as_str) == Some(BASE_CHAIN);
                let ours = rule.get("comment").and_then(Value::as_str) == Some(comment.as_str());
                if in_base
                    && ours
                    && let Some(handle) = rule.get("handle").and_then(Value::as_u64)
                {
                    script.push_str(&format!(
                        "delete rule bridge {TABLE} {BASE_CHAIN} handle {handle}\n"
                    ));
                }
            } else if let Some(chain) = item.get("chain")
                && let Some(name) = chain.get("name").and_then(Value::as_str)
                && (name == ic || name == mc)
            {
                chains.push(name.to_string());
            }
        }
        // The iface chain jumps to the mac chain: delete the referrer first.
        chains.sort_by_key(|c| *c != ic);
        for c in chains {
            script.push_str(&format!("delete chain bridge {TABLE} {c}\n"));
        }
        (!script.is_empty()).then_some(script)
    }

    /// Removes this attachment's rules; nothing to do when they are gone.
    pub fn teardown(&self) -> Result<(), BridgeError> {
        let listing = match nft(&["-j", "list", "table", "bridge", TABLE], None) {
            Ok(text) => text,
            // No table, no rules: the usual case for a repeated DEL.
            Err(e) if e.contains("No such file or directory") => return Ok(()),
            Err(e) => return Err(BridgeError::SpoofCheck(e)),
        };
        let listing: Value = serde_json::from_str(&listing)
            .map_err(|e| BridgeError::SpoofCheck(format!("parse nft listing: {e}")))?;
        match self.teardown_script(&listing) {
            Some(script) => nft(&["-f", "-"], Some(&script))
                .map(drop)
                .map_err(|e| BridgeError::SpoofCheck(format!("teardown: {e}"))),
            None => Ok(()),
        }
    }
}

/// The attachments (`<cid>-<ifname>`) whose jump rule in PREROUTING names a
/// host interface for which `gone` is true and which `keep` does not list.
///
/// Chain names do not say which network made them, so a rule is only stale
/// when its port is gone too: a live attachment of another network always
/// still has its veth.
pub fn stale_ids(
    listing: &Value,
    keep: &dyn Fn(&str) -> bool,
    gone: &dyn Fn(&str) -> bool,
) -> Vec<String> {
    let mut out = Vec::new();
    for item in listing
        .get("nftables")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(rule) = item.get("rule") else {
            continue;
        };
        if rule.get("chain").and_then(Value::as_str) != Some(BASE_CHAIN) {
            continue;
        }
        let Some(id) = rule
            .get("comment")
            .and_then(Value::as_str)
            .and_then(|c| c.strip_prefix("macspoofchk-"))
        else {
            continue;
        };
        let port = rule
            .get("expr")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|e| e.get("match"))
            .find(|m| m.pointer("/left/meta/key").and_then(Value::as_str) == Some("iifname"))
            .and_then(|m| m.get("right"))
            .and_then(Value::as_str);
        if let Some(port) = port
            && gone(port)
            && !keep(id)
            && !out.iter().any(|o| o == id)
        {
            out.push(id.to_string());
        }
    }
    out
}

/// GC: removes the rules of attachments not in `keep` whose host port no
/// longer exists.
pub fn gc(keep: &dyn Fn(&str) -> bool, gone: &dyn Fn(&str) -> bool) -> Result<(), BridgeError> {
    let listing = match nft(&["-j", "list", "table", "bridge", TABLE], None) {
        Ok(text) => text,
        Err(e) if e.contains("No such file or directory") => return Ok(()),
        Err(e) => return Err(BridgeError::SpoofCheck(e)),
    };
    let listing: Value = serde_json::from_str(&listing)
        .map_err(|e| BridgeError::SpoofCheck(format!("parse nft listing: {e}")))?;
    let script: String = stale_ids(&listing, keep, gone)
        .iter()
        .filter_map(|id| SpoofCheck { id: id.clone() }.teardown_script(&listing))
        .collect();
    if script.is_empty() {
        return Ok(());
    }
    nft(&["-f", "-"], Some(&script))
        .map(drop)
        .map_err(|e| BridgeError::SpoofCheck(format!("gc: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn setup_script_golden() {
        let sc = SpoofCheck::new("c1", "eth0");
        assert_eq!(
            sc.setup_script("veth1a2b3c4d", "c2:11:22:33:44:55"),
            "add table bridge nat\n\
             add chain bridge nat PREROUTING { type filter hook prerouting priority -300; policy accept; }\n\
             add chain bridge nat cni-br-iface-c1-eth0\n\
             add chain bridge nat cni-br-iface-c1-eth0-mac\n\
             flush chain bridge nat cni-br-iface-c1-eth0\n\
             flush chain bridge nat cni-br-iface-c1-eth0-mac\n\
             add rule bridge nat PREROUTING iifname \"veth1a2b3c4d\" jump cni-br-iface-c1-eth0 comment \"macspoofchk-c1-eth0\"\n\
             add rule bridge nat cni-br-iface-c1-eth0 jump cni-br-iface-c1-eth0-mac comment \"macspoofchk-c1-eth0\"\n\
             add rule bridge nat cni-br-iface-c1-eth0-mac ether saddr c2:11:22:33:44:55 return comment \"macspoofchk-c1-eth0\"\n\
             add rule bridge nat cni-br-iface-c1-eth0-mac drop comment \"macspoofchk-c1-eth0\"\n"
        );
    }

    #[test]
    fn teardown_picks_only_our_rules_and_chains() {
        let sc = SpoofCheck::new("c1", "eth0");
        let listing = json!({"nftables": [
            {"metainfo": {}},
            {"table": {"family": "bridge", "name": "nat", "handle": 1}},
            {"chain": {"family": "bridge", "table": "nat", "name": "PREROUTING", "handle": 1}},
            {"chain": {"family": "bridge", "table": "nat", "name": "cni-br-iface-c1-eth0-mac", "handle": 3}},
            {"chain": {"family": "bridge", "table": "nat", "name": "cni-br-iface-c1-eth0", "handle": 2}},
            {"chain": {"family": "bridge", "table": "nat", "name": "cni-br-iface-c2-eth0", "handle": 9}},
            {"rule": {"family": "bridge", "table": "nat", "chain": "PREROUTING", "handle": 5,
                      "comment": "macspoofchk-c1-eth0"}},
            {"rule": {"family": "bridge", "table": "nat", "chain": "PREROUTING", "handle": 6,
                      "comment": "macspoofchk-c2-eth0"}},
            {"rule": {"family": "bridge", "table": "nat", "chain": "cni-br-iface-c1-eth0", "handle": 7,
                      "comment": "macspoofchk-c1-eth0"}}
        ]});
        assert_eq!(
            sc.teardown_script(&listing).unwrap(),
            "delete rule bridge nat PREROUTING handle 5\n\
             delete chain bridge nat cni-br-iface-c1-eth0\n\
             delete chain bridge nat cni-br-iface-c1-eth0-mac\n"
        );
        assert_eq!(
            SpoofCheck::new("zz", "eth0").teardown_script(&listing),
            None
        );
    }
}
