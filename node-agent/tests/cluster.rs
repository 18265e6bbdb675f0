//! The node agent in a simulated cluster (see sim/mod.rs): three node namespaces on
//! one L2 underlay, the stand-in API server on it, one `cni-rs-node` per node and two
//! pods per node added by a CNI runtime with the conflist that node's agent wrote.
//! Every scenario of issue 11: pod-to-pod across nodes with the pods' own addresses,
//! masquerade of what leaves the cluster, Nodes deleted, renumbered and added, stale
//! routes after a restart, repairs of hand-deleted routes and link flaps, foreign routes
//! left alone, API failures (fail static), a Node without podCIDRs, dual-stack and
//! IPv6 first. Waits have deadlines that only stop a broken test; no timing is judged.
//!
//! Needs root, iproute2, nftables, iptables, ping, the plugins built (release or debug,
//! or $CNI_BIN_DIR), the kube-standin binary, and cnitool or jq.

mod sim;
#[allow(dead_code)]
#[path = "../../tests/e2e/tcp.rs"]
mod tcp;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use kube_standin::{Control, Failure, Verb};
use sim::{API, API_V6, Cluster, NODE_MTU, NodeSpec, node_ip, node_ip6, pod_cidr, wait_for};

const SECOND: Duration = Duration::from_secs(1);
/// Deadline for "within about a second" repairs: generous, so a loaded CI machine
/// does not fail the test; the benchmark measures the real latency.
const REPAIR: Duration = Duration::from_secs(5);

fn three_nodes() -> Cluster {
    let mut c = Cluster::new(&[NodeSpec::dual(1), NodeSpec::dual(2), NodeSpec::dual(3)]);
    c.start_all();
    assert!(c.converged(), "routes after start");
    c
}

/// Pings until it answers or 10 s pass: right after an ADD, the bridge's IPv6 gateway
/// address may still be in duplicate address detection and a first neighbour
/// resolution may be lost on a loaded machine.
fn reaches(from: &cni_tests::Netns, ip: IpAddr) -> bool {
    wait_for(Duration::from_secs(10), || from.ping(&ip.to_string()))
}

fn sock(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip, port)
}

#[test]
fn pods_on_every_node_reach_each_other_with_their_own_addresses() {
    let mut c = three_nodes();
    for n in ["n1", "n2", "n3"] {
        c.add_pods(n, 2);
    }
    // The conflist each agent wrote: its node's ranges in order, a default route per
    // family, the uplink's MTU, no ipMasq, portmap chained.
    for n in &c.nodes {
        let conf = n.conflist().expect("conflist written");
        let bridge = &conf["plugins"][0];
        assert_eq!(bridge["ipMasq"], false);
        assert_eq!(bridge["mtu"], NODE_MTU);
        assert_eq!(
            bridge["ipam"]["ranges"][0][0]["subnet"],
            n.spec.cidrs[0].as_str()
        );
        assert_eq!(
            bridge["ipam"]["ranges"][1][0]["subnet"],
            n.spec.cidrs[1].as_str()
        );
        assert_eq!(bridge["ipam"]["routes"].as_array().unwrap().len(), 2);
        assert_eq!(conf["plugins"][1]["type"], "portmap");
        let names: Vec<String> = std::fs::read_dir(n.conf.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            ["10-cni-rs.conflist"],
            "nothing else in the conf dir"
        );
    }
    // Every pod pings every other pod, both families.
    let pods = c.pods();
    for (from_node, from) in &pods {
        for (to_node, to) in &pods {
            if std::ptr::eq(*from, *to) {
                continue;
            }
            for ip in [to.v4(), to.v6()] {
                assert!(
                    reaches(&from.ns, ip),
                    "ping {ip} ({to_node}) from {from_node}"
                );
            }
        }
    }
    // TCP across nodes: the receiver sees the sender pod's address, not its node's.
    let (_, server_pod) = pods.iter().find(|(n, _)| *n == "n2").unwrap();
    let server = tcp::Server::start(server_pod.ns.path(), 8000, "pod");
    for (node, client) in pods.iter().filter(|(n, _)| *n != "n2") {
        for (dst, src) in [
            (server_pod.v4(), client.v4()),
            (server_pod.v6(), client.v6()),
        ] {
            let answer = tcp::request(client.ns.path(), sock(dst, 8000))
                .unwrap_or_else(|e| panic!("{node}: {e}"));
            assert_eq!(
                answer.trim(),
                format!("pod {src}"),
                "the source address is preserved ({node})"
            );
        }
    }
    drop(server);
    // Outside the cluster (the underlay's own address): masqueraded to the node's address.
    let outside = tcp::Server::start(c.lan.path(), 9000, "outside");
    for (node, pod) in &pods {
        let i: u8 = node[1..].parse().unwrap();
        for (dst, seen) in [
            (API.parse().unwrap(), node_ip(i)),
            (API_V6.parse().unwrap(), node_ip6(i)),
        ] {
            let answer = tcp::request(pod.ns.path(), sock(dst, 9000))
                .unwrap_or_else(|e| panic!("{node}: {e}"));
            assert_eq!(
                answer.trim(),
                format!("outside {seen}"),
                "masqueraded to the node's address ({node})"
            );
        }
    }
    drop(outside);
    // The agents only read nodes (tests/manifest.rs checks the exact verbs against
    // deploy/cni-rs.yaml's ClusterRole: list and watch).
    for r in c.control().requests().unwrap() {
        assert!(
            matches!(r.verb, None | Some(Verb::Get | Verb::List | Verb::Watch)),
            "{r:?}"
        );
        if r.verb.is_some() {
            assert!(r.path.starts_with("/api/v1/nodes"), "{r:?}");
        }
    }
    for n in &c.nodes {
        assert_eq!(n.metric("routes_owned"), Some(4.0), "{}", n.spec.name);
        assert_eq!(n.metric("route_conflicts"), Some(0.0));
    }
}

