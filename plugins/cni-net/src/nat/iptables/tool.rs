//! The iptables tools: read the nat table once with `iptables-save`, decide, and
//! commit once with `iptables-restore -w --noflush`.

use super::restore::Script;
use super::save::SavedTable;
use crate::Family;
use crate::nat::error::NatError;
use crate::tools::{self, Tool};

/// A restore can lose a race with a process that does not take our lock (the Go
/// plugins, kube-proxy): the rule we meant to delete is gone, or a chain we saw missing
/// now exists. Re-reading and re-deciding converges; each of the few shared objects can
/// cost one round, hence a handful of attempts with a short, growing pause.
const ATTEMPTS: u64 = 8;

fn save_tool(family: Family) -> Tool {
    match family {
        Family::V4 => Tool::IptablesSave,
        Family::V6 => Tool::Ip6tablesSave,
    }
}

fn restore_tool(family: Family) -> Tool {
    match family {
        Family::V4 => Tool::IptablesRestore,
        Family::V6 => Tool::Ip6tablesRestore,
    }
}

/// Both save and restore for this family are installed.
pub(crate) fn available(family: Family) -> bool {
    save_tool(family).available() && restore_tool(family).available()
}

pub(crate) fn save_nat(family: Family) -> Result<SavedTable, NatError> {
    let text = tools::run(save_tool(family), &["-t", "nat"], None)?;
    SavedTable::parse(&text, "nat")
}

pub(crate) fn restore(family: Family, script: &Script) -> Result<(), NatError> {
    tools::run(
        restore_tool(family),
        &["-w", "--noflush"],
        Some(&script.render()),
    )
    .map(drop)
}

/// One read-modify-commit: `decide` sees the current nat table and returns the script
/// to commit, or `None` when the table is already as wanted. The caller holds the lock.
pub(crate) fn transact<F>(family: Family, mut decide: F) -> Result<(), NatError>
where
    F: FnMut(&SavedTable) -> Option<Script>,
{
    let mut last_err = None;
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            std::thread::sleep(std::time::Duration::from_millis(10 * attempt));
        }
        let saved = save_nat(family)?;
        let Some(script) = decide(&saved) else {
            return Ok(());
        };
        match restore(family, &script) {
            Ok(()) => return Ok(()),
            Err(err @ NatError::ToolFailed { .. }) => last_err = Some(err),
            Err(err) => return Err(err),
        }
    }
    Err(last_err.unwrap_or(NatError::ToolMissing("iptables-restore")))
}
