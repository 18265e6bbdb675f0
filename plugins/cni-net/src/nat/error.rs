use std::io;

/// Everything that can go wrong programming NAT rules.
#[derive(Debug, thiserror::Error)]
pub enum NatError {
    /// `ipMasqBackend` named something other than `iptables`/`nftables`.
    #[error("unknown ipmasq backend {0:?}")]
    UnknownBackend(String),
    /// The firewall tool for the chosen backend is not installed.
    #[error("{0} not found in PATH")]
    ToolMissing(&'static str),
    #[error("run {tool}: {source}")]
    Spawn {
        tool: String,
        #[source]
        source: io::Error,
    },
    /// The tool ran and failed; `detail` is its stderr plus, for a restore, the line it
    /// refused.
    #[error("{tool} failed ({status}): {detail}")]
    ToolFailed {
        tool: String,
        status: String,
        detail: String,
    },
    #[error("parse {tool} output: {detail}")]
    Parse { tool: String, detail: String },
    #[error("lock {path}: {source}")]
    Lock {
        path: String,
        #[source]
        source: io::Error,
    },
    /// CHECK found a rule missing.
    #[error("{0}")]
    Check(String),
    /// Conntrack netlink failure, with what was being done.
    #[error("{context}: {source}")]
    Conntrack {
        context: String,
        #[source]
        source: io::Error,
    },
    /// Teardown keeps going after a failure and reports all of them.
    #[error("{}", join(.0))]
    Multiple(Vec<NatError>),
}

fn join(errors: &[NatError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

impl NatError {
    /// Folds collected errors into one result: none → Ok, one → itself.
    pub(crate) fn collect(mut errors: Vec<NatError>) -> Result<(), NatError> {
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            _ => Err(NatError::Multiple(errors)),
        }
    }
}
