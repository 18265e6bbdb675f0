//! ADD, in the reference's order: bridge, veth, spoof check, IPAM, container
//! addressing, gateway, ipMasq, result. The IPAM plugin runs in its own process
//! while the bridge and veth are made.
//!
//! A failure undoes what this call did (IPAM reservation, spoof-check and
//! ipMasq rules, the veth), and removes the bridge too when no ADD has
//! succeeded on it and nothing else is attached (see `bridge.rs`), so a failed
//! ADD leaves nothing behind. A bridge that has served a pod is shared, and it
//! stays with its gateway address.

use cni_net::netlink::{Link, LinkEvents, MacAddr, Netlink, OperState, PORT_UP_TIMEOUT};
use cni_net::netns::NetNs;
use cni_types::{CniResult, Interface, Request, invoke};

use crate::bridge;
use crate::config::BridgeConf;
use crate::container;
use crate::error::BridgeError;
use crate::gateway::{self, Gateways};
use crate::masq;
use crate::spoofcheck::SpoofCheck;
use crate::veth::{self, PortOptions};

/// What to undo if ADD fails after making it.
struct Undo<'a> {
    req: &'a Request,
    conf: &'a BridgeConf,
    ipam: Option<&'a str>,
    spoof: Option<SpoofCheck>,
    masq: bool,
}

impl Undo<'_> {
    /// `plumbing` is `None` when ADD failed before its veth was attached (and
    /// the plumbing step removed the veth itself).
    fn run(self, plumbing: Option<&mut Plumbing>) {
        if let Some(sc) = self.spoof {
            let _ = sc.teardown();
        }
        if self.masq {
            let _ = masq::teardown(self.conf, &self.req.ifname, &self.req.container_id, None);
        }
        if let Some(ipam) = self.ipam {
            let _ = invoke::delegate_del(ipam, self.req);
        }
        let host_nl = match plumbing {
            Some(p) => {
                // Deleting one end removes the pair, host end included.
                let _ = p.ctr_nl.delete_link(&p.pair.inner);
                Some(&mut p.host_nl)
            }
            None => None,
        };
        // Last, once this call's own port is gone.
        match host_nl {
            Some(nl) => bridge::remove_if_unused(nl, self.conf),
            None => {
                if let Ok(mut nl) = Netlink::open() {
                    bridge::remove_if_unused(&mut nl, self.conf);
                }
            }
        }
    }
}

fn iface(link: &Link) -> Interface {
    Interface {
        name: link.name.clone(),
        mac: link.mac.map(|m| m.to_string()),
        ..Default::default()
    }
}

fn port_options(conf: &BridgeConf) -> PortOptions {
    PortOptions {
        hairpin: conf.hairpin_mode,
        isolated: conf.port_isolation,
        vlan: conf.vlan,
        trunk: conf.vlan_trunk.clone(),
        preserve_default_vlan: conf.preserve_default_vlan,
    }
}

/// 0.1.0 and 0.2.0 (and an empty version, which means 0.1.0).
fn legacy_version(v: &str) -> bool {
    matches!(v, "" | "0.1.0" | "0.2.0")
}

/// The kernel objects ADD works on.
struct Plumbing {
    host_nl: Netlink,
    ctr_nl: Netlink,
    br: Link,
    pair: veth::Pair,
}

/// Bridge and veth pair, the host end a port of the bridge: the part of ADD
/// that does not need IPAM's answer. On failure nothing of it is left but
/// the bridge, which [`Undo::run`] then considers.
fn plumb(conf: &BridgeConf, ctr_ns: &NetNs, ifname: &str) -> Result<Plumbing, BridgeError> {
    let host_ns =
        NetNs::current().map_err(|e| BridgeError::kernel("failed to open host netns", e))?;
    let mut host_nl =
        Netlink::open().map_err(|e| BridgeError::kernel("failed to open netlink socket", e))?;
    // Held until our veth is a port, so no failing ADD removes the bridge
    // from under us meanwhile.
    let (br, port_lock) = bridge::ensure(&mut host_nl, conf)?;
    let mut ctr_nl = Netlink::open_in(ctr_ns).map_err(|source| BridgeError::Netns {
        path: ctr_ns.path().display().to_string(),
        source,
    })?;
    let pair = veth::create(
        &mut ctr_nl,
        &mut host_nl,
        Some(&host_ns),
        ifname,
        conf.mtu,
        conf.mac.map(|m| MacAddr(m.0)),
    )?;
    if let Err(e) = veth::attach(&mut host_nl, &pair.host, &br, &port_options(conf)) {
        let _ = ctr_nl.delete_link(&pair.inner);
        return Err(e);
    }
    drop(port_lock);
    Ok(Plumbing {
        host_nl,
        ctr_nl,
        br,
        pair,
    })
}

