//! Root tests against the real iptables/nft inside throwaway namespaces. Skipped (pass
//! with a note) when not root.

use std::collections::HashSet;

use ipnetwork::IpNetwork;

use super::testns::TestNs;
use super::*;
use crate::Family;

fn nets(list: &[&str]) -> Vec<IpNetwork> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

fn tcp(host: u16, ctr: u16) -> PortMapping {
    PortMapping {
        host_port: host,
        container_port: ctr,
        protocol: Proto::Tcp,
        host_ip: None,
    }
}

const M: &str = r#"-m comment --comment "name: \"test\" id: \"1234\"""#;
const CHAIN: &str = "CNI-2bbe0c48b91a7d1b8a6753a8";

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

fn portmap_config(id: &str) -> PortMapConfig {
    let mut c = PortMapConfig::new(
        "test",
        id,
        vec![
            tcp(8080, 80),
            PortMapping {
                host_port: 8080,
                container_port: 81,
                protocol: Proto::Udp,
                host_ip: None,
            },
            PortMapping {
                host_port: 8083,
                container_port: 83,
                protocol: Proto::Tcp,
                host_ip: Some("192.168.0.2".parse().unwrap()),
            },
            PortMapping {
                host_port: 8085,
                container_port: 85,
                protocol: Proto::Sctp,
                host_ip: Some("2001:db8:a::1".parse().unwrap()),
            },
        ],
    );
    c.masq_all = false;
    c
}

#[test]
fn portmap_iptables_forward_check_unforward() {
    let Some(ns) = TestNs::new("pipt") else {
        return;
    };
    let config = portmap_config("1234");
    let ips = nets(&["10.88.0.2/16", "2001:db8:1::2/64"]);
    ns.run(|| forward_ports(Backend::Iptables, &config, &ips, None).map(drop))
        .unwrap();
    let dn = names::dnat_chain("test", "1234");
    let dc = r#"-m comment --comment "dnat name: \"test\" id: \"1234\"""#;
    assert_eq!(
        ns.nat_rules(false),
        [
            "-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT".to_string(),
            "-A OUTPUT -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT".to_string(),
            "-A POSTROUTING -m comment --comment \"CNI portfwd requiring masquerade\" -j CNI-HOSTPORT-MASQ".to_string(),
            format!("-A {dn} -s 10.88.0.0/16 -p tcp -m tcp --dport 8080 -j CNI-HOSTPORT-SETMARK"),
            format!("-A {dn} -s 127.0.0.1/32 -p tcp -m tcp --dport 8080 -j CNI-HOSTPORT-SETMARK"),
            format!("-A {dn} -p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.88.0.2:80"),
            format!("-A {dn} -s 10.88.0.0/16 -p udp -m udp --dport 8080 -j CNI-HOSTPORT-SETMARK"),
            format!("-A {dn} -s 127.0.0.1/32 -p udp -m udp --dport 8080 -j CNI-HOSTPORT-SETMARK"),
            format!("-A {dn} -p udp -m udp --dport 8080 -j DNAT --to-destination 10.88.0.2:81"),
            format!("-A {dn} -s 10.88.0.0/16 -d 192.168.0.2/32 -p tcp -m tcp --dport 8083 -j CNI-HOSTPORT-SETMARK"),
            format!("-A {dn} -s 127.0.0.1/32 -d 192.168.0.2/32 -p tcp -m tcp --dport 8083 -j CNI-HOSTPORT-SETMARK"),
            format!("-A {dn} -d 192.168.0.2/32 -p tcp -m tcp --dport 8083 -j DNAT --to-destination 10.88.0.2:83"),
            format!("-A CNI-HOSTPORT-DNAT -p sctp {dc} -m multiport --dports 8085 -j {dn}"),
            format!("-A CNI-HOSTPORT-DNAT -p tcp {dc} -m multiport --dports 8080,8083 -j {dn}"),
            format!("-A CNI-HOSTPORT-DNAT -p udp {dc} -m multiport --dports 8080 -j {dn}"),
            "-A CNI-HOSTPORT-MASQ -m mark --mark 0x2000/0x2000 -j MASQUERADE".to_string(),
            "-A CNI-HOSTPORT-SETMARK -m comment --comment \"CNI portfwd masquerade mark\" -j MARK --set-xmark 0x2000/0x2000".to_string(),
        ]
    );
    let v6 = ns.nat_rules(true);
    assert!(v6.contains(&format!(
        "-A {dn} -d 2001:db8:a::1/128 -p sctp -m sctp --dport 8085 -j DNAT --to-destination [2001:db8:1::2]:85"
    )), "{v6:#?}");
    assert!(!v6.iter().any(|r| r.contains("127.0.0.1")));

    ns.run(|| check_ports(Backend::Iptables, &config, &ips))
        .unwrap();
    let dump = ns.nat_dump(false);
    ns.run(|| forward_ports(Backend::Iptables, &config, &ips, None).map(drop))
        .unwrap();
    assert_eq!(ns.nat_dump(false), dump, "repeated ADD must change nothing");

    ns.run(|| unforward_ports(Backend::Iptables, "test", "1234", &PortHints::default()))
        .unwrap();
    assert!(
        ns.run(|| check_ports(Backend::Iptables, &config, &ips))
            .is_err()
    );
    for v6 in [false, true] {
        let chains = ns.nat_chains(v6);
        assert!(!chains.contains(&dn), "{chains:?}");
        assert!(chains.contains(&"CNI-HOSTPORT-DNAT".to_string()));
        assert!(!ns.nat_rules(v6).iter().any(|r| r.contains(&dn)));
    }
    ns.run(|| unforward_ports(Backend::Iptables, "test", "1234", &PortHints::default()))
        .unwrap();
}

