//! Packets through the host port: every path a client can take, both protocols, both
//! families, both backends.

use serde_json::json;

use crate::fixture::*;

/// Every path to a pod's host port, TCP and UDP, IPv4 and IPv6; then DEL closes them.
fn all_paths_reach_the_pod(backend: &str) {
    let node = Node::new();
    let pod = node.pod("web");
    let other = node.pod("client");
    let _tcp = pod.serve_tcp(80, "tcp-web");
    let _udp = pod.serve_udp(53, "udp-web");
    let conf = conf(
        backend,
        json!([map(8080, 80, "tcp"), map(5353, 53, "udp")]),
        &pod,
    );
    let out = node.portmap("ADD", &pod, &conf);
    out.assert_ok();

    let tcp = |from: &cni_tests::Netns, addr: &str| eventually(3, || tcp_reply(from, addr, 8080));
    let udp =
        |from: &cni_tests::Netns, addr: &str| eventually(3, || udp_reply(from, addr, 5353, None));
    let want_tcp = Some("tcp-web".to_string());
    let want_udp = Some("udp-web".to_string());
    let paths: [(&str, &cni_tests::Netns, &str); 9] = [
        ("node via 127.0.0.1", &node.host, "127.0.0.1"),
        ("node via its v4 address", &node.host, NODE_V4),
        ("node via its v6 address", &node.host, NODE_V6),
        ("external via v4", &node.ext, NODE_V4),
        ("external via v6", &node.ext, NODE_V6),
        ("another pod via v4", &other.ns, NODE_V4),
        ("another pod via v6", &other.ns, NODE_V6),
        ("hairpin via v4", &pod.ns, GW_V4),
        ("hairpin via v6", &pod.ns, GW_V6),
    ];
    for (what, from, addr) in paths {
        assert_eq!(tcp(from, addr), want_tcp, "{backend}: TCP {what}");
        assert_eq!(udp(from, addr), want_udp, "{backend}: UDP {what}");
    }

    node.portmap("DEL", &pod, &conf).assert_ok();
    for (what, from, addr) in paths {
        assert_eq!(
            tcp_reply_within(from, addr, 8080, SILENCE),
            None,
            "{backend}: TCP {what} after DEL"
        );
        assert_eq!(
            udp_reply_within(from, addr, 5353, None, SILENCE),
            None,
            "{backend}: UDP {what} after DEL"
        );
    }
}

#[test]
fn iptables_every_path_reaches_the_pod_until_del() {
    all_paths_reach_the_pod("iptables");
}

#[test]
fn nftables_every_path_reaches_the_pod_until_del() {
    all_paths_reach_the_pod("nftables");
}

#[test]
fn nftables_sets_every_path_reaches_the_pod_until_del() {
    all_paths_reach_the_pod("nftables-sets");
}

/// A mapping bound to one host address answers there only; `0.0.0.0` / `::` mean every
/// address of their own family.
fn host_ip_binds_the_mapping(backend: &str) {
    let node = Node::new();
    let pod = node.pod("web");
    let _tcp = pod.serve_tcp(80, "web");
    let mut bound_v4 = map(8081, 80, "tcp");
    bound_v4["hostIP"] = json!(NODE_V4);
    let mut bound_v6 = map(8082, 80, "tcp");
    bound_v6["hostIP"] = json!(NODE_V6);
    let mut any_v4 = map(8083, 80, "tcp");
    any_v4["hostIP"] = json!("0.0.0.0");
    let mut any_v6 = map(8084, 80, "tcp");
    any_v6["hostIP"] = json!("::");
    let conf = conf(backend, json!([bound_v4, bound_v6, any_v4, any_v6]), &pod);
    node.portmap("ADD", &pod, &conf).assert_ok();

    let web = Some("web".to_string());
    let reach = |addr: &str, port: u16| eventually(2, || tcp_reply(&node.ext, addr, port));
    assert_eq!(
        reach(NODE_V4, 8081),
        web,
        "{backend}: bound v4 on its address"
    );
    assert_eq!(
        tcp_reply_within(&node.ext, NODE2_V4, 8081, SILENCE),
        None,
        "{backend}: bound v4 elsewhere"
    );
    assert_eq!(
        tcp_reply_within(&node.host, "127.0.0.1", 8081, SILENCE),
        None,
        "{backend}: bound v4 on lo"
    );
    assert_eq!(
        tcp_reply_within(&node.ext, NODE_V6, 8081, SILENCE),
        None,
        "{backend}: bound v4 over v6"
    );

    assert_eq!(
        reach(NODE_V6, 8082),
        web,
        "{backend}: bound v6 on its address"
    );
    assert_eq!(
        tcp_reply_within(&node.ext, NODE2_V6, 8082, SILENCE),
        None,
        "{backend}: bound v6 elsewhere"
    );
    assert_eq!(
        tcp_reply_within(&node.ext, NODE_V4, 8082, SILENCE),
        None,
        "{backend}: bound v6 over v4"
    );

    assert_eq!(
        reach(NODE_V4, 8083),
        web,
        "{backend}: 0.0.0.0 on the uplink"
    );
    assert_eq!(
        reach(NODE2_V4, 8083),
        web,
        "{backend}: 0.0.0.0 on another address"
    );
    assert_eq!(
        tcp_reply_within(&node.ext, NODE_V6, 8083, SILENCE),
        None,
        "{backend}: 0.0.0.0 over v6"
    );

    assert_eq!(reach(NODE_V6, 8084), web, "{backend}: :: on the uplink");
    assert_eq!(
        reach(NODE2_V6, 8084),
        web,
        "{backend}: :: on another address"
    );
    assert_eq!(
        tcp_reply_within(&node.ext, NODE_V4, 8084, SILENCE),
        None,
        "{backend}: :: over v4"
    );
    node.portmap("DEL", &pod, &conf).assert_ok();
}

