//! The plugin's failures and their one mapping to CNI error codes.

use cni_types::{Error, code};

#[derive(Debug, thiserror::Error)]
pub enum PortmapError {
    /// A key of the plugin config or a port mapping is wrong. `prefixed` carries the
    /// reference's `failed to parse config: ` lead-in for the verbs that print it.
    #[error("{}{msg}", if *.prefixed { "failed to parse config: " } else { "" })]
    Config { msg: String, prefixed: bool },

    /// `CNI_ARGS` with keys portmap does not know (it knows none) and no
    /// `IgnoreUnknown`: worded by cni-types, as for bridge and host-local.
    #[error("{}", .0.msg)]
    Args(cni_types::Error),

    /// ADD without prevResult: portmap only makes sense after an interface plugin.
    #[error("must be called as chained plugin")]
    NotChained,

    /// CHECK without prevResult.
    #[error("Required prevResult missing")]
    NoPrevResult,

    /// prevResult is present but not a result of its declared version.
    #[error("could not parse prevResult: {0}")]
    PrevResult(String),

    /// The firewall refused, or a rule CHECK expects is missing.
    #[error("{context}: {source}")]
    Nat {
        context: &'static str,
        #[source]
        source: cni_net::nat::NatError,
    },

    #[error("unable to enable route_localnet: {0}")]
    Localnet(#[source] cni_net::error::Error),

    /// The GC records of this network cannot be read.
    #[error("read portmap records: {0}")]
    Registry(#[source] std::io::Error),

    /// GC could not remove the rules of some containers (all of them are listed).
    #[error("garbage collection of port mappings failed: {0}")]
    Gc(String),
}

impl PortmapError {
    pub fn config(msg: impl Into<String>) -> Self {
        PortmapError::Config {
            msg: msg.into(),
            prefixed: true,
        }
    }

    pub fn nat(context: &'static str) -> impl FnOnce(cni_net::nat::NatError) -> PortmapError {
        move |source| PortmapError::Nat { context, source }
    }

    /// CHECK reports config errors without the `failed to parse config: ` lead-in.
    pub fn unprefixed(self) -> Self {
        match self {
            PortmapError::Config { msg, .. } => PortmapError::Config {
                msg,
                prefixed: false,
            },
            other => other,
        }
    }
}

impl From<PortmapError> for Error {
    fn from(e: PortmapError) -> Error {
        if let PortmapError::Args(inner) = e {
            return inner;
        }
        let code = match &e {
            // The reference reports every one of these as 999; a runtime (and a human)
            // learns more from "invalid network config".
            PortmapError::Config { .. } | PortmapError::NotChained | PortmapError::NoPrevResult => {
                code::INVALID_CONFIG
            }
            PortmapError::PrevResult(_) => code::DECODE,
            PortmapError::Args(inner) => inner.code,
            PortmapError::Nat { .. }
            | PortmapError::Localnet(_)
            | PortmapError::Registry(_)
            | PortmapError::Gc(_) => code::INTERNAL,
        };
        Error::new(code, e.to_string(), "")
    }
}
