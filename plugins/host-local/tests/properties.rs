//! Properties of everything host-local parses: the IPAM config with its runtimeConfig
//! (`ipRanges`, `ips`) and `args`, CNI_ARGS `IP`, resolv.conf, and the files of its
//! ledger directory (reservations, `last_reserved_ip.N`, the index), whoever wrote
//! them.
//!
//! Arbitrary input gives a value or an error, never a panic; a valid config written
//! as JSON parses back to what it says.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use serde_json::{Value, json};

use cni_tests::arb;
use host_local::config::{self, Context, RouteSpec};
use host_local::ledger::{Ledger, Owner};

const KEYS: &[&str] = &[
    "cniVersion",
    "name",
    "type",
    "ipam",
    "subnet",
    "rangeStart",
    "rangeEnd",
    "gateway",
    "routes",
    "dst",
    "gw",
    "mtu",
    "advmss",
    "priority",
    "table",
    "scope",
    "dataDir",
    "resolvConf",
    "ranges",
    "runtimeConfig",
    "ipRanges",
    "ips",
    "args",
    "cni",
];

fn ctx<'a>(version: &'a str, env_ip: Option<&'a str>) -> Context<'a> {
    Context {
        cni_version: version,
        env_ip,
    }
}

fn near_valid() -> impl Strategy<Value = Value> {
    let ipam = arb::mutated(
        json!({"type": "host-local", "ranges": [[{"subnet": "10.1.2.0/24"}]],
               "dataDir": "/nowhere"}),
        KEYS,
    );
    (ipam, arb::object(KEYS)).prop_map(|(ipam, mut top)| {
        top["ipam"] = ipam;
        top
    })
}

/// A range set of one range, the `i`-th of its family: `10.<i>.<x>.0/24` or
/// `fd00:<i>:<x>::/64`, with explicit start, end and gateway inside it.
fn range(i: u8, v6: bool) -> impl Strategy<Value = (Value, [IpAddr; 4])> {
    (any::<u8>(), 1u8..100, 100u8..200, 1u8..250).prop_map(move |(x, start, end, gw)| {
        let (subnet, s, e, g, net): (String, IpAddr, IpAddr, IpAddr, IpAddr) = if v6 {
            let p = |h: u8| format!("fd00:{i}:{x}::{h:x}").parse().expect("v6");
            (format!("fd00:{i}:{x}::/64"), p(start), p(end), p(gw), p(0))
        } else {
            let p = |h: u8| IpAddr::from([10, i, x, h]);
            (format!("10.{i}.{x}.0/24"), p(start), p(end), p(gw), p(0))
        };
        let v = json!({"subnet": subnet, "rangeStart": s.to_string(),
                       "rangeEnd": e.to_string(), "gateway": g.to_string()});
        (v, [net, s, e, g])
    })
}

fn routes() -> impl Strategy<Value = Vec<RouteSpec>> {
    let route = (
        any::<[u8; 4]>(),
        0u8..33,
        proptest::option::of(any::<[u8; 4]>()),
        proptest::option::of(any::<u32>()),
        proptest::option::of(any::<u8>()),
    )
        .prop_map(|(dst, prefix, gw, priority, scope)| RouteSpec {
            dst: ipnetwork::IpNetwork::new(IpAddr::from(dst), prefix).expect("prefix"),
            gw: gw.map(IpAddr::from),
            mtu: None,
            advmss: None,
            priority,
            table: None,
            scope,
        });
    proptest::collection::vec(route, 0..3)
}

fn route_json(r: &RouteSpec) -> Value {
    let mut v = json!({"dst": r.dst.to_string()});
    if let Some(gw) = r.gw {
        v["gw"] = json!(gw.to_string());
    }
    if let Some(p) = r.priority {
        v["priority"] = json!(p);
    }
    if let Some(s) = r.scope {
        v["scope"] = json!(s);
    }
    v
}

