//! Issue 14 §3: once a pod on the bridge has a host port (route_localnet=1 on the
//! bridge), no pod reaches what the node binds to 127.0.0.1 only, by a route via its
//! gateway (NET_ADMIN) or by a hand-made frame (NET_RAW only); the localhost host port
//! still answers; DEL of the last mapping on an interface takes its guard away and puts
//! route_localnet back to 0, not before (two pods on one bridge, and GC).

use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use serde_json::json;

use crate::fixture::*;

const SECRET_TCP: u16 = 7001;
const SECRET_UDP: u16 = 7002;

/// The node's loopback-only services, non-blocking so a test can ask "did anything
/// arrive?".
struct Secrets {
    tcp: TcpListener,
    udp: UdpSocket,
}

impl Secrets {
    fn bind(node: &Node) -> Secrets {
        in_netns(&node.host, || {
            let tcp = TcpListener::bind((Ipv4Addr::LOCALHOST, SECRET_TCP)).expect("bind tcp");
            let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, SECRET_UDP)).expect("bind udp");
            tcp.set_nonblocking(true).unwrap();
            udp.set_nonblocking(true).unwrap();
            Secrets { tcp, udp }
        })
    }

    /// Whether a connection or a datagram reached them since the last look.
    fn reached(&self) -> (bool, bool) {
        std::thread::sleep(Duration::from_millis(300));
        let tcp = !matches!(self.tcp.accept(), Err(ref e) if e.kind() == ErrorKind::WouldBlock);
        let mut buf = [0u8; 64];
        let mut udp = false;
        while self.udp.recv(&mut buf).is_ok() {
            udp = true;
        }
        (tcp, udp)
    }
}

/// A pod with NET_ADMIN routes 127.0.0.1 via its gateway; connects and sends.
fn from_routed_pod(pod: &Pod) {
    let tcp = SocketAddr::from((Ipv4Addr::LOCALHOST, SECRET_TCP));
    let udp = SocketAddr::from((Ipv4Addr::LOCALHOST, SECRET_UDP));
    in_netns(&pod.ns, || {
        let _ = TcpStream::connect_timeout(&tcp, Duration::from_millis(800));
        let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
        let _ = s.send_to(b"routed", udp);
    });
}

/// Lets `pod` route 127.0.0.1 out of eth0 via the gateway, as a NET_ADMIN pod can.
fn route_loopback_out(pod: &Pod) {
    pod.ns.ip(["link", "set", "lo", "down"]);
    pod.ns.sysctl("net.ipv4.conf.all.route_localnet", "1");
    pod.ns.sysctl("net.ipv4.conf.eth0.route_localnet", "1");
    pod.ns
        .ip(["route", "add", "127.0.0.1/32", "via", GW_V4, "dev", "eth0"]);
}

fn mac(ns: &cni_tests::Netns, ifname: &str) -> [u8; 6] {
    let text = ns.run(["cat", &format!("/sys/class/net/{ifname}/address")]);
    let bytes: Vec<u8> = text
        .trim()
        .split(':')
        .map(|h| u8::from_str_radix(h, 16).unwrap())
        .collect();
    bytes.try_into().unwrap()
}

fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Ethernet + IPv4 + UDP from `src` to 127.0.0.1:SECRET_UDP (no UDP checksum).
fn loopback_frame(dst_mac: [u8; 6], src_mac: [u8; 6], src: Ipv4Addr) -> Vec<u8> {
    let payload = b"raw";
    let udp_len = 8 + payload.len() as u16;
    let mut ip = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 17, 0, 0];
    ip[2..4].copy_from_slice(&(20 + udp_len).to_be_bytes());
    ip.extend(src.octets());
    ip.extend(Ipv4Addr::LOCALHOST.octets());
    let sum = checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    let mut frame = Vec::new();
    frame.extend(dst_mac);
    frame.extend(src_mac);
    frame.extend(0x0800u16.to_be_bytes());
    frame.extend(ip);
    frame.extend(40000u16.to_be_bytes());
    frame.extend(SECRET_UDP.to_be_bytes());
    frame.extend(udp_len.to_be_bytes());
    frame.extend([0, 0]);
    frame.extend(payload);
    frame
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAP_V3: u32 = 0x2008_0522;
const CAP_NET_ADMIN: u32 = 12;

