//! `Backend::Nftables`: the reference's layout (`inet cni_plugins_masquerade`,
//! `ip`/`ip6 cni_hostport`) committed through one `nft -f` per call, its rules listed,
//! checked and deleted straight through nf_tables netlink where it can ([`kernel`]).

mod kernel;
pub(crate) mod masq;
pub(crate) mod portmap;
mod tool;

use ipnetwork::IpNetwork;

use crate::Family;
use crate::nat::driver::{NatDriver, PortHints};
use crate::nat::error::NatError;
use crate::nat::guard;
use crate::nat::model::{Attachment, PortMapConfig, RuleRef};
use crate::nat::names::{NFT_HOSTPORT_TABLE, NFT_MASQ_CHAIN, NFT_MASQ_TABLE};
use crate::nftnl::{self, AddedRule, Op};
use crate::tools::Tool;
use tool::{NftRule, list_chain, list_table, list_table_doc, parse_rules_doc, transact};

/// The nftables driver; stateless, one `static` in `backend.rs`.
pub(crate) struct Nftables;

impl NatDriver for Nftables {
    fn name(&self) -> &'static str {
        "nftables"
    }

    fn setup_masq(
        &self,
        network: &str,
        ifname: &str,
        container_id: &str,
        ips: &[IpNetwork],
    ) -> Result<(), NatError> {
        if !Tool::Nft.available() {
            return Err(NatError::ToolMissing("nft"));
        }
        masq_setup(network, ifname, container_id, ips)
            .map_err(|e| e.context(|| format!("set up ipMasq (nftables) for {container_id}")))
    }

    /// `nft` is installed and the kernel does not say the table is absent (a netlink
    /// error means "maybe"): on a node that never used this layout, a DEL costs a
    /// netlink round trip instead of a process.
    fn may_hold_masq(&self) -> bool {
        Tool::Nft.available() && kernel::inet_table_exists(NFT_MASQ_TABLE).unwrap_or(true)
    }

    fn teardown_masq(
        &self,
        network: &str,
        ifname: &str,
        container_id: &str,
        _addresses: Option<&[IpNetwork]>,
    ) -> Result<(), NatError> {
        transact(|| {
            let rules = masq_rules()?;
            Ok(masq::render_delete(&masq::instance_rules(
                &rules,
                network,
                ifname,
                container_id,
            )))
        })
        .map_err(|e| e.context(|| format!("tear down ipMasq (nftables) for {container_id}")))
    }

    /// Rules are per attachment, as in the reference.
    fn gc_masq(&self, network: &str, valid: &[Attachment<'_>]) -> Result<(), NatError> {
        transact(|| {
            let rules = masq_rules()?;
            Ok(masq::render_delete(&masq::gc_rules(&rules, network, valid)))
        })
        .map_err(|e| e.context(|| format!("GC ipMasq (nftables) of network {network}")))
    }

    fn forward_ports(
        &self,
        config: &PortMapConfig,
        targets: &[IpNetwork],
        prior: Option<&[RuleRef]>,
    ) -> Result<(), NatError> {
        // Before the DNAT rules, so route_localnet (set after) is never unguarded.
        guard::install(config)
            .and_then(|()| forward(config, targets, prior))
            .map_err(|e| {
                e.context(|| {
                    format!(
                        "set up port mappings (nftables) for {}",
                        config.container_id
                    )
                })
            })
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
        kernel::select_tracked(added, config, targets)
    }

    fn check_ports(&self, config: &PortMapConfig, targets: &[IpNetwork]) -> Result<(), NatError> {
        for target in targets {
            let family = Family::of(target.ip());
            let rules = list_table(family.nft_word(), NFT_HOSTPORT_TABLE)?;
            portmap::check_rules(&rules, config, family)?;
        }
        Ok(())
    }

    fn may_hold_ports(&self) -> bool {
        Tool::Nft.available()
    }

    /// By recorded handle or by the container chains' rules over netlink; `nft` only
    /// when netlink fails.
    fn unforward_ports(
        &self,
        network: &str,
        container_id: &str,
        hints: &PortHints<'_>,
    ) -> Result<(), NatError> {
        let rules = unforward_rules(container_id, hints);
        let guard = guard::remove(network, container_id, hints.localnet);
        NatError::collect(rules.err().into_iter().chain(guard.err()).collect())
    }
}

