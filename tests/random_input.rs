//! Each real binary on random stdin and environment, as a runtime (or anything
//! else) could start it: a failure is exit status non-zero with exactly one JSON
//! error object on stdout (an integer `code`, a non-empty `msg`), and a call that
//! fails creates nothing. A call that succeeds (a DEL of nothing, host-local handing
//! out an address from a config that happens to be valid, portmap mapping a port) is
//! undone by its DEL, which must leave nothing either.
//!
//! No root is needed for the parse path: the dataDir and working directory are
//! scratch directories and `CNI_NETNS` points nowhere. As root (CI) every call runs
//! in a scratch node namespace, whose links and rules are checked as well.
//! `PROPTEST_CASES` sets the number of calls per plugin (64 by default).

use std::path::Path;

use proptest::prelude::*;
use proptest::test_runner::TestRunner;
use serde_json::{Map, Value, json};

use cni_tests::{CniCall, Host, Outcome, TempDir, arb, bin_dir, tempdir};

const KEYS: &[&str] = &[
    "cniVersion",
    "name",
    "type",
    "bridge",
    "isGateway",
    "ipMasq",
    "ipMasqBackend",
    "mtu",
    "vlan",
    "vlanTrunk",
    "hairpinMode",
    "promiscMode",
    "macspoofchk",
    "ipam",
    "subnet",
    "ranges",
    "rangeStart",
    "rangeEnd",
    "gateway",
    "routes",
    "dst",
    "gw",
    "dataDir",
    "resolvConf",
    "dns",
    "args",
    "cni",
    "ips",
    "mac",
    "runtimeConfig",
    "ipRanges",
    "portMappings",
    "hostPort",
    "containerPort",
    "protocol",
    "hostIP",
    "backend",
    "snat",
    "masqAll",
    "markMasqBit",
    "externalSetMarkChain",
    "conditionsV4",
    "prevResult",
    "interfaces",
    "address",
    "interface",
    "sandbox",
    "cni.dev/valid-attachments",
    "containerID",
    "ifname",
];

/// One random call: its environment and its stdin.
#[derive(Debug, Clone)]
struct Input {
    env: Vec<(&'static str, String)>,
    stdin: Vec<u8>,
}

fn var(
    name: &'static str,
    values: &'static [&'static str],
) -> impl Strategy<Value = Option<(&'static str, String)>> {
    proptest::option::weighted(
        0.9,
        prop_oneof![
            4 => proptest::sample::select(values).prop_map(str::to_owned),
            1 => arb::text(),
        ],
    )
    // An environment cannot hold a NUL byte.
    .prop_map(move |v| v.map(|v| (name, v.replace('\0', ""))))
}

fn env() -> impl Strategy<Value = Vec<(&'static str, String)>> {
    (
        var(
            "CNI_COMMAND",
            &[
                "ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION", "", "add", "NOPE",
            ],
        ),
        var("CNI_CONTAINERID", &["c1", "c2", "", "-x", "a/b"]),
        var("CNI_NETNS", &["/nonexistent-cnit/netns", "", "/dev/null"]),
        var(
            "CNI_IFNAME",
            &["eth0", "", "..", "a/b", "x y", "sixteen-chars-xx"],
        ),
        var(
            "CNI_ARGS",
            &[
                "",
                "IgnoreUnknown=1;K8S_POD_NAME=x",
                "IP=10.1.2.3",
                "FOO=1",
                "X",
            ],
        ),
    )
        .prop_map(|(a, b, c, d, e)| [a, b, c, d, e].into_iter().flatten().collect())
}

/// Configs of any of the three plugins, mutated, or bytes.
fn stdin() -> impl Strategy<Value = Value> {
    let bases = vec![
        json!({"cniVersion": "1.0.0", "name": "rnd", "type": "bridge", "bridge": "cnirnd0",
               "isGateway": true, "ipMasq": true,
               "ipam": {"type": "host-local", "subnet": "10.50.0.0/24"}}),
        json!({"cniVersion": "1.1.0", "name": "rnd", "type": "host-local",
               "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.51.0.0/30"}]]}}),
        json!({"cniVersion": "1.0.0", "name": "rnd", "type": "portmap",
               "runtimeConfig": {"portMappings": [
                   {"hostPort": 18500, "containerPort": 80, "protocol": "tcp"}]},
               "prevResult": {"cniVersion": "1.0.0",
                   "interfaces": [{"name": "eth0", "sandbox": "/nonexistent-cnit/netns"}],
                   "ips": [{"address": "10.52.0.2/24", "interface": 0}]}}),
    ];
    proptest::sample::select(bases).prop_flat_map(|base| arb::mutated(base, KEYS))
}

fn input() -> impl Strategy<Value = Input> {
    let text = prop_oneof![
        4 => stdin().prop_map(|v| v.to_string().into_bytes()),
        1 => arb::bytes(KEYS),
    ];
    (env(), text).prop_map(|(env, stdin)| Input { env, stdin })
}

