//! ADD's output, CHECK, and every kind of bad input: the error JSON, and proof that
//! nothing ran (firewall tools are replaced by ones that log and fail).

use cni_tests::{CniCall, TempDir, tempdir};
use serde_json::{Value, json};

use crate::fixture::*;

const FIREWALL_TOOLS: [&str; 9] = [
    "iptables",
    "iptables-save",
    "iptables-restore",
    "ip6tables",
    "ip6tables-save",
    "ip6tables-restore",
    "iptables-legacy",
    "iptables-nft",
    "nft",
];

/// A PATH whose firewall tools only log their invocation (and fail).
struct SpyTools {
    dir: TempDir,
}

impl SpyTools {
    fn new() -> SpyTools {
        let dir = tempdir();
        for tool in FIREWALL_TOOLS {
            let path = dir.join(tool);
            let script = format!(
                "#!/bin/sh\necho \"{tool} $*\" >> '{}'\nexit 1\n",
                dir.join("log").display()
            );
            std::fs::write(&path, script).expect("write spy tool");
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                .expect("chmod spy tool");
        }
        SpyTools { dir }
    }

    fn path_var(&self) -> String {
        format!(
            "{}:/usr/sbin:/usr/bin:/sbin:/bin",
            self.dir.path().display()
        )
    }

    fn apply(&self, call: CniCall) -> CniCall {
        call.env("PATH", self.path_var())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }
}

fn versions_with_chaining() -> [&'static str; 4] {
    ["0.3.1", "0.4.0", "1.0.0", "1.1.0"]
}

#[test]
fn add_without_mappings_passes_prev_result_through_and_runs_nothing() {
    let node = Node::new();
    let pod = node.pod("idle");
    let spy = SpyTools::new();
    for version in versions_with_chaining() {
        for mappings in [Some(json!([])), None] {
            let mut c = conf("", json!([]), &pod);
            c["cniVersion"] = json!(version);
            match &mappings {
                Some(m) => c["runtimeConfig"]["portMappings"] = m.clone(),
                None => {
                    c.as_object_mut().unwrap().remove("runtimeConfig");
                }
            }
            let out = spy.apply(node.call("portmap", "ADD", &pod, &c)).run();
            let result = out.assert_ok();
            assert_eq!(result["cniVersion"], version, "{out}");
            assert_eq!(result["ips"].as_array().map(Vec::len), Some(2), "{out}");
            assert_eq!(result["interfaces"][2]["sandbox"], json!(pod.ns.path()));
            if version != "0.3.1" {
                spy.apply(node.call("portmap", "CHECK", &pod, &c))
                    .run()
                    .assert_ok();
            }
        }
    }
    assert_eq!(spy.log(), "", "no firewall tool may run without mappings");
}

#[test]
fn add_output_is_prev_result_at_the_request_version() {
    let node = Node::new();
    let pod = node.pod("echo");
    let c = conf("", json!([map(8080, 80, "tcp")]), &pod);
    let out = node.portmap("ADD", &pod, &c);
    assert_eq!(out.assert_ok(), &pod.prev_result(), "{out}");
    node.portmap("DEL", &pod, &c).assert_ok();

    let mut old = conf("", json!([map(8080, 80, "tcp")]), &pod);
    old["cniVersion"] = json!("0.4.0");
    let out = node.portmap("ADD", &pod, &old);
    let result = out.assert_ok();
    assert_eq!(result["cniVersion"], "0.4.0");
    assert_eq!(result["ips"][0]["version"], "4", "0.4.0 shape: {out}");
    node.portmap("DEL", &pod, &old).assert_ok();
}

