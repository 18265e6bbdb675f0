//! End-to-end set-up: a private node (the harness's [`Host`]) with an uplink to an
//! "external" namespace, a runtime (cnitool, or scripts/cni-runtime.sh) that runs a
//! conflist from conf/ verbatim inside the node, and readers of what is left afterwards.
//!
//! The runtime's state directory (libcni's result cache and host-local's default
//! `dataDir`, both under /var/lib/cni) is a temp dir mounted on /var/lib/cni only inside
//! a private mount namespace per call (scripts/private-cni-state.sh), so the machine's
//! own /var/lib/cni is never touched and each test has its own.

pub mod tcp;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use cni_tests::{Host, Netns, PLUGINS, TempDir, bin_dir, reference_dir, workspace_root};
use serde_json::Value;

/// The node's uplink address and the external peer, per family (documentation ranges,
/// distinct from every pod subnet in conf/).
pub const NODE_V4: &str = "192.0.2.1";
pub const EXT_V4: &str = "192.0.2.2";
pub const NODE_V6: &str = "2001:db8:ffff::1";
pub const EXT_V6: &str = "2001:db8:ffff::2";

/// What Kubernetes runtimes pass in CNI_ARGS; every plugin must accept it.
const K8S_ARGS: &str =
    "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;K8S_POD_INFRA_CONTAINER_ID=x";

/// Which binaries sit in CNI_PATH.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plugins {
    /// All three of ours.
    Ours,
    /// All three of the reference (Debian's containernetworking-plugins).
    Reference,
    /// Our bridge with the reference host-local and portmap.
    OurBridge,
    /// The reference bridge with our host-local and portmap.
    ReferenceBridge,
}

impl Plugins {
    /// Whose binary serves `plugin`.
    fn ours(self, plugin: &str) -> bool {
        match self {
            Plugins::Ours => true,
            Plugins::Reference => false,
            Plugins::OurBridge => plugin == "bridge",
            Plugins::ReferenceBridge => plugin != "bridge",
        }
    }

    /// Whether the reference plugins are needed and installed; prints why a test is
    /// skipped otherwise.
    pub fn available(self) -> bool {
        if self != Plugins::Ours && reference_dir().is_none() {
            eprintln!(
                "SKIPPED: the reference plugins are not installed in /usr/lib/cni \
                 (apt-get install containernetworking-plugins, or set CNI_REFERENCE_DIR)"
            );
            return false;
        }
        true
    }

    /// A CNI_PATH directory of symlinks to the chosen binaries.
    fn directory(self) -> TempDir {
        let dir = TempDir::new("cnipath");
        for p in PLUGINS {
            let target = if self.ours(p) {
                bin_dir().join(p)
            } else {
                reference_dir()
                    .expect("reference plugins checked by available()")
                    .join(p)
            };
            assert!(target.is_file(), "{} is missing", target.display());
            std::os::unix::fs::symlink(&target, dir.join(p))
                .unwrap_or_else(|e| panic!("symlink {}: {e}", target.display()));
        }
        dir
    }
}

/// The client that runs the conflist.
#[derive(Debug, Clone)]
pub enum Runtime {
    Cnitool(PathBuf),
    /// scripts/cni-runtime.sh: bash + jq, libcni's algorithm.
    Script,
}

impl Runtime {
    /// cnitool, or `None` with a SKIPPED message.
    pub fn cnitool() -> Option<Runtime> {
        match cni_tests::cnitool() {
            Some(path) => Some(Runtime::Cnitool(path)),
            None => {
                eprintln!(
                    "SKIPPED: cnitool not found (put it on PATH or set CNITOOL; \
                     scripts/test.sh builds it with ../shared/tools/build-cnitool.sh)"
                );
                None
            }
        }
    }

    fn program(&self) -> PathBuf {
        match self {
            Runtime::Cnitool(p) => p.clone(),
            Runtime::Script => workspace_root().join("scripts/cni-runtime.sh"),
        }
    }
}

/// The parts of a conflist the checks need.
#[derive(Debug, Clone)]
pub struct Network {
    pub name: String,
    pub subnet_v4: Option<String>,
    pub subnet_v6: Option<String>,
    /// The bridge's name (`cni0` unless set).
    pub bridge: String,
    /// `hairpinMode` on the bridge plugin.
    pub hairpin: bool,
}

