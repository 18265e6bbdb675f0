//! A simulated cluster on one machine, made of network namespaces the test owns: an
//! underlay `lan` namespace with a bridge (the nodes' L2 network) where the stand-in API
//! server listens, and per node a namespace on that bridge running its own
//! `cni-rs-node` process with its own conf dir and CNI state, and pods added through a
//! real CNI runtime (cnitool, else scripts/cni-runtime.sh) with the conflist that node's
//! agent wrote. Everything goes when the [`Cluster`] drops, also when a test fails.

#![allow(dead_code)]

use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cni_tests::{Netns, TempDir, bin_dir, workspace_root};
use kube_standin::{Control, NodeBuilder, RemoteStandin, StandinProcess};
use serde_json::Value;

pub const API: &str = "10.210.0.254";
pub const API_V6: &str = "fd00:210::254";
pub const API_PORT: u16 = 6443;
pub const PROTO: &str = "61";
/// The uplink MTU of every node: the conflist must carry it.
pub const NODE_MTU: u32 = 1400;
const HEALTH: &str = "127.0.0.1:9650";
const K8S_ARGS: &str =
    "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;K8S_POD_INFRA_CONTAINER_ID=x";

/// Node `i`'s address on the underlay.
pub fn node_ip(i: u8) -> String {
    format!("10.210.0.{i}")
}
pub fn node_ip6(i: u8) -> String {
    format!("fd00:210::{i}")
}
pub fn pod_cidr(i: u8) -> String {
    format!("10.244.{i}.0/24")
}
pub fn pod_cidr6(i: u8) -> String {
    format!("fd00:10:244:{i}::/64")
}

/// Polls `cond` until it holds or `limit` passes. The limit only keeps a broken test
/// from hanging; nothing is judged by how long it took.
pub fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// What a Node looks like in the API server.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub name: String,
    pub index: u8,
    pub cidrs: Vec<String>,
    pub ips: Vec<String>,
}

impl NodeSpec {
    /// Node `n<i>`, dual-stack, IPv4 first.
    pub fn dual(i: u8) -> NodeSpec {
        NodeSpec {
            name: format!("n{i}"),
            index: i,
            cidrs: vec![pod_cidr(i), pod_cidr6(i)],
            ips: vec![node_ip(i), node_ip6(i)],
        }
    }
    pub fn v4(i: u8) -> NodeSpec {
        NodeSpec {
            cidrs: vec![pod_cidr(i)],
            ips: vec![node_ip(i)],
            ..NodeSpec::dual(i)
        }
    }
    /// Dual-stack, IPv6 first (the pods' primary address is IPv6).
    pub fn v6_first(i: u8) -> NodeSpec {
        NodeSpec {
            cidrs: vec![pod_cidr6(i), pod_cidr(i)],
            ..NodeSpec::dual(i)
        }
    }
    pub fn without_cidrs(mut self) -> NodeSpec {
        self.cidrs.clear();
        self
    }
    pub fn node(&self) -> k8s_openapi::api::core::v1::Node {
        let mut b = NodeBuilder::new(self.name.clone()).pod_cidrs(self.cidrs.clone());
        for ip in &self.ips {
            b = b.internal_ip(ip);
        }
        b.build()
    }
}

/// A running agent; killed on drop, its stderr in a file.
pub struct Agent {
    child: Option<Child>,
    pub log: PathBuf,
}

impl Agent {
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGTERM, then waits; returns whether it exited cleanly.
    pub fn terminate(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return false;
        };
        // SAFETY: signalling a child of ours that we have not reaped yet.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    pub fn running(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A pod: its namespace and the addresses its ADD returned, primary first.
pub struct Pod {
    pub ns: Netns,
    pub ips: Vec<IpAddr>,
}

impl Pod {
    pub fn v4(&self) -> IpAddr {
        *self
            .ips
            .iter()
            .find(|i| i.is_ipv4())
            .expect("an IPv4 address")
    }
    pub fn v6(&self) -> IpAddr {
        *self
            .ips
            .iter()
            .find(|i| i.is_ipv6())
            .expect("an IPv6 address")
    }
}

/// One simulated node. Fields drop in order: the agent first, then pods, then the
/// node's namespace.
pub struct SimNode {
    pub agent: Option<Agent>,
    pub pods: Vec<Pod>,
    pub spec: NodeSpec,
    pub ns: Netns,
    pub conf: TempDir,
    pub state: TempDir,
    pub args: Vec<String>,
    /// Extra environment of the agent (`CNI_RS_*` flags).
    pub env: Vec<(String, String)>,
    /// A kubeconfig of its own instead of the cluster's.
    pub kubeconfig: Option<PathBuf>,
    logs: TempDir,
    starts: u32,
}

impl SimNode {
    pub fn conflist_path(&self) -> PathBuf {
        self.conf.join("10-cni-rs.conflist")
    }

