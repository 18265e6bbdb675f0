//! The agent's main loop (`cni-rs-node run`): one task that waits for a trigger — a Node
//! event, a kernel notification, the resync timer, a retry — and then brings the node in
//! line: routes (reconcile.rs), then the conflist, masquerade and FORWARD rules, and
//! forwarding. Every failure keeps what is in place (fail static) and is retried;
//! SIGTERM leaves everything as it is, so an upgrade never cuts pods off.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use ipnetwork::IpNetwork;
use tokio::signal::unix::{SignalKind, signal};
use tokio::time::{Instant, sleep_until};

use crate::config::Flags;
use crate::conflist::{Template, write_if_changed};
use crate::forward;
use crate::health::{self, Status};
use crate::log::Throttle;
use crate::masq::{self, MasqSpec};
use crate::metrics::{inc, set};
use crate::netlink::{self, Kernel, Rtnl};
use crate::reconcile::Reconciler;
use crate::sysctl;
use crate::watch::{self, NodeCache};
use crate::{error, info, warn};

/// How often the "no podCIDRs" hint repeats, and how often a recurring failure is logged.
const HINT_PERIOD: Duration = Duration::from_secs(30);
const LOG_PERIOD: Duration = Duration::from_secs(60);
const RETRY_MIN: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(10);

/// The node-level state derived from the own Node and the cluster, and what was last
/// applied of it.
struct NodeState {
    template: Template,
    conf_dir: PathBuf,
    conf_name: String,
    mtu_flag: Option<u32>,
    cluster_flag: Vec<IpNetwork>,
    no_masq_flag: Vec<IpNetwork>,
    /// The conflist text last written (or found in place).
    written: Option<String>,
    mtu: Option<(IpAddr, Option<u32>)>,
    masq: Option<MasqSpec>,
    forward: Option<Vec<IpNetwork>>,
    forwarding: BTreeSet<bool>,
    waiting_since: Option<Instant>,
    last_hint: Option<Instant>,
    rp_warning: Option<String>,
}

