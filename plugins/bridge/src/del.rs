//! DEL: best effort and idempotent. The container interface goes (which
//! removes the host end too), IPAM always releases, and the spoof-check and
//! ipMasq rules are removed by name, so nothing leaks when the netns is
//! already gone or `CNI_NETNS` is empty. The bridge is never removed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Sender, channel};
use std::time::Duration;

use cni_net::netlink::{LinkEvents, Netlink};
use cni_net::netns::NetNs;
use cni_types::{Request, invoke};

use crate::config::BridgeConf;
use crate::error::BridgeError;
use crate::masq;
use crate::spoofcheck::SpoofCheck;

pub fn del(req: &Request) -> Result<(), BridgeError> {
    let conf = BridgeConf::parse(&req.stdin, &req.args)?;

    // Removing a veth costs the kernel two RCU grace periods (~20 ms); the
    // firewall teardown is a few tool runs that do not depend on it, so they
    // overlap. The worker never changes netns, so the tools it spawns run in
    // the host. IPAM releases only once the interface is gone, so the address
    // cannot be handed out while the old interface holds it; but "gone" is
    // when the kernel announces the removal, which comes before its ~20 ms
    // wait for memory reclamation, so IPAM's DEL overlaps that wait too.
    let conf = &conf;
    let (iface, firewall, ipam) = std::thread::scope(|s| {
        let firewall = s.spawn(|| teardown_firewall(conf, req));
        let (gone_tx, gone_rx) = channel();
        let ipam = s.spawn(move || match (gone_rx.recv(), &conf.ipam_type) {
            (Ok(true), Some(ipam)) => invoke::delegate_del(ipam, req).map_err(BridgeError::Ipam),
            _ => Ok(()),
        });
        let iface = remove_iface_if_netns(req, &gone_tx);
        // Unless the announcement already said so: the first answer counts.
        let _ = gone_tx.send(iface.is_ok());
        let joined = |r: std::thread::Result<Result<(), BridgeError>>, what: &str| {
            r.unwrap_or_else(|_| Err(BridgeError::Config(format!("{what} panicked"))))
        };
        let ipam = joined(ipam.join(), "IPAM release");
        let firewall = joined(firewall.join(), "firewall teardown");
        (iface, firewall, ipam)
    });
    // Every step ran even if another failed, so a retried DEL has as little
    // as possible left to do.
    let mut errors: Vec<BridgeError> = [iface, ipam, firewall]
        .into_iter()
        .filter_map(Result::err)
        .collect();
    match errors.len() {
        0 => Ok(()),
        1 => Err(errors.remove(0)),
        _ => Err(BridgeError::Multiple(errors)),
    }
}

/// Removes the container interface; `gone` hears `true` as soon as the kernel
/// announces it removed (before the removal returns).
fn remove_iface_if_netns(req: &Request, gone: &Sender<bool>) -> Result<(), BridgeError> {
    let Some(path) = &req.netns else {
        return Ok(());
    };
    match NetNs::open(path) {
        Ok(ns) => remove_container_iface(&ns, &req.ifname, gone),
        // The runtime removed the netns first (or it is a stale file left
        // after a reboot): its interfaces are gone with it.
        Err(e) if e.is_not_found() || matches!(e, cni_net::error::Error::NotNetns { .. }) => Ok(()),
        Err(source) => Err(BridgeError::Netns {
            path: path.display().to_string(),
            source,
        }),
    }
}

/// Spoof-check chains and ipMasq rules, found by name: no netns or
/// addresses needed.
fn teardown_firewall(conf: &BridgeConf, req: &Request) -> Result<(), BridgeError> {
    if conf.macspoofchk
        && let Err(e) = SpoofCheck::new(&req.container_id, &req.ifname).teardown()
    {
        // The reference only logs this; a stale chain matches no traffic.
        eprintln!("{e}");
    }
    if conf.is_layer3() && conf.ip_masq {
        let addresses: Option<Vec<_>> = req
            .prev_result()
            .ok()
            .flatten()
            .map(|prev| prev.ips.iter().map(|ip| ip.address).collect());
        masq::teardown(conf, &req.ifname, &req.container_id, addresses.as_deref())?;
    }
    Ok(())
}

fn remove_container_iface(
    ns: &NetNs,
    ifname: &str,
    gone: &Sender<bool>,
) -> Result<(), BridgeError> {
    let mut nl = Netlink::open_in(ns)
        .map_err(|e| BridgeError::kernel("failed to open netlink socket in container", e))?;
    let link = nl
        .link_by_name(ifname)
        .map_err(|e| BridgeError::kernel(format!("failed to lookup {ifname:?}"), e))?;
    let Some(link) = link else {
        return Ok(());
    };
    // Subscribed before the removal, so its announcement cannot be missed.
    // Without a subscription IPAM simply waits for the removal to return.
    let events = ns
        .run(|| Ok::<_, BridgeError>(LinkEvents::subscribe().ok()))
        .ok()
        .flatten();
    let removed = AtomicBool::new(false);
    std::thread::scope(|s| {
        if let Some(mut events) = events {
            let removed = &removed;
            s.spawn(move || {
                while !removed.load(Ordering::Acquire) {
                    if events.wait_gone(link.index, Duration::from_millis(2)) {
                        let _ = gone.send(true);
                        return;
                    }
                }
            });
        }
        let result = match nl.delete_link(&link) {
            Ok(()) => Ok(()),
            // A concurrent DEL got there first.
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(BridgeError::kernel(
                format!("failed to delete {ifname:?}"),
                e,
            )),
        };
        removed.store(true, Ordering::Release);
        result
    })
}
