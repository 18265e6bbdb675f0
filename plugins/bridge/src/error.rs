//! Everything the bridge plugin can fail with, and the one mapping onto the
//! CNI error object.
//!
//! Messages follow the reference plugin's wording where it has one, because
//! runtimes and operators grep for them.

use cni_net::nat::NatError;

#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// The config is not the JSON shape we expect.
    #[error("failed to load netconf: {0}")]
    Parse(String),

    /// A config value the reference rejects, with its message.
    #[error("{0}")]
    Config(String),

    #[error("failed to make veth pair: address {0}: invalid MAC address")]
    InvalidMac(String),

    /// Protocol problems (`CNI_ARGS`, env), already worded by cni-types.
    #[error("{}", .0.msg)]
    Cni(cni_types::Error),

    /// The delegated IPAM plugin's own error, passed through unchanged.
    #[error("{}", .0.msg)]
    Ipam(cni_types::Error),

    #[error("IPAM plugin returned missing IP config")]
    NoIpConfig,

    #[error("failed to open netns {path:?}: {source}")]
    Netns {
        path: String,
        #[source]
        source: cni_net::error::Error,
    },

    /// A kernel request failed; `context` says which step it belonged to.
    #[error("{context}: {source}")]
    Kernel {
        context: String,
        #[source]
        source: cni_net::error::Error,
    },

    #[error("failed to create bridge {bridge:?}: {bridge:?} already exists but is not a bridge")]
    NotABridge { bridge: String },

    #[error("container veth name ({ifname:?}) peer provided ({peer:?}) already exists")]
    VethExists { ifname: String, peer: String },

    #[error("failed to find a unique veth name")]
    NoUniqueVethName,

    /// ensureAddr refused to replace an address without forceAddress.
    #[error("{context}: {bridge:?} already has an IP address different from {addr}")]
    AddrConflict {
        context: &'static str,
        bridge: String,
        addr: String,
    },

    #[error("bridge port in error state: {0}")]
    PortState(String),

    #[error("{0}")]
    Nat(#[from] NatError),

    #[error("failed to setup spoof-check: {0}")]
    SpoofCheck(String),

    /// CHECK found the kernel differing from prevResult.
    #[error("{0}")]
    Check(String),

    /// Several independent teardown steps failed (DEL keeps going).
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Multiple(Vec<BridgeError>),
}

impl BridgeError {
    pub fn kernel(context: impl Into<String>, source: cni_net::error::Error) -> BridgeError {
        BridgeError::Kernel {
            context: context.into(),
            source,
        }
    }
}

/// Only entering a netns (`NetNs::run`) converts implicitly; every other
/// kernel call names its step with [`BridgeError::kernel`].
impl From<cni_net::error::Error> for BridgeError {
    fn from(source: cni_net::error::Error) -> BridgeError {
        BridgeError::kernel("failed to enter netns", source)
    }
}

impl From<BridgeError> for cni_types::Error {
    fn from(e: BridgeError) -> cni_types::Error {
        match e {
            // A delegate's error keeps its own code and details.
            BridgeError::Ipam(inner) | BridgeError::Cni(inner) => inner,
            // The reference reports plain errors as 999 (ErrInternal); keep
            // the same codes so nothing downstream sees a difference.
            other => cni_types::Error::internal(other.to_string()),
        }
    }
}
