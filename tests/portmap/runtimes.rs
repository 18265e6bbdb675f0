//! The port mappings exactly as each runtime sends them. containerd's CRI plugin (go-cni)
//! marshals its `PortMapping` struct without JSON tags, so the keys are Go's field names
//! (`"HostPort"`); CRI-O (ocicni) sends the camelCase the conventions document. The
//! reference decodes both with Go's case-insensitive key matching, and so must we.

use serde_json::{Value, json};

use crate::fixture::*;

/// containerd 1.6 and 1.7 (and 2.x: the same go-cni type), byte for byte.
const CONTAINERD: &str =
    r#"{"portMappings":[{"HostPort":19301,"ContainerPort":8080,"Protocol":"tcp","HostIP":""}]}"#;

/// CRI-O (ocicni), with the `hostIP` it sends when the pod names none.
const CRIO: &str =
    r#"{"portMappings":[{"hostPort":19301,"containerPort":8080,"protocol":"tcp","hostIP":""}]}"#;

/// ADD, traffic, CHECK and DEL of one pod with `runtime_config` as the runtime sent it.
fn runtime_mapping_works(backend: &str, runtime_config: &str) {
    let node = Node::new();
    let pod = node.pod("web");
    let _web = pod.serve_tcp(8080, "hello");
    let mut c = conf(backend, json!([]), &pod);
    c["runtimeConfig"] = serde_json::from_str::<Value>(runtime_config).expect("payload");

    node.portmap("ADD", &pod, &c).assert_ok();
    assert!(
        node.firewall(backend).contains("19301"),
        "{backend}: no rule for host port 19301 after ADD:\n{}",
        node.firewall(backend)
    );
    for addr in [NODE_V4, NODE_V6] {
        assert_eq!(
            eventually(3, || tcp_reply(&node.ext, addr, 19301)).as_deref(),
            Some("hello"),
            "{backend}: host port 19301 via {addr}"
        );
    }
    node.portmap("CHECK", &pod, &c).assert_ok();

    node.portmap("DEL", &pod, &c).assert_ok();
    assert!(
        !node.firewall(backend).contains("19301"),
        "{backend}: a rule for host port 19301 is left after DEL:\n{}",
        node.firewall(backend)
    );
    assert_eq!(tcp_reply_within(&node.ext, NODE_V4, 19301, SILENCE), None);
}

#[test]
fn containerd_payload_iptables() {
    runtime_mapping_works("iptables", CONTAINERD);
}

#[test]
fn containerd_payload_nftables() {
    runtime_mapping_works("nftables", CONTAINERD);
}

#[test]
fn containerd_payload_nftables_sets() {
    runtime_mapping_works("nftables-sets", CONTAINERD);
}

#[test]
fn crio_payload_iptables() {
    runtime_mapping_works("iptables", CRIO);
}

#[test]
fn crio_payload_nftables() {
    runtime_mapping_works("nftables", CRIO);
}
