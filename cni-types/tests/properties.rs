//! Properties of everything cni-types parses from a runtime or another plugin: the
//! request (environment and stdin, through the dispatcher), network configs and
//! conflists, `CNI_ARGS`, and results of every spec version as prevResult.
//!
//! Arbitrary input gives a value or a CNI error, never a panic; valid input survives
//! serialize → parse unchanged; converting a result to an older version keeps every
//! field that version can hold.

use std::collections::HashMap;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use proptest::prelude::*;
use serde_json::{Value, json};

use cni_tests::arb;
use cni_types::skel::{Env, Outcome, dispatch};
use cni_types::{
    CniArgs, CniResult, Dns, Error, Interface, IpConfig, NetConf, NetConfList, Plugin, Request,
    Route,
};

const CONF_KEYS: &[&str] = &[
    "cniVersion",
    "cniVersions",
    "name",
    "type",
    "capabilities",
    "ipam",
    "dns",
    "runtimeConfig",
    "args",
    "prevResult",
    "cni.dev/valid-attachments",
    "cni.dev/attachments",
    "containerID",
    "ifname",
    "plugins",
    "disableCheck",
    "disableGC",
    "loadOnlyInlinedPlugins",
    "nameservers",
    "domain",
    "search",
    "options",
];

const RESULT_KEYS: &[&str] = &[
    "cniVersion",
    "interfaces",
    "ips",
    "routes",
    "dns",
    "name",
    "mac",
    "mtu",
    "sandbox",
    "socketPath",
    "pciID",
    "address",
    "gateway",
    "interface",
    "version",
    "dst",
    "gw",
    "advmss",
    "priority",
    "table",
    "scope",
    "ip4",
    "ip6",
    "ip",
    "nameservers",
    "domain",
    "search",
    "options",
];

/// A plugin that reads what plugins read from a request: CNI_ARGS and prevResult.
struct Reader;

impl Plugin for Reader {
    fn add(&self, req: &Request) -> Result<CniResult, Error> {
        req.args.check_known(&["IP", "MAC"])?;
        Ok(req.prev_result()?.unwrap_or_default())
    }
    fn del(&self, req: &Request) -> Result<(), Error> {
        req.prev_result().map(drop)
    }
    fn check(&self, req: &Request) -> Result<(), Error> {
        req.prev_result().map(drop)
    }
    fn gc(&self, req: &Request) -> Result<(), Error> {
        let _ = req.conf.gc_attachments();
        Ok(())
    }
    fn status(&self, _req: &Request) -> Result<(), Error> {
        Ok(())
    }
}

#[derive(Debug)]
struct MapEnv(HashMap<String, String>);

impl Env for MapEnv {
    fn var(&self, name: &str) -> String {
        self.0.get(name).cloned().unwrap_or_default()
    }
}

fn env() -> impl Strategy<Value = MapEnv> {
    let var = |values: &'static [&'static str]| {
        prop_oneof![
            3 => proptest::sample::select(values).prop_map(str::to_owned),
            1 => arb::text(),
        ]
    };
    (
        var(&[
            "ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION", "", "add", "BOGUS",
        ]),
        var(&["c1", "", "-bad", "a/b", "x.y_z-1"]),
        var(&["", "/nowhere/netns", "/proc/self/ns/net"]),
        var(&["eth0", "", ".", "..", "a/b", "a b", "sixteen-chars-xx"]),
        var(&[
            "",
            "IgnoreUnknown=1;K8S_POD_NAME=x",
            "IP=10.1.2.3",
            "FOO",
            "A=1=2",
            "IgnoreUnknown=yes",
        ]),
        var(&["", "/nowhere", "/a:/b"]),
    )
        .prop_map(|(command, cid, netns, ifname, args, path)| {
            let mut m = HashMap::new();
            for (k, v) in [
                ("CNI_COMMAND", command),
                ("CNI_CONTAINERID", cid),
                ("CNI_NETNS", netns),
                ("CNI_IFNAME", ifname),
                ("CNI_ARGS", args),
                ("CNI_PATH", path),
            ] {
                m.insert(k.to_owned(), v);
            }
            MapEnv(m)
        })
}

/// A config a runtime could send: the shared keys valid, the rest anything.
fn near_valid_conf() -> impl Strategy<Value = Vec<u8>> {
    let base = json!({"cniVersion": "1.0.0", "name": "net", "type": "bridge"});
    prop_oneof![
        arb::mutated(base, CONF_KEYS).prop_map(|v| v.to_string().into_bytes()),
        arb::bytes(CONF_KEYS),
    ]
}

fn assert_error(e: &Error) {
    assert!(!e.msg.is_empty(), "an error without a message: {e:?}");
    let back: Value = serde_json::from_str(&e.to_json()).expect("error JSON");
    assert!(back["code"].is_u64(), "{back}");
}

fn addr() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(IpAddr::from),
        any::<[u8; 16]>().prop_map(IpAddr::from),
    ]
}