pub async fn run(flags: Flags) -> Result<(), String> {
    let own = flags.node_name.clone().filter(|n| !n.is_empty()).ok_or(
        "the node name is required: --node-name or NODE_NAME (downward API spec.nodeName)",
    )?;
    flags.validate()?;
    let template = Template::load(flags.conflist_template.as_deref()).map_err(|e| e.to_string())?;
    let status = Status::new(flags.resync_interval * 3 + Duration::from_secs(30));
    let listener = health::bind(flags.health_addr)
        .await
        .map_err(|e| format!("health endpoint {}: {e}", flags.health_addr))?;
    tokio::spawn(health::serve(listener, status.clone()));
    let client = watch::client(&flags).await?;
    let rtnl = Rtnl::open().map_err(|e| format!("rtnetlink: {e}"))?;
    let mut kernel_events =
        netlink::monitor().map_err(|e| format!("rtnetlink notifications: {e}"))?;
    let mut rec = Reconciler::new(
        rtnl,
        &own,
        flags.route_protocol,
        flags.adopt_routes,
        status.clone(),
    );
    let mut state = NodeState {
        template,
        conf_dir: flags.cni_conf_dir.clone(),
        conf_name: flags.conflist_name.clone(),
        mtu_flag: flags.mtu,
        cluster_flag: flags.cluster_cidr.clone(),
        no_masq_flag: flags.no_masquerade_cidr.clone(),
        written: None,
        mtu: None,
        masq: None,
        forward: None,
        forwarding: BTreeSet::new(),
        waiting_since: None,
        last_hint: None,
        rp_warning: None,
    };
    info!(
        "cni-rs-node {} starting: node {own}, routes proto {}, conflist {}, health on http://{}",
        env!("CARGO_PKG_VERSION"),
        flags.route_protocol,
        flags.conflist_path().display(),
        flags.health_addr
    );

    let mut nodes = NodeCache::default();
    let mut watch: WatchStream = Box::pin(watch::nodes(client.clone()));
    let mut sigterm = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    let mut resync = tokio::time::interval_at(
        Instant::now() + flags.resync_interval,
        flags.resync_interval,
    );
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut hint = tokio::time::interval(HINT_PERIOD);
    let mut throttle = Throttle::new(LOG_PERIOD);
    let mut monitor_alive = true;
    let mut dirty = false;
    let mut full = true;
    let mut retry_at: Option<Instant> = None;
    let mut retry_delay = RETRY_MIN;
    let mut watch_failing = false;

    loop {
        status.tick();
        tokio::select! {
            biased;
            _ = sigterm.recv() => {
                info!("SIGTERM: exiting; routes, masquerade rules and the conflist stay in place");
                return Ok(());
            }
            _ = sigint.recv() => {
                info!("SIGINT: exiting; routes, masquerade rules and the conflist stay in place");
                return Ok(());
            }
            ev = kernel_events.recv(), if monitor_alive => match ev {
                Some(ev) => {
                    if let netlink::KernelEvent::Address { gone: Some(ip) } = &ev {
                        restart_watch(&mut watch, &client, *ip);
                    }
                    dirty |= rec.note(ev);
                }
                None => {
                    error!("rtnetlink notifications stopped: repairs now wait for the resync every {:?}", flags.resync_interval);
                    monitor_alive = false;
                }
            },
            item = watch.next() => match item {
                Some(Ok(ev)) => {
                    inc(&status.metrics.watch_events);
                    if matches!(ev, kube::runtime::watcher::Event::Init) {
                        inc(&status.metrics.watch_relists);
                    }
                    let done = matches!(ev, kube::runtime::watcher::Event::InitDone);
                    dirty |= nodes.apply(ev);
                    if watch_failing {
                        // The first answer after failures (a resumed watch replays what
                        // was missed, a re-list ends in InitDone): the server is back.
                        info!("watch: the API server is back ({} nodes cached)", nodes.len());
                        status.clear_watch_problem();
                        watch_failing = false;
                        throttle.clear_all();
                    }
                    if done {
                        status.set_watch_synced();
                    }
                    set(&status.metrics.nodes, nodes.len() as u64);
                }
                Some(Err(e)) => {
                    inc(&status.metrics.watch_restarts);
                    let (key, msg) = watch::describe(&e);
                    watch_failing = key != "410";
                    if let Some(held) = throttle.allow(&key) {
                        let more = if held > 0 { format!(" ({held} more since the last report)") } else { String::new() };
                        warn!("{msg}; keeping routes, rules and the conflist as they are{more}");
                    }
                    if watch_failing {
                        status.set_watch_problem(msg);
                    }
                }
                None => return Err("the Node watch ended".into()),
            },
            _ = resync.tick() => {
                rec.invalidate();
                full = true;
                dirty = true;
            }
            _ = sleep_until(retry_at.unwrap_or_else(Instant::now)), if retry_at.is_some() => {
                retry_at = None;
                dirty = true;
            }
            _ = hint.tick() => state.hint(&own, &nodes),
        }
        // Take in every notification already queued, so one pass covers a burst.
        while monitor_alive && let Ok(ev) = kernel_events.try_recv() {
            if let netlink::KernelEvent::Address { gone: Some(ip) } = &ev {
                restart_watch(&mut watch, &client, *ip);
            }
            dirty |= rec.note(ev);
        }
        // Until the first full list nothing is touched: an empty cache would delete
        // every route.
        if !dirty || !nodes.synced() {
            continue;
        }
        dirty = false;
        let out = rec.reconcile(nodes.nodes()).await;
        let node_ok = state
            .apply(&own, &nodes, &mut rec, full, &status, &mut throttle)
            .await;
        full = false;
        status.set_reconciled();
        if out.failed > 0 || !node_ok {
            retry_at = Some(Instant::now() + retry_delay);
            retry_delay = (retry_delay * 2).min(RETRY_MAX);
        } else {
            retry_delay = RETRY_MIN;
        }
    }
}

type WatchStream = std::pin::Pin<
    Box<
        dyn futures::Stream<
                Item = Result<
                    kube::runtime::watcher::Event<k8s_openapi::api::core::v1::Node>,
                    kube::runtime::watcher::Error,
                >,
            > + Send,
    >,
>;

/// A global address of this node went away (the node was renumbered): the watch's
/// connection may have used it, and a connection whose source address is gone hangs
/// silently until its timeout. A new watch re-lists (from the watch cache) at once.
fn restart_watch(watch: &mut WatchStream, client: &kube::Client, gone: IpAddr) {
    info!("address {gone} removed from this node: restarting the Node watch on a new connection");
    *watch = Box::pin(watch::nodes(client.clone()));
}

