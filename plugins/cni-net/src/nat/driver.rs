//! The seam between the verbs and the firewall layouts: one [`NatDriver`] per
//! [`Backend`](super::Backend), each owning its fast paths.

use ipnetwork::IpNetwork;

use super::error::NatError;
use super::model::{Attachment, LocalnetGuard, PortMapConfig, PortMapping, RuleRef};
use crate::Family;
use crate::nftnl::AddedRule;

/// One firewall layout. The verbs in `masq.rs`/`portmap.rs` hold the NAT lock around
/// every mutating call; drivers never take it. Probes (`may_hold_*`) are cheap: a PATH
/// lookup or one netlink GETTABLE, never a process. Each driver adds the context of its
/// own errors ("set up ipMasq (nftables) for …"; the iptables driver names the IP
/// family there, as the reference's messages do).
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
#[derive(Clone, Copy, Debug, Default)]
pub struct PortHints<'a> {
    /// Handles recorded by forward_ports.
    pub known: Option<&'a [RuleRef]>,
    /// The last ADD's mappings and the container's addresses (prevResult's).
    pub installed: Option<(&'a [PortMapping], &'a [IpNetwork])>,
    /// The localnet guard the last ADD claimed (its record's): found by one look-up.
    pub localnet: Option<&'a LocalnetGuard>,
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

/// A driver that records what the verbs ask of it, for testing their cross-layout
/// rules without root or firewall, as host-local's allocator is tested against its
/// in-memory store.
#[cfg(test)]
pub(crate) mod testing {
    use std::fs::File;
    use std::path::{Path, PathBuf};
    use std::sync::Mutex;

    use super::*;

    /// One call, and whether the NAT lock was held during it.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub(crate) struct Call {
        pub what: String,
        pub locked: bool,
    }

    impl Call {
        pub(crate) fn locked(what: &str) -> Call {
            Call {
                what: what.to_string(),
                locked: true,
            }
        }

        pub(crate) fn unlocked(what: &str) -> Call {
            Call {
                what: what.to_string(),
                locked: false,
            }
        }
    }

    /// A lock file of its own for one test, removed when the guard goes.
    pub(crate) fn lock_file(tag: &str) -> (PathBuf, RemoveOnDrop) {
        let path =
            std::env::temp_dir().join(format!("cni-nat-verbs-{tag}-{}.lock", std::process::id()));
        (path.clone(), RemoveOnDrop(path))
    }

    pub(crate) struct RemoveOnDrop(PathBuf);

    impl Drop for RemoveOnDrop {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    pub(crate) struct RecordingDriver {
        name: &'static str,
        lock: PathBuf,
        holds: bool,
        fails: bool,
        calls: Mutex<Vec<Call>>,
    }

    impl RecordingDriver {
        /// A driver that may hold state, succeeds, and checks `lock` on every call.
        pub(crate) fn new(name: &'static str, lock: &Path) -> RecordingDriver {
            RecordingDriver {
                name,
                lock: lock.to_path_buf(),
                holds: true,
                fails: false,
                calls: Mutex::new(Vec::new()),
            }
        }

        /// Its probes say it holds nothing.
        pub(crate) fn holding_nothing(mut self) -> RecordingDriver {
            self.holds = false;
            self
        }

        /// Every call fails with `"<name>: <call> failed"`.
        pub(crate) fn failing(mut self) -> RecordingDriver {
            self.fails = true;
            self
        }

        pub(crate) fn calls(&self) -> Vec<Call> {
            self.calls.lock().map(|c| c.clone()).unwrap_or_default()
        }

        fn record(&self, what: String) -> Result<(), NatError> {
            // Held by the verb (another open file of this process) means WouldBlock.
            let locked = File::open(&self.lock)
                .is_ok_and(|f| matches!(f.try_lock(), Err(std::fs::TryLockError::WouldBlock)));
            let failure = format!("{}: {what} failed", self.name);
            if let Ok(mut calls) = self.calls.lock() {
                calls.push(Call { what, locked });
            }
            if self.fails {
                Err(NatError::Check(failure))
            } else {
                Ok(())
            }
        }
    }

    impl NatDriver for RecordingDriver {
        fn name(&self) -> &'static str {
            self.name
        }

        fn setup_masq(&self, _: &str, _: &str, id: &str, _: &[IpNetwork]) -> Result<(), NatError> {
            self.record(format!("setup_masq {id}"))
        }

        fn may_hold_masq(&self) -> bool {
            self.holds
        }

        fn teardown_masq(
            &self,
            _: &str,
            _: &str,
            id: &str,
            _: Option<&[IpNetwork]>,
        ) -> Result<(), NatError> {
            self.record(format!("teardown_masq {id}"))
        }

        fn gc_masq(&self, network: &str, _: &[Attachment<'_>]) -> Result<(), NatError> {
            self.record(format!("gc_masq {network}"))
        }

        fn forward_ports(
            &self,
            config: &PortMapConfig,
            targets: &[IpNetwork],
            prior: Option<&[RuleRef]>,
        ) -> Result<(), NatError> {
            let prior = prior.map_or("unknown".to_string(), |p| p.len().to_string());
            self.record(format!(
                "forward_ports {} to {} targets, prior {prior}",
                config.container_id,
                targets.len()
            ))
        }

        fn check_ports(&self, config: &PortMapConfig, _: &[IpNetwork]) -> Result<(), NatError> {
            self.record(format!("check_ports {}", config.container_id))
        }

        fn may_hold_ports(&self) -> bool {
            self.holds
        }

        fn unforward_ports(
            &self,
            _: &str,
            id: &str,
            hints: &PortHints<'_>,
        ) -> Result<(), NatError> {
            let known = hints.known.map_or(0, <[RuleRef]>::len);
            let installed = hints.installed.map_or(0, |(_, t)| t.len());
            self.record(format!(
                "unforward_ports {id}, {known} known, {installed} addresses"
            ))
        }
    }
}