#[test]
fn portmap_nftables_forward_check_unforward() {
    let Some(ns) = TestNs::new("pnft") else {
        return;
    };
    let config = portmap_config("1234");
    let ips = nets(&["10.88.0.2/16", "2001:db8:1::2/64"]);
    ns.run(|| forward_ports(Backend::Nftables, &config, &ips, None).map(drop))
        .unwrap();
    ns.run(|| forward_ports(Backend::Nftables, &config, &ips, None).map(drop))
        .unwrap();
    let ruleset = ns.nft_ruleset();
    assert!(
        ruleset.contains("tcp dport 8080 dnat to 10.88.0.2:80 comment \"1234\""),
        "{ruleset}"
    );
    assert!(ruleset.contains("ip daddr 192.168.0.2 tcp dport 8083 dnat to 10.88.0.2:83"));
    assert!(ruleset.contains("ip6 daddr 2001:db8:a::1 sctp dport 8085 dnat to [2001:db8:1::2]:85"));
    assert!(ruleset.contains("ip saddr 127.0.0.1 ip daddr 10.88.0.2 masquerade comment \"1234\""));
    assert_eq!(
        ruleset
            .matches("fib daddr type local jump hostports_all")
            .count(),
        4
    );
    // 3 v4 + 3 v6 dnat, 2 v4 + 1 v6 masquerade: no duplicates after the second ADD.
    assert_eq!(ruleset.matches("comment \"1234\"").count(), 9, "{ruleset}");
    ns.run(|| check_ports(Backend::Nftables, &config, &ips))
        .unwrap();

    ns.run(|| unforward_ports(Backend::Nftables, "test", "1234", &PortHints::default()))
        .unwrap();
    let ruleset = ns.nft_ruleset();
    assert!(!ruleset.contains("\"1234\""), "{ruleset}");
    assert!(ruleset.contains("table ip6 cni_hostport"));
    assert!(
        ns.run(|| check_ports(Backend::Nftables, &config, &ips))
            .is_err()
    );
    ns.run(|| unforward_ports(Backend::Nftables, "test", "1234", &PortHints::default()))
        .unwrap();
}

