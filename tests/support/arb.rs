//! Strategies for the property tests of every parser of untrusted input: JSON whose
//! keys are the ones the parser looks for (in any spelling, since keys match as Go's
//! `encoding/json` matches them) mixed with others, and whose values are anything:
//! shaped like what runtimes send, or not at all.
//!
//! Case counts come from `PROPTEST_CASES` (small by default, so CI stays quick; set
//! thousands by hand).

use proptest::prelude::*;
use proptest::test_runner::Config;
use serde_json::{Map, Number, Value};

/// Cases per property unless `PROPTEST_CASES` says otherwise.
pub const DEFAULT_CASES: u32 = 64;

/// The runner config: `PROPTEST_CASES` or [`DEFAULT_CASES`], and no failure
/// persistence files in the source tree.
pub fn cases() -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CASES);
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

/// Strings a parser meets: addresses, CIDRs, versions, names, numbers as text, and
/// arbitrary text.
pub fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => proptest::sample::select(&[
            "", "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0", "2.0.0", "1.0",
            "10.1.2.0/24", "10.1.2.3/24", "10.1.2.1", "10.1.2.0/33", "0.0.0.0/0", "::/0",
            "2001:db8::/64", "2001:db8::1", "fe80::1%eth0", "fd00::/129", "255.255.255.255/32",
            "eth0", "cni0", "host-local", "bridge", "portmap", "tcp", "udp", "sctp", "icmp",
            "iptables", "nftables", "nftables-sets", "c2:11:22:33:44:55", "zz:11", "true", "1",
            "-1", "65536", "/var/lib/cni/networks", "../..", "a b", "\u{212a}", "\0",
        ][..])
        .prop_map(str::to_owned),
        1 => "[a-zA-Z0-9_.:/-]{0,24}",
        1 => any::<String>(),
    ]
}

/// One of `known`, as written or in another case (`hostPort`, `HostPort`, `HOSTPORT`),
/// or any other key.
pub fn key(known: &'static [&'static str]) -> impl Strategy<Value = String> {
    let spelled = (proptest::sample::select(known), 0..4u8).prop_map(|(k, how)| match how {
        0 | 1 => k.to_owned(),
        2 => k.to_ascii_uppercase(),
        _ => {
            let mut c = k.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        }
    });
    prop_oneof![4 => spelled, 1 => text()]
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        (0u64..70_000).prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter_map("finite", Number::from_f64)
            .prop_map(Value::Number),
        text().prop_map(Value::String),
    ]
}

/// Any JSON value whose object keys lean towards `known`, nested a few levels deep.
pub fn json(known: &'static [&'static str]) -> impl Strategy<Value = Value> {
    leaf().prop_recursive(4, 48, 8, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            proptest::collection::vec((key(known), inner), 0..8)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// An object with keys leaning towards `known` (what a parser of a config expects at
/// its top level).
pub fn object(known: &'static [&'static str]) -> impl Strategy<Value = Value> {
    proptest::collection::vec((key(known), json(known)), 0..10)
        .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>()))
}

/// `base` with some of its keys set to arbitrary values: near-valid input, the kind
/// that gets furthest into a parser.
pub fn mutated(base: Value, known: &'static [&'static str]) -> impl Strategy<Value = Value> {
    proptest::collection::vec((key(known), json(known)), 0..4).prop_map(move |changes| {
        let mut v = base.clone();
        if let Value::Object(m) = &mut v {
            for (k, val) in changes {
                m.insert(k, val);
            }
        }
        v
    })
}

/// Bytes for stdin: arbitrary bytes, or the text of a JSON value with a few bytes
/// damaged, cut off or duplicated.
pub fn bytes(known: &'static [&'static str]) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        1 => proptest::collection::vec(any::<u8>(), 0..256),
        3 => (json(known), proptest::collection::vec((any::<usize>(), any::<u8>()), 0..3), any::<usize>())
            .prop_map(|(v, damage, cut)| {
                let mut b = v.to_string().into_bytes();
                for (at, byte) in damage {
                    if !b.is_empty() {
                        let i = at % b.len();
                        b[i] = byte;
                    }
                }
                if cut % 4 == 0 && !b.is_empty() {
                    b.truncate(cut % b.len());
                }
                b
            }),
    ]
}
