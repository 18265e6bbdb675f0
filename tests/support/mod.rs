//! Test harness for the integration tests: runs the real plugin binaries the way a
//! container runtime does, inside network namespaces the test creates and removes itself.
//!
//! A typical test reads like a user's session:
//!
//! ```no_run
//! use cni_tests::{CniCall, Host, Netns, tempdir};
//! let host = Host::new(); // a private "node": bridges, veths and NAT rules land here
//! let pod = Netns::new("pod");
//! let data = tempdir();
//! let conf = serde_json::json!({
//!     "cniVersion": "1.0.0", "name": "t", "type": "bridge", "bridge": "cni0",
//!     "ipam": {"type": "host-local", "subnet": "10.22.0.0/24",
//!              "dataDir": data.path()},
//! });
//! let out = host
//!     .cni("bridge")
//!     .command("ADD")
//!     .container_id("c1")
//!     .netns(&pod)
//!     .ifname("eth0")
//!     .config(&conf)
//!     .run();
//! let result = out.assert_ok();
//! ```
//!
//! Everything a test creates is owned by a guard whose `Drop` removes it, so a failing
//! (panicking) test still leaves the machine as it found it.

pub mod arb;
mod cni;
mod inspect;
mod names;
mod netns;
mod paths;
mod tempdir;

pub use cni::{CniCall, Outcome};
pub use names::{random_u64, unique_name};
pub use netns::{Background, Host, NETNS_PREFIX, Netns, netns_exists};
pub use paths::{
    PLUGINS, bin_dir, cnitool, plugin, reference_dir, reference_plugin, workspace_root,
};
pub use tempdir::{TempDir, tempdir};