    pub fn conflist(&self) -> Option<Value> {
        let text = std::fs::read_to_string(self.conflist_path()).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// `ip route show proto 61` for both families, sorted, as `dst via gw` lines.
    pub fn routes(&self) -> Vec<String> {
        let mut out = Vec::new();
        for fam in ["-4", "-6"] {
            let text = self.ns.ip([fam, "route", "show", "proto", PROTO]);
            for line in text.lines() {
                let w: Vec<&str> = line.split_whitespace().collect();
                if let Some(i) = w.iter().position(|x| *x == "via") {
                    out.push(format!("{} via {}", w[0], w[i + 1]));
                } else {
                    out.push(w.first().unwrap_or(&"").to_string());
                }
            }
        }
        out.sort();
        out
    }

    /// Every route to `dst` in the main table, any protocol, as `ip route` prints them.
    pub fn routes_to(&self, dst: &str) -> String {
        let fam = if dst.contains(':') { "-6" } else { "-4" };
        self.ns.ip([fam, "route", "show", "exact", dst])
    }

    pub fn agent(&mut self) -> &mut Agent {
        self.agent.as_mut().expect("the agent is running")
    }

    pub fn log(&self) -> String {
        self.agent.as_ref().map(Agent::output).unwrap_or_default()
    }

    /// GET on the agent's health endpoint: (status code, body).
    pub fn http(&self, path: &str) -> (u16, String) {
        let addr: SocketAddr = HEALTH.parse().unwrap();
        http_get(self.ns.path(), addr, "x", path).unwrap_or((0, String::new()))
    }

    pub fn ready(&self) -> bool {
        self.http("/readyz").0 == 200
    }

    /// A metric's value from /metrics (`cni_rs_node_` is added).
    pub fn metric(&self, name: &str) -> Option<f64> {
        let (_, body) = self.http("/metrics");
        let want = format!("cni_rs_node_{name} ");
        body.lines()
            .find_map(|l| l.strip_prefix(&want)?.trim().parse().ok())
    }
}

/// One HTTP/1.1 GET from inside the namespace at `ns` (the agent's health port, a
/// probe as the kubelet sends it): the status code (0 when the answer has none) and
/// the body.
pub fn http_get(
    ns: &Path,
    addr: SocketAddr,
    host: &str,
    path: &str,
) -> Result<(u16, String), String> {
    let (host, path) = (host.to_owned(), path.to_owned());
    in_netns(ns, move || {
        let mut c =
            TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
        c.set_read_timeout(Some(Duration::from_secs(5))).ok();
        write!(c, "GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").map_err(|e| e.to_string())?;
        let mut s = String::new();
        c.read_to_string(&mut s).map_err(|e| e.to_string())?;
        let code = s
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = s
            .split_once("\r\n\r\n")
            .map(|x| x.1.to_owned())
            .unwrap_or_default();
        Ok((code, body))
    })
}

/// Runs `f` on a thread that entered the namespace at `ns`.
pub fn in_netns<T: Send + 'static>(
    ns: &Path,
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    let file = File::open(ns).map_err(|e| e.to_string())?;
    std::thread::spawn(move || {
        // SAFETY: setns on a descriptor we own; it affects only this new thread.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error().to_string());
        }
        f()
    })
    .join()
    .map_err(|_| "thread panicked".to_owned())?
}

/// The client that adds pods.
#[derive(Clone)]
enum Runtime {
    Cnitool(PathBuf),
    Script,
}

pub struct Cluster {
    pub nodes: Vec<SimNode>,
    pub api: StandinProcess,
    pub lan: Netns,
    dir: TempDir,
    runtime: Runtime,
}

