//! The `kube-standin` binary as a test in another network namespace would run it:
//! flags, the `listening on` line, and the control API over its Unix socket and over
//! the `/_standin/` HTTP paths.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::{T, Watch, get, get_json, request};
use kube_standin::{Control, Failure, NodeBuilder, RemoteStandin, StandinProcess, Verb};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kube-standin"))
}

fn socket_path(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("standin-{tag}-{}.sock", std::process::id()))
}

#[test]
fn generated_cluster_and_unix_socket_control() {
    let sock = socket_path("gen");
    let mut cmd = bin();
    cmd.args(["--listen", "127.0.0.1:0", "--generate", "3"])
        .args(["--pod-cidr-base", "10.244.0.0/16,fd00:10:244::/56"])
        .args([
            "--node-ip-base",
            "10.0.0.0/16",
            "--bookmark-interval",
            "0.1",
        ])
        .arg("--control-socket")
        .arg(&sock);
    let p = StandinProcess::spawn(cmd, Some(&sock)).unwrap();
    let list = get_json(p.addr(), "/api/v1/nodes");
    let n3 = &list["items"][2];
    assert_eq!(n3["metadata"]["name"], "node-3");
    assert_eq!(n3["spec"]["podCIDRs"][0], "10.244.2.0/24");
    assert_eq!(n3["spec"]["podCIDRs"][1], "fd00:10:244:2::/64");
    assert_eq!(n3["status"]["addresses"][0]["address"], "10.0.0.3");
    assert_eq!(p.state().unwrap().nodes, 3);

    // Control keeps working while the API listener is down.
    let rv = p.upsert(&NodeBuilder::new("extra").build()).unwrap();
    assert_eq!(p.resource_version().unwrap(), rv);
    p.inject(Failure::Down).unwrap();
    assert!(std::net::TcpStream::connect(p.addr()).is_err());
    assert_eq!(p.state().unwrap().failure, Some(Failure::Down));
    assert_eq!(p.delete("extra").unwrap(), Some(rv + 1));
    assert_eq!(p.delete("extra").unwrap(), None);
    p.clear_failures().unwrap();
    let mut w = Watch::open(
        p.addr(),
        &format!(
            "/api/v1/nodes?watch=true&resourceVersion={}&allowWatchBookmarks=true",
            rv + 1
        ),
    );
    assert!(p.wait_for_watches(1, T).unwrap());
    assert_eq!(w.next(T).unwrap()["type"], "BOOKMARK");
    p.expire().unwrap();
    assert_eq!(w.next_change(T).unwrap()["type"], "ERROR");

    let log = p.requests().unwrap();
    assert!(log.iter().any(|r| r.verb == Some(Verb::Watch)));
    p.clear_requests().unwrap();
    assert!(p.requests().unwrap().is_empty());
    drop(p);
    assert!(!sock.exists() || std::os::unix::net::UnixStream::connect(&sock).is_err());
}

#[test]
fn nodes_file_and_http_control() {
    let dir = std::env::temp_dir().join(format!("standin-bin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("nodes.json");
    let nodes = vec![
        NodeBuilder::new("a").pod_cidr("10.244.1.0/24").build(),
        NodeBuilder::new("b").pod_cidr("10.244.2.0/24").build(),
    ];
    let list = serde_json::json!({"kind": "NodeList", "apiVersion": "v1", "items": nodes});
    std::fs::write(&file, serde_json::to_vec(&list).unwrap()).unwrap();
    let mut cmd = bin();
    cmd.args([
        "--listen",
        "127.0.0.1:0",
        "--initial-resource-version",
        "7",
        "--nodes",
    ])
    .arg(&file);
    let p = StandinProcess::spawn(cmd, None).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(
        get_json(p.addr(), "/api/v1/nodes")["metadata"]["resourceVersion"],
        "9"
    );

    // Raw HTTP control, as curl would do it.
    let r = request(p.addr(), "DELETE", "/_standin/nodes/a", b"");
    assert_eq!(r.json()["resourceVersion"], "10");
    let r = request(
        p.addr(),
        "POST",
        "/_standin/fail?mode=forbidden&verbs=list",
        b"",
    );
    assert_eq!(r.status, 200);
    assert_eq!(get(p.addr(), "/api/v1/nodes").status, 403);
    let r = request(
        p.addr(),
        "POST",
        "/_standin/fail",
        br#"{"mode":"internal-error","seconds":0.2}"#,
    );
    assert_eq!(r.status, 200);
    assert_eq!(get(p.addr(), "/api/v1/nodes").status, 500);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(get(p.addr(), "/api/v1/nodes").status, 200);
    let bad = request(p.addr(), "POST", "/_standin/nodes", b"{\"kind\":\"Node\"}");
    assert_eq!(bad.status, 400);
    assert_eq!(request(p.addr(), "GET", "/_standin/nope", b"").status, 404);

    // The same through the client type; control requests are not in the log.
    let c = RemoteStandin::tcp(p.addr());
    assert_eq!(c.upsert(&NodeBuilder::new("c").build()).unwrap(), 11);
    assert!(
        c.requests()
            .unwrap()
            .iter()
            .all(|r| !r.path.starts_with("/_standin"))
    );
    assert!(c.bytes_served().unwrap() > 0);
}

#[test]
fn bad_flags_fail_with_a_message() {
    let out = bin().args(["--generate", "300"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("holds only 256 /24 subnets"), "{err}");
    let out = bin().arg("--bogus").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown flag"));
}
