//! End to end through a real client: every conflist in conf/, verbatim, run by cnitool
//! (libcni) against pod namespaces on a private node, the way a container runtime uses
//! the plugins. Pods get addresses from the subnet, reach each other, the outside world
//! (masqueraded to the node's address) and host ports (from the node, from outside, and
//! hairpin); DEL leaves no veth, reservation, NAT rule or cached result, also when
//! repeated and when the pod's namespace is already gone. The same flows run with
//! CNI_PATH mixing our binaries with the reference ones (drop-in compatibility), with
//! ADD by one implementation and DEL by the other, and through scripts/cni-runtime.sh.
//!
//! Needs root, iproute2, iptables, nftables, ping, cnitool (skipped without it) and, for
//! the mixed flows, Debian's containernetworking-plugins in /usr/lib/cni.

mod e2e;

use std::net::{IpAddr, SocketAddr};

use cni_tests::{Netns, workspace_root};
use e2e::tcp::{Server, request};
use e2e::{EXT_V4, EXT_V6, NODE_V4, NODE_V6, Node, Plugins, Runtime, in_subnet};
use serde_json::Value;

/// The conflists this file runs; `every_conflist_in_conf_is_tested` keeps it complete.
const CONFLISTS: [&str; 5] = [
    "10-bridge.conflist",
    "10-bridge-dualstack.conflist",
    "10-bridge-nftables.conflist",
    "10-bridge-nftables-sets.conflist",
    "10-containerd-net.conflist",
];

const HOST_PORT: u16 = 8080;
const POD_PORT: u16 = 80;
const EXT_PORT: u16 = 9000;
const MAPPING: &str = r#"{"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp"}]}"#;

/// One pod attached to the network: its container ID (cnitool derives it from the netns
/// path) and the addresses the ADD result gave it.
struct Attached {
    cid: String,
    addrs: Vec<IpAddr>,
}

impl Attached {
    fn v4(&self) -> Option<IpAddr> {
        self.addrs.iter().copied().find(IpAddr::is_ipv4)
    }
}

