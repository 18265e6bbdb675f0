//! The verbs: what portmap does for ADD, DEL, CHECK, GC and STATUS.

use std::collections::HashSet;

use cni_net::Family;
use cni_net::nat::{self, Backend, LocalnetGuard, PortHints, PortMapping, Proto, RuleRef};
use cni_types::{CniResult, Error, Plugin, Request};
use ipnetwork::IpNetwork;

use crate::config::Config;
use crate::container::container_ips;
use crate::error::PortmapError;
use crate::localnet;
use crate::registry::Registry;

pub struct Portmap;

impl Plugin for Portmap {
    fn add(&self, req: &Request) -> Result<CniResult, Error> {
        Ok(add(req)?)
    }

    fn del(&self, req: &Request) -> Result<(), Error> {
        Ok(del(req)?)
    }

    fn check(&self, req: &Request) -> Result<(), Error> {
        Ok(check(req)?)
    }

    fn gc(&self, req: &Request) -> Result<(), Error> {
        Ok(gc(req)?)
    }

    /// Nothing of portmap's can run out; the firewall tools are looked for at ADD.
    fn status(&self, _req: &Request) -> Result<(), Error> {
        Ok(())
    }
}

fn parse(req: &Request) -> Result<(Config, Option<CniResult>), PortmapError> {
    let prev = req
        .prev_result()
        .map_err(|e| PortmapError::config(format!("could not parse prevResult: {}", e.msg)))?;
    let config = Config::parse(
        &req.stdin,
        &req.conf.name,
        &req.container_id,
        Backend::detect,
    )?;
    check_args(req)?;
    Ok((config, prev))
}

/// `CNI_ARGS` as bridge and host-local take it: keys this plugin does not know (it
/// knows none) are refused unless `IgnoreUnknown` is set, with their wording. The
/// reference portmap never reads `CNI_ARGS`; its bridge, which runs first in the same
/// chain with the same variables, refuses them, so no working chain changes.
fn check_args(req: &Request) -> Result<(), PortmapError> {
    req.args.check_known(&[]).map_err(PortmapError::Args)
}

fn add(req: &Request) -> Result<CniResult, PortmapError> {
    let (mut config, prev) = parse(req)?;
    let prev = prev.ok_or(PortmapError::NotChained)?;
    // The common case (a pod without host ports) costs no firewall process at all.
    if config.rules.mappings.is_empty() {
        return Ok(prev);
    }
    let targets = container_ips(&prev, &req.ifname);
    if targets.is_empty() {
        return Ok(prev);
    }

    // An earlier ADD's record names the container's old rules; without one there are
    // none of ours to replace.
    let registry = Registry::for_network(&config.rules.network).ok();
    let prior = match registry
        .as_ref()
        .and_then(|r| r.read(&config.rules.container_id))
    {
        None => Some(Vec::new()),
        Some(record) => record.rules,
    };
    // The interface that will need route_localnet: the driver guards it against pods
    // reaching the host's loopback, in the same transaction as the DNAT rules.
    let (localnet, guard) = match targets.iter().find(|t| t.is_ipv4()) {
        Some(IpNetwork::V4(v4)) if config.rules.snat => {
            let link = localnet::interface_for(v4.ip().into())?;
            let guard = link.as_ref().map(|l| LocalnetGuard {
                ifname: l.name.clone(),
                pod: v4.ip(),
            });
            (link, guard)
        }
        _ => (None, None),
    };
    config.rules.localnet_guard = guard;
    let tracked = nat::forward_ports(config.backend, &config.rules, &targets, prior.as_deref())
        .map_err(PortmapError::nat("unable to set up port mappings"))?;
    record(registry.as_ref(), &config, tracked.as_deref());

    // Only now that the DNAT rules exist: a UDP flow that hit the host port before
    // (and is pinned to the old destination by its conntrack entry) must start over.
    for target in &targets {
        flush_udp(&config.rules.mappings, Family::of(target.ip()));
    }

    // Only now that the guard is in place.
    if let Some(link) = &localnet {
        localnet::enable(link)?;
    }
    Ok(prev)
}

