//! kill -9 at any instant of an ADD, then the DELs a runtime sends: nothing of the
//! container is left on the node.
//!
//! containerd and CRI-O SIGKILL a plugin that runs past its timeout, then DEL the
//! attachment. Each round runs the chain bridge (+ host-local) → portmap for a new pod
//! the way a runtime does, kills one process at a random instant (bridge, its
//! host-local child, portmap, or bridge's whole process group), runs the DELs a
//! runtime would (portmap, then bridge; sometimes after the netns is gone), and
//! compares the node with how it was before: links, addresses, routes, reservations,
//! iptables and nftables rules and set elements, portmap records, temporary files.
//! A resident pod keeps the bridge and the shared chains in place throughout, so
//! every difference is a leak.
//!
//! `KILL_ROUNDS` (default 24, a few seconds: CI) sets the number of rounds, spread
//! over the iptables, nftables and nftables-sets backends; hundreds are for runs by
//! hand. `KILL_SEED` (default 14) picks the instants; a failure names its seed and
//! round.

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use cni_tests::{Host, Netns, TempDir, bin_dir, tempdir};

const NET: &str = "killnet";
const BACKENDS: [&str; 3] = ["iptables", "nftables", "nftables-sets"];
/// Past this a plugin is hung, not slow.
const HANG: Duration = Duration::from_secs(30);

/// xorshift64*: the same instants for the same seed, on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v}: not a number")),
        Err(_) => default,
    }
}

/// The process a round kills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Victim {
    Bridge,
    /// The IPAM plugin bridge starts.
    HostLocal,
    Portmap,
    /// bridge and everything it started.
    Group,
}

const VICTIMS: [Victim; 4] = [
    Victim::Bridge,
    Victim::HostLocal,
    Victim::Portmap,
    Victim::Group,
];

/// How long each stage of an unkilled ADD takes, measured on this machine: the kill
/// instants are drawn up to a little past it.
#[derive(Debug, Clone, Copy)]
struct Timings {
    bridge: Duration,
    host_local: Duration,
    portmap: Duration,
}

struct Node {
    host: Host,
    data: TempDir,
    backend: &'static str,
}

/// One plugin call as a runtime makes it.
struct Call<'a> {
    plugin: &'a str,
    verb: &'a str,
    cid: &'a str,
    netns: &'a str,
    conf: Value,
}

impl Node {
    fn new(backend: &'static str) -> Node {
        Node {
            host: Host::new(),
            data: tempdir(),
            backend,
        }
    }

    fn bridge_conf(&self, prev: Option<&Value>) -> Value {
        let mut c = json!({
            "cniVersion": "1.0.0", "name": NET, "type": "bridge", "bridge": "cni0",
            "isGateway": true, "ipMasq": true, "ipMasqBackend": self.backend,
            "ipam": {"type": "host-local", "subnet": "10.48.0.0/24",
                     "dataDir": self.data.path()},
        });
        if let Some(prev) = prev {
            c["prevResult"] = prev.clone();
        }
        c
    }

    fn portmap_conf(&self, port: u16, prev: Option<&Value>) -> Value {
        let mut c = json!({
            "cniVersion": "1.0.0", "name": NET, "type": "portmap", "backend": self.backend,
            "capabilities": {"portMappings": true},
            "runtimeConfig": {"portMappings": [
                {"hostPort": port, "containerPort": 80, "protocol": "tcp"},
                {"hostPort": port, "containerPort": 53, "protocol": "udp"},
            ]},
        });
        if let Some(prev) = prev {
            c["prevResult"] = prev.clone();
        }
        c
    }

