//! The route reconciler: level-triggered. Every pass computes the wanted routes from the
//! whole Node cache and diffs them against what the kernel has, so a Node deleted while
//! the agent was down, a route deleted by hand or flushed by a link flap, and a
//! renumbered node all come out right, whatever events were missed.
//!
//! What the kernel has is cached: a dump at start, after a link or address change, after
//! lost notifications, after a failed operation and on every resync; in between the
//! cache follows the kernel's route notifications. A Node event therefore costs the
//! operations its change needs and nothing else: no dump, no lookups of unchanged next
//! hops.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use ipnetwork::IpNetwork;

use crate::health::Status;
use crate::metrics::{add, inc, set};
use crate::netlink::{Kernel, KernelEvent};
use crate::node::NodeView;
use crate::routes::{self, KernelRoute, Reach, RouteOp};
use crate::{info, warn};

/// Past this many operations in one pass, the log gets a summary instead of a line each.
const LOG_EACH_UP_TO: usize = 16;

fn metric(r: &KernelRoute) -> u32 {
    r.metric()
}

type ByDst = BTreeMap<IpNetwork, Vec<KernelRoute>>;

fn insert(map: &mut ByDst, r: KernelRoute) -> bool {
    let list = map.entry(r.dst).or_default();
    match list.iter_mut().find(|x| metric(x) == metric(&r)) {
        // The same route, maybe with details the cache lacked (the kernel's echo of
        // our own add names the interface).
        Some(x) if x.gw == r.gw && x.protocol == r.protocol => {
            *x = r;
            false
        }
        Some(x) => {
            *x = r;
            true
        }
        None => {
            list.push(r);
            true
        }
    }
}

fn remove(map: &mut ByDst, dst: IpNetwork, metric_of: u32) -> bool {
    let Some(list) = map.get_mut(&dst) else {
        return false;
    };
    let before = list.len();
    list.retain(|x| metric(x) != metric_of);
    let changed = list.len() != before;
    if list.is_empty() {
        map.remove(&dst);
    }
    changed
}

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub ops: usize,
    pub failed: usize,
    pub dumped: bool,
    pub lookups: usize,
}

pub struct Reconciler<K> {
    kernel: K,
    own: String,
    proto: u8,
    adopt: bool,
    ours: ByDst,
    foreign: ByDst,
    routes_stale: bool,
    reach: HashMap<IpAddr, Reach>,
    reach_stale: bool,
    reported: BTreeSet<String>,
    status: Arc<Status>,
}

impl<K: Kernel> Reconciler<K> {
    pub fn new(kernel: K, own: &str, proto: u8, adopt: bool, status: Arc<Status>) -> Self {
        Reconciler {
            kernel,
            own: own.to_owned(),
            proto,
            adopt,
            ours: ByDst::new(),
            foreign: ByDst::new(),
            routes_stale: true,
            reach: HashMap::new(),
            reach_stale: true,
            reported: BTreeSet::new(),
            status,
        }
    }

    pub fn kernel(&mut self) -> &mut K {
        &mut self.kernel
    }

    /// Forget the caches: the next pass re-reads the kernel (resync).
    pub fn invalidate(&mut self) {
        self.routes_stale = true;
        self.reach_stale = true;
    }