fn scratch(tag: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let d = std::env::temp_dir().join(format!(
        "hl-props-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("scratch dir");
    d
}

/// Names a ledger directory can hold: addresses in any spelling, its own files, junk.
fn file_name() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::sample::select(
            &[
                "10.1.2.2",
                "10.1.2.3",
                "010.1.2.4",
                "2001:db8::2",
                "2001:DB8::3",
                "lock",
                "last_reserved_ip.0",
                "last_reserved_ip.1",
                ".host-local-index",
                ".host-local-index.tmp",
                "README",
            ][..]
        )
        .prop_map(str::to_owned),
        "[a-z0-9.:]{1,12}",
    ]
}

const SAMPLE_CONTENT: &[&str] = &[
    "c1\r\neth0",
    "c1",
    " c1 \n",
    "",
    "c1\r\n",
    "\r\neth0",
    "10.1.2.9",
    "c1\r\neth0\r\nextra",
];

fn content() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::sample::select(SAMPLE_CONTENT).prop_map(|s: &str| s.as_bytes().to_vec()),
        proptest::collection::vec(any::<u8>(), 0..300),
    ]
}

fn fill(dir: &Path, files: &[(String, Vec<u8>)]) {
    for (name, bytes) in files {
        let _ = std::fs::write(dir.join(name), bytes);
    }
}