    /// Starts a plugin inside the node, in a process group of its own.
    fn spawn(&self, call: &Call) -> Child {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.host.name()])
            .arg(bin_dir().join(call.plugin))
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("CNI_") {
                cmd.env_remove(key);
            }
        }
        cmd.env("CNI_COMMAND", call.verb)
            .env("CNI_CONTAINERID", call.cid)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", bin_dir());
        if !call.netns.is_empty() {
            cmd.env("CNI_NETNS", call.netns);
        }
        let mut child = cmd.spawn().expect("spawn a plugin");
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(call.conf.to_string().as_bytes())
            .expect("write the config");
        child
    }

    /// Runs a call to its end: the result (or `None` for an error), and its output.
    fn run(&self, call: &Call) -> (Option<Value>, Output) {
        finish(self.spawn(call))
    }

    /// Everything of the node a pod's attachment can leave behind, as text.
    fn state(&self) -> String {
        let mut out = String::new();
        for l in self.host.links() {
            let name = l["ifname"].as_str().unwrap_or("?");
            let master = l["master"].as_str().unwrap_or("-");
            out.push_str(&format!("link {name} master {master}\n"));
        }
        for l in as_vec(self.host.ip_json(["addr", "show"])) {
            for a in as_vec(l["addr_info"].clone()) {
                out.push_str(&format!(
                    "addr {} {}/{}\n",
                    l["ifname"].as_str().unwrap_or("?"),
                    a["local"].as_str().unwrap_or("?"),
                    a["prefixlen"]
                ));
            }
        }
        for family in ["-4", "-6"] {
            out.push_str(&self.host.ip([family, "route", "show", "table", "all"]));
        }
        for tool in ["iptables-save", "ip6tables-save"] {
            let o = self.host.exec([tool]);
            for line in String::from_utf8_lossy(&o.stdout).lines() {
                // Timestamps, and counters that traffic of the resident pod moves.
                if line.starts_with('#') {
                    continue;
                }
                let line = match line.find(" [") {
                    Some(i) if line.starts_with(':') => &line[..i],
                    _ => line,
                };
                out.push_str(line);
                out.push('\n');
            }
        }
        for line in self.host.run(["nft", "list", "ruleset"]).lines() {
            out.push_str(&without_counters(line));
            out.push('\n');
        }
        out.push_str(&listing("ledger", &self.data.join(NET), |name| {
            name != "lock" && name != ".host-local-index" && !name.starts_with("last_reserved_ip.")
        }));
        out.push_str(&listing("records", &self.registry(), |_| true));
        // Link-local addresses (and their routes) come and go with the kernel's own
        // IPv6 autoconfiguration of the resident's links: a leaked link shows anyway.
        out.lines()
            .filter(|l| !l.contains("fe80:"))
            .map(|l| format!("{l}\n"))
            .collect()
    }

    /// portmap's records of this network on this node (see plugins/portmap/src/registry.rs).
    fn registry(&self) -> PathBuf {
        let ns = std::fs::metadata(self.host.path()).expect("stat the node's netns");
        Path::new("/run/cni-rs/portmap")
            .join(format!("netns-{}-{}", ns.dev(), ns.ino()))
            .join(NET)
    }

    /// The node's state once it has settled: the kernel removes the veth of a deleted
    /// netns on its own time.
    fn settled_state(&self, want: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let now = self.state();
            if now == want || Instant::now() > deadline {
                return now;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn as_vec(v: Value) -> Vec<Value> {
    match v {
        Value::Array(a) => a,
        _ => Vec::new(),
    }
}

/// `counter packets 12 bytes 960` → `counter`.
fn without_counters(line: &str) -> String {
    let mut words = line.split_whitespace().peekable();
    let mut out = Vec::new();
    while let Some(w) = words.next() {
        if w == "packets" || w == "bytes" {
            words.next();
            continue;
        }
        out.push(w);
    }
    out.join(" ")
}

/// The files of `dir` that `keep` accepts, with their content.
fn listing(what: &str, dir: &Path, keep: impl Fn(&str) -> bool) -> String {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| keep(n))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
        .iter()
        .map(|n| {
            let content = std::fs::read(dir.join(n)).unwrap_or_default();
            format!("{what} {n} {:?}\n", String::from_utf8_lossy(&content))
        })
        .collect()
}

/// Waits for a plugin (killing it if it hangs): its result when it succeeded.
fn finish(mut child: Child) -> (Option<Value>, Output) {
    let deadline = Instant::now() + HANG;
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("a plugin hung for {HANG:?}");
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    let out = child.wait_with_output().expect("collect output");
    let result = out
        .status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).ok())
        .flatten();
    (result, out)
}

/// SIGKILL to a child we have not reaped yet (so its pid is still its own), or to
/// its whole process group.
fn kill(child: &Child, group: bool) {
    let pid = child.id() as libc::pid_t;
    let target = if group { -pid } else { pid };
    // SAFETY: plain syscall; the target is our own unreaped child or its group.
    unsafe { libc::kill(target, libc::SIGKILL) };
}

