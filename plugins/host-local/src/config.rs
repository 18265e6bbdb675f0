//! The host-local configuration: the wire form (serde) and its validation into the internal
//! form the allocator uses, with the reference's merge order (runtime `ipRanges`, then the
//! legacy top-level range, then `ranges`) and its error texts.

use std::net::IpAddr;
use std::path::PathBuf;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Deserializer};

use crate::range::{Cidr, Family, Range, RangeSet, parse_ip};

/// Where reservations live when the config names no `dataDir`.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/networks";

/// A route handed back verbatim in the result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    pub dst: IpNetwork,
    pub gw: Option<IpAddr>,
    pub mtu: Option<u32>,
    pub advmss: Option<u32>,
    pub priority: Option<u32>,
    pub table: Option<u32>,
    pub scope: Option<u8>,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct IpamConfig {
    pub ranges: Vec<RangeSet>,
    pub routes: Vec<RouteSpec>,
    pub data_dir: PathBuf,
    pub resolv_conf: Option<PathBuf>,
    /// Requested addresses in the reference's order: CNI_ARGS `IP`, `args.cni.ips`,
    /// runtimeConfig `ips`. Duplicates removed, order kept.
    pub requested: Vec<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The JSON does not have the expected shape (wrong types).
    #[error("{0}")]
    Decode(String),
    /// The values are not acceptable; the text is the reference's where it has one.
    #[error("{0}")]
    Invalid(String),
    /// The CNI_ARGS `IP` value does not parse.
    #[error("{0}")]
    Args(String),
}

fn invalid(msg: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(msg.into())
}

// ---------------------------------------------------------------------------------------
// Wire form. Every field is optional so that "absent", "null" and "" can be told apart
// where the reference treats them differently.

#[derive(Debug, Default, Deserialize)]
struct WireNet {
    #[serde(default)]
    ipam: Option<WireIpam>,
    #[serde(default, rename = "runtimeConfig")]
    runtime_config: Option<WireRuntime>,
    #[serde(default)]
    args: Option<WireArgs>,
}

#[derive(Debug, Default, Deserialize)]
struct WireIpam {
    #[serde(default, deserialize_with = "null_is_empty")]
    subnet: Option<String>,
    #[serde(default, rename = "rangeStart")]
    range_start: Option<String>,
    #[serde(default, rename = "rangeEnd")]
    range_end: Option<String>,
    #[serde(default)]
    gateway: Option<String>,
    #[serde(default)]
    routes: Option<Vec<Option<WireRoute>>>,
    #[serde(default, rename = "dataDir")]
    data_dir: Option<String>,
    #[serde(default, rename = "resolvConf")]
    resolv_conf: Option<String>,
    #[serde(default)]
    ranges: Option<Vec<Option<Vec<Option<WireRange>>>>>,
}

#[derive(Debug, Default, Deserialize)]
struct WireRange {
    #[serde(default, deserialize_with = "null_is_empty")]
    subnet: Option<String>,
    #[serde(default, rename = "rangeStart")]
    range_start: Option<String>,
    #[serde(default, rename = "rangeEnd")]
    range_end: Option<String>,
    #[serde(default)]
    gateway: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct WireRoute {
    #[serde(default, deserialize_with = "null_is_empty")]
    dst: Option<String>,
    #[serde(default)]
    gw: Option<String>,
    #[serde(default)]
    mtu: Option<u32>,
    #[serde(default)]
    advmss: Option<u32>,
    #[serde(default)]
    priority: Option<u32>,
    #[serde(default)]
    table: Option<u32>,
    #[serde(default)]
    scope: Option<u8>,
}

#[derive(Debug, Default, Deserialize)]
struct WireRuntime {
    #[serde(default, rename = "ipRanges")]
    ip_ranges: Option<Vec<Option<Vec<Option<WireRange>>>>>,
    #[serde(default)]
    ips: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
struct WireArgs {
    #[serde(default)]
    cni: Option<WireCniArgs>,
}

#[derive(Debug, Default, Deserialize)]
struct WireCniArgs {
    #[serde(default)]
    ips: Option<Vec<String>>,
}

/// A CIDR field given as `null` decodes like `""` in the reference (and then fails to
/// parse), unlike an absent field.
fn null_is_empty<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Some(Option::<String>::deserialize(d)?.unwrap_or_default()))
}

