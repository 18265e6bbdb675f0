//! Which firewall layout programs the rules, and how the configs name them.

use super::error::NatError;
use super::iptables;
use crate::Family;
use crate::tools;

/// Which firewall API programs the rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Backend {
    Iptables,
    Nftables,
    /// Ours only, opt-in: fixed nftables rules over per-pod set elements ([`sets`](super::sets)).
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
            Backend::Iptables => iptables::available(Family::V4),
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
