//! host-local IPAM: hands out addresses from configured ranges and records them in a
//! per-network directory that the reference Go plugin can read and write too.
//!
//! The flow of an ADD: [`config`] turns the conf into validated [`range::RangeSet`]s,
//! [`ledger`] locks the network's directory, [`allocator`] picks one address per range set
//! and reserves it in the ledger ([`index`] keeps that fast on a full network).

pub mod allocator;
pub mod config;
pub mod dns;
pub mod index;
pub mod ledger;
pub mod plugin;
pub mod range;
