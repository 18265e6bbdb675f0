//! The CNI error object and its codes.
//!
//! Every plugin keeps its own typed error enum and converts it into this one
//! in a single `From` impl; this type is what goes on the wire.

use serde::{Deserialize, Serialize};

/// Error codes from the CNI spec (0-99 reserved) and the Go library's 999.
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENV: u32 = 4;
    pub const IO: u32 = 5;
    pub const DECODE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const INVALID_NETNS: u32 = 8;
    pub const TRY_AGAIN: u32 = 11;
    pub const NOT_AVAILABLE: u32 = 50;
    pub const LIMITED_CONNECTIVITY: u32 = 51;
    /// What the reference library reports for every plain (untyped) error.
    pub const INTERNAL: u32 = 999;
}

/// The `{"code", "msg", "details"}` object a plugin prints on failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{msg}{}", if details.is_empty() { String::new() } else { format!("; {details}") })]
pub struct Error {
    pub code: u32,
    pub msg: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl Error {
    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Self {
        Error {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    /// A failure with no specific code, reported as the reference does (999).
    pub fn internal(msg: impl Into<String>) -> Self {
        Self::new(code::INTERNAL, msg, "")
    }

    pub fn invalid_config(msg: impl Into<String>) -> Self {
        Self::new(code::INVALID_CONFIG, msg, "")
    }

    pub fn invalid_env(msg: impl Into<String>) -> Self {
        Self::new(code::INVALID_ENV, msg, "")
    }

    pub fn decode(msg: impl Into<String>) -> Self {
        Self::new(code::DECODE, msg, "")
    }

    /// The JSON text printed on stdout, indented like the reference's output.
    pub fn to_json(&self) -> String {
        crate::pretty_json(self)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    #[test]
    fn every_key_matches_in_any_case_like_go() {
        let e = serde_json::json!({"code": 7, "msg": "bad", "details": "why"});
        crate::json::check_key_spellings::<super::Error>(&e).unwrap();
    }

    use super::*;

    #[test]
    fn details_are_omitted_when_empty() {
        let e = Error::internal("boom");
        let v: serde_json::Value = serde_json::from_str(&e.to_json()).unwrap();
        assert_eq!(v, serde_json::json!({"code": 999, "msg": "boom"}));
    }

    #[test]
    fn details_are_kept() {
        let e = Error::new(code::INCOMPATIBLE_VERSION, "incompatible CNI versions", "x");
        let v: serde_json::Value = serde_json::from_str(&e.to_json()).unwrap();
        assert_eq!(v["details"], "x");
        assert_eq!(e.to_string(), "incompatible CNI versions; x");
    }
}
