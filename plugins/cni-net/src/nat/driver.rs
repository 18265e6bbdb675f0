//! The seam between the verbs and the firewall layouts: one [`NatDriver`] per
//! [`Backend`](super::Backend), each owning its fast paths.

use ipnetwork::IpNetwork;

use super::error::NatError;
use super::model::{Attachment, PortMapConfig, PortMapping, RuleRef};
use crate::Family;
use crate::nftnl::AddedRule;

/// One firewall layout. The verbs in `masq.rs`/`portmap.rs` hold the NAT lock around
/// every mutating call; drivers never take it. Probes (`may_hold_*`) are cheap: a PATH
/// lookup or one netlink GETTABLE, never a process. Each driver adds the context of its
/// own errors ("set up ipMasq (nftables) for …"; the iptables driver names the IP
/// family there, as the reference's messages do).
// Until every backend is a driver (step 7 of the re-layout) some methods have no caller.
#[allow(dead_code)]
pub(crate) trait NatDriver: Sync {
    /// The config spelling: `iptables`, `nftables`, `nftables-sets`.
    fn name(&self) -> &'static str;

    /// ipMasq ADD for the container's `ips` (not empty).
    fn setup_masq(
        &self,
        network: &str,
        ifname: &str,
        container_id: &str,
        ips: &[IpNetwork],
    ) -> Result<(), NatError>;
    /// Whether this layout may hold ipMasq state worth a teardown or GC.
    fn may_hold_masq(&self) -> bool;
    /// ipMasq DEL; `addresses` (prevResult's) only spare a search.
    fn teardown_masq(
        &self,
        network: &str,
        ifname: &str,
        container_id: &str,
        addresses: Option<&[IpNetwork]>,
    ) -> Result<(), NatError>;
    /// ipMasq GC: removes the network's attachments not in `valid`.
    fn gc_masq(&self, network: &str, valid: &[Attachment<'_>]) -> Result<(), NatError>;

    /// portmap ADD towards `targets` (one address per family). `prior`: the rules an
    /// earlier ADD recorded (`Some(&[])`: there was none), sparing a search.
    fn forward_ports(
        &self,
        config: &PortMapConfig,
        targets: &[IpNetwork],
        prior: Option<&[RuleRef]>,
    ) -> Result<(), NatError>;
    /// Whether forward_ports' rules can be learned from nf_tables notifications.
    fn tracks_rules(&self) -> bool {
        false
    }
    /// Among the rules announced during forward_ports, those a DEL must remove by
    /// handle; `None` unless all of them were seen.
    fn select_tracked(
        &self,
        _added: &[AddedRule],
        _config: &PortMapConfig,
        _targets: &[IpNetwork],
    ) -> Option<Vec<RuleRef>> {
        Some(Vec::new())
    }
    /// portmap CHECK: every rule forward_ports would install is present.
    fn check_ports(&self, config: &PortMapConfig, targets: &[IpNetwork]) -> Result<(), NatError>;
    /// Whether this layout may hold host-port state worth a teardown.
    fn may_hold_ports(&self) -> bool;
    /// portmap DEL (and GC, per container).
    fn unforward_ports(
        &self,
        network: &str,
        container_id: &str,
        hints: &PortHints<'_>,
    ) -> Result<(), NatError>;
}

/// What an earlier ADD left behind, when known; `PortHints::default()` means "search".
#[allow(dead_code)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PortHints<'a> {
    /// Handles recorded by forward_ports.
    pub known: Option<&'a [RuleRef]>,
    /// The last ADD's mappings and the container's addresses (prevResult's).
    pub installed: Option<(&'a [PortMapping], &'a [IpNetwork])>,
}

/// The rules among `added` that `mine` accepts, as records, when they are exactly as
/// many as `expected` says for the targets' families (a partial record would make DEL
/// leak).
pub(crate) fn pick_tracked(
    added: &[AddedRule],
    targets: &[IpNetwork],
    mine: impl Fn(&AddedRule) -> bool,
    expected: impl Fn(Family) -> usize,
) -> Option<Vec<RuleRef>> {
    let picked: Vec<RuleRef> = added
        .iter()
        .filter(|a| mine(a))
        .map(|a| RuleRef {
            family: a.family,
            table: a.table.clone(),
            chain: a.chain.clone(),
            handle: a.rule.handle,
        })
        .collect();
    let expected: usize = targets.iter().map(|t| expected(Family::of(t.ip()))).sum();
    (picked.len() == expected).then_some(picked)
}

/// A rule as the kernel would announce it, for the drivers' tracking tests.
#[cfg(test)]
pub(crate) fn added_rule(
    family: Family,
    table: &str,
    chain: &str,
    handle: u64,
    comment: Option<&str>,
    jumps: &[&str],
) -> AddedRule {
    AddedRule {
        family,
        table: table.into(),
        chain: chain.into(),
        rule: crate::nftnl::KernelRule {
            handle,
            comment: comment.map(str::to_string),
            jumps: jumps.iter().map(|j| j.to_string()).collect(),
            exprs: Vec::new(),
        },
    }
}
