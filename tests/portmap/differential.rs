//! Side by side with Debian's reference portmap (v1.1.1, iptables only): the same
//! input gives the same chains, rules and comments, and either implementation deletes
//! what the other created.

use std::path::PathBuf;

use serde_json::{Value, json};

use crate::fixture::*;

fn reference() -> Option<PathBuf> {
    let found = cni_tests::reference_plugin("portmap");
    if found.is_none() {
        eprintln!("skipped: the reference plugins are not installed (containernetworking-plugins)");
    }
    found
}

/// Both nodes start the same: a KUBE-MARK-MASQ chain exists for the configs that
/// name it as `externalSetMarkChain`.
fn prepared_node() -> Node {
    let node = Node::new();
    for tool in ["iptables", "ip6tables"] {
        node.host
            .run([tool, "-w", "-t", "nat", "-N", "KUBE-MARK-MASQ"]);
    }
    node
}

/// Config variants the reference v1.1.1 understands.
fn cases(pod: &Pod) -> Vec<(&'static str, Value)> {
    let base = |mappings: Value| conf("", mappings, pod);
    let with = |mut c: Value, key: &str, v: Value| {
        c[key] = v;
        c
    };
    let mut bound = map(8443, 443, "tcp");
    bound["hostIP"] = json!(NODE_V4);
    let mut bound6 = map(8444, 443, "tcp");
    bound6["hostIP"] = json!(NODE_V6);
    let mut any = map(8445, 443, "udp");
    any["hostIP"] = json!("0.0.0.0");
    let many: Vec<Value> = (0..20).map(|i| map(20_000 + i, 80, "tcp")).collect();
    let mixed = json!([
        map(8080, 80, "tcp"),
        map(5353, 53, "udp"),
        map(8081, 81, "tcp"),
        map(9132, 132, "sctp")
    ]);
    vec![
        ("tcp and udp", base(mixed.clone())),
        ("host IPs", base(json!([bound, bound6, any]))),
        ("20 ports, multiport split", base(Value::Array(many))),
        ("snat off", with(base(mixed.clone()), "snat", json!(false))),
        (
            "mark bit 5",
            with(base(mixed.clone()), "markMasqBit", json!(5)),
        ),
        (
            "external mark chain",
            with(
                base(mixed.clone()),
                "externalSetMarkChain",
                json!("KUBE-MARK-MASQ"),
            ),
        ),
        (
            "conditions",
            with(
                with(
                    base(mixed),
                    "conditionsV4",
                    json!(["-s", "192.0.2.0/24", "!", "-d", "192.0.2.9"]),
                ),
                "conditionsV6",
                json!(["-s", "2001:db8:50::/64"]),
            ),
        ),
    ]
}

#[test]
fn same_input_same_rules_as_the_reference() {
    let Some(reference) = reference() else { return };
    let ours_node = prepared_node();
    let ref_node = prepared_node();
    let mut ours_pod = ours_node.pod("same");
    let mut ref_pod = ref_node.pod("same");
    for (i, (what, _)) in cases(&ours_pod).iter().enumerate() {
        // The hashed chain name depends on the container ID: use the same one.
        let id = format!("diff-{i}-{}", cni_tests::unique_name(""));
        ours_pod.id = id.clone();
        ref_pod.id = id;
        let ours_conf = &cases(&ours_pod)[i].1;
        let ref_conf = &cases(&ref_pod)[i].1;
        ours_node.portmap("ADD", &ours_pod, ours_conf).assert_ok();
        ref_node
            .call(&reference, "ADD", &ref_pod, ref_conf)
            .run()
            .assert_ok();
        for v6 in [false, true] {
            assert_eq!(
                ours_node.iptables_nat(v6),
                ref_node.iptables_nat(v6),
                "{what}: rules differ (v6: {v6})"
            );
        }
        ours_node.portmap("DEL", &ours_pod, ours_conf).assert_ok();
        ref_node
            .call(&reference, "DEL", &ref_pod, ref_conf)
            .run()
            .assert_ok();
        for v6 in [false, true] {
            assert_eq!(
                ours_node.iptables_nat(v6),
                ref_node.iptables_nat(v6),
                "{what}: state after DEL differs (v6: {v6})"
            );
        }
    }
}

#[test]
fn either_implementation_deletes_what_the_other_added() {
    let Some(reference) = reference() else { return };
    let node = prepared_node();
    let ours = PathBuf::from("portmap");
    let mut pod = node.pod("cross");
    let mappings = json!([map(8080, 80, "tcp"), map(5353, 53, "udp")]);

    // The skeleton every ADD leaves behind, made by the reference.
    pod.id = format!("skeleton-{}", cni_tests::unique_name(""));
    let c = conf("", mappings.clone(), &pod);
    node.call(&reference, "ADD", &pod, &c).run().assert_ok();
    node.call(&reference, "DEL", &pod, &c).run().assert_ok();
    let skeleton = node.firewall("iptables");

    let rounds: [(&str, &PathBuf, &PathBuf, bool); 4] = [
        ("reference ADD, our DEL", &reference, &ours, true),
        (
            "reference ADD, our DEL without portMappings",
            &reference,
            &ours,
            false,
        ),
        ("our ADD, reference DEL", &ours, &reference, true),
        ("our ADD, our DEL", &ours, &ours, true),
    ];
    for (i, (what, adder, deleter, with_mappings)) in rounds.into_iter().enumerate() {
        pod.id = format!("cross-{i}-{}", cni_tests::unique_name(""));
        let c = conf("", mappings.clone(), &pod);
        node.call(adder, "ADD", &pod, &c).run().assert_ok();
        assert_ne!(
            node.firewall("iptables"),
            skeleton,
            "{what}: ADD did nothing"
        );
        let mut del = c.clone();
        if !with_mappings {
            del.as_object_mut().unwrap().remove("runtimeConfig");
        }
        node.call(deleter, "DEL", &pod, &del).run().assert_ok();
        assert_eq!(
            node.firewall("iptables"),
            skeleton,
            "{what}: left rules behind"
        );
    }
}

/// Traffic flows the same whichever implementation programmed the node.
#[test]
fn reference_and_ours_coexist_on_one_node() {
    let Some(reference) = reference() else { return };
    let node = prepared_node();
    let a = node.pod("by-ref");
    let b = node.pod("by-us");
    let _sa = a.serve_tcp(80, "a");
    let _sb = b.serve_tcp(80, "b");
    let ca = conf("", json!([map(8001, 80, "tcp")]), &a);
    let cb = conf("", json!([map(8002, 80, "tcp")]), &b);
    node.call(&reference, "ADD", &a, &ca).run().assert_ok();
    node.portmap("ADD", &b, &cb).assert_ok();
    for (port, want) in [(8001, "a"), (8002, "b")] {
        for addr in [NODE_V4, NODE_V6] {
            assert_eq!(
                eventually(3, || tcp_reply(&node.ext, addr, port)),
                Some(want.to_string()),
                "port {port} via {addr}"
            );
        }
        assert_eq!(
            eventually(3, || tcp_reply(&node.host, "127.0.0.1", port)),
            Some(want.to_string()),
            "port {port} via 127.0.0.1"
        );
    }
    node.portmap("DEL", &a, &ca).assert_ok();
    node.call(&reference, "DEL", &b, &cb).run().assert_ok();
    assert_eq!(tcp_reply_within(&node.ext, NODE_V4, 8001, SILENCE), None);
    assert_eq!(tcp_reply_within(&node.ext, NODE_V4, 8002, SILENCE), None);
}
