//! JSON decoding with Go's key matching, for everything a runtime or another
//! plugin sends us.
//!
//! The reference plugins decode with Go's `encoding/json`, which matches an
//! object key to a struct field by exact name first and, failing that,
//! case-insensitively. Runtimes rely on it: containerd's CRI plugin sends
//! `runtimeConfig.portMappings` with Go's field names (`"HostPort"`,
//! `"ContainerPort"`, `"HostIP"`). So every decode of untrusted input goes
//! through [`from_slice`] / [`from_value`] here, never `serde_json` directly.
//!
//! How: a deserializer wraps serde_json's and, whenever serde asks for a
//! struct, renames each key to the field it matches under Go's rule. serde's
//! derive passes the field names (with aliases) to `deserialize_struct`, so
//! every derived struct gets this for free, at any depth, and a new field
//! cannot be forgotten. Maps (`Map<String, Value>`, `HashMap`) keep their keys
//! as they are, as Go's maps do. `stream` does it as the bytes are read (as
//! fast as plain serde_json); `value` does it on a parsed [`Value`].
//!
//! Several keys of one object that match the same field (`"hostPort"` and
//! `"HostPort"`, or the same key twice) behave as in Go: the last one wins,
//! and when it and the earlier one are both objects, the later one is decoded
//! on top of the earlier one, field by field. Streaming cannot know what comes
//! later, so such input is decoded again on the `value` path.

mod stream;
mod value;

use serde::de::DeserializeOwned;
use serde_json::Value;

pub use value::check_key_spellings;

pub type Error = serde_json::Error;

/// Decodes `bytes` into `T` with Go's key matching.
pub fn from_slice<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    match T::deserialize(stream::Go(&mut de)).and_then(|t| de.end().map(|()| t)) {
        // A field given twice: Go's last-wins needs the whole object first.
        Err(e) if stream::is_repeated(&e) => from_value(serde_json::from_slice(bytes)?),
        other => other,
    }
}

/// Decodes an already parsed value into `T` with Go's key matching.
pub fn from_value<T: DeserializeOwned>(value: Value) -> Result<T, Error> {
    value::decode(value)
}

/// The value Go would decode into a field named `field` of a struct: that of
/// the last key of `object` matching it, exactly or case-insensitively. For
/// the few places that read one key of an object kept raw.
pub fn get<'a>(object: &'a Value, field: &str) -> Option<&'a Value> {
    let map = object.as_object()?;
    map.iter()
        .rev()
        .find(|(k, _)| same_folded(k, field))
        .map(|(_, v)| v)
}

/// The index of the field Go's `encoding/json` decodes `key` into: an exact
/// match first, else the first field (in declaration order) that matches
/// case-insensitively.
fn field_index(key: &str, fields: &[&str]) -> Option<usize> {
    fields
        .iter()
        .position(|f| *f == key)
        .or_else(|| fields.iter().position(|f| same_folded(key, f)))
}

/// Whether Go's `encoding/json` treats `a` and `b` as the same name. It folds
/// each rune as `ToUpper(ToLower(r))` with Unicode's simple mappings, ASCII
/// letters to upper case (so `K`, the Kelvin sign, matches `k`, and `ſ`
/// matches `s`, as in Go).
fn same_folded(a: &str, b: &str) -> bool {
    if a.is_ascii() && b.is_ascii() {
        return a.eq_ignore_ascii_case(b);
    }
    a.chars().map(fold_rune).eq(b.chars().map(fold_rune))
}

fn fold_rune(r: char) -> char {
    if r.is_ascii() {
        return r.to_ascii_uppercase();
    }
    upper(lower(r))
}

/// Unicode's simple lower-case mapping: the one-rune result, else the rune.
fn lower(r: char) -> char {
    // The only rune whose full mapping is longer than its simple one.
    if r == '\u{130}' {
        return 'i';
    }
    single(r.to_lowercase()).unwrap_or(r)
}

fn upper(r: char) -> char {
    single(r.to_uppercase()).unwrap_or(r)
}

