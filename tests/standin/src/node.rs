//! Node objects shaped like `kubectl get node -o json` of a kubeadm node: built from
//! k8s-openapi's types, so the JSON is the real shape.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use k8s_openapi::api::core::v1::{
    DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeSpec, NodeStatus,
    NodeSystemInfo, Taint,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

use crate::store::now;

/// Builds a Node. Only the name is required; everything else has kubeadm-like defaults:
/// a Ready condition, `nodeInfo`, capacity, the well-known labels, `Hostname` = name.
///
/// ```
/// use kube_standin::NodeBuilder;
/// let node = NodeBuilder::new("n1")
///     .pod_cidrs(["10.244.1.0/24", "fd00:10:244:1::/64"])
///     .internal_ip("10.0.0.1")
///     .internal_ip("fd00::1")
///     .build();
/// assert_eq!(node.spec.unwrap().pod_cidr.as_deref(), Some("10.244.1.0/24"));
/// ```
#[derive(Debug, Clone)]
pub struct NodeBuilder {
    name: String,
    pod_cidrs: Vec<String>,
    addresses: Vec<(String, String)>,
    hostname: Option<String>,
    ready: bool,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    created: Option<Time>,
    kubelet_version: String,
    unschedulable: bool,
    taints: Vec<Taint>,
}