#[test]
fn routes_follow_nodes_deleted_renumbered_and_added() {
    let mut c = three_nodes();
    c.add_pods("n1", 1);
    // Deleted: gone on the others.
    c.control().delete("n3").unwrap();
    let gone = c.nodes.remove(2);
    drop(gone);
    assert!(c.converged(), "n3's routes removed");
    // Renumbered: n2 moves to .12 (and ::12); the others' routes follow.
    let mut spec = c.node("n2").spec.clone();
    {
        let n2 = c.node("n2");
        // Old address first: deleting a primary IPv4 address takes its secondaries along.
        n2.ns.ip(["addr", "del", "10.210.0.2/24", "dev", "eth0"]);
        n2.ns.ip(["addr", "del", "fd00:210::2/64", "dev", "eth0"]);
        n2.ns.ip(["addr", "add", "10.210.0.12/24", "dev", "eth0"]);
        n2.ns
            .ip(["addr", "add", "fd00:210::12/64", "dev", "eth0", "nodad"]);
    }
    spec.ips = vec!["10.210.0.12".into(), "fd00:210::12".into()];
    c.control().upsert(&spec.node()).unwrap();
    c.node("n2").spec = spec;
    assert!(c.converged(), "routes via n2's new address");
    let n1 = c.node("n1");
    assert!(
        wait_for(REPAIR, || n1.metric("route_replaces_total") == Some(2.0)),
        "replaced in place, not deleted and re-added"
    );
    // Added: n4 joins, gets its conflist and pods, and is reachable from n1's pod.
    c.add_node(NodeSpec::dual(4));
    c.start_agent("n4");
    let n4 = c.node("n4");
    assert!(
        wait_for(Duration::from_secs(20), || n4.ready()),
        "n4 ready:\n{}",
        n4.log()
    );
    assert!(c.converged(), "everyone routes to n4");
    c.add_pods("n4", 1);
    let target = c.node("n4").pods[0].v4();
    let target6 = c.node("n4").pods[0].v6();
    let n1 = c.node("n1");
    assert!(
        reaches(&n1.pods[0].ns, target) && reaches(&n1.pods[0].ns, target6),
        "n1's pod reaches n4's"
    );
}