impl NodeState {
    /// The cluster's pod CIDRs: the flag, else every Node's.
    fn cluster(&self, nodes: &NodeCache) -> Vec<IpNetwork> {
        if !self.cluster_flag.is_empty() {
            return self.cluster_flag.clone();
        }
        crate::cidr::aggregate(nodes.nodes().flat_map(|n| n.pod_cidrs.iter()))
    }

    fn hint(&mut self, own: &str, nodes: &NodeCache) {
        let Some(since) = self.waiting_since else {
            return;
        };
        if self
            .last_hint
            .is_some_and(|t| t.elapsed() < HINT_PERIOD - Duration::from_millis(50))
        {
            return;
        }
        self.last_hint = Some(Instant::now());
        let waited = since.elapsed().as_secs();
        if !nodes.synced() {
            return;
        }
        if nodes.get(own).is_none() {
            warn!(
                "node {own} is not in the API server's Node list (waiting {waited}s): is --node-name \
                 / NODE_NAME right, has the kubelet registered the node?"
            );
        } else {
            warn!(
                "node {own} has no spec.podCIDRs (waiting {waited}s): no conflist until it has; the \
                 cluster needs kube-controller-manager --allocate-node-cidrs=true --cluster-cidr=... \
                 (kubeadm init --pod-network-cidr=10.244.0.0/16), or set the node's spec.podCIDR"
            );
        }
    }

