//! Root tests of the verbs against the real iptables/nft inside throwaway namespaces,
//! a file per layout plus the differential tests against the reference plugins.
//! Skipped (pass with a note) when not root.

mod differential;
mod masq;
mod portmap;
mod sets;
pub(crate) mod testns;

use std::collections::HashSet;

use ipnetwork::IpNetwork;

use super::*;
use crate::Family;
use testns::TestNs;

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
