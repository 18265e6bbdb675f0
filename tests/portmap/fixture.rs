//! A private node for the portmap tests: a host namespace with a bridge holding the
//! pods' gateways, an "external" namespace on the node's uplink, and pods wired to
//! the bridge the way the bridge plugin wires them (so portmap gets the same
//! prevResult it gets after `bridge`).

use std::cell::Cell;
use std::io::Write;
use std::net::{Ipv6Addr, Shutdown, TcpListener, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use cni_tests::{CniCall, Host, Netns, Outcome, unique_name};
use serde_json::{Value, json};

/// The node's uplink addresses and the external peer on that link.
pub const NODE_V4: &str = "192.0.2.1";
pub const EXT_V4: &str = "192.0.2.2";
pub const NODE_V6: &str = "2001:db8:50::1";
pub const EXT_V6: &str = "2001:db8:50::2";
/// A second node address, on a port-less bridge (this kernel may lack the dummy driver): hostIP-bound mappings must not answer
/// there.
pub const NODE2_V4: &str = "198.51.100.1";
pub const NODE2_V6: &str = "2001:db8:51::1";
/// Pod subnets; the gateways live on the bridge.
pub const GW_V4: &str = "10.99.0.1";
pub const GW_V6: &str = "fd99::1";
pub const BRIDGE: &str = "cni0";
pub const NETWORK: &str = "pmtest";

/// One line a server sends back, so a test knows which pod answered.
pub type Reply = String;

pub struct Node {
    pub host: Host,
    pub ext: Netns,
    next_ip: Cell<u8>,
}

pub struct Pod {
    pub ns: Netns,
    pub id: String,
    pub v4: String,
    pub v6: String,
    pub host_veth: String,
    pub dual: bool,
}

impl Node {
    pub fn new() -> Node {
        let host = Host::new();
        let ext = Netns::new("ext");
        ext.lo_up();
        for ns in [&*host, &ext] {
            // Addresses are usable at once (no DAD wait), and the node routes.
            ns.sysctl("net.ipv6.conf.all.accept_dad", "0");
            ns.sysctl("net.ipv6.conf.default.accept_dad", "0");
        }
        host.sysctl("net.ipv4.ip_forward", "1");
        host.sysctl("net.ipv6.conf.all.forwarding", "1");

        host.ip(["link", "add", BRIDGE, "type", "bridge"]);
        host.ip(["addr", "add", &format!("{GW_V4}/24"), "dev", BRIDGE]);
        host.ip([
            "addr",
            "add",
            &format!("{GW_V6}/64"),
            "dev",
            BRIDGE,
            "nodad",
        ]);
        host.ip(["link", "set", BRIDGE, "up"]);

        host.ip([
            "link",
            "add",
            "uplink",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            ext.name(),
        ]);
        host.ip(["addr", "add", &format!("{NODE_V4}/24"), "dev", "uplink"]);
        host.ip([
            "addr",
            "add",
            &format!("{NODE_V6}/64"),
            "dev",
            "uplink",
            "nodad",
        ]);
        host.ip(["link", "set", "uplink", "up"]);
        ext.ip(["addr", "add", &format!("{EXT_V4}/24"), "dev", "eth0"]);
        ext.ip([
            "addr",
            "add",
            &format!("{EXT_V6}/64"),
            "dev",
            "eth0",
            "nodad",
        ]);
        ext.ip(["link", "set", "eth0", "up"]);

        host.ip(["link", "add", "dummy0", "type", "bridge"]);
        host.ip(["addr", "add", &format!("{NODE2_V4}/24"), "dev", "dummy0"]);
        host.ip([
            "addr",
            "add",
            &format!("{NODE2_V6}/64"),
            "dev",
            "dummy0",
            "nodad",
        ]);
        host.ip(["link", "set", "dummy0", "up"]);
        // The external peer reaches the second node address through the node.
        ext.ip(["route", "add", &format!("{NODE2_V4}/32"), "via", NODE_V4]);
        ext.ip([
            "-6",
            "route",
            "add",
            &format!("{NODE2_V6}/128"),
            "via",
            NODE_V6,
        ]);

        Node {
            host,
            ext,
            next_ip: Cell::new(2),
        }
    }

    /// A dual-stack pod on the bridge (hairpin on, as `promiscMode`/`hairpinMode`
    /// would set it).
    pub fn pod(&self, tag: &str) -> Pod {
        self.make_pod(tag, true)
    }

    /// An IPv4-only pod.
    pub fn pod_v4(&self, tag: &str) -> Pod {
        self.make_pod(tag, false)
    }

    fn make_pod(&self, tag: &str, dual: bool) -> Pod {
        let n = self.next_ip.get();
        self.next_ip.set(n + 1);
        let ns = Netns::new(tag);
        ns.lo_up();
        ns.sysctl("net.ipv6.conf.all.accept_dad", "0");
        ns.sysctl("net.ipv6.conf.default.accept_dad", "0");
        let host_veth = unique_name("veth");
        self.host.ip([
            "link",
            "add",
            &host_veth,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            ns.name(),
        ]);
        self.host
            .ip(["link", "set", &host_veth, "master", BRIDGE, "up"]);
        self.host.ip([
            "link",
            "set",
            &host_veth,
            "type",
            "bridge_slave",
            "hairpin",
            "on",
        ]);
        let v4 = format!("10.99.0.{n}");
        let v6 = format!("fd99::{n:x}");
        ns.ip(["addr", "add", &format!("{v4}/24"), "dev", "eth0"]);
        if dual {
            ns.ip(["addr", "add", &format!("{v6}/64"), "dev", "eth0", "nodad"]);
        }
        ns.ip(["link", "set", "eth0", "up"]);
        ns.ip(["route", "add", "default", "via", GW_V4]);
        if dual {
            ns.ip(["-6", "route", "add", "default", "via", GW_V6]);
        }
        Pod {
            id: format!("{tag}-{}", unique_name("")),
            ns,
            v4,
            v6,
            host_veth,
            dual,
        }
    }

    /// A portmap call of `plugin` (ours by name, or a path) for `pod`, run in the node.
    pub fn call(&self, plugin: impl AsRef<Path>, verb: &str, pod: &Pod, conf: &Value) -> CniCall {
        self.host
            .cni(plugin)
            .command(verb)
            .container_id(&pod.id)
            .netns(&pod.ns)
            .ifname("eth0")
            .config(conf)
    }

    /// Runs our portmap and returns the outcome.
    pub fn portmap(&self, verb: &str, pod: &Pod, conf: &Value) -> Outcome {
        self.call("portmap", verb, pod, conf).run()
    }

    /// `iptables-save -t nat` (or ip6tables) of the node.
    pub fn iptables_nat(&self, v6: bool) -> String {
        let tool = if v6 {
            "ip6tables-save"
        } else {
            "iptables-save"
        };
        strip_save_comments(&self.host.run([tool, "-t", "nat"]))
    }

    /// The node's `cni_hostport` tables (ip and ip6), as `nft list` prints them; empty
    /// text for a family without the table.
    pub fn nft_hostport(&self, v6: bool) -> String {
        let family = if v6 { "ip6" } else { "ip" };
        let out = self
            .host
            .exec(["nft", "list", "table", family, "cni_hostport"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The node's `cni_rs_hostport` tables (the opt-in nftables-sets layout).
    pub fn nft_sets_hostport(&self, v6: bool) -> String {
        let family = if v6 { "ip6" } else { "ip" };
        let out = self
            .host
            .exec(["nft", "list", "table", family, "cni_rs_hostport"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Both families of whichever backend `backend` is.
    pub fn firewall(&self, backend: &str) -> String {
        match backend {
            "nftables" => format!("{}\n{}", self.nft_hostport(false), self.nft_hostport(true)),
            "nftables-sets" => format!(
                "{}\n{}",
                self.nft_sets_hostport(false),
                self.nft_sets_hostport(true)
            ),
            _ => format!("{}\n{}", self.iptables_nat(false), self.iptables_nat(true)),
        }
    }

    /// Makes the node track connections, as any node with a NAT rule does (a fresh
    /// namespace has no conntrack hooks until some table needs them).
    pub fn enable_conntrack(&self) {
        self.host.run(["nft", "add", "table", "inet", "fixture"]);
        self.host.run([
            "nft",
            "add chain inet fixture pre { type filter hook prerouting priority 0; }",
        ]);
        self.host.run([
            "nft", "add", "rule", "inet", "fixture", "pre", "ct", "state", "new", "counter",
        ]);
    }

    /// The conntrack table of the node (v4 and v6).
    pub fn conntrack_udp(&self, port: u16) -> String {
        let mut text = String::new();
        for family in ["ipv4", "ipv6"] {
            let out = self.host.exec([
                "conntrack",
                "-L",
                "-f",
                family,
                "-p",
                "udp",
                "--dport",
                &port.to_string(),
            ]);
            text.push_str(&String::from_utf8_lossy(&out.stdout));
        }
        text
    }
}

impl Drop for Node {
    /// portmap keeps GC records under /run keyed by the node's netns; a test that fails
    /// between ADD and DEL must not leave them behind.
    fn drop(&mut self) {
        use std::os::unix::fs::MetadataExt;
        if let Ok(meta) = std::fs::metadata(self.host.path()) {
            let dir = format!("/run/cni-rs/portmap/netns-{}-{}", meta.dev(), meta.ino());
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

impl Pod {
    /// The result `bridge` hands to portmap for this pod.
    pub fn prev_result(&self) -> Value {
        let mut ips =
            vec![json!({"address": format!("{}/24", self.v4), "gateway": GW_V4, "interface": 2})];
        if self.dual {
            ips.push(
                json!({"address": format!("{}/64", self.v6), "gateway": GW_V6, "interface": 2}),
            );
        }
        json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": BRIDGE, "mac": "02:00:00:00:00:01"},
                {"name": self.host_veth, "mac": "02:00:00:00:00:02"},
                {"name": "eth0", "mac": "02:00:00:00:00:03", "sandbox": self.ns.path()},
            ],
            "ips": ips,
            "routes": [{"dst": "0.0.0.0/0"}],
        })
    }

    /// A TCP server on `port` (both families) answering every connection with `reply`.
    pub fn serve_tcp(&self, port: u16, reply: &str) -> Server {
        Server::start(&self.ns, Proto::Tcp, port, reply)
    }

    /// A UDP server on `port` (both families) answering every datagram with `reply`.
    pub fn serve_udp(&self, port: u16, reply: &str) -> Server {
        Server::start(&self.ns, Proto::Udp, port, reply)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

/// A server thread inside a namespace (no process per connection or datagram, so
/// nothing races the reply), answering with one line; stopped and joined on drop.
pub struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    fn start(ns: &Netns, proto: Proto, port: u16, reply: &str) -> Server {
        let file = std::fs::File::open(ns.path())
            .unwrap_or_else(|e| panic!("open {}: {e}", ns.path().display()));
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel();
        let answer = format!("{reply}\n").into_bytes();
        let name = ns.name().to_string();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            // SAFETY: setns on a valid namespace fd affects only this thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            if rc != 0 {
                let err = std::io::Error::last_os_error();
                let _ = ready_tx.send(Err(format!("setns {name}: {err}")));
                return;
            }
            let bound = match proto {
                Proto::Udp => bind_udp(port).map(Bound::Udp),
                Proto::Tcp => bind_tcp(port).map(Bound::Tcp),
            };
            let bound = match bound {
                Ok(b) => b,
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("bind port {port} in {name}: {e}")));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(()));
            serve_until(&bound, &answer, &flag);
        });
        match ready_rx.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("{e}"),
            Err(_) => panic!("server on port {port} did not start"),
        }
        Server {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

enum Bound {
    Udp(UdpSocket),
    Tcp(TcpListener),
}

/// How often a server thread looks at its stop flag.
const TICK: Duration = Duration::from_millis(50);

// `[::]` takes IPv4 too: net.ipv6.bindv6only is 0 in a fresh namespace.
fn bind_udp(port: u16) -> std::io::Result<UdpSocket> {
    let socket = UdpSocket::bind((Ipv6Addr::UNSPECIFIED, port))?;
    socket.set_read_timeout(Some(TICK))?;
    Ok(socket)
}

fn bind_tcp(port: u16) -> std::io::Result<TcpListener> {
    let listener = TcpListener::bind((Ipv6Addr::UNSPECIFIED, port))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

fn serve_until(bound: &Bound, answer: &[u8], stop: &AtomicBool) {
    let mut buf = [0u8; 512];
    while !stop.load(Ordering::Relaxed) {
        match bound {
            Bound::Udp(socket) => {
                if let Ok((_, peer)) = socket.recv_from(&mut buf) {
                    let _ = socket.send_to(answer, peer);
                }
            }
            Bound::Tcp(listener) => match listener.accept() {
                Ok((mut conn, _)) => {
                    let _ = conn.set_nonblocking(false);
                    let _ = conn.write_all(answer);
                    let _ = conn.shutdown(Shutdown::Write);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            },
        }
    }
}

/// How long a client waits for an answer. Generous: the machine may be busy, and a
/// probe that expects silence pays it only once (see [`SILENCE`]).
const ANSWER_WAIT: Duration = Duration::from_secs(4);
/// How long a probe that expects no answer listens before concluding there is none.
pub const SILENCE: Duration = Duration::from_millis(1500);

/// Runs `f` on a thread that has entered `ns`: a client socket made there lives there,
/// without a process per probe.
pub fn in_netns<T: Send>(ns: &Netns, f: impl FnOnce() -> T + Send) -> T {
    let file = std::fs::File::open(ns.path())
        .unwrap_or_else(|e| panic!("open {}: {e}", ns.path().display()));
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns on a valid namespace fd affects only this (scoped) thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(
                rc,
                0,
                "setns {}: {}",
                ns.name(),
                std::io::Error::last_os_error()
            );
            f()
        })
        .join()
        .expect("client thread")
    })
}

fn socket_addr(addr: &str, port: u16) -> std::net::SocketAddr {
    let ip: std::net::IpAddr = addr.parse().expect("an IP address");
    std::net::SocketAddr::new(ip, port)
}

/// What a TCP connection from `from` to `addr:port` is answered with, if anything.
pub fn tcp_reply(from: &Netns, addr: &str, port: u16) -> Option<Reply> {
    tcp_reply_within(from, addr, port, ANSWER_WAIT)
}

/// [`tcp_reply`], giving up after `wait`.
pub fn tcp_reply_within(from: &Netns, addr: &str, port: u16, wait: Duration) -> Option<Reply> {
    use std::io::Read;
    let target = socket_addr(addr, port);
    in_netns(from, move || {
        let mut stream = std::net::TcpStream::connect_timeout(&target, wait).ok()?;
        stream.set_read_timeout(Some(wait)).ok()?;
        let mut text = String::new();
        let _ = stream.read_to_string(&mut text);
        reply_of(text.as_bytes())
    })
}

/// What a UDP datagram from `from` to `addr:port` is answered with, if anything.
/// `source_port` pins the client port, so that repeated calls form one conntrack flow.
pub fn udp_reply(from: &Netns, addr: &str, port: u16, source_port: Option<u16>) -> Option<Reply> {
    udp_reply_within(from, addr, port, source_port, ANSWER_WAIT)
}

/// [`udp_reply`], giving up after `wait`.
pub fn udp_reply_within(
    from: &Netns,
    addr: &str,
    port: u16,
    source_port: Option<u16>,
    wait: Duration,
) -> Option<Reply> {
    let target = socket_addr(addr, port);
    in_netns(from, move || {
        let local: std::net::SocketAddr = if target.is_ipv4() {
            ([0, 0, 0, 0], source_port.unwrap_or(0)).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, source_port.unwrap_or(0)).into()
        };
        let socket = bind_udp_client(local);
        socket.set_read_timeout(Some(wait)).ok()?;
        socket.send_to(b"ping\n", target).ok()?;
        let mut buf = [0u8; 512];
        // An ICMP "port unreachable" surfaces as an error: no answer.
        let (n, _) = socket.recv_from(&mut buf).ok()?;
        reply_of(&buf[..n])
    })
}

/// Binds a UDP client socket. A pinned port can still be held for a moment by the
/// previous call's socket on its way out, so `EADDRINUSE` is retried for up to a second.
fn bind_udp_client(local: std::net::SocketAddr) -> std::net::UdpSocket {
    let mut tries = 0;
    loop {
        match std::net::UdpSocket::bind(local) {
            Ok(socket) => return socket,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tries < 20 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("bind UDP client {local}: {e}"),
        }
    }
}

fn reply_of(stdout: &[u8]) -> Option<Reply> {
    let text = String::from_utf8_lossy(stdout).trim().to_string();
    (!text.is_empty()).then_some(text)
}

/// A plugin config with `mappings` (a JSON array) and the pod's prevResult.
pub fn conf(backend: &str, mappings: Value, pod: &Pod) -> Value {
    let mut c = json!({
        "cniVersion": "1.0.0",
        "name": NETWORK,
        "type": "portmap",
        "capabilities": {"portMappings": true},
        "runtimeConfig": {"portMappings": mappings},
        "prevResult": pod.prev_result(),
    });
    if !backend.is_empty() {
        c["backend"] = json!(backend);
    }
    c
}

/// One mapping entry.
pub fn map(host_port: u16, container_port: u16, proto: &str) -> Value {
    json!({"hostPort": host_port, "containerPort": container_port, "protocol": proto})
}

/// `iptables-save` without its timestamped comment lines and packet counters.
pub fn strip_save_comments(text: &str) -> String {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            if l.starts_with(':') {
                // ":CHAIN POLICY [pkts:bytes]"
                l.rsplit_once(' ').map_or(l, |(head, _)| head).to_string()
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Retries `probe` (each try already bounded) up to `tries` times, for the first
/// packets of a path (ARP, ND) that may be lost.
pub fn eventually<T>(tries: usize, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    for _ in 0..tries {
        if let Some(v) = probe() {
            return Some(v);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}