impl NodeBuilder {
    pub fn new(name: impl Into<String>) -> Self {
        let name = name.into();
        let labels = [
            ("beta.kubernetes.io/arch", "amd64"),
            ("beta.kubernetes.io/os", "linux"),
            ("kubernetes.io/arch", "amd64"),
            ("kubernetes.io/hostname", name.as_str()),
            ("kubernetes.io/os", "linux"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let annotations = [
            (
                "kubeadm.alpha.kubernetes.io/cri-socket",
                "unix:///run/containerd/containerd.sock",
            ),
            ("node.alpha.kubernetes.io/ttl", "0"),
            (
                "volumes.kubernetes.io/controller-managed-attach-detach",
                "true",
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        NodeBuilder {
            name,
            pod_cidrs: Vec::new(),
            addresses: Vec::new(),
            hostname: None,
            ready: true,
            labels,
            annotations,
            created: None,
            kubelet_version: "v1.33.0".into(),
            unschedulable: false,
            taints: Vec::new(),
        }
    }

    /// `spec.podCIDRs` in this order; `spec.podCIDR` is the first.
    pub fn pod_cidrs<I, S>(mut self, cidrs: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.pod_cidrs = cidrs.into_iter().map(Into::into).collect();
        self
    }

    /// Appends one pod CIDR (call twice for dual-stack).
    pub fn pod_cidr(mut self, cidr: impl Into<String>) -> Self {
        self.pod_cidrs.push(cidr.into());
        self
    }

    /// Appends an `InternalIP` address (call once per family).
    pub fn internal_ip(self, ip: impl ToString) -> Self {
        self.address("InternalIP", ip)
    }

    /// Appends an `ExternalIP` address.
    pub fn external_ip(self, ip: impl ToString) -> Self {
        self.address("ExternalIP", ip)
    }

    /// Appends an address of any type (`InternalIP`, `ExternalIP`, `InternalDNS`, ...).
    pub fn address(mut self, type_: &str, address: impl ToString) -> Self {
        self.addresses
            .push((type_.to_string(), address.to_string()));
        self
    }

    /// The `Hostname` address (default: the node name).
    pub fn hostname(mut self, hostname: impl Into<String>) -> Self {
        self.hostname = Some(hostname.into());
        self
    }

    /// The Ready condition's status (default true).
    pub fn ready(mut self, ready: bool) -> Self {
        self.ready = ready;
        self
    }

    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    pub fn annotation(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.annotations.insert(key.into(), value.into());
        self
    }

    /// `metadata.creationTimestamp` (default: when the stand-in first stores it).
    pub fn created(mut self, at: Time) -> Self {
        self.created = Some(at);
        self
    }

    /// `status.nodeInfo.kubeletVersion` (default `v1.33.0`).
    pub fn kubelet_version(mut self, v: impl Into<String>) -> Self {
        self.kubelet_version = v.into();
        self
    }

    /// `spec.unschedulable` (cordoned).
    pub fn unschedulable(mut self, yes: bool) -> Self {
        self.unschedulable = yes;
        self
    }

    /// Marks the node as a kubeadm control-plane node: role label and NoSchedule taint.
    pub fn control_plane(mut self) -> Self {
        self.labels.insert(
            "node-role.kubernetes.io/control-plane".into(),
            String::new(),
        );
        self.taints.push(Taint {
            effect: "NoSchedule".into(),
            key: "node-role.kubernetes.io/control-plane".into(),
            ..Default::default()
        });
        self
    }

    pub fn build(self) -> Node {
        let heartbeat = now();
        let condition = |type_: &str, status: bool, reason: &str, message: &str| NodeCondition {
            type_: type_.into(),
            status: if status { "True" } else { "False" }.into(),
            reason: Some(reason.into()),
            message: Some(message.into()),
            last_heartbeat_time: Some(heartbeat.clone()),
            last_transition_time: Some(heartbeat.clone()),
        };
        let conditions = vec![
            condition(
                "MemoryPressure",
                false,
                "KubeletHasSufficientMemory",
                "kubelet has sufficient memory available",
            ),
            condition(
                "DiskPressure",
                false,
                "KubeletHasNoDiskPressure",
                "kubelet has no disk pressure",
            ),
            condition(
                "PIDPressure",
                false,
                "KubeletHasSufficientPID",
                "kubelet has sufficient PID available",
            ),
            if self.ready {
                condition(
                    "Ready",
                    true,
                    "KubeletReady",
                    "kubelet is posting ready status",
                )
            } else {
                condition(
                    "Ready",
                    false,
                    "KubeletNotReady",
                    "container runtime network not ready: NetworkReady=false \
                     reason:NetworkPluginNotReady message:Network plugin returns error: \
                     cni plugin not initialized",
                )
            },
        ];
        let mut addresses: Vec<NodeAddress> = self
            .addresses
            .into_iter()
            .map(|(type_, address)| NodeAddress { type_, address })
            .collect();
        addresses.push(NodeAddress {
            type_: "Hostname".into(),
            address: self.hostname.unwrap_or_else(|| self.name.clone()),
        });
        let resources = |cpu: &str, mem: &str, storage: &str| -> BTreeMap<String, Quantity> {
            [
                ("cpu", cpu),
                ("ephemeral-storage", storage),
                ("hugepages-1Gi", "0"),
                ("hugepages-2Mi", "0"),
                ("memory", mem),
                ("pods", "110"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
            .collect()
        };
        let machine_id = format!("{:032x}", fnv(&self.name));
        let spec = NodeSpec {
            pod_cidr: self.pod_cidrs.first().cloned(),
            pod_cidrs: (!self.pod_cidrs.is_empty()).then_some(self.pod_cidrs),
            unschedulable: self.unschedulable.then_some(true),
            taints: (!self.taints.is_empty()).then_some(self.taints),
            ..Default::default()
        };
        Node {
            metadata: ObjectMeta {
                name: Some(self.name),
                labels: Some(self.labels),
                annotations: Some(self.annotations),
                creation_timestamp: self.created,
                ..Default::default()
            },
            spec: Some(spec),
            status: Some(NodeStatus {
                addresses: Some(addresses),
                allocatable: Some(resources("2", "8048016Ki", "18866186604")),
                capacity: Some(resources("2", "8150416Ki", "20470152Ki")),
                conditions: Some(conditions),
                daemon_endpoints: Some(NodeDaemonEndpoints {
                    kubelet_endpoint: Some(DaemonEndpoint { port: 10250 }),
                }),
                node_info: Some(NodeSystemInfo {
                    architecture: "amd64".into(),
                    boot_id: uuidish(fnv(&machine_id)),
                    container_runtime_version: "containerd://1.7.24".into(),
                    kernel_version: "6.1.0-37-amd64".into(),
                    kube_proxy_version: String::new(),
                    kubelet_version: self.kubelet_version,
                    machine_id: machine_id.clone(),
                    operating_system: "linux".into(),
                    os_image: "Debian GNU/Linux 12 (bookworm)".into(),
                    system_uuid: uuidish(fnv(&machine_id) ^ 0x5555),
                    swap: None,
                }),
                ..Default::default()
            }),
        }
    }
}

fn fnv(s: &str) -> u128 {
    let mut h: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    for b in s.bytes() {
        h = (h ^ u128::from(b)).wrapping_mul(0x0000_0000_0100_0000_0000_0000_0000_013b);
    }
    h
}

fn uuidish(h: u128) -> String {
    let s = format!("{h:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &s[0..8],
        &s[8..12],
        &s[12..16],
        &s[16..20],
        &s[20..32]
    )
}

/// What [`generate`] makes: `count` Nodes named `{prefix}{i}` (i from 1), each with the
/// i-th subnet of every pod range and the i-th host address of every node range.
#[derive(Debug, Clone)]
pub struct Generate {
    pub count: usize,
    pub prefix: String,
    /// Pod ranges in the Nodes' podCIDRs order, e.g. `10.244.0.0/16` (and an IPv6 one).
    pub pod_ranges: Vec<(IpAddr, u8)>,
    /// The node subnet size per family: /24 for IPv4, /64 for IPv6 (kube-controller-manager's defaults).
    pub node_mask_v4: u8,
    pub node_mask_v6: u8,
    /// InternalIP ranges, e.g. `10.0.0.0/16`: node i gets the range's address + i.
    pub node_ip_ranges: Vec<(IpAddr, u8)>,
}

impl Default for Generate {
    fn default() -> Self {
        Generate {
            count: 0,
            prefix: "node-".into(),
            pod_ranges: vec![(IpAddr::V4(Ipv4Addr::new(10, 244, 0, 0)), 16)],
            node_mask_v4: 24,
            node_mask_v6: 64,
            node_ip_ranges: vec![(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 0)), 16)],
        }
    }
}

/// Parses `10.244.0.0/16` or `fd00:10:244::/56`.
pub fn parse_cidr(s: &str) -> Result<(IpAddr, u8), String> {
    let (ip, len) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?} is not a CIDR (ADDRESS/LENGTH)"))?;
    let ip: IpAddr = ip.parse().map_err(|e| format!("{s:?}: {e}"))?;
    let len: u8 = len.parse().map_err(|e| format!("{s:?}: {e}"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    if len > max {
        return Err(format!("{s:?}: prefix length above {max}"));
    }
    Ok((ip, len))
}

fn to_u128(ip: IpAddr) -> (u128, u32) {
    match ip {
        IpAddr::V4(a) => (u128::from(u32::from(a)), 32),
        IpAddr::V6(a) => (u128::from(a), 128),
    }
}

fn from_u128(v: u128, bits: u32) -> IpAddr {
    if bits == 32 {
        IpAddr::V4(Ipv4Addr::from(v as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(v))
    }
}

/// The `index`-th (from 0) subnet of length `mask` inside `range`.
fn nth_subnet(range: (IpAddr, u8), mask: u8, index: u128) -> Result<String, String> {
    let (base, bits) = to_u128(range.0);
    if mask < range.1 || u32::from(mask) > bits {
        return Err(format!(
            "node subnet /{mask} does not fit in {}/{}",
            range.0, range.1
        ));
    }
    let room = u32::from(mask - range.1);
    if room < 128 && index >> room != 0 {
        return Err(format!(
            "{}/{} holds only {} /{mask} subnets",
            range.0,
            range.1,
            1u128 << room
        ));
    }
    let shift = bits - u32::from(mask);
    let host_bits = bits - u32::from(range.1);
    let host_mask = u128::MAX.checked_shr(128 - host_bits).unwrap_or(0);
    let net = base & !host_mask;
    let v = net | (index.checked_shl(shift).unwrap_or(0));
    Ok(format!("{}/{mask}", from_u128(v, bits)))
}

/// The address `range` + `offset`, which must stay inside the range (and below its
/// IPv4 broadcast address).
fn nth_host(range: (IpAddr, u8), offset: u128) -> Result<IpAddr, String> {
    let (base, bits) = to_u128(range.0);
    let room = bits - u32::from(range.1);
    let size = if room >= 128 {
        u128::MAX
    } else {
        1u128 << room
    };
    let usable = if bits == 32 {
        size.saturating_sub(1)
    } else {
        size
    };
    if offset >= usable {
        return Err(format!(
            "{}/{} has no room for {offset} node addresses",
            range.0, range.1
        ));
    }
    Ok(from_u128(base + offset, bits))
}

/// Makes the Nodes of a simulated cluster (for benchmarks: 5 000 Nodes on one /16).
pub fn generate(g: &Generate) -> Result<Vec<Node>, String> {
    (1..=g.count)
        .map(|i| {
            let mut b = NodeBuilder::new(format!("{}{i}", g.prefix));
            for &range in &g.pod_ranges {
                let mask = if range.0.is_ipv4() {
                    g.node_mask_v4
                } else {
                    g.node_mask_v6
                };
                b = b.pod_cidr(nth_subnet(range, mask, (i - 1) as u128)?);
            }
            for &range in &g.node_ip_ranges {
                b = b.internal_ip(nth_host(range, i as u128)?);
            }
            Ok(b.build())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_matches_kubectl_output() {
        let n = NodeBuilder::new("n1")
            .pod_cidrs(["10.244.1.0/24", "fd00:10:244:1::/64"])
            .internal_ip("10.0.0.1")
            .external_ip("192.0.2.1")
            .build();
        let v = serde_json::to_value(&n).unwrap();
        assert_eq!(v["kind"], "Node");
        assert_eq!(v["apiVersion"], "v1");
        assert_eq!(v["spec"]["podCIDR"], "10.244.1.0/24");
        assert_eq!(v["spec"]["podCIDRs"][1], "fd00:10:244:1::/64");
        let addrs = &v["status"]["addresses"];
        assert_eq!(addrs[0]["type"], "InternalIP");
        assert_eq!(addrs[1]["type"], "ExternalIP");
        assert_eq!(addrs[2]["type"], "Hostname");
        assert_eq!(addrs[2]["address"], "n1");
        assert_eq!(v["metadata"]["labels"]["kubernetes.io/hostname"], "n1");
        assert_eq!(v["status"]["conditions"][3]["type"], "Ready");
        assert_eq!(v["status"]["conditions"][3]["status"], "True");
        assert_eq!(v["status"]["nodeInfo"]["kubeletVersion"], "v1.33.0");
        assert_eq!(v["status"]["capacity"]["pods"], "110");
    }

    #[test]
    fn node_without_cidrs_has_no_pod_cidr_fields() {
        let v = serde_json::to_value(NodeBuilder::new("n").build()).unwrap();
        assert!(v["spec"].get("podCIDR").is_none());
        assert!(v["spec"].get("podCIDRs").is_none());
    }

    #[test]
    fn generate_5000_on_a_16() {
        let g = Generate {
            count: 5000,
            pod_ranges: vec![parse_cidr("10.128.0.0/9").unwrap()],
            ..Default::default()
        };
        let nodes = generate(&g).unwrap();
        assert_eq!(nodes.len(), 5000);
        let last = nodes[4999].clone();
        assert_eq!(last.metadata.name.as_deref(), Some("node-5000"));
        assert_eq!(
            last.spec.unwrap().pod_cidr.as_deref(),
            Some("10.147.135.0/24")
        );
        assert_eq!(
            last.status.unwrap().addresses.unwrap()[0].address,
            "10.0.19.136"
        );
    }

    #[test]
    fn generate_dual_stack_and_range_errors() {
        let g = Generate {
            count: 2,
            pod_ranges: vec![
                parse_cidr("fd00:10:244::/56").unwrap(),
                parse_cidr("10.244.0.0/16").unwrap(),
            ],
            node_ip_ranges: vec![parse_cidr("10.0.0.0/24").unwrap()],
            ..Default::default()
        };
        let nodes = generate(&g).unwrap();
        let spec = nodes[1].spec.clone().unwrap();
        assert_eq!(
            spec.pod_cidrs.unwrap(),
            vec!["fd00:10:244:1::/64", "10.244.1.0/24"]
        );
        let too_many = Generate {
            count: 300,
            ..Default::default()
        };
        assert!(generate(&too_many).unwrap_err().contains("holds only 256"));
        let no_room = Generate {
            count: 255,
            pod_ranges: vec![parse_cidr("10.0.0.0/8").unwrap()],
            node_ip_ranges: vec![parse_cidr("10.0.0.0/24").unwrap()],
            ..Default::default()
        };
        assert!(generate(&no_room).unwrap_err().contains("no room"));
    }
}
