//! `cni-rs-node cleanup`: removes exactly what the agent made — its routes (main table,
//! its protocol number), its masquerade table and its FORWARD chain and jump — and
//! nothing else. The conflist stays: without it the node would go NotReady.

use crate::config::Flags;
use crate::netlink::{Kernel, Rtnl};
use crate::routes::RouteOp;
use crate::{forward, info, masq, warn};

pub async fn run(flags: Flags) -> Result<(), String> {
    let mut failed = Vec::new();
    let mut rtnl = Rtnl::open().map_err(|e| format!("rtnetlink: {e}"))?;
    let ours: Vec<RouteOp> = rtnl
        .dump_routes()
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|r| r.protocol == flags.route_protocol)
        .map(RouteOp::Delete)
        .collect();
    let results = rtnl.apply(flags.route_protocol, &ours).await;
    let mut deleted = 0;
    for (op, res) in ours.iter().zip(results) {
        match res {
            Ok(()) => deleted += 1,
            // Gone already (a link went down meanwhile): what cleanup wants.
            Err(e) if e.errno == Some(libc::ESRCH) => {}
            Err(e) => failed.push(format!("{op}: {e}")),
        }
    }
    info!(
        "cleanup: deleted {deleted} routes with protocol {}",
        flags.route_protocol
    );
    match masq::remove().await {
        Ok(()) => info!("cleanup: table inet {} removed", masq::TABLE),
        Err(e) => failed.push(e.to_string()),
    }
    for fam in [forward::Family::V4, forward::Family::V6] {
        if let Err(e) = forward::remove(fam).await {
            failed.push(e.to_string());
        }
    }
    info!(
        "cleanup: the conflist in {} is left in place",
        flags.cni_conf_dir.display()
    );
    if failed.is_empty() {
        Ok(())
    } else {
        for f in &failed {
            warn!("cleanup: {f}");
        }
        Err(format!("cleanup: {} step(s) failed", failed.len()))
    }
}