pub fn add(req: &Request) -> Result<CniResult, BridgeError> {
    let conf = BridgeConf::parse(&req.stdin, &req.args)?;
    conf.validate_for_add()?;
    if !conf.is_layer3() && legacy_version(&conf.cni_version) {
        // A 0.1/0.2 result is nothing but addresses: an L2-only ADD could
        // never be printed, and would leave its veth behind.
        return Err(BridgeError::Config(
            "cannot convert: no valid IP addresses".into(),
        ));
    }
    let netns_path = req.netns_required().map_err(BridgeError::Cni)?;
    // Opened first so a bad path fails before anything is made.
    let ctr_ns = NetNs::open(netns_path).map_err(|source| BridgeError::Netns {
        path: netns_path.display().to_string(),
        source,
    })?;

    // The IPAM plugin is a separate process: let it run while the bridge and
    // veth are made. The worker thread never changes netns, so the plugin
    // starts in the host netns whatever this thread does meanwhile.
    let ipam_type = conf.ipam_type.as_deref();
    let (plumbing, ipam) = std::thread::scope(|s| {
        let ipam = ipam_type.map(|t| s.spawn(move || invoke::delegate_add(t, req)));
        let plumbing = plumb(&conf, &ctr_ns, &req.ifname);
        let ipam = ipam.map(|h| {
            h.join()
                .unwrap_or_else(|_| Err(cni_types::Error::internal("IPAM call panicked")))
        });
        (plumbing, ipam)
    });

    let mut undo = Undo {
        req,
        conf: &conf,
        ipam: None,
        spoof: None,
        masq: false,
    };
    if let Some(Ok(_)) = &ipam {
        undo.ipam = ipam_type;
    }
    let mut p = match plumbing {
        Ok(p) => p,
        Err(e) => {
            undo.run(None);
            return Err(e);
        }
    };
    match finish(req, &conf, &mut p, &ctr_ns, ipam, &mut undo) {
        Ok((result, br)) => {
            bridge::settle(&mut p.host_nl, &br);
            Ok(result)
        }
        Err(e) => {
            undo.run(Some(&mut p));
            Err(e)
        }
    }
}

/// Everything after the plumbing, in the reference's order. Returns the
/// result and the bridge as it is now.
fn finish<'a>(
    req: &'a Request,
    conf: &'a BridgeConf,
    p: &mut Plumbing,
    ctr_ns: &NetNs,
    ipam: Option<Result<CniResult, cni_types::Error>>,
    undo: &mut Undo<'a>,
) -> Result<(CniResult, Link), BridgeError> {
    // Subscribed before the container end goes up, so the port's change to
    // "up" cannot slip past between our read and our wait.
    let events = if conf.disable_container_interface {
        None
    } else {
        LinkEvents::subscribe().ok()
    };
    let mut result = interfaces(p, ctr_ns);
    if conf.macspoofchk {
        undo.spoof = Some(spoof_check(req, &p.pair, &result)?);
    }
    match ipam {
        Some(ipam) => {
            let ipam_result = ipam.map_err(BridgeError::Ipam)?;
            configure_l3(req, conf, p, ctr_ns, ipam_result, &mut result, undo)?;
        }
        None if !conf.disable_container_interface => {
            p.ctr_nl.set_link_up(&p.pair.inner).map_err(|e| {
                BridgeError::kernel(format!("failed to set {:?} up", req.ifname), e)
            })?;
        }
        None => {}
    }
    let br = refresh_and_wait(conf, p, events, &mut result)?;
    if let Some(dns) = &conf.dns {
        result.dns = dns.clone();
    }
    Ok((result, br))
}

