//! `iptables-save -t nat` output, parsed just enough to find chains and the rules that
//! jump to them.

use std::collections::HashSet;

use crate::nat::error::NatError;

/// One `-A CHAIN spec` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SavedRule {
    pub chain: String,
    /// The text after `-A CHAIN `, exactly as saved, so a `-D CHAIN spec` matches it.
    pub spec: String,
    /// `spec` split the way iptables-restore splits it (quotes removed).
    pub tokens: Vec<String>,
}

impl SavedRule {
    /// The `-j`/`-g` target, if any.
    pub fn target(&self) -> Option<&str> {
        let mut it = self.tokens.iter();
        while let Some(tok) = it.next() {
            if matches!(tok.as_str(), "-j" | "--jump" | "-g" | "--goto") {
                return it.next().map(String::as_str);
            }
        }
        None
    }

    /// The argument of the first `--comment`.
    pub fn comment(&self) -> Option<&str> {
        let mut it = self.tokens.iter();
        while let Some(tok) = it.next() {
            if tok == "--comment" {
                return it.next().map(String::as_str);
            }
        }
        None
    }
}

/// One table of an `iptables-save` dump.
#[derive(Clone, Debug, Default)]
pub(crate) struct SavedTable {
    chains: Vec<String>,
    chain_set: HashSet<String>,
    pub rules: Vec<SavedRule>,
}

impl SavedTable {
    /// Parses the `*<table>` section of a dump; other tables are ignored.
    pub fn parse(text: &str, table: &str) -> Result<SavedTable, NatError> {
        let mut out = SavedTable::default();
        let mut in_table = false;
        for (n, raw) in text.lines().enumerate() {
            let line = raw.trim_end();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(name) = line.strip_prefix('*') {
                in_table = name == table;
                continue;
            }
            if !in_table {
                continue;
            }
            if line == "COMMIT" {
                in_table = false;
            } else if let Some(decl) = line.strip_prefix(':') {
                if let Some(name) = decl.split_whitespace().next() {
                    out.add_chain(name);
                }
            } else if let Some(rest) = line.strip_prefix("-A ") {
                let (chain, spec) = rest.split_once(' ').unwrap_or((rest, ""));
                let tokens = tokenize(spec).ok_or_else(|| NatError::Parse {
                    tool: "iptables-save".into(),
                    detail: format!("unbalanced quotes on line {}: {line}", n + 1),
                })?;
                out.rules.push(SavedRule {
                    chain: chain.to_string(),
                    spec: spec.to_string(),
                    tokens,
                });
            }
        }
        Ok(out)
    }

    fn add_chain(&mut self, name: &str) {
        if self.chain_set.insert(name.to_string()) {
            self.chains.push(name.to_string());
        }
    }

    pub fn has_chain(&self, name: &str) -> bool {
        self.chain_set.contains(name)
    }

    pub fn chains(&self) -> impl Iterator<Item = &str> {
        self.chains.iter().map(String::as_str)
    }

    pub fn rules_in<'a>(&'a self, chain: &'a str) -> impl Iterator<Item = &'a SavedRule> + 'a {
        self.rules.iter().filter(move |r| r.chain == chain)
    }

    /// Rules anywhere in the table whose target is `target`.
    pub fn jumps_to<'a>(&'a self, target: &'a str) -> impl Iterator<Item = &'a SavedRule> + 'a {
        self.rules
            .iter()
            .filter(move |r| r.target() == Some(target))
    }

    /// The rules outside `chain` that jump to it: its entries.
    pub fn entries_of<'a>(&'a self, chain: &'a str) -> Vec<&'a SavedRule> {
        self.jumps_to(chain).filter(|r| r.chain != chain).collect()
    }

    /// Whether `chain` exists and holds exactly these rules (as tokens), in order.
    pub fn chain_holds(&self, chain: &str, rules: impl IntoIterator<Item = Vec<String>>) -> bool {
        self.has_chain(chain) && self.rules_in(chain).map(|r| r.tokens.clone()).eq(rules)
    }

    /// Whether `chain` holds a rule with exactly these tokens.
    pub fn has_rule(&self, chain: &str, tokens: &[String]) -> bool {
        self.rules_in(chain).any(|r| r.tokens == tokens)
    }
}