impl Network {
    pub fn load(file: &Path) -> Network {
        let text = std::fs::read_to_string(file)
            .unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
        let conflist: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{} is not JSON: {e}", file.display()));
        let bridge_conf = conflist["plugins"]
            .as_array()
            .and_then(|p| p.iter().find(|p| p["type"] == "bridge"))
            .unwrap_or_else(|| panic!("{}: no bridge plugin", file.display()))
            .clone();
        let mut subnet_v4 = None;
        let mut subnet_v6 = None;
        for set in bridge_conf["ipam"]["ranges"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let subnet = set[0]["subnet"].as_str().unwrap_or_default().to_owned();
            if subnet.contains(':') {
                subnet_v6.get_or_insert(subnet);
            } else {
                subnet_v4.get_or_insert(subnet);
            }
        }
        Network {
            name: conflist["name"].as_str().unwrap_or_default().to_owned(),
            subnet_v4,
            subnet_v6,
            bridge: bridge_conf["bridge"].as_str().unwrap_or("cni0").to_owned(),
            hairpin: bridge_conf["hairpinMode"] == true,
        }
    }
}

/// Whether `addr` lies in `subnet` ("10.244.1.0/24", "fd00::/64").
pub fn in_subnet(addr: IpAddr, subnet: &str) -> bool {
    let (net, len) = subnet.split_once('/').expect("subnet has a prefix length");
    let net: IpAddr = net.parse().expect("subnet address");
    let len: u32 = len.parse().expect("prefix length");
    match (addr, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// What one runtime call returned.
#[derive(Debug)]
pub struct Call {
    pub what: String,
    pub out: Output,
}

impl Call {
    pub fn success(&self) -> bool {
        self.out.status.success()
    }

    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.stdout).into_owned()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.out.stderr).into_owned()
    }

    /// Panics with the whole call unless it succeeded; returns stdout as JSON (`Null` if
    /// empty).
    pub fn ok(&self) -> Value {
        if !self.success() {
            panic!("{self}");
        }
        let text = self.stdout();
        if text.trim().is_empty() {
            return Value::Null;
        }
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{self}"))
    }
}

impl std::fmt::Display for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "call:   {}", self.what)?;
        writeln!(f, "status: {}", self.out.status)?;
        writeln!(f, "stdout: {}", self.stdout().trim_end())?;
        write!(f, "stderr: {}", self.stderr().trim_end())
    }
}

/// A private node running one network from conf/ through one runtime.
pub struct Node {
    pub host: Host,
    pub ext: Netns,
    pub net: Network,
    pub plugins: Plugins,
    runtime: Runtime,
    state: TempDir,
    confdir: TempDir,
    cni_path: PathBuf,
    /// The symlink directory behind `cni_path`, when the test made one.
    _cni_path_dir: Option<TempDir>,
}

impl Node {
    /// `conf` is a file name in conf/, copied verbatim into the node's NETCONFPATH.
    pub fn new(conf: &str, plugins: Plugins, runtime: Runtime) -> Node {
        let dir = plugins.directory();
        let mut node = Node::with_conflist(
            &workspace_root().join("conf").join(conf),
            dir.path(),
            runtime,
        );
        node.plugins = plugins;
        node._cni_path_dir = Some(dir);
        node
    }

    /// A node running the conflist `file` (copied verbatim) with the plugins in
    /// `cni_path`, e.g. what scripts/install.sh installed.
    pub fn with_conflist(file: &Path, cni_path: &Path, runtime: Runtime) -> Node {
        let net = Network::load(file);
        let confdir = TempDir::new("netconf");
        let name = file.file_name().expect("a file name");
        std::fs::copy(file, confdir.join(name))
            .unwrap_or_else(|e| panic!("copy {}: {e}", file.display()));
        let host = Host::new();
        let ext = Netns::new("ext");
        ext.lo_up();
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
        // nodad: the addresses are usable at once instead of after duplicate detection.
        for (ns, ifname, v4, v6) in [
            (&*host, "uplink", NODE_V4, NODE_V6),
            (&ext, "eth0", EXT_V4, EXT_V6),
        ] {
            ns.ip(["addr", "add", &format!("{v4}/24"), "dev", ifname]);
            ns.ip(["addr", "add", &format!("{v6}/64"), "dev", ifname, "nodad"]);
            ns.ip(["link", "set", ifname, "up"]);
        }
        Node {
            host,
            ext,
            net,
            plugins: Plugins::Ours,
            runtime,
            state: TempDir::new("cnistate"),
            confdir,
            cni_path: cni_path.to_path_buf(),
            _cni_path_dir: None,
        }
    }

    /// Puts another set of binaries in CNI_PATH (e.g. DEL by the reference plugins of
    /// what ours added).
    pub fn switch_plugins(&mut self, plugins: Plugins) {
        let dir = plugins.directory();
        self.cni_path = dir.path().to_path_buf();
        self._cni_path_dir = Some(dir);
        self.plugins = plugins;
    }

    /// Changes the client for the following calls.
    pub fn set_runtime(&mut self, runtime: Runtime) {
        self.runtime = runtime;
    }

