//! Host ports in the iptables and nftables layouts, and the UDP conntrack flush.

use super::*;

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
