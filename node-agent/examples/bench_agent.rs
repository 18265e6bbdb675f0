//! The node agent's benchmark (run by scripts/bench-agent.sh, inside a network namespace
//! it prepared: `eth0` with 10.0.0.1/16, the simulated on-link network of the nodes).
//!
//! An embedded stand-in API server holds N Nodes (node-1 is us, node-i has 10.0.0.i,
//! pod CIDRs /24s of 10.128.0.0/10); the agent binary runs against it. Measured: start
//! to all routes installed, Node event to route change (from the API write to the
//! kernel's route notification), kernel operations per event (the agent's own
//! counters), RSS, bytes the API server sent, requests over an idle period (no
//! periodic re-list); and, for the full-pass model kindnetd uses, the cost of one pass
//! over every node (a route replace each) and what a 10 s period means for latency.
//!
//! usage: bench_agent AGENT_BINARY [NODES] [EVENTS]

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cni_rs_node::netlink::{Kernel, KernelEvent, Rtnl, monitor};
use cni_rs_node::routes::RouteOp;
use futures::FutureExt;
use ipnetwork::IpNetwork;
use kube_standin::{Control, Generate, NodeBuilder, Standin, Verb, generate};

const PROTO: u8 = 61;
const POD_RANGE: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 128, 0, 0), 10);
const FULL_PASS_PERIOD: Duration = Duration::from_secs(10);
const IDLE: Duration = Duration::from_secs(10);

fn metrics(port: u16) -> HashMap<String, f64> {
    use std::io::{Read, Write};
    let mut out = HashMap::new();
    let Ok(mut c) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return out;
    };
    let _ = write!(c, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut s = String::new();
    let _ = c.read_to_string(&mut s);
    for line in s.lines().filter(|l| l.starts_with("cni_rs_node_")) {
        if let Some((k, v)) = line.split_once(' ')
            && let Ok(v) = v.trim().parse()
        {
            out.insert(k.trim_start_matches("cni_rs_node_").to_owned(), v);
        }
    }
    out
}

