//! The portmap plugin against real traffic and real rulesets, in private namespaces:
//! a node (the "host" the plugin runs in), pods on its bridge, and an external peer.
//! Needs root, iproute2, iptables, nftables, socat and conntrack.

#[path = "portmap/fixture.rs"]
mod fixture;

#[path = "portmap/traffic.rs"]
mod traffic;

#[path = "portmap/teardown.rs"]
mod teardown;

#[path = "portmap/verbs.rs"]
mod verbs;

#[path = "portmap/differential.rs"]
mod differential;

#[path = "portmap/runtimes.rs"]
mod runtimes;

#[path = "portmap/localnet.rs"]
mod localnet;
