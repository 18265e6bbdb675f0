//! The nftables-sets layout.

use super::*;

/// The elements of one set or map, as `nft` prints them (one per line, sorted).
fn nft_elements(ns: &TestNs, family: &str, table: &str, set: &str) -> Vec<String> {
    let kind = if set.starts_with("dnat") {
        "map"
    } else {
        "set"
    };
    let out = ns.exec(&["nft", "-j", "list", kind, family, table, set]);
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    let mut elems: Vec<String> = doc["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o.get("set").or_else(|| o.get("map")))
        .flat_map(|s| s["elem"].as_array().cloned().unwrap_or_default())
        .map(|e| e.to_string())
        .collect();
    elems.sort();
    elems
}

#[test]
fn masq_sets_layout_is_elements_under_fixed_rules() {
    let Some(ns) = TestNs::new("msets") else {
        return;
    };
    let ips = nets(&["10.88.0.2/16", "2001:db8:1::2/64"]);
    for _ in 0..2 {
        ns.run(|| setup_masq(Backend::NftablesSets, "test", "eth0", "1234", &ips))
            .unwrap();
    }
    let other = nets(&["10.88.0.3/16"]);
    ns.run(|| setup_masq(Backend::NftablesSets, "test", "eth0", "5678", &other))
        .unwrap();
    let ruleset = ns.nft_ruleset();
    assert!(
        ruleset.contains(
            "ip saddr @pods ip saddr . ip daddr != @local ip daddr != 224.0.0.0/4 masquerade"
        ),
        "{ruleset}"
    );
    assert!(ruleset.contains("ip6 saddr @pods"), "{ruleset}");
    // One element per address and set, whatever the number of ADDs.
    assert_eq!(
        ruleset.matches("comment \"test 1234 eth0\"").count(),
        4,
        "{ruleset}"
    );
    assert!(ruleset.contains("10.88.0.2 . 10.88.0.0/16"), "{ruleset}");
    assert!(
        ruleset.contains("2001:db8:1::2 . 2001:db8:1::/64"),
        "{ruleset}"
    );

    // GC keeps the valid attachment, DEL removes the rest; both leave the rules.
    let keep = [Attachment {
        container_id: "5678",
        ifname: "eth0",
    }];
    ns.run(|| gc_masq("test", &keep)).unwrap();
    let ruleset = ns.nft_ruleset();
    assert!(!ruleset.contains("test 1234 eth0"), "{ruleset}");
    assert!(ruleset.contains("test 5678 eth0"), "{ruleset}");
    // DEL with the addresses (prevResult) looks the entries up one by one.
    for _ in 0..2 {
        ns.run(|| teardown_masq("test", "eth0", "5678", Some(&other)))
            .unwrap();
    }
    assert!(nft_elements(&ns, "ip", names::SETS_MASQ_TABLE, "pods").is_empty());
    assert!(nft_elements(&ns, "ip", names::SETS_MASQ_TABLE, "local").is_empty());
}

#[test]
fn portmap_sets_layout_add_check_conflict_del() {
    let Some(ns) = TestNs::new("psets") else {
        return;
    };
    let mut config = PortMapConfig::new(
        "test",
        "1234",
        vec![
            tcp(8080, 80),
            PortMapping {
                host_port: 5353,
                container_port: 53,
                protocol: Proto::Udp,
                host_ip: Some("192.168.7.1".parse().unwrap()),
            },
        ],
    );
    let ips = nets(&["10.88.0.2/16", "2001:db8:1::2/64"]);
    for _ in 0..2 {
        ns.run(|| forward_ports(Backend::NftablesSets, &config, &ips, None).map(drop))
            .unwrap();
    }
    ns.run(|| check_ports(Backend::NftablesSets, &config, &ips))
        .unwrap();
    let any4 = nft_elements(&ns, "ip", names::SETS_HOSTPORT_TABLE, "dnat_any");
    assert_eq!(any4.len(), 1, "{any4:?}");
    assert!(
        any4[0].contains("8080") && any4[0].contains("10.88.0.2"),
        "{any4:?}"
    );
    assert!(any4[0].contains("test 1234"), "{any4:?}");
    let by_ip = nft_elements(&ns, "ip", names::SETS_HOSTPORT_TABLE, "dnat_ip");
    assert!(
        by_ip.len() == 1 && by_ip[0].contains("192.168.7.1"),
        "{by_ip:?}"
    );
    // The IPv4 host IP keeps that mapping out of IPv6.
    assert_eq!(
        nft_elements(&ns, "ip6", names::SETS_HOSTPORT_TABLE, "dnat_any").len(),
        1
    );
    assert!(nft_elements(&ns, "ip6", names::SETS_HOSTPORT_TABLE, "dnat_ip").is_empty());
    // Hairpin and localhost for IPv4, hairpin only for IPv6.
    assert_eq!(
        nft_elements(&ns, "ip", names::SETS_HOSTPORT_TABLE, "masq").len(),
        2
    );
    assert_eq!(
        nft_elements(&ns, "ip6", names::SETS_HOSTPORT_TABLE, "masq").len(),
        1
    );

    // Another container cannot take the same host port; its failure changes nothing.
    let before = ns.nft_ruleset();
    let thief = PortMapConfig::new("test", "5678", vec![tcp(8080, 81)]);
    let err = ns
        .run(|| {
            forward_ports(
                Backend::NftablesSets,
                &thief,
                &nets(&["10.88.0.3/16"]),
                None,
            )
            .map(drop)
        })
        .unwrap_err();
    assert!(err.to_string().contains("held by test 1234"), "{err}");
    assert_eq!(ns.nft_ruleset(), before);

    // A re-ADD with other mappings replaces the old ones.
    config.mappings = vec![tcp(9090, 90)];
    ns.run(|| forward_ports(Backend::NftablesSets, &config, &ips, None).map(drop))
        .unwrap();
    let any4 = nft_elements(&ns, "ip", names::SETS_HOSTPORT_TABLE, "dnat_any");
    assert!(any4.len() == 1 && any4[0].contains("9090"), "{any4:?}");
    assert!(nft_elements(&ns, "ip", names::SETS_HOSTPORT_TABLE, "dnat_ip").is_empty());

    // DEL needs neither mappings nor addresses, under any configured backend.
    ns.run(|| unforward_ports(Backend::Iptables, "test", "1234", &PortHints::default()))
        .unwrap();
    ns.run(|| unforward_ports(Backend::NftablesSets, "test", "1234", &PortHints::default()))
        .unwrap();
    for family in ["ip", "ip6"] {
        for set in ["dnat_any", "dnat_ip", "masq"] {
            assert!(nft_elements(&ns, family, names::SETS_HOSTPORT_TABLE, set).is_empty());
        }
    }
    let err = ns
        .run(|| check_ports(Backend::NftablesSets, &config, &ips))
        .unwrap_err();
    assert!(err.to_string().contains("missing host port entry"), "{err}");
}

/// IPAM handed the address to the new container, so entries of a former holder whose
/// DEL never came are stale: taken over, not a conflict. Host ports stay exclusive.
#[test]
fn sets_layout_takes_over_a_reused_address() {
    let Some(ns) = TestNs::new("reuse") else {
        return;
    };
    let ip = nets(&["10.88.0.9/16"]);
    for id in ["old", "new"] {
        ns.run(|| setup_masq(Backend::NftablesSets, "test", "eth0", id, &ip))
            .unwrap();
        let port = if id == "old" { 8080 } else { 9090 };
        let config = PortMapConfig::new("test", id, vec![tcp(port, 80)]);
        ns.run(|| forward_ports(Backend::NftablesSets, &config, &ip, None).map(drop))
            .unwrap();
    }
    let ruleset = ns.nft_ruleset();
    assert!(!ruleset.contains("test old eth0"), "{ruleset}");
    assert_eq!(ruleset.matches("test new eth0").count(), 2, "{ruleset}");
    let masq = nft_elements(&ns, "ip", names::SETS_HOSTPORT_TABLE, "masq");
    assert!(masq.iter().all(|e| e.contains("test new")), "{masq:?}");
    // The old container's host port is still its own until its DEL.
    let any = nft_elements(&ns, "ip", names::SETS_HOSTPORT_TABLE, "dnat_any");
    assert_eq!(any.len(), 2, "{any:?}");
}
