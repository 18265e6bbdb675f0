//! DEL leaves nothing of the container behind, whatever the runtime sends; shared
//! chains stay correct; concurrent first ADDs never duplicate them; GC removes what
//! the runtime no longer lists.

use std::thread;

use cni_tests::Netns;
use serde_json::{Value, json};

use crate::fixture::*;

/// The ways runtimes call DEL: with or without `portMappings`, with or without netns.
const DEL_VARIANTS: [(bool, bool); 4] =
    [(true, true), (false, true), (true, false), (false, false)];

fn del_conf(conf: &Value, with_mappings: bool) -> Value {
    let mut c = conf.clone();
    if !with_mappings {
        c.as_object_mut()
            .expect("conf is an object")
            .remove("runtimeConfig");
    }
    c
}

/// Shared rules of the iptables layout, each of which must exist exactly once.
const IPTABLES_SHARED: [&str; 5] = [
    "-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT",
    "-A OUTPUT -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT",
    "-A POSTROUTING -m comment --comment \"CNI portfwd requiring masquerade\" -j CNI-HOSTPORT-MASQ",
    "-A CNI-HOSTPORT-SETMARK -m comment --comment \"CNI portfwd masquerade mark\" -j MARK --set-xmark 0x2000/0x2000",
    "-A CNI-HOSTPORT-MASQ -m mark --mark 0x2000/0x2000 -j MASQUERADE",
];

fn count_lines(text: &str, line: &str) -> usize {
    text.lines().filter(|l| l.trim() == line).count()
}

/// Rules in one chain of an `nft list table` dump.
fn nft_chain_rules(dump: &str, chain: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut inside = false;
    for line in dump.lines() {
        let l = line.trim();
        if l == format!("chain {chain} {{") {
            inside = true;
        } else if inside && l == "}" {
            break;
        } else if inside && !l.is_empty() && !l.starts_with("type ") && !l.starts_with("comment ") {
            out.push(l.to_string());
        }
    }
    out
}

/// The fixed rules of the nftables-sets layout, per chain.
const SETS_FIXED: [(&str, &[&str]); 3] = [
    ("prerouting", &["fib daddr type local jump hostports"]),
    ("output", &["fib daddr type local jump hostports"]),
    (
        "postrouting",
        &["ct status dnat {f} saddr . {f} daddr @masq masquerade"],
    ),
];

fn assert_shared_once(node: &Node, backend: &str) {
    if backend == "nftables-sets" {
        for v6 in [false, true] {
            let dump = node.nft_sets_hostport(v6);
            let f = if v6 { "ip6" } else { "ip" };
            for (chain, rules) in SETS_FIXED {
                let want: Vec<String> = rules.iter().map(|r| r.replace("{f}", f)).collect();
                assert_eq!(nft_chain_rules(&dump, chain), want, "{dump}");
            }
            assert_eq!(nft_chain_rules(&dump, "hostports").len(), 2, "{dump}");
        }
    } else if backend == "nftables" {
        for v6 in [false, true] {
            let dump = node.nft_hostport(v6);
            assert_eq!(
                nft_chain_rules(&dump, "prerouting"),
                ["fib daddr type local jump hostports_all"],
                "{dump}"
            );
            assert_eq!(
                nft_chain_rules(&dump, "output"),
                ["fib daddr type local jump hostports_all"],
                "{dump}"
            );
            assert_eq!(
                nft_chain_rules(&dump, "hostports_all"),
                ["jump hostip_hostports", "jump hostports"],
                "{dump}"
            );
        }
    } else {
        for v6 in [false, true] {
            let save = node.iptables_nat(v6);
            for rule in IPTABLES_SHARED {
                assert_eq!(count_lines(&save, rule), 1, "{rule} once in\n{save}");
            }
        }
    }
}

fn assert_no_trace(node: &Node, backend: &str, pod: &Pod) {
    let state = node.firewall(backend);
    assert!(
        !state.contains(&pod.id),
        "{backend}: rules of {} left:\n{state}",
        pod.id
    );
    assert!(
        !state.contains(&pod.v4) && !state.contains(&pod.v6),
        "{backend}: rules towards {} / {} left:\n{state}",
        pod.v4,
        pod.v6
    );
}