#[test]
fn portmap_concurrent_first_adds_share_one_skeleton() {
    let Some(ns) = TestNs::new("pcon") else {
        return;
    };
    std::thread::scope(|s| {
        for i in 0..32u16 {
            let ns = &ns;
            s.spawn(move || {
                let config = PortMapConfig::new("test", &format!("c{i}"), vec![tcp(9000 + i, 80)]);
                let ip = nets(&[&format!("10.88.2.{}/16", i + 2)]);
                ns.run(|| forward_ports(Backend::Iptables, &config, &ip, None).map(drop))
                    .unwrap();
                ns.run(|| forward_ports(Backend::Nftables, &config, &ip, None).map(drop))
                    .unwrap();
            });
        }
    });
    let rules = ns.nat_rules(false);
    let count = |needle: &str| rules.iter().filter(|r| r.starts_with(needle)).count();
    assert_eq!(count("-A PREROUTING "), 1, "{rules:#?}");
    assert_eq!(count("-A OUTPUT "), 1);
    assert_eq!(count("-A POSTROUTING "), 1);
    assert_eq!(count("-A CNI-HOSTPORT-SETMARK "), 1);
    assert_eq!(count("-A CNI-HOSTPORT-MASQ "), 1);
    assert_eq!(count("-A CNI-HOSTPORT-DNAT "), 32);
    assert_eq!(count("-A CNI-DN-"), 32 * 3);
    // Only our table: iptables-nft's own rules also print as "dnat to".
    let ruleset = ns.exec(&["nft", "list", "table", "ip", "cni_hostport"]);
    assert_eq!(
        ruleset.matches("jump hostports_all").count(),
        2,
        "{ruleset}"
    );
    assert_eq!(ruleset.matches(" dnat to ").count(), 32);
}

#[test]
fn portmap_racing_the_reference_never_loses_its_rules() {
    if reference("portmap").is_none() {
        eprintln!("skipping: reference portmap not installed");
        return;
    }
    let Some(host) = TestNs::new("prace") else {
        return;
    };
    let Some(ctr) = TestNs::new("pracec") else {
        return;
    };
    std::thread::scope(|s| {
        for i in 0..8u16 {
            let (host, ctr) = (&host, &ctr);
            s.spawn(move || {
                let conf = format!(
                    r#"{{"cniVersion":"1.0.0","name":"test","type":"portmap","runtimeConfig":{{"portMappings":[{{"hostPort":{},"containerPort":80,"protocol":"tcp"}}]}},"prevResult":{{"cniVersion":"1.0.0","interfaces":[{{"name":"eth0","sandbox":"{}"}}],"ips":[{{"interface":0,"address":"10.88.3.{}/16"}}]}}}}"#,
                    8000 + i,
                    ctr.path(),
                    i + 2
                );
                run_reference_as(host, "portmap", "ADD", &format!("go{i}"), ctr, &conf);
            });
            s.spawn(move || {
                let config = PortMapConfig::new("test", &format!("rs{i}"), vec![tcp(9000 + i, 80)]);
                let ip = nets(&[&format!("10.88.4.{}/16", i + 2)]);
                host.run(|| forward_ports(Backend::Iptables, &config, &ip, None).map(drop))
                    .unwrap();
            });
        }
    });
    let rules = host.nat_rules(false);
    for i in 0..8 {
        for id in [format!("go{i}"), format!("rs{i}")] {
            let dn = names::dnat_chain("test", &id);
            let entries = rules
                .iter()
                .filter(|r| r.starts_with("-A CNI-HOSTPORT-DNAT ") && r.ends_with(&dn))
                .count();
            let dnat = rules
                .iter()
                .filter(|r| r.starts_with(&format!("-A {dn} ")) && r.contains("-j DNAT"))
                .count();
            assert_eq!((entries, dnat), (1, 1), "{id}: {rules:#?}");
        }
    }
}

/// Debian's reference plugins, when installed.
const REFERENCE_CNI: &str = "/usr/lib/cni";

