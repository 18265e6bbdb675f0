//! Spec versions: the list we support and the comparisons the gates need.

use crate::error::{Error, code};

/// Every spec version a plugin of this suite speaks, oldest first. Matching is
/// by exact string, as in the reference library.
pub const SUPPORTED: &[&str] = &[
    "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0",
];

/// The newest version, reported by VERSION.
pub const CURRENT: &str = "1.1.0";

/// A config or result without `cniVersion` is 0.1.0, as the spec says.
pub fn or_default(v: &str) -> &str {
    if v.is_empty() { "0.1.0" } else { v }
}

/// Parses "X.Y.Z" into comparable numbers.
pub fn parse(v: &str) -> Result<(u64, u64, u64), Error> {
    let bad = || Error::new(code::DECODE, format!("unable to parse version {v:?}"), "");
    let mut parts = v.split('.');
    let mut next = || -> Result<u64, Error> {
        parts
            .next()
            .ok_or_else(bad)?
            .parse::<u64>()
            .map_err(|_| bad())
    };
    let out = (next()?, next()?, next()?);
    if parts.next().is_some() {
        return Err(bad());
    }
    Ok(out)
}

/// `a >= b`, both parsed; errors on unparsable input.
pub fn at_least(a: &str, b: &str) -> Result<bool, Error> {
    Ok(parse(a)? >= parse(b)?)
}

/// The result shape a version uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// 0.1.0 and 0.2.0: `ip4` / `ip6`.
    Legacy,
    /// 0.3.0, 0.3.1, 0.4.0: `ips[]` with `version`.
    V04,
    /// 1.0.0 and 1.1.0.
    V1,
}

pub fn shape(v: &str) -> Result<Shape, Error> {
    match or_default(v) {
        "0.1.0" | "0.2.0" => Ok(Shape::Legacy),
        "0.3.0" | "0.3.1" | "0.4.0" => Ok(Shape::V04),
        "1.0.0" | "1.1.0" => Ok(Shape::V1),
        other => Err(Error::new(
            code::INCOMPATIBLE_VERSION,
            format!("unsupported CNI result version {other:?}"),
            "",
        )),
    }
}

/// The reference's "incompatible CNI versions" error for an unsupported config version.
pub fn check_supported(v: &str) -> Result<(), Error> {
    let v = or_default(v);
    if SUPPORTED.contains(&v) {
        return Ok(());
    }
    let list: Vec<String> = SUPPORTED.iter().map(|s| format!("{s:?}")).collect();
    Err(Error::new(
        code::INCOMPATIBLE_VERSION,
        "incompatible CNI versions",
        format!("config is {v:?}, plugin supports [{}]", list.join(" ")),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordering_is_numeric() {
        assert!(at_least("0.10.0", "0.4.0").unwrap());
        assert!(at_least("1.1.0", "1.1.0").unwrap());
        assert!(!at_least("0.3.1", "0.4.0").unwrap());
        assert!(at_least("x", "0.4.0").is_err());
        assert!(parse("1.0").is_err());
        assert!(parse("1.0.0.0").is_err());
    }

    #[test]
    fn unsupported_version_names_the_list() {
        let e = check_supported("9.9.9").unwrap_err();
        assert_eq!(e.code, 1);
        assert_eq!(e.msg, "incompatible CNI versions");
        assert_eq!(
            e.details,
            r#"config is "9.9.9", plugin supports ["0.1.0" "0.2.0" "0.3.0" "0.3.1" "0.4.0" "1.0.0" "1.1.0"]"#
        );
        assert!(check_supported("").is_ok());
        assert!(check_supported("1.1").is_err());
    }

    #[test]
    fn shapes() {
        assert_eq!(shape("").unwrap(), Shape::Legacy);
        assert_eq!(shape("0.2.0").unwrap(), Shape::Legacy);
        assert_eq!(shape("0.3.1").unwrap(), Shape::V04);
        assert_eq!(shape("1.1.0").unwrap(), Shape::V1);
        assert!(shape("2.0.0").is_err());
    }
}
