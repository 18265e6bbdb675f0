//! The node image that `scripts/image.sh` builds: built twice it is byte-identical and
//! laid out as agreed with the DaemonSet (agent, plugins, entrypoint, labels, a layout
//! that runs as non-root); imported into a private containerd, its agent starts against
//! the stand-in API server, writes its conflist and turns ready, and its plugins and
//! tools run. So the image is proven to start, not only to build.
//!
//! The containerd is the test's own: root, state, socket and config in a temp dir, its
//! process in a network namespace the test made, and in a mount namespace of its own
//! with a tmpfs on /run (containerd 1.6 puts shim sockets in /run/containerd/s whatever
//! its config says), its CRI plugin off (it would read /etc/cni/net.d). Containers use
//! host networking, which is that namespace. A containerd of the machine's is never
//! used, and every container, process, cgroup, namespace and dir goes on drop.
//!
//! Needs root, the release binaries (`cargo build --release --workspace`), the
//! kube-standin binary, and containerd (Debian package `containerd`: ctr, runc, the
//! runc shim), nsenter/unshare (util-linux), tar, gzip, jq and ldd. A missing tool
//! fails the test when CI is set, and skips it with the reason otherwise.

mod sim;

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use cni_tests::{Netns, PLUGINS, TempDir, bin_dir, random_u64, workspace_root};
use kube_standin::{Control, NodeBuilder, StandinProcess};
use serde_json::Value;
use sim::{http_get, wait_for};

/// The reference `scripts/image.sh` gives the image by default.
const IMAGE: &str = concat!("localhost/cni-rs-node:", env!("CARGO_PKG_VERSION"));
const AGENT_PATH: &str = "/usr/local/bin/cni-rs-node";
const PLUGIN_DIR: &str = "/opt/cni-rs/bin";

const NODE: &str = "img-node";
const NODE_IP: &str = "10.210.0.7";
const POD_CIDR: &str = "10.244.7.0/24";
/// The MTU of the node's interface, which the agent must find (through netlink, from
/// inside the container) and put in the conflist.
const NODE_MTU: u32 = 1400;
/// The stand-in API server, on the namespace's own loopback.
const API: &str = "127.0.0.1:6443";

/// Tools the image tests run (besides what the script itself checks).
const BUILD_TOOLS: [&str; 5] = ["tar", "gzip", "jq", "ldd", "sha256sum"];
const CONTAINERD_TOOLS: [&str; 6] = [
    "containerd",
    "ctr",
    "runc",
    "containerd-shim-runc-v2",
    "nsenter",
    "unshare",
];

// ---- Prerequisites -------------------------------------------------------------------

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

fn on_path(tool: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .any(|d| d.join(tool).is_file())
}

/// Whether the test can run; when it cannot, fails in CI and says why it skips otherwise.
fn prerequisites(tools: &[&str]) -> bool {
    let mut missing: Vec<String> = tools
        .iter()
        .filter(|t| !on_path(t))
        .map(|t| t.to_string())
        .collect();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        missing.push("root".into());
    }
    if missing.is_empty() {
        return true;
    }
    let why = format!(
        "needs {} (apt-get install containerd jq; scripts/test.sh installs them)",
        missing.join(", ")
    );
    assert!(
        !in_ci(),
        "{why}; CI is set, so this fails instead of skipping"
    );
    eprintln!("SKIPPED: {why}");
    false
}

// ---- Building and reading the archive ------------------------------------------------

fn output(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"))
}