/// The host-local process `bridge` started, as a pidfd (which, unlike a pid, can
/// never name another process later), once it appears; `None` if bridge ended first.
fn host_local_of(bridge: &Child) -> Option<libc::c_int> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let tasks = PathBuf::from(format!("/proc/{}/task", bridge.id()));
    while Instant::now() < deadline {
        let children: Vec<u32> = std::fs::read_dir(&tasks)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
            .flat_map(|s| {
                s.split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect::<Vec<u32>>()
            })
            .collect();
        for pid in children {
            // SAFETY: plain syscall.
            let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as libc::c_int;
            if fd < 0 {
                continue;
            }
            // Checked after the pidfd exists: it names this very process.
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let ppid = stat
                .rsplit(')')
                .next()
                .and_then(|rest| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            if comm.trim() == "host-local" && ppid == Some(bridge.id()) {
                return Some(fd);
            }
            // SAFETY: our own fd.
            unsafe { libc::close(fd) };
        }
        let state =
            std::fs::read_to_string(format!("/proc/{}/stat", bridge.id())).unwrap_or_default();
        if state
            .rsplit(')')
            .next()
            .is_some_and(|r| r.trim_start().starts_with('Z'))
        {
            return None;
        }
        std::thread::sleep(Duration::from_micros(50));
    }
    None
}

fn pidfd_kill(fd: libc::c_int) {
    // SAFETY: plain syscalls on our own pidfd.
    unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd,
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        );
        libc::close(fd);
    }
}

/// Waits out `delay` from `since`.
fn sleep_until(since: Instant, delay: Duration) {
    let left = delay.saturating_sub(since.elapsed());
    if !left.is_zero() {
        std::thread::sleep(left);
    }
}

/// A random instant up to 20 % past a stage's usual length.
fn instant(rng: &mut Rng, usual: Duration) -> Duration {
    let max = usual.as_micros() as u64 * 6 / 5;
    Duration::from_micros(rng.below(max + 1))
}

/// The chain's ADD for `cid`, with `victim` killed at a random instant: the chain's
/// result when the whole chain got through before the kill.
fn killed_add(
    node: &Node,
    rng: &mut Rng,
    t: Timings,
    victim: Victim,
    cid: &str,
    pod: &Netns,
    port: u16,
) -> Option<Value> {
    let netns = pod.path().to_str().expect("utf-8 path");
    let bridge = Call {
        plugin: "bridge",
        verb: "ADD",
        cid,
        netns,
        conf: node.bridge_conf(None),
    };
    let child = node.spawn(&bridge);
    let started = Instant::now();
    match victim {
        Victim::Bridge | Victim::Group => {
            sleep_until(started, instant(rng, t.bridge));
            kill(&child, victim == Victim::Group);
        }
        Victim::HostLocal => {
            if let Some(fd) = host_local_of(&child) {
                let found = Instant::now();
                sleep_until(found, instant(rng, t.host_local));
                pidfd_kill(fd);
            }
        }
        Victim::Portmap => {}
    }
    let (bridge_result, _) = finish(child);
    let prev = bridge_result?;
    let portmap = Call {
        plugin: "portmap",
        verb: "ADD",
        cid,
        netns,
        conf: node.portmap_conf(port, Some(&prev)),
    };
    let child = node.spawn(&portmap);
    let started = Instant::now();
    if victim == Victim::Portmap {
        sleep_until(started, instant(rng, t.portmap));
        kill(&child, false);
    }
    finish(child).0
}