fn reference(plugin: &str) -> Option<String> {
    let path = format!("{REFERENCE_CNI}/{plugin}");
    std::path::Path::new(&path).exists().then_some(path)
}

fn run_reference(
    host: &TestNs,
    plugin: &str,
    command: &str,
    container: &TestNs,
    conf: &str,
) -> String {
    run_reference_as(host, plugin, command, "1234", container, conf)
}

fn run_reference_as(
    host: &TestNs,
    plugin: &str,
    command: &str,
    container_id: &str,
    container: &TestNs,
    conf: &str,
) -> String {
    let path = reference(plugin).unwrap();
    let netns = container.path();
    host.exec_with(
        &[&path],
        &[
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", container_id),
            ("CNI_NETNS", &netns),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", REFERENCE_CNI),
        ],
        Some(conf),
    )
    .unwrap_or_else(|e| panic!("reference {plugin} {command}: {e}"))
}

#[test]
fn differential_masq_against_reference_bridge() {
    if reference("bridge").is_none() || reference("host-local").is_none() {
        eprintln!("skipping: reference plugins not installed");
        return;
    }
    let Some(host) = TestNs::new("dbh") else {
        return;
    };
    let Some(ctr) = TestNs::new("dbc") else {
        return;
    };
    let data_dir = std::env::temp_dir().join(format!("cninat-ipam-{}", host.name));
    let conf = format!(
        r#"{{"cniVersion":"1.0.0","name":"test","type":"bridge","bridge":"cni0","isGateway":true,"ipMasq":true,"ipam":{{"type":"host-local","dataDir":"{}","ranges":[[{{"subnet":"10.88.0.0/16"}}],[{{"subnet":"2001:db8:1::/64"}}]]}}}}"#,
        data_dir.display()
    );
    let empty4 = host.nat_dump(false);
    let empty6 = host.nat_dump(true);

    // Reference ADD, our DEL without addresses.
    run_reference(&host, "bridge", "ADD", &ctr, &conf);
    let reference4 = host.nat_dump(false);
    assert!(reference4.contains(CHAIN), "{reference4}");
    // Our setup over the reference's rules is a no-op: identical layout.
    let ips = nets(&["10.88.0.2/16", "2001:db8:1::2/64"]);
    host.run(|| setup_masq(Backend::Iptables, "test", "eth0", "1234", &ips))
        .unwrap();
    assert_eq!(host.nat_dump(false), reference4);
    host.run(|| teardown_masq("test", "eth0", "1234", None))
        .unwrap();
    assert_eq!(host.nat_dump(false), empty4);
    assert_eq!(host.nat_dump(true), empty6);

    // Our ADD, reference DEL (it finds the rules by address and chain name).
    host.run(|| setup_masq(Backend::Iptables, "test", "eth0", "1234", &ips))
        .unwrap();
    run_reference(&host, "bridge", "DEL", &ctr, &conf);
    assert_eq!(host.nat_dump(false), empty4);
    assert_eq!(host.nat_dump(true), empty6);
    let _ = std::fs::remove_dir_all(&data_dir);
}