fn del_leaves_nothing(backend: &str) {
    let node = Node::new();
    let keeper = node.pod("keeper");
    let keeper_conf = conf(backend, json!([map(9090, 90, "tcp")]), &keeper);
    node.portmap("ADD", &keeper, &keeper_conf).assert_ok();
    let with_keeper = node.firewall(backend);

    let pod = node.pod("leaver");
    let add_conf = conf(
        backend,
        json!([
            map(8080, 80, "tcp"),
            map(5353, 53, "udp"),
            map(9132, 132, "sctp")
        ]),
        &pod,
    );
    for (with_mappings, with_netns) in DEL_VARIANTS {
        let what = format!("{backend}, portMappings {with_mappings}, netns {with_netns}");
        node.portmap("ADD", &pod, &add_conf).assert_ok();
        assert_ne!(
            node.firewall(backend),
            with_keeper,
            "{what}: ADD changed nothing"
        );
        for round in 0..2 {
            let mut call = node.call("portmap", "DEL", &pod, &del_conf(&add_conf, with_mappings));
            if !with_netns {
                call = call.env_remove("CNI_NETNS");
            }
            call.run().assert_ok();
            assert_eq!(
                node.firewall(backend),
                with_keeper,
                "{what}: DEL #{} left something",
                round + 1
            );
        }
        assert_no_trace(&node, backend, &pod);
        assert_shared_once(&node, backend);
    }
    node.portmap("DEL", &keeper, &del_conf(&keeper_conf, false))
        .assert_ok();
    assert_no_trace(&node, backend, &keeper);
}

#[test]
fn iptables_del_leaves_nothing() {
    del_leaves_nothing("iptables");
}

#[test]
fn nftables_del_leaves_nothing() {
    del_leaves_nothing("nftables");
}

#[test]
fn nftables_sets_del_leaves_nothing() {
    del_leaves_nothing("nftables-sets");
}

/// A DEL for a container that never had mappings, on a node that never ran portmap,
/// succeeds and creates nothing.
fn del_of_unknown_container_is_fine(backend: &str) {
    let node = Node::new();
    let pod = node.pod("ghost");
    let before = node.firewall(backend);
    for with_mappings in [true, false] {
        let c = del_conf(
            &conf(backend, json!([map(8080, 80, "tcp")]), &pod),
            with_mappings,
        );
        node.call("portmap", "DEL", &pod, &c)
            .env_remove("CNI_NETNS")
            .run()
            .assert_ok();
    }
    assert_eq!(node.firewall(backend), before);
}

#[test]
fn iptables_del_of_unknown_container_is_fine() {
    del_of_unknown_container_is_fine("iptables");
}

#[test]
fn nftables_del_of_unknown_container_is_fine() {
    del_of_unknown_container_is_fine("nftables");
}

#[test]
fn nftables_sets_del_of_unknown_container_is_fine() {
    del_of_unknown_container_is_fine("nftables-sets");
}