    /// Takes in a kernel notification; returns whether a pass is needed because of it.
    /// Our own changes come back as notifications too and change nothing here.
    pub fn note(&mut self, ev: KernelEvent) -> bool {
        inc(&self.status.metrics.netlink_events);
        match ev {
            KernelEvent::Route { route, added } => {
                let mine = route.protocol == self.proto;
                if !mine && self.reach.keys().any(|gw| route.dst.contains(*gw)) {
                    // A connected route or a default route may have changed how a next
                    // hop is reached. (The link-local routes of every pod's veth cover
                    // no next hop and cost nothing.)
                    self.reach_stale = true;
                }
                let map = if mine {
                    &mut self.ours
                } else {
                    &mut self.foreign
                };
                let m = metric(&route);
                let changed = if added {
                    insert(map, route)
                } else {
                    remove(map, route.dst, m)
                };
                changed || !mine
            }
            KernelEvent::Link { index, up } => {
                let used = self
                    .ours
                    .values()
                    .chain(self.foreign.values())
                    .flatten()
                    .any(|r| r.oif == Some(index));
                if !up && used {
                    // IPv4 drops the routes of a downed link without a notification.
                    self.invalidate();
                }
                // A link coming up brings its connected routes back (notified); a new
                // pod's veth concerns no route of ours.
                used
            }
            KernelEvent::Address { gone } => {
                if gone.is_some() {
                    // IPv4 drops, without a notification, every route that used a
                    // removed address as its source and, with the link's last
                    // address, every route through the link: the cache cannot be
                    // trusted, so the pass re-dumps.
                    self.invalidate();
                }
                // A new address's connected route is notified on its own, and that
                // notification re-checks the next hops it covers.
                true
            }
            KernelEvent::Overrun => {
                self.invalidate();
                true
            }
        }
    }

