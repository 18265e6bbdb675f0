//! Results: one internal form (the 1.1 shape) and the conversions to and from
//! every spec version, as the reference library converts them.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::error::Error;
use crate::version::{self, Shape};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CniResult {
    #[serde(rename = "cniVersion", default)]
    pub cni_version: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    #[serde(default, skip_serializing_if = "Dns::is_empty")]
    pub dns: Dns,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    #[serde(
        rename = "socketPath",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub socket_path: Option<String>,
    #[serde(rename = "pciID", default, skip_serializing_if = "Option::is_none")]
    pub pci_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// Address and prefix length; host bits are the address itself.
    #[serde(with = "cidr")]
    pub address: IpNetwork,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`; IPAM results leave it out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    #[serde(with = "cidr")]
    pub dst: IpNetwork,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(rename = "advmss", default, skip_serializing_if = "Option::is_none")]
    pub advmss: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<u8>,
}

impl Route {
    pub fn new(dst: IpNetwork, gw: Option<IpAddr>) -> Self {
        Route {
            dst,
            gw,
            mtu: None,
            advmss: None,
            priority: None,
            table: None,
            scope: None,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.is_none()
            && self.search.is_empty()
            && self.options.is_empty()
    }
}

/// The 0.1.0/0.2.0 per-family block.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LegacyIp {
    #[serde(with = "cidr")]
    ip: IpNetwork,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gateway: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    routes: Vec<LegacyRoute>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct LegacyRoute {
    #[serde(with = "cidr")]
    dst: IpNetwork,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gw: Option<IpAddr>,
}

#[derive(Debug, Deserialize)]
struct LegacyResult {
    #[serde(default)]
    ip4: Option<LegacyIp>,
    #[serde(default)]
    ip6: Option<LegacyIp>,
    #[serde(default)]
    dns: Dns,
}

impl CniResult {
    /// Reads a result of any supported version. `default_version` applies
    /// when the object carries no `cniVersion` (a prevResult often does not).
    pub fn from_value(v: &Value, default_version: &str) -> Result<CniResult, Error> {
        let declared = crate::json::get(v, "cniVersion")
            .and_then(Value::as_str)
            .unwrap_or("");
        let ver = if declared.is_empty() {
            version::or_default(default_version)
        } else {
            declared
        };
        let bad = |e: serde_json::Error| Error::decode(format!("failed to parse CNI result: {e}"));
        let mut out = match version::shape(ver)? {
            Shape::Legacy => {
                let old: LegacyResult = crate::json::from_value(v.clone()).map_err(bad)?;
                let mut r = CniResult {
                    dns: old.dns,
                    ..Default::default()
                };
                for ip in [old.ip4, old.ip6].into_iter().flatten() {
                    r.ips.push(IpConfig {
                        address: ip.ip,
                        gateway: ip.gateway,
                        interface: None,
                    });
                    r.routes
                        .extend(ip.routes.into_iter().map(|rt| Route::new(rt.dst, rt.gw)));
                }
                r
            }
            // 0.3/0.4 differ from 1.x only by the `version` key on IPs, which is ignored.
            Shape::V04 | Shape::V1 => crate::json::from_value(v.clone()).map_err(bad)?,
        };
        out.cni_version = ver.to_string();
        Ok(out)
    }

    /// Renders the result in the wire shape of `ver`, stamped with `ver`.
    pub fn to_value(&self, ver: &str) -> Result<Value, Error> {
        let ver = version::or_default(ver);
        match version::shape(ver)? {
            Shape::V1 => {
                let mut r = self.clone();
                r.cni_version = ver.to_string();
                serde_json::to_value(&r).map_err(|e| Error::internal(e.to_string()))
            }
            Shape::V04 => Ok(self.to_v04(ver)),
            Shape::Legacy => self.to_legacy(ver),
        }
    }

    fn to_v04(&self, ver: &str) -> Value {
        let mut out = Map::new();
        out.insert("cniVersion".into(), ver.into());
        if !self.interfaces.is_empty() {
            let ifs = self
                .interfaces
                .iter()
                .map(|i| {
                    let mut m = Map::new();
                    m.insert("name".into(), i.name.clone().into());
                    if let Some(mac) = &i.mac {
                        m.insert("mac".into(), mac.clone().into());
                    }
                    if let Some(sb) = &i.sandbox {
                        m.insert("sandbox".into(), sb.clone().into());
                    }
                    Value::Object(m)
                })
                .collect();
            out.insert("interfaces".into(), Value::Array(ifs));
        }
        if !self.ips.is_empty() {
            let ips = self
                .ips
                .iter()
                .map(|ip| {
                    let mut m = Map::new();
                    let family = if ip.address.is_ipv4() { "4" } else { "6" };
                    m.insert("version".into(), family.into());
                    if let Some(idx) = ip.interface {
                        m.insert("interface".into(), idx.into());
                    }
                    m.insert("address".into(), ip.address.to_string().into());
                    if let Some(gw) = ip.gateway {
                        m.insert("gateway".into(), gw.to_string().into());
                    }
                    Value::Object(m)
                })
                .collect();
            out.insert("ips".into(), Value::Array(ips));
        }
        if !self.routes.is_empty() {
            let routes = self.routes.iter().map(legacy_route).collect();
            out.insert("routes".into(), Value::Array(routes));
        }
        // The reference always emits "dns" for 0.3/0.4, even when empty.
        out.insert("dns".into(), json!(self.dns));
        Value::Object(out)
    }

    /// 0.1.0/0.2.0 hold one address per family: the first one wins, and
    /// routes follow the family of their destination.
    fn to_legacy(&self, ver: &str) -> Result<Value, Error> {
        let first = |v4: bool| {
            self.ips
                .iter()
                .find(|ip| ip.address.is_ipv4() == v4)
                .map(|ip| LegacyIp {
                    ip: ip.address,
                    gateway: ip.gateway,
                    routes: self
                        .routes
                        .iter()
                        .filter(|r| r.dst.is_ipv4() == v4)
                        .map(|r| LegacyRoute {
                            dst: r.dst,
                            gw: r.gw,
                        })
                        .collect(),
                })
        };
        let (ip4, ip6) = (first(true), first(false));
        if ip4.is_none() && ip6.is_none() {
            return Err(Error::internal("cannot convert: no valid IP addresses"));
        }
        let mut out = Map::new();
        out.insert("cniVersion".into(), ver.into());
        if let Some(ip4) = ip4 {
            out.insert("ip4".into(), json!(ip4));
        }
        if let Some(ip6) = ip6 {
            out.insert("ip6".into(), json!(ip6));
        }
        out.insert("dns".into(), json!(self.dns));
        Ok(Value::Object(out))
    }
}

fn legacy_route(r: &Route) -> Value {
    let mut m = Map::new();
    m.insert("dst".into(), r.dst.to_string().into());
    if let Some(gw) = r.gw {
        m.insert("gw".into(), gw.to_string().into());
    }
    Value::Object(m)
}

/// Parses "addr/prefix" strictly: a bare address is not a CIDR.
pub fn parse_cidr(s: &str) -> Result<IpNetwork, String> {
    if !s.contains('/') {
        return Err(format!("invalid CIDR address: {s}"));
    }
    s.parse::<IpNetwork>()
        .map_err(|_| format!("invalid CIDR address: {s}"))
}

/// Serde adapter for CIDR strings with host bits kept (`10.1.2.3/24`).
pub mod cidr {
    use ipnetwork::IpNetwork;
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(n: &IpNetwork, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(n)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<IpNetwork, D::Error> {
        let s = String::deserialize(d)?;
        super::parse_cidr(&s).map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_matches_in_any_case_like_go() {
        let dns = json!({"nameservers": ["10.0.0.53"], "domain": "cluster.local",
                         "search": ["svc"], "options": ["ndots:5"]});
        crate::json::check_key_spellings::<CniResult>(&json!({
            "cniVersion": "1.1.0",
            "interfaces": [{"name": "eth0", "mac": "0a:58:0a:01:02:03", "mtu": 1500,
                            "sandbox": "/run/netns/x", "socketPath": "/run/s.sock",
                            "pciID": "0000:00:01.0"}],
            "ips": [{"address": "10.1.2.3/24", "gateway": "10.1.2.1", "interface": 0}],
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.2.1", "mtu": 1400, "advmss": 1360,
                        "priority": 10, "table": 100, "scope": 0}],
            "dns": dns
        }))
        .unwrap();
        let block = json!({"ip": "10.1.2.3/24", "gateway": "10.1.2.1",
                           "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.2.1"}]});
        crate::json::check_key_spellings::<LegacyResult>(&json!({
            "ip4": block, "ip6": {"ip": "fd00::3/64", "gateway": "fd00::1",
                                  "routes": [{"dst": "::/0", "gw": "fd00::1"}]},
            "dns": dns
        }))
        .unwrap();
    }

    #[test]
    fn prev_result_version_key_in_any_case() {
        let v = json!({"CNIVersion": "0.2.0", "IP4": {"IP": "10.1.2.3/24", "Gateway": "10.1.2.1"}});
        let r = CniResult::from_value(&v, "1.0.0").unwrap();
        assert_eq!(r.cni_version, "0.2.0");
        assert_eq!(r.ips[0].address.to_string(), "10.1.2.3/24");
        let v = json!({"CniVersion": "1.0.0", "IPs": [{"Address": "10.1.2.3/24", "Interface": 1}]});
        let r = CniResult::from_value(&v, "").unwrap();
        assert_eq!(
            (r.cni_version.as_str(), r.ips[0].interface),
            ("1.0.0", Some(1))
        );
    }

    fn dual_stack() -> CniResult {
        CniResult {
            cni_version: "1.1.0".into(),
            interfaces: vec![
                Interface {
                    name: "cni0".into(),
                    mac: Some("0a:58:0a:01:02:01".into()),
                    ..Default::default()
                },
                Interface {
                    name: "eth0".into(),
                    mac: Some("0a:58:0a:01:02:03".into()),
                    mtu: Some(1500),
                    sandbox: Some("/var/run/netns/x".into()),
                    ..Default::default()
                },
            ],
            ips: vec![
                IpConfig {
                    address: "10.1.2.3/24".parse().unwrap(),
                    gateway: Some("10.1.2.1".parse().unwrap()),
                    interface: Some(1),
                },
                IpConfig {
                    address: "10.1.3.3/24".parse().unwrap(),
                    gateway: None,
                    interface: Some(1),
                },
                IpConfig {
                    address: "2001:db8::3/64".parse().unwrap(),
                    gateway: Some("2001:db8::1".parse().unwrap()),
                    interface: Some(1),
                },
            ],
            routes: vec![
                Route::new(
                    "0.0.0.0/0".parse().unwrap(),
                    Some("10.1.2.1".parse().unwrap()),
                ),
                Route {
                    table: Some(100),
                    ..Route::new("::/0".parse().unwrap(), None)
                },
            ],
            dns: Dns {
                nameservers: vec!["10.1.2.1".into()],
                ..Default::default()
            },
        }
    }

    #[test]
    fn v1_round_trip_keeps_everything() {
        let r = dual_stack();
        for ver in ["1.0.0", "1.1.0"] {
            let v = r.to_value(ver).unwrap();
            assert_eq!(v["cniVersion"], ver);
            assert_eq!(v["ips"][0]["address"], "10.1.2.3/24");
            assert!(v["ips"][0].get("version").is_none());
            assert_eq!(v["routes"][1]["table"], 100);
            let back = CniResult::from_value(&v, "").unwrap();
            assert_eq!(back.ips, r.ips);
            assert_eq!(back.routes, r.routes);
            assert_eq!(back.interfaces, r.interfaces);
        }
    }

    #[test]
    fn v04_adds_version_and_drops_new_fields() {
        let v = dual_stack().to_value("0.4.0").unwrap();
        assert_eq!(v["ips"][0]["version"], "4");
        assert_eq!(v["ips"][2]["version"], "6");
        assert_eq!(v["ips"][0]["interface"], 1);
        assert!(v["interfaces"][1].get("mtu").is_none());
        assert!(v["routes"][1].get("table").is_none());
        let back = CniResult::from_value(&v, "").unwrap();
        assert_eq!(back.ips.len(), 3);
        assert_eq!(back.cni_version, "0.4.0");
    }

    #[test]
    fn v04_always_has_dns() {
        let r = CniResult {
            ips: dual_stack().ips,
            ..Default::default()
        };
        for ver in ["0.3.0", "0.3.1", "0.4.0"] {
            assert_eq!(r.to_value(ver).unwrap()["dns"], json!({}));
        }
        assert!(r.to_value("1.0.0").unwrap().get("dns").is_none());
    }

    #[test]
    fn legacy_keeps_first_ip_per_family_and_splits_routes() {
        let v = dual_stack().to_value("0.2.0").unwrap();
        assert_eq!(
            v,
            json!({
                "cniVersion": "0.2.0",
                "ip4": {"ip": "10.1.2.3/24", "gateway": "10.1.2.1",
                        "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.2.1"}]},
                "ip6": {"ip": "2001:db8::3/64", "gateway": "2001:db8::1",
                        "routes": [{"dst": "::/0"}]},
                "dns": {"nameservers": ["10.1.2.1"]}
            })
        );
        let back = CniResult::from_value(&v, "").unwrap();
        assert_eq!(back.ips.len(), 2);
        assert_eq!(back.routes.len(), 2);
    }

    #[test]
    fn legacy_needs_an_address() {
        assert!(CniResult::default().to_value("0.1.0").is_err());
    }

    #[test]
    fn every_version_pair_converts() {
        let base = dual_stack();
        for from in version::SUPPORTED {
            let wire = base.to_value(from).unwrap();
            let parsed = CniResult::from_value(&wire, "").unwrap();
            for to in version::SUPPORTED {
                let out = parsed.to_value(to).unwrap();
                assert_eq!(out["cniVersion"], *to);
                let again = CniResult::from_value(&out, "").unwrap();
                // Addresses never change; only their number can drop going to 0.x legacy.
                assert_eq!(again.ips[0].address, base.ips[0].address, "{from} -> {to}");
            }
        }
    }

    #[test]
    fn default_version_applies_when_missing() {
        let v = json!({"ip4": {"ip": "10.0.0.2/8"}});
        let r = CniResult::from_value(&v, "0.2.0").unwrap();
        assert_eq!(r.ips[0].address.to_string(), "10.0.0.2/8");
        let v = json!({"ips": [{"address": "10.0.0.2/8"}]});
        assert_eq!(CniResult::from_value(&v, "1.0.0").unwrap().ips.len(), 1);
    }

    #[test]
    fn bad_results_are_decode_errors() {
        for v in [
            json!({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.2"}]}),
            json!({"cniVersion": "1.0.0", "ips": [{"address": "nope/8"}]}),
            json!({"cniVersion": "1.0.0", "ips": "x"}),
        ] {
            assert_eq!(CniResult::from_value(&v, "").unwrap_err().code, 6, "{v}");
        }
        assert_eq!(
            CniResult::from_value(&json!({"cniVersion": "7.0.0"}), "")
                .unwrap_err()
                .code,
            1
        );
    }
}
