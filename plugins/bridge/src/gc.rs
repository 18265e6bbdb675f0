//! GC: forwarded to IPAM (which releases reservations of attachments not in
//! `cni.dev/valid-attachments`), then this network's ipMasq rules of those
//! attachments are swept, and spoof-check rules whose port is gone. The
//! reference does none of it.

use std::collections::HashSet;

use cni_net::netlink::Netlink;
use cni_types::{Request, invoke};

use crate::config::BridgeConf;
use crate::error::BridgeError;
use crate::masq;
use crate::spoofcheck;

pub fn gc(req: &Request) -> Result<(), BridgeError> {
    let conf = BridgeConf::parse(&req.stdin, &cni_types::CniArgs::default())?;
    let mut errors = Vec::new();
    if let Some(ipam) = &conf.ipam_type
        && let Err(e) = invoke::delegate_gc(ipam, req)
    {
        errors.push(BridgeError::Ipam(e));
    }
    // A missing list means nothing is valid: libcni has just DEL'ed
    // every attachment it knew of (this is what `cnitool gc` does).
    let valid = req.conf.gc_attachments().unwrap_or(&[]);
    if conf.macspoofchk
        && let Err(e) = gc_spoofcheck(valid)
    {
        errors.push(e);
    }
    if conf.is_layer3()
        && conf.ip_masq
        && let Err(e) = masq::gc(&conf, valid)
    {
        errors.push(e);
    }
    match errors.len() {
        0 => Ok(()),
        1 => Err(errors.remove(0)),
        _ => Err(BridgeError::Multiple(errors)),
    }
}

/// Spoof-check rules of attachments that are not valid and whose host port
/// is gone.
fn gc_spoofcheck(valid: &[cni_types::Attachment]) -> Result<(), BridgeError> {
    let mut nl =
        Netlink::open().map_err(|e| BridgeError::kernel("failed to open netlink socket", e))?;
    let ports: HashSet<String> = nl
        .links()
        .map_err(|e| BridgeError::kernel("list links", e))?
        .into_iter()
        .map(|l| l.name)
        .collect();
    let keep: HashSet<String> = valid
        .iter()
        .map(|a| format!("{}-{}", a.container_id, a.ifname))
        .collect();
    spoofcheck::gc(&|id| keep.contains(id), &|port| !ports.contains(port))
}