/// The result's interfaces: bridge, host end, container end.
fn interfaces(p: &Plumbing, ctr_ns: &NetNs) -> CniResult {
    CniResult {
        interfaces: vec![
            iface(&p.br),
            iface(&p.pair.host),
            Interface {
                sandbox: Some(ctr_ns.path().display().to_string()),
                ..iface(&p.pair.inner)
            },
        ],
        ..Default::default()
    }
}

/// Drops frames from the host end whose source is not the container's MAC.
fn spoof_check(
    req: &Request,
    pair: &veth::Pair,
    result: &CniResult,
) -> Result<SpoofCheck, BridgeError> {
    let sc = SpoofCheck::new(&req.container_id, &req.ifname);
    let mac = result.interfaces[2].mac.clone().unwrap_or_default();
    // Returned only on success: a half-made setup is torn down here.
    if let Err(e) = sc.setup(&pair.host.name, &mac) {
        let _ = sc.teardown();
        return Err(e);
    }
    Ok(sc)
}

/// IPAM's addresses, routes and DNS into the result; the container's
/// addresses and routes, the gateway addresses on the bridge and ipMasq.
fn configure_l3<'a>(
    req: &'a Request,
    conf: &'a BridgeConf,
    p: &mut Plumbing,
    ctr_ns: &NetNs,
    ipam_result: CniResult,
    result: &mut CniResult,
    undo: &mut Undo<'a>,
) -> Result<(), BridgeError> {
    if ipam_result.ips.is_empty() {
        return Err(BridgeError::NoIpConfig);
    }
    result.ips = ipam_result.ips;
    result.routes = ipam_result.routes;
    result.dns = ipam_result.dns;

    let gws = gateway::calc(result, conf);
    // ipMasq is tool runs in the host; addressing is netlink: overlap them.
    let ips: Vec<_> = result.ips.iter().map(|ip| ip.address).collect();
    let Plumbing {
        host_nl,
        ctr_nl,
        br,
        pair,
    } = p;
    let (configured, masqed) = std::thread::scope(|s| {
        let masq = conf
            .ip_masq
            .then(|| s.spawn(|| masq::setup(conf, &req.ifname, &req.container_id, &ips)));
        let configured = container::configure(ctr_nl, ctr_ns, &pair.inner, result, conf.enable_dad)
            .and_then(|()| {
                if conf.is_gateway {
                    set_gateways(host_nl, conf, br, &gws, result)
                } else {
                    Ok(())
                }
            });
        let masqed = masq.map(|h| {
            h.join()
                .unwrap_or_else(|_| Err(BridgeError::Config("ipMasq setup panicked".into())))
        });
        (configured, masqed)
    });
    // The reference tears down nothing of its own on failure; we also
    // remove half-made masquerading.
    undo.masq = masqed.is_some();
    configured?;
    masqed.transpose()?;
    Ok(())
}

/// Waits for the port to come up, and puts the MACs of the host end and the
/// bridge as they are now into the result (both can change after creation:
/// the bridge's when its first port arrives). Returns the bridge.
fn refresh_and_wait(
    conf: &BridgeConf,
    p: &mut Plumbing,
    events: Option<LinkEvents>,
    result: &mut CniResult,
) -> Result<Link, BridgeError> {
    let host_now = lookup(&mut p.host_nl, &p.pair.host.name)?;
    if !conf.disable_container_interface {
        wait_port_up(&mut p.host_nl, host_now.clone(), events)?;
    }
    result.interfaces[1].mac = host_now.mac.map(|m| m.to_string());
    let br_now = bridge::lookup(&mut p.host_nl, conf)?;
    result.interfaces[0].mac = br_now.mac.map(|m| m.to_string());
    Ok(br_now)
}

fn lookup(nl: &mut Netlink, name: &str) -> Result<Link, BridgeError> {
    nl.link_by_name(name)
        .map_err(|e| BridgeError::kernel(format!("failed to lookup {name:?}"), e))?
        .ok_or_else(|| BridgeError::Config(format!("failed to lookup {name:?}: Link not found")))
}