/// What an unkilled ADD's stages take here (the second of two runs, warm).
fn measure(node: &Node) -> Timings {
    let mut t = Timings {
        bridge: Duration::ZERO,
        host_local: Duration::ZERO,
        portmap: Duration::ZERO,
    };
    for i in 0..2 {
        let pod = Netns::new("kcal");
        let netns = pod.path().to_str().unwrap();
        let cid = format!("calibrate{i}");
        let child = node.spawn(&Call {
            plugin: "bridge",
            verb: "ADD",
            cid: &cid,
            netns,
            conf: node.bridge_conf(None),
        });
        let started = Instant::now();
        let hl = host_local_of(&child).map(|fd| (fd, Instant::now()));
        if let Some((fd, found)) = hl {
            let mut pfd = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: a pidfd becomes readable when its process exits.
            unsafe { libc::poll(&mut pfd, 1, 5000) };
            t.host_local = found.elapsed();
            // SAFETY: our own fd.
            unsafe { libc::close(fd) };
        }
        let (prev, out) = finish(child);
        t.bridge = started.elapsed();
        let prev = prev.unwrap_or_else(|| panic!("calibration ADD failed: {out:?}"));
        let started = Instant::now();
        let (res, out) = node.run(&Call {
            plugin: "portmap",
            verb: "ADD",
            cid: &cid,
            netns,
            conf: node.portmap_conf(18999, Some(&prev)),
        });
        t.portmap = started.elapsed();
        assert!(res.is_some(), "calibration portmap ADD failed: {out:?}");
        del(node, &cid, netns, 18999, Some(&prev));
    }
    t
}

/// The DELs a runtime sends, in reverse chain order, with the capability args of the
/// ADD and, when the ADD got through, its cached result.
fn del(node: &Node, cid: &str, netns: &str, port: u16, prev: Option<&Value>) {
    for (plugin, conf) in [
        ("portmap", node.portmap_conf(port, prev)),
        ("bridge", node.bridge_conf(prev)),
    ] {
        let call = Call {
            plugin,
            verb: "DEL",
            cid,
            netns,
            conf,
        };
        let (_, out) = node.run(&call);
        assert!(
            out.status.success(),
            "{plugin} DEL of {cid} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn killed_adds_then_dels_leave_nothing() {
    let rounds = env_u64("KILL_ROUNDS", 24);
    let seed = env_u64("KILL_SEED", 14);
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let per_backend = rounds.div_ceil(BACKENDS.len() as u64);
    let mut round = 0u64;
    for backend in BACKENDS {
        let node = Node::new(backend);
        let t = measure(&node);
        eprintln!("{backend}: {t:?}");
        // A pod that stays: the bridge, its address and the shared chains exist
        // before and after every round.
        let resident = Netns::new("kres");
        let rpath = resident.path().to_str().unwrap();
        let (prev, out) = node.run(&Call {
            plugin: "bridge",
            verb: "ADD",
            cid: "resident",
            netns: rpath,
            conf: node.bridge_conf(None),
        });
        let prev = prev.unwrap_or_else(|| panic!("resident ADD: {out:?}"));
        let (res, out) = node.run(&Call {
            plugin: "portmap",
            verb: "ADD",
            cid: "resident",
            netns: rpath,
            conf: node.portmap_conf(18000, Some(&prev)),
        });
        assert!(res.is_some(), "resident portmap ADD: {out:?}");
        let before = node.state();

        for _ in 0..per_backend.min(rounds - round) {
            let victim = VICTIMS[(round % VICTIMS.len() as u64) as usize];
            let cid = format!("kill{round}");
            let port = 18100 + round as u16 % 800;
            let pod = Netns::new("kpod");
            let netns = pod.path().to_str().unwrap().to_owned();
            let result = killed_add(&node, &mut rng, t, victim, &cid, &pod, port);
            // Sometimes the runtime removes the netns before it DELs.
            if rng.below(4) == 0 {
                drop(pod);
                del(&node, &cid, &netns, port, result.as_ref());
            } else {
                del(&node, &cid, &netns, port, result.as_ref());
                drop(pod);
            }
            let after = node.settled_state(&before);
            assert!(
                after == before,
                "seed {seed} round {round} ({backend}, {victim:?} killed, ADD {}): left behind:\n{}",
                if result.is_some() {
                    "completed"
                } else {
                    "cut short"
                },
                diff(&before, &after)
            );
            round += 1;
        }
        del(&node, "resident", rpath, 18000, Some(&prev));
    }
}

/// Lines only in `after` (+) or only in `before` (-).
fn diff(before: &str, after: &str) -> String {
    let b: Vec<&str> = before.lines().collect();
    let a: Vec<&str> = after.lines().collect();
    let mut out = String::new();
    for l in &a {
        if !b.contains(l) {
            out.push_str(&format!("+ {l}\n"));
        }
    }
    for l in &b {
        if !a.contains(l) {
            out.push_str(&format!("- {l}\n"));
        }
    }
    out
}