#[test]
fn a_restart_removes_stale_routes_and_adds_no_duplicates() {
    let mut c = three_nodes();
    let before = c.node("n1").routes();
    // SIGTERM leaves everything in place.
    assert!(c.node("n1").agent().terminate(), "clean exit on SIGTERM");
    let n1 = c.node("n1");
    assert!(n1.log().contains("stay in place"), "{}", n1.log());
    assert_eq!(n1.routes(), before, "routes kept after SIGTERM");
    assert!(n1.conflist().is_some(), "conflist kept after SIGTERM");
    let masq = n1.ns.run(["nft", "list", "table", "inet", "cni_rs_agent"]);
    assert!(masq.contains("masquerade"), "masquerade kept:\n{masq}");
    // n2 is deleted while n1's agent is down; nobody tells n1 with a Delete event.
    c.control().delete("n2").unwrap();
    c.nodes.remove(1);
    c.start_agent("n1");
    assert!(
        c.converged(),
        "the stale route to n2's pod CIDRs is gone after the restart"
    );
    let n1 = c.node("n1");
    assert!(wait_for(REPAIR, || n1.ready()));
    assert_eq!(
        n1.metric("route_deletes_total"),
        Some(2.0),
        "only n2's two routes deleted"
    );
    assert_eq!(
        n1.metric("route_adds_total"),
        Some(0.0),
        "n3's routes kept, not re-added"
    );
    assert_eq!(n1.metric("route_replaces_total"), Some(0.0));
    // Two more restarts: still exactly one route per destination, nothing churned.
    for _ in 0..2 {
        assert!(c.node("n1").agent().terminate());
        c.start_agent("n1");
        let n1 = c.node("n1");
        assert!(wait_for(Duration::from_secs(20), || n1.ready()));
        assert_eq!(n1.metric("route_adds_total"), Some(0.0));
        assert_eq!(n1.metric("route_deletes_total"), Some(0.0));
    }
    let want = c.expected_routes("n1");
    let n1 = c.node("n1");
    assert_eq!(n1.routes(), want);
    for r in &want {
        let dst = r.split(' ').next().unwrap();
        assert_eq!(n1.routes_to(dst).lines().count(), 1, "one route to {dst}");
    }
}

#[test]
fn hand_deleted_routes_and_link_flaps_are_repaired_and_foreign_routes_left_alone() {
    let mut c = Cluster::new(&[NodeSpec::dual(1), NodeSpec::dual(2), NodeSpec::dual(3)]);
    // Before the agent: a route to another destination, and one to n3's pod CIDR as the
    // old README told people to add (proto boot).
    let n1 = c.node("n1");
    n1.ns
        .ip(["route", "add", "192.168.77.0/24", "via", &node_ip(3)]);
    n1.ns.ip(["route", "add", &pod_cidr(3), "via", &node_ip(3)]);
    c.start_all();
    let want_n1 = |c: &Cluster| {
        let mut w = c.expected_routes("n1");
        w.retain(|r| !r.starts_with(&pod_cidr(3)));
        w
    };
    let want = want_n1(&c);
    let n1 = c.nodes.iter().find(|n| n.spec.name == "n1").unwrap();
    assert!(
        wait_for(REPAIR, || n1.routes() == want),
        "{:?}",
        n1.routes()
    );
    assert!(
        n1.routes_to(&pod_cidr(3))
            .contains("via 10.210.0.3 dev eth0"),
        "foreign route kept"
    );
    assert!(!n1.routes_to(&pod_cidr(3)).contains("proto 61"));
    assert!(
        n1.ns
            .ip(["route", "show", "192.168.77.0/24"])
            .contains("via 10.210.0.3")
    );
    assert_eq!(n1.metric("route_conflicts"), Some(1.0));
    assert!(
        n1.log().contains("is not ours") && n1.log().contains("--adopt-routes"),
        "conflict reported:\n{}",
        n1.log()
    );
    // A route of ours deleted by hand comes back.
    n1.ns.ip(["route", "del", &pod_cidr(2), "proto", "61"]);
    assert!(
        wait_for(REPAIR, || n1.routes() == want),
        "hand-deleted route restored: {:?}",
        n1.routes()
    );
    n1.ns
        .ip(["-6", "route", "del", &sim::pod_cidr6(2), "proto", "61"]);
    assert!(
        wait_for(REPAIR, || n1.routes() == want),
        "hand-deleted IPv6 route restored"
    );
    // A link flap flushes every route via eth0 (the foreign ones too); ours come back,
    // and n3's pod CIDR, free now, gets our route.
    n1.ns.ip(["link", "set", "eth0", "down"]);
    n1.ns.ip(["link", "set", "eth0", "up"]);
    let all = c.expected_routes("n1");
    let n1 = c.node("n1");
    assert!(
        wait_for(REPAIR, || n1.routes() == all),
        "restored after the flap: {:?}",
        n1.routes()
    );
    assert!(
        n1.log().contains("resolved:"),
        "the conflict is reported gone:\n{}",
        n1.log()
    );
    // Adopting: n2's agent restarted with --adopt-routes takes a hand-made route over.
    c.node("n2").agent().terminate();
    let n2 = c.node("n2");
    n2.ns.ip(["route", "del", &pod_cidr(3), "proto", "61"]);
    n2.ns.ip(["route", "add", &pod_cidr(3), "via", &node_ip(3)]);
    n2.args = vec!["--adopt-routes".into()];
    c.start_agent("n2");
    assert!(c.converged(), "adopted");
    let n2 = c.node("n2");
    assert!(
        n2.routes_to(&pod_cidr(3)).contains("proto 61"),
        "{}",
        n2.routes_to(&pod_cidr(3))
    );
    assert_eq!(n2.routes_to(&pod_cidr(3)).lines().count(), 1);
}

