//! scripts/demo.sh, the project's first impression, runs to the end and exits 0, with
//! cnitool (when there is one) and with its bash + jq fallback runtime, and leaves nothing
//! behind: no namespace, no scratch directory. Uses the built plugins (`--prebuilt`).

use std::process::{Command, Stdio};

use cni_tests::{bin_dir, cnitool, netns_exists, workspace_root};

/// Runs the demo with `runtime` and checks what a newcomer is promised to see.
fn demo(runtime: &str) {
    // TERM first, so the demo's trap removes what it made; a 3-minute bound per run.
    let out = Command::new("timeout")
        .args(["--signal=TERM", "--kill-after=20", "180", "bash"])
        .arg(workspace_root().join("scripts/demo.sh"))
        .arg("--prebuilt")
        .arg(bin_dir())
        .args(["--runtime", runtime])
        .stdin(Stdio::null())
        .output()
        .expect("run scripts/demo.sh");
    let text = format!(
        "{}\n--- stderr ---\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "demo.sh --runtime {runtime} failed:\n{text}"
    );
    for promise in [
        "pod a: 10.244.1.",
        "2 received",
        "hello from pod a - and you are 192.0.2.2",
        "masqueraded: the outside saw 192.0.2.1",
        "-j CNI-HOSTPORT-DNAT",
        "==> Done",
    ] {
        assert!(
            text.contains(promise),
            "demo output lacks {promise:?}:\n{text}"
        );
    }
    // The scratch directory and namespaces it announced are gone.
    let scratch = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("state:"))
        .and_then(|l| l.split_whitespace().next())
        .expect("the demo names its state directory");
    let scratch = std::path::Path::new(scratch).parent().expect("scratch dir");
    assert!(!scratch.exists(), "{} left behind", scratch.display());
    for ns in text
        .split_whitespace()
        .filter(|w| w.starts_with("cnidemo-") && !w.contains('/'))
    {
        assert!(!netns_exists(ns), "namespace {ns} left behind");
    }
}

/// One test, so the two runs never race: the demo installs missing Debian packages
/// (jq, socat) with apt-get, which takes a lock.
#[test]
fn demo_runs_to_the_end_and_leaves_nothing() {
    demo("script");
    if cnitool().is_none() {
        eprintln!("SKIPPED: the demo with cnitool: none found (scripts/test.sh builds it)");
        return;
    }
    demo("cnitool");
}