/// The container's DNAT rules: by handle or listing over netlink, else through `nft`.
fn unforward_rules(container_id: &str, hints: &PortHints<'_>) -> Result<(), NatError> {
    if unforward_direct(container_id, hints.known).is_ok() {
        return Ok(());
    }
    transact(|| {
        let mut rules = list_table("ip", NFT_HOSTPORT_TABLE)?;
        if Family::V6.enabled() {
            rules.extend(list_table("ip6", NFT_HOSTPORT_TABLE)?);
        }
        Ok(portmap::render_unforward(&rules, container_id))
    })
    .map_err(|e| e.context(|| format!("tear down port mappings (nftables) for {container_id}")))
}

/// The ipMasq rules of every attachment.
fn masq_rules() -> Result<Vec<NftRule>, NatError> {
    list_chain("inet", NFT_MASQ_TABLE, NFT_MASQ_CHAIN)
}

fn masq_setup(
    network: &str,
    ifname: &str,
    container_id: &str,
    nets: &[IpNetwork],
) -> Result<(), NatError> {
    transact(|| {
        // The whole table, not just masq_checks: the same one process also shows
        // whether the skeleton needs rebuilding.
        let doc = list_table_doc("inet", NFT_MASQ_TABLE)?;
        let (ready, rules) = match &doc {
            Some(doc) => (masq::skeleton_ready(doc), parse_rules_doc(doc)?),
            None => (false, Vec::new()),
        };
        let stale = masq::instance_rules(&rules, network, ifname, container_id);
        Ok(Some(masq::render_setup(
            ready,
            &stale,
            network,
            ifname,
            container_id,
            nets,
        )))
    })
}

/// `prior`: the container's rules as recorded by an earlier ADD (`Some(&[])`: it had
/// none), so they need not be searched for; `None`: unknown, search.
fn forward(
    config: &PortMapConfig,
    targets: &[IpNetwork],
    prior: Option<&[RuleRef]>,
) -> Result<(), NatError> {
    transact(|| {
        let mut script = String::new();
        for target in targets {
            let ip_family = Family::of(target.ip());
            let family = ip_family.nft_word();
            // The kernel lists just the container's chains (or, with a record, just
            // its recorded rules), far cheaper than `nft -j` printing the whole table;
            // the tool stays as the fallback.
            let direct = nftnl::with_socket(|nl| {
                let known = match prior {
                    Some(refs) => kernel::known_rules(nl, ip_family, &config.container_id, refs)?,
                    None => None,
                };
                let rules = match known {
                    Some(rules) => rules,
                    None => kernel::container_rules(nl, ip_family, &config.container_id)?,
                };
                let ready = config.conditions(ip_family).is_empty()
                    && kernel::skeleton_ready(nl, ip_family, config.snat)?;
                Ok((rules, ready))
            });
            let (rules, skeleton_ready) = match direct {
                Ok(found) => found,
                Err(_) => (list_table(family, NFT_HOSTPORT_TABLE)?, false),
            };
            let stale = portmap::container_rules(&rules, &config.container_id);
            script.push_str(&portmap::render(&stale, config, *target, !skeleton_ready));
        }
        Ok(Some(script))
    })
}

/// DEL without `nft`: the recorded rules that are still the container's, else its
/// rules listed chain by chain, deleted per family in one batch.
fn unforward_direct(container_id: &str, known: Option<&[RuleRef]>) -> std::io::Result<()> {
    nftnl::with_socket(|nl| {
        for family in [Family::V4, Family::V6] {
            if !family.enabled() {
                continue;
            }
            let known = match known {
                Some(refs) => kernel::known_rules(nl, family, container_id, refs)?,
                None => None,
            };
            match known {
                Some(rules) => {
                    let ops: Vec<Op> = rules
                        .into_iter()
                        .map(|r| Op::DeleteRule {
                            chain: r.chain,
                            handle: r.handle,
                        })
                        .collect();
                    nl.commit(family, NFT_HOSTPORT_TABLE, &ops)?;
                }
                None => kernel::unforward(nl, family, container_id)?,
            }
        }
        Ok(())
    })
}
