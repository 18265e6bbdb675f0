//! NAT backends: ipMasq for `bridge`, host-port mapping for `portmap`.
//!
//! # Compatibility
//! Chains, tables, rule text and comments are the reference plugins' (see [`names`]), so
//! a node can switch between the Go and Rust plugins with pods running and either side
//! can DEL or GC what the other created.
//!
//! # One transaction per call
//! Rules are built as data and rendered by pure functions (golden-tested without root).
//! A call then:
//! 1. takes an exclusive flock on [`LOCK_PATH`] for the whole call;
//! 2. reads the current state once: `iptables-save -t nat` per IP family, or
//!    `nft -j list ...` for the tables involved;
//! 3. decides from that state what to change — nothing at all when the state is already
//!    right — and commits it once: one `iptables-restore -w --noflush` per family, or one
//!    `nft -f -` (a single kernel transaction) for all families.
//!
//! # Why both a read and a lock
//! In `--noflush` mode `iptables-restore` cannot express "create this chain unless it
//! exists": `-N` fails on an existing chain (failing the whole commit), and a
//! `:CHAIN - [0:0]` line creates *or flushes* it. Flushing is what we want for a
//! per-container chain we are about to refill, and would wipe every other container's
//! rules from a shared chain such as `CNI-HOSTPORT-DNAT`. So per-container chains are
//! declared with `:CHAIN` (create or flush, then refill), while shared chains are
//! created with `-N` and their fixed rules appended only when the saved ruleset shows
//! them missing; the flock makes that read-decide-commit atomic between concurrent
//! plugin processes (the xtables lock behind `-w` only serialises single commits).
//! Processes that do not take our lock (the Go plugins) can still race us; a commit
//! that fails is re-read and retried, `-N` fails rather than flushes a shared chain
//! someone just created, and deletions are by rule text, never by position, so a stale
//! read can fail a commit but never delete or flush someone else's rule.
//!
//! Teardown never needs the container's addresses: the per-container iptables chains
//! are named from (network, container ID) and every rule that jumps to them is found in
//! the saved table; nftables rules are found by their comments.

pub mod conntrack;
mod error;
mod iptables;
pub mod masq;
mod masq_direct;
mod masq_nftnl;
pub mod names;
mod nftables;
mod nftnl;
pub mod portmap;
mod portmap_direct;
mod portmap_nftnl;
pub mod sets;
mod tools;

#[cfg(test)]
mod itests;
#[cfg(test)]
mod testns;

use std::net::IpAddr;

pub use error::NatError;
pub use masq::{Attachment, gc_masq, setup_masq, teardown_masq};
pub use portmap::{
    PortMapConfig, PortMapping, Proto, RuleRef, check_ports, forward_ports, forward_ports_tracked,
    unforward_ports, unforward_ports_installed, unforward_ports_tracked,
};
pub use tools::LOCK_PATH;

/// Which firewall API programs the rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Backend {
    Iptables,
    Nftables,
    /// Ours only, opt-in: fixed nftables rules over per-pod set elements ([`sets`]).
    NftablesSets,
}

impl Backend {
    /// The config spelling, `"iptables"` or `"nftables"`.
    pub fn parse(value: &str) -> Option<Backend> {
        match value {
            "iptables" => Some(Backend::Iptables),
            "nftables" => Some(Backend::Nftables),
            "nftables-sets" => Some(Backend::NftablesSets),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Iptables => "iptables",
            Backend::Nftables => "nftables",
            Backend::NftablesSets => "nftables-sets",
        }
    }

    /// Whether this backend's tools are installed. Cheap: a PATH lookup, cached per
    /// process, never a fork.
    pub fn available(self) -> bool {
        match self {
            Backend::Iptables => iptables::available(IpFamily::V4),
            // The sets layout needs `nft` once per node, to create its tables.
            Backend::Nftables | Backend::NftablesSets => tools::Tool::Nft.available(),
        }
    }

    /// The reference's default: iptables, unless iptables is unusable and nftables is.
    pub fn detect() -> Backend {
        if !Backend::Iptables.available() && Backend::Nftables.available() {
            Backend::Nftables
        } else {
            Backend::Iptables
        }
    }
}

/// Resolves bridge's `ipMasqBackend`: unset → [`Backend::detect`], anything but
/// `iptables`/`nftables` → `unknown ipmasq backend "x"`.
pub fn select_masq_backend(configured: Option<&str>) -> Result<Backend, NatError> {
    match configured {
        None => Ok(Backend::detect()),
        Some(value) => {
            Backend::parse(value).ok_or_else(|| NatError::UnknownBackend(value.to_string()))
        }
    }
}

impl std::fmt::Display for IpFamily {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            IpFamily::V4 => "IPv4",
            IpFamily::V6 => "IPv6",
        })
    }
}

/// IPv4 or IPv6: iptables programs them through separate tools.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IpFamily {
    V4,
    V6,
}

impl IpFamily {
    pub fn of(ip: IpAddr) -> IpFamily {
        match ip {
            IpAddr::V4(_) => IpFamily::V4,
            IpAddr::V6(_) => IpFamily::V6,
        }
    }

    /// Whether the kernel has this family at all (IPv6 can be disabled at boot, and then
    /// ip6tables fails on every call).
    pub(crate) fn enabled(self) -> bool {
        match self {
            IpFamily::V4 => true,
            IpFamily::V6 => std::path::Path::new("/proc/net/if_inet6").exists(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_config_values() {
        assert_eq!(
            select_masq_backend(Some("iptables")).unwrap(),
            Backend::Iptables
        );
        assert_eq!(
            select_masq_backend(Some("nftables")).unwrap(),
            Backend::Nftables
        );
        assert_eq!(
            select_masq_backend(Some("ebtables"))
                .unwrap_err()
                .to_string(),
            r#"unknown ipmasq backend "ebtables""#
        );
        assert_eq!(select_masq_backend(None).unwrap(), Backend::detect());
    }
}
