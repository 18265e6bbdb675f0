//! iptables-nft rules read and written straight through nf_tables netlink: the
//! iptables driver's fast paths. Each answers "not handled" (or an error) rather than
//! guess, and the driver then takes the tools.

pub(crate) mod masq;
pub(crate) mod portmap;