#[test]
fn differential_portmap_against_reference() {
    if reference("portmap").is_none() {
        eprintln!("skipping: reference portmap not installed");
        return;
    }
    let Some(host) = TestNs::new("dph") else {
        return;
    };
    let Some(ctr) = TestNs::new("dpc") else {
        return;
    };
    let conf = format!(
        r#"{{"cniVersion":"1.0.0","name":"test","type":"portmap","snat":true,
"runtimeConfig":{{"portMappings":[{{"hostPort":8080,"containerPort":80,"protocol":"tcp"}},{{"hostPort":8080,"containerPort":81,"protocol":"udp"}},{{"hostPort":8083,"containerPort":83,"protocol":"tcp","hostIP":"192.168.0.2"}},{{"hostPort":8085,"containerPort":85,"protocol":"sctp","hostIP":"2001:db8:a::1"}}]}},
"prevResult":{{"cniVersion":"1.0.0","interfaces":[{{"name":"eth0","sandbox":"{}"}}],"ips":[{{"interface":0,"address":"10.88.0.2/16"}},{{"interface":0,"address":"2001:db8:1::2/64"}}]}}}}"#,
        ctr.path()
    );
    let config = portmap_config("1234");
    let ips = nets(&["10.88.0.2/16", "2001:db8:1::2/64"]);

    // Reference ADD: our forward is a no-op (identical rules), CHECK passes, our DEL cleans.
    run_reference(&host, "portmap", "ADD", &ctr, &conf);
    let reference4 = host.nat_dump(false);
    let reference6 = host.nat_dump(true);
    host.run(|| check_ports(Backend::Iptables, &config, &ips))
        .unwrap();
    host.run(|| forward_ports(Backend::Iptables, &config, &ips, None).map(drop))
        .unwrap();
    assert_eq!(host.nat_dump(false), reference4);
    assert_eq!(host.nat_dump(true), reference6);
    host.run(|| unforward_ports(Backend::Iptables, "test", "1234", &PortHints::default()))
        .unwrap();
    let dn = names::dnat_chain("test", "1234");
    let skeleton4 = host.nat_dump(false);
    assert!(!skeleton4.contains(&dn), "{skeleton4}");

    // Our ADD, reference DEL.
    host.run(|| forward_ports(Backend::Iptables, &config, &ips, None).map(drop))
        .unwrap();
    assert_eq!(host.nat_dump(false), reference4);
    run_reference(&host, "portmap", "DEL", &ctr, &conf);
    assert_eq!(host.nat_dump(false), skeleton4);
    assert!(!host.nat_dump(true).contains(&dn));
}

#[test]
fn conntrack_flush_deletes_only_matching_udp_entries() {
    if !std::path::Path::new("/usr/sbin/conntrack").exists() {
        eprintln!("skipping: conntrack tool (fixture builder) not installed");
        return;
    }
    let Some(ns) = TestNs::new("ct") else { return };
    let insert = |proto: &str, dst: &str, dport: &str| {
        let state: &[&str] = if proto == "tcp" {
            &["--state", "ESTABLISHED"]
        } else {
            &[]
        };
        let mut args = vec![
            "conntrack",
            "-I",
            "-p",
            proto,
            "-s",
            "10.0.0.1",
            "-d",
            dst,
            "--sport",
            "5555",
            "--dport",
            dport,
            "--timeout",
            "120",
        ];
        args.extend_from_slice(state);
        ns.exec(&args);
    };
    let list = || {
        ns.exec_with(&["conntrack", "-L", "-f", "ipv4"], &[], None)
            .unwrap()
    };
    insert("udp", "192.168.0.2", "8080");
    insert("udp", "192.168.0.3", "8080");
    insert("udp", "192.168.0.2", "8081");
    insert("tcp", "192.168.0.2", "8080");
    let before = list();
    assert_eq!(before.lines().count(), 4, "{before}");

    let specific = [PortMapping {
        host_port: 8080,
        container_port: 80,
        protocol: Proto::Udp,
        host_ip: Some("192.168.0.3".parse().unwrap()),
    }];
    let n = ns
        .run(|| flush_udp_host_ports(&specific, Family::V4))
        .unwrap();
    assert_eq!(n, 1);
    let any = [PortMapping {
        host_ip: None,
        ..specific[0]
    }];
    let n = ns.run(|| flush_udp_host_ports(&any, Family::V4)).unwrap();
    assert_eq!(n, 1);
    let after = list();
    assert_eq!(after.lines().count(), 2, "{after}");
    assert!(
        after.contains("dport=8081") && after.contains("tcp"),
        "{after}"
    );
    let n = ns.run(|| flush_udp_host_ports(&any, Family::V4)).unwrap();
    assert_eq!(n, 0);
}

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