/// Gateway addresses on the bridge (or its VLAN gateway interface) and
/// forwarding for each family that has one.
fn set_gateways(
    nl: &mut Netlink,
    conf: &BridgeConf,
    br: &Link,
    gws: &Gateways,
    result: &mut CniResult,
) -> Result<(), BridgeError> {
    let mut vlan_if: Option<Link> = None;
    for (family, nets) in gws.families() {
        for net in nets {
            if conf.vlan.is_some() {
                let link = match &vlan_if {
                    Some(l) => l.clone(),
                    None => {
                        let l = ensure_vlan_gateway(nl, conf, br)?;
                        result.interfaces.push(iface(&l));
                        vlan_if = Some(l.clone());
                        l
                    }
                };
                gateway::ensure_addr(
                    nl,
                    &link,
                    *net,
                    conf.force_address,
                    "failed to set vlan interface for bridge with addr",
                )?;
            } else {
                gateway::ensure_addr(
                    nl,
                    br,
                    *net,
                    conf.force_address,
                    "failed to set bridge addr",
                )?;
            }
        }
        if !nets.is_empty() {
            gateway::enable_forwarding(nl, family)?;
        }
    }
    Ok(())
}

/// `<bridge>.<vlan>`: a veth in the host whose peer is an access port of the
/// VLAN, so the gateway address lives inside the VLAN.
fn ensure_vlan_gateway(
    nl: &mut Netlink,
    conf: &BridgeConf,
    br: &Link,
) -> Result<Link, BridgeError> {
    let name = conf.vlan_gateway_name().unwrap_or_default();
    if let Some(l) = nl
        .link_by_name(&name)
        .map_err(|e| BridgeError::kernel(format!("failed to find interface {name:?}"), e))?
    {
        return Ok(l);
    }
    let wrap = |e: BridgeError| {
        BridgeError::Config(format!(
            "failed to create vlan interface: faild to create vlan gateway {name:?}: {e}"
        ))
    };
    // Both ends live in the host: make the pair with one socket.
    let mut other =
        Netlink::open().map_err(|e| BridgeError::kernel("failed to open netlink socket", e))?;
    let pair = match veth::create(nl, &mut other, None, &name, Some(br.mtu), None) {
        Ok(pair) => pair,
        // A concurrent ADD on the same VLAN made it first: use theirs.
        Err(BridgeError::VethExists { .. }) => return lookup(nl, &name),
        Err(e) => return Err(wrap(e)),
    };
    let opts = PortOptions {
        vlan: conf.vlan,
        preserve_default_vlan: conf.preserve_default_vlan,
        ..Default::default()
    };
    veth::attach(nl, &pair.host, br, &opts).map_err(wrap)?;
    nl.set_link_up(&pair.inner)
        .map_err(|e| BridgeError::kernel(format!("failed to up {name:?}"), e))?;
    lookup(nl, &name)
}

/// The port must be operationally up before the pod starts. One read
/// usually says so; otherwise wait for the kernel's notification. Without a
/// subscription, fall back to the reference's re-read schedule.
fn wait_port_up(
    nl: &mut Netlink,
    link: Link,
    events: Option<LinkEvents>,
) -> Result<(), BridgeError> {
    const RETRY_MS: [u64; 4] = [50, 500, 1000, 1000];
    if link.oper_state == OperState::Up {
        return Ok(());
    }
    if let Some(mut events) = events {
        if events.wait_up(link.index, PORT_UP_TIMEOUT) {
            return Ok(());
        }
        // Timed out, or notifications were lost: the kernel's word decides.
        let now = lookup(nl, &link.name)?;
        return match now.oper_state {
            OperState::Up => Ok(()),
            state => Err(BridgeError::PortState(state.to_string())),
        };
    }
    let mut state = link.oper_state;
    for ms in RETRY_MS {
        std::thread::sleep(std::time::Duration::from_millis(ms));
        state = lookup(nl, &link.name)?.oper_state;
        if state == OperState::Up {
            return Ok(());
        }
    }
    Err(BridgeError::PortState(state.to_string()))
}