/// Points every `ipam.dataDir` spelling at the scratch directory, so that no
/// input can make host-local write elsewhere.
fn confine(stdin: &[u8], data: &Path) -> Vec<u8> {
    let Ok(Value::Object(mut top)) = serde_json::from_slice::<Value>(stdin) else {
        return stdin.to_vec();
    };
    let mut ipam = Map::new();
    let keys: Vec<String> = top.keys().cloned().collect();
    for k in keys {
        if k.eq_ignore_ascii_case("ipam")
            && let Some(Value::Object(m)) = top.remove(&k)
        {
            ipam = m;
        }
    }
    ipam.retain(|k, _| !k.eq_ignore_ascii_case("datadir"));
    ipam.insert("dataDir".into(), json!(data));
    top.insert("ipam".into(), Value::Object(ipam));
    Value::Object(top).to_string().into_bytes()
}

/// Where the plugins run: a scratch node as root, else this process's own netns.
struct Place {
    node: Option<Host>,
    data: TempDir,
}

impl Place {
    fn new() -> Place {
        // SAFETY: plain syscall.
        let root = unsafe { libc::geteuid() } == 0;
        Place {
            node: root.then(Host::new),
            data: tempdir(),
        }
    }

    fn call(&self, plugin: &str, input: &Input) -> Outcome {
        let mut call = CniCall::new(plugin)
            .path(bin_dir())
            .stdin(confine(&input.stdin, self.data.path()));
        for (k, v) in &input.env {
            call = call.env(k, v);
        }
        if let Some(node) = &self.node {
            call = call.in_netns(node);
        }
        call.run()
    }

    /// What a call may leave: reservation and temporary files under the dataDir,
    /// and, in a scratch node, links and NAT rules.
    fn leftovers(&self) -> Vec<String> {
        let mut out = Vec::new();
        walk(self.data.path(), &mut out);
        if let Some(node) = &self.node {
            out.extend(node.link_names().into_iter().filter(|l| l != "lo"));
            // The shared skeleton (portmap's top chains, empty tables) stays by
            // design; anything of one container is a leak.
            for tool in ["iptables-save", "ip6tables-save"] {
                let o = node.exec([tool, "-t", "nat"]);
                out.extend(
                    String::from_utf8_lossy(&o.stdout)
                        .lines()
                        .filter(|l| l.replace("CNI-HOSTPORT-", "").contains("CNI-"))
                        .map(str::to_owned),
                );
            }
            let nft = node.run(["nft", "list", "ruleset"]);
            out.extend(
                nft.lines()
                    .filter(|l| l.contains("comment \"") && !l.contains("CNI portfwd"))
                    .map(str::to_owned),
            );
        }
        out
    }
}

/// Reservation files (named after an address) and temporaries under `dir`.
fn walk(dir: &Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            walk(&e.path(), out);
        } else if name.parse::<std::net::IpAddr>().is_ok() || name.ends_with(".tmp") {
            out.push(e.path().display().to_string());
        }
    }
}

/// The one JSON error object a failed call must print.
fn assert_one_error_object(plugin: &str, out: &Outcome) {
    let v: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("{plugin}: stdout is not one JSON value ({e}):\n{out}"));
    assert!(v.is_object(), "{plugin}: not an object:\n{out}");
    assert!(v["code"].is_u64(), "{plugin}: no integer code:\n{out}");
    assert!(
        v["msg"].as_str().is_some_and(|m| !m.is_empty()),
        "{plugin}: no message:\n{out}"
    );
}

fn fuzz(plugin: &str) {
    let place = Place::new();
    let mut runner = TestRunner::new(arb::cases());
    let succeeded = std::cell::Cell::new(0u32);
    let result = runner.run(&input(), |input| {
        let out = place.call(plugin, &input);
        succeeded.set(succeeded.get() + u32::from(out.success()));
        if !out.success() {
            assert_one_error_object(plugin, &out);
        } else if let Some(("CNI_COMMAND", "ADD")) = input
            .env
            .iter()
            .find(|(k, _)| *k == "CNI_COMMAND")
            .map(|(k, v)| (*k, v.as_str()))
        {
            let mut del = input.clone();
            for (k, v) in &mut del.env {
                if *k == "CNI_COMMAND" {
                    *v = "DEL".into();
                }
            }
            let out = place.call(plugin, &del);
            assert!(
                out.success(),
                "{plugin}: DEL after a successful ADD failed:\n{out}"
            );
        }
        let left = place.leftovers();
        assert!(left.is_empty(), "{plugin}: left behind {left:?} by\n{out}");
        Ok(())
    });
    if let Err(e) = result {
        panic!("{plugin}: {e}");
    }
    eprintln!(
        "{plugin}: {} random calls, {} succeeded",
        runner.config().cases,
        succeeded.get()
    );
}

#[test]
fn bridge_on_random_input() {
    fuzz("bridge");
}

#[test]
fn host_local_on_random_input() {
    fuzz("host-local");
}

#[test]
fn portmap_on_random_input() {
    fuzz("portmap");
}
