//! Ours against the reference plugins, side by side.

use super::*;

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
