//! `cni-rs-node install` and `uninstall` (the DaemonSet's init container and the
//! cleanup DaemonSet) against a scratch "host" directory, never the machine's own
//! /opt/cni/bin: a fresh install, an upgrade over the reference plugins (Debian's
//! `containernetworking-plugins`, copied in first), a re-run that changes nothing, a
//! plugin replaced while a process is executing it, and both uninstall paths
//! (`scripts/install.sh --uninstall` and `cni-rs-node uninstall`) restoring the node.
//!
//! Needs the plugins built (release or debug, or $CNI_BIN_DIR) and, for the upgrade,
//! the reference plugins in /usr/lib/cni (or $CNI_REFERENCE_DIR); `uninstall` runs in a
//! network namespace of its own, so it needs root.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use cni_tests::{Netns, TempDir, bin_dir, reference_dir, workspace_root};

const PLUGINS: [&str; 3] = ["bridge", "host-local", "portmap"];
const MANIFEST: &str = ".cni-rs-install.manifest";

/// A scratch node: `<tmp>/opt/cni/bin` and `<tmp>/etc/cni/net.d`.
struct Host {
    root: TempDir,
}

impl Host {
    fn new() -> Host {
        let root = TempDir::new("install-host");
        fs::create_dir_all(root.join("opt/cni/bin")).unwrap();
        fs::create_dir_all(root.join("etc/cni/net.d")).unwrap();
        Host { root }
    }
    fn bin(&self) -> PathBuf {
        self.root.join("opt/cni/bin")
    }
    fn conf(&self) -> PathBuf {
        self.root.join("etc/cni/net.d")
    }

    /// `cni-rs-node install --from <the built plugins> --to <bin>`.
    fn install(&self) -> Output {
        self.install_from(&bin_dir())
    }
    fn install_from(&self, from: &Path) -> Output {
        let out = Command::new(env!("CARGO_BIN_EXE_cni-rs-node"))
            .arg("install")
            .arg("--from")
            .arg(from)
            .arg("--to")
            .arg(self.bin())
            .env_remove("CNI_RS_BIN_DIR")
            .env_remove("CNI_RS_INSTALL_FROM")
            .stdin(Stdio::null())
            .output()
            .expect("run cni-rs-node install");
        assert!(out.status.success(), "install failed: {}", text(&out));
        out
    }

    /// Name -> (size, mtime ns, inode) of everything in the bin dir, and the dir's mtime.
    fn snapshot(&self) -> (Vec<(String, u64, i64, u64)>, i64) {
        let mut files: Vec<_> = fs::read_dir(self.bin())
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let m = fs::symlink_metadata(e.path()).unwrap();
                let t = m.mtime() * 1_000_000_000 + m.mtime_nsec();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    m.len(),
                    t,
                    m.ino(),
                )
            })
            .collect();
        files.sort();
        let d = fs::metadata(self.bin()).unwrap();
        (files, d.mtime() * 1_000_000_000 + d.mtime_nsec())
    }

    fn names(&self) -> Vec<String> {
        self.snapshot().0.into_iter().map(|f| f.0).collect()
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn same_bytes(a: &Path, b: &Path) -> bool {
    fs::read(a).unwrap() == fs::read(b).unwrap()
}

fn reference() -> PathBuf {
    reference_dir().unwrap_or_else(|| {
        panic!(
            "the reference plugins are missing: apt-get install containernetworking-plugins \
             (scripts/test.sh does), or set CNI_REFERENCE_DIR"
        )
    })
}

/// The reference plugins and `loopback`, as the `kubernetes-cni` package leaves a node.
fn with_reference_plugins(host: &Host) {
    for p in PLUGINS.iter().chain(&["loopback"]) {
        fs::copy(reference().join(p), host.bin().join(p)).unwrap();
    }
}

#[test]
fn a_fresh_install_puts_the_plugins_in_place_and_nothing_else() {
    let host = Host::new();
    let out = host.install();
    let mut want: Vec<String> = PLUGINS.iter().map(|s| s.to_string()).collect();
    want.insert(0, MANIFEST.into());
    assert_eq!(host.names(), want, "{}", text(&out));
    for p in PLUGINS {
        let dest = host.bin().join(p);
        assert!(same_bytes(&dest, &bin_dir().join(p)), "{p}");
        let mode = fs::metadata(&dest).unwrap().permissions().mode();
        assert_eq!(mode & 0o7777, 0o755, "{p}");
    }
    let manifest = fs::read_to_string(host.bin().join(MANIFEST)).unwrap();
    for p in PLUGINS {
        let path = host.bin().join(p).display().to_string();
        assert!(
            manifest
                .lines()
                .any(|l| l.starts_with("file\t") && l.ends_with(&format!("\t{path}"))),
            "{manifest}"
        );
    }
    assert!(!manifest.contains("backup\t"), "{manifest}");
    // The binaries it installed run (without CNI_COMMAND a plugin prints its versions).
    let v = Command::new(host.bin().join("bridge"))
        .env_remove("CNI_COMMAND")
        .output()
        .unwrap();
    assert!(text(&v).contains("CNI"), "{}", text(&v));
}

#[test]
fn an_upgrade_over_the_reference_plugins_keeps_them_and_leaves_loopback() {
    let host = Host::new();
    with_reference_plugins(&host);
    let loopback_before = fs::metadata(host.bin().join("loopback")).unwrap();
    let out = host.install();
    assert!(text(&out).contains("kept as"), "{}", text(&out));
    for p in PLUGINS {
        assert!(same_bytes(&host.bin().join(p), &bin_dir().join(p)), "{p}");
        let kept = host.bin().join(format!("{p}.pre-cni-rs"));
        assert!(same_bytes(&kept, &reference().join(p)), "{p}");
    }
    let loopback = fs::metadata(host.bin().join("loopback")).unwrap();
    assert_eq!(loopback.ino(), loopback_before.ino());
    assert_eq!(loopback.mtime_nsec(), loopback_before.mtime_nsec());
    assert!(same_bytes(
        &host.bin().join("loopback"),
        &reference().join("loopback")
    ));
    assert!(
        host.names().iter().all(|n| !n.ends_with(".cni-rs-tmp")),
        "{:?}",
        host.names()
    );

    // scripts/install.sh --uninstall reads the same manifest and puts the reference back.
    let out = Command::new("bash")
        .arg(workspace_root().join("scripts/install.sh"))
        .arg("--uninstall")
        .arg("--bin-dir")
        .arg(host.bin())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        host.names(),
        ["bridge", "host-local", "loopback", "portmap"],
        "{}",
        text(&out)
    );
    for p in PLUGINS.iter().chain(&["loopback"]) {
        assert!(same_bytes(&host.bin().join(p), &reference().join(p)), "{p}");
    }
}

