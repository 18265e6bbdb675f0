//! GC: forwarded to IPAM (which releases reservations of attachments not in
//! `cni.dev/valid-attachments`), then this network's ipMasq rules of those
//! attachments are swept. The reference does neither.

use cni_types::{Request, invoke};

use crate::config::BridgeConf;
use crate::error::BridgeError;
use crate::masq;

pub fn gc(req: &Request) -> Result<(), BridgeError> {
    let conf = BridgeConf::parse(&req.stdin, &cni_types::CniArgs::default())?;
    let mut errors = Vec::new();
    if let Some(ipam) = &conf.ipam_type
        && let Err(e) = invoke::delegate_gc(ipam, req)
    {
        errors.push(BridgeError::Ipam(e));
    }
    if conf.is_layer3() && conf.ip_masq {
        // A missing list means nothing is valid: libcni has just DEL'ed
        // every attachment it knew of (this is what `cnitool gc` does).
        let valid = req.conf.valid_attachments.as_deref().unwrap_or(&[]);
        if let Err(e) = masq::gc(&conf, valid) {
            errors.push(e);
        }
    }
    match errors.len() {
        0 => Ok(()),
        1 => Err(errors.remove(0)),
        _ => Err(BridgeError::Multiple(errors)),
    }
}