fn standin_binary() -> PathBuf {
    kube_standin::binary().unwrap_or_else(|| {
        panic!("the kube-standin binary is not built: cargo build -p kube-standin (scripts/test.sh builds the workspace)")
    })
}

impl Cluster {
    /// The underlay, the stand-in with `specs` as Nodes, and one node namespace per spec,
    /// agents not started yet.
    pub fn new(specs: &[NodeSpec]) -> Cluster {
        let dir = TempDir::new("agent-cluster");
        let lan = Netns::new("lan");
        lan.lo_up();
        lan.ip(["link", "add", "lan0", "type", "bridge"]);
        lan.ip(["addr", "add", &format!("{API}/24"), "dev", "lan0"]);
        lan.ip([
            "addr",
            "add",
            &format!("{API_V6}/64"),
            "dev",
            "lan0",
            "nodad",
        ]);
        lan.ip(["link", "set", "lan0", "up"]);
        let sock = dir.join("standin.sock");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", lan.name()])
            .arg(standin_binary())
            .args(["--listen", &format!("{API}:{API_PORT}"), "--control-socket"])
            .arg(&sock);
        let api =
            StandinProcess::spawn(cmd, Some(&sock)).expect("start kube-standin in the underlay");
        std::fs::write(
            dir.join("kubeconfig"),
            kube_standin::kubeconfig(&format!("http://{API}:{API_PORT}")),
        )
        .unwrap();
        let runtime = match cni_tests::cnitool() {
            Some(p) => Runtime::Cnitool(p),
            None => {
                eprintln!("note: cnitool not found, pods are added with scripts/cni-runtime.sh");
                Runtime::Script
            }
        };
        let mut c = Cluster {
            nodes: Vec::new(),
            api,
            lan,
            dir,
            runtime,
        };
        for s in specs {
            c.add_node(s.clone());
        }
        c
    }

    pub fn control(&self) -> &RemoteStandin {
        self.api.control()
    }

    /// A new node namespace on the underlay, its Node in the API server.
    pub fn add_node(&mut self, spec: NodeSpec) -> &mut SimNode {
        let ns = Netns::new(&spec.name);
        ns.lo_up();
        let port = format!("lan{}", spec.index);
        ns.ip([
            "link",
            "add",
            "eth0",
            "mtu",
            &NODE_MTU.to_string(),
            "type",
            "veth",
            "peer",
            "name",
            &port,
            "mtu",
            &NODE_MTU.to_string(),
            "netns",
            self.lan.name(),
        ]);
        self.lan.ip(["link", "set", &port, "master", "lan0", "up"]);
        ns.sysctl("net.ipv6.conf.eth0.keep_addr_on_down", "1");
        for ip in &spec.ips {
            let len = if ip.contains(':') { "64" } else { "24" };
            ns.ip([
                "addr",
                "add",
                &format!("{ip}/{len}"),
                "dev",
                "eth0",
                "nodad",
            ]);
        }
        ns.ip(["link", "set", "eth0", "up"]);
        self.control().upsert(&spec.node()).expect("upsert Node");
        self.nodes.push(SimNode {
            agent: None,
            pods: Vec::new(),
            ns,
            conf: TempDir::new("agent-netd"),
            state: TempDir::new("agent-cnistate"),
            args: Vec::new(),
            env: Vec::new(),
            kubeconfig: None,
            logs: TempDir::new("agent-logs"),
            spec,
            starts: 0,
        });
        self.nodes.last_mut().expect("just pushed")
    }