fn net() -> impl Strategy<Value = IpNetwork> {
    (addr(), any::<u8>()).prop_map(|(ip, p)| {
        let max = if ip.is_ipv4() { 33 } else { 129 };
        IpNetwork::new(ip, p % max).expect("prefix in range")
    })
}

fn opt_text() -> impl Strategy<Value = Option<String>> {
    proptest::option::of("[a-z0-9:./-]{0,12}")
}

fn texts() -> impl Strategy<Value = Vec<String>> {
    proptest::collection::vec("[a-z0-9.]{1,10}", 0..3)
}

fn dns() -> impl Strategy<Value = Dns> {
    (
        texts(),
        proptest::option::of("[a-z.]{1,10}"),
        texts(),
        texts(),
    )
        .prop_map(|(nameservers, domain, search, options)| Dns {
            nameservers,
            domain,
            search,
            options,
        })
}

/// A result in the 1.1 shape with every field the spec has.
fn result() -> impl Strategy<Value = CniResult> {
    let iface = (
        "[a-z0-9]{1,15}",
        opt_text(),
        proptest::option::of(any::<u32>()),
        opt_text(),
        opt_text(),
        opt_text(),
    )
        .prop_map(|(name, mac, mtu, sandbox, socket_path, pci_id)| Interface {
            name,
            mac,
            mtu,
            sandbox,
            socket_path,
            pci_id,
        });
    let ip = (
        net(),
        proptest::option::of(addr()),
        proptest::option::of(0usize..4),
    )
        .prop_map(|(address, gateway, interface)| IpConfig {
            address,
            gateway,
            interface,
        });
    let opt_u32 = || proptest::option::of(any::<u32>());
    let route = (
        net(),
        proptest::option::of(addr()),
        opt_u32(),
        opt_u32(),
        opt_u32(),
        opt_u32(),
        proptest::option::of(any::<u8>()),
    )
        .prop_map(|(dst, gw, mtu, advmss, priority, table, scope)| Route {
            dst,
            gw,
            mtu,
            advmss,
            priority,
            table,
            scope,
        });
    (
        proptest::collection::vec(iface, 0..4),
        proptest::collection::vec(ip, 0..4),
        proptest::collection::vec(route, 0..4),
        dns(),
    )
        .prop_map(|(interfaces, ips, routes, dns)| CniResult {
            cni_version: "1.1.0".into(),
            interfaces,
            ips,
            routes,
            dns,
        })
}

/// What a result at `version` can hold of `r`, as parsing it back gives it.
fn held_by(r: &CniResult, version: &str) -> Option<CniResult> {
    let mut out = r.clone();
    out.cni_version = version.to_owned();
    match version {
        "1.0.0" | "1.1.0" => {}
        "0.3.0" | "0.3.1" | "0.4.0" => {
            for i in &mut out.interfaces {
                i.mtu = None;
                i.socket_path = None;
                i.pci_id = None;
            }
            for rt in &mut out.routes {
                *rt = Route::new(rt.dst, rt.gw);
            }
        }
        _ => {
            // One address per family, routes by the family of their destination.
            let first = |v4: bool| r.ips.iter().find(|ip| ip.address.is_ipv4() == v4);
            let (ip4, ip6) = (first(true), first(false));
            if ip4.is_none() && ip6.is_none() {
                return None;
            }
            out.interfaces.clear();
            out.ips = [ip4, ip6]
                .into_iter()
                .flatten()
                .map(|ip| IpConfig {
                    interface: None,
                    ..ip.clone()
                })
                .collect();
            out.routes = [(true, ip4.is_some()), (false, ip6.is_some())]
                .into_iter()
                .filter(|(_, has)| *has)
                .flat_map(|(v4, _)| {
                    r.routes
                        .iter()
                        .filter(move |rt| rt.dst.is_ipv4() == v4)
                        .map(|rt| Route::new(rt.dst, rt.gw))
                })
                .collect();
        }
    }
    Some(out)
}

