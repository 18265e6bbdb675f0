//! The node agent of the cni-rs suite (`cni-rs-node`), as a library so its kernel parts
//! are tested as root from `tests/`. The binary is `src/main.rs`.
//!
//! Layout, top down: `agent` (the main loop) uses `watch` (Node watch + cache),
//! `reconcile` (routes: cache vs kernel), `conflist`, `masq`, `forward`, `sysctl`,
//! `health`; `reconcile` uses `routes` (pure desired state and diff) and `netlink` (the
//! kernel seam); `node`, `cidr`, `metrics`, `log` and `config` are leaves. `install` puts
//! the plugins on the node (the DaemonSet's init container); `uninstall` takes the node
//! back with `cleanup` and `install`'s undo.

pub mod agent;
pub mod cidr;
pub mod cleanup;
pub mod config;
pub mod conflist;
pub mod forward;
pub mod health;
pub mod install;
pub mod log;
pub mod masq;
pub mod metrics;
pub mod netlink;
pub mod node;
pub mod reconcile;
pub mod routes;
pub mod sysctl;
pub mod uninstall;
pub mod watch;