#[test]
fn api_failures_leave_everything_in_place_and_the_agent_recovers() {
    let mut c = three_nodes();
    let snapshot =
        |c: &mut Cluster| -> Vec<Vec<String>> { c.nodes.iter().map(|n| n.routes()).collect() };
    let before = snapshot(&mut c);
    let n1_adds = c.node("n1").metric("route_adds_total");

    // 410 in the stream: the agents re-list, nothing churns.
    let relists = c.node("n1").metric("watch_relists_total").unwrap();
    c.control().expire().unwrap();
    let n1 = c.node("n1");
    assert!(
        wait_for(REPAIR * 2, || n1.metric("watch_relists_total")
            > Some(relists)),
        "re-listed after 410:\n{}",
        n1.log()
    );
    assert_eq!(snapshot(&mut c), before);
    assert_eq!(
        c.node("n1").metric("route_adds_total"),
        n1_adds,
        "no route churn"
    );

    // Every failure: the agents keep what they have (routes, rules, conflist, readiness)
    // while a change they cannot see is made, and apply it once the server is back.
    let mut before = before;
    let mut alt = 33;
    for failure in [
        Failure::Down,
        Failure::InternalError,
        Failure::WatchGone,
        Failure::forbidden_all(),
        Failure::HangUp,
    ] {
        let what = format!("{failure:?}");
        // Lists still work while only watches answer 410, and an agent that re-lists
        // then rightly sees any change: make the hidden change under the other failures.
        let hide_a_change = !matches!(failure, Failure::WatchGone);
        let forbidden = matches!(failure, Failure::Forbidden { .. });
        c.control().inject(failure).unwrap(); // ends the open watches too
        let mut spec = c.node("n3").spec.clone();
        if hide_a_change {
            spec.cidrs = vec![pod_cidr(alt), sim::pod_cidr6(alt)];
            c.control().upsert(&spec.node()).unwrap();
        }
        std::thread::sleep(2 * SECOND);
        if forbidden {
            // The agent says what RBAC it lacks once its next request meets the 403.
            let n1 = c.node("n1");
            assert!(
                wait_for(REPAIR * 6, || n1.log().contains("list and watch on nodes")),
                "{what}: the RBAC hint:\n{}",
                n1.log()
            );
        }
        for n in &mut c.nodes {
            assert!(
                n.agent().running(),
                "{what}: agent of {} still running:\n{}",
                n.spec.name,
                n.log()
            );
        }
        assert_eq!(
            snapshot(&mut c),
            before,
            "{what}: routes kept (fail static)"
        );
        for n in &c.nodes {
            assert!(n.conflist().is_some(), "{what}: conflist kept");
            assert!(
                n.ready(),
                "{what}: still ready (it keeps serving what it had):\n{}",
                n.http("/readyz").1
            );
        }
        c.control().clear_failures().unwrap();
        c.node("n3").spec = spec;
        assert!(
            c.converged(),
            "{what}: recovered, the change made meanwhile applied"
        );
        // Converged can be true before an agent whose watch never saw the change is
        // back: wait until every agent watches again, so the next failure meets each
        // one's next request rather than a backoff still running from this one.
        let agents = c.nodes.len();
        assert!(
            c.control().wait_for_watches(agents, REPAIR * 8).unwrap(),
            "{what}: every agent watches again"
        );
        before = snapshot(&mut c);
        if hide_a_change {
            alt = if alt == 33 { 3 } else { 33 };
        }
    }
    let log = c.node("n1").log();
    assert!(
        log.contains("list and watch on nodes"),
        "the RBAC hint:\n{log}"
    );
    assert!(
        log.contains("keeping routes, rules and the conflist"),
        "{log}"
    );
    assert!(log.contains("the API server is back"), "{log}");
}

