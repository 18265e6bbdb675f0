//! The bridge plugin's configuration: the wire form as the runtime sends it,
//! validated once into [`BridgeConf`], which the rest of the plugin uses.

use serde::Deserialize;
use serde_json::Value;

use cni_net::nat::Backend;
use cni_types::{CniArgs, Dns};

use crate::error::BridgeError;

pub const DEFAULT_BRIDGE: &str = "cni0";

/// Highest usable 802.1Q VLAN ID (4095 is reserved).
const MAX_VLAN: i64 = 4094;

/// The keys of the plugin object, as JSON spells them.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct WireConf {
    #[serde(rename = "cniVersion")]
    cni_version: String,
    name: String,
    bridge: Option<String>,
    #[serde(rename = "isGateway")]
    is_gateway: bool,
    #[serde(rename = "isDefaultGateway")]
    is_default_gateway: bool,
    #[serde(rename = "forceAddress")]
    force_address: bool,
    #[serde(rename = "ipMasq")]
    ip_masq: bool,
    #[serde(rename = "ipMasqBackend")]
    ip_masq_backend: Option<String>,
    mtu: i64,
    #[serde(rename = "hairpinMode")]
    hairpin_mode: bool,
    #[serde(rename = "promiscMode")]
    promisc_mode: bool,
    vlan: i64,
    #[serde(rename = "vlanTrunk")]
    vlan_trunk: Option<Vec<WireTrunk>>,
    #[serde(rename = "preserveDefaultVlan")]
    preserve_default_vlan: bool,
    macspoofchk: bool,
    enabledad: bool,
    #[serde(rename = "disableContainerInterface")]
    disable_container_interface: bool,
    #[serde(rename = "portIsolation")]
    port_isolation: bool,
    ipam: Option<Value>,
    dns: Option<Value>,
    args: Option<WireArgs>,
    #[serde(rename = "runtimeConfig")]
    runtime_config: Option<WireMac>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct WireTrunk {
    #[serde(rename = "minID")]
    min_id: Option<i64>,
    #[serde(rename = "maxID")]
    max_id: Option<i64>,
    id: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct WireArgs {
    cni: Option<WireMac>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct WireMac {
    mac: Option<String>,
}

/// A validated bridge configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct BridgeConf {
    pub cni_version: String,
    /// The network name (keys the ipMasq rules).
    pub network: String,
    pub bridge: String,
    pub is_gateway: bool,
    pub is_default_gateway: bool,
    pub force_address: bool,
    pub ip_masq: bool,
    /// `None`: pick as the reference does (iptables unless only nft works).
    pub ip_masq_backend: Option<Backend>,
    /// The raw `ipMasqBackend` value when it is not one we know; reported
    /// only when ipMasq would use it, as the reference does.
    pub unknown_backend: Option<String>,
    /// `None`: kernel default.
    pub mtu: Option<u32>,
    pub hairpin_mode: bool,
    pub promisc_mode: bool,
    /// Access VLAN (untagged, PVID) of the host port; `None` for 0.
    pub vlan: Option<u16>,
    /// Tagged VLANs of the host port, sorted and unique.
    pub vlan_trunk: Vec<u16>,
    /// The bridge filters VLANs (a `vlan` or any `vlanTrunk` key was given).
    pub vlan_filtering: bool,
    pub preserve_default_vlan: bool,
    pub macspoofchk: bool,
    pub enable_dad: bool,
    pub disable_container_interface: bool,
    pub port_isolation: bool,
    /// The delegated IPAM plugin; `None` is L2-only mode.
    pub ipam_type: Option<String>,
    /// DNS from the config, only when it sets something: it then replaces
    /// what IPAM returned.
    pub dns: Option<Dns>,
    /// Container-side MAC: runtimeConfig > args.cni > CNI_ARGS.
    pub mac: Option<Mac>,
}

/// A 6-byte Ethernet address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mac(pub [u8; 6]);

impl std::fmt::Display for Mac {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl std::str::FromStr for Mac {
    type Err = BridgeError;

    /// `aa:bb:cc:dd:ee:ff`, `aa-bb-...` or `aabb.ccdd.eeff`: the 6-byte forms
    /// Go's `net.ParseMAC` accepts (a veth takes no longer address).
    fn from_str(s: &str) -> Result<Mac, BridgeError> {
        let bad = || BridgeError::InvalidMac(s.to_string());
        let hex: String = if s.len() == 17 {
            let sep = s.as_bytes()[2];
            if sep != b':' && sep != b'-' {
                return Err(bad());
            }
            let mut out = String::with_capacity(12);
            for (i, c) in s.chars().enumerate() {
                if i % 3 == 2 {
                    if c as u32 != u32::from(sep) {
                        return Err(bad());
                    }
                } else {
                    out.push(c);
                }
            }
            out
        } else if s.len() == 14 {
            let mut out = String::with_capacity(12);
            for (i, c) in s.chars().enumerate() {
                if i % 5 == 4 {
                    if c != '.' {
                        return Err(bad());
                    }
                } else {
                    out.push(c);
                }
            }
            out
        } else {
            return Err(bad());
        };
        let mut mac = [0u8; 6];
        for (i, byte) in mac.iter_mut().enumerate() {
            let pair = hex.get(2 * i..2 * i + 2).ok_or_else(bad)?;
            *byte = u8::from_str_radix(pair, 16).map_err(|_| bad())?;
        }
        Ok(Mac(mac))
    }
}

/// `dns` as the reference reads it: each list may be absent or `null` (unset),
/// or given, even empty (set).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct WireDns {
    nameservers: Option<Vec<String>>,
    domain: Option<String>,
    search: Option<Vec<String>>,
    options: Option<Vec<String>>,
}

/// The reference treats `dns` as set when any list is present (even empty)
/// or the domain is non-empty.
fn dns_if_set(v: Option<Value>) -> Result<Option<Dns>, BridgeError> {
    let Some(v @ Value::Object(_)) = v else {
        return Ok(None);
    };
    let w: WireDns =
        cni_types::json::from_value(v).map_err(|e| BridgeError::Parse(e.to_string()))?;
    let list_set = w.nameservers.is_some() || w.search.is_some() || w.options.is_some();
    let domain_set = w.domain.as_deref().is_some_and(|d| !d.is_empty());
    if !list_set && !domain_set {
        return Ok(None);
    }
    Ok(Some(Dns {
        nameservers: w.nameservers.unwrap_or_default(),
        domain: w.domain,
        search: w.search.unwrap_or_default(),
        options: w.options.unwrap_or_default(),
    }))
}

/// Expands `vlanTrunk` into a sorted list of VLAN IDs with the reference's
/// messages for bad entries.
fn collect_trunk(items: &[WireTrunk]) -> Result<Vec<u16>, BridgeError> {
    let valid = |v: i64| (1..=MAX_VLAN).contains(&v);
    let mut vlans = std::collections::BTreeSet::new();
    for item in items {
        match (item.min_id, item.max_id) {
            (Some(min), Some(max)) => {
                if !valid(min) {
                    return Err(BridgeError::Config(
                        "incorrect trunk minID parameter".into(),
                    ));
                }
                if !valid(max) {
                    return Err(BridgeError::Config(
                        "incorrect trunk maxID parameter".into(),
                    ));
                }
                if max < min {
                    return Err(BridgeError::Config(
                        "minID is greater than maxID in trunk parameter".into(),
                    ));
                }
                vlans.extend((min..=max).map(|v| v as u16));
            }
            (None, Some(_)) => {
                return Err(BridgeError::Config(
                    "minID and maxID should be configured simultaneously, minID is missing".into(),
                ));
            }
            (Some(_), None) => {
                return Err(BridgeError::Config(
                    "minID and maxID should be configured simultaneously, maxID is missing".into(),
                ));
            }
            (None, None) => {}
        }
        if let Some(id) = item.id {
            if !valid(id) {
                return Err(BridgeError::Config("incorrect trunk id parameter".into()));
            }
            vlans.insert(id as u16);
        }
    }
    Ok(vlans.into_iter().collect())
}

impl BridgeConf {
    /// Parses and validates the plugin config; `args` is `CNI_ARGS`.
    pub fn parse(stdin: &[u8], args: &CniArgs) -> Result<BridgeConf, BridgeError> {
        let w: WireConf =
            cni_types::json::from_slice(stdin).map_err(|e| BridgeError::Parse(e.to_string()))?;

        if !(0..=MAX_VLAN).contains(&w.vlan) {
            return Err(BridgeError::Config(format!(
                "invalid VLAN ID {} (must be between 0 and 4094)",
                w.vlan
            )));
        }
        let vlan_trunk = match &w.vlan_trunk {
            Some(items) => collect_trunk(items)?,
            None => Vec::new(),
        };

        // CNI_ARGS is parsed only when present, like the reference; MAC is the
        // one key bridge understands.
        let mut mac_text: Option<String> = None;
        if !args.raw().is_empty() {
            args.check_known(&["MAC"]).map_err(BridgeError::Cni)?;
            if let Some(m) = args.get("MAC").filter(|m| !m.is_empty()) {
                mac_text = Some(m.to_string());
            }
        }
        if let Some(m) = w
            .args
            .as_ref()
            .and_then(|a| a.cni.as_ref())
            .and_then(|c| c.mac.clone())
            .filter(|m| !m.is_empty())
        {
            mac_text = Some(m);
        }
        if let Some(m) = w
            .runtime_config
            .as_ref()
            .and_then(|r| r.mac.clone())
            .filter(|m| !m.is_empty())
        {
            mac_text = Some(m);
        }
        let mac = mac_text.as_deref().map(str::parse::<Mac>).transpose()?;

        let mtu = match w.mtu {
            0 => None,
            m if (1..=i64::from(u32::MAX)).contains(&m) => Some(m as u32),
            m => return Err(BridgeError::Config(format!("invalid MTU {m}"))),
        };

        let (ip_masq_backend, unknown_backend) = match w.ip_masq_backend.as_deref() {
            None => (None, None),
            Some(name) => match Backend::parse(name) {
                Some(backend) => (Some(backend), None),
                None => (None, Some(name.to_string())),
            },
        };

        let ipam_type = w
            .ipam
            .as_ref()
            .and_then(|i| cni_types::json::get(i, "type"))
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .map(str::to_string);

        Ok(BridgeConf {
            cni_version: w.cni_version,
            network: w.name,
            bridge: w.bridge.unwrap_or_else(|| DEFAULT_BRIDGE.to_string()),
            // isDefaultGateway needs the gateway on the bridge.
            is_gateway: w.is_gateway || w.is_default_gateway,
            is_default_gateway: w.is_default_gateway,
            force_address: w.force_address,
            ip_masq: w.ip_masq,
            ip_masq_backend,
            unknown_backend,
            mtu,
            hairpin_mode: w.hairpin_mode,
            promisc_mode: w.promisc_mode,
            vlan: (w.vlan != 0).then_some(w.vlan as u16),
            vlan_filtering: w.vlan != 0 || w.vlan_trunk.is_some(),
            vlan_trunk,
            preserve_default_vlan: w.preserve_default_vlan,
            macspoofchk: w.macspoofchk,
            enable_dad: w.enabledad,
            disable_container_interface: w.disable_container_interface,
            port_isolation: w.port_isolation,
            ipam_type,
            dns: dns_if_set(w.dns)?,
            mac,
        })
    }

    pub fn is_layer3(&self) -> bool {
        self.ipam_type.is_some()
    }

    /// The checks the reference makes at the start of ADD only (DEL must
    /// still work with a config ADD would refuse).
    pub fn validate_for_add(&self) -> Result<(), BridgeError> {
        if self.is_layer3() && self.disable_container_interface {
            return Err(BridgeError::Config(
                "cannot use IPAM when DisableContainerInterface flag is set".into(),
            ));
        }
        if self.hairpin_mode && self.promisc_mode {
            return Err(BridgeError::Config(
                "cannot set hairpin mode and promiscuous mode at the same time".into(),
            ));
        }
        self.masq_backend_checked()?;
        Ok(())
    }

    /// The configured ipMasq backend; an unknown name is an error only when
    /// ipMasq is in use (the reference never looks at it otherwise).
    pub fn masq_backend_checked(&self) -> Result<Option<Backend>, BridgeError> {
        match &self.unknown_backend {
            Some(b) if self.ip_masq && self.is_layer3() => {
                Err(BridgeError::Config(format!("unknown ipmasq backend {b:?}")))
            }
            _ => Ok(self.ip_masq_backend),
        }
    }

    /// The gateway interface of a VLAN network with `isGateway`.
    pub fn vlan_gateway_name(&self) -> Option<String> {
        self.vlan.map(|v| format!("{}.{v}", self.bridge))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<BridgeConf, BridgeError> {
        BridgeConf::parse(v.to_string().as_bytes(), &CniArgs::default())
    }

    fn parse_args(v: Value, args: &str) -> Result<BridgeConf, BridgeError> {
        BridgeConf::parse(v.to_string().as_bytes(), &CniArgs::new(args))
    }

    fn err(v: Value) -> String {
        parse(v).unwrap_err().to_string()
    }

    #[test]
    fn defaults() {
        let c = parse(json!({"cniVersion": "1.0.0", "name": "n", "type": "bridge"})).unwrap();
        assert_eq!(c.bridge, "cni0");
        assert!(!c.is_gateway && !c.ip_masq && !c.promisc_mode && !c.hairpin_mode);
        assert!(!c.preserve_default_vlan, "default false since v1.8.0");
        assert_eq!(c.mtu, None);
        assert_eq!(c.vlan, None);
        assert!(!c.vlan_filtering);
        assert!(!c.is_layer3());
        assert_eq!(c.dns, None);
        assert_eq!(c.mac, None);
    }

    #[test]
    fn all_keys() {
        let c = parse(json!({
            "cniVersion": "1.1.0", "name": "net", "type": "bridge", "bridge": "br9",
            "isDefaultGateway": true, "forceAddress": true, "ipMasq": true,
            "ipMasqBackend": "nftables", "mtu": 1400, "hairpinMode": true, "vlan": 100,
            "preserveDefaultVlan": true, "macspoofchk": true, "enabledad": true,
            "portIsolation": true, "ipam": {"type": "host-local"},
            "dns": {"nameservers": ["1.1.1.1"]}
        }))
        .unwrap();
        assert_eq!(c.bridge, "br9");
        assert!(c.is_gateway, "isDefaultGateway implies isGateway");
        assert!(c.is_default_gateway && c.force_address && c.ip_masq);
        assert_eq!(c.ip_masq_backend, Some(Backend::Nftables));
        assert_eq!(c.mtu, Some(1400));
        assert_eq!(c.vlan, Some(100));
        assert!(c.vlan_filtering && c.preserve_default_vlan && c.macspoofchk);
        assert!(c.enable_dad && c.port_isolation && c.hairpin_mode);
        assert_eq!(c.ipam_type.as_deref(), Some("host-local"));
        assert_eq!(c.dns.as_ref().unwrap().nameservers, ["1.1.1.1"]);
        assert_eq!(c.vlan_gateway_name().as_deref(), Some("br9.100"));
    }

    #[test]
    fn every_key_matches_in_any_case_like_go() {
        cni_types::json::check_key_spellings::<WireConf>(&json!({
            "cniVersion": "1.0.0", "name": "n", "bridge": "br9", "isGateway": true,
            "isDefaultGateway": true, "forceAddress": true, "ipMasq": true,
            "ipMasqBackend": "nftables", "mtu": 1400, "hairpinMode": true, "promiscMode": true,
            "vlan": 100, "vlanTrunk": [{"minID": 200, "maxID": 203, "id": 101}],
            "preserveDefaultVlan": true, "macspoofchk": true, "enabledad": true,
            "disableContainerInterface": true, "portIsolation": true,
            "ipam": {"type": "host-local"}, "dns": {"nameservers": ["1.1.1.1"]},
            "args": {"cni": {"mac": "c2:11:22:33:44:55"}},
            "runtimeConfig": {"mac": "c2:11:22:33:44:66"}
        }))
        .unwrap();
        cni_types::json::check_key_spellings::<WireDns>(&json!({
            "nameservers": ["1.1.1.1"], "domain": "d", "search": ["s"], "options": ["o"]
        }))
        .unwrap();
    }

    #[test]
    fn keys_match_case_insensitively_like_go() {
        let c = parse(json!({"name": "n", "enableDad": true, "IsGateway": true,
                             "runtimeConfig": {"MAC": "c2:11:22:33:44:55"}}))
        .unwrap();
        assert!(c.enable_dad && c.is_gateway);
        assert_eq!(c.mac.unwrap().to_string(), "c2:11:22:33:44:55");
        let c = parse(json!({"name": "n", "IPAM": {"Type": "host-local"},
                             "DNS": {"Nameservers": ["10.0.0.53"], "DOMAIN": "cluster.local"}}))
        .unwrap();
        assert_eq!(c.ipam_type.as_deref(), Some("host-local"));
        let dns = c.dns.unwrap();
        assert_eq!(
            (dns.nameservers[0].as_str(), dns.domain.as_deref()),
            ("10.0.0.53", Some("cluster.local"))
        );
    }

    #[test]
    fn vlan_range() {
        assert_eq!(
            err(json!({"name": "n", "vlan": -1})),
            "invalid VLAN ID -1 (must be between 0 and 4094)"
        );
        assert_eq!(
            err(json!({"name": "n", "vlan": 4095})),
            "invalid VLAN ID 4095 (must be between 0 and 4094)"
        );
        assert_eq!(
            parse(json!({"name": "n", "vlan": 4094})).unwrap().vlan,
            Some(4094)
        );
    }

    #[test]
    fn trunk_parsing_table() {
        let ok = |t: Value| {
            parse(json!({"name": "n", "vlanTrunk": t}))
                .unwrap()
                .vlan_trunk
        };
        assert_eq!(
            ok(json!([{"id": 101}, {"minID": 200, "maxID": 203}, {"id": 201}])),
            [101, 200, 201, 202, 203]
        );
        assert_eq!(ok(json!([{"minID": 5, "maxID": 5}])), [5]);
        let c = parse(json!({"name": "n", "vlanTrunk": []})).unwrap();
        assert!(c.vlan_filtering && c.vlan_trunk.is_empty());

        let bad = |t: Value| err(json!({"name": "n", "vlanTrunk": t}));
        assert_eq!(
            bad(json!([{"minID": 0, "maxID": 5}])),
            "incorrect trunk minID parameter"
        );
        assert_eq!(
            bad(json!([{"minID": 4095, "maxID": 5}])),
            "incorrect trunk minID parameter"
        );
        assert_eq!(
            bad(json!([{"minID": 1, "maxID": 4095}])),
            "incorrect trunk maxID parameter"
        );
        assert_eq!(
            bad(json!([{"minID": 1, "maxID": -3}])),
            "incorrect trunk maxID parameter"
        );
        assert_eq!(
            bad(json!([{"minID": 10, "maxID": 5}])),
            "minID is greater than maxID in trunk parameter"
        );
        assert_eq!(
            bad(json!([{"maxID": 5}])),
            "minID and maxID should be configured simultaneously, minID is missing"
        );
        assert_eq!(
            bad(json!([{"minID": 5}])),
            "minID and maxID should be configured simultaneously, maxID is missing"
        );
        assert_eq!(bad(json!([{"id": 0}])), "incorrect trunk id parameter");
        assert_eq!(bad(json!([{"id": 4095}])), "incorrect trunk id parameter");
    }

    #[test]
    fn mac_precedence_runtime_over_args_over_cni_args() {
        let base = json!({"name": "n"});
        let c = parse_args(base.clone(), "MAC=c2:00:00:00:00:01").unwrap();
        assert_eq!(c.mac.unwrap().to_string(), "c2:00:00:00:00:01");

        let with_args = json!({"name": "n", "args": {"cni": {"mac": "c2:00:00:00:00:02"}}});
        let c = parse_args(with_args, "MAC=c2:00:00:00:00:01").unwrap();
        assert_eq!(c.mac.unwrap().to_string(), "c2:00:00:00:00:02");

        let all = json!({"name": "n", "args": {"cni": {"mac": "c2:00:00:00:00:02"}},
                         "runtimeConfig": {"mac": "C2-00-00-00-00-03"}});
        let c = parse_args(all, "MAC=c2:00:00:00:00:01").unwrap();
        assert_eq!(c.mac.unwrap().to_string(), "c2:00:00:00:00:03");
    }

    #[test]
    fn cni_args_rules() {
        let e = parse_args(json!({"name": "n"}), "FOO=bar").unwrap_err();
        assert_eq!(e.to_string(), r#"ARGS: unknown args ["FOO=bar"]"#);
        let c = parse_args(json!({"name": "n"}), "IgnoreUnknown=1;K8S_POD_NAME=x").unwrap();
        assert_eq!(c.mac, None);
    }

    #[test]
    fn mac_forms() {
        for ok in ["c2:11:22:33:44:55", "C2-11-22-33-44-55", "c211.2233.4455"] {
            assert_eq!(
                ok.parse::<Mac>().unwrap().to_string(),
                "c2:11:22:33:44:55",
                "{ok}"
            );
        }
        for bad in [
            "",
            "c2:11:22:33:44",
            "c2:11:22:33:44:5g",
            "c2:11-22:33:44:55",
            "zz",
        ] {
            assert!(bad.parse::<Mac>().is_err(), "{bad}");
        }
        assert_eq!(
            err(json!({"name": "n", "runtimeConfig": {"mac": "nope"}})),
            "failed to make veth pair: address nope: invalid MAC address"
        );
    }

    #[test]
    fn add_time_checks() {
        let c = parse(json!({"name": "n", "hairpinMode": true, "promiscMode": true})).unwrap();
        assert_eq!(
            c.validate_for_add().unwrap_err().to_string(),
            "cannot set hairpin mode and promiscuous mode at the same time"
        );
        let c = parse(json!({"name": "n", "disableContainerInterface": true,
                             "ipam": {"type": "host-local"}}))
        .unwrap();
        assert_eq!(
            c.validate_for_add().unwrap_err().to_string(),
            "cannot use IPAM when DisableContainerInterface flag is set"
        );
        let c = parse(json!({"name": "n", "disableContainerInterface": true, "ipam": {}})).unwrap();
        assert!(
            c.validate_for_add().is_ok(),
            "L2-only may disable the interface"
        );

        let c = parse(json!({"name": "n", "ipMasq": true, "ipMasqBackend": "pf",
                             "ipam": {"type": "host-local"}}))
        .unwrap();
        assert_eq!(
            c.validate_for_add().unwrap_err().to_string(),
            "unknown ipmasq backend \"pf\""
        );
        let c = parse(json!({"name": "n", "ipMasqBackend": "pf"})).unwrap();
        assert!(c.validate_for_add().is_ok(), "ignored without ipMasq");
    }

    #[test]
    fn dns_set_rules() {
        let d = |v: Value| parse(json!({"name": "n", "dns": v})).unwrap().dns;
        assert_eq!(d(json!({})), None);
        assert_eq!(d(json!({"domain": ""})), None);
        assert!(
            d(json!({"nameservers": []})).is_some(),
            "an empty list counts"
        );
        assert_eq!(
            d(json!({"domain": "x.local"})).unwrap().domain.as_deref(),
            Some("x.local")
        );
    }

    #[test]
    fn type_errors_name_the_problem() {
        let e = err(json!({"name": "n", "mtu": "1500"}));
        assert!(e.starts_with("failed to load netconf: "), "{e}");
        assert_eq!(err(json!({"name": "n", "mtu": -5})), "invalid MTU -5");
    }

    #[test]
    fn empty_ipam_type_is_l2() {
        assert!(
            !parse(json!({"name": "n", "ipam": {"type": ""}}))
                .unwrap()
                .is_layer3()
        );
        assert!(!parse(json!({"name": "n", "ipam": {}})).unwrap().is_layer3());
    }
}

/// Arbitrary input gives a config or a CNI error, never a panic; a valid config
/// written as JSON parses back to itself.
#[cfg(test)]
mod props {
    use super::*;
    use cni_tests::arb;
    use proptest::prelude::*;
    use serde_json::{Map, json};

    const KEYS: &[&str] = &[
        "cniVersion",
        "name",
        "type",
        "bridge",
        "isGateway",
        "isDefaultGateway",
        "forceAddress",
        "ipMasq",
        "ipMasqBackend",
        "mtu",
        "hairpinMode",
        "promiscMode",
        "vlan",
        "vlanTrunk",
        "minID",
        "maxID",
        "id",
        "preserveDefaultVlan",
        "macspoofchk",
        "enabledad",
        "disableContainerInterface",
        "portIsolation",
        "ipam",
        "dns",
        "nameservers",
        "domain",
        "search",
        "options",
        "args",
        "cni",
        "mac",
        "runtimeConfig",
    ];

    fn near_valid() -> impl Strategy<Value = Value> {
        arb::mutated(
            json!({"cniVersion": "1.0.0", "name": "net", "type": "bridge",
                   "ipam": {"type": "host-local"}}),
            KEYS,
        )
    }

    fn cni_args() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            Just("MAC=c2:11:22:33:44:55".to_string()),
            Just("IgnoreUnknown=1;K8S_POD_NAME=x".to_string()),
            arb::text(),
        ]
    }

    fn assert_cni_error(e: BridgeError) {
        let e = cni_types::Error::from(e);
        assert!(!e.msg.is_empty(), "{e:?}");
    }

    fn words() -> impl Strategy<Value = Vec<String>> {
        proptest::collection::vec("[a-z0-9.]{1,8}", 0..3)
    }

    /// A valid config, as the plugin holds it once parsed.
    fn valid() -> impl Strategy<Value = BridgeConf> {
        let flags = proptest::collection::vec(any::<bool>(), 13);
        let dns = proptest::option::of(
            (
                words(),
                proptest::option::of("[a-z.]{1,10}"),
                words(),
                words(),
            )
                .prop_filter("sets something", |(n, d, s, o)| {
                    !(n.is_empty() && d.is_none() && s.is_empty() && o.is_empty())
                })
                .prop_map(|(nameservers, domain, search, options)| Dns {
                    nameservers,
                    domain,
                    search,
                    options,
                }),
        );
        (
            proptest::sample::select(cni_types::version::SUPPORTED),
            "[a-zA-Z0-9][a-zA-Z0-9_.-]{0,15}",
            "[a-z][a-z0-9]{0,10}",
            flags,
            proptest::option::of(prop_oneof![
                Just(Backend::Iptables),
                Just(Backend::Nftables),
                Just(Backend::NftablesSets)
            ]),
            proptest::option::of(68u32..65536),
            proptest::option::of(1u16..=4094),
            proptest::collection::btree_set(1u16..=4094, 0..4),
            proptest::option::of(prop_oneof![Just("host-local"), Just("static")]),
            dns,
            proptest::option::of(any::<[u8; 6]>()),
        )
            .prop_map(
                |(version, network, bridge, f, backend, mtu, vlan, trunk, ipam, dns, mac)| {
                    let vlan_trunk: Vec<u16> = trunk.into_iter().collect();
                    BridgeConf {
                        cni_version: version.to_string(),
                        network,
                        bridge,
                        is_gateway: f[0] || f[1],
                        is_default_gateway: f[1],
                        force_address: f[2],
                        ip_masq: f[3],
                        ip_masq_backend: backend,
                        unknown_backend: None,
                        mtu,
                        hairpin_mode: f[4],
                        promisc_mode: f[5],
                        vlan,
                        vlan_filtering: vlan.is_some() || !vlan_trunk.is_empty(),
                        vlan_trunk,
                        preserve_default_vlan: f[6],
                        macspoofchk: f[7],
                        enable_dad: f[8],
                        disable_container_interface: f[9],
                        port_isolation: f[10],
                        ipam_type: ipam.map(str::to_string),
                        dns,
                        mac: mac.map(Mac),
                    }
                },
            )
    }

    /// The config a runtime would send for `c`.
    fn to_wire(c: &BridgeConf) -> Value {
        let mut m = Map::new();
        let mut put = |k: &str, v: Value| {
            m.insert(k.to_string(), v);
        };
        put("cniVersion", json!(c.cni_version));
        put("name", json!(c.network));
        put("type", json!("bridge"));
        put("bridge", json!(c.bridge));
        put("isGateway", json!(c.is_gateway));
        put("isDefaultGateway", json!(c.is_default_gateway));
        put("forceAddress", json!(c.force_address));
        put("ipMasq", json!(c.ip_masq));
        if let Some(b) = c.ip_masq_backend {
            put("ipMasqBackend", json!(b.as_str()));
        }
        put("mtu", json!(c.mtu.unwrap_or(0)));
        put("hairpinMode", json!(c.hairpin_mode));
        put("promiscMode", json!(c.promisc_mode));
        put("vlan", json!(c.vlan.unwrap_or(0)));
        if !c.vlan_trunk.is_empty() {
            let ids: Vec<Value> = c.vlan_trunk.iter().map(|id| json!({"id": id})).collect();
            put("vlanTrunk", Value::Array(ids));
        }
        put("preserveDefaultVlan", json!(c.preserve_default_vlan));
        put("macspoofchk", json!(c.macspoofchk));
        put("enabledad", json!(c.enable_dad));
        put(
            "disableContainerInterface",
            json!(c.disable_container_interface),
        );
        put("portIsolation", json!(c.port_isolation));
        if let Some(t) = &c.ipam_type {
            put("ipam", json!({"type": t}));
        }
        if let Some(d) = &c.dns {
            put("dns", json!(d));
        }
        if let Some(mac) = c.mac {
            put("runtimeConfig", json!({"mac": mac.to_string()}));
        }
        Value::Object(m)
    }

    proptest! {
        #![proptest_config(arb::cases())]

        #[test]
        fn any_input_is_a_config_or_an_error(stdin in arb::bytes(KEYS), args in cni_args()) {
            match BridgeConf::parse(&stdin, &CniArgs::new(args)) {
                Ok(c) => {
                    let _ = c.validate_for_add().map_err(assert_cni_error);
                    let _ = c.vlan_gateway_name();
                }
                Err(e) => assert_cni_error(e),
            }
        }

        #[test]
        fn near_valid_input_is_a_config_or_an_error(conf in near_valid(), args in cni_args()) {
            match BridgeConf::parse(conf.to_string().as_bytes(), &CniArgs::new(args)) {
                Ok(c) => {
                    let _ = c.validate_for_add().map_err(assert_cni_error);
                }
                Err(e) => assert_cni_error(e),
            }
        }

        #[test]
        fn valid_configs_survive_serialize_and_parse(c in valid()) {
            let wire = to_wire(&c);
            let back = BridgeConf::parse(wire.to_string().as_bytes(), &CniArgs::default());
            prop_assert_eq!(back.expect("valid"), c, "{}", wire);
        }
    }
}
