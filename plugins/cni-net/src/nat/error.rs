use std::io;

/// Everything that can go wrong programming NAT rules.
#[derive(Debug, thiserror::Error)]
pub enum NatError {
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
    /// A nf_tables netlink request failed, with what was being done.
    #[error("{context}: {source}")]
    Kernel {
        context: String,
        #[source]
        source: io::Error,
    },
    /// What this container needs is held by another one (nftables-sets layout).
    #[error("{0}")]
    Conflict(String),
    /// What we were doing when `source` happened.
    #[error("{context}: {source}")]
    Context {
        context: String,
        #[source]
        source: Box<NatError>,
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
    /// Wraps the error with what was being done. CHECK failures are left alone: their
    /// text is the reference's.
    pub(crate) fn context(self, context: impl FnOnce() -> String) -> NatError {
        match self {
            NatError::Check(_) => self,
            source => NatError::Context {
                context: context(),
                source: Box::new(source),
            },
        }
    }

    /// Folds collected errors into one result: none → Ok, one → itself.
    pub(crate) fn collect(mut errors: Vec<NatError>) -> Result<(), NatError> {
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            _ => Err(NatError::Multiple(errors)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_prefixes_all_but_check_errors() {
        let e = NatError::ToolMissing("nft").context(|| "set up ipMasq (nftables) for c1".into());
        assert_eq!(
            e.to_string(),
            "set up ipMasq (nftables) for c1: nft not found in PATH"
        );
        let check = NatError::Check("missing hostport rules in \"hostports\" chain".into());
        assert_eq!(
            check.context(|| "x".into()).to_string(),
            "missing hostport rules in \"hostports\" chain"
        );
        let many = NatError::collect(vec![NatError::ToolMissing("a"), NatError::ToolMissing("b")]);
        assert_eq!(
            many.unwrap_err().to_string(),
            "a not found in PATH\nb not found in PATH"
        );
        assert!(NatError::collect(Vec::new()).is_ok());
    }
}
