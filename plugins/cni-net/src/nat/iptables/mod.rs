//! `Backend::Iptables`: the reference's layout through `iptables-save`/`-restore`, made
//! fast on iptables-nft by reading and writing the kernel's rules straight through
//! nf_tables netlink ([`kernel`]).
//!
//! Each verb climbs the same ladder per IP family: the kernel fast path, then (ADD
//! only) one `iptables-restore` creating the new chain with `-N`, then the general
//! read-decide-commit of [`tool::transact`]. A rung that cannot handle the case
//! answers "not handled" and changes nothing.

mod kernel;
pub(crate) mod masq;
pub(crate) mod portmap;
pub(crate) mod restore;
pub(crate) mod save;
mod tool;

use std::collections::HashSet;

use ipnetwork::IpNetwork;

pub(crate) use tool::available;

use crate::Family;
use crate::nat::driver::{NatDriver, PortHints};
use crate::nat::error::NatError;
use crate::nat::guard;
use crate::nat::model::{Attachment, PortMapConfig, RuleRef};
use crate::nftnl::{self, AddedRule, Nftnl};
use crate::tools::iptables_is_nft;

/// The iptables driver; stateless, one `static` in `backend.rs`.
pub(crate) struct Iptables;

/// The families whose iptables tools can run here.
fn usable_families() -> impl Iterator<Item = Family> {
    [Family::V4, Family::V6]
        .into_iter()
        .filter(|f| f.enabled() && available(*f))
}

