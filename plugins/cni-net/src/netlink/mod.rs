//! Synchronous rtnetlink: links, addresses, routes, bridge ports, IPv4
//! per-interface settings, and link notifications ([`LinkEvents`]).
//!
//! One [`Netlink`] socket per network namespace; methods are kernel verbs:
//!
//! ```no_run
//! use cni_net::netlink::{Family, Netlink, Route};
//! use cni_net::netns::NetNs;
//!
//! # fn main() -> cni_net::error::Result<()> {
//! let host = NetNs::current()?;
//! let container = NetNs::open("/var/run/netns/ctr")?;
//! let mut host_nl = Netlink::open()?;
//! let mut ctr_nl = Netlink::open_in(&container)?;
//!
//! let br = match host_nl.create_bridge("cni0", None, false) {
//!     Err(e) if e.is_exists() => host_nl.link_by_name("cni0")?.expect("bridge"),
//!     other => other?,
//! };
//! // The container end is created in the container, its peer straight in the host.
//! let eth0 = ctr_nl.create_veth("eth0", "veth1a2b3c4d", None, None, Some(&host))?;
//! let veth = host_nl.link_by_name("veth1a2b3c4d")?.expect("peer");
//! host_nl.set_master(&veth, Some(&br))?;
//! host_nl.set_link_up(&veth)?;
//! ctr_nl.add_addr(&eth0, "10.1.2.3/24".parse().unwrap())?;
//! ctr_nl.set_link_up(&eth0)?;
//! ctr_nl.add_route(&Route::new("0.0.0.0/0".parse().unwrap())
//!     .via("10.1.2.1".parse().unwrap())
//!     .dev(eth0.index))?;
//! # let _ = (br, Family::V4);
//! # Ok(()) }
//! ```
//!
//! Every error carries what was attempted (`add 10.1.2.3/24 to eth0: File
//! exists`); tolerate specific answers with
//! [`Error::is_exists`](crate::error::Error::is_exists) and
//! [`Error::is_not_found`](crate::error::Error::is_not_found).

mod addr;
mod bridge;
mod devconf;
mod events;
mod link;
mod netconf;
mod route;
mod socket;
mod types;

pub use addr::{Addr, IFA_F_DADFAILED, IFA_F_NODAD, IFA_F_PERMANENT, IFA_F_TENTATIVE};
pub use bridge::BridgeVlan;
pub use devconf::{Ipv4Conf, Ipv4DevConf};
pub use events::{LinkEvents, PORT_UP_TIMEOUT};
pub use link::{BridgePortInfo, Link};
pub use route::{RT_TABLE_LOCAL, RT_TABLE_MAIN, RTN_UNICAST, RTPROT_BOOT, Route};
pub use socket::{DUMP_ATTEMPTS, Netlink};
pub use types::{Family, MacAddr, OperState, ParseMacError, Scope};