#[test]
fn a_node_without_pod_cidrs_gets_no_conflist_and_a_hint() {
    let mut c = Cluster::new(&[NodeSpec::dual(1).without_cidrs(), NodeSpec::dual(2)]);
    // n2 also shows the API server override, from the environment: its kubeconfig
    // names an address where nothing listens.
    let wrong = n2_kubeconfig_elsewhere();
    let n2 = c.node("n2");
    n2.kubeconfig = Some(wrong.join("kubeconfig"));
    n2.env = vec![(
        "CNI_RS_APISERVER".into(),
        format!("http://{API}:{}", sim::API_PORT),
    )];
    c.start_agent("n1");
    c.start_agent("n2");
    let n1 = c.node("n1");
    assert!(
        wait_for(Duration::from_secs(20), || n1
            .log()
            .contains("has no spec.podCIDRs")),
        "{}",
        n1.log()
    );
    let log = n1.log();
    assert!(
        log.contains("kubeadm init --pod-network-cidr") && log.contains("--allocate-node-cidrs"),
        "{log}"
    );
    let (code, body) = n1.http("/readyz");
    assert_eq!(code, 503);
    assert!(body.contains("no spec.podCIDRs"), "{body}");
    assert!(
        n1.conflist().is_none() && std::fs::read_dir(n1.conf.path()).unwrap().next().is_none(),
        "no conflist, no other file"
    );
    // Routes to the other nodes are there anyway.
    let want = vec![
        format!("{} via {}", pod_cidr(2), node_ip(2)),
        format!("{} via {}", sim::pod_cidr6(2), node_ip6(2)),
    ];
    let mut want = want;
    want.sort();
    assert!(
        wait_for(REPAIR, || n1.routes() == want),
        "{:?}",
        n1.routes()
    );
    // The controller assigns CIDRs: conflist, ready.
    let spec = NodeSpec::dual(1);
    c.control().upsert(&spec.node()).unwrap();
    c.node("n1").spec = spec;
    let n1 = c.node("n1");
    assert!(
        wait_for(REPAIR, || n1.conflist().is_some() && n1.ready()),
        "{}",
        n1.log()
    );
    assert!(c.converged());
    let n2 = c.node("n2");
    assert!(
        n2.ready(),
        "n2 reached the API server through CNI_RS_APISERVER:\n{}",
        n2.log()
    );
    drop(c);
    drop(wrong);
}

/// A kubeconfig naming 10.210.0.99, where no API server listens.
fn n2_kubeconfig_elsewhere() -> cni_tests::TempDir {
    let dir = cni_tests::TempDir::new("agent-kubeconfig");
    std::fs::write(
        dir.join("kubeconfig"),
        kube_standin::kubeconfig("http://10.210.0.99:6443"),
    )
    .unwrap();
    dir
}

#[test]
fn ipv6_first_clusters_give_pods_an_ipv6_primary_address() {
    let mut c = Cluster::new(&[NodeSpec::v6_first(1), NodeSpec::v6_first(2)]);
    c.start_all();
    assert!(c.converged());
    c.add_pods("n1", 1);
    c.add_pods("n2", 1);
    let conf = c.node("n1").conflist().unwrap();
    let ipam = &conf["plugins"][0]["ipam"];
    assert_eq!(ipam["ranges"][0][0]["subnet"], sim::pod_cidr6(1).as_str());
    assert_eq!(ipam["routes"][0]["dst"], "::/0");
    let p1 = &c.node("n1").pods[0];
    assert!(p1.ips[0].is_ipv6(), "primary address IPv6: {:?}", p1.ips);
    let p2 = c.node("n2").pods[0].ips.clone();
    let p1 = &c.node("n1").pods[0];
    for ip in p2 {
        assert!(reaches(&p1.ns, ip), "ping {ip}");
    }
}