#[test]
fn a_re_run_changes_nothing() {
    let host = Host::new();
    with_reference_plugins(&host);
    host.install();
    let before = host.snapshot();
    // mtimes have nanoseconds here, but leave a tick for a coarse clock anyway.
    std::thread::sleep(Duration::from_millis(20));
    let out = host.install();
    assert_eq!(host.snapshot(), before, "{}", text(&out));
    assert_eq!(text(&out).matches("unchanged").count(), 3, "{}", text(&out));
}

#[test]
fn a_plugin_being_executed_is_replaced_and_keeps_running() {
    let host = Host::new();
    // The "old portmap" is a copy of sleep, running for the whole replacement.
    let sleep = PathBuf::from("/bin/sleep");
    fs::copy(&sleep, host.bin().join("portmap")).unwrap();
    let mut old = Command::new(host.bin().join("portmap"))
        .arg("2")
        .stdin(Stdio::null())
        .spawn()
        .expect("run the old portmap");
    // A write in place would fail with ETXTBSY here; a rename does not.
    let installed = std::panic::catch_unwind(|| host.install());
    let running = old.try_wait().unwrap().is_none();
    let status = old.wait().unwrap();
    let out = installed.unwrap_or_else(|p| std::panic::resume_unwind(p));
    assert!(
        running,
        "the old portmap ended before the install did: {status:?}"
    );
    assert!(
        status.success(),
        "the running old portmap failed: {status:?}"
    );
    assert!(same_bytes(
        &host.bin().join("portmap"),
        &bin_dir().join("portmap")
    ));
    assert!(same_bytes(&host.bin().join("portmap.pre-cni-rs"), &sleep));
    assert!(text(&out).contains("portmap.pre-cni-rs"), "{}", text(&out));
}

#[test]
fn an_install_of_another_version_replaces_ours_without_a_second_backup() {
    let host = Host::new();
    with_reference_plugins(&host);
    host.install();
    // "Another version": the image's plugins with one byte appended.
    let newer = TempDir::new("install-newer");
    for p in PLUGINS {
        let mut bytes = fs::read(bin_dir().join(p)).unwrap();
        bytes.push(0);
        fs::write(newer.join(p), bytes).unwrap();
    }
    host.install_from(newer.path());
    for p in PLUGINS {
        assert!(same_bytes(&host.bin().join(p), &newer.join(p)), "{p}");
        let kept = host.bin().join(format!("{p}.pre-cni-rs"));
        assert!(same_bytes(&kept, &reference().join(p)), "{p}");
    }
}

#[test]
fn uninstall_leaves_the_node_as_install_sh_uninstall_would() {
    let host = Host::new();
    with_reference_plugins(&host);
    host.install();
    // What the agent wrote, and another network's conflist that must stay.
    fs::write(host.conf().join("10-cni-rs.conflist"), "{}").unwrap();
    fs::write(host.conf().join("99-other.conflist"), "{}").unwrap();
    // In a namespace of its own: `uninstall` also runs `cleanup` (routes, nftables,
    // iptables), which must never touch the machine's own.
    let ns = Netns::new("uninstall");
    let bin = host.bin();
    let conf = host.conf();
    let mut cmd = ns.exec_command(&[env!("CARGO_BIN_EXE_cni-rs-node")]);
    cmd.arg("uninstall")
        .arg("--bin-dir")
        .arg(&bin)
        .arg("--cni-conf-dir")
        .arg(&conf)
        .stdin(Stdio::null());
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        host.names(),
        ["bridge", "host-local", "loopback", "portmap"],
        "{}",
        text(&out)
    );
    for p in PLUGINS {
        assert!(same_bytes(&host.bin().join(p), &reference().join(p)), "{p}");
    }
    let left: Vec<String> = fs::read_dir(host.conf())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["99-other.conflist"]);
    // Nothing recorded any more: again is a no-op.
    let again = ns
        .exec_command(&[env!("CARGO_BIN_EXE_cni-rs-node")])
        .arg("uninstall")
        .arg("--bin-dir")
        .arg(&bin)
        .arg("--cni-conf-dir")
        .arg(&conf)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(again.status.success(), "{}", text(&again));
    assert!(
        text(&again).contains("nothing installed there"),
        "{}",
        text(&again)
    );
}