proptest! {
    #![proptest_config(arb::cases())]

    #[test]
    fn any_input_is_a_config_or_an_error(
        stdin in arb::bytes(KEYS),
        version in arb::text(),
        env_ip in proptest::option::of(arb::text()),
    ) {
        if let Err(e) = config::load(&stdin, ctx(&version, env_ip.as_deref())) {
            prop_assert!(!e.to_string().is_empty());
        }
    }

    #[test]
    fn near_valid_input_is_a_config_or_an_error(
        conf in near_valid(),
        version in proptest::sample::select(cni_types::version::SUPPORTED),
        env_ip in proptest::option::of(arb::text()),
    ) {
        let bytes = conf.to_string().into_bytes();
        if let Err(e) = config::load(&bytes, ctx(version, env_ip.as_deref())) {
            prop_assert!(!e.to_string().is_empty());
        }
    }

    /// Range sets (runtime ipRanges first, then `ranges`), routes, dataDir,
    /// resolvConf and requested addresses (CNI_ARGS IP, args.cni.ips, runtimeConfig
    /// ips, in that order) parse back as written.
    #[test]
    fn valid_configs_survive_serialize_and_parse(
        sets in proptest::collection::vec((range(0, false), any::<bool>()), 1..3),
        v6 in proptest::option::of(range(0, true)),
        runtime in proptest::option::of(range(99, false)),
        routes in routes(),
        data_dir in "/[a-z]{1,8}(/[a-z0-9]{1,8}){0,2}",
        resolv in proptest::option::of("/[a-z]{1,8}"),
        asks in any::<(bool, bool, bool)>(),
    ) {
        // Distinct IPv4 subnets: the i-th set lives in 10.<i>.x.0/24.
        let sets: Vec<(Value, [IpAddr; 4])> = sets
            .into_iter()
            .enumerate()
            .map(|(i, ((mut v, mut ips), _))| {
                let fix = |ip: &mut IpAddr| {
                    if let IpAddr::V4(a) = ip {
                        let o = a.octets();
                        *ip = IpAddr::from([o[0], 1 + i as u8, o[2], o[3]]);
                    }
                };
                ips.iter_mut().for_each(fix);
                v["subnet"] = json!(format!("{}/24", ips[0]));
                v["rangeStart"] = json!(ips[1].to_string());
                v["rangeEnd"] = json!(ips[2].to_string());
                v["gateway"] = json!(ips[3].to_string());
                (v, ips)
            })
            .collect();
        let mut all: Vec<(Value, [IpAddr; 4])> = sets;
        all.extend(v6);
        let mut ipam = json!({
            "type": "host-local",
            "ranges": all.iter().map(|(v, _)| json!([v])).collect::<Vec<_>>(),
            "routes": routes.iter().map(route_json).collect::<Vec<_>>(),
            "dataDir": data_dir,
        });
        if let Some(r) = &resolv {
            ipam["resolvConf"] = json!(r);
        }
        let mut conf = json!({"cniVersion": "1.0.0", "name": "net", "type": "bridge", "ipam": ipam});
        let mut expected_sets: Vec<[IpAddr; 4]> = Vec::new();
        if let Some((v, ips)) = &runtime {
            conf["runtimeConfig"] = json!({"ipRanges": [[v]]});
            expected_sets.push(*ips);
        }
        expected_sets.extend(all.iter().map(|(_, ips)| *ips));
        // One requested address per source, each in the first set.
        let first = &all[0].1;
        let ask = |n: u8| match first[1] {
            IpAddr::V4(a) => IpAddr::from([a.octets()[0], a.octets()[1], a.octets()[2], 200 + n]),
            v6 => v6,
        };
        let mut requested = Vec::new();
        let env_ip = asks.0.then(|| ask(0).to_string());
        if asks.0 {
            requested.push(ask(0));
        }
        if asks.1 {
            conf["args"] = json!({"cni": {"ips": [format!("{}/24", ask(1))]}});
            requested.push(ask(1));
        }
        if asks.2 {
            let rc = conf.as_object_mut().expect("object").entry("runtimeConfig").or_insert(json!({}));
            rc["ips"] = json!([ask(2).to_string()]);
            requested.push(ask(2));
        }
        let bytes = conf.to_string().into_bytes();
        let c = config::load(&bytes, ctx("1.0.0", env_ip.as_deref()))
            .unwrap_or_else(|e| panic!("{e}: {conf}"));
        let got: Vec<[IpAddr; 4]> = c
            .ranges
            .iter()
            .map(|set| {
                let r = &set.ranges()[0];
                [r.subnet.network(), r.start, r.end, r.gateway]
            })
            .collect();
        prop_assert_eq!(got, expected_sets);
        prop_assert_eq!(c.routes, routes);
        prop_assert_eq!(c.data_dir, PathBuf::from(data_dir));
        prop_assert_eq!(c.resolv_conf, resolv.map(PathBuf::from));
        prop_assert_eq!(c.requested, requested);
    }

    #[test]
    fn any_reservation_content_has_an_owner(bytes in content()) {
        let _ = Owner::parse(&bytes);
    }

    /// What ADD writes reads back as its owner.
    #[test]
    fn reservation_content_reads_back(cid in "[a-zA-Z0-9][a-zA-Z0-9_.-]{0,40}", ifname in "[a-z0-9@-]{1,15}") {
        let written = format!("{cid}\r\n{ifname}");
        prop_assert_eq!(Owner::parse(written.as_bytes()), Owner::Attachment { cid: cid.clone(), ifname });
        prop_assert_eq!(Owner::parse(cid.as_bytes()), Owner::Legacy(cid));
    }

    #[test]
    fn any_resolv_conf_parses(text in any::<String>()) {
        let _ = host_local::dns::parse(&text);
    }

    /// A ledger directory holding anything (files of other versions, damaged index,
    /// junk): every verb's ledger work gives an answer or an error.
    #[test]
    fn any_ledger_directory_is_read_without_panic(
        files in proptest::collection::vec((file_name(), content()), 0..10),
        cid in prop_oneof![Just("c1".to_string()), "[a-z0-9]{1,6}"],
    ) {
        let base = scratch("ledger");
        let ledger = Ledger::create(&base, "net").expect("ledger");
        fill(ledger.dir(), &files);
        {
            let mut s = ledger.lock(2).expect("lock");
            let _ = s.last_reserved(0);
            let _ = s.last_reserved(1);
            let _ = s.scan();
            let _ = s.holdings(&cid, "eth0");
            let _ = s.reserve("10.1.2.9".parse().expect("ip"), &cid, "eth0", 0);
            let _ = s.release(&cid, "eth0");
            let _ = s.release_unless(|o| matches!(o, Owner::Attachment { .. }));
            s.finish();
        }
        let _ = std::fs::remove_dir_all(&base);
    }
}
