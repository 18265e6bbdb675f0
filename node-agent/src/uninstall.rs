//! `cni-rs-node uninstall`: takes a node back to where it was before the cluster install,
//! as `scripts/install.sh --uninstall` leaves a node it set up: what the agent made
//! (`cleanup`), the agent's conflist, then the plugins, with the files they replaced put
//! back. Run once the agent is gone (`kubectl delete -f deploy/cni-rs.yaml`), else it
//! would put its routes and conflist back.

use std::io;

use crate::config::{Flags, UninstallArgs};
use crate::{cleanup, info, install, warn};

pub async fn run(flags: Flags, args: UninstallArgs) -> Result<(), String> {
    flags.validate()?;
    let mut failed = Vec::new();
    // The conflist first: from here on the runtime starts no pod on our network.
    let conflist = flags.conflist_path();
    match std::fs::remove_file(&conflist) {
        Ok(()) => info!("uninstall: removed {}", conflist.display()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            info!("uninstall: no {}", conflist.display())
        }
        Err(e) => failed.push(format!("remove {}: {e}", conflist.display())),
    }
    if let Err(e) = cleanup::run(flags).await {
        failed.push(e);
    }
    if let Err(e) = install::run_uninstall(&args) {
        failed.push(e);
    }
    if failed.is_empty() {
        info!("uninstall: done");
        return Ok(());
    }
    for f in &failed {
        warn!("{f}");
    }
    Err(format!("uninstall: {} step(s) failed", failed.len()))
}