proptest! {
    #![proptest_config(arb::cases())]

    /// The whole protocol: any environment and stdin give an outcome, and a failure
    /// is a CNI error with a code and a message.
    #[test]
    fn any_request_is_an_outcome(env in env(), stdin in near_valid_conf()) {
        if let Outcome::Failed(e) = dispatch("test", &Reader, &env, stdin) {
            assert_error(&e);
        }
    }

    /// prevResult of any shape, under any declared version, through the dispatcher
    /// as a chained plugin gets it.
    #[test]
    fn any_prev_result_is_a_result_or_an_error(
        version in proptest::sample::select(cni_types::version::SUPPORTED),
        prev in arb::json(RESULT_KEYS),
    ) {
        let conf = json!({"cniVersion": version, "name": "net", "type": "x", "prevResult": prev});
        let env = MapEnv(HashMap::from([
            ("CNI_COMMAND".into(), "ADD".into()),
            ("CNI_CONTAINERID".into(), "c1".into()),
            ("CNI_IFNAME".into(), "eth0".into()),
            ("CNI_PATH".into(), "/nowhere".into()),
        ]));
        match dispatch("test", &Reader, &env, conf.to_string().into_bytes()) {
            Outcome::Failed(e) => assert_error(&e),
            Outcome::Print(text) => {
                let _: Value = serde_json::from_str(&text).expect("a result prints as JSON");
            }
            other => panic!("ADD printed nothing: {other:?}"),
        }
    }

    #[test]
    fn any_result_value_parses_or_fails(v in arb::json(RESULT_KEYS), version in arb::text()) {
        if let Err(e) = CniResult::from_value(&v, &version) {
            assert_error(&e);
        }
    }

    /// A result converted to any version and read back holds exactly what that
    /// version can hold; 0.1/0.2 refuse a result without addresses.
    #[test]
    fn conversion_keeps_what_each_version_holds(
        r in result(),
        version in proptest::sample::select(cni_types::version::SUPPORTED),
    ) {
        let wire = r.to_value(version);
        match held_by(&r, version) {
            None => prop_assert!(wire.is_err()),
            Some(want) => {
                let wire = wire.expect("convertible");
                prop_assert_eq!(&wire["cniVersion"], version);
                let back = CniResult::from_value(&wire, "").expect("reads back");
                prop_assert_eq!(back, want, "{}", wire);
            }
        }
    }

    /// And the same through the bytes a plugin prints and the next one reads.
    #[test]
    fn printed_results_read_back(r in result(), version in proptest::sample::select(cni_types::version::SUPPORTED)) {
        if let (Ok(wire), Some(want)) = (r.to_value(version), held_by(&r, version)) {
            let text = cni_types::pretty_json(&wire);
            let parsed: Value = serde_json::from_str(&text).expect("JSON");
            prop_assert_eq!(CniResult::from_value(&parsed, version).expect("reads back"), want);
        }
    }

    #[test]
    fn any_conf_or_conflist_parses_or_fails(bytes in arb::bytes(CONF_KEYS)) {
        let _ = cni_types::json::from_slice::<NetConf>(&bytes);
        let _ = cni_types::json::from_slice::<NetConfList>(&bytes);
    }

    /// A conflist as a runtime writes it survives serialize → parse, and each plugin
    /// request built from it reads back as the plugin's conf.
    #[test]
    fn conflists_survive_serialize_and_parse(
        version in proptest::sample::select(cni_types::version::SUPPORTED),
        versions in proptest::collection::vec(proptest::sample::select(cni_types::version::SUPPORTED), 0..3),
        name in "[a-zA-Z0-9][a-zA-Z0-9_.-]{0,20}",
        flags in any::<(bool, bool, bool)>(),
        types in proptest::collection::vec("[a-z-]{1,12}", 1..4),
    ) {
        let list = NetConfList {
            cni_version: version.to_owned(),
            cni_versions: versions.into_iter().map(str::to_owned).collect(),
            name,
            disable_check: flags.0,
            disable_gc: flags.1,
            load_only_inlined_plugins: flags.2,
            plugins: types
                .iter()
                .map(|t| json!({"type": t, "capabilities": {"portMappings": true}}))
                .map(|v| v.as_object().cloned().unwrap_or_default())
                .collect(),
        };
        let text = serde_json::to_vec(&list).expect("serialize");
        let back: NetConfList = cni_types::json::from_slice(&text).expect("parse");
        prop_assert_eq!(&back, &list);
        for (i, t) in types.iter().enumerate() {
            let req = list.plugin_request(i, None).expect("a plugin");
            let conf: NetConf = cni_types::json::from_value(req).expect("plugin conf");
            prop_assert_eq!(&conf.plugin_type, t);
            prop_assert_eq!(&conf.name, &list.name);
            prop_assert_eq!(&conf.cni_version, &list.cni_version);
        }
    }

    #[test]
    fn any_cni_args_give_pairs_or_an_error(raw in arb::text(), known in proptest::collection::vec(arb::text(), 0..3)) {
        let args = CniArgs::new(raw);
        let known: Vec<&str> = known.iter().map(String::as_str).collect();
        if let Err(e) = args.check_known(&known) {
            assert_error(&e);
        }
        if let Err(e) = args.pairs() {
            assert_error(&e);
        }
        let _ = args.ignore_unknown();
        let _ = args.get("IP");
    }

    /// Well-formed pairs read back as written.
    #[test]
    fn cni_args_pairs_read_back(pairs in proptest::collection::vec(("[A-Za-z_][A-Za-z0-9_]{0,10}", "[^;=]{0,12}"), 1..5)) {
        let raw: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let args = CniArgs::new(raw.join(";"));
        let got: Vec<(String, String)> = args
            .pairs()
            .expect("well formed")
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        prop_assert_eq!(got, pairs);
    }
}