/// `add`, then checks the result against the kernel and host-local's store.
fn add(node: &Node, pod: &Netns, caps: Option<&str>) -> Attached {
    let call = node.cni("add", pod.path(), caps);
    let result = call.ok();
    let ips = result["ips"].as_array().cloned().unwrap_or_default();
    let addrs: Vec<IpAddr> = ips
        .iter()
        .map(|ip| {
            let text = ip["address"].as_str().unwrap_or_default();
            let addr = text.split('/').next().unwrap_or_default();
            addr.parse()
                .unwrap_or_else(|_| panic!("bad address {text:?} in result:\n{call}"))
        })
        .collect();
    let families = [&node.net.subnet_v4, &node.net.subnet_v6];
    let want = families.iter().filter(|s| s.is_some()).count();
    assert_eq!(addrs.len(), want, "one address per family:\n{call}");
    for addr in &addrs {
        assert!(
            families
                .iter()
                .filter_map(|s| s.as_deref())
                .any(|s| in_subnet(*addr, s)),
            "{addr} is not in the network's subnets:\n{call}"
        );
    }
    let ifaces = &result["interfaces"];
    assert_eq!(ifaces[0]["name"], node.net.bridge.as_str(), "{call}");
    assert!(
        ifaces[1]["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("veth")),
        "{call}"
    );
    assert_eq!(ifaces[2]["name"], "eth0", "{call}");
    assert_eq!(ifaces[2]["sandbox"], pod.path().to_str().unwrap(), "{call}");

    let on_eth0: Vec<String> = pod.addrs("eth0");
    for ip in &ips {
        let cidr = ip["address"].as_str().unwrap_or_default();
        assert!(
            on_eth0.iter().any(|a| a == cidr),
            "{cidr} not on eth0 of {}: {on_eth0:?}",
            pod.name()
        );
    }

    let reservations = node.reservations();
    let (_, content) = reservations
        .iter()
        .find(|(ip, _)| *ip == addrs[0])
        .unwrap_or_else(|| panic!("no reservation file for {}: {reservations:?}", addrs[0]));
    let cid = content.split("\r\n").next().unwrap_or_default().to_owned();
    assert!(
        cid.starts_with("cnitool-"),
        "reservation content {content:?}"
    );
    assert_eq!(content, &format!("{cid}\r\neth0"), "host-local file format");
    for addr in &addrs {
        assert!(
            reservations
                .iter()
                .any(|(ip, c)| ip == addr && c == content),
            "{addr} reserved for {cid}: {reservations:?}"
        );
    }
    let cache = format!("{}-{cid}-eth0", node.net.name);
    assert!(
        node.cached_results().contains(&cache),
        "cached result {cache}: {:?}",
        node.cached_results()
    );
    Attached { cid, addrs }
}

/// `check`. Debian's reference portmap (v1.1.1) fails CHECK of its own rules whenever a
/// pod has port mappings: it also looks for them in ip6tables, with the IPv4 rules, even
/// on an IPv4-only network (`reference_plugins_alone` shows it). There that failure is
/// the expected outcome.
fn check(node: &Node, pod: &Netns, caps: Option<&str>) {
    let call = node.cni("check", pod.path(), caps);
    let reference_portmap = matches!(node.plugins, Plugins::Reference | Plugins::OurBridge);
    if reference_portmap && caps.is_some() {
        assert!(
            !call.success() && call.stderr().contains("could not check ipv6 dnat"),
            "the reference portmap's dual-stack CHECK bug is gone? Expect success then:\n{call}"
        );
    } else {
        call.ok();
    }
}

fn del(node: &Node, netns: &std::path::Path, caps: Option<&str>) {
    node.cni("del", netns, caps).ok();
}

/// How DEL of a pod whose namespace is gone is expected to end.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Leftovers {
    None,
    /// The reference bridge keeps a pod's ipMasq rules when DEL comes without its
    /// namespace (it learns the addresses from the interface; plugins#810, cni#215).
    ReferenceMasqLeak,
    /// Our portmap ADDed, the reference's DELeted: the rules are gone, but what only
    /// our plugins know of stays until our GC removes it: our portmap's record of the
    /// pod, and its owner entry in our localnet guard (`ip cni_rs_localnet`), which keeps
    /// the pods' interface guarded while the reference leaves `route_localnet` on.
    OurPortmapRecord,
}

