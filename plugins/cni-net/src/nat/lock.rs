//! The lock that makes a read-modify-commit of the ruleset atomic between our own
//! processes. The verbs take it; drivers never do.

use std::fs::{self, File, OpenOptions};
use std::path::Path;

use super::error::NatError;

/// Where every cni-rs plugin process serialises its firewall transactions.
pub const LOCK_PATH: &str = "/run/cni-rs/nat.lock";

/// Exclusive flock held for the whole read-modify-commit of one call.
///
/// `-w` (the xtables lock) only serialises single commits; two plugins that both read
/// the ruleset, decide "the shared chain is missing", and commit would still duplicate
/// it. This lock closes that window between cni-rs processes.
pub(crate) struct NatLock {
    _file: File,
}

pub(crate) fn lock_at(path: &Path) -> Result<NatLock, NatError> {
    let err = |source| NatError::Lock {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(err)?;
    }
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(err)?;
    file.lock().map_err(err)?;
    Ok(NatLock { _file: file })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_is_exclusive_between_open_files() {
        let path = std::env::temp_dir().join(format!("cni-nat-lock-{}", std::process::id()));
        let first = lock_at(&path).unwrap();
        let probe = File::open(&path).unwrap();
        assert!(matches!(
            probe.try_lock(),
            Err(std::fs::TryLockError::WouldBlock)
        ));
        drop(first);
        // Other tests of this process spawn tools: a child forked while `first` was open
        // shares its open file (and so the lock) until it execs, which closes it. Give
        // such a child a moment.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while probe.try_lock().is_err() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(probe.try_lock().is_ok());
        let _ = fs::remove_file(&path);
    }
}
