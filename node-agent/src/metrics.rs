//! Counters and gauges for `/metrics`, in the Prometheus text format. Plain atomics: the
//! agent is one process with one reconciler, so no registry crate is needed.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Metrics {
    pub routes_owned: AtomicU64,
    pub route_adds: AtomicU64,
    pub route_replaces: AtomicU64,
    pub route_deletes: AtomicU64,
    pub route_errors: AtomicU64,
    pub route_conflicts: AtomicU64,
    pub routes_skipped: AtomicU64,
    pub kernel_dumps: AtomicU64,
    pub nexthop_checks: AtomicU64,
    pub reconciles: AtomicU64,
    pub reconcile_seconds_sum_us: AtomicU64,
    pub reconcile_last_us: AtomicU64,
    pub reconcile_max_us: AtomicU64,
    pub watch_events: AtomicU64,
    pub watch_restarts: AtomicU64,
    pub watch_relists: AtomicU64,
    pub netlink_events: AtomicU64,
    pub masquerade_updates: AtomicU64,
    pub masquerade_errors: AtomicU64,
    pub conflist_writes: AtomicU64,
    pub nodes: AtomicU64,
}

pub fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

pub fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

pub fn set(c: &AtomicU64, n: u64) {
    c.store(n, Ordering::Relaxed);
}

impl Metrics {
    pub fn record_reconcile(&self, micros: u64) {
        inc(&self.reconciles);
        add(&self.reconcile_seconds_sum_us, micros);
        set(&self.reconcile_last_us, micros);
        self.reconcile_max_us.fetch_max(micros, Ordering::Relaxed);
    }

    pub fn render(&self, ready: bool) -> String {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let secs = |c: &AtomicU64| g(c) as f64 / 1e6;
        let mut out = String::new();
        let mut one = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(out, "# HELP cni_rs_node_{name} {help}");
            let _ = writeln!(out, "# TYPE cni_rs_node_{name} {kind}");
            let _ = writeln!(out, "cni_rs_node_{name} {value}");
        };
        one(
            "ready",
            "gauge",
            "1 when the conflist is written, the first reconcile done and the watch synced.",
            u64::from(ready).to_string(),
        );
        one(
            "nodes",
            "gauge",
            "Nodes in the watch cache.",
            g(&self.nodes).to_string(),
        );
        one(
            "routes_owned",
            "gauge",
            "Routes in the kernel with the agent's protocol number.",
            g(&self.routes_owned).to_string(),
        );
        one(
            "route_adds_total",
            "counter",
            "Routes added.",
            g(&self.route_adds).to_string(),
        );
        one(
            "route_replaces_total",
            "counter",
            "Routes replaced (next hop changed, or adopted).",
            g(&self.route_replaces).to_string(),
        );
        one(
            "route_deletes_total",
            "counter",
            "Routes deleted (node gone, CIDR changed, duplicates).",
            g(&self.route_deletes).to_string(),
        );
        one(
            "route_errors_total",
            "counter",
            "Route operations the kernel refused.",
            g(&self.route_errors).to_string(),
        );
        one(
            "route_conflicts",
            "gauge",
            "Wanted routes held by a route of another protocol.",
            g(&self.route_conflicts).to_string(),
        );
        one(
            "routes_skipped",
            "gauge",
            "Pod CIDRs of other nodes that get no route (no address, not on-link, duplicate).",
            g(&self.routes_skipped).to_string(),
        );
        one(
            "kernel_dumps_total",
            "counter",
            "Route table dumps.",
            g(&self.kernel_dumps).to_string(),
        );
        one(
            "nexthop_checks_total",
            "counter",
            "Next hops checked against the cached routing table (in memory, no kernel call).",
            g(&self.nexthop_checks).to_string(),
        );
        one(
            "reconciles_total",
            "counter",
            "Reconcile passes.",
            g(&self.reconciles).to_string(),
        );
        one(
            "reconcile_seconds_sum",
            "counter",
            "Time spent reconciling.",
            format!("{:.6}", secs(&self.reconcile_seconds_sum_us)),
        );
        one(
            "reconcile_last_seconds",
            "gauge",
            "Duration of the last reconcile.",
            format!("{:.6}", secs(&self.reconcile_last_us)),
        );
        one(
            "reconcile_max_seconds",
            "gauge",
            "Longest reconcile since start.",
            format!("{:.6}", secs(&self.reconcile_max_us)),
        );
        one(
            "watch_events_total",
            "counter",
            "Node watch events received.",
            g(&self.watch_events).to_string(),
        );
        one(
            "watch_restarts_total",
            "counter",
            "Node watch failures (the watch restarts after a backoff).",
            g(&self.watch_restarts).to_string(),
        );
        one(
            "watch_relists_total",
            "counter",
            "Full Node lists (start, and after a 410 expiry).",
            g(&self.watch_relists).to_string(),
        );
        one(
            "netlink_events_total",
            "counter",
            "Route, link and address notifications received.",
            g(&self.netlink_events).to_string(),
        );
        one(
            "masquerade_updates_total",
            "counter",
            "Masquerade rule set transactions.",
            g(&self.masquerade_updates).to_string(),
        );
        one(
            "masquerade_errors_total",
            "counter",
            "Masquerade transactions that failed.",
            g(&self.masquerade_errors).to_string(),
        );
        one(
            "conflist_writes_total",
            "counter",
            "Times the conflist was (re)written.",
            g(&self.conflist_writes).to_string(),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        inc(&m.route_adds);
        m.record_reconcile(1500);
        let text = m.render(true);
        assert!(text.contains(
            "# TYPE cni_rs_node_route_adds_total counter\ncni_rs_node_route_adds_total 1\n"
        ));
        assert!(text.contains("cni_rs_node_reconcile_last_seconds 0.001500\n"));
        assert!(text.contains("cni_rs_node_ready 1\n"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = line.split_once(' ').unwrap();
            assert!(name.starts_with("cni_rs_node_"), "{line}");
            value.parse::<f64>().unwrap();
        }
    }
}
