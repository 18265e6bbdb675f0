//! ipMasq in the iptables and nftables layouts.

use super::*;

#[test]
fn masq_iptables_setup_matches_reference_and_teardown_needs_no_ips() {
    let Some(ns) = TestNs::new("mipt") else {
        return;
    };
    let before4 = ns.nat_dump(false);
    let before6 = ns.nat_dump(true);
    let ips = nets(&["10.88.0.2/16", "2001:db8:1::2/64"]);
    ns.run(|| setup_masq(Backend::Iptables, "test", "eth0", "1234", &ips))
        .unwrap();
    assert_eq!(
        ns.nat_rules(false),
        [
            format!("-A POSTROUTING -s 10.88.0.2/32 {M} -j {CHAIN}"),
            format!("-A {CHAIN} -d 10.88.0.0/16 {M} -j ACCEPT"),
            format!("-A {CHAIN} ! -d 224.0.0.0/4 {M} -j MASQUERADE"),
        ]
    );
    assert_eq!(
        ns.nat_rules(true),
        [
            format!("-A POSTROUTING -s 2001:db8:1::2/128 {M} -j {CHAIN}"),
            format!("-A {CHAIN} -d 2001:db8:1::/64 {M} -j ACCEPT"),
            format!("-A {CHAIN} ! -d ff00::/8 {M} -j MASQUERADE"),
        ]
    );
    // Repeating ADD changes nothing.
    let after4 = ns.nat_dump(false);
    ns.run(|| setup_masq(Backend::Iptables, "test", "eth0", "1234", &ips))
        .unwrap();
    assert_eq!(ns.nat_dump(false), after4);

    ns.run(|| teardown_masq("test", "eth0", "1234", None))
        .unwrap();
    assert_eq!(ns.nat_dump(false), before4);
    assert_eq!(ns.nat_dump(true), before6);
    // And again: idempotent.
    ns.run(|| teardown_masq("test", "eth0", "1234", None))
        .unwrap();
}

#[test]
fn masq_nftables_setup_and_teardown() {
    let Some(ns) = TestNs::new("mnft") else {
        return;
    };
    let ips = nets(&["10.88.0.2/16", "2001:db8:1::2/64"]);
    ns.run(|| setup_masq(Backend::Nftables, "test", "eth0", "1234", &ips))
        .unwrap();
    ns.run(|| setup_masq(Backend::Nftables, "test", "eth0", "1234", &ips))
        .unwrap();
    let ruleset = ns.nft_ruleset();
    let comment = names::nft_masq_comment("test", "eth0", "1234");
    assert_eq!(ruleset.matches(&comment).count(), 2, "{ruleset}");
    assert!(ruleset.contains("ip saddr 10.88.0.2 ip daddr != 10.88.0.0/16 masquerade"));
    assert!(ruleset.contains("ip6 saddr 2001:db8:1::2 ip6 daddr != 2001:db8:1::/64 masquerade"));
    assert!(ruleset.contains("goto masq_checks"));

    ns.run(|| teardown_masq("test", "eth0", "1234", None))
        .unwrap();
    let ruleset = ns.nft_ruleset();
    assert!(!ruleset.contains(&comment), "{ruleset}");
    ns.run(|| teardown_masq("test", "eth0", "1234", None))
        .unwrap();
}

#[test]
fn masq_gc_removes_only_stale_attachments() {
    let Some(ns) = TestNs::new("mgc") else { return };
    for (backend, ids) in [
        (Backend::Iptables, ["a1", "a2", "a3"]),
        (Backend::Nftables, ["b1", "b2", "b3"]),
    ] {
        for (i, id) in ids.iter().enumerate() {
            let ip = nets(&[&format!("10.88.0.{}/16", i + 2)]);
            ns.run(|| setup_masq(backend, "test", "eth0", id, &ip))
                .unwrap();
        }
    }
    let other = nets(&["10.99.0.2/16"]);
    ns.run(|| setup_masq(Backend::Iptables, "other", "eth0", "a2", &other))
        .unwrap();
    let valid = [
        Attachment {
            container_id: "a1",
            ifname: "eth0",
        },
        Attachment {
            container_id: "b1",
            ifname: "eth0",
        },
    ];
    ns.run(|| gc_masq("test", &valid)).unwrap();
    let chains: HashSet<String> = ns.nat_chains(false).into_iter().collect();
    let want: HashSet<String> = [
        names::masq_chain("test", "a1"),
        names::masq_chain("other", "a2"),
    ]
    .into_iter()
    .collect();
    assert_eq!(chains, want);
    let ruleset = ns.nft_ruleset();
    assert!(ruleset.contains(&names::nft_masq_comment("test", "eth0", "b1")));
    assert!(!ruleset.contains(&names::nft_masq_comment("test", "eth0", "b2")));
    assert!(!ruleset.contains(&names::nft_masq_comment("test", "eth0", "b3")));
}

#[test]
fn masq_concurrent_setups_do_not_duplicate() {
    let Some(ns) = TestNs::new("mcon") else {
        return;
    };
    std::thread::scope(|s| {
        for i in 0..16u8 {
            let ns = &ns;
            s.spawn(move || {
                let id = format!("c{i}");
                let ip = nets(&[&format!("10.88.1.{}/16", i + 2)]);
                ns.run(|| setup_masq(Backend::Iptables, "test", "eth0", &id, &ip))
                    .unwrap();
                ns.run(|| setup_masq(Backend::Nftables, "test", "eth0", &id, &ip))
                    .unwrap();
            });
        }
    });
    let rules = ns.nat_rules(false);
    assert_eq!(rules.len(), 16 * 3, "{rules:#?}");
    assert_eq!(ns.nat_chains(false).len(), 16);
    let ruleset = ns.exec(&["nft", "list", "table", "inet", names::NFT_MASQ_TABLE]);
    assert_eq!(ruleset.matches("goto masq_checks").count(), 1, "{ruleset}");
    assert_eq!(
        ruleset.matches(" masquerade comment").count(),
        16,
        "{ruleset}"
    );
}