/// Runs `cmd`, panicking with its output unless it succeeds; returns its stdout.
fn run(cmd: &mut Command) -> String {
    let out = output(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The release binaries the image is made of.
fn release_dir() -> PathBuf {
    let dir = bin_dir();
    assert!(
        dir.join("cni-rs-node").is_file() && PLUGINS.iter().all(|p| dir.join(p).is_file()),
        "the agent and plugins are not built in {}: cargo build --release --workspace",
        dir.display()
    );
    dir
}

/// `scripts/image.sh` with the default tag, into `dir/name`.
fn build_image(dir: &Path, name: &str) -> PathBuf {
    let out = dir.join(name);
    run(Command::new(workspace_root().join("scripts/image.sh"))
        .arg("--prebuilt")
        .arg(release_dir())
        .arg("--out")
        .arg(&out));
    out
}

fn sha256(file: &Path) -> String {
    let out = run(Command::new("sha256sum").arg(file));
    out.split_whitespace().next().unwrap_or_default().to_owned()
}

/// One member of a tar archive, as bytes.
fn member(archive: &Path, name: &str) -> Vec<u8> {
    let out = output(Command::new("tar").arg("-xOf").arg(archive).arg(name));
    assert!(
        out.status.success(),
        "{name} is not in {}: {}",
        archive.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn json_member(archive: &Path, name: &str) -> Value {
    let bytes = member(archive, name);
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{name} is not JSON: {e}"))
}

/// `sha256:<hex>` -> `blobs/sha256/<hex>`.
fn blob_path(digest: &str) -> String {
    let hex = digest
        .strip_prefix("sha256:")
        .unwrap_or_else(|| panic!("not a sha256 digest: {digest}"));
    format!("blobs/sha256/{hex}")
}

/// One entry of `tar -tv --numeric-owner --full-time`.
#[derive(Debug)]
struct Entry {
    mode: String,
    owner: String,
    mtime: String,
    path: String,
}

fn parse_listing(text: &str) -> Vec<Entry> {
    text.lines()
        .filter_map(|line| {
            let w: Vec<&str> = line.split_whitespace().collect();
            // mode owner size date time path [-> target]
            (w.len() >= 6).then(|| Entry {
                mode: w[0].to_owned(),
                owner: w[1].to_owned(),
                mtime: format!("{} {}", w[3], w[4]),
                path: w[5].trim_end_matches('/').to_owned(),
            })
        })
        .collect()
}

fn git_head() -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(workspace_root())
        .args(["rev-parse", "HEAD"])
        .stdin(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

// ---- The tests -----------------------------------------------------------------------

/// Same inputs, same bytes; and the layout the DaemonSet relies on.
#[test]
fn archive_is_reproducible_and_laid_out_as_agreed() {
    if !prerequisites(&BUILD_TOOLS) {
        return;
    }
    let work = TempDir::new("image-layout");
    let first = build_image(work.path(), "first.tar");
    let second = build_image(work.path(), "second.tar");
    let (a, b) = (sha256(&first), sha256(&second));
    eprintln!("sha256 of two builds:\n  {a}\n  {b}");
    assert_eq!(a, b, "two builds from the same binaries differ");

    // Both loaders' entry points name the image.
    let index = json_member(&first, "index.json");
    let desc = &index["manifests"][0];
    assert_eq!(
        desc["annotations"]["org.opencontainers.image.ref.name"],
        IMAGE
    );
    let docker = json_member(&first, "manifest.json");
    assert_eq!(docker[0]["RepoTags"], serde_json::json!([IMAGE]));
    assert_eq!(
        serde_json::from_slice::<Value>(&member(&first, "oci-layout")).unwrap(),
        serde_json::json!({"imageLayoutVersion": "1.0.0"})
    );

    let manifest_digest = desc["digest"].as_str().expect("manifest digest");
    let manifest = json_member(&first, &blob_path(manifest_digest));
    let config_path = blob_path(manifest["config"]["digest"].as_str().expect("config"));
    assert_eq!(docker[0]["Config"], config_path.as_str());
    let config = json_member(&first, &config_path);
    let c = &config["config"];
    assert_eq!(c["Entrypoint"], serde_json::json!([AGENT_PATH]));
    assert_eq!(c["Cmd"], serde_json::json!(["run"]));
    let labels = &c["Labels"];
    assert_eq!(
        labels["org.opencontainers.image.version"],
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(labels["org.opencontainers.image.licenses"], "Apache-2.0");
    assert_eq!(labels["org.opencontainers.image.title"], "cni-rs-node");
    assert!(labels["org.opencontainers.image.source"].is_string());
    let revision = labels["org.opencontainers.image.revision"]
        .as_str()
        .unwrap_or_default();
    if let Some(head) = git_head() {
        assert!(
            revision == head || revision == format!("{head}-dirty"),
            "revision label {revision:?}, HEAD {head}"
        );
    }
    assert_eq!(manifest["annotations"], *labels, "annotations = labels");

    // The layer: its digest in the config matches its content.
    let layer_path = blob_path(manifest["layers"][0]["digest"].as_str().expect("layer"));
    assert_eq!(docker[0]["Layers"], serde_json::json!([layer_path]));
    let layer = work.join("layer.tar.gz");
    std::fs::write(&layer, member(&first, &layer_path)).unwrap();
    let diff_id = run(Command::new("sh")
        .arg("-c")
        .arg("gzip -dc \"$1\" | sha256sum")
        .arg("sh")
        .arg(&layer));
    assert_eq!(
        config["rootfs"]["diff_ids"][0],
        format!(
            "sha256:{}",
            diff_id.split_whitespace().next().unwrap_or_default()
        )
    );

    let listing = run(Command::new("tar")
        .args(["-tvz", "--numeric-owner", "--full-time", "-f"])
        .arg(&layer));
    let entries = parse_listing(&listing);
    check_layer(&entries);
    let passwd = run(Command::new("tar")
        .arg("-xzOf")
        .arg(&layer)
        .arg("etc/passwd"));
    assert!(passwd.contains("\nnobody:x:65534:65534:"), "{passwd}");
}

fn check_layer(entries: &[Entry]) {
    let paths: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
    let mut sorted = paths.clone();
    sorted.sort_unstable();
    assert_eq!(paths, sorted, "layer entries are not in sorted order");
    let mtimes: std::collections::BTreeSet<&str> =
        entries.iter().map(|e| e.mtime.as_str()).collect();
    assert_eq!(mtimes.len(), 1, "more than one mtime: {mtimes:?}");
    for e in entries {
        assert_eq!(e.owner, "0/0", "{} is not owned by root", e.path);
        // World-readable, so the image also runs as a non-root user.
        assert_eq!(
            &e.mode[7..8],
            "r",
            "{} is not world-readable: {}",
            e.path,
            e.mode
        );
    }
    let mode_of = |path: &str| {
        entries
            .iter()
            .find(|e| e.path == path)
            .map(|e| e.mode.as_str())
            .unwrap_or_else(|| panic!("{path} is not in the image"))
    };
    let agent = AGENT_PATH.trim_start_matches('/');
    assert_eq!(mode_of(agent), "-rwxr-xr-x");
    for p in PLUGINS {
        let path = format!("{}/{p}", PLUGIN_DIR.trim_start_matches('/'));
        assert_eq!(mode_of(&path), "-rwxr-xr-x");
    }
    assert_eq!(mode_of("tmp"), "drwxrwxrwt");
    for p in [
        "usr/sbin/nft",
        "etc/group",
        "etc/ssl/certs/ca-certificates.crt",
    ] {
        mode_of(p);
    }
}

/// Imports the archive into a private containerd and runs what is in it.
#[test]
fn image_starts_in_a_private_containerd() {
    if !prerequisites(&[&BUILD_TOOLS[..], &CONTAINERD_TOOLS[..]].concat()) {
        return;
    }
    let work = TempDir::new("image-run");
    let archive = build_image(work.path(), "image.tar");
    let node = node_namespace();
    let api = standin(&node, &work);
    let mut ctd = Containerd::start(&node);
    ctd.import(&archive);

    for p in PLUGINS {
        let out = ctd.run_once(&[&format!("{PLUGIN_DIR}/{p}")], &["CNI_COMMAND=VERSION"]);
        let v: Value = serde_json::from_str(out.trim())
            .unwrap_or_else(|e| panic!("{p} VERSION in the image is not JSON ({e}): {out}"));
        assert!(
            v["supportedVersions"]
                .as_array()
                .is_some_and(|a| a.contains(&Value::from("1.0.0"))),
            "{p}: {v}"
        );
    }
    // The tools the agent runs, with the libraries the image carries for them.
    let nft = ctd.run_once(&["/usr/sbin/nft", "--version"], &[]);
    assert!(nft.starts_with("nftables v"), "{nft}");
    let ipt = ctd.run_once(&["/usr/sbin/iptables-save", "--version"], &[]);
    assert!(ipt.contains("nf_tables"), "{ipt}");

    let mut agent = ctd.start_agent(&work);
    let health = agent.health;
    let ready = wait_for(Duration::from_secs(30), || {
        get(&node, health, "/readyz").0 == 200 || !agent.running()
    }) && agent.running();
    assert!(
        ready,
        "the agent in the image did not turn ready: {:?}\nagent log:\n{}\ncontainerd log:\n{}",
        get(&node, health, "/readyz"),
        agent.log(),
        ctd.log()
    );
    let conflist =
        std::fs::read_to_string(work.join("netd/10-cni-rs.conflist")).unwrap_or_else(|e| {
            panic!(
                "no conflist in the bind-mounted dir ({e}):\n{}",
                agent.log()
            )
        });
    let conf: Value = serde_json::from_str(&conflist).expect("conflist is JSON");
    assert!(conflist.contains(POD_CIDR), "{conflist}");
    assert_eq!(conf["plugins"][0]["mtu"], NODE_MTU, "{conflist}");
    // nft in the image, run by the agent, set up masquerade in the node namespace.
    let metrics = get(&node, health, "/metrics").1;
    assert!(
        metrics.contains("cni_rs_node_masquerade_errors_total 0")
            && !metrics.contains("cni_rs_node_masquerade_updates_total 0"),
        "{metrics}\n{}",
        agent.log()
    );
    // iptables-save in the image ran too (the first pass, done before /readyz turned
    // 200, looks at the FORWARD policy): it would log `forward: <error>`.
    assert!(!agent.log().contains(" forward: "), "{}", agent.log());
    // Requests reached the stand-in: the watch the agent keeps open.
    assert!(api.open_watches().expect("stand-in state") >= 1);

    // SIGTERM, as the kubelet stops it: PID 1 of the container exits cleanly.
    let status = agent.stop(&ctd);
    assert!(status.success(), "agent exited {status}:\n{}", agent.log());
    eprintln!("image {IMAGE} started, turned ready and stopped cleanly");
}

// ---- The node: a namespace, its address, the stand-in API server ---------------------

fn node_namespace() -> Netns {
    let ns = Netns::new("image");
    ns.lo_up();
    // The node's address on an interface of the namespace: the agent takes the pods'
    // MTU from it. A veth with both ends inside (no dummy module needed).
    let mtu = NODE_MTU.to_string();
    ns.ip([
        "link", "add", "eth0", "mtu", &mtu, "type", "veth", "peer", "name", "eth0p", "mtu", &mtu,
    ]);
    ns.ip(["addr", "add", &format!("{NODE_IP}/24"), "dev", "eth0"]);
    ns.ip(["link", "set", "eth0p", "up"]);
    ns.ip(["link", "set", "eth0", "up"]);
    ns
}

fn standin(node: &Netns, work: &TempDir) -> StandinProcess {
    let bin = kube_standin::binary()
        .expect("the kube-standin binary is not built: cargo build --release --workspace");
    let sock = work.join("standin.sock");
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", node.name()])
        .arg(bin)
        .args(["--listen", API, "--control-socket"])
        .arg(&sock)
        .stdin(Stdio::null());
    let api = StandinProcess::spawn(cmd, Some(&sock)).expect("start kube-standin");
    let n = NodeBuilder::new(NODE)
        .pod_cidr(POD_CIDR)
        .internal_ip(NODE_IP)
        .build();
    api.upsert(&n).expect("upsert the Node");
    let kube = work.join("kube");
    std::fs::create_dir(&kube).unwrap();
    std::fs::write(
        kube.join("kubeconfig"),
        kube_standin::kubeconfig(&format!("http://{API}")),
    )
    .unwrap();
    std::fs::create_dir(work.join("netd")).unwrap();
    api
}

/// GET on the agent's health port inside the node namespace: (status, body).
fn get(node: &Netns, port: u16, path: &str) -> (u16, String) {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    http_get(node.path(), addr, "x", path).unwrap_or((0, String::new()))
}

// ---- A private containerd ------------------------------------------------------------

/// containerd with everything of its own under a temp dir, run in the node namespace.
/// Drop removes its containers, stops it and any shim it left, and its cgroups.
struct Containerd {
    child: Option<Child>,
    /// The containerd namespace: also the parent of its containers' cgroups.
    namespace: String,
    snapshotter: &'static str,
    containers: Vec<String>,
    dir: TempDir,
}

/// Plugins off: CRI (it would load /etc/cni/net.d and serve a streaming port), `opt`
/// (it creates /opt/containerd), snapshotters this test does not use, tracing.
const DISABLED_PLUGINS: [&str; 8] = [
    "io.containerd.grpc.v1.cri",
    "io.containerd.internal.v1.opt",
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.zfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.tracing.processor.v1.otlp",
    "io.containerd.internal.v1.tracing",
];

impl Containerd {
    fn start(node: &Netns) -> Containerd {
        let dir = TempDir::new("image-ctd");
        let snapshotter = if overlay_works(&dir) {
            "overlayfs"
        } else {
            eprintln!("note: overlay mounts fail here: using the native snapshotter");
            "native"
        };
        let config = dir.join("config.toml");
        std::fs::write(&config, config_toml(dir.path())).unwrap();
        let log = File::create(dir.join("containerd.log")).unwrap();
        let child = Command::new("nsenter")
            .arg(format!("--net={}", node.path().display()))
            .args(["--", "unshare", "--mount", "--propagation", "slave", "--"])
            .args([
                "sh",
                "-c",
                "mount -t tmpfs -o mode=0755 cnit-run /run && exec \"$@\"",
            ])
            .args(["sh", "containerd", "--config"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn containerd");
        let mut ctd = Containerd {
            child: Some(child),
            namespace: format!("cnit-{}-{:x}", std::process::id(), random_u64() >> 40),
            snapshotter,
            containers: Vec::new(),
            dir,
        };
        let up = wait_for(Duration::from_secs(20), || {
            !ctd.running() || output(ctd.ctr().arg("version")).status.success()
        }) && ctd.running();
        assert!(up, "the private containerd did not come up:\n{}", ctd.log());
        ctd
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    fn running(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    /// `ctr` talking to this containerd only, in its namespace.
    fn ctr(&self) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address")
            .arg(self.socket())
            .args(["--namespace", &self.namespace]);
        cmd
    }

    fn import(&self, archive: &Path) {
        run(self
            .ctr()
            .args(["images", "import", "--snapshotter", self.snapshotter])
            .arg(archive));
        let names = run(self.ctr().args(["images", "ls", "-q"]));
        assert!(
            names.lines().any(|l| l == IMAGE),
            "the import did not name the image {IMAGE}: {names}"
        );
    }

    fn new_id(&mut self, tag: &str) -> String {
        let id = format!("{tag}-{:x}", random_u64() >> 32);
        self.containers.push(id.clone());
        id
    }

    /// `ctr run` options every container here gets: host networking (the node
    /// namespace), output to a file (ctr's own stdin never reaches EOF in the container).
    fn run_args(&self, log: &Path) -> Vec<String> {
        vec![
            "run".into(),
            "--net-host".into(),
            "--snapshotter".into(),
            self.snapshotter.into(),
            "--log-uri".into(),
            format!("file://{}", log.display()),
        ]
    }

    /// Runs `args` in a new container of the image until it exits; returns its output.
    fn run_once(&mut self, args: &[&str], env: &[&str]) -> String {
        let id = self.new_id("once");
        let log = self.dir.join(format!("{id}.log"));
        let mut cmd = self.ctr();
        cmd.args(self.run_args(&log)).arg("--rm");
        for e in env {
            cmd.args(["--env", e]);
        }
        cmd.args([IMAGE, &id]).args(args);
        let out = output(&mut cmd);
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(
            out.status.success(),
            "{args:?} in the image failed ({}): {text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        text
    }

    /// The agent as the DaemonSet runs it: entrypoint and default command of the image,
    /// settings from the environment, read-only root, NET_ADMIN and NET_RAW, the conf
    /// dir and a kubeconfig mounted.
    fn start_agent(&mut self, work: &TempDir) -> Agent {
        let id = self.new_id("agent");
        let log = work.join("agent.log");
        let health = 20000 + (random_u64() % 20000) as u16;
        let mut cmd = self.ctr();
        cmd.args(self.run_args(&log))
            .args(["--rm", "--read-only"])
            .args(["--cap-add", "CAP_NET_ADMIN", "--cap-add", "CAP_NET_RAW"])
            .arg("--mount")
            .arg(bind(&work.join("netd"), "/etc/cni/net.d", "rw"))
            .arg("--mount")
            .arg(bind(&work.join("kube"), "/etc/kubernetes", "ro"))
            .args(["--env", &format!("NODE_NAME={NODE}")])
            .args(["--env", "KUBECONFIG=/etc/kubernetes/kubeconfig"])
            .args(["--env", &format!("CNI_RS_HEALTH_ADDR=127.0.0.1:{health}")])
            .args([IMAGE, &id])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd.spawn().expect("spawn ctr run");
        Agent {
            ctr: Some(child),
            id,
            log,
            health,
        }
    }

    /// Removes a container and its task, whatever state they are in.
    fn remove_container(&self, id: &str) {
        let quiet = |cmd: &mut Command| {
            let _ = cmd
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        };
        quiet(self.ctr().args(["task", "kill", "--signal", "SIGKILL", id]));
        quiet(self.ctr().args(["task", "delete", "--force", id]));
        quiet(self.ctr().args(["containers", "delete", id]));
    }

    /// Shims and container processes of ours still alive (their containerd gone or
    /// unable to stop them), from the pid files in our own state dir.
    fn leftover_pids(&self) -> Vec<i32> {
        let tasks = self
            .dir
            .join("state/io.containerd.runtime.v2.task")
            .join(&self.namespace);
        let mut pids = Vec::new();
        for bundle in std::fs::read_dir(tasks).into_iter().flatten().flatten() {
            for file in ["init.pid", "shim.pid"] {
                if let Ok(text) = std::fs::read_to_string(bundle.path().join(file))
                    && let Ok(pid) = text.trim().parse::<i32>()
                    && pid > 1
                    && self.is_ours(pid)
                {
                    pids.push(pid);
                }
            }
        }
        pids
    }

    /// A process is ours if its command line names our socket (a shim) or it lives in a
    /// cgroup under our containerd namespace (a container's process).
    fn is_ours(&self, pid: i32) -> bool {
        let socket = self.socket().display().to_string();
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        String::from_utf8_lossy(&cmdline).contains(&socket)
            || cgroup.contains(&format!("/{}/", self.namespace))
    }

    /// runc removes a container's cgroup on delete but leaves the namespace's parent
    /// (`/<namespace>` in every hierarchy); rmdir only removes empty ones.
    fn remove_cgroups(&self) {
        let roots = std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .chain([PathBuf::from("/sys/fs/cgroup")]);
        for root in roots {
            let parent = root.join(&self.namespace);
            for id in &self.containers {
                let _ = std::fs::remove_dir(parent.join(id));
            }
            let _ = std::fs::remove_dir(&parent);
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- private containerd log ----\n{}", self.log());
        }
        for id in &self.containers {
            self.remove_container(id);
        }
        for pid in self.leftover_pids() {
            // SAFETY: a pid from our own state dir, checked to be ours just now.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        if let Some(mut child) = self.child.take() {
            // SAFETY: our child, not reaped yet.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let end = Instant::now() + Duration::from_secs(5);
            while Instant::now() < end && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        self.remove_cgroups();
    }
}

fn bind(src: &Path, dst: &str, mode: &str) -> String {
    format!(
        "type=bind,src={},dst={dst},options=rbind:{mode}",
        src.display()
    )
}

fn config_toml(dir: &Path) -> String {
    let d = dir.display();
    let disabled: Vec<String> = DISABLED_PLUGINS.iter().map(|p| format!("{p:?}")).collect();
    format!(
        "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n\
         disabled_plugins = [{}]\n\
         [grpc]\n  address = \"{d}/containerd.sock\"\n\
         [ttrpc]\n  address = \"{d}/containerd.sock.ttrpc\"\n\
         [debug]\n  address = \"\"\n[metrics]\n  address = \"\"\n",
        disabled.join(", ")
    )
}

/// Whether overlayfs mounts work on the temp dir's filesystem (not on an overlay root,
/// for one); tried in a throwaway mount namespace, so nothing stays mounted.
fn overlay_works(dir: &TempDir) -> bool {
    let probe = dir.join("overlay-probe");
    for d in ["lower", "upper", "work", "merged"] {
        std::fs::create_dir_all(probe.join(d)).unwrap();
    }
    let p = probe.display();
    let opts = format!("lowerdir={p}/lower,upperdir={p}/upper,workdir={p}/work");
    let ok = output(
        Command::new("unshare")
            .args([
                "--mount", "--", "mount", "-t", "overlay", "overlay", "-o", &opts,
            ])
            .arg(probe.join("merged")),
    )
    .status
    .success();
    let _ = std::fs::remove_dir_all(&probe);
    ok
}

/// The agent's container: `ctr run` attached to it, so its exit status is the agent's.
struct Agent {
    ctr: Option<Child>,
    id: String,
    log: PathBuf,
    health: u16,
}

impl Agent {
    fn running(&mut self) -> bool {
        matches!(self.ctr.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM to the container's init (the agent), then its exit status.
    fn stop(&mut self, ctd: &Containerd) -> ExitStatus {
        run(ctd
            .ctr()
            .args(["task", "kill", "--signal", "SIGTERM", &self.id]));
        let ctr = self.ctr.as_mut().expect("the agent was started");
        let end = Instant::now() + Duration::from_secs(15);
        while Instant::now() < end {
            if let Ok(Some(status)) = ctr.try_wait() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Drop kills the client; the Containerd guard the container.
        panic!(
            "the agent did not exit within 15 s of SIGTERM:\n{}",
            self.log()
        );
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // The container itself goes with the Containerd guard; this is only the client.
        if let Some(mut ctr) = self.ctr.take() {
            let _ = ctr.kill();
            let _ = ctr.wait();
        }
    }
}