// ---------------------------------------------------------------------------------------
// Validation.

/// The request-level inputs the config is validated against.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// The conf's `cniVersion` as written (used for the one-address-per-family rule).
    pub cni_version: &'a str,
    /// The CNI_ARGS `IP` value, if the key was given.
    pub env_ip: Option<&'a str>,
}

/// Parses and validates the whole plugin conf (IPAM plugins receive the full network conf).
pub fn load(stdin: &[u8], ctx: Context<'_>) -> Result<IpamConfig, ConfigError> {
    let net: WireNet = cni_types::json::from_slice(stdin)
        .map_err(|e| ConfigError::Decode(format!("error parsing IPAM config: {e}")))?;
    validate(net, ctx)
}

fn wire_ip(s: &Option<String>) -> Result<Option<IpAddr>, ConfigError> {
    match s.as_deref() {
        None | Some("") => Ok(None),
        Some(t) => parse_ip(t)
            .map(Some)
            .ok_or_else(|| invalid(format!("invalid IP address: {t}"))),
    }
}

fn wire_cidr(s: &Option<String>) -> Result<Option<Cidr>, ConfigError> {
    match s.as_deref() {
        None => Ok(None),
        Some(t) => Cidr::parse(t)
            .map(Some)
            .ok_or_else(|| invalid(format!("invalid CIDR address: {t}"))),
    }
}

/// A requested address: `ip` or `ip/prefix` (prefix ignored), the reference's `ip.IP`.
fn requested_ip(s: &str) -> Result<IpAddr, ConfigError> {
    if s.is_empty() {
        return Err(invalid("cannot understand ip: IP <nil> not v4 nor v6"));
    }
    let parsed = if s.contains('/') {
        Cidr::parse(s).map(|c| c.addr)
    } else {
        parse_ip(s)
    };
    parsed.ok_or_else(|| invalid(format!("invalid IP address {s}")))
}

/// Parses every field of one range before any range validation runs, as the reference's
/// JSON decoding does.
fn parse_range(w: &WireRange) -> Result<ParsedRange, ConfigError> {
    Ok(ParsedRange {
        subnet: wire_cidr(&w.subnet)?,
        start: wire_ip(&w.range_start)?,
        end: wire_ip(&w.range_end)?,
        gateway: wire_ip(&w.gateway)?,
    })
}

struct ParsedRange {
    subnet: Option<Cidr>,
    start: Option<IpAddr>,
    end: Option<IpAddr>,
    gateway: Option<IpAddr>,
}

type WireSets = Vec<Option<Vec<Option<WireRange>>>>;

fn parse_sets(sets: &Option<WireSets>) -> Result<Vec<Vec<ParsedRange>>, ConfigError> {
    let default = WireRange::default();
    let mut out = Vec::new();
    for set in sets.iter().flatten() {
        let mut ranges = Vec::new();
        for r in set.iter().flatten() {
            ranges.push(parse_range(r.as_ref().unwrap_or(&default))?);
        }
        out.push(ranges);
    }
    Ok(out)
}

