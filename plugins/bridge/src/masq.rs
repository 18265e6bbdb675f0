//! ipMasq glue: which backend, which addresses, and the attachment keys.

use ipnetwork::IpNetwork;

use cni_net::nat::{self, Attachment, Backend};

use crate::config::BridgeConf;
use crate::error::BridgeError;

fn backend(conf: &BridgeConf) -> Result<Backend, BridgeError> {
    Ok(conf.masq_backend_checked()?.unwrap_or_else(Backend::detect))
}

/// Masquerades the result's addresses when they leave their subnet.
pub fn setup(
    conf: &BridgeConf,
    ifname: &str,
    container_id: &str,
    ips: &[IpNetwork],
) -> Result<(), BridgeError> {
    nat::setup_masq(backend(conf)?, &conf.network, ifname, container_id, ips)?;
    Ok(())
}

/// Removes the container's masquerading from every layout; needs no
/// addresses, so it works with the netns gone.
///
/// `addresses`: the attachment's, from prevResult when the runtime sent it; they only
/// make the lookup cheaper.
pub fn teardown(
    conf: &BridgeConf,
    ifname: &str,
    container_id: &str,
    addresses: Option<&[IpNetwork]>,
) -> Result<(), BridgeError> {
    nat::teardown_masq(&conf.network, ifname, container_id, addresses)?;
    Ok(())
}

/// Removes this network's masquerading of attachments not in `valid`.
pub fn gc(conf: &BridgeConf, valid: &[cni_types::Attachment]) -> Result<(), BridgeError> {
    let keep: Vec<Attachment<'_>> = valid
        .iter()
        .map(|a| Attachment {
            container_id: &a.container_id,
            ifname: &a.ifname,
        })
        .collect();
    nat::gc_masq(&conf.network, &keep)?;
    Ok(())
}
