//! Properties of what portmap parses: its config with `runtimeConfig.portMappings`
//! (ADD's strict reading and DEL's lenient one), and the prevResult it picks the
//! container's addresses from. Arbitrary input gives a value or a CNI error, never a
//! panic; a valid config written as JSON parses back to itself. (Its records on disk
//! have their property in `registry.rs`.)

use cni_net::nat::{Backend, PortMapConfig, PortMapping, Proto};
use cni_tests::arb;
use cni_types::CniResult;
use proptest::prelude::*;
use serde_json::{Value, json};

use crate::config::Config;
use crate::container::container_ips;

const KEYS: &[&str] = &[
    "cniVersion",
    "name",
    "type",
    "backend",
    "snat",
    "masqAll",
    "markMasqBit",
    "externalSetMarkChain",
    "conditionsV4",
    "conditionsV6",
    "runtimeConfig",
    "portMappings",
    "hostPort",
    "containerPort",
    "protocol",
    "hostIP",
    "prevResult",
    "capabilities",
];

const RESULT_KEYS: &[&str] = &[
    "cniVersion",
    "interfaces",
    "ips",
    "name",
    "sandbox",
    "address",
    "interface",
    "version",
    "ip4",
    "ip6",
    "ip",
];

fn near_valid() -> impl Strategy<Value = Value> {
    let mapping = arb::mutated(
        json!({"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}),
        KEYS,
    );
    (
        arb::mutated(
            json!({"cniVersion": "1.0.0", "name": "net", "type": "portmap"}),
            KEYS,
        ),
        proptest::collection::vec(mapping, 0..4),
    )
        .prop_map(|(mut conf, mappings)| {
            if conf.is_object() {
                conf["runtimeConfig"] = json!({ "portMappings": mappings });
            }
            conf
        })
}

fn assert_cni_error(e: crate::error::PortmapError) {
    let e = cni_types::Error::from(e);
    assert!(!e.msg.is_empty(), "{e:?}");
}

fn mapping() -> impl Strategy<Value = PortMapping> {
    let host_ip = proptest::option::of(prop_oneof![
        any::<[u8; 4]>().prop_map(std::net::IpAddr::from),
        any::<[u8; 16]>().prop_map(std::net::IpAddr::from),
    ]);
    (
        1u16..,
        1u16..,
        prop_oneof![Just(Proto::Tcp), Just(Proto::Udp), Just(Proto::Sctp)],
        host_ip,
    )
        .prop_map(
            |(host_port, container_port, protocol, host_ip)| PortMapping {
                host_port,
                container_port,
                protocol,
                host_ip,
            },
        )
}

/// A valid config of the given backend, as the plugin holds it once parsed.
fn valid() -> impl Strategy<Value = Config> {
    (
        prop_oneof![
            Just(Backend::Iptables),
            Just(Backend::Nftables),
            Just(Backend::NftablesSets)
        ],
        proptest::collection::vec(mapping(), 0..5),
        any::<(bool, bool)>(),
        0u8..32,
        proptest::option::of("[A-Z][A-Z-]{0,20}"),
    )
        .prop_map(|(backend, mappings, (snat, masq_all), bit, chain)| {
            let mut rules = PortMapConfig::new("net", "c1", mappings);
            rules.snat = snat;
            if backend != Backend::NftablesSets {
                rules.masq_all = masq_all;
            }
            match (backend, chain) {
                (Backend::Iptables, Some(chain)) => rules.external_set_mark_chain = Some(chain),
                _ => rules.mark_masq_bit = bit,
            }
            Config { backend, rules }
        })
}

fn to_wire(c: &Config) -> Value {
    let r = &c.rules;
    let mappings: Vec<Value> = r
        .mappings
        .iter()
        .map(|m| {
            let mut v = json!({"hostPort": m.host_port, "containerPort": m.container_port,
                               "protocol": m.protocol.as_str()});
            if let Some(ip) = m.host_ip {
                v["hostIP"] = json!(ip.to_string());
            }
            v
        })
        .collect();
    let mut v = json!({
        "cniVersion": "1.0.0", "name": r.network, "type": "portmap",
        "backend": c.backend.as_str(), "snat": r.snat, "masqAll": r.masq_all,
        "runtimeConfig": {"portMappings": mappings},
    });
    match &r.external_set_mark_chain {
        Some(chain) => v["externalSetMarkChain"] = json!(chain),
        None => v["markMasqBit"] = json!(r.mark_masq_bit),
    }
    v
}

proptest! {
    #![proptest_config(arb::cases())]

    #[test]
    fn any_input_is_a_config_or_an_error(stdin in arb::bytes(KEYS)) {
        if let Err(e) = Config::parse(&stdin, "net", "c1", || Backend::Iptables) {
            assert_cni_error(e);
        }
        let _ = Config::parse_for_teardown(&stdin, "net", "c1", || Backend::Iptables);
    }

    #[test]
    fn near_valid_input_is_a_config_or_an_error(conf in near_valid()) {
        let stdin = conf.to_string().into_bytes();
        if let Err(e) = Config::parse(&stdin, "net", "c1", || Backend::Nftables) {
            assert_cni_error(e);
        }
        let lenient = Config::parse_for_teardown(&stdin, "net", "c1", || Backend::Nftables);
        // DEL keeps exactly the mappings ADD would accept.
        if let Ok(strict) = Config::parse(&stdin, "net", "c1", || Backend::Nftables) {
            prop_assert_eq!(lenient.rules.mappings, strict.rules.mappings);
        }
    }

    #[test]
    fn valid_configs_survive_serialize_and_parse(c in valid()) {
        let wire = to_wire(&c);
        let back = Config::parse(wire.to_string().as_bytes(), "net", "c1", || Backend::Iptables);
        prop_assert_eq!(back.expect("valid"), c, "{}", wire);
    }

    /// Any prevResult, of any version, that reads as a result gives addresses (or
    /// none), whatever its interface indexes say.
    #[test]
    fn any_prev_result_gives_addresses(
        prev in arb::json(RESULT_KEYS),
        version in proptest::sample::select(cni_types::version::SUPPORTED),
        ifname in prop_oneof![Just("eth0".to_string()), arb::text()],
    ) {
        if let Ok(r) = CniResult::from_value(&prev, version) {
            let ips = container_ips(&r, &ifname);
            prop_assert!(ips.len() <= 2, "one address per family at most: {:?}", ips);
        }
    }
}