/// Teardown needs only the network name and the container ID: the rules are found by
/// the names and comments derived from them. So DEL cleans up even when the runtime
/// sends no `portMappings` (containerd's `ctr` never does) or no netns, and never fails
/// on a config that ADD would have refused.
fn del(req: &Request) -> Result<(), PortmapError> {
    let config = Config::parse_for_teardown(
        &req.stdin,
        &req.conf.name,
        &req.container_id,
        Backend::detect,
    );
    check_args(req)?;
    let recorded = Registry::for_network(&req.conf.name)
        .ok()
        .and_then(|r| r.read(&req.container_id));
    // What the last ADD installed, when both its record and the addresses (prevResult,
    // which runtimes send on DEL) are at hand: lets the entries be looked up directly.
    let addresses = req
        .prev_result()
        .ok()
        .flatten()
        .map(|prev| container_ips(&prev, &req.ifname))
        .unwrap_or_default();
    let installed = recorded
        .as_ref()
        .map(|r| (r.mappings.as_slice(), addresses.as_slice()));
    let hints = PortHints {
        known: recorded.as_ref().and_then(|r| r.rules.as_deref()),
        installed,
        localnet: recorded.as_ref().and_then(|r| r.guard.as_ref()),
    };
    nat::unforward_ports(config.backend, &req.conf.name, &req.container_id, &hints)
        .map_err(PortmapError::nat("could not tear down port mappings"))?;
    // The runtime may not resend the mappings; what ADD recorded still names the ports.
    let mappings = if config.rules.mappings.is_empty() {
        recorded.map(|r| r.mappings).unwrap_or_default()
    } else {
        config.rules.mappings.clone()
    };
    forget(&req.conf.name, &req.container_id);
    // The flows DNATed to the departed pod would otherwise keep blackholing the port
    // for the next pod that maps it (plugins#1190).
    for family in [Family::V4, Family::V6] {
        flush_udp(&mappings, family);
    }
    Ok(())
}

fn check(req: &Request) -> Result<(), PortmapError> {
    let (config, prev) = parse(req).map_err(PortmapError::unprefixed)?;
    let prev = prev.ok_or(PortmapError::NoPrevResult)?;
    if config.rules.mappings.is_empty() {
        return Ok(());
    }
    let targets = container_ips(&prev, &req.ifname);
    nat::check_ports(config.backend, &config.rules, &targets)
        .map_err(PortmapError::nat("port mappings are not in place"))
}

/// Removes the rules of every container of this network that ADD recorded and that
/// the runtime no longer lists. Keeps going past failures and reports them together.
fn gc(req: &Request) -> Result<(), PortmapError> {
    let config = Config::parse_for_teardown(&req.stdin, &req.conf.name, "", Backend::detect);
    let network = &req.conf.name;
    let valid: HashSet<&str> = req
        .conf
        .gc_attachments()
        .unwrap_or(&[])
        .iter()
        .map(|a| a.container_id.as_str())
        .collect();
    let registry = match Registry::for_network(network) {
        Ok(r) => r,
        Err(e) => return Err(PortmapError::Registry(e)),
    };
    let recorded = registry.containers().map_err(PortmapError::Registry)?;
    let mut failures = Vec::new();
    for id in recorded.iter().filter(|id| !valid.contains(id.as_str())) {
        let record = registry.read(id);
        let hints = PortHints {
            known: record.as_ref().and_then(|r| r.rules.as_deref()),
            installed: None,
            localnet: record.as_ref().and_then(|r| r.guard.as_ref()),
        };
        match nat::unforward_ports(config.backend, network, id, &hints) {
            Ok(()) => forget(network, id),
            Err(e) => failures.push(format!("{id}: {e}")),
        }
    }
    // Guards whose container left no record (its ADD was killed before writing it).
    let valid: Vec<&str> = valid.into_iter().collect();
    if let Err(e) = nat::gc_port_guards(network, &valid) {
        failures.push(e.to_string());
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(PortmapError::Gc(failures.join("; ")))
    }
}

/// Best effort: a missing record only means GC will not find this container and DEL
/// searches for its rules.
fn record(registry: Option<&Registry>, config: &Config, rules: Option<&[RuleRef]>) {
    let res = match registry {
        Some(r) => r.record(
            &config.rules.container_id,
            &config.rules.mappings,
            rules,
            config.rules.localnet_guard.as_ref(),
        ),
        None => Registry::for_network(&config.rules.network).and_then(|r| {
            r.record(
                &config.rules.container_id,
                &config.rules.mappings,
                rules,
                config.rules.localnet_guard.as_ref(),
            )
        }),
    };
    if let Err(e) = res {
        eprintln!(
            "portmap: cannot record {} for GC: {e}",
            config.rules.container_id
        );
    }
}

fn forget(network: &str, container_id: &str) {
    if let Err(e) = Registry::for_network(network).and_then(|r| r.forget(container_id)) {
        eprintln!("portmap: cannot forget {container_id}: {e}");
    }
}

/// Deletes the UDP conntrack entries towards the mapped host ports. Failures are
/// reported on stderr only, as the reference does: the mapping itself is in place.
fn flush_udp(mappings: &[PortMapping], family: Family) {
    if !mappings.iter().any(|m| m.protocol == Proto::Udp) {
        return;
    }
    if let Err(e) = nat::flush_udp_host_ports(mappings, family) {
        eprintln!("portmap: failed to delete stale UDP conntrack entries: {e}");
    }
}