    /// Conflist, masquerade, FORWARD and forwarding for the current cache; `full` forces
    /// re-checks of what is normally only redone on change. Returns false when something
    /// failed and should be retried.
    async fn apply<K: Kernel>(
        &mut self,
        own: &str,
        nodes: &NodeCache,
        rec: &mut Reconciler<K>,
        full: bool,
        status: &Arc<Status>,
        throttle: &mut Throttle,
    ) -> bool {
        let mut ok = true;
        let me = nodes.get(own).filter(|n| !n.pod_cidrs.is_empty());
        let cluster = self.cluster(nodes);

        // Conflist.
        match me {
            None => {
                let why = if nodes.get(own).is_none() {
                    format!("node {own} not found in the API server")
                } else {
                    format!("node {own} has no spec.podCIDRs")
                };
                status.set_conflist(Err(why));
                if self.waiting_since.is_none() {
                    self.waiting_since = Some(Instant::now());
                    self.last_hint = None;
                    self.hint(own, nodes);
                }
            }
            Some(me) => {
                self.waiting_since = None;
                let addr = me.primary_address();
                let mtu = match (self.mtu_flag, addr) {
                    (Some(m), _) => Some(m),
                    (None, None) => None,
                    (None, Some(a)) => match self.mtu {
                        Some((cached, m)) if cached == a && !full => m,
                        _ => {
                            let m = rec.kernel().mtu_for(a).await;
                            self.mtu = Some((a, m));
                            m
                        }
                    },
                };
                let text = self.template.render(&me.pod_cidrs, mtu);
                if full || self.written.as_deref() != Some(text.as_str()) {
                    match write_if_changed(&self.conf_dir, &self.conf_name, &text) {
                        Ok(wrote) => {
                            if wrote {
                                inc(&status.metrics.conflist_writes);
                                let cidrs: Vec<String> =
                                    me.pod_cidrs.iter().map(ToString::to_string).collect();
                                let mtu = mtu
                                    .map_or("the kernel's default".to_string(), |m| m.to_string());
                                info!(
                                    "conflist: wrote {} (pod CIDRs {}, MTU {mtu})",
                                    self.conf_dir.join(&self.conf_name).display(),
                                    cidrs.join(", ")
                                );
                            }
                            self.written = Some(text);
                            status.set_conflist(Ok(()));
                            throttle.clear("conflist");
                        }
                        Err(e) => {
                            ok = false;
                            let msg = format!(
                                "write {}: {e}",
                                self.conf_dir.join(&self.conf_name).display()
                            );
                            if throttle.allow("conflist").is_some() {
                                error!("conflist: {msg}");
                            }
                            // A conflist written before stays valid for the pods.
                            if self.written.is_none() {
                                status.set_conflist(Err(msg));
                            }
                        }
                    }
                }
            }
        }

        // Masquerade: this node's pods, to anything outside the cluster.
        let spec = MasqSpec {
            pods: me.map(|m| m.pod_cidrs.clone()).unwrap_or_default(),
            no_masq: cluster.iter().chain(&self.no_masq_flag).copied().collect(),
        };
        if full || self.masq.as_ref() != Some(&spec) {
            inc(&status.metrics.masquerade_updates);
            match masq::apply(&spec).await {
                Ok(()) => {
                    if self.masq.as_ref() != Some(&spec) {
                        let pods: Vec<String> = spec.pods.iter().map(ToString::to_string).collect();
                        info!(
                            "masquerade: table inet {} set for pods {} leaving {} cluster CIDRs",
                            masq::TABLE,
                            if pods.is_empty() {
                                "(none yet)".into()
                            } else {
                                pods.join(", ")
                            },
                            cluster.len()
                        );
                    }
                    self.masq = Some(spec);
                    throttle.clear("masq");
                }
                Err(e) => {
                    ok = false;
                    inc(&status.metrics.masquerade_errors);
                    if throttle.allow("masq").is_some() {
                        error!("masquerade: {e}; pods may not reach outside the cluster");
                    }
                }
            }
        }

        // FORWARD policy DROP (Docker) and forwarding, per family in use.
        if full || self.forward.as_ref() != Some(&cluster) {
            let mut fwd_ok = true;
            for fam in [forward::Family::V4, forward::Family::V6] {
                let cidrs: Vec<IpNetwork> = cluster
                    .iter()
                    .filter(|c| forward::Family::of(c) == fam)
                    .copied()
                    .collect();
                match forward::ensure(fam, &cidrs).await {
                    Ok(true) if self.forward.as_ref() != Some(&cluster) => info!(
                        "forward: the {fam:?} FORWARD policy is DROP: accepting the cluster's pod traffic in chain {}",
                        forward::CHAIN
                    ),
                    Ok(_) => {}
                    Err(e) => {
                        fwd_ok = false;
                        if throttle.allow(&format!("forward-{fam:?}")).is_some() {
                            error!("forward: {e}");
                        }
                    }
                }
            }
            if fwd_ok {
                self.forward = Some(cluster.clone());
            } else {
                ok = false;
            }
        }
        for v6 in [false, true] {
            let in_use = cluster.iter().any(|c| c.is_ipv6() == v6);
            if !in_use || (!full && self.forwarding.contains(&v6)) {
                continue;
            }
            let fam = if v6 {
                cni_net::netlink::Family::V6
            } else {
                cni_net::netlink::Family::V4
            };
            match sysctl::ensure_forwarding(fam) {
                Ok(wrote) => {
                    if wrote {
                        info!("forwarding: turned on {fam} forwarding");
                    }
                    self.forwarding.insert(v6);
                }
                Err(e) => {
                    ok = false;
                    if throttle.allow(&format!("forwarding-{v6}")).is_some() {
                        error!("forwarding: {e}");
                    }
                }
            }
        }
        if full {
            self.check_rp_filter(rec);
        }
        ok
    }

    /// Strict reverse-path filtering drops a packet that arrives on another interface
    /// than the route back to its source leaves by: with peers reached through several
    /// interfaces, pod traffic arriving asymmetrically would be lost. Reported, never
    /// changed (kube-router#138, PR#1791).
    fn check_rp_filter<K: Kernel>(&mut self, rec: &Reconciler<K>) {
        let oifs = rec.interfaces_in_use();
        let names: Vec<String> = oifs.iter().filter_map(|i| sysctl::ifname(*i)).collect();
        let strict: Vec<&String> = names
            .iter()
            .filter(|n| sysctl::rp_filter(n) == Some(1))
            .collect();
        let warning = (names.len() > 1 && !strict.is_empty()).then(|| {
            format!(
                "rp_filter: strict (1) on {} while other nodes are reached through {}: pod traffic \
                 arriving on a different interface than the route back would be dropped; consider \
                 rp_filter=2 (loose) on those interfaces",
                strict
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                names.join(", ")
            )
        });
        if warning != self.rp_warning {
            if let Some(w) = &warning {
                warn!("{w}");
            }
            self.rp_warning = warning;
        }
    }
}
