//! scripts/install.sh, into temp directories only (never /opt/cni/bin or /etc/cni/net.d):
//! the rendered conflist, idempotence, refusal to overwrite, backups, and an uninstall
//! that removes exactly what was installed. Uses the built plugins (`--prebuilt`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use cni_tests::{PLUGINS, TempDir, bin_dir, workspace_root};
use serde_json::Value;

/// A fake node's filesystem: `<tmp>/opt/cni/bin` and `<tmp>/etc/cni/net.d`, not created
/// yet (the script makes them).
struct Target {
    root: TempDir,
}

impl Target {
    fn new() -> Target {
        Target {
            root: TempDir::new("install"),
        }
    }
    fn bin(&self) -> PathBuf {
        self.root.join("opt/cni/bin")
    }
    fn conf_dir(&self) -> PathBuf {
        self.root.join("etc/cni/net.d")
    }
    fn conflist(&self) -> PathBuf {
        self.conf_dir().join("10-bridge.conflist")
    }

    /// Runs install.sh with the target's directories, the built plugins and `args`.
    fn install(&self, args: &[&str]) -> Run {
        let mut cmd = Command::new("bash");
        cmd.arg(workspace_root().join("scripts/install.sh"))
            .arg("--bin-dir")
            .arg(self.bin())
            .arg("--conf-dir")
            .arg(self.conf_dir())
            .arg("--prebuilt")
            .arg(bin_dir())
            .args(args);
        Run::of(cmd, args)
    }

    fn uninstall(&self, args: &[&str]) -> Run {
        let mut cmd = Command::new("bash");
        cmd.arg(workspace_root().join("scripts/install.sh"))
            .arg("--uninstall")
            .arg("--bin-dir")
            .arg(self.bin())
            .args(args);
        Run::of(cmd, args)
    }

    /// Every file and directory under the root, relative, sorted, with file contents.
    fn snapshot(&self) -> Vec<(String, Vec<u8>)> {
        fn walk(base: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return;
            };
            for e in entries.flatten() {
                let path = e.path();
                let rel = path.strip_prefix(base).unwrap().display().to_string();
                if path.is_dir() {
                    out.push((rel + "/", Vec::new()));
                    walk(base, &path, out);
                } else {
                    out.push((rel, std::fs::read(&path).unwrap_or_default()));
                }
            }
        }
        let mut out = Vec::new();
        walk(self.root.path(), self.root.path(), &mut out);
        out.sort();
        out
    }

    fn names(&self) -> Vec<String> {
        self.snapshot().into_iter().map(|(n, _)| n).collect()
    }
}

struct Run {
    what: String,
    out: Output,
}

impl Run {
    fn of(mut cmd: Command, args: &[&str]) -> Run {
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("spawn install.sh: {e}"));
        Run {
            what: format!("install.sh {}", args.join(" ")),
            out,
        }
    }
    fn text(&self) -> String {
        format!(
            "{}{}",
            String::from_utf8_lossy(&self.out.stdout),
            String::from_utf8_lossy(&self.out.stderr)
        )
    }
    fn ok(&self) -> String {
        assert!(
            self.out.status.success(),
            "`{}` failed:\n{}",
            self.what,
            self.text()
        );
        self.text()
    }
    fn fails(&self) -> String {
        assert!(
            !self.out.status.success(),
            "`{}` should fail:\n{}",
            self.what,
            self.text()
        );
        self.text()
    }
}

fn json(path: &Path) -> Value {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// conf/<name> with its range subnets replaced, in order.
fn template_with(name: &str, subnets: &[&str]) -> Value {
    let mut conf = json(&workspace_root().join("conf").join(name));
    let ranges = conf["plugins"][0]["ipam"]["ranges"]
        .as_array_mut()
        .expect("template has ranges");
    assert_eq!(ranges.len(), subnets.len());
    for (set, subnet) in ranges.iter_mut().zip(subnets) {
        set[0]["subnet"] = Value::from(*subnet);
    }
    conf
}

#[test]
fn installs_the_plugins_and_the_nodes_conflist_then_changes_nothing_on_a_rerun() {
    let t = Target::new();
    t.install(&["--pod-cidr", "10.244.3.0/24"]).ok();
    for p in PLUGINS {
        let installed = std::fs::read(t.bin().join(p)).unwrap();
        assert_eq!(installed, std::fs::read(bin_dir().join(p)).unwrap(), "{p}");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(t.bin().join(p)).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o755, "{p} mode");
    }
    assert_eq!(
        json(&t.conflist()),
        template_with("10-bridge.conflist", &["10.244.3.0/24"]),
        "the default conflist with this node's subnet, nothing else"
    );
    let before = t.snapshot();
    let out = t.install(&["--pod-cidr", "10.244.3.0/24"]).ok();
    assert!(out.contains("unchanged"), "{out}");
    assert_eq!(t.snapshot(), before, "a second run changes nothing");
}

#[test]
fn dual_stack_and_nftables_variants() {
    let t = Target::new();
    t.install(&[
        "--pod-cidr",
        "10.244.7.0/24",
        "--pod-cidr-v6=fd00:10:244:7::/64",
    ])
    .ok();
    assert_eq!(
        json(&t.conflist()),
        template_with(
            "10-bridge-dualstack.conflist",
            &["10.244.7.0/24", "fd00:10:244:7::/64"]
        )
    );

    let t = Target::new();
    t.install(&["--pod-cidr=10.244.8.0/24", "--nftables"]).ok();
    assert_eq!(
        json(&t.conflist()),
        template_with("10-bridge-nftables.conflist", &["10.244.8.0/24"])
    );

    let t = Target::new();
    t.install(&["--pod-cidr=10.244.9.0/24", "--nftables-sets"])
        .ok();
    assert_eq!(
        json(&t.conflist()),
        template_with("10-bridge-nftables-sets.conflist", &["10.244.9.0/24"])
    );
}

