//! Kernel plumbing shared by the plugins: network namespaces, a small synchronous
//! netlink socket, sysctls and the NAT backends.

pub mod error;
pub mod family;
pub mod nat;
pub mod netlink;
pub mod netns;
pub(crate) mod nftnl;
pub mod sysctl;
pub mod tools;

pub use error::Error;
pub use family::Family;
pub use netlink::Netlink;
pub use netns::NetNs;