/// Asserts that none of `pods` has anything left: no veth on the node, nothing but lo in
/// the live pod namespaces, no reservation, no cached result, no per-pod NAT rule.
fn assert_clean(node: &Node, pods: &[&Attached], live: &[&Netns], expect: Leftovers) {
    assert_eq!(
        node.pod_links(),
        Vec::<String>::new(),
        "veths left on the node"
    );
    for ns in live {
        assert_eq!(ns.link_names(), ["lo"], "links left in {}", ns.name());
    }
    assert_eq!(node.reservations(), Vec::new(), "reservations left");
    assert_eq!(
        node.cached_results(),
        Vec::<String>::new(),
        "cached results left"
    );
    if expect != Leftovers::OurPortmapRecord {
        let records = node.portmap_records();
        for pod in pods {
            assert!(
                !records.contains(&pod.cid),
                "portmap record of {} left",
                pod.cid
            );
        }
    }
    let mut dump = node.nat_dump();
    if expect == Leftovers::OurPortmapRecord {
        dump = e2e::without_nft_table(&dump, "ip cni_rs_localnet");
    }
    for pod in pods {
        let left = e2e::per_container_nat(&dump, &pod.cid);
        let left: Vec<&String> = match expect {
            Leftovers::None | Leftovers::OurPortmapRecord => left.iter().collect(),
            Leftovers::ReferenceMasqLeak => left
                .iter()
                .filter(|l| l.contains("CNI-DN-") || l.contains("dnat name"))
                .collect(),
        };
        assert!(
            left.is_empty(),
            "NAT rules of {} left on the node:\n{}\n--- full dump ---\n{dump}",
            pod.cid,
            left.iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

fn expect_answer(from: &Netns, to: SocketAddr, greeting: &str, what: &str) -> String {
    match request(from.path(), to) {
        Ok(text) if text.starts_with(greeting) => text,
        Ok(text) => panic!("{what}: {to} from {} answered {text:?}", from.name()),
        Err(e) => panic!("{what}: {to} from {}: {e}", from.name()),
    }
}

fn sock(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().expect("literal address"), port)
}

/// The whole life of two pods on one network.
fn full_flow(conf: &str, plugins: Plugins, runtime: Runtime) {
    let node = Node::new(conf, plugins, runtime);
    let dual = node.net.subnet_v6.is_some();
    let pod_a = Netns::new("pod-a");
    let pod_b = Netns::new("pod-b");

    let a = add(&node, &pod_a, Some(MAPPING));
    let b = add(&node, &pod_b, None);
    assert_ne!(a.addrs, b.addrs, "two pods, two addresses");
    assert_eq!(node.reservations().len(), a.addrs.len() + b.addrs.len());
    check(&node, &pod_a, Some(MAPPING));
    check(&node, &pod_b, None);

    for (from, to) in [(&pod_a, &b), (&pod_b, &a)] {
        for addr in &to.addrs {
            assert!(
                from.ping(&addr.to_string()),
                "{} cannot ping {addr}",
                from.name()
            );
        }
    }

    {
        let web = Server::start(pod_a.path(), POD_PORT, "pod-a");
        let mut targets = vec![
            (
                &*node.host,
                sock("127.0.0.1", HOST_PORT),
                "node to 127.0.0.1",
            ),
            (&*node.host, sock(NODE_V4, HOST_PORT), "node to its address"),
            (&node.ext, sock(NODE_V4, HOST_PORT), "outside to the node"),
            (&pod_b, sock(NODE_V4, HOST_PORT), "other pod to the node"),
        ];
        if dual {
            targets.extend([
                (
                    &*node.host,
                    sock(NODE_V6, HOST_PORT),
                    "node to its v6 address",
                ),
                (
                    &node.ext,
                    sock(NODE_V6, HOST_PORT),
                    "outside to the node over v6",
                ),
            ]);
        }
        // A pod reaching itself through its own host port leaves the bridge by the port
        // it came in on, which takes hairpinMode. The containerd sample sets promiscMode
        // instead: that is enough only without br_netfilter (bridge-nf-call-iptables=0),
        // never on a kubeadm node; the reference plugins behave the same.
        if node.net.hairpin {
            targets.push((&pod_a, sock(NODE_V4, HOST_PORT), "hairpin"));
            if dual {
                targets.push((&pod_a, sock(NODE_V6, HOST_PORT), "hairpin over v6"));
            }
        }
        for (from, to, what) in targets {
            expect_answer(from, to, "pod-a", what);
        }
        drop(web);

        let outside = Server::start(node.ext.path(), EXT_PORT, "ext");
        let mut masq = vec![(sock(EXT_V4, EXT_PORT), NODE_V4)];
        if dual {
            masq.push((sock(EXT_V6, EXT_PORT), NODE_V6));
        }
        for (to, node_addr) in masq {
            let text = expect_answer(&pod_b, to, "ext", "pod to the outside");
            assert_eq!(
                text,
                format!("ext {node_addr}"),
                "the outside must see the node's address (ipMasq), not the pod's"
            );
        }
        assert!(
            !outside
                .peers()
                .iter()
                .any(|p| b.addrs.contains(p) || a.addrs.contains(p)),
            "a pod address leaked to the outside: {:?}",
            outside.peers()
        );
    }

    del(&node, pod_a.path(), Some(MAPPING));
    del(&node, pod_b.path(), None);
    assert_clean(&node, &[&a, &b], &[&pod_a, &pod_b], Leftovers::None);

    // Runtimes repeat DEL (kubelet retries, restarts): it must succeed and change nothing.
    del(&node, pod_a.path(), Some(MAPPING));
    del(&node, pod_b.path(), None);
    assert_clean(&node, &[&a, &b], &[&pod_a, &pod_b], Leftovers::None);

    // Pods added again (same namespaces, same container IDs), then their namespaces
    // vanish before DEL, as after a node reboot or a crashed sandbox.
    let a = add(&node, &pod_a, Some(MAPPING));
    let b = add(&node, &pod_b, None);
    let (path_a, path_b) = (pod_a.path().to_owned(), pod_b.path().to_owned());
    drop(pod_a);
    drop(pod_b);
    assert!(!path_a.exists() && !path_b.exists());
    del(&node, &path_a, Some(MAPPING));
    del(&node, &path_b, None);
    del(&node, &path_b, None);
    let expect = match node.plugins {
        Plugins::Reference | Plugins::ReferenceBridge => Leftovers::ReferenceMasqLeak,
        Plugins::Ours | Plugins::OurBridge => Leftovers::None,
    };
    assert_clean(&node, &[&a, &b], &[], expect);
}

// --- Our three plugins, every conflist, through cnitool ---------------------------------

#[test]
fn cnitool_default_conflist() {
    let Some(rt) = Runtime::cnitool() else { return };
    full_flow("10-bridge.conflist", Plugins::Ours, rt);
}

#[test]
fn cnitool_dualstack_conflist() {
    let Some(rt) = Runtime::cnitool() else { return };
    full_flow("10-bridge-dualstack.conflist", Plugins::Ours, rt);
}

/// The conflists stay at cniVersion 1.0.0: runtimes built on libcni 1.1 (Debian's
/// cnitool, containerd 1.7) cannot read a 1.1.0 result (`unsupported CNI result version
/// "1.1.0"`), which is what this test caught when the nftables variant said 1.1.0.
#[test]
fn cnitool_nftables_conflist() {
    let Some(rt) = Runtime::cnitool() else { return };
    full_flow("10-bridge-nftables.conflist", Plugins::Ours, rt);
}

/// The opt-in layout where a pod is a few nftables set elements (no process per call).
#[test]
fn cnitool_nftables_sets_conflist() {
    let Some(rt) = Runtime::cnitool() else { return };
    full_flow("10-bridge-nftables-sets.conflist", Plugins::Ours, rt);
}

#[test]
fn cnitool_containerd_conflist() {
    let Some(rt) = Runtime::cnitool() else { return };
    full_flow("10-containerd-net.conflist", Plugins::Ours, rt);
}

// --- Drop-in: ours mixed with the reference in one CNI_PATH -----------------------------
// The reference (Debian's v1.1.1) has only the iptables backend and speaks cniVersion up
// to 1.0.0, so the nftables conflist is not among these.

#[test]
fn our_bridge_with_reference_host_local_and_portmap() {
    let Some(rt) = Runtime::cnitool() else { return };
    if !Plugins::OurBridge.available() {
        return;
    }
    for conf in ["10-bridge.conflist", "10-bridge-dualstack.conflist"] {
        full_flow(conf, Plugins::OurBridge, rt.clone());
    }
}

#[test]
fn our_bridge_with_reference_plugins_containerd_conflist() {
    let Some(rt) = Runtime::cnitool() else { return };
    if !Plugins::OurBridge.available() {
        return;
    }
    full_flow("10-containerd-net.conflist", Plugins::OurBridge, rt);
}

#[test]
fn reference_bridge_with_our_host_local_and_portmap() {
    let Some(rt) = Runtime::cnitool() else { return };
    if !Plugins::ReferenceBridge.available() {
        return;
    }
    for conf in ["10-bridge.conflist", "10-bridge-dualstack.conflist"] {
        full_flow(conf, Plugins::ReferenceBridge, rt.clone());
    }
}

#[test]
fn reference_bridge_with_our_plugins_containerd_conflist() {
    let Some(rt) = Runtime::cnitool() else { return };
    if !Plugins::ReferenceBridge.available() {
        return;
    }
    full_flow("10-containerd-net.conflist", Plugins::ReferenceBridge, rt);
}

/// The yardstick: the reference plugins alone pass the same flow (with their known gaps:
/// CHECK with port mappings, ipMasq rules kept on DEL without a netns).
#[test]
fn reference_plugins_alone() {
    let Some(rt) = Runtime::cnitool() else { return };
    if !Plugins::Reference.available() {
        return;
    }
    full_flow("10-bridge-dualstack.conflist", Plugins::Reference, rt);
}

// --- One implementation ADDs, the other CHECKs and DELs (an upgrade with pods running) --

fn switch_implementation(conf: &str, first: Plugins, then: Plugins) {
    let Some(rt) = Runtime::cnitool() else { return };
    if !Plugins::Reference.available() {
        return;
    }
    let mut node = Node::new(conf, first, rt);
    let pod_a = Netns::new("pod-a");
    let pod_b = Netns::new("pod-b");
    let a = add(&node, &pod_a, Some(MAPPING));
    let b = add(&node, &pod_b, None);
    let b4 = b.v4().expect("an IPv4 address").to_string();
    assert!(pod_a.ping(&b4));

    node.switch_plugins(then);
    check(&node, &pod_a, Some(MAPPING));
    check(&node, &pod_b, None);
    {
        let _web = Server::start(pod_a.path(), POD_PORT, "pod-a");
        expect_answer(
            &node.ext,
            sock(NODE_V4, HOST_PORT),
            "pod-a",
            "outside to the node",
        );
    }
    del(&node, pod_a.path(), Some(MAPPING));
    del(&node, pod_b.path(), None);
    let expect = if first == Plugins::Ours {
        Leftovers::OurPortmapRecord
    } else {
        Leftovers::None
    };
    assert_clean(&node, &[&a, &b], &[&pod_a, &pod_b], expect);

    // The store the other implementation released serves the next ADD as usual.
    let a2 = add(&node, &pod_a, Some(MAPPING));
    assert_eq!(a2.cid, a.cid);
    del(&node, pod_a.path(), Some(MAPPING));
    assert_clean(&node, &[&a2], &[&pod_a, &pod_b], expect);
}

#[test]
fn added_by_ours_checked_and_deleted_by_the_reference() {
    switch_implementation(
        "10-bridge-dualstack.conflist",
        Plugins::Ours,
        Plugins::Reference,
    );
}

#[test]
fn added_by_the_reference_checked_and_deleted_by_ours() {
    switch_implementation(
        "10-bridge-dualstack.conflist",
        Plugins::Reference,
        Plugins::Ours,
    );
}

// --- scripts/cni-runtime.sh, the demo's fallback runtime --------------------------------

#[test]
fn script_runtime_default_conflist() {
    full_flow("10-bridge.conflist", Plugins::Ours, Runtime::Script);
}

#[test]
fn script_runtime_nftables_conflist() {
    full_flow(
        "10-bridge-nftables.conflist",
        Plugins::Ours,
        Runtime::Script,
    );
}

/// cnitool and scripts/cni-runtime.sh keep the same cache file, so either can CHECK and
/// DEL what the other added (the cache is the only state a runtime keeps).
#[test]
fn script_runtime_and_cnitool_take_over_from_each_other() {
    let Some(tool) = Runtime::cnitool() else {
        return;
    };
    let mut node = Node::new("10-bridge.conflist", Plugins::Ours, tool.clone());
    let pod_a = Netns::new("pod-a");
    let pod_b = Netns::new("pod-b");
    let mapping_b = MAPPING.replace("8080", "8081");
    let a = add(&node, &pod_a, Some(MAPPING));
    node.set_runtime(Runtime::Script);
    let b = add(&node, &pod_b, Some(&mapping_b));

    let by_tool = node.cached_result(&a.cid);
    let by_script = node.cached_result(&b.cid);
    let keys = |v: &Value| v.as_object().map(|o| o.keys().cloned().collect::<Vec<_>>());
    assert_eq!(keys(&by_tool), keys(&by_script), "cache layout");
    for key in ["kind", "config", "ifName", "networkName", "cniArgs"] {
        assert_eq!(by_tool[key], by_script[key], "cache key {key}");
    }
    assert_eq!(
        by_script["capabilityArgs"]["portMappings"][0]["hostPort"],
        8081
    );
    assert_eq!(
        by_tool["result"]["cniVersion"],
        by_script["result"]["cniVersion"]
    );

    node.cni("check", pod_a.path(), Some(MAPPING)).ok();
    del(&node, pod_a.path(), Some(MAPPING));
    node.set_runtime(tool);
    node.cni("check", pod_b.path(), Some(&mapping_b)).ok();
    del(&node, pod_b.path(), Some(&mapping_b));
    assert_clean(&node, &[&a, &b], &[&pod_a, &pod_b], Leftovers::None);
}

/// What scripts/install.sh puts on a node works as installed: the node's own subnet,
/// through cnitool, from the installed bin and conf directories.
#[test]
fn installed_by_install_sh() {
    let Some(rt) = Runtime::cnitool() else { return };
    let target = cni_tests::TempDir::new("installed");
    let (bin, conf) = (target.join("bin"), target.join("net.d"));
    let out = std::process::Command::new("bash")
        .arg(workspace_root().join("scripts/install.sh"))
        .args([
            "--pod-cidr",
            "10.244.3.0/24",
            "--pod-cidr-v6",
            "fd00:10:244:3::/64",
        ])
        .arg("--prebuilt")
        .arg(cni_tests::bin_dir())
        .arg("--bin-dir")
        .arg(&bin)
        .arg("--conf-dir")
        .arg(&conf)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run install.sh");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let node = Node::with_conflist(&conf.join("10-bridge.conflist"), &bin, rt);
    let pod_a = Netns::new("pod-a");
    let pod_b = Netns::new("pod-b");
    let a = add(&node, &pod_a, Some(MAPPING));
    let b = add(&node, &pod_b, None);
    assert!(
        a.addrs
            .iter()
            .chain(&b.addrs)
            .all(|ip| { in_subnet(*ip, "10.244.3.0/24") || in_subnet(*ip, "fd00:10:244:3::/64") })
    );
    for addr in &b.addrs {
        assert!(pod_a.ping(&addr.to_string()), "pod a cannot ping {addr}");
    }
    {
        let _web = Server::start(pod_a.path(), POD_PORT, "pod-a");
        expect_answer(
            &node.ext,
            sock(NODE_V4, HOST_PORT),
            "pod-a",
            "outside to the node",
        );
        expect_answer(
            &node.ext,
            sock(NODE_V6, HOST_PORT),
            "pod-a",
            "outside over v6",
        );
    }
    del(&node, pod_a.path(), Some(MAPPING));
    del(&node, pod_b.path(), None);
    assert_clean(&node, &[&a, &b], &[&pod_a, &pod_b], Leftovers::None);
}

#[test]
fn every_conflist_in_conf_is_tested() {
    let mut found: Vec<String> = std::fs::read_dir(workspace_root().join("conf"))
        .expect("conf/ exists")
        .filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
        .filter(|n| n.ends_with(".conflist") || n.ends_with(".conf"))
        .collect();
    found.sort();
    let mut tested: Vec<String> = CONFLISTS.iter().map(|s| s.to_string()).collect();
    tested.sort();
    assert_eq!(
        found, tested,
        "add the new conflist to CONFLISTS and give it a test"
    );
}
