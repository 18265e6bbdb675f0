//! Masquerade of what leaves the cluster, nothing else: one nftables table of the agent's
//! own (`inet cni_rs_agent`), replaced whole in one `nft -f -` transaction when its
//! content changes. Pod traffic to any cluster pod CIDR (or a `--no-masquerade-cidr`, or
//! link-local and multicast) keeps the pod's address, as the Kubernetes network model
//! wants; everything else from this node's pods leaves with the node's address.
//!
//! The sets hold aggregated CIDRs, so a 5 000-node cluster is a few elements, and an
//! update is one process whatever the cluster's size. No other table is ever touched.

use std::fmt::Write as _;
use std::process::Stdio;

use ipnetwork::IpNetwork;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::cidr::aggregate;

pub const TABLE: &str = "cni_rs_agent";

/// Never masqueraded, whatever the flags: link-local and multicast.
const ALWAYS_V4: [&str; 2] = ["169.254.0.0/16", "224.0.0.0/4"];
const ALWAYS_V6: [&str; 2] = ["fe80::/10", "ff00::/8"];

/// What the rules are made of.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MasqSpec {
    /// This node's pod CIDRs: the sources masqueraded.
    pub pods: Vec<IpNetwork>,
    /// Cluster pod CIDRs plus the extra no-masquerade CIDRs.
    pub no_masq: Vec<IpNetwork>,
}

fn set(out: &mut String, name: &str, v6: bool, nets: &[IpNetwork], always: &[&str]) {
    let mut all: Vec<IpNetwork> = nets.iter().filter(|n| n.is_ipv6() == v6).copied().collect();
    all.extend(always.iter().filter_map(|s| s.parse::<IpNetwork>().ok()));
    let elems: Vec<String> = aggregate(&all).iter().map(ToString::to_string).collect();
    let ty = if v6 { "ipv6_addr" } else { "ipv4_addr" };
    let _ = write!(out, "\tset {name} {{\n\t\ttype {ty}\n\t\tflags interval\n");
    if !elems.is_empty() {
        let _ = writeln!(out, "\t\telements = {{ {} }}", elems.join(", "));
    }
    out.push_str("\t}\n");
}

/// The whole transaction: create-if-missing, delete, create with the new content. The
/// kernel applies it atomically: there is no moment without the rules.
pub fn render(spec: &MasqSpec) -> String {
    let mut t = format!("table inet {TABLE}\ndelete table inet {TABLE}\ntable inet {TABLE} {{\n");
    set(&mut t, "pods4", false, &spec.pods, &[]);
    set(&mut t, "pods6", true, &spec.pods, &[]);
    set(&mut t, "nomasq4", false, &spec.no_masq, &ALWAYS_V4);
    set(&mut t, "nomasq6", true, &spec.no_masq, &ALWAYS_V6);
    t.push_str(
        "\tchain postrouting {\n\
         \t\ttype nat hook postrouting priority 100; policy accept;\n\
         \t\tip saddr @pods4 ip daddr != @nomasq4 masquerade fully-random\n\
         \t\tip6 saddr @pods6 ip6 daddr != @nomasq6 masquerade fully-random\n\
         \t}\n}\n",
    );
    t
}

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("nft not found (install nftables): {0}")]
    Missing(std::io::Error),
    #[error("nft: {0}")]
    Io(std::io::Error),
    #[error("nft -f - failed: {0}")]
    Failed(String),
}

/// Runs one `nft -f -` with `script` on stdin.
pub async fn nft(script: &str) -> Result<(), NftError> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                NftError::Missing(e)
            } else {
                NftError::Io(e)
            }
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .await
            .map_err(NftError::Io)?;
    }
    let out = child.wait_with_output().await.map_err(NftError::Io)?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(NftError::Failed(err.trim().replace('\n', " | ")));
    }
    Ok(())
}

pub async fn apply(spec: &MasqSpec) -> Result<(), NftError> {
    nft(&render(spec)).await
}

/// Removes the agent's table if there is one (cleanup mode).
pub async fn remove() -> Result<(), NftError> {
    nft(&format!("table inet {TABLE}\ndelete table inet {TABLE}\n")).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(s: &[&str]) -> Vec<IpNetwork> {
        s.iter().map(|c| c.parse().unwrap()).collect()
    }

    #[test]
    fn one_table_replaced_whole() {
        let spec = MasqSpec {
            pods: nets(&["10.244.1.0/24", "fd00:10:244:1::/64"]),
            no_masq: nets(&[
                "10.244.0.0/24",
                "10.244.1.0/24",
                "fd00:10:244::/56",
                "192.168.0.0/16",
            ]),
        };
        let text = render(&spec);
        assert!(text.starts_with(
            "table inet cni_rs_agent\ndelete table inet cni_rs_agent\ntable inet cni_rs_agent {\n"
        ));
        assert!(text.contains("set pods4 {\n\t\ttype ipv4_addr\n\t\tflags interval\n\t\telements = { 10.244.1.0/24 }\n"));
        assert!(
            text.contains(
                "elements = { 10.244.0.0/23, 169.254.0.0/16, 192.168.0.0/16, 224.0.0.0/4 }"
            ),
            "{text}"
        );
        assert!(
            text.contains("elements = { fd00:10:244::/56, fe80::/10, ff00::/8 }"),
            "{text}"
        );
        assert!(text.contains("ip saddr @pods4 ip daddr != @nomasq4 masquerade fully-random"));
        assert!(text.contains("type nat hook postrouting priority 100; policy accept;"));
    }

    #[test]
    fn empty_sets_have_no_elements_line() {
        let text = render(&MasqSpec::default());
        assert!(
            text.contains("set pods4 {\n\t\ttype ipv4_addr\n\t\tflags interval\n\t}\n"),
            "{text}"
        );
    }
}