fn status_kib(pid: u32, key: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find_map(|l| {
            l.strip_prefix(key)?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

fn cpu_ms(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = text.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<u64> = after
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    // utime, stime are fields 14 and 15 (1-based) of stat: 11 and 12 after the comm.
    let ticks = f.get(10).copied().unwrap_or(0) + f.get(11).copied().unwrap_or(0);
    ticks * 1000 / 100
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let agent = args
        .next()
        .expect("usage: bench_agent AGENT_BINARY [NODES] [EVENTS]");
    let count: usize = args.next().map_or(5000, |n| n.parse().expect("NODES"));
    let events: usize = args.next().map_or(200, |n| n.parse().expect("EVENTS"));
    let health_port = 9650;

    let g = Generate {
        count,
        pod_ranges: vec![(IpAddr::V4(POD_RANGE.0), POD_RANGE.1)],
        ..Generate::default()
    };
    let nodes = generate(&g).expect("generate Nodes");
    let api = Standin::start().expect("stand-in");
    api.upsert_all(&nodes).expect("upsert");
    let dir = std::env::temp_dir().join(format!("cnit-{}-bench-agent", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    api.write_kubeconfig(dir.join("kubeconfig")).unwrap();

    let mut kernel_events = monitor().expect("route notifications");
    let t0 = Instant::now();
    let mut child = Command::new(&agent)
        .args(["--node-name", "node-1", "--kubeconfig"])
        .arg(dir.join("kubeconfig"))
        .arg("--cni-conf-dir")
        .arg(dir.join("net.d"))
        .args(["--health-addr", &format!("127.0.0.1:{health_port}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("agent.log")).unwrap())
        .spawn()
        .expect("start the agent");
    let pid = child.id();

    // Start: every route in the kernel (counted from the kernel's own notifications).
    let want = count - 1;
    let mut installed = std::collections::HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while installed.len() < want && Instant::now() < deadline {
        if let Ok(Some(KernelEvent::Route { route, added: true })) =
            tokio::time::timeout(Duration::from_secs(1), kernel_events.recv()).await
            && route.protocol == PROTO
        {
            installed.insert(route.dst);
        }
    }
    let start = t0.elapsed();
    assert_eq!(
        installed.len(),
        want,
        "not every route appeared; see {}",
        dir.join("agent.log").display()
    );
    while metrics(health_port).get("ready") != Some(&1.0) && t0.elapsed() < Duration::from_secs(120)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ready = t0.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    while kernel_events.recv().now_or_never().flatten().is_some() {}
    let rss_start = status_kib(pid, "VmRSS:");
    let bytes_start = api.bytes_served().unwrap();
    let cpu_start = cpu_ms(pid);
    let m0 = metrics(health_port);

    // Events: a node renumbered (new InternalIP on the /16) → its route replaced.
    let mut lat = Vec::with_capacity(events);
    for k in 0..events {
        let i = 2 + (k * 7919) % (count - 1);
        let name = format!("node-{i}");
        let mut node = api.node(&name).expect("node");
        let cidr: IpNetwork = node
            .spec
            .as_ref()
            .unwrap()
            .pod_cidr
            .as_ref()
            .unwrap()
            .parse()
            .unwrap();
        let new_ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 0, 128, 0)) + k as u32 + 1);
        let b = NodeBuilder::new(name)
            .pod_cidr(cidr.to_string())
            .internal_ip(new_ip);
        node = b.build();
        while kernel_events.recv().now_or_never().flatten().is_some() {}
        let t = Instant::now();
        api.upsert(&node).unwrap();
        loop {
            match tokio::time::timeout(Duration::from_secs(10), kernel_events.recv()).await {
                Ok(Some(KernelEvent::Route { route, added: true }))
                    if route.protocol == PROTO
                        && route.dst == cidr
                        && route.gw == Some(IpAddr::V4(new_ip)) =>
                {
                    lat.push(t.elapsed());
                    break;
                }
                Ok(Some(_)) => {}
                _ => panic!("no route change for event {k}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let m1 = metrics(health_port);
    let cpu_events = cpu_ms(pid) - cpu_start;
    let bytes_events = api.bytes_served().unwrap() - bytes_start;

    // Idle: no requests but the open watch, no kernel work.
    api.clear_requests().unwrap();
    let cpu_idle0 = cpu_ms(pid);
    tokio::time::sleep(IDLE).await;
    let idle_requests = api.requests().unwrap();
    let idle_lists = idle_requests
        .iter()
        .filter(|r| r.verb == Some(Verb::List))
        .count();
    let m2 = metrics(health_port);
    let cpu_idle = cpu_ms(pid) - cpu_idle0;
    let rss = status_kib(pid, "VmRSS:");
    let hwm = status_kib(pid, "VmHWM:");
    let bytes_total = api.bytes_served().unwrap();

    // SIGTERM, then the full-pass model on the same kernel: one replace per node.
    // SAFETY: our own child, not reaped yet.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let _ = child.wait();
    let mut rtnl = Rtnl::open().unwrap();
    let ours: Vec<RouteOp> = rtnl
        .dump_routes()
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.protocol == PROTO)
        .filter_map(|r| {
            Some(RouteOp::Replace {
                dst: r.dst,
                gw: r.gw?,
                priority: r.priority,
            })
        })
        .collect();
    let mut pass = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        for r in rtnl.apply(PROTO, &ours).await {
            r.unwrap();
        }
        pass.push(t.elapsed());
    }
    pass.sort();
    let pass_t = pct(&pass, 0.5);
    // Cleanup of the namespace's routes is the namespace's deletion (bench-agent.sh).
    let _ = std::fs::remove_dir_all(&dir);

    lat.sort();
    let d = |k: &str| m1.get(k).unwrap_or(&0.0) - m0.get(k).unwrap_or(&0.0);
    let ops = d("route_adds_total") + d("route_replaces_total") + d("route_deletes_total");
    let per = |x: f64| x / events as f64;
    let idle_ops = [
        "route_adds_total",
        "route_replaces_total",
        "route_deletes_total",
        "kernel_dumps_total",
    ]
    .iter()
    .map(|k| m2.get(*k).unwrap_or(&0.0) - m1.get(*k).unwrap_or(&0.0))
    .sum::<f64>();
    let period = FULL_PASS_PERIOD.as_secs_f64();
    println!(
        "| | cni-rs-node (event-driven) | full-pass model (kindnetd: every node every {period:.0} s) |"
    );
    println!("|---|---|---|");
    println!("| nodes | {count} | {count} |");
    println!(
        "| start → all {want} routes installed | {} (ready: {}) | one pass: {} |",
        ms(start),
        ms(ready),
        ms(pass_t)
    );
    println!(
        "| Node event → route change, p50 / p99 / max ({events} renumbers) | {} / {} / {} | ~{:.1} s / ~{:.1} s (wait for the next pass + its share of a {} pass) |",
        ms(pct(&lat, 0.5)),
        ms(pct(&lat, 0.99)),
        ms(pct(&lat, 1.0)),
        period * 0.5 + pass_t.as_secs_f64() / 2.0,
        period * 0.99 + pass_t.as_secs_f64(),
        ms(pass_t)
    );
    println!(
        "| kernel operations per event | {:.2} route ops + {:.2} dumps (and {:.2} next-hop checks in memory) | {} route ops per pass, {} per minute, events or not |",
        per(ops),
        per(d("kernel_dumps_total")),
        per(d("nexthop_checks_total")),
        want,
        want as f64 * 60.0 / period
    );
    println!("| agent CPU for the {events} events | {cpu_events} ms | |");
    println!(
        "| idle {:.0} s: API requests / lists / kernel ops / CPU | {} / {idle_lists} / {idle_ops} / {cpu_idle} ms | — / — / {:.0} / |",
        IDLE.as_secs_f64(),
        idle_requests.len(),
        want as f64 * IDLE.as_secs_f64() / period
    );
    println!(
        "| RSS after start / at the end / peak | {:.1} / {:.1} / {:.1} MiB | |",
        rss_start as f64 / 1024.0,
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    println!(
        "| bytes from the API server: start (list) / per event / total | {:.1} MiB / {:.0} B / {:.1} MiB | |",
        bytes_start as f64 / 1048576.0,
        bytes_events as f64 / events as f64,
        bytes_total as f64 / 1048576.0
    );
}
