//! The nftables backend: read rules with `nft -j list`, commit with one `nft -f -`
//! (a single kernel transaction: all of it applies or none).

use crate::nat::error::NatError;
use crate::tools::{self, Tool};

/// A rule as listed by `nft -j`, reduced to what we select on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct NftRule {
    pub family: String,
    pub table: String,
    pub chain: String,
    pub handle: u64,
    pub comment: Option<String>,
}

impl NftRule {
    /// The command that deletes this rule by its handle.
    pub fn delete_command(&self) -> String {
        format!(
            "delete rule {} {} {} handle {}",
            self.family, self.table, self.chain, self.handle
        )
    }
}

/// Extracts the rules from `nft -j list ...` output.
pub(crate) fn parse_rules(json: &str) -> Result<Vec<NftRule>, NatError> {
    let err = |detail: String| NatError::Parse {
        tool: "nft".into(),
        detail,
    };
    let doc: serde_json::Value =
        serde_json::from_str(json).map_err(|e| err(format!("invalid JSON: {e}")))?;
    parse_rules_doc(&doc)
}

/// The rules of an already parsed `nft -j list ...` document.
pub(crate) fn parse_rules_doc(doc: &serde_json::Value) -> Result<Vec<NftRule>, NatError> {
    let err = |detail: String| NatError::Parse {
        tool: "nft".into(),
        detail,
    };
    let items = doc
        .get("nftables")
        .and_then(|v| v.as_array())
        .ok_or_else(|| err("no \"nftables\" array".into()))?;
    let mut out = Vec::new();
    for item in items {
        let Some(rule) = item.get("rule") else {
            continue;
        };
        let text = |key: &str| rule.get(key).and_then(|v| v.as_str()).map(str::to_string);
        let (Some(family), Some(table), Some(chain), Some(handle)) = (
            text("family"),
            text("table"),
            text("chain"),
            rule.get("handle").and_then(|v| v.as_u64()),
        ) else {
            return Err(err(format!(
                "rule without family/table/chain/handle: {rule}"
            )));
        };
        out.push(NftRule {
            family,
            table,
            chain,
            handle,
            comment: text("comment"),
        });
    }
    Ok(out)
}

fn is_not_found(err: &NatError) -> bool {
    matches!(err, NatError::ToolFailed { detail, .. } if detail.contains("No such file or directory"))
}

/// Rules of one table (all chains), or none when the table does not exist.
pub(crate) fn list_table(family: &str, table: &str) -> Result<Vec<NftRule>, NatError> {
    match tools::run(Tool::Nft, &["-j", "list", "table", family, table], None) {
        Ok(json) => parse_rules(&json),
        Err(e) if is_not_found(&e) => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// `nft -j list table` as a document, or `None` when the table does not exist.
pub(crate) fn list_table_doc(
    family: &str,
    table: &str,
) -> Result<Option<serde_json::Value>, NatError> {
    match tools::run(Tool::Nft, &["-j", "list", "table", family, table], None) {
        Ok(json) => serde_json::from_str(&json)
            .map(Some)
            .map_err(|e| NatError::Parse {
                tool: "nft".into(),
                detail: format!("invalid JSON: {e}"),
            }),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Rules of one chain, or none when the table or chain does not exist.
pub(crate) fn list_chain(family: &str, table: &str, chain: &str) -> Result<Vec<NftRule>, NatError> {
    match tools::run(
        Tool::Nft,
        &["-j", "list", "chain", family, table, chain],
        None,
    ) {
        Ok(json) => parse_rules(&json),
        Err(e) if is_not_found(&e) => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// Commits `script` as one transaction.
pub(crate) fn apply(script: &str) -> Result<(), NatError> {
    tools::run(Tool::Nft, &["-f", "-"], Some(script)).map(drop)
}

/// Deleting a rule by handle fails the whole transaction if someone outside our lock
/// (a Go plugin) deleted it since we listed; re-list and re-decide.
const ATTEMPTS: u64 = 5;

/// One read-decide-commit: `decide` lists what it needs and returns the transaction,
/// or `None` when there is nothing to do. The caller holds the lock.
pub(crate) fn transact<F>(mut decide: F) -> Result<(), NatError>
where
    F: FnMut() -> Result<Option<String>, NatError>,
{
    let mut last_err = None;
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            std::thread::sleep(std::time::Duration::from_millis(10 * attempt));
        }
        let Some(script) = decide()? else {
            return Ok(());
        };
        match apply(&script) {
            Ok(()) => return Ok(()),
            Err(err @ NatError::ToolFailed { .. }) => last_err = Some(err),
            Err(err) => return Err(err),
        }
    }
    Err(last_err.unwrap_or(NatError::ToolMissing("nft")))
}

pub(crate) use crate::tools::nft_quote as quote;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rules_from_nft_json() {
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}, {"table": {"family": "ip", "name": "cni_hostport", "handle": 3}}, {"chain": {"family": "ip", "table": "cni_hostport", "name": "hostports", "handle": 1}}, {"rule": {"family": "ip", "table": "cni_hostport", "chain": "hostports", "handle": 2, "comment": "abc", "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 8080}}, {"dnat": {"addr": "10.0.0.2", "port": 80}}]}}, {"rule": {"family": "ip", "table": "cni_hostport", "chain": "hostports_all", "handle": 7, "expr": []}}]}"#;
        let rules = parse_rules(json).unwrap();
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[0].comment.as_deref(), Some("abc"));
        assert_eq!(
            rules[0].delete_command(),
            "delete rule ip cni_hostport hostports handle 2"
        );
        assert_eq!(rules[1].comment, None);
        assert!(parse_rules("not json").is_err());
    }
}