#[test]
fn iptables_host_ip_binds_the_mapping() {
    host_ip_binds_the_mapping("iptables");
}

#[test]
fn nftables_host_ip_binds_the_mapping() {
    host_ip_binds_the_mapping("nftables");
}

#[test]
fn nftables_sets_host_ip_binds_the_mapping() {
    host_ip_binds_the_mapping("nftables-sets");
}

/// A UDP flow keeps its NAT decision while packets keep coming. Sent before the pod
/// exists it is pinned to "deliver locally"; sent to a pod that is gone, to that pod.
/// ADD and DEL delete those entries so the flow follows the current mapping.
/// With `del_mappings` false the DEL comes without `portMappings` (as from `ctr`): the
/// ports to flush are the ones ADD recorded.
fn stale_udp_flows_follow_the_mapping(backend: &str, del_mappings: bool) {
    let node = Node::new();
    node.enable_conntrack();
    let client_port = 40_053;
    let send = |addr: &str| udp_reply(&node.ext, addr, 5353, Some(client_port));
    let silent =
        |addr: &str| udp_reply_within(&node.ext, addr, 5353, Some(client_port), SILENCE).is_none();

    // Before any pod: the flow hits the node itself (nothing listens there).
    assert!(silent(NODE_V4));
    assert!(silent(NODE_V6));
    assert!(
        !node.conntrack_udp(5353).is_empty(),
        "the unanswered flow is tracked"
    );

    let first = node.pod("first");
    let _first_srv = first.serve_udp(53, "first");
    let conf_first = conf(backend, json!([map(5353, 53, "udp")]), &first);
    let added = node.portmap("ADD", &first, &conf_first);
    added.assert_ok();
    let want = Some("first".to_string());
    for addr in [NODE_V4, NODE_V6] {
        let got = eventually(3, || send(addr));
        assert_eq!(
            got,
            want,
            "{backend}: flow to {addr} after ADD\nADD stderr: {}\nconntrack:\n{}",
            added.stderr,
            node.conntrack_udp(5353)
        );
    }

    // DEL alone must already cut the flow off from the (still running) old pod.
    let mut del_first = conf_first.clone();
    if !del_mappings {
        del_first.as_object_mut().unwrap().remove("runtimeConfig");
    }
    node.portmap("DEL", &first, &del_first).assert_ok();
    assert!(silent(NODE_V4), "{backend}: v4 flow after DEL");
    assert!(silent(NODE_V6), "{backend}: v6 flow after DEL");

    let second = node.pod("second");
    let _second_srv = second.serve_udp(53, "second");
    let conf_second = conf(backend, json!([map(5353, 53, "udp")]), &second);
    node.portmap("ADD", &second, &conf_second).assert_ok();
    let want = Some("second".to_string());
    assert_eq!(
        eventually(3, || send(NODE_V4)),
        want,
        "{backend}: v4 flow, new pod"
    );
    assert_eq!(
        eventually(3, || send(NODE_V6)),
        want,
        "{backend}: v6 flow, new pod"
    );
    node.portmap("DEL", &second, &conf_second).assert_ok();
}

#[test]
fn iptables_stale_udp_flows_follow_the_mapping() {
    stale_udp_flows_follow_the_mapping("iptables", true);
}

#[test]
fn nftables_stale_udp_flows_follow_the_mapping() {
    stale_udp_flows_follow_the_mapping("nftables", true);
}

#[test]
fn iptables_stale_udp_flows_end_on_del_without_mappings() {
    stale_udp_flows_follow_the_mapping("iptables", false);
}

#[test]
fn nftables_stale_udp_flows_end_on_del_without_mappings() {
    stale_udp_flows_follow_the_mapping("nftables", false);
}

#[test]
fn nftables_sets_stale_udp_flows_follow_the_mapping() {
    stale_udp_flows_follow_the_mapping("nftables-sets", true);
}

#[test]
fn nftables_sets_stale_udp_flows_end_on_del_without_mappings() {
    stale_udp_flows_follow_the_mapping("nftables-sets", false);
}