    /// One pass for the Nodes in `nodes` (the whole cache, this node included).
    pub async fn reconcile<'a>(
        &mut self,
        nodes: impl IntoIterator<Item = &'a NodeView>,
    ) -> Outcome {
        let start = Instant::now();
        let mut out = Outcome::default();
        if self.routes_stale {
            match self.kernel.dump_routes().await {
                Ok(all) => {
                    self.ours.clear();
                    self.foreign.clear();
                    for r in all {
                        let map = if r.protocol == self.proto {
                            &mut self.ours
                        } else {
                            &mut self.foreign
                        };
                        insert(map, r);
                    }
                    self.routes_stale = false;
                    out.dumped = true;
                    inc(&self.status.metrics.kernel_dumps);
                }
                Err(e) => {
                    warn!("routes: {e}; keeping everything as it is, retrying");
                    out.failed += 1;
                    return out;
                }
            }
        }
        if self.reach_stale {
            self.reach.clear();
            self.reach_stale = false;
        }

        let mut desired = routes::desired(&self.own, nodes);
        for w in desired.routes.values() {
            if !self.reach.contains_key(&w.gw) {
                let r = routes::reach(w.gw, self.foreign.values().flatten());
                self.reach.insert(w.gw, r);
                out.lookups += 1;
            }
        }
        add(&self.status.metrics.nexthop_checks, out.lookups as u64);
        routes::keep_on_link(&mut desired, &self.reach);

        let plan = routes::plan(&desired.routes, &self.ours, &self.foreign, self.adopt);
        let results = self.kernel.apply(self.proto, &plan.ops).await;
        out.ops = plan.ops.len();
        let status = self.status.clone();
        let m = &status.metrics;
        let mut counts = [0usize; 3];
        for (op, res) in plan.ops.iter().zip(results) {
            match res {
                Ok(()) => {
                    let i = match op {
                        RouteOp::Add { .. } => 0,
                        RouteOp::Replace { .. } => 1,
                        RouteOp::Delete(_) => 2,
                    };
                    counts[i] += 1;
                    inc([&m.route_adds, &m.route_replaces, &m.route_deletes][i]);
                    if plan.ops.len() <= LOG_EACH_UP_TO {
                        match op {
                            RouteOp::Delete(_) => info!("route: {op}"),
                            _ => info!("route: {op} proto {}", self.proto),
                        }
                    }
                    self.record(op);
                }
                Err(e) => {
                    out.failed += 1;
                    inc(&m.route_errors);
                    warn!("route: {e}");
                    // Something we did not expect is there (or is missing): re-read.
                    self.routes_stale = true;
                }
            }
        }
        if plan.ops.len() > LOG_EACH_UP_TO {
            info!(
                "routes: {} added, {} replaced, {} deleted (proto {}), {} failed",
                counts[0], counts[1], counts[2], self.proto, out.failed
            );
        }
        self.report(&desired.skipped, &plan.conflicts);
        set(
            &m.routes_owned,
            self.ours.values().map(Vec::len).sum::<usize>() as u64,
        );
        set(&m.route_conflicts, plan.conflicts.len() as u64);
        set(&m.routes_skipped, desired.skipped.len() as u64);
        m.record_reconcile(start.elapsed().as_micros() as u64);
        out
    }

    /// The interfaces the wanted routes leave through (as last looked up).
    pub fn interfaces_in_use(&self) -> BTreeSet<u32> {
        self.reach
            .values()
            .filter_map(|r| match r {
                Reach::OnLink { oif } => Some(*oif),
                Reach::No(_) => None,
            })
            .collect()
    }

    /// Updates the cache after an operation the kernel accepted (its notification,
    /// when it comes, then changes nothing).
    fn record(&mut self, op: &RouteOp) {
        let route = |dst, gw, priority| KernelRoute {
            dst,
            gw: Some(gw),
            protocol: self.proto,
            priority,
            oif: None,
            unicast: true,
        };
        match op {
            RouteOp::Add { dst, gw } => {
                insert(&mut self.ours, route(*dst, *gw, None));
            }
            RouteOp::Replace { dst, gw, priority } => {
                let r = route(*dst, *gw, *priority);
                remove(&mut self.foreign, *dst, metric(&r));
                insert(&mut self.ours, r);
            }
            RouteOp::Delete(r) => {
                remove(&mut self.ours, r.dst, metric(r));
            }
        }
    }

    /// Logs conflicts and skipped pod CIDRs when they appear and when they clear.
    fn report(&mut self, skipped: &[routes::Skip], conflicts: &[routes::Conflict]) {
        let now: BTreeSet<String> = skipped
            .iter()
            .map(ToString::to_string)
            .chain(conflicts.iter().map(ToString::to_string))
            .collect();
        for line in now.difference(&self.reported) {
            warn!("{line}");
        }
        for line in self.reported.difference(&now) {
            info!("resolved: {line}");
        }
        self.reported = now;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::time::Duration;

    /// The kernel as a list of routes; records every call.
    #[derive(Default)]
    pub struct Fake {
        pub routes: Vec<KernelRoute>,
        pub calls: Vec<String>,
        pub fail: bool,
    }

    impl Fake {
        /// A node on 10.0.0.0/24 and fd00::/64 (interface 2), default route via 10.0.0.254.
        fn node(mut routes: Vec<KernelRoute>) -> Fake {
            let connected = |dst: &str| KernelRoute {
                gw: None,
                ..kr(dst, "0.0.0.0", 2)
            };
            routes.extend([
                connected("10.0.0.0/24"),
                connected("fd00::/64"),
                kr("0.0.0.0/0", "10.0.0.254", 3),
            ]);
            Fake {
                routes,
                ..Fake::default()
            }
        }
    }

    impl Kernel for Fake {
        async fn dump_routes(&mut self) -> Result<Vec<KernelRoute>, crate::netlink::KernelError> {
            self.calls.push("dump".into());
            Ok(self.routes.clone())
        }
        async fn apply(
            &mut self,
            proto: u8,
            ops: &[RouteOp],
        ) -> Vec<Result<(), crate::netlink::KernelError>> {
            ops.iter()
                .map(|op| {
                    self.calls.push(op.to_string());
                    if self.fail {
                        return Err(crate::netlink::KernelError {
                            op: op.to_string(),
                            msg: "File exists".into(),
                            errno: Some(17),
                        });
                    }
                    match op {
                        RouteOp::Add { dst, gw } | RouteOp::Replace { dst, gw, .. } => {
                            self.routes.retain(|r| r.dst != *dst);
                            self.routes.push(KernelRoute {
                                dst: *dst,
                                gw: Some(*gw),
                                protocol: proto,
                                priority: None,
                                oif: Some(2),
                                unicast: true,
                            });
                        }
                        RouteOp::Delete(k) => self
                            .routes
                            .retain(|r| !(r.dst == k.dst && r.protocol == proto)),
                    }
                    Ok(())
                })
                .collect()
        }
        async fn mtu_for(&mut self, _: IpAddr) -> Option<u32> {
            Some(1500)
        }
    }

    fn view(name: &str, cidrs: &[&str], ips: &[&str]) -> NodeView {
        NodeView {
            name: name.into(),
            pod_cidrs: cidrs.iter().map(|c| c.parse().unwrap()).collect(),
            bad_cidrs: vec![],
            internal_ips: ips.iter().map(|i| i.parse().unwrap()).collect(),
            external_ips: vec![],
        }
    }

    fn kr(dst: &str, gw: &str, proto: u8) -> KernelRoute {
        KernelRoute {
            dst: dst.parse().unwrap(),
            gw: Some(gw.parse().unwrap()),
            protocol: proto,
            priority: None,
            oif: Some(2),
            unicast: true,
        }
    }

    fn cluster() -> Vec<NodeView> {
        vec![
            view("n1", &["10.244.1.0/24"], &["10.0.0.1"]),
            view(
                "n2",
                &["10.244.2.0/24", "fd00:2::/64"],
                &["10.0.0.2", "fd00::2"],
            ),
            view("n3", &["10.244.3.0/24"], &["10.0.0.3"]),
        ]
    }

    fn reconciler(kernel: Fake) -> Reconciler<Fake> {
        Reconciler::new(
            kernel,
            "n1",
            61,
            false,
            Status::new(Duration::from_secs(60)),
        )
    }

    async fn pass(r: &mut Reconciler<Fake>, nodes: &[NodeView]) -> Vec<String> {
        r.kernel.calls.clear();
        r.reconcile(nodes).await;
        std::mem::take(&mut r.kernel.calls)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn first_pass_dumps_looks_up_and_adds() {
        let mut r = reconciler(Fake::node(vec![]));
        let calls = pass(&mut r, &cluster()).await;
        assert_eq!(
            calls,
            [
                "dump",
                "add 10.244.2.0/24 via 10.0.0.2",
                "add 10.244.3.0/24 via 10.0.0.3",
                "add fd00:2::/64 via fd00::2",
            ]
        );
        // Nothing changed: no kernel call at all.
        assert!(pass(&mut r, &cluster()).await.is_empty());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn one_node_event_costs_one_operation() {
        let mut r = reconciler(Fake::node(vec![]));
        pass(&mut r, &cluster()).await;
        let mut nodes = cluster();
        nodes[2].internal_ips = vec!["10.0.0.33".parse().unwrap()];
        assert_eq!(
            pass(&mut r, &nodes).await,
            ["replace 10.244.3.0/24 via 10.0.0.33"]
        );
        nodes.remove(2);
        assert_eq!(
            pass(&mut r, &nodes).await,
            ["delete 10.244.3.0/24 via 10.0.0.33 proto 61"]
        );
        nodes.push(view("n4", &["10.244.4.0/24"], &["10.0.0.2"]));
        assert_eq!(
            pass(&mut r, &nodes).await,
            ["add 10.244.4.0/24 via 10.0.0.2"]
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn stale_routes_of_nodes_gone_while_down_are_removed_and_foreign_kept() {
        let kernel = Fake::node(vec![
            kr("10.244.9.0/24", "10.0.0.9", 61), // a node deleted while we were down
            kr("10.244.3.0/24", "10.0.0.3", 61), // still right
            kr("192.168.5.0/24", "10.0.0.254", 3), // someone else's
            kr("10.244.2.0/24", "10.0.0.2", 3),  // by hand, to a pod CIDR
        ]);
        let mut r = reconciler(kernel);
        let calls = pass(&mut r, &cluster()).await;
        assert!(
            calls.contains(&"delete 10.244.9.0/24 via 10.0.0.9 dev #2 proto 61".to_string()),
            "{calls:?}"
        );
        assert!(
            !calls.iter().any(|c| c.contains("10.244.2.0/24")),
            "conflict left alone: {calls:?}"
        );
        assert!(
            !calls
                .iter()
                .any(|c| c.contains("192.168.5.0") || c.contains("10.244.3.0")),
            "{calls:?}"
        );
        assert_eq!(
            r.status
                .metrics
                .route_conflicts
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn notifications_keep_the_cache_without_dumps() {
        let mut r = reconciler(Fake::node(vec![]));
        pass(&mut r, &cluster()).await;
        // Our own add, echoed: nothing to do.
        assert!(!r.note(KernelEvent::Route {
            route: kr("10.244.3.0/24", "10.0.0.3", 61),
            added: true
        }));
        // Deleted by hand: re-added with one operation, no dump.
        assert!(r.note(KernelEvent::Route {
            route: kr("10.244.3.0/24", "10.0.0.3", 61),
            added: false
        }));
        r.kernel
            .routes
            .retain(|x| x.dst.to_string() != "10.244.3.0/24");
        assert_eq!(
            pass(&mut r, &cluster()).await,
            ["add 10.244.3.0/24 via 10.0.0.3"]
        );
        // A link flap: everything re-read, the missing route restored.
        r.kernel.routes.retain(|x| x.protocol != 61);
        assert!(
            !r.note(KernelEvent::Link {
                index: 7,
                up: false
            }),
            "a pod's veth: nothing to do"
        );
        assert!(r.note(KernelEvent::Link {
            index: 2,
            up: false
        }));
        let calls = pass(&mut r, &cluster()).await;
        assert_eq!(calls[0], "dump");
        assert_eq!(
            calls.iter().filter(|c| c.starts_with("add")).count(),
            3,
            "{calls:?}"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_removed_address_re_reads_the_routes_ipv4_flushed_silently() {
        let mut r = reconciler(Fake::node(vec![]));
        pass(&mut r, &cluster()).await;
        // The node is renumbered: IPv4 drops the routes through the link with its last
        // address and sends no RTM_DELROUTE for them.
        r.kernel
            .routes
            .retain(|x| !(x.protocol == 61 && x.dst.is_ipv4()));
        assert!(r.note(KernelEvent::Address {
            gone: Some("10.0.0.1".parse().unwrap())
        }));
        let calls = pass(&mut r, &cluster()).await;
        assert_eq!(
            calls,
            [
                "dump",
                "add 10.244.2.0/24 via 10.0.0.2",
                "add 10.244.3.0/24 via 10.0.0.3",
            ]
        );
        // A link-local address of a new pod's veth (reported as `gone: None` when it
        // comes): no dump.
        assert!(r.note(KernelEvent::Address { gone: None }));
        assert!(pass(&mut r, &cluster()).await.is_empty());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn off_link_next_hops_get_no_route() {
        let kernel = Fake::node(vec![kr("10.244.3.0/24", "192.168.7.3", 61)]);
        let mut r = reconciler(kernel);
        let mut nodes = cluster();
        nodes[2].internal_ips = vec!["192.168.7.3".parse().unwrap()];
        let calls = pass(&mut r, &nodes).await;
        assert!(
            calls.contains(&"delete 10.244.3.0/24 via 192.168.7.3 dev #2 proto 61".to_string()),
            "{calls:?}"
        );
        assert_eq!(
            r.status
                .metrics
                .routes_skipped
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        assert!(!calls.iter().any(|c| c.starts_with("add 10.244.3")));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_failed_operation_makes_the_next_pass_re_read() {
        let mut r = reconciler(Fake {
            fail: true,
            ..Fake::node(vec![])
        });
        let out = r.reconcile(&cluster()).await;
        assert_eq!(out.failed, 3);
        r.kernel.fail = false;
        let calls = pass(&mut r, &cluster()).await;
        assert_eq!(calls[0], "dump");
        assert_eq!(calls.len(), 4);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn adopting_takes_over_a_hand_made_route() {
        let kernel = Fake::node(vec![kr("10.244.2.0/24", "10.0.0.2", 3)]);
        let mut r = Reconciler::new(kernel, "n1", 61, true, Status::new(Duration::from_secs(60)));
        let calls = pass(&mut r, &cluster()).await;
        assert!(
            calls.contains(&"replace 10.244.2.0/24 via 10.0.0.2".to_string()),
            "{calls:?}"
        );
        assert!(pass(&mut r, &cluster()).await.is_empty());
    }
}