fn parse_route(w: &WireRoute) -> Result<RouteSpec, ConfigError> {
    let dst = match wire_cidr(&w.dst)? {
        Some(c) => IpNetwork::new(c.addr, c.prefix)
            .map_err(|_| invalid(format!("invalid CIDR address: {}", c.display())))?,
        None => return Err(invalid("invalid route: missing dst")),
    };
    // Go drops a zero mtu/advmss/priority on output (omitempty); do the same.
    let nonzero = |v: Option<u32>| v.filter(|&x| x != 0);
    Ok(RouteSpec {
        dst,
        gw: wire_ip(&w.gw)?,
        mtu: nonzero(w.mtu),
        advmss: nonzero(w.advmss),
        priority: nonzero(w.priority),
        table: w.table,
        scope: w.scope,
    })
}

/// `a >= b` for dotted versions; anything unparsable counts as older, as in the reference.
fn version_at_least(v: &str, min: (u64, u64, u64)) -> bool {
    let mut parts = v.split('.').map(|p| p.parse::<u64>());
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(Ok(a)), Some(Ok(b)), Some(Ok(c)), None) => (a, b, c) >= min,
        _ => false,
    }
}

/// Checks a decoded config and builds the validated one, in the reference's order:
/// every JSON value is parsed before any semantic check, then the requested addresses,
/// then the range sets one by one, then the checks across sets.
fn validate(net: WireNet, ctx: Context<'_>) -> Result<IpamConfig, ConfigError> {
    let ipam = net
        .ipam
        .ok_or_else(|| invalid("IPAM config missing 'ipam' key"))?;

    // Parse everything that came as JSON first: the reference fails on these while
    // decoding, before any semantic check.
    let legacy = legacy_range(&ipam)?;
    let conf_sets = parse_sets(&ipam.ranges)?;
    let runtime = net.runtime_config.unwrap_or_default();
    let runtime_sets = parse_sets(&runtime.ip_ranges)?;
    let routes = parse_routes(&ipam.routes)?;
    let arg_ips = net
        .args
        .and_then(|a| a.cni)
        .and_then(|c| c.ips)
        .unwrap_or_default();
    let runtime_ips = runtime.ips.unwrap_or_default();

    let requested = requested_ips(ctx.env_ip, &arg_ips, &runtime_ips)?;
    let ranges = build_sets(ordered_sets(runtime_sets, legacy, conf_sets)?)?;
    check_addresses_per_family(&ranges, ctx.cni_version)?;
    check_no_overlap(&ranges)?;

    Ok(IpamConfig {
        ranges,
        routes,
        data_dir: data_dir(ipam.data_dir.as_deref()),
        resolv_conf: ipam
            .resolv_conf
            .filter(|s| !s.is_empty())
            .map(PathBuf::from),
        requested,
    })
}

/// The legacy single range (`subnet`, `rangeStart`, ... at the top of `ipam`).
fn legacy_range(ipam: &WireIpam) -> Result<ParsedRange, ConfigError> {
    Ok(ParsedRange {
        subnet: wire_cidr(&ipam.subnet)?,
        start: wire_ip(&ipam.range_start)?,
        end: wire_ip(&ipam.range_end)?,
        gateway: wire_ip(&ipam.gateway)?,
    })
}

fn parse_routes(routes: &Option<Vec<Option<WireRoute>>>) -> Result<Vec<RouteSpec>, ConfigError> {
    routes.iter().flatten().flatten().map(parse_route).collect()
}

/// `CNI_ARGS` `IP=` first, then `args.cni.ips` and `runtimeConfig.ips`, without
/// repeats.
fn requested_ips(
    env_ip: Option<&str>,
    arg_ips: &[String],
    runtime_ips: &[String],
) -> Result<Vec<IpAddr>, ConfigError> {
    let mut requested: Vec<IpAddr> = Vec::new();
    if let Some(v) = env_ip.filter(|v| !v.is_empty()) {
        let ip = requested_ip(v).map_err(|e| {
            ConfigError::Args(format!("ARGS: error parsing value of pair \"IP={v}\": {e}"))
        })?;
        requested.push(ip);
    }
    for s in arg_ips.iter().chain(runtime_ips.iter()) {
        let ip = requested_ip(s)?;
        if !requested.contains(&ip) {
            requested.push(ip);
        }
    }
    Ok(requested)
}