    pub fn node(&mut self, name: &str) -> &mut SimNode {
        self.nodes
            .iter_mut()
            .find(|n| n.spec.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    pub fn start_agent(&mut self, name: &str) {
        let shared = self.dir.join("kubeconfig");
        let n = self.node(name);
        let kubeconfig = n.kubeconfig.clone().unwrap_or(shared);
        n.starts += 1;
        let log = n.logs.join(format!("agent-{}.log", n.starts));
        let file = File::create(&log).unwrap();
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                n.ns.name(),
                env!("CARGO_BIN_EXE_cni-rs-node"),
            ])
            .args(["--node-name", &n.spec.name])
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .arg("--cni-conf-dir")
            .arg(n.conf.path())
            .args(&n.args)
            .env_remove("KUBECONFIG")
            .env_remove("NODE_NAME")
            .envs(n.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn cni-rs-node");
        n.agent = Some(Agent {
            child: Some(child),
            log,
        });
    }

    pub fn start_all(&mut self) {
        let names: Vec<String> = self.nodes.iter().map(|n| n.spec.name.clone()).collect();
        for name in &names {
            self.start_agent(name);
        }
        for name in &names {
            let n = self.node(name);
            assert!(
                wait_for(Duration::from_secs(20), || n.ready()),
                "{name}'s agent is not ready:\n{}\n{}",
                n.http("/readyz").1,
                n.log()
            );
        }
    }

    /// Adds `count` pods to node `name` through the runtime, with its agent's conflist.
    pub fn add_pods(&mut self, name: &str, count: usize) {
        let runtime = self.runtime.clone();
        let n = self.node(name);
        for _ in 0..count {
            let pod = Netns::new("pod");
            let out = cni(&runtime, n, "add", pod.path());
            let result: Value = serde_json::from_str(&out)
                .unwrap_or_else(|e| panic!("ADD result is not JSON ({e}): {out}"));
            let ips: Vec<IpAddr> = result["ips"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|i| i["address"].as_str()?.split('/').next()?.parse().ok())
                .collect();
            assert!(!ips.is_empty(), "no address in {out}");
            n.pods.push(Pod { ns: pod, ips });
        }
    }

    /// Every pod of every node, with its node's name.
    pub fn pods(&self) -> Vec<(&str, &Pod)> {
        self.nodes
            .iter()
            .flat_map(|n| n.pods.iter().map(move |p| (n.spec.name.as_str(), p)))
            .collect()
    }

    /// Routes `name`'s agent should have: every other node's pod CIDRs via its address.
    pub fn expected_routes(&self, name: &str) -> Vec<String> {
        let mut out = Vec::new();
        for n in self.nodes.iter().filter(|n| n.spec.name != name) {
            for c in &n.spec.cidrs {
                let v6 = c.contains(':');
                if let Some(ip) = n.spec.ips.iter().find(|i| i.contains(':') == v6) {
                    out.push(format!("{c} via {ip}"));
                }
            }
        }
        out.sort();
        out
    }

    /// Waits until every node with a running agent has exactly the routes it should.
    pub fn converged(&mut self) -> bool {
        let names: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| n.agent.is_some())
            .map(|n| n.spec.name.clone())
            .collect();
        let mut ok = true;
        for name in names {
            let want = self.expected_routes(&name);
            let n = self.node(&name);
            let got = wait_for(Duration::from_secs(10), || n.routes() == want);
            if !got {
                eprintln!(
                    "{name}: routes {:?}, want {want:?}\n{}",
                    n.routes(),
                    n.log()
                );
                ok = false;
            }
        }
        ok
    }
}

fn cni(runtime: &Runtime, n: &SimNode, verb: &str, netns: &Path) -> String {
    let program = match runtime {
        Runtime::Cnitool(p) => p.clone(),
        Runtime::Script => workspace_root().join("scripts/cni-runtime.sh"),
    };
    let mut cmd = Command::new("timeout");
    cmd.args(["--kill-after=5", "90"])
        .arg(workspace_root().join("scripts/private-cni-state.sh"))
        .arg(n.state.path())
        .args(["ip", "netns", "exec", n.ns.name()])
        .arg(&program)
        .args([verb, "cbr0"])
        .arg(netns);
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        if key.starts_with("CNI_") || key == "CAP_ARGS" || key == "NETCONFPATH" {
            cmd.env_remove(key);
        }
    }
    cmd.env("NETCONFPATH", n.conf.path())
        .env("CNI_PATH", bin_dir())
        .env("CNI_IFNAME", "eth0")
        .env("CNI_ARGS", K8S_ARGS)
        .stdin(Stdio::null());
    let out = cmd.output().expect("run the CNI runtime");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{} {verb} on {} failed:\nstdout: {stdout}\nstderr: {}\nconflist: {:?}",
        program.display(),
        n.spec.name,
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(n.conflist_path())
    );
    stdout
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for n in &self.nodes {
                eprintln!("---- agent log of {} ----\n{}", n.spec.name, n.log());
            }
        }
        // Agents first (they would log the API server going away), then pods and nodes.
        for n in &mut self.nodes {
            n.agent.take();
        }
        self.nodes.clear();
        self.api.kill();
    }
}
