//! The parts of a Kubernetes Node the agent uses, parsed once from the API object:
//! pod CIDRs in the Node's order and its addresses per family.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1::Node;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    pub name: String,
    /// `spec.podCIDRs` in order (the first family is the pods' primary address);
    /// `spec.podCIDR` when the list is missing (clusters before dual-stack).
    pub pod_cidrs: Vec<IpNetwork>,
    /// Entries that did not parse, to report.
    pub bad_cidrs: Vec<String>,
    pub internal_ips: Vec<IpAddr>,
    pub external_ips: Vec<IpAddr>,
}

impl NodeView {
    pub fn from_node(node: &Node) -> NodeView {
        let name = node.metadata.name.clone().unwrap_or_default();
        let spec = node.spec.as_ref();
        let mut texts: Vec<&str> = spec
            .and_then(|s| s.pod_cidrs.as_ref())
            .map(|v| v.iter().map(String::as_str).collect())
            .unwrap_or_default();
        if texts.is_empty()
            && let Some(one) = spec.and_then(|s| s.pod_cidr.as_deref())
        {
            texts.push(one);
        }
        let mut pod_cidrs = Vec::new();
        let mut bad_cidrs = Vec::new();
        for t in texts {
            match t.parse::<IpNetwork>() {
                // The network address: "10.244.1.5/24" would otherwise route oddly.
                Ok(n) => match IpNetwork::new(n.network(), n.prefix()) {
                    Ok(n) => pod_cidrs.push(n),
                    Err(_) => bad_cidrs.push(t.to_owned()),
                },
                Err(_) => bad_cidrs.push(t.to_owned()),
            }
        }
        let mut internal_ips = Vec::new();
        let mut external_ips = Vec::new();
        let addresses = node
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .map(Vec::as_slice)
            .unwrap_or_default();
        for a in addresses {
            let Ok(ip) = a.address.parse::<IpAddr>() else {
                continue;
            };
            match a.type_.as_str() {
                "InternalIP" => internal_ips.push(ip),
                "ExternalIP" => external_ips.push(ip),
                _ => {}
            }
        }
        NodeView {
            name,
            pod_cidrs,
            bad_cidrs,
            internal_ips,
            external_ips,
        }
    }

    /// The node's address for a family: its first InternalIP of that family, else its
    /// first ExternalIP (what Kubernetes' GetNodeHostIPs picks).
    pub fn address(&self, ipv6: bool) -> Option<IpAddr> {
        self.internal_ips
            .iter()
            .chain(&self.external_ips)
            .copied()
            .find(|ip| ip.is_ipv6() == ipv6)
    }

    /// The node's primary address: its first InternalIP, else its first ExternalIP.
    pub fn primary_address(&self) -> Option<IpAddr> {
        self.internal_ips
            .first()
            .or(self.external_ips.first())
            .copied()
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use k8s_openapi::api::core::v1::{Node, NodeAddress, NodeSpec, NodeStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    /// A Node as `kubectl get node -o json` shows it, with InternalIPs.
    pub fn node(name: &str, cidrs: &[&str], ips: &[&str]) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                pod_cidr: cidrs.first().map(|s| s.to_string()),
                pod_cidrs: (!cidrs.is_empty())
                    .then(|| cidrs.iter().map(|s| s.to_string()).collect()),
                ..Default::default()
            }),
            status: Some(NodeStatus {
                addresses: Some(
                    ips.iter()
                        .map(|ip| NodeAddress {
                            address: ip.to_string(),
                            type_: "InternalIP".into(),
                        })
                        .chain(std::iter::once(NodeAddress {
                            address: name.into(),
                            type_: "Hostname".into(),
                        }))
                        .collect(),
                ),
                ..Default::default()
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::node;
    use super::*;

    #[test]
    fn reads_pod_cidrs_in_order_and_addresses_by_family() {
        let v = NodeView::from_node(&node(
            "n1",
            &["fd00:10:244:1::/64", "10.244.1.0/24"],
            &["10.0.0.1", "fd00::1"],
        ));
        assert_eq!(v.name, "n1");
        assert_eq!(v.pod_cidrs[0].to_string(), "fd00:10:244:1::/64");
        assert_eq!(v.pod_cidrs[1].to_string(), "10.244.1.0/24");
        assert_eq!(v.address(false), Some("10.0.0.1".parse().unwrap()));
        assert_eq!(v.address(true), Some("fd00::1".parse().unwrap()));
        assert_eq!(v.primary_address(), Some("10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn falls_back_to_pod_cidr_and_external_ip() {
        let mut n = node("n1", &[], &[]);
        let spec = n.spec.as_mut().unwrap();
        spec.pod_cidr = Some("10.244.7.9/24".into()); // host bits set: the network is meant
        let status = n.status.as_mut().unwrap();
        status.addresses = Some(vec![k8s_openapi::api::core::v1::NodeAddress {
            address: "203.0.113.7".into(),
            type_: "ExternalIP".into(),
        }]);
        let v = NodeView::from_node(&n);
        assert_eq!(v.pod_cidrs[0].to_string(), "10.244.7.0/24");
        assert_eq!(v.address(false), Some("203.0.113.7".parse().unwrap()));
        assert_eq!(v.address(true), None);
    }

    #[test]
    fn keeps_bad_cidrs_for_the_report() {
        let v = NodeView::from_node(&node("n1", &["10.244.1.0/24", "nonsense"], &[]));
        assert_eq!(v.pod_cidrs.len(), 1);
        assert_eq!(v.bad_cidrs, vec!["nonsense".to_string()]);
        let v = NodeView::from_node(&Node::default());
        assert!(v.pod_cidrs.is_empty() && v.primary_address().is_none());
    }
}
