//! The plugin config: read once from stdin, validated into [`Config`].
//!
//! Keys, defaults and messages are the reference's. Where the reference accepts input
//! that can only fail later (a port above 65535, an unknown protocol, a host IP that is
//! no address) we reject it here with a message naming the entry.

use std::net::IpAddr;

use cni_net::nat::{Backend, PortMapConfig, PortMapping, Proto};
use serde::Deserialize;

use crate::error::PortmapError;

/// The plugin's keys as they appear on the wire. Go's zero values (a missing port is
/// 0, a missing protocol is "") are modelled with `Option` so validation can name them.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Wire {
    backend: Option<String>,
    snat: Option<bool>,
    masq_all: Option<bool>,
    mark_masq_bit: Option<i64>,
    external_set_mark_chain: Option<String>,
    conditions_v4: Option<Vec<String>>,
    conditions_v6: Option<Vec<String>>,
    runtime_config: Option<RuntimeConfig>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RuntimeConfig {
    port_mappings: Option<Vec<WireMapping>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireMapping {
    host_port: Option<i64>,
    container_port: Option<i64>,
    protocol: Option<String>,
    #[serde(rename = "hostIP")]
    host_ip: Option<String>,
}

/// A validated config for one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub backend: Backend,
    /// Network, container and every rule option, as the NAT layer takes them.
    pub rules: PortMapConfig,
}

impl Config {
    /// Parses and validates the plugin keys of `stdin`. `detect` picks the backend
    /// when neither the config nor its options name one.
    pub fn parse(
        stdin: &[u8],
        network: &str,
        container_id: &str,
        detect: impl FnOnce() -> Backend,
    ) -> Result<Config, PortmapError> {
        let wire: Wire = cni_types::json::from_slice(stdin).map_err(|e| {
            PortmapError::config(format!("failed to parse network configuration: {e}"))
        })?;

        if wire.mark_masq_bit.is_some() && wire.external_set_mark_chain.is_some() {
            return Err(PortmapError::config(
                "Cannot specify externalSetMarkChain and markMasqBit",
            ));
        }
        let mark_masq_bit = match wire.mark_masq_bit {
            None => cni_net::nat::DEFAULT_MARK_MASQ_BIT,
            Some(bit) => u8::try_from(bit)
                .ok()
                .filter(|b| *b <= 31)
                .ok_or_else(|| PortmapError::config("MasqMarkBit must be between 0 and 31"))?,
        };
        if wire
            .external_set_mark_chain
            .as_deref()
            .is_some_and(|c| c.is_empty() || c.chars().any(char::is_whitespace))
        {
            return Err(PortmapError::config(format!(
                "externalSetMarkChain {:?} is not a chain name",
                wire.external_set_mark_chain.unwrap_or_default()
            )));
        }

        let backend = select_backend(&wire, detect)?;
        let mappings = wire
            .runtime_config
            .and_then(|rc| rc.port_mappings)
            .unwrap_or_default()
            .iter()
            .map(validate_mapping)
            .collect::<Result<Vec<_>, _>>()?;

        let mut rules = PortMapConfig::new(network, container_id, mappings);
        rules.snat = wire.snat.unwrap_or(true);
        rules.masq_all = wire.masq_all.unwrap_or(false);
        rules.mark_masq_bit = mark_masq_bit;
        rules.external_set_mark_chain = wire.external_set_mark_chain;
        rules.conditions_v4 = wire.conditions_v4.unwrap_or_default();
        rules.conditions_v6 = wire.conditions_v6.unwrap_or_default();
        Ok(Config { backend, rules })
    }

    /// What DEL needs: the backend to clean up, and the mappings the runtime sent (only
    /// to flush their UDP conntrack entries). A config that ADD would reject is no
    /// reason to fail a DEL — a runtime retries a failing DEL forever — so this never
    /// fails: bad keys fall back to the defaults and bad mappings are dropped.
    pub fn parse_for_teardown(
        stdin: &[u8],
        network: &str,
        container_id: &str,
        detect: impl FnOnce() -> Backend,
    ) -> Config {
        let wire: Wire = cni_types::json::from_slice(stdin).unwrap_or_default();
        let backend = select_backend(&wire, detect).unwrap_or_else(|_| {
            wire.backend
                .as_deref()
                .and_then(Backend::parse)
                .unwrap_or_else(Backend::detect)
        });
        let mappings = wire
            .runtime_config
            .and_then(|rc| rc.port_mappings)
            .unwrap_or_default()
            .iter()
            .filter_map(|m| validate_mapping(m).ok())
            .collect();
        Config {
            backend,
            rules: PortMapConfig::new(network, container_id, mappings),
        }
    }
}