/// Runtime ranges first, then the legacy single range, then `ranges`.
fn ordered_sets(
    runtime_sets: Vec<Vec<ParsedRange>>,
    legacy: ParsedRange,
    conf_sets: Vec<Vec<ParsedRange>>,
) -> Result<Vec<Vec<ParsedRange>>, ConfigError> {
    let mut parsed = runtime_sets;
    if legacy.subnet.is_some() {
        parsed.push(vec![legacy]);
    }
    parsed.extend(conf_sets);
    if parsed.is_empty() {
        return Err(invalid("no IP ranges specified"));
    }
    Ok(parsed)
}

fn build_sets(parsed: Vec<Vec<ParsedRange>>) -> Result<Vec<RangeSet>, ConfigError> {
    parsed
        .into_iter()
        .enumerate()
        .map(|(i, set)| build_set(i, set))
        .collect()
}

/// Range set `i`: each range checked in order, then the set's family and overlaps.
fn build_set(i: usize, set: Vec<ParsedRange>) -> Result<RangeSet, ConfigError> {
    let mut built = Vec::with_capacity(set.len());
    let mut failure = None;
    for r in set {
        match Range::new(r.subnet, r.start, r.end, r.gateway) {
            Ok(r) => built.push(r),
            Err(e) => {
                failure = Some(e.to_string());
                break;
            }
        }
    }
    // A bad range is reported before the set's family and overlap checks, unless the
    // families already mixed before it (the reference checks per range in order).
    match failure {
        Some(e) => {
            let mixed = built.windows(2).any(|w| w[0].family() != w[1].family());
            let msg = if mixed {
                "mixed address families".to_string()
            } else {
                e
            };
            Err(invalid(format!("invalid range set {i}: {msg}")))
        }
        None => RangeSet::new(built).map_err(|e| invalid(format!("invalid range set {i}: {e}"))),
    }
}

/// Before 0.3.0 a result holds one address per family.
fn check_addresses_per_family(ranges: &[RangeSet], cni_version: &str) -> Result<(), ConfigError> {
    let v4 = ranges.iter().filter(|s| s.family() == Family::V4).count();
    let v6 = ranges.len() - v4;
    if (v4 > 1 || v6 > 1) && !version_at_least(cni_version, (0, 3, 0)) {
        return Err(invalid(format!(
            "CNI version {cni_version} does not support more than 1 address per family"
        )));
    }
    Ok(())
}

fn check_no_overlap(ranges: &[RangeSet]) -> Result<(), ConfigError> {
    for (i, a) in ranges.iter().enumerate() {
        for (j, b) in ranges.iter().enumerate().skip(i + 1) {
            if a.overlaps(b) {
                return Err(invalid(format!("range set {i} overlaps with {j}")));
            }
        }
    }
    Ok(())
}

