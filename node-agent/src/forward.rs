//! FORWARD accepts for pod traffic where the filter table's FORWARD policy is DROP
//! (Docker sets it so): without them pods on different nodes cannot talk (flannel#1450,
//! kube-router#984). The rules live in a chain of the agent's own, `CNI-RS-FORWARD`,
//! rewritten whole in one `iptables-restore --noflush` (a chain declared in a restore is
//! flushed and refilled in the same commit), with one jump from FORWARD. Nothing is
//! done where the policy is ACCEPT, and no other chain's rules are touched.

use std::process::Stdio;

use ipnetwork::IpNetwork;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::cidr::aggregate;

pub const CHAIN: &str = "CNI-RS-FORWARD";
const COMMENT: &str = "cni-rs-node: accept cluster pod traffic";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    fn save(self) -> &'static str {
        match self {
            Family::V4 => "iptables-save",
            Family::V6 => "ip6tables-save",
        }
    }
    fn restore(self) -> &'static str {
        match self {
            Family::V4 => "iptables-restore",
            Family::V6 => "ip6tables-restore",
        }
    }
    pub fn of(n: &IpNetwork) -> Family {
        if n.is_ipv6() { Family::V6 } else { Family::V4 }
    }
}

/// What `iptables-save -t filter` says about FORWARD.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ForwardState {
    pub policy_drop: bool,
    pub chain_exists: bool,
    pub jump_exists: bool,
}

pub fn parse_save(text: &str) -> ForwardState {
    let mut s = ForwardState::default();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix(":FORWARD ") {
            s.policy_drop = rest.starts_with("DROP") || rest.starts_with("REJECT");
        } else if line
            .strip_prefix(':')
            .is_some_and(|r| r.split(' ').next() == Some(CHAIN))
        {
            s.chain_exists = true;
        } else if line.starts_with("-A FORWARD ") && line.ends_with(&format!("-j {CHAIN}")) {
            s.jump_exists = true;
        }
    }
    s
}

/// The restore input that (re)fills our chain with accepts for `cidrs` and adds the
/// jump if it is missing.
pub fn render(cidrs: &[IpNetwork], add_jump: bool) -> String {
    let mut t = format!("*filter\n:{CHAIN} - [0:0]\n");
    for c in aggregate(cidrs) {
        t.push_str(&format!(
            "-A {CHAIN} -s {c} -j ACCEPT\n-A {CHAIN} -d {c} -j ACCEPT\n"
        ));
    }
    if add_jump {
        t.push_str(&format!(
            "-I FORWARD 1 -m comment --comment \"{COMMENT}\" -j {CHAIN}\n"
        ));
    }
    t.push_str("COMMIT\n");
    t
}

#[derive(Debug, thiserror::Error)]
pub enum IptError {
    #[error("{0} not found")]
    Missing(&'static str),
    #[error("{0}: {1}")]
    Failed(&'static str, String),
}

async fn run(prog: &'static str, args: &[&str], stdin: Option<&str>) -> Result<String, IptError> {
    let mut cmd = Command::new(prog);
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => IptError::Missing(prog),
        _ => IptError::Failed(prog, e.to_string()),
    })?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .await
            .map_err(|e| IptError::Failed(prog, e.to_string()))?;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| IptError::Failed(prog, e.to_string()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr)
            .trim()
            .replace('\n', " | ");
        return Err(IptError::Failed(prog, err));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Makes sure pod traffic of `cidrs` (one family) passes a FORWARD policy of DROP.
/// Returns whether rules were written. A machine without iptables has no such policy.
pub async fn ensure(family: Family, cidrs: &[IpNetwork]) -> Result<bool, IptError> {
    if cidrs.is_empty() {
        return Ok(false);
    }
    let save = match run(family.save(), &["-t", "filter"], None).await {
        Ok(text) => text,
        Err(IptError::Missing(_)) => return Ok(false),
        Err(e) => return Err(e),
    };
    let state = parse_save(&save);
    if !state.policy_drop {
        return Ok(false);
    }
    run(
        family.restore(),
        &["-w", "--noflush"],
        Some(&render(cidrs, !state.jump_exists)),
    )
    .await?;
    Ok(true)
}

/// Removes the jump and our chain (cleanup mode).
pub async fn remove(family: Family) -> Result<(), IptError> {
    let save = match run(family.save(), &["-t", "filter"], None).await {
        Ok(text) => text,
        Err(IptError::Missing(_)) => return Ok(()),
        Err(e) => return Err(e),
    };
    let state = parse_save(&save);
    let mut t = String::from("*filter\n");
    for line in save.lines() {
        if line.starts_with("-A FORWARD ") && line.ends_with(&format!("-j {CHAIN}")) {
            t.push_str(&line.replacen("-A FORWARD", "-D FORWARD", 1));
            t.push('\n');
        }
    }
    if state.chain_exists {
        t.push_str(&format!("-F {CHAIN}\n-X {CHAIN}\n"));
    }
    if t == "*filter\n" {
        return Ok(());
    }
    t.push_str("COMMIT\n");
    run(family.restore(), &["-w", "--noflush"], Some(&t))
        .await
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOCKER: &str = "# Generated by iptables-save\n*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n\
        :OUTPUT ACCEPT [0:0]\n:DOCKER-USER - [0:0]\n-A FORWARD -j DOCKER-USER\nCOMMIT\n";

    #[test]
    fn reads_the_policy_and_our_jump() {
        assert_eq!(
            parse_save(DOCKER),
            ForwardState {
                policy_drop: true,
                chain_exists: false,
                jump_exists: false
            }
        );
        let ours = format!(
            "*filter\n:FORWARD ACCEPT [0:0]\n:{CHAIN} - [0:0]\n-A FORWARD -m comment --comment \"{COMMENT}\" -j {CHAIN}\n"
        );
        assert_eq!(
            parse_save(&ours),
            ForwardState {
                policy_drop: false,
                chain_exists: true,
                jump_exists: true
            }
        );
    }

    #[test]
    fn one_restore_refills_the_chain() {
        let cidrs: Vec<IpNetwork> = vec![
            "10.244.0.0/24".parse().unwrap(),
            "10.244.1.0/24".parse().unwrap(),
        ];
        assert_eq!(
            render(&cidrs, true),
            "*filter\n:CNI-RS-FORWARD - [0:0]\n-A CNI-RS-FORWARD -s 10.244.0.0/23 -j ACCEPT\n\
             -A CNI-RS-FORWARD -d 10.244.0.0/23 -j ACCEPT\n-I FORWARD 1 -m comment --comment \
             \"cni-rs-node: accept cluster pod traffic\" -j CNI-RS-FORWARD\nCOMMIT\n"
        );
        assert!(!render(&cidrs, false).contains("-I FORWARD"));
    }
}
