//! NAT: ipMasq for `bridge`, host-port mapping for `portmap`, in three layouts.
//!
//! ```ignore
//! use cni_net::nat::{self, Backend, PortHints, PortMapConfig};
//!
//! nat::setup_masq(Backend::detect(), "cbr0", "eth0", id, &ips)?;     // bridge ADD
//! let record = nat::forward_ports(backend, &config, &ips, None)?;    // portmap ADD
//! let hints = PortHints { known: record.as_deref(), ..PortHints::default() };
//! nat::unforward_ports(backend, "cbr0", id, &hints)?;                 // portmap DEL
//! nat::teardown_masq("cbr0", "eth0", id, None)?;                      // bridge DEL
//! ```
//!
//! # Compatibility
//! Chains, tables, rule text and comments are the reference plugins' (see `names.rs`), so
//! a node can switch between the Go and Rust plugins with pods running and either side
//! can DEL or GC what the other created.
//!
//! # One transaction per call
//! Rules are built as data and rendered by pure functions (golden-tested without root).
//! A call then:
//! 1. takes an exclusive flock on [`LOCK_PATH`] for the whole call;
//! 2. reads the current state once: `iptables-save -t nat` per IP family, or
//!    `nft -j list ...` for the tables involved;
//! 3. decides from that state what to change — nothing at all when the state is already
//!    right — and commits it once: one `iptables-restore -w --noflush` per family, or one
//!    `nft -f -` (a single kernel transaction) for all families.
//!
//! # Why both a read and a lock
//! In `--noflush` mode `iptables-restore` cannot express "create this chain unless it
//! exists": `-N` fails on an existing chain (failing the whole commit), and a
//! `:CHAIN - [0:0]` line creates *or flushes* it. Flushing is what we want for a
//! per-container chain we are about to refill, and would wipe every other container's
//! rules from a shared chain such as `CNI-HOSTPORT-DNAT`. So per-container chains are
//! declared with `:CHAIN` (create or flush, then refill), while shared chains are
//! created with `-N` and their fixed rules appended only when the saved ruleset shows
//! them missing; the flock makes that read-decide-commit atomic between concurrent
//! plugin processes (the xtables lock behind `-w` only serialises single commits).
//! Processes that do not take our lock (the Go plugins) can still race us; a commit
//! that fails is re-read and retried, `-N` fails rather than flushes a shared chain
//! someone just created, and deletions are by rule text, never by position, so a stale
//! read can fail a commit but never delete or flush someone else's rule.
//!
//! Teardown never needs the container's addresses: the per-container iptables chains
//! are named from (network, container ID) and every rule that jumps to them is found in
//! the saved table; nftables rules are found by their comments.
//!
//! # Layout
//! The verbs the plugins call (`masq.rs`, `portmap.rs`) take the lock and say the
//! cross-layout rules (teardown and GC visit every layout that may hold state). They
//! reach a layout only through a `NatDriver` (`driver.rs`), which `backend.rs` picks:
//! `iptables/`, `nftables/` and `sets/`, each owning its own fast paths (`kernel*`)
//! under its tools and renderers. The drivers share only the data (`model.rs`), the
//! kernel-visible names (`names.rs`), the netfilter client (`crate::nftnl`) and the
//! localnet guard (`guard.rs`), which every driver installs before its DNAT rules and
//! removes with them.
//!
//! # Layers
//! A file imports only from a lower rank, or from the same rank in its own folder (a
//! `**` entry is one folder). Inside a backend folder, its `mod.rs` (the driver) is the
//! top: the rest of the folder never imports it, and no backend imports another.
//! `tests/layers.rs` holds every `use`, `crate::` and `super::` path of the crate to
//! this table:
//!
//! | rank | files |
//! |------|-------|
//! | 0 | `family.rs` `error.rs` |
//! | 1 | `netns.rs` `sysctl.rs` `nat/error.rs` `nat/names.rs` `nat/model.rs` `nat/tests/testns.rs` |
//! | 2 | `tools.rs` `netlink/**` `nftnl/wire.rs` `nat/lock.rs` |
//! | 3 | `nftnl/**` |
//! | 4 | `nat/driver.rs` `nat/guard.rs` |
//! | 5 | `nat/iptables/**` `nat/nftables/**` `nat/sets/**` |
//! | 6 | `nat/backend.rs` |
//! | 7 | `nat/masq.rs` `nat/portmap.rs` |
//! | 8 | `nat/mod.rs` `lib.rs` |
//! | 9 | `nat/tests/**` (root tests of the verbs, through the public API) |

mod backend;
mod driver;
pub(crate) mod error;
mod guard;
mod iptables;
mod lock;
mod masq;
pub(crate) mod model;
pub(crate) mod names;
mod nftables;
mod portmap;
mod sets;

#[cfg(test)]
mod tests;

/// The crate's one family type; kept under its old name for the plugins.
pub use crate::Family as IpFamily;
pub use backend::Backend;
pub use driver::PortHints;
pub use error::NatError;
pub use lock::LOCK_PATH;
pub use masq::{gc_masq, setup_masq, teardown_masq};
pub use model::{Attachment, LocalnetGuard, PortMapConfig, PortMapping, Proto, RuleRef};
pub use names::DEFAULT_MARK_MASQ_BIT;
pub use portmap::{
    check_ports, flush_udp_host_ports, forward_ports, gc_port_guards, unforward_ports,
};