fn single(mut it: impl Iterator<Item = char>) -> Option<char> {
    let c = it.next()?;
    it.next().is_none().then_some(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;
    use std::collections::BTreeMap;

    #[derive(Debug, Default, PartialEq, Deserialize)]
    #[serde(rename_all = "camelCase", default)]
    struct Mapping {
        host_port: i64,
        container_port: i64,
        protocol: String,
        #[serde(rename = "hostIP")]
        host_ip: String,
    }

    #[derive(Debug, Default, PartialEq, Deserialize)]
    #[serde(default)]
    struct Outer {
        #[serde(rename = "portMappings")]
        port_mappings: Vec<Mapping>,
        inner: Option<Mapping>,
        raw: BTreeMap<String, i64>,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(default)]
    struct Renamed {
        #[serde(rename = "new", alias = "old")]
        renamed: i64,
    }

    /// Decodes on both paths, which must agree.
    fn decode<T: DeserializeOwned + std::fmt::Debug>(v: Value) -> T {
        let streamed: T = from_slice(v.to_string().as_bytes()).unwrap();
        let parsed: T = from_value(v).unwrap();
        assert_eq!(format!("{streamed:?}"), format!("{parsed:?}"));
        parsed
    }

    fn outer(v: Value) -> Outer {
        decode(v)
    }

    #[test]
    fn containerd_spelling_matches_struct_fields() {
        let v = json!({"portMappings": [{"HostPort": 19301, "ContainerPort": 8080,
                                          "Protocol": "tcp", "HostIP": ""}]});
        assert_eq!(
            outer(v).port_mappings,
            [Mapping {
                host_port: 19301,
                container_port: 8080,
                protocol: "tcp".into(),
                host_ip: String::new(),
            }]
        );
    }

    #[test]
    fn any_case_at_any_depth() {
        for key in [
            "portMappings",
            "PortMappings",
            "PORTMAPPINGS",
            "portmappings",
        ] {
            for port in ["hostPort", "HostPort", "HOSTPORT", "hostport"] {
                let o = outer(json!({key: [{port: 7}], "INNER": {port: 8}}));
                assert_eq!(o.port_mappings[0].host_port, 7, "{key} {port}");
                assert_eq!(o.inner.unwrap().host_port, 8);
            }
        }
    }

    #[test]
    fn map_keys_stay_as_given() {
        let o = outer(json!({"raw": {"Key": 1, "key": 2}}));
        assert_eq!(
            o.raw,
            BTreeMap::from([("Key".into(), 1), ("key".into(), 2)])
        );
    }

    #[test]
    fn aliases_fold_too() {
        let r = |v| decode::<Renamed>(v).renamed;
        assert_eq!(r(json!({"OLD": 3})), 3);
        assert_eq!(r(json!({"New": 4})), 4);
    }

    #[test]
    fn keys_differing_in_case_last_wins_like_go() {
        // Go: `{"hostPort":1,"HostPort":2}` decodes HostPort = 2, whatever the spelling
        // of the last one; an exact spelling earlier does not win over a later fold.
        let m: Mapping = decode(json!({"hostPort": 1, "HostPort": 2}));
        assert_eq!(m.host_port, 2);
        let m: Mapping = decode(json!({"HostPort": 2, "hostPort": 1}));
        assert_eq!(m.host_port, 1);
        // The same key twice, which serde alone refuses.
        let m: Mapping = from_slice(br#"{"hostPort": 1, "hostPort": 3}"#).unwrap();
        assert_eq!(m.host_port, 3);
        let o: Outer =
            from_slice(br#"{"portMappings": [{"hostPort": 1, "HOSTPORT": 4}]}"#).unwrap();
        assert_eq!(o.port_mappings[0].host_port, 4);
    }

    #[test]
    fn duplicate_objects_decode_on_top_of_each_other_like_go() {
        let o = outer(json!({"inner": {"hostPort": 1, "protocol": "udp"},
                             "Inner": {"HOSTPORT": 2}}));
        let inner = o.inner.unwrap();
        assert_eq!((inner.host_port, inner.protocol.as_str()), (2, "udp"));
        // A non-object later value replaces.
        assert_eq!(
            outer(json!({"inner": {"hostPort": 1}, "INNER": null})).inner,
            None
        );
    }

    #[test]
    fn go_unicode_folding() {
        // U+212A KELVIN SIGN folds to k, U+017F LONG S to s, as in Go.
        let m: Mapping = decode(json!({"hostIP": "a", "\u{212a}": 0}));
        assert_eq!(m.host_ip, "a");
        assert!(same_folded("ma\u{212a}e", "MAKE"));
        assert!(same_folded("\u{17f}nat", "SNAT"));
        assert!(same_folded("\u{131}pam", "ipam"));
        assert!(same_folded("\u{130}pam", "ipam"));
        assert!(!same_folded("ipam", "ipa"));
        assert!(!same_folded("\u{e9}", "e"));
    }

    #[test]
    fn errors_are_serde_json_errors() {
        let e = from_slice::<Outer>(br#"{"portMappings": [{"HostPort": "x"}]}"#).unwrap_err();
        assert!(e.to_string().contains("invalid type: string \"x\""), "{e}");
        assert!(from_slice::<Outer>(b"{").is_err());
        assert!(from_slice::<Outer>(b"[1]").is_err());
        assert!(from_slice::<Outer>(b"{} x").is_err(), "trailing bytes");
        // The marker error that sends a decode to the value path never escapes.
        let e = from_slice::<Outer>(br#"{"inner": {"hostPort": 1, "HostPort": "x"}}"#).unwrap_err();
        assert!(!e.to_string().contains("given twice"), "{e}");
    }

    #[test]
    fn spelling_check_covers_every_field() {
        let full = json!({"portMappings": [{"hostPort": 1, "containerPort": 2, "protocol": "tcp",
                                            "hostIP": "::1"}],
                          "inner": {"hostPort": 3, "containerPort": 4, "protocol": "udp",
                                    "hostIP": ""},
                          "raw": {"a": 1}});
        check_key_spellings::<Outer>(&full).unwrap();
        let mut partial = full.clone();
        partial["inner"].as_object_mut().unwrap().remove("protocol");
        partial.as_object_mut().unwrap().remove("portMappings");
        let e = check_key_spellings::<Outer>(&partial).unwrap_err();
        assert_eq!(
            e,
            "the sample leaves unset: Mapping.protocol, Outer.portMappings"
        );
    }

    #[test]
    fn get_matches_like_a_field() {
        let v = json!({"Type": "a", "TYPE": "b", "other": 1});
        assert_eq!(get(&v, "type"), Some(&json!("b")));
        let v = json!({"TYPE": "b", "type": "a"});
        assert_eq!(get(&v, "type"), Some(&json!("a")));
        assert_eq!(get(&json!(1), "type"), None);
    }
}