impl NatDriver for Iptables {
    fn name(&self) -> &'static str {
        "iptables"
    }

    /// The iptables layout ignores `ifname`, as the reference does.
    fn setup_masq(
        &self,
        network: &str,
        _ifname: &str,
        container_id: &str,
        ips: &[IpNetwork],
    ) -> Result<(), NatError> {
        // Netlink only spares work: without it, everything takes the general path.
        let mut nl = Nftnl::open().ok();
        for family in [Family::V4, Family::V6] {
            let nets: Vec<IpNetwork> = ips
                .iter()
                .filter(|n| Family::of(n.ip()) == family)
                .copied()
                .collect();
            if nets.is_empty() {
                continue;
            }
            let new_chain = nl.as_mut().and_then(|nl| {
                kernel::masq::setup_new(nl, family, network, container_id, &nets)
                    .ok()
                    .flatten()
            });
            if let Some(script) = new_chain {
                // Straight into nf_tables when the nat table is in place (every ADD
                // but a node's first); iptables-restore makes the same rules otherwise.
                if kernel::masq::add_new(family, network, container_id, &nets).is_ok() {
                    continue;
                }
                match tool::restore(family, &script) {
                    Ok(()) => continue,
                    // The chain appeared since we looked (`-N` failed): decide from
                    // the saved table instead.
                    Err(NatError::ToolFailed { .. }) => {}
                    Err(e) => {
                        return Err(
                            e.context(|| format!("set up ipMasq ({family}) for {container_id}"))
                        );
                    }
                }
            }
            tool::transact(family, |saved| {
                masq::render_setup(saved, network, container_id, &nets)
            })
            .map_err(|e| e.context(|| format!("set up ipMasq ({family}) for {container_id}")))?;
        }
        Ok(())
    }

    fn may_hold_masq(&self) -> bool {
        usable_families().next().is_some()
    }

    /// Needs no addresses: the container's chain is named from (network, ID).
    fn teardown_masq(
        &self,
        network: &str,
        _ifname: &str,
        container_id: &str,
        _addresses: Option<&[IpNetwork]>,
    ) -> Result<(), NatError> {
        let mut errors = Vec::new();
        let mut nl = Nftnl::open().ok();
        for family in usable_families() {
            if let Some(nl) = nl.as_mut()
                && let Ok(true) = kernel::masq::teardown(nl, family, network, container_id)
            {
                continue;
            }
            if let Err(e) = tool::transact(family, |saved| {
                masq::render_teardown(saved, network, container_id)
            }) {
                errors
                    .push(e.context(|| format!("tear down ipMasq ({family}) for {container_id}")));
            }
        }
        // Closing it now would wait for the release of what it deleted, and block the
        // caller's interface removal meanwhile.
        if let Some(nl) = nl {
            nftnl::close_at_exit(nl);
        }
        NatError::collect(errors)
    }

    /// Chains are per container: any ifname of a valid container keeps them.
    fn gc_masq(&self, network: &str, valid: &[Attachment<'_>]) -> Result<(), NatError> {
        let valid_ids: HashSet<&str> = valid.iter().map(|a| a.container_id).collect();
        let mut errors = Vec::new();
        for family in usable_families() {
            if let Err(e) =
                tool::transact(family, |saved| masq::render_gc(saved, network, &valid_ids))
            {
                errors.push(e.context(|| format!("GC ipMasq ({family}) of network {network}")));
            }
        }
        NatError::collect(errors)
    }

    /// Straight into nf_tables where netlink can, by `iptables-restore` otherwise.
    fn forward_ports(
        &self,
        config: &PortMapConfig,
        targets: &[IpNetwork],
        _prior: Option<&[RuleRef]>,
    ) -> Result<(), NatError> {
        // Before the DNAT rules, so route_localnet (set after) is never unguarded.
        guard::install(config).map_err(|e| {
            e.context(|| format!("set up port mappings for {}", config.container_id))
        })?;
        let mut nl = Nftnl::open().ok();
        let result = forward(nl.as_mut(), config, targets);
        if let Some(nl) = nl {
            nftnl::close_at_exit(nl);
        }
        result
    }

    fn tracks_rules(&self) -> bool {
        true
    }

    fn select_tracked(
        &self,
        added: &[AddedRule],
        config: &PortMapConfig,
        targets: &[IpNetwork],
    ) -> Option<Vec<RuleRef>> {
        kernel::portmap::select_tracked(added, config, targets)
    }

    fn check_ports(&self, config: &PortMapConfig, targets: &[IpNetwork]) -> Result<(), NatError> {
        for target in targets {
            let saved = tool::save_nat(Family::of(target.ip()))?;
            portmap::check(&saved, config, *target)?;
        }
        Ok(())
    }

    fn may_hold_ports(&self) -> bool {
        usable_families().next().is_some()
    }

    /// By recorded handle, else by a dump of `CNI-HOSTPORT-DNAT`, else from the saved
    /// table; absent chains are fine.
    fn unforward_ports(
        &self,
        network: &str,
        container_id: &str,
        hints: &PortHints<'_>,
    ) -> Result<(), NatError> {
        let mut errors = Vec::new();
        let mut usable = 0;
        let mut nl = Nftnl::open().ok();
        for family in usable_families() {
            usable += 1;
            if iptables_is_nft(family)
                && let Some(nl) = nl.as_mut()
            {
                let by_handle = hints.known.is_some_and(|refs| {
                    matches!(
                        kernel::portmap::unforward_known(nl, family, network, container_id, refs),
                        Ok(true)
                    )
                });
                if by_handle
                    || matches!(
                        kernel::portmap::unforward(nl, family, network, container_id),
                        Ok(true)
                    )
                {
                    continue;
                }
            }
            if let Err(e) = tool::transact(family, |saved| {
                portmap::render_unforward(saved, network, container_id)
            }) {
                errors.push(
                    e.context(|| format!("tear down port mappings ({family}) for {container_id}")),
                );
            }
        }
        if let Some(nl) = nl {
            nftnl::close_at_exit(nl);
        }
        if let Err(e) = guard::remove(network, container_id, hints.localnet) {
            errors.push(e);
        }
        if usable == 0 {
            return Err(NatError::ToolMissing("iptables-restore"));
        }
        NatError::collect(errors)
    }
}

/// portmap ADD per target: the kernel fast path for a new container, else
/// read-decide-commit.
fn forward(
    mut nl: Option<&mut Nftnl>,
    config: &PortMapConfig,
    targets: &[IpNetwork],
) -> Result<(), NatError> {
    for &target in targets {
        let family = Family::of(target.ip());
        if iptables_is_nft(family)
            && let Some(nl) = nl.as_deref_mut()
            && matches!(kernel::portmap::forward_new(nl, config, target), Ok(true))
        {
            continue;
        }
        tool::transact(family, |saved| {
            portmap::render_forward(saved, config, target)
        })
        .map_err(|e| {
            e.context(|| {
                format!(
                    "set up port mappings ({family}) for {}",
                    config.container_id
                )
            })
        })?;
    }
    Ok(())
}