/// The reference's rule: options belong to one backend (`externalSetMarkChain` to
/// iptables; conditions to iptables when their first token starts with `-` or `!`,
/// else to nftables), and naming options of the other backend is an error.
///
/// Unlike the reference, which defaults to iptables before looking at the options, an
/// unset `backend` follows the options when they all belong to one backend: the
/// reference's documentation promises this, and its code fails such configs instead.
fn select_backend(wire: &Wire, detect: impl FnOnce() -> Backend) -> Result<Backend, PortmapError> {
    let mut iptables_only = Vec::new();
    let mut nftables_only = Vec::new();
    if wire.external_set_mark_chain.is_some() {
        iptables_only.push("externalSetMarkChain");
    }
    for (key, conditions) in [
        ("conditionsV4", &wire.conditions_v4),
        ("conditionsV6", &wire.conditions_v6),
    ] {
        match conditions_backend(conditions.as_deref()) {
            Some(Backend::Iptables) => iptables_only.push(key),
            Some(Backend::Nftables) => nftables_only.push(key),
            Some(Backend::NftablesSets) | None => {}
        }
    }

    let backend = match wire.backend.as_deref() {
        Some(name) => Backend::parse(name)
            .ok_or_else(|| PortmapError::config(format!("unrecognized backend {name:?}")))?,
        None if !nftables_only.is_empty() && iptables_only.is_empty() => Backend::Nftables,
        None if !iptables_only.is_empty() => Backend::Iptables,
        None => detect(),
    };
    let (other, wrong) = match backend {
        Backend::Iptables => (Backend::Nftables, &nftables_only),
        Backend::Nftables => (Backend::Iptables, &iptables_only),
        Backend::NftablesSets => return sets_layout_options(wire).map(|()| backend),
    };
    if !wrong.is_empty() {
        return Err(PortmapError::config(format!(
            "{} backend was requested but configuration contains {}-specific options [{}]",
            backend.as_str(),
            other.as_str(),
            wrong.join(" ")
        )));
    }
    Ok(backend)
}

/// The sets layout's rules are fixed and shared by every pod, so options that would
/// give one pod's traffic other rules have no place in it: refused by name rather
/// than ignored. (`markMasqBit` is accepted and unused: no mark is set.)
fn sets_layout_options(wire: &Wire) -> Result<(), PortmapError> {
    let mut unsupported = Vec::new();
    if wire.masq_all == Some(true) {
        unsupported.push("masqAll");
    }
    if wire.external_set_mark_chain.is_some() {
        unsupported.push("externalSetMarkChain");
    }
    if wire.conditions_v4.as_ref().is_some_and(|c| !c.is_empty()) {
        unsupported.push("conditionsV4");
    }
    if wire.conditions_v6.as_ref().is_some_and(|c| !c.is_empty()) {
        unsupported.push("conditionsV6");
    }
    if unsupported.is_empty() {
        return Ok(());
    }
    Err(PortmapError::config(format!(
        "the nftables-sets backend does not support [{}]",
        unsupported.join(" ")
    )))
}

fn conditions_backend(conditions: Option<&[String]>) -> Option<Backend> {
    let first = conditions?.first()?;
    match first.chars().next()? {
        '-' | '!' => Some(Backend::Iptables),
        _ => Some(Backend::Nftables),
    }
}