/// Drops CAP_NET_ADMIN from this thread's effective set (capabilities are per thread),
/// as a pod without it would be, and checks that it is gone.
fn drop_net_admin() {
    let mut header = CapHeader {
        version: CAP_V3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget/capset with a v3 header and two data words, as the ABI wants.
    unsafe {
        assert_eq!(
            libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()),
            0
        );
        data[0].effective &= !(1 << CAP_NET_ADMIN);
        assert_eq!(libc::syscall(libc::SYS_capset, &header, data.as_ptr()), 0);
        let mut check = [CapData::default(); 2];
        assert_eq!(
            libc::syscall(libc::SYS_capget, &mut header, check.as_mut_ptr()),
            0
        );
        assert_eq!(check[0].effective & (1 << CAP_NET_ADMIN), 0);
    }
}

/// A pod without NET_ADMIN sends one hand-made frame to the bridge's MAC.
fn from_raw_pod(node: &Node, pod: &Pod) {
    let frame = loopback_frame(
        mac(&node.host, BRIDGE),
        mac(&pod.ns, "eth0"),
        pod.v4.parse().unwrap(),
    );
    in_netns(&pod.ns, || {
        drop_net_admin();
        let name = std::ffi::CString::new("eth0").unwrap();
        // SAFETY: plain socket calls on a socket this closure owns and closes.
        unsafe {
            let index = libc::if_nametoindex(name.as_ptr());
            assert_ne!(index, 0, "eth0 in the pod");
            let proto = (libc::ETH_P_ALL as u16).to_be();
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto));
            assert!(fd >= 0, "AF_PACKET: {}", std::io::Error::last_os_error());
            let mut addr: libc::sockaddr_ll = std::mem::zeroed();
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_protocol = proto;
            addr.sll_ifindex = index as i32;
            addr.sll_halen = 6;
            addr.sll_addr[..6].copy_from_slice(&frame[..6]);
            let sent = libc::sendto(
                fd,
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const addr).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            assert_eq!(
                sent,
                frame.len() as isize,
                "{}",
                std::io::Error::last_os_error()
            );
            libc::close(fd);
        }
    });
}

fn route_localnet(node: &Node) -> String {
    node.host
        .run([
            "cat",
            &format!("/proc/sys/net/ipv4/conf/{BRIDGE}/route_localnet"),
        ])
        .trim()
        .to_string()
}

