//! kubectl as the oracle that the stand-in speaks the real API: `get nodes -o json`,
//! custom columns, jsonpath, `get --watch`, and `get --raw` of watch streams.
//! Uses `$KUBECTL`, else `kubectl` on PATH (Debian's `kubernetes-client`, 1.20, in
//! CI); skipped with a message when there is none.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use kube_standin::{Config, Control, NodeBuilder, Standin, Verb};
use serde_json::Value;

const T: Duration = Duration::from_secs(20);

fn kubectl_binary() -> Option<PathBuf> {
    if let Some(k) = std::env::var_os("KUBECTL") {
        return Some(PathBuf::from(k));
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("kubectl"))
            .find(|p| p.is_file())
    })
}

/// A kubeconfig and a private HOME (kubectl caches discovery under `~/.kube/cache`).
struct Kubectl {
    bin: PathBuf,
    home: PathBuf,
    kubeconfig: PathBuf,
}

impl Kubectl {
    fn new(api: &Standin) -> Option<Kubectl> {
        let Some(bin) = kubectl_binary() else {
            eprintln!(
                "SKIPPED: no kubectl (set KUBECTL or install Debian's kubernetes-client): \
                 the stand-in is not checked against kubectl"
            );
            return None;
        };
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let home = std::env::temp_dir().join(format!(
            "standin-kubectl-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&home).unwrap();
        let kubeconfig = home.join("kubeconfig");
        api.write_kubeconfig(&kubeconfig).unwrap();
        Some(Kubectl {
            bin,
            home,
            kubeconfig,
        })
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.env("HOME", &self.home)
            .env("KUBECONFIG", &self.kubeconfig)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .args(args);
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        let out = self.command(args).output().expect("run kubectl");
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn stdout(&self, args: &[&str]) -> String {
        String::from_utf8(self.run(args).stdout).unwrap()
    }
}

impl Drop for Kubectl {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.home);
    }
}

fn cluster() -> Standin {
    let api = Standin::start_with(Config {
        initial_resource_version: Some(1000),
        ..Config::default()
    })
    .unwrap();
    let nodes = vec![
        NodeBuilder::new("n1")
            .pod_cidrs(["10.244.1.0/24", "fd00:10:244:1::/64"])
            .internal_ip("10.0.0.1")
            .internal_ip("fd00::1")
            .control_plane()
            .build(),
        NodeBuilder::new("n2")
            .pod_cidr("10.244.2.0/24")
            .internal_ip("10.0.0.2")
            .external_ip("192.0.2.2")
            .build(),
        NodeBuilder::new("n3")
            .internal_ip("10.0.0.3")
            .ready(false)
            .build(),
    ];
    api.upsert_all(&nodes).unwrap();
    api
}

#[test]
fn kubectl_get_nodes_json_columns_and_jsonpath() {
    let api = cluster();
    let Some(k) = Kubectl::new(&api) else { return };

    let list: Value = serde_json::from_str(&k.stdout(&["get", "nodes", "-o", "json"])).unwrap();
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 3);
    assert_eq!(items[0]["metadata"]["name"], "n1");
    assert_eq!(items[0]["spec"]["podCIDRs"][1], "fd00:10:244:1::/64");
    assert_eq!(items[1]["status"]["addresses"][1]["type"], "ExternalIP");

    let table = k.stdout(&[
        "get",
        "nodes",
        "-o",
        "custom-columns=NAME:.metadata.name,CIDR:.spec.podCIDR,IP:.status.addresses[0].address",
    ]);
    let rows: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows[0], ["NAME", "CIDR", "IP"]);
    assert_eq!(rows[1], ["n1", "10.244.1.0/24", "10.0.0.1"]);
    assert_eq!(rows[2], ["n2", "10.244.2.0/24", "10.0.0.2"]);
    assert_eq!(rows[3], ["n3", "<none>", "10.0.0.3"]);

    let cidrs = k.stdout(&["get", "node", "n1", "-o", "jsonpath={.spec.podCIDRs[*]}"]);
    assert_eq!(cidrs, "10.244.1.0/24 fd00:10:244:1::/64");

    let plain = k.stdout(&["get", "nodes"]);
    assert!(plain.starts_with("NAME"), "{plain}");
    assert_eq!(plain.lines().count(), 4);

    let out = k.command(&["get", "node", "nope"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nodes \"nope\" not found"), "{err}");

    // kubectl's requests are the same verbs the agent's ClusterRole grants.
    for r in api.requests().unwrap() {
        assert!(
            matches!(r.verb, None | Some(Verb::Get | Verb::List)),
            "{r:?}"
        );
        assert!(
            r.user_agent
                .as_deref()
                .unwrap_or_default()
                .starts_with("kubectl")
        );
    }
}

#[test]
fn kubectl_raw_watch_shows_events_and_the_410() {
    let api = cluster();
    let Some(k) = Kubectl::new(&api) else { return };

    // Expire: a watch from before the expiry gets the in-stream ERROR and ends.
    api.expire().unwrap();
    let out = k.stdout(&[
        "get",
        "--raw",
        "/api/v1/nodes?watch=true&resourceVersion=1001",
    ]);
    let ev: Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(ev["type"], "ERROR");
    assert_eq!(ev["object"]["code"], 410);
    assert_eq!(ev["object"]["reason"], "Expired");

    // A watch from now sees a change, then ends at its timeout.
    let rv = api.resource_version().unwrap();
    let path = format!("/api/v1/nodes?watch=true&resourceVersion={rv}&timeoutSeconds=2");
    let child = k
        .command(&["get", "--raw", &path])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(api.wait_for_watches(1, T).unwrap());
    api.delete("n3").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let ev: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(ev["type"], "DELETED");
    assert_eq!(ev["object"]["metadata"]["name"], "n3");
}

#[test]
fn kubectl_get_watch_lists_then_follows_changes() {
    let api = cluster();
    let Some(k) = Kubectl::new(&api) else { return };
    let mut child = k
        .command(&["get", "nodes", "--watch", "-o", "name"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next = || lines.next().expect("kubectl output").unwrap();
    assert_eq!([next(), next(), next()], ["node/n1", "node/n2", "node/n3"]);
    let ok = api.wait_for_watches(1, T).unwrap();
    if ok {
        api.upsert(&NodeBuilder::new("n4").pod_cidr("10.244.4.0/24").build())
            .unwrap();
    }
    let line = ok.then(&mut next);
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(line.as_deref(), Some("node/n4"));
    let watch = api
        .requests()
        .unwrap()
        .into_iter()
        .find(|r| r.verb == Some(Verb::Watch))
        .unwrap();
    assert!(watch.query.contains("resourceVersion=1003"), "{watch:?}");
}