fn validate_mapping(m: &WireMapping) -> Result<PortMapping, PortmapError> {
    // Container port first, as the reference checks it.
    let container_port =
        valid_port(m.container_port).ok_or_else(|| port_error("container", m.container_port))?;
    let host_port = valid_port(m.host_port).ok_or_else(|| port_error("host", m.host_port))?;
    let raw_proto = m.protocol.as_deref().unwrap_or("");
    let protocol = Proto::parse(raw_proto).ok_or_else(|| {
        PortmapError::config(format!(
            "Invalid protocol {raw_proto:?} for host port {host_port}: must be tcp, udp or sctp"
        ))
    })?;
    let host_ip = match m.host_ip.as_deref() {
        None | Some("") => None,
        Some(text) => Some(text.parse::<IpAddr>().map_err(|_| {
            PortmapError::config(format!(
                "Invalid host IP {text:?} for host port {host_port}: not an IP address"
            ))
        })?),
    };
    Ok(PortMapping {
        host_port,
        container_port,
        protocol,
        host_ip,
    })
}

fn valid_port(port: Option<i64>) -> Option<u16> {
    u16::try_from(port.unwrap_or(0)).ok().filter(|p| *p > 0)
}

fn port_error(which: &str, port: Option<i64>) -> PortmapError {
    PortmapError::config(format!(
        "Invalid {which} port number: {}",
        port.unwrap_or(0)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(conf: serde_json::Value) -> Result<Config, String> {
        Config::parse(conf.to_string().as_bytes(), "net", "cid", || {
            Backend::Iptables
        })
        .map_err(|e| e.to_string())
    }

    #[test]
    fn every_key_matches_in_any_case_like_go() {
        cni_types::json::check_key_spellings::<Wire>(&json!({
            "backend": "iptables", "snat": false, "masqAll": true, "markMasqBit": 5,
            "externalSetMarkChain": "KUBE-MARK-MASQ", "conditionsV4": ["-s", "1.2.3.4"],
            "conditionsV6": ["!", "-s", "::1"],
            "runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 80,
                                                "protocol": "tcp", "hostIP": "10.0.0.1"}]}
        }))
        .unwrap();
    }

    #[test]
    fn mappings_as_each_runtime_sends_them() {
        let want = PortMapping {
            host_port: 19301,
            container_port: 8080,
            protocol: Proto::Tcp,
            host_ip: None,
        };
        for mapping in [
            // containerd 1.6 and 1.7 (go-cni: Go field names, no JSON tags)
            json!({"HostPort": 19301, "ContainerPort": 8080, "Protocol": "tcp", "HostIP": ""}),
            // CRI-O (ocicni: camelCase tags)
            json!({"hostPort": 19301, "containerPort": 8080, "protocol": "tcp", "hostIP": ""}),
            // by hand, any case
            json!({"HOSTPORT": 19301, "containerport": 8080, "PROTOCOL": "tcp"}),
        ] {
            let c = parse(with_mappings(json!([mapping]))).unwrap();
            assert_eq!(c.rules.mappings, [want], "{mapping}");
        }
        let c = parse(json!({"name": "net", "RuntimeConfig": {"PortMappings": [
            {"HostPort": 19301, "ContainerPort": 8080, "Protocol": "tcp"}]}}))
        .unwrap();
        assert_eq!(c.rules.mappings, [want]);
    }

    fn with_mappings(mappings: serde_json::Value) -> serde_json::Value {
        json!({"name": "net", "type": "portmap", "runtimeConfig": {"portMappings": mappings}})
    }

    #[test]
    fn defaults_are_the_references() {
        let c = parse(json!({"name": "net", "type": "portmap"})).unwrap();
        assert_eq!(c.backend, Backend::Iptables);
        assert!(c.rules.snat);
        assert!(!c.rules.masq_all);
        assert_eq!(c.rules.mark_masq_bit, 13);
        assert_eq!(c.rules.external_set_mark_chain, None);
        assert!(c.rules.mappings.is_empty());
        assert_eq!(c.rules.network, "net");
        assert_eq!(c.rules.container_id, "cid");
    }

    #[test]
    fn reads_every_key() {
        let c = parse(json!({
            "name": "net", "type": "portmap", "snat": false, "masqAll": true,
            "markMasqBit": 5, "conditionsV4": ["-s", "1.2.3.4"], "conditionsV6": ["!", "-s", "::1"],
            "runtimeConfig": {"portMappings": [
                {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
                {"hostPort": 53, "containerPort": 53, "protocol": "UDP", "hostIP": "192.168.1.1"},
                {"hostPort": 9, "containerPort": 9, "protocol": "sctp", "hostIP": ""},
            ]},
        }))
        .unwrap();
        assert!(!c.rules.snat);
        assert!(c.rules.masq_all);
        assert_eq!(c.rules.mark_masq_bit, 5);
        assert_eq!(c.rules.conditions_v4, ["-s", "1.2.3.4"]);
        assert_eq!(c.rules.conditions_v6, ["!", "-s", "::1"]);
        assert_eq!(
            c.rules.mappings,
            [
                PortMapping {
                    host_port: 8080,
                    container_port: 80,
                    protocol: Proto::Tcp,
                    host_ip: None
                },
                PortMapping {
                    host_port: 53,
                    container_port: 53,
                    protocol: Proto::Udp,
                    host_ip: Some("192.168.1.1".parse().unwrap())
                },
                PortMapping {
                    host_port: 9,
                    container_port: 9,
                    protocol: Proto::Sctp,
                    host_ip: None
                },
            ]
        );
    }

    #[test]
    fn null_keys_mean_unset_as_in_go() {
        let c = parse(json!({
            "name": "net", "markMasqBit": null, "externalSetMarkChain": null,
            "snat": null, "masqAll": null, "conditionsV4": null,
            "runtimeConfig": {"portMappings": null},
        }))
        .unwrap();
        assert_eq!(c.rules.mark_masq_bit, 13);
        assert!(c.rules.snat);
    }

    #[test]
    fn mark_bit_and_external_chain_rules() {
        assert_eq!(
            parse(
                json!({"name": "n", "markMasqBit": 13, "externalSetMarkChain": "KUBE-MARK-MASQ"})
            )
            .unwrap_err(),
            "failed to parse config: Cannot specify externalSetMarkChain and markMasqBit"
        );
        for bit in [-1, 32, 1000] {
            assert_eq!(
                parse(json!({"name": "n", "markMasqBit": bit})).unwrap_err(),
                "failed to parse config: MasqMarkBit must be between 0 and 31"
            );
        }
        assert_eq!(
            parse(json!({"name": "n", "markMasqBit": 31}))
                .unwrap()
                .rules
                .mark_masq_bit,
            31
        );
        let c = parse(json!({"name": "n", "externalSetMarkChain": "KUBE-MARK-MASQ"})).unwrap();
        assert_eq!(
            c.rules.external_set_mark_chain.as_deref(),
            Some("KUBE-MARK-MASQ")
        );
        assert!(parse(json!({"name": "n", "externalSetMarkChain": ""})).is_err());
    }

    #[test]
    fn ports_are_validated_container_port_first() {
        let cases = [
            (
                json!({"hostPort": 0, "containerPort": 80, "protocol": "tcp"}),
                "Invalid host port number: 0",
            ),
            (
                json!({"hostPort": -5, "containerPort": 80, "protocol": "tcp"}),
                "Invalid host port number: -5",
            ),
            (
                json!({"hostPort": 65536, "containerPort": 80, "protocol": "tcp"}),
                "Invalid host port number: 65536",
            ),
            (
                json!({"containerPort": 80, "protocol": "tcp"}),
                "Invalid host port number: 0",
            ),
            (
                json!({"hostPort": 80, "containerPort": 0, "protocol": "tcp"}),
                "Invalid container port number: 0",
            ),
            (
                json!({"hostPort": 0, "containerPort": 70000, "protocol": "tcp"}),
                "Invalid container port number: 70000",
            ),
            (
                json!({"hostPort": 80, "containerPort": 80, "protocol": "icmp"}),
                "Invalid protocol \"icmp\" for host port 80: must be tcp, udp or sctp",
            ),
            (
                json!({"hostPort": 80, "containerPort": 80}),
                "Invalid protocol \"\" for host port 80: must be tcp, udp or sctp",
            ),
            (
                json!({"hostPort": 80, "containerPort": 80, "protocol": "tcp", "hostIP": "localhost"}),
                "Invalid host IP \"localhost\" for host port 80: not an IP address",
            ),
        ];
        for (mapping, msg) in cases {
            let err = parse(with_mappings(json!([mapping]))).unwrap_err();
            assert_eq!(err, format!("failed to parse config: {msg}"), "{mapping}");
        }
        let ok = parse(with_mappings(
            json!([{"hostPort": 65535, "containerPort": 1, "protocol": "tcp"}]),
        ))
        .unwrap();
        assert_eq!(ok.rules.mappings[0].host_port, 65535);
    }

    #[test]
    fn wrong_types_are_config_errors() {
        let err = parse(with_mappings(
            json!([{"hostPort": "80", "containerPort": 80, "protocol": "tcp"}]),
        ))
        .unwrap_err();
        assert!(
            err.starts_with("failed to parse config: failed to parse network configuration: "),
            "{err}"
        );
        assert!(parse(json!({"name": "n", "snat": "yes"})).is_err());
    }

    #[test]
    fn backend_selection() {
        let b = |conf: serde_json::Value| parse(conf).map(|c| c.backend);
        assert_eq!(
            b(json!({"name": "n", "backend": "nftables"})),
            Ok(Backend::Nftables)
        );
        assert_eq!(
            b(json!({"name": "n", "backend": "iptables"})),
            Ok(Backend::Iptables)
        );
        assert_eq!(
            b(json!({"name": "n", "backend": "ebpf"})),
            Err("failed to parse config: unrecognized backend \"ebpf\"".into())
        );
        // Unset: the detected default, or the backend the options belong to.
        let detected = Config::parse(br#"{"name":"n"}"#, "n", "c", || Backend::Nftables).unwrap();
        assert_eq!(detected.backend, Backend::Nftables);
        assert_eq!(
            b(json!({"name": "n", "conditionsV4": ["ip", "saddr", "1.2.3.4"]})),
            Ok(Backend::Nftables)
        );
        assert_eq!(
            b(json!({"name": "n", "conditionsV6": ["-s", "::1"]})),
            Ok(Backend::Iptables)
        );
        assert_eq!(
            b(json!({"name": "n", "conditionsV4": [], "conditionsV6": [""]})),
            Ok(Backend::Iptables)
        );
        // Options of the other backend are refused with the reference's message.
        assert_eq!(
            b(
                json!({"name": "n", "backend": "nftables", "externalSetMarkChain": "X",
                     "conditionsV4": ["-s", "1.2.3.4"]})
            ),
            Err(
                "failed to parse config: nftables backend was requested but configuration \
                 contains iptables-specific options [externalSetMarkChain conditionsV4]"
                    .into()
            )
        );
        assert_eq!(
            b(json!({"name": "n", "backend": "iptables", "conditionsV6": ["ip6", "saddr", "::1"]})),
            Err(
                "failed to parse config: iptables backend was requested but configuration \
                 contains nftables-specific options [conditionsV6]"
                    .into()
            )
        );
        assert_eq!(
            b(
                json!({"name": "n", "externalSetMarkChain": "X", "conditionsV4": ["ip", "saddr", "1.2.3.4"]})
            ),
            Err(
                "failed to parse config: iptables backend was requested but configuration \
                 contains nftables-specific options [conditionsV4]"
                    .into()
            )
        );
    }

    #[test]
    fn teardown_parse_never_fails() {
        let conf = with_mappings(json!([
            {"hostPort": 0, "containerPort": 80, "protocol": "tcp"},
            {"hostPort": 53, "containerPort": 53, "protocol": "udp"},
        ]));
        let mut conf = conf;
        conf["markMasqBit"] = json!(99);
        conf["backend"] = json!("nftables");
        let c =
            Config::parse_for_teardown(conf.to_string().as_bytes(), "n", "c", || Backend::Iptables);
        assert_eq!(c.backend, Backend::Nftables);
        assert_eq!(c.rules.mappings.len(), 1);
        assert_eq!(c.rules.mappings[0].host_port, 53);
        let c = Config::parse_for_teardown(b"{\"snat\": 3}", "n", "c", || Backend::Iptables);
        assert_eq!(c.backend, Backend::Iptables);
    }
}
