//! `CNI_ARGS`: `K=V;K=V` pairs.
//!
//! The reference matches keys case-sensitively against the fields a plugin
//! knows and rejects unknown keys unless `IgnoreUnknown` is true; Kubernetes
//! runtimes always send `IgnoreUnknown=1`.

use crate::error::Error;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniArgs {
    raw: String,
}

impl CniArgs {
    pub fn new(raw: impl Into<String>) -> Self {
        CniArgs { raw: raw.into() }
    }

    pub fn raw(&self) -> &str {
        &self.raw
    }

    /// All pairs, or the reference's `ARGS: invalid pair "..."` error.
    pub fn pairs(&self) -> Result<Vec<(&str, &str)>, Error> {
        if self.raw.is_empty() {
            return Ok(Vec::new());
        }
        self.raw
            .split(';')
            .map(|pair| {
                let mut kv = pair.split('=');
                match (kv.next(), kv.next(), kv.next()) {
                    (Some(k), Some(v), None) => Ok((k, v)),
                    _ => Err(Error::internal(format!("ARGS: invalid pair {pair:?}"))),
                }
            })
            .collect()
    }

    /// The value of `key`, if the pairs are well formed and contain it.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs()
            .ok()?
            .into_iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
    }

    /// `IgnoreUnknown` as the reference reads it (`1`, `true`, `True`).
    pub fn ignore_unknown(&self) -> bool {
        matches!(self.get("IgnoreUnknown"), Some("1" | "true" | "True"))
    }

    /// Validates the pairs against the keys a plugin understands.
    /// `IgnoreUnknown` is always known.
    pub fn check_known(&self, known: &[&str]) -> Result<(), Error> {
        let pairs = self.pairs()?;
        let mut unknown = Vec::new();
        for (k, v) in &pairs {
            if *k == "IgnoreUnknown" {
                if !matches!(*v, "1" | "true" | "True" | "0" | "false" | "False") {
                    return Err(Error::internal(format!(
                        "ARGS: error parsing value of pair \"{k}={v}\": boolean unmarshal error: invalid input {v}"
                    )));
                }
            } else if !known.contains(k) {
                unknown.push(format!("{:?}", format!("{k}={v}")));
            }
        }
        if !unknown.is_empty() && !self.ignore_unknown() {
            return Err(Error::internal(format!(
                "ARGS: unknown args [{}]",
                unknown.join(" ")
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_is_fine() {
        let a = CniArgs::new("");
        assert!(a.pairs().unwrap().is_empty());
        assert!(a.check_known(&[]).is_ok());
    }

    #[test]
    fn kubernetes_style_args() {
        let a =
            CniArgs::new("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;IP=10.1.2.9");
        assert!(a.ignore_unknown());
        assert_eq!(a.get("IP"), Some("10.1.2.9"));
        assert_eq!(a.get("ip"), None, "keys are case-sensitive");
        assert!(a.check_known(&["IP"]).is_ok());
    }

    #[test]
    fn unknown_keys_are_rejected_without_ignore_unknown() {
        let a = CniArgs::new("FOO=bar;IP=10.1.2.3");
        let e = a.check_known(&["IP"]).unwrap_err();
        assert_eq!(e.msg, r#"ARGS: unknown args ["FOO=bar"]"#);
        assert!(
            CniArgs::new("IgnoreUnknown=0;FOO=1")
                .check_known(&[])
                .is_err()
        );
    }

    #[test]
    fn malformed_pairs() {
        for raw in ["FOO", "A=1;", "A=1=2", "=;"] {
            let e = CniArgs::new(raw).check_known(&["A", "FOO"]).unwrap_err();
            assert!(e.msg.starts_with("ARGS: invalid pair"), "{raw}: {}", e.msg);
        }
        assert!(CniArgs::new("IgnoreUnknown=yes").check_known(&[]).is_err());
    }
}