#[test]
fn refuses_to_overwrite_a_different_conflist_without_force() {
    let t = Target::new();
    t.install(&["--pod-cidr", "10.244.3.0/24"]).ok();
    let before = t.snapshot();
    let err = t.install(&["--pod-cidr", "10.244.4.0/24"]).fails();
    assert!(
        err.contains("--force") && err.contains("10.244.3.0/24"),
        "{err}"
    );
    assert_eq!(t.snapshot(), before, "a refused run writes nothing");

    // Our own earlier conflist is replaced without a backup (it is ours either way)...
    t.install(&["--pod-cidr", "10.244.4.0/24", "--force"]).ok();
    assert_eq!(
        json(&t.conflist()),
        template_with("10-bridge.conflist", &["10.244.4.0/24"])
    );
    assert!(!t.names().iter().any(|n| n.contains(".pre-cni-rs")));
    // ... and uninstall still removes everything.
    t.uninstall(&[]).ok();
    assert_eq!(t.names(), Vec::<String>::new());
}

#[test]
fn a_foreign_conflist_and_plugin_are_kept_aside_and_restored_on_uninstall() {
    let t = Target::new();
    std::fs::create_dir_all(t.bin()).unwrap();
    std::fs::create_dir_all(t.conf_dir()).unwrap();
    let theirs_conf = b"{\"cniVersion\":\"0.4.0\",\"name\":\"theirs\",\"plugins\":[]}\n";
    let theirs_bridge = b"#!/bin/sh\necho an older bridge\n";
    std::fs::write(t.conflist(), theirs_conf).unwrap();
    std::fs::write(t.bin().join("bridge"), theirs_bridge).unwrap();
    std::fs::write(t.bin().join("loopback"), b"not ours").unwrap();
    std::fs::write(t.conf_dir().join("99-other.conflist"), b"{}").unwrap();
    let before = t.snapshot();

    let err = t.install(&["--pod-cidr", "10.244.3.0/24"]).fails();
    assert!(err.contains("already exists and differs"), "{err}");
    assert_eq!(t.snapshot(), before);

    t.install(&["--pod-cidr", "10.244.3.0/24", "--force"]).ok();
    assert_eq!(
        std::fs::read(t.conf_dir().join("10-bridge.conflist.pre-cni-rs")).unwrap(),
        theirs_conf
    );
    assert_eq!(
        std::fs::read(t.bin().join("bridge.pre-cni-rs")).unwrap(),
        theirs_bridge
    );
    assert_eq!(
        std::fs::read(t.bin().join("bridge")).unwrap(),
        std::fs::read(bin_dir().join("bridge")).unwrap()
    );
    // Idempotent with backups in place: the backups stay the original files.
    t.install(&["--pod-cidr", "10.244.3.0/24"]).ok();

    t.uninstall(&[]).ok();
    assert_eq!(
        t.snapshot(),
        before,
        "uninstall restores the node as it was"
    );
    let again = t.uninstall(&[]).ok();
    assert!(again.contains("nothing to uninstall"), "{again}");
}

#[test]
fn uninstall_keeps_a_file_changed_since_unless_forced() {
    let t = Target::new();
    t.install(&["--pod-cidr", "10.244.3.0/24"]).ok();
    std::fs::write(t.bin().join("portmap"), b"edited by hand").unwrap();
    let err = t.uninstall(&[]).fails();
    assert!(err.contains("changed since"), "{err}");
    assert!(t.bin().join("portmap").exists());
    assert!(
        !t.bin().join("bridge").exists(),
        "unchanged files are removed"
    );
    t.uninstall(&["--force"]).ok();
    assert_eq!(t.names(), Vec::<String>::new());
}

#[test]
fn bad_requests_change_nothing() {
    let t = Target::new();
    for (args, says) in [
        (&[][..], "--pod-cidr is required"),
        (
            &["--pod-cidr", "10.244.3.5/24"][..],
            "host bits set; the subnet is 10.244.3.0/24",
        ),
        (&["--pod-cidr", "10.244.3.0/31"][..], "/8 to /30"),
        (&["--pod-cidr", "10.244.300.0/24"][..], "not an IPv4 octet"),
        (&["--pod-cidr", "fd00::/64"][..], "not an IPv4 subnet"),
        (
            &[
                "--pod-cidr",
                "10.244.3.0/24",
                "--pod-cidr-v6",
                "10.1.0.0/16",
            ][..],
            "not an IPv6 subnet",
        ),
        (
            &[
                "--pod-cidr",
                "10.244.3.0/24",
                "--pod-cidr-v6",
                "fd00::/64",
                "--nftables",
            ][..],
            "IPv4-only",
        ),
        (&["--pod-cidr"][..], "needs a value"),
        (&["--bogus"][..], "unknown argument"),
    ] {
        let err = t.install(args).fails();
        assert!(err.contains(says), "{args:?}: expected {says:?} in:\n{err}");
        assert_eq!(t.names(), Vec::<String>::new(), "{args:?} wrote something");
    }
}

#[test]
fn help_explains_itself() {
    let out = Command::new("bash")
        .arg(workspace_root().join("scripts/install.sh"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for word in [
        "--pod-cidr",
        "--uninstall",
        "--prebuilt",
        "--force",
        "kubectl get node",
    ] {
        assert!(text.contains(word), "help lacks {word}:\n{text}");
    }
}