/// Each bad input: code, message, and no firewall process.
#[test]
fn bad_input_is_refused_before_touching_the_firewall() {
    let node = Node::new();
    let pod = node.pod("bad");
    let spy = SpyTools::new();
    let base = conf("", json!([map(8080, 80, "tcp")]), &pod);
    let with = |patch: &dyn Fn(&mut Value)| {
        let mut c = base.clone();
        patch(&mut c);
        c
    };
    let mapping =
        |m: Value| with(&move |c: &mut Value| c["runtimeConfig"]["portMappings"] = json!([m]));
    let cases: Vec<(&str, Value, u64, &str)> = vec![
        (
            "host port 0",
            mapping(json!({"hostPort": 0, "containerPort": 80, "protocol": "tcp"})),
            7,
            "failed to parse config: Invalid host port number: 0",
        ),
        (
            "negative host port",
            mapping(json!({"hostPort": -1, "containerPort": 80, "protocol": "tcp"})),
            7,
            "failed to parse config: Invalid host port number: -1",
        ),
        (
            "host port above 65535",
            mapping(json!({"hostPort": 65536, "containerPort": 80, "protocol": "tcp"})),
            7,
            "failed to parse config: Invalid host port number: 65536",
        ),
        (
            "container port 0",
            mapping(json!({"hostPort": 80, "containerPort": 0, "protocol": "tcp"})),
            7,
            "failed to parse config: Invalid container port number: 0",
        ),
        (
            "container port above 65535",
            mapping(json!({"hostPort": 80, "containerPort": 99999, "protocol": "tcp"})),
            7,
            "failed to parse config: Invalid container port number: 99999",
        ),
        (
            "unknown protocol",
            mapping(json!({"hostPort": 80, "containerPort": 80, "protocol": "icmp"})),
            7,
            "failed to parse config: Invalid protocol \"icmp\" for host port 80: must be tcp, udp or sctp",
        ),
        (
            "host IP that is no address",
            mapping(
                json!({"hostPort": 80, "containerPort": 80, "protocol": "tcp", "hostIP": "node1"}),
            ),
            7,
            "failed to parse config: Invalid host IP \"node1\" for host port 80: not an IP address",
        ),
        (
            "port as a string",
            mapping(json!({"hostPort": "80", "containerPort": 80, "protocol": "tcp"})),
            7,
            "failed to parse config: failed to parse network configuration: ",
        ),
        (
            "mark bit 32",
            with(&|c| c["markMasqBit"] = json!(32)),
            7,
            "failed to parse config: MasqMarkBit must be between 0 and 31",
        ),
        (
            "mark bit and external chain",
            with(&|c| {
                c["markMasqBit"] = json!(14);
                c["externalSetMarkChain"] = json!("KUBE-MARK-MASQ");
            }),
            7,
            "failed to parse config: Cannot specify externalSetMarkChain and markMasqBit",
        ),
        (
            "unknown backend",
            with(&|c| c["backend"] = json!("pf")),
            7,
            "failed to parse config: unrecognized backend \"pf\"",
        ),
        (
            "iptables option with nftables",
            with(&|c| {
                c["backend"] = json!("nftables");
                c["externalSetMarkChain"] = json!("KUBE-MARK-MASQ");
            }),
            7,
            "failed to parse config: nftables backend was requested but configuration contains iptables-specific options [externalSetMarkChain]",
        ),
        (
            "no prevResult",
            with(&|c| {
                c.as_object_mut().unwrap().remove("prevResult");
            }),
            7,
            "must be called as chained plugin",
        ),
    ];
    for (what, c, code, msg) in cases {
        let out = spy.apply(node.call("portmap", "ADD", &pod, &c)).run();
        let err = out.assert_error(code);
        let got = err["msg"].as_str().unwrap_or_default();
        assert!(
            got.starts_with(msg),
            "{what}: {got:?} should start with {msg:?}"
        );
    }
    // CHECK has its own words for a missing prevResult.
    let mut no_prev = base.clone();
    no_prev.as_object_mut().unwrap().remove("prevResult");
    let out = spy
        .apply(node.call("portmap", "CHECK", &pod, &no_prev))
        .run();
    assert_eq!(out.assert_error(7)["msg"], "Required prevResult missing");
    assert_eq!(spy.log(), "", "no firewall tool may run on bad input");
}

