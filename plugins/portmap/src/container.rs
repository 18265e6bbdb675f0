//! Which of prevResult's addresses are the container's.

use cni_types::CniResult;
use ipnetwork::IpNetwork;

/// The first IPv4 and the first IPv6 address (in that order) that belong to the
/// container interface `ifname`.
///
/// As in the reference, an address belongs to it unless its `interface` index names
/// a known interface that is another one or lives outside a sandbox (the bridge, the
/// host veth); an address without a usable index is taken as the container's.
pub fn container_ips(prev: &CniResult, ifname: &str) -> Vec<IpNetwork> {
    let mut v4 = None;
    let mut v6 = None;
    for ip in &prev.ips {
        let slot = if ip.address.is_ipv4() {
            &mut v4
        } else {
            &mut v6
        };
        if slot.is_some() {
            continue;
        }
        let elsewhere = ip
            .interface
            .and_then(|idx| prev.interfaces.get(idx))
            .is_some_and(|iface| {
                iface.name != ifname || iface.sandbox.as_deref().unwrap_or("").is_empty()
            });
        if !elsewhere {
            *slot = Some(ip.address);
        }
    }
    v4.into_iter().chain(v6).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn result(v: serde_json::Value) -> CniResult {
        CniResult::from_value(&v, "1.0.0").unwrap()
    }

    fn ips(r: &CniResult, ifname: &str) -> Vec<String> {
        container_ips(r, ifname)
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn picks_the_sandbox_interface_named_ifname() {
        let r = result(json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": "cni0", "mac": "00:11:22:33:44:55"},
                {"name": "veth1", "mac": "00:11:22:33:44:66"},
                {"name": "eth0", "mac": "00:11:22:33:44:77", "sandbox": "/run/netns/x"},
                {"name": "net1", "sandbox": "/run/netns/x"},
            ],
            "ips": [
                {"address": "10.0.0.1/24", "interface": 0},
                {"address": "10.1.0.5/16", "interface": 3},
                {"address": "2001:db8::9/64", "interface": 1},
                {"address": "10.0.0.2/24", "interface": 2},
                {"address": "2001:db8::2/64", "interface": 2},
                {"address": "10.0.0.3/24", "interface": 2},
            ],
        }));
        assert_eq!(ips(&r, "eth0"), ["10.0.0.2/24", "2001:db8::2/64"]);
        assert_eq!(ips(&r, "net1"), ["10.1.0.5/16"]);
        assert!(ips(&r, "eth9").is_empty());
    }

    #[test]
    fn addresses_without_a_usable_index_are_the_containers() {
        let r = result(json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "eth0", "sandbox": "/x"}],
            "ips": [{"address": "10.0.0.7/24"}, {"address": "fd00::7/64", "interface": 5}],
        }));
        assert_eq!(ips(&r, "eth0"), ["10.0.0.7/24", "fd00::7/64"]);
        let old = CniResult::from_value(
            &json!({"cniVersion": "0.2.0", "ip4": {"ip": "10.0.0.8/24"}}),
            "0.2.0",
        )
        .unwrap();
        assert_eq!(ips(&old, "eth0"), ["10.0.0.8/24"]);
    }

    #[test]
    fn an_interface_without_sandbox_is_not_the_container() {
        let r = result(json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "eth0"}, {"name": "eth0", "sandbox": ""}],
            "ips": [{"address": "10.0.0.7/24", "interface": 0}, {"address": "10.0.0.8/24", "interface": 1}],
        }));
        assert!(ips(&r, "eth0").is_empty());
    }
}