    /// `<runtime> <verb> <net> <netns>` inside the node, with `CAP_ARGS` if given.
    pub fn cni(&self, verb: &str, netns: &Path, cap_args: Option<&str>) -> Call {
        let program = self.runtime.program();
        let mut cmd = Command::new("timeout");
        cmd.args(["--kill-after=5", "90"])
            .arg(workspace_root().join("scripts/private-cni-state.sh"))
            .arg(self.state.path())
            .args(["ip", "netns", "exec", self.host.name()])
            .arg(&program)
            .args([verb, &self.net.name])
            .arg(netns);
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy().into_owned();
            if key.starts_with("CNI_") || key == "CAP_ARGS" || key == "NETCONFPATH" {
                cmd.env_remove(key);
            }
        }
        cmd.env("NETCONFPATH", self.confdir.path())
            .env("CNI_PATH", &self.cni_path)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_ARGS", K8S_ARGS);
        if let Some(caps) = cap_args {
            cmd.env("CAP_ARGS", caps);
        }
        let what = format!(
            "{}CNI_PATH={} ({:?}) {} {verb} {} {}",
            cap_args
                .map(|c| format!("CAP_ARGS='{c}' "))
                .unwrap_or_default(),
            self.cni_path.display(),
            self.plugins,
            program.display(),
            self.net.name,
            netns.display()
        );
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("spawn `{what}`: {e}"));
        Call { what, out }
    }

    /// Cached results (files under results/), as the runtime left them.
    pub fn cached_results(&self) -> Vec<String> {
        list(&self.state.join("results"))
    }

    /// The cached result file of container `cid` (interface eth0), as JSON.
    pub fn cached_result(&self, cid: &str) -> Value {
        let file = self
            .state
            .join("results")
            .join(format!("{}-{cid}-eth0", self.net.name));
        let text = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()))
    }

    /// Container IDs our portmap keeps a record of (its GC bookkeeping under
    /// /run/cni-rs/portmap/<node netns>/<network>/, private to this node's state dir).
    pub fn portmap_records(&self) -> Vec<String> {
        let base = self.state.join("run").join("portmap");
        let mut out = Vec::new();
        for ns in list(&base) {
            out.extend(list(&base.join(ns).join(&self.net.name)));
        }
        out.sort();
        out
    }

    /// host-local reservations: files of the network's store named after an address,
    /// with their content.
    pub fn reservations(&self) -> Vec<(IpAddr, String)> {
        let dir = self.state.join("networks").join(&self.net.name);
        let mut out: Vec<(IpAddr, String)> = list(&dir)
            .into_iter()
            .filter_map(|name| {
                let ip: IpAddr = name.parse().ok()?;
                let content = std::fs::read_to_string(dir.join(&name)).unwrap_or_default();
                Some((ip, content))
            })
            .collect();
        out.sort();
        out
    }

    /// The node's NAT state: iptables and ip6tables nat tables and the nftables ruleset.
    pub fn nat_dump(&self) -> String {
        let mut all = String::new();
        for cmd in [
            &["iptables-save", "-t", "nat"][..],
            &["ip6tables-save", "-t", "nat"][..],
            &["nft", "list", "ruleset"][..],
        ] {
            let out = self.host.exec(cmd);
            all.push_str(&String::from_utf8_lossy(&out.stdout));
        }
        all
    }

    /// Links of the node other than its own (lo, the uplink) and the bridge.
    pub fn pod_links(&self) -> Vec<String> {
        self.host
            .link_names()
            .into_iter()
            .filter(|l| !["lo", "uplink", self.net.bridge.as_str()].contains(&l.as_str()))
            .collect()
    }
}

/// Per-container NAT lines of a dump: rules or chains that name `cid`, per-container
/// portmap chains (`CNI-DN-…`) and ipMasq chains (`CNI-` + 24 hex).
pub fn per_container_nat(dump: &str, cid: &str) -> Vec<String> {
    dump.lines()
        .filter(|l| {
            l.contains(cid)
                || l.contains("CNI-DN-")
                || l.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
                    .any(is_masq_chain)
        })
        .map(str::to_owned)
        .collect()
}

/// `dump` without the `nft list ruleset` block of `table` (e.g. `ip cni_rs_localnet`).
pub fn without_nft_table(dump: &str, table: &str) -> String {
    let start = format!("table {table} {{");
    let mut inside = false;
    let mut out = String::new();
    for line in dump.lines() {
        if line == start {
            inside = true;
        } else if inside {
            // The block ends with the first closing brace at the start of a line.
            inside = line != "}";
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

fn is_masq_chain(token: &str) -> bool {
    token
        .strip_prefix("CNI-")
        .is_some_and(|h| h.len() == 24 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn list(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
        .collect();
    names.sort();
    names
}