/// Splits a rule the way iptables-restore does: whitespace separates, double quotes
/// group, and a backslash escapes the next character inside quotes. `None` on an
/// unterminated quote.
pub(crate) fn tokenize(spec: &str) -> Option<Vec<String>> {
    let mut tokens = Vec::new();
    let mut chars = spec.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return Some(tokens);
        }
        let mut tok = String::new();
        let mut quoted = false;
        while let Some(&c) = chars.peek() {
            if !quoted && c.is_whitespace() {
                break;
            }
            chars.next();
            match c {
                '"' => quoted = !quoted,
                '\\' if quoted => tok.push(chars.next()?),
                c => tok.push(c),
            }
        }
        if quoted {
            return None;
        }
        tokens.push(tok);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DUMP: &str = r#"# Generated by iptables-save v1.8.9 (nf_tables) on Sun Nov 22 00:16:42 2026
*filter
:INPUT ACCEPT [0:0]
-A INPUT -j CNI-2bbe0c48b91a7d1b8a6753a8
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:CNI-2bbe0c48b91a7d1b8a6753a8 - [0:0]
-A POSTROUTING -m comment --comment "CNI portfwd requiring masquerade" -j CNI-HOSTPORT-MASQ
-A POSTROUTING -s 10.88.0.2/32 -m comment --comment "name: \"test\" id: \"1234\"" -j CNI-2bbe0c48b91a7d1b8a6753a8
-A CNI-2bbe0c48b91a7d1b8a6753a8 -d 10.88.0.0/16 -m comment --comment "name: \"test\" id: \"1234\"" -j ACCEPT
COMMIT
# Completed on Sun Nov 22 00:16:42 2026
"#;

    #[test]
    fn parses_only_the_requested_table() {
        let t = SavedTable::parse(DUMP, "nat").unwrap();
        assert!(t.has_chain("POSTROUTING"));
        assert!(t.has_chain("CNI-2bbe0c48b91a7d1b8a6753a8"));
        assert!(!t.has_chain("INPUT"));
        assert_eq!(t.rules.len(), 3);
        let jumps: Vec<_> = t.jumps_to("CNI-2bbe0c48b91a7d1b8a6753a8").collect();
        assert_eq!(jumps.len(), 1);
        assert_eq!(jumps[0].chain, "POSTROUTING");
        assert_eq!(
            jumps[0].spec,
            r#"-s 10.88.0.2/32 -m comment --comment "name: \"test\" id: \"1234\"" -j CNI-2bbe0c48b91a7d1b8a6753a8"#
        );
        assert_eq!(jumps[0].comment(), Some(r#"name: "test" id: "1234""#));
    }

    #[test]
    fn tokenizer_matches_restore_quoting() {
        assert_eq!(
            tokenize(r#"-m comment --comment "a \"b\" c\\" -j X"#).unwrap(),
            vec!["-m", "comment", "--comment", r#"a "b" c\"#, "-j", "X"]
        );
        assert_eq!(tokenize("  ").unwrap(), Vec::<String>::new());
        assert!(tokenize(r#"--comment "open"#).is_none());
    }

    #[test]
    fn comment_text_never_counts_as_a_target() {
        let t = SavedTable::parse(
            "*nat\n:X - [0:0]\n-A X -m comment --comment \"-j Y\" -j RETURN\nCOMMIT\n",
            "nat",
        )
        .unwrap();
        assert_eq!(t.rules[0].target(), Some("RETURN"));
        assert_eq!(t.jumps_to("Y").count(), 0);
    }
}