/// 32 ADDs at once on a node without any portmap state: every container gets its
/// rules, the shared ones exist exactly once.
fn parallel_cold_adds(backend: &str) {
    const N: usize = 32;
    let node = Node::new();
    let pod = node.pod("many");
    let confs: Vec<(String, Value)> = (0..N)
        .map(|i| {
            let mut prev = pod.prev_result();
            prev["ips"][0]["address"] = json!(format!("10.99.1.{}/16", i + 10));
            prev["ips"][1]["address"] = json!(format!("fd99::1:{:x}/64", i + 10));
            let mut c = conf(backend, json!([map(10_000 + i as u16, 80, "tcp")]), &pod);
            c["prevResult"] = prev;
            (format!("parallel-{i}-{}", pod.id), c)
        })
        .collect();
    let ns: &Netns = &pod.ns;
    thread::scope(|s| {
        let handles: Vec<_> = confs
            .iter()
            .map(|(id, c)| {
                let call = node
                    .host
                    .cni("portmap")
                    .command("ADD")
                    .container_id(id)
                    .netns(ns)
                    .ifname("eth0")
                    .config(c);
                s.spawn(move || call.run())
            })
            .collect();
        for h in handles {
            h.join().expect("ADD thread").assert_ok();
        }
    });
    assert_shared_once(&node, backend);
    if backend == "nftables-sets" {
        for v6 in [false, true] {
            let dump = node.nft_sets_hostport(v6);
            let owned = dump
                .matches(&format!("comment \"{NETWORK} parallel-"))
                .count();
            // One DNAT entry and the hairpin (and, for IPv4, localhost) entries each.
            assert_eq!(owned, N * if v6 { 2 } else { 3 }, "{dump}");
        }
    } else if backend == "nftables" {
        for v6 in [false, true] {
            let dump = node.nft_hostport(v6);
            assert_eq!(nft_chain_rules(&dump, "hostports").len(), N, "{dump}");
            let masq_per_container = if v6 { 1 } else { 2 };
            assert_eq!(
                nft_chain_rules(&dump, "masquerading").len(),
                N * masq_per_container,
                "{dump}"
            );
        }
    } else {
        for v6 in [false, true] {
            let save = node.iptables_nat(v6);
            let entries = save
                .lines()
                .filter(|l| l.starts_with("-A CNI-HOSTPORT-DNAT "))
                .count();
            let chains = save.lines().filter(|l| l.starts_with(":CNI-DN-")).count();
            assert_eq!((entries, chains), (N, N), "{save}");
        }
    }
    for (id, c) in &confs {
        node.host
            .cni("portmap")
            .command("DEL")
            .container_id(id)
            .ifname("eth0")
            .config(c)
            .run()
            .assert_ok();
    }
    let left = node.firewall(backend);
    assert!(!left.contains("parallel-"), "{left}");
    assert_shared_once(&node, backend);
}

#[test]
fn iptables_parallel_cold_adds_share_one_skeleton() {
    parallel_cold_adds("iptables");
}

#[test]
fn nftables_parallel_cold_adds_share_one_skeleton() {
    parallel_cold_adds("nftables");
}

#[test]
fn nftables_sets_parallel_cold_adds_share_one_skeleton() {
    parallel_cold_adds("nftables-sets");
}

/// GC removes the rules of this network's containers missing from
/// `cni.dev/valid-attachments`, and nothing of other networks.
fn gc_removes_what_the_runtime_forgot(backend: &str) {
    let node = Node::new();
    let keep = node.pod("keep");
    let gone = node.pod("gone");
    let elsewhere = node.pod("other-net");
    let mut confs = Vec::new();
    for (i, pod) in [&keep, &gone, &elsewhere].into_iter().enumerate() {
        let mut c = conf(backend, json!([map(8000 + i as u16, 80, "tcp")]), pod);
        c["cniVersion"] = json!("1.1.0");
        if pod.id == elsewhere.id {
            c["name"] = json!("othernet");
        }
        node.portmap("ADD", pod, &c).assert_ok();
        confs.push(c);
    }
    let gc_conf = json!({
        "cniVersion": "1.1.0",
        "name": NETWORK,
        "type": "portmap",
        "backend": backend,
        "cni.dev/valid-attachments": [{"containerID": keep.id, "ifname": "eth0"}],
    });
    node.host
        .cni("portmap")
        .command("GC")
        .config(&gc_conf)
        .run()
        .assert_ok();
    let state = node.firewall(backend);
    assert!(
        state.contains(&keep.v4),
        "{backend}: kept pod lost its rules\n{state}"
    );
    assert!(
        state.contains(&elsewhere.v4),
        "{backend}: other network touched\n{state}"
    );
    assert_no_trace(&node, backend, &gone);
    assert_shared_once(&node, backend);

    // A second GC has nothing left to do.
    node.host
        .cni("portmap")
        .command("GC")
        .config(&gc_conf)
        .run()
        .assert_ok();
    assert_eq!(node.firewall(backend), state);
    for (pod, c) in [&keep, &elsewhere].into_iter().zip([&confs[0], &confs[2]]) {
        node.portmap("DEL", pod, c).assert_ok();
    }
}

#[test]
fn iptables_gc_removes_what_the_runtime_forgot() {
    gc_removes_what_the_runtime_forgot("iptables");
}

#[test]
fn nftables_gc_removes_what_the_runtime_forgot() {
    gc_removes_what_the_runtime_forgot("nftables");
}

#[test]
fn nftables_sets_gc_removes_what_the_runtime_forgot() {
    gc_removes_what_the_runtime_forgot("nftables-sets");
}