fn data_dir(configured: Option<&str>) -> PathBuf {
    match configured {
        None | Some("") => PathBuf::from(DEFAULT_DATA_DIR),
        Some(d) => PathBuf::from(d),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(v: &str) -> Context<'_> {
        Context {
            cni_version: v,
            env_ip: None,
        }
    }

    fn load_str(s: &str) -> Result<IpamConfig, ConfigError> {
        load(s.as_bytes(), ctx("1.0.0"))
    }

    fn conf(ipam: &str) -> String {
        format!(
            r#"{{"cniVersion":"1.0.0","name":"mynet","type":"bridge","ipam":{{"type":"host-local",{ipam}}}}}"#
        )
    }

    fn err(ipam: &str) -> String {
        load_str(&conf(ipam)).unwrap_err().to_string()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn two_range_sets_dual_stack() {
        let c = load_str(&conf(
            r#""ranges":[[{"subnet":"10.1.2.0/24"}],[{"subnet":"2001:db8:1::/64"}]],
               "routes":[{"dst":"0.0.0.0/0"},{"dst":"192.168.0.0/16","gw":"10.1.2.9"}],
               "dataDir":"/tmp/x","resolvConf":"/etc/resolv.conf""#,
        ))
        .unwrap();
        assert_eq!(c.ranges.len(), 2);
        assert_eq!(c.ranges[0].to_string(), "10.1.2.1-10.1.2.254");
        assert_eq!(
            c.ranges[1].to_string(),
            "2001:db8:1::1-2001:db8:1:0:ffff:ffff:ffff:ffff"
        );
        assert_eq!(c.routes.len(), 2);
        assert_eq!(c.routes[1].gw, Some(ip("10.1.2.9")));
        assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(c.resolv_conf, Some(PathBuf::from("/etc/resolv.conf")));
    }

    #[test]
    fn defaults() {
        let c = load_str(&conf(r#""subnet":"10.1.2.0/24""#)).unwrap();
        assert_eq!(c.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert_eq!(c.resolv_conf, None);
        assert!(c.routes.is_empty());
        assert!(c.requested.is_empty());
        let c = load_str(&conf(
            r#""subnet":"10.1.2.0/24","dataDir":"","resolvConf":"""#,
        ))
        .unwrap();
        assert_eq!(c.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert_eq!(c.resolv_conf, None);
    }

    #[test]
    fn merge_order_runtime_then_legacy_then_ranges() {
        let s = r#"{"cniVersion":"0.4.0","name":"n","ipam":{"type":"host-local",
            "subnet":"10.1.3.0/24","rangeStart":"10.1.3.10","gateway":"10.1.3.254",
            "ranges":[[{"subnet":"10.1.4.0/24"}]]},
            "runtimeConfig":{"ipRanges":[[{"subnet":"10.1.5.0/24"}]]}}"#;
        let c = load(s.as_bytes(), ctx("0.4.0")).unwrap();
        let shown: Vec<String> = c.ranges.iter().map(|r| r.to_string()).collect();
        assert_eq!(
            shown,
            [
                "10.1.5.1-10.1.5.254",
                "10.1.3.10-10.1.3.254",
                "10.1.4.1-10.1.4.254"
            ]
        );
        assert_eq!(c.ranges[1].ranges()[0].gateway, ip("10.1.3.254"));
    }

    #[test]
    fn legacy_fields_without_subnet_are_ignored() {
        assert_eq!(err(r#""rangeStart":"10.1.2.3""#), "no IP ranges specified");
    }

    #[test]
    fn requested_ips_order_and_forms() {
        let s = r#"{"cniVersion":"1.0.0","name":"n","ipam":{"type":"host-local",
            "ranges":[[{"subnet":"10.1.2.0/24"}],[{"subnet":"2001:db8::/64"}]]},
            "args":{"cni":{"ips":["10.1.2.5/24","2001:db8::5"]}},
            "runtimeConfig":{"ips":["10.1.2.5","::ffff:10.1.2.6"]}}"#;
        let c = load(
            s.as_bytes(),
            Context {
                cni_version: "1.0.0",
                env_ip: Some("10.1.2.7"),
            },
        )
        .unwrap();
        assert_eq!(
            c.requested,
            [
                ip("10.1.2.7"),
                ip("10.1.2.5"),
                ip("2001:db8::5"),
                ip("10.1.2.6")
            ]
        );
        let c = load(
            s.as_bytes(),
            Context {
                cni_version: "1.0.0",
                env_ip: Some(""),
            },
        )
        .unwrap();
        assert_eq!(c.requested.len(), 3);
    }

    #[test]
    fn requested_ip_errors() {
        let base = r#"{"cniVersion":"1.0.0","name":"n","ipam":{"type":"host-local","subnet":"10.1.2.0/24"}"#;
        let e = load(
            format!("{base},\"runtimeConfig\":{{\"ips\":[\"bad\"]}}}}").as_bytes(),
            ctx("1.0.0"),
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "invalid IP address bad");
        let e = load(
            format!("{base},\"args\":{{\"cni\":{{\"ips\":[\"10.1.3.9/99\"]}}}}}}").as_bytes(),
            ctx("1.0.0"),
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "invalid IP address 10.1.3.9/99");
        let e = load(
            format!("{base},\"args\":{{\"cni\":{{\"ips\":[\"\"]}}}}}}").as_bytes(),
            ctx("1.0.0"),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "cannot understand ip: IP <nil> not v4 nor v6"
        );
        let e = load(
            format!("{base}}}").as_bytes(),
            Context {
                cni_version: "1.0.0",
                env_ip: Some("foo"),
            },
        )
        .unwrap_err();
        assert_eq!(
            e,
            ConfigError::Args(
                "ARGS: error parsing value of pair \"IP=foo\": invalid IP address foo".into()
            )
        );
    }

    #[test]
    fn validation_table() {
        let cases: &[(&str, &str)] = &[
            (r#""ranges":[]"#, "no IP ranges specified"),
            (r#""ranges":null"#, "no IP ranges specified"),
            (r#""ranges":[[]]"#, "invalid range set 0: empty range set"),
            (r#""ranges":[null]"#, "invalid range set 0: empty range set"),
            (
                r#""ranges":[[{"subnet":"10.1.2.1/24"}]]"#,
                "invalid range set 0: Network has host bits set. For a subnet mask of length 24 the network address is 10.1.2.0",
            ),
            (
                r#""ranges":[[{"subnet":"10.1.2.0/31"}]]"#,
                "invalid range set 0: Network 10.1.2.0/31 too small to allocate from",
            ),
            (
                r#""ranges":[[{"subnet":"2001:db8::/128"}]]"#,
                "invalid range set 0: Network 2001:db8::/128 too small to allocate from",
            ),
            (
                r#""ranges":[[{"subnet":"10.1.2.0/33"}]]"#,
                "invalid CIDR address: 10.1.2.0/33",
            ),
            (
                r#""ranges":[[{"subnet":"10.1.2.0"}]]"#,
                "invalid CIDR address: 10.1.2.0",
            ),
            (r#""ranges":[[{"subnet":""}]]"#, "invalid CIDR address: "),
            (r#""ranges":[[{"subnet":null}]]"#, "invalid CIDR address: "),
            (
                r#""ranges":[[{"rangeStart":"10.1.2.3"}]]"#,
                "invalid range set 0: IP <nil> not v4 nor v6",
            ),
            (
                r#""ranges":[[null]]"#,
                "invalid range set 0: IP <nil> not v4 nor v6",
            ),
            (
                r#""ranges":[[{"subnet":"::ffff:10.1.2.0/120"}]]"#,
                "invalid range set 0: IPNet IP and Mask version mismatch",
            ),
            (
                r#""ranges":[[{"subnet":"10.1.2.0/24","rangeStart":"10.1.3.1"}]]"#,
                "invalid range set 0: RangeStart 10.1.3.1 not in network 10.1.2.0/24",
            ),
            (
                r#""ranges":[[{"subnet":"10.1.2.0/24","rangeEnd":"10.1.3.1"}]]"#,
                "invalid range set 0: RangeEnd 10.1.3.1 not in network 10.1.2.0/24",
            ),
            (
                r#""ranges":[[{"subnet":"10.1.2.0/24","rangeStart":"foo"}]]"#,
                "invalid IP address: foo",
            ),
            (
                r#""ranges":[[{"subnet":"10.1.2.0/24"},{"subnet":"10.1.2.0/25"}]]"#,
                "invalid range set 0: subnets 10.1.2.1-10.1.2.254 and 10.1.2.1-10.1.2.126 overlap",
            ),
            (
                r#""ranges":[[{"subnet":"10.1.2.0/24"}],[{"subnet":"10.1.2.0/25"}]]"#,
                "range set 0 overlaps with 1",
            ),
            (
                r#""ranges":[[{"subnet":"10.1.1.0/24"}],[{"subnet":"10.1.3.0/24"}],[{"subnet":"10.1.3.128/25"}]]"#,
                "range set 1 overlaps with 2",
            ),
            (
                r#""ranges":[[{"subnet":"10.1.2.0/24"},{"subnet":"2001:db8::/64"}]]"#,
                "invalid range set 0: mixed address families",
            ),
            (
                r#""ranges":[[{"subnet":"10.1.2.0/24"},{"subnet":"2001:db8::/64"},{"subnet":"10.1.2.0/31"}]]"#,
                "invalid range set 0: mixed address families",
            ),
            (
                r#""ranges":[[{"subnet":"10.1.2.0/24"}],[{"subnet":"10.1.3.0/24","gateway":"x"}]]"#,
                "invalid IP address: x",
            ),
            (
                r#""subnet":"10.1.2.0/24","routes":[{"dst":"bad"}]"#,
                "invalid CIDR address: bad",
            ),
            (
                r#""subnet":"10.1.2.0/24","routes":[{"gw":"1.1.1.1"}]"#,
                "invalid route: missing dst",
            ),
        ];
        for (ipam, want) in cases {
            assert_eq!(err(ipam), *want, "{ipam}");
        }
    }

    #[test]
    fn cni_version_below_030_allows_one_per_family() {
        let two_v4 = conf(r#""ranges":[[{"subnet":"10.1.2.0/24"}],[{"subnet":"10.1.3.0/24"}]]"#);
        for v in ["0.1.0", "0.2.0", "", "junk"] {
            let e = load(two_v4.as_bytes(), ctx(v)).unwrap_err();
            assert_eq!(
                e.to_string(),
                format!("CNI version {v} does not support more than 1 address per family")
            );
        }
        for v in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
            assert!(load(two_v4.as_bytes(), ctx(v)).is_ok(), "{v}");
        }
        let dual = conf(r#""ranges":[[{"subnet":"10.1.2.0/24"}],[{"subnet":"2001:db8::/64"}]]"#);
        assert!(load(dual.as_bytes(), ctx("0.2.0")).is_ok());
    }

    #[test]
    fn missing_ipam() {
        for s in [
            r#"{"cniVersion":"1.0.0","name":"n"}"#,
            r#"{"cniVersion":"1.0.0","name":"n","ipam":null}"#,
        ] {
            assert_eq!(
                load_str(s).unwrap_err().to_string(),
                "IPAM config missing 'ipam' key"
            );
        }
    }

    #[test]
    fn wrong_types_are_decode_errors() {
        for ipam in [
            r#""ranges":"x""#,
            r#""dataDir":5"#,
            r#""ranges":[[{"subnet":5}]]"#,
            r#""routes":{}"#,
        ] {
            let e = load_str(&conf(ipam)).unwrap_err();
            assert!(matches!(e, ConfigError::Decode(_)), "{ipam}: {e:?}");
        }
        assert!(matches!(
            load_str("not json").unwrap_err(),
            ConfigError::Decode(_)
        ));
        assert!(matches!(
            load_str(r#"{"ipam":"host-local"}"#).unwrap_err(),
            ConfigError::Decode(_)
        ));
    }

    #[test]
    fn keys_match_case_insensitively_like_go() {
        let s = r#"{"cniVersion":"1.0.0","name":"n","IPAM":{"type":"host-local",
            "DataDir":"/tmp/q","Ranges":[[{"Subnet":"10.1.2.0/24","RANGESTART":"10.1.2.9"}]],
            "ROUTES":[{"DST":"0.0.0.0/0"}]},"RuntimeConfig":{"IPS":["10.1.2.20"]}}"#;
        let c = load_str(s).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/tmp/q"));
        assert_eq!(c.ranges[0].to_string(), "10.1.2.9-10.1.2.254");
        assert_eq!(c.routes.len(), 1);
        assert_eq!(c.requested, [ip("10.1.2.20")]);
        // Keys differing only in case set the same field and the last one wins, exact
        // or not; a later object decodes on top of an earlier one (measured with the
        // reference host-local v1.1.1).
        let s = r#"{"name":"n","ipam":{"datadir":"/a","dataDir":"/b","subnet":"10.1.2.0/24"}}"#;
        assert_eq!(load_str(s).unwrap().data_dir, PathBuf::from("/b"));
        let s = r#"{"name":"n","ipam":{"dataDir":"/b","datadir":"/a","subnet":"10.1.2.0/24"}}"#;
        assert_eq!(load_str(s).unwrap().data_dir, PathBuf::from("/a"));
        let s = r#"{"name":"n","ipam":{"subnet":"10.1.2.0/24"},"IPAM":{"dataDir":"/m"}}"#;
        let c = load_str(s).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/m"));
        assert_eq!(c.ranges[0].to_string(), "10.1.2.1-10.1.2.254");
    }

    #[test]
    fn every_key_matches_in_any_case_like_go() {
        let range = serde_json::json!({"subnet": "10.1.2.0/24", "rangeStart": "10.1.2.10",
                                       "rangeEnd": "10.1.2.20", "gateway": "10.1.2.1"});
        cni_types::json::check_key_spellings::<WireNet>(&serde_json::json!({
            "ipam": {
                "subnet": "10.1.3.0/24", "rangeStart": "10.1.3.10", "rangeEnd": "10.1.3.20",
                "gateway": "10.1.3.1", "dataDir": "/tmp/d", "resolvConf": "/etc/r.conf",
                "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.2.1", "mtu": 1400, "advmss": 1360,
                            "priority": 5, "table": 100, "scope": 0}],
                "ranges": [[range]]
            },
            "runtimeConfig": {"ipRanges": [[range]], "ips": ["10.1.2.11"]},
            "args": {"cni": {"ips": ["10.1.2.12"]}}
        }))
        .unwrap();
    }

    #[test]
    fn containerd_ip_ranges_spelling() {
        // go-cni's IPRanges has no JSON tags: containerd sends Go's field names.
        let s = r#"{"cniVersion":"1.0.0","name":"n","ipam":{"type":"host-local"},
            "runtimeConfig":{"ipRanges":[[{"Subnet":"10.9.0.0/24","RangeStart":"10.9.0.5",
            "RangeEnd":"10.9.0.9","Gateway":"10.9.0.1"}]]}}"#;
        let c = load_str(s).unwrap();
        assert_eq!(c.ranges[0].to_string(), "10.9.0.5-10.9.0.9");
    }

    #[test]
    fn route_fields() {
        let c = load_str(&conf(
            r#""subnet":"10.1.2.0/24","routes":[{"dst":"10.9.0.1/16","gw":"","mtu":0,"advmss":1400,"table":0,"scope":253}]"#,
        ))
        .unwrap();
        let r = &c.routes[0];
        assert_eq!(r.dst.to_string(), "10.9.0.1/16");
        assert_eq!(r.gw, None);
        assert_eq!(r.mtu, None);
        assert_eq!(r.advmss, Some(1400));
        assert_eq!(r.table, Some(0));
        assert_eq!(r.scope, Some(253));
    }

    #[test]
    fn gateway_outside_subnet_is_accepted() {
        let c = load_str(&conf(
            r#""ranges":[[{"subnet":"10.1.2.0/24","gateway":"1.2.3.4"}]]"#,
        ))
        .unwrap();
        assert_eq!(c.ranges[0].ranges()[0].gateway, ip("1.2.3.4"));
    }
}