/// The elements of one of the guard's sets, as `nft` lists them (empty without the
/// table).
fn guard_set(node: &Node, set: &str) -> String {
    let out = node
        .host
        .exec(["nft", "list", "set", "ip", "cni_rs_localnet", set]);
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Whether the bridge is guarded, and whether `pod` claims it. Elements DEL expires
/// linger a jiffy or two (listed with "expires"): they count as gone.
fn guard_state(node: &Node, pod: &Pod) -> (bool, bool) {
    let live = |text: String, needle: &str| {
        text.lines()
            .any(|l| l.contains(needle) && !l.contains("expires"))
    };
    for _ in 0..50 {
        let text = guard_set(node, "guarded") + &guard_set(node, "owners");
        if !text.contains("expires") {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let guarded = live(guard_set(node, "guarded"), &format!("\"{BRIDGE}\""));
    let owner = format!(
        "\"{BRIDGE}\" . {} comment \"{NETWORK} {} {BRIDGE}\"",
        pod.v4, pod.id
    );
    (guarded, live(guard_set(node, "owners"), &owner))
}

/// Neither attacker reaches the node's loopback.
fn assert_blocked(node: &Node, secrets: &Secrets, routed: &Pod, raw: &Pod, what: &str) {
    from_routed_pod(routed);
    from_raw_pod(node, raw);
    assert_eq!(secrets.reached(), (false, false), "{what}");
}

fn pods_never_reach_the_node_loopback(backend: &str) {
    let node = Node::new();
    let secrets = Secrets::bind(&node);
    let web = node.pod_v4("web");
    let routed = node.pod_v4("routed");
    let raw = node.pod_v4("raw");
    route_loopback_out(&routed);
    let _tcp = web.serve_tcp(80, "tcp-web");
    let _udp = web.serve_udp(53, "udp-web");
    let conf = conf(
        backend,
        json!([map(8080, 80, "tcp"), map(5353, 53, "udp")]),
        &web,
    );
    node.portmap("ADD", &web, &conf).assert_ok();
    assert_eq!(
        route_localnet(&node),
        "1",
        "{backend}: localhost host ports need it"
    );
    assert_eq!(
        guard_state(&node, &web),
        (true, true),
        "{backend}: no guard"
    );

    // The localhost host port, the node address and hairpin still answer.
    for (what, from, addr) in [
        ("node via 127.0.0.1", &*node.host, "127.0.0.1"),
        ("node via its address", &*node.host, NODE_V4),
        ("hairpin", &web.ns, GW_V4),
    ] {
        let tcp = eventually(3, || tcp_reply(from, addr, 8080));
        let udp = eventually(3, || udp_reply(from, addr, 5353, None));
        assert_eq!(tcp.as_deref(), Some("tcp-web"), "{backend}: TCP {what}");
        assert_eq!(udp.as_deref(), Some("udp-web"), "{backend}: UDP {what}");
    }

    // Neither attacker reaches the node's loopback.
    assert_eq!(secrets.reached(), (false, false), "{backend}: stray before");
    from_routed_pod(&routed);
    assert_eq!(secrets.reached(), (false, false), "{backend}: routed pod");
    from_raw_pod(&node, &raw);
    assert_eq!(secrets.reached(), (false, false), "{backend}: raw frame");

    // The same attacks do reach it without the guard: the probes above are real.
    node.host
        .run(["nft", "delete", "table", "ip", "cni_rs_localnet"]);
    from_raw_pod(&node, &raw);
    assert_eq!(
        secrets.reached(),
        (false, true),
        "{backend}: unguarded, raw"
    );

    // A repeated ADD puts the guard back; DEL of the last mapping removes it, with
    // route_localnet.
    node.portmap("ADD", &web, &conf).assert_ok();
    assert_eq!(
        guard_state(&node, &web),
        (true, true),
        "{backend}: re-ADD guards again"
    );
    from_raw_pod(&node, &raw);
    assert_eq!(
        secrets.reached(),
        (false, false),
        "{backend}: raw after re-ADD"
    );
    node.portmap("DEL", &web, &conf).assert_ok();
    assert_eq!(
        guard_state(&node, &web),
        (false, false),
        "{backend}: guard left after DEL"
    );
    assert_eq!(
        route_localnet(&node),
        "0",
        "{backend}: route_localnet left on"
    );
    from_raw_pod(&node, &raw);
    assert_eq!(
        secrets.reached(),
        (false, false),
        "{backend}: raw after DEL"
    );
}

#[test]
fn iptables_pods_never_reach_the_node_loopback() {
    pods_never_reach_the_node_loopback("iptables");
}

#[test]
fn nftables_pods_never_reach_the_node_loopback() {
    pods_never_reach_the_node_loopback("nftables");
}

#[test]
fn nftables_sets_pods_never_reach_the_node_loopback() {
    pods_never_reach_the_node_loopback("nftables-sets");
}

/// Two pods with host ports on one bridge: the first DEL leaves the bridge guarded
/// (route_localnet stays on for the other pod's localhost host port); the second
/// takes the guard away and puts route_localnet back to 0.
fn the_guard_stays_until_the_last_pod_goes(backend: &str) {
    let node = Node::new();
    let secrets = Secrets::bind(&node);
    let (a, b) = (node.pod_v4("a"), node.pod_v4("b"));
    let routed = node.pod_v4("routed");
    let raw = node.pod_v4("raw");
    route_loopback_out(&routed);
    let _tcp = b.serve_tcp(80, "tcp-b");
    let conf_a = conf(backend, json!([map(8080, 80, "tcp")]), &a);
    let conf_b = conf(backend, json!([map(8081, 80, "tcp")]), &b);
    node.portmap("ADD", &a, &conf_a).assert_ok();
    node.portmap("ADD", &b, &conf_b).assert_ok();
    assert_eq!(guard_state(&node, &a), (true, true), "{backend}: a");
    assert_eq!(guard_state(&node, &b), (true, true), "{backend}: b");

    node.portmap("DEL", &a, &conf_a).assert_ok();
    assert_eq!(
        guard_state(&node, &a),
        (true, false),
        "{backend}: a's claim left, or the guard gone with it"
    );
    assert!(guard_state(&node, &b).1, "{backend}: b's claim");
    assert_eq!(route_localnet(&node), "1", "{backend}: b still needs it");
    let tcp = eventually(3, || tcp_reply(&node.host, "127.0.0.1", 8081));
    assert_eq!(
        tcp.as_deref(),
        Some("tcp-b"),
        "{backend}: b's localhost port"
    );
    assert_blocked(
        &node,
        &secrets,
        &routed,
        &raw,
        &format!("{backend}: after a's DEL"),
    );

    // A repeated DEL changes nothing.
    node.portmap("DEL", &a, &conf_a).assert_ok();
    assert_eq!(
        guard_state(&node, &b),
        (true, true),
        "{backend}: repeated DEL"
    );

    node.portmap("DEL", &b, &conf_b).assert_ok();
    assert_eq!(
        guard_state(&node, &b),
        (false, false),
        "{backend}: after the last DEL"
    );
    assert_eq!(
        route_localnet(&node),
        "0",
        "{backend}: route_localnet left on"
    );
    assert_blocked(
        &node,
        &secrets,
        &routed,
        &raw,
        &format!("{backend}: after the last DEL"),
    );
}

#[test]
fn iptables_the_guard_stays_until_the_last_pod_goes() {
    the_guard_stays_until_the_last_pod_goes("iptables");
}

#[test]
fn nftables_sets_the_guard_stays_until_the_last_pod_goes() {
    the_guard_stays_until_the_last_pod_goes("nftables-sets");
}

/// GC releases the claims of containers the runtime no longer lists, records or not,
/// and the guard goes with the last one.
#[test]
fn gc_releases_the_claims_of_forgotten_pods() {
    let node = Node::new();
    let (keep, gone) = (node.pod_v4("keep"), node.pod_v4("gone"));
    for (pod, port) in [(&keep, 8080), (&gone, 8081)] {
        let mut c = conf("nftables-sets", json!([map(port, 80, "tcp")]), pod);
        c["cniVersion"] = json!("1.1.0");
        node.portmap("ADD", pod, &c).assert_ok();
    }
    let gc = |valid: Vec<&str>| {
        let attachments: Vec<_> = valid
            .iter()
            .map(|id| json!({"containerID": id, "ifname": "eth0"}))
            .collect();
        let gc_conf = json!({
            "cniVersion": "1.1.0",
            "name": NETWORK,
            "type": "portmap",
            "backend": "nftables-sets",
            "cni.dev/valid-attachments": attachments,
        });
        node.host
            .cni("portmap")
            .command("GC")
            .config(&gc_conf)
            .run()
            .assert_ok();
    };
    gc(vec![&keep.id]);
    assert_eq!(guard_state(&node, &gone), (true, false), "gone's claim");
    assert_eq!(guard_state(&node, &keep), (true, true), "keep's claim");
    assert_eq!(route_localnet(&node), "1");
    gc(vec![]);
    assert_eq!(guard_state(&node, &keep), (false, false), "keep's claim");
    assert_eq!(route_localnet(&node), "0");
}
