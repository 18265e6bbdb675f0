//! Which firewall layout programs the rules: how the configs name them, which one a
//! node defaults to, and the driver of each. The only file that names all drivers.

use super::driver::NatDriver;
use super::iptables::{self, Iptables};
use super::nftables::Nftables;
use super::sets::NftablesSets;
use crate::Family;
use crate::tools::Tool;

/// The drivers are stateless: one `static` each, so choosing one costs no allocation.
static IPTABLES: Iptables = Iptables;
static NFTABLES: Nftables = Nftables;
static NFTABLES_SETS: NftablesSets = NftablesSets;

/// Which firewall API programs the rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Backend {
    Iptables,
    Nftables,
    /// Ours only, opt-in: fixed nftables rules over per-pod set elements
    /// ([`sets`](super::sets)).
    NftablesSets,
}

impl Backend {
    /// Every layout, in the order teardown and GC visit them.
    pub const ALL: [Backend; 3] = [Backend::Iptables, Backend::Nftables, Backend::NftablesSets];

    /// The config spelling: `"iptables"`, `"nftables"` or `"nftables-sets"`.
    pub fn parse(value: &str) -> Option<Backend> {
        Backend::ALL.into_iter().find(|b| b.as_str() == value)
    }

    pub fn as_str(self) -> &'static str {
        self.driver().name()
    }

    /// Whether this backend's tools are installed. Cheap: a PATH lookup, cached per
    /// process, never a fork.
    pub fn available(self) -> bool {
        match self {
            Backend::Iptables => iptables::available(Family::V4),
            // The sets layout needs `nft` once per node, to create its tables.
            Backend::Nftables | Backend::NftablesSets => Tool::Nft.available(),
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

    /// The driver that programs this layout.
    pub(crate) fn driver(self) -> &'static dyn NatDriver {
        match self {
            Backend::Iptables => &IPTABLES,
            Backend::Nftables => &NFTABLES,
            Backend::NftablesSets => &NFTABLES_SETS,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_config_values() {
        assert_eq!(Backend::parse("iptables"), Some(Backend::Iptables));
        assert_eq!(Backend::parse("nftables"), Some(Backend::Nftables));
        assert_eq!(Backend::parse("nftables-sets"), Some(Backend::NftablesSets));
        assert_eq!(Backend::parse("ebtables"), None);
        for backend in Backend::ALL {
            assert_eq!(Backend::parse(backend.as_str()), Some(backend));
        }
    }
}