/// `CNI_ARGS` as bridge and host-local take it (and the reference's bridge and
/// host-local): an unknown key is refused with the same words in all three, unless
/// `IgnoreUnknown` is set. The reference portmap never reads `CNI_ARGS`.
#[test]
fn cni_args_are_alike_in_all_three_plugins() {
    let node = Node::new();
    let pod = node.pod("args");
    let spy = SpyTools::new();
    let data = tempdir();
    let c = conf("", json!([map(8080, 80, "tcp")]), &pod);
    let bridge = json!({
        "cniVersion": "1.0.0", "name": "argsnet", "type": "bridge", "bridge": "cniargs0",
        "ipam": {"type": "host-local", "subnet": "10.49.0.0/24", "dataDir": data.path()},
    });
    let host_local = bridge.clone();
    let calls = |args: &str| {
        [
            ("bridge", bridge.clone()),
            ("host-local", host_local.clone()),
            ("portmap", c.clone()),
        ]
        .map(|(plugin, conf)| {
            let out = spy
                .apply(node.call(plugin, "ADD", &pod, &conf).args(args))
                .run();
            (plugin, out)
        })
    };
    for (args, msg) in [
        ("FOO=bar", r#"ARGS: unknown args ["FOO=bar"]"#),
        (
            "IgnoreUnknown=0;K8S_POD_NAME=web",
            r#"ARGS: unknown args ["K8S_POD_NAME=web"]"#,
        ),
        ("FOO", r#"ARGS: invalid pair "FOO""#),
    ] {
        for (plugin, out) in calls(args) {
            assert_eq!(out.assert_error(999)["msg"], msg, "{plugin} {args}");
        }
        let out = spy
            .apply(node.call("portmap", "DEL", &pod, &c).args(args))
            .run();
        assert_eq!(out.assert_error(999)["msg"], msg, "portmap DEL {args}");
    }
    assert_eq!(spy.log(), "", "no firewall tool may run");
    assert!(node.host.link("cniargs0").is_none(), "bridge made nothing");
    // What Kubernetes runtimes send is accepted by portmap (ADD, CHECK, DEL).
    let k8s = "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web";
    for verb in ["ADD", "CHECK", "DEL"] {
        node.call("portmap", verb, &pod, &c)
            .args(k8s)
            .run()
            .assert_ok();
    }
}

/// DEL is a cleanup: a config ADD would refuse still gets a successful DEL (a runtime
/// would otherwise retry it forever).
#[test]
fn del_accepts_what_add_refuses() {
    let node = Node::new();
    let pod = node.pod("lenient");
    let mut c = conf(
        "",
        json!([{"hostPort": 0, "containerPort": 80, "protocol": "icmp"}]),
        &pod,
    );
    c["markMasqBit"] = json!(40);
    node.portmap("DEL", &pod, &c).assert_ok();
}

fn tamper(node: &Node, backend: &str) {
    if backend == "nftables" {
        node.host
            .run(["nft", "flush", "chain", "ip", "cni_hostport", "hostports"]);
    } else {
        let save = node.iptables_nat(false);
        let chain = save
            .lines()
            .filter_map(|l| l.strip_prefix(':')?.split_whitespace().next())
            .find(|c| c.starts_with("CNI-DN-"))
            .expect("a DNAT chain");
        node.host.run(["iptables", "-t", "nat", "-F", chain]);
    }
}

fn check_follows_the_rules(backend: &str) {
    let node = Node::new();
    for pod in [node.pod("dual"), node.pod_v4("v4only")] {
        let c = conf(
            backend,
            json!([map(8080, 80, "tcp"), map(5353, 53, "udp")]),
            &pod,
        );
        node.portmap("ADD", &pod, &c).assert_ok();
        let out = node.portmap("CHECK", &pod, &c);
        out.assert_ok();
        tamper(&node, backend);
        let out = node.portmap("CHECK", &pod, &c);
        assert!(
            !out.success(),
            "{backend}: CHECK after tampering passed: {out}"
        );
        node.portmap("DEL", &pod, &c).assert_ok();
    }
}

#[test]
fn iptables_check_follows_the_rules() {
    check_follows_the_rules("iptables");
}

#[test]
fn nftables_check_follows_the_rules() {
    check_follows_the_rules("nftables");
}
