//! Rules as data and the `iptables-restore --noflush` script that commits them.
//!
//! Rules are rendered in the canonical order `iptables-save` prints them in (`-s`, `-d`,
//! `-p`, matches, target), so a rendered rule compares equal, token for token, to the
//! saved one, and the golden tests read like the dump an operator sees.

use super::save::{SavedRule, SavedTable};

#[derive(Clone, Debug, PartialEq, Eq)]
enum Arg {
    Word(String),
    /// Always quoted, as iptables-save quotes comments.
    Quoted(String),
}

/// One rule of a chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Rule {
    pub chain: String,
    args: Vec<Arg>,
}

impl Rule {
    pub fn new(chain: &str) -> Rule {
        Rule {
            chain: chain.to_string(),
            args: Vec::new(),
        }
    }

    pub fn args(mut self, args: &[&str]) -> Rule {
        self.args
            .extend(args.iter().map(|a| Arg::Word((*a).to_string())));
        self
    }

    pub fn words<S: AsRef<str>>(mut self, args: &[S]) -> Rule {
        self.args
            .extend(args.iter().map(|a| Arg::Word(a.as_ref().to_string())));
        self
    }

    pub fn comment(mut self, text: &str) -> Rule {
        self.args.push(Arg::Word("-m".into()));
        self.args.push(Arg::Word("comment".into()));
        self.args.push(Arg::Word("--comment".into()));
        self.args.push(Arg::Quoted(text.to_string()));
        self
    }

    pub fn jump(self, target: &str) -> Rule {
        self.args(&["-j", target])
    }

    /// The rule text after `-A CHAIN `.
    pub fn spec(&self) -> String {
        let mut out = String::new();
        for arg in &self.args {
            if !out.is_empty() {
                out.push(' ');
            }
            match arg {
                Arg::Word(w) if !needs_quotes(w) => out.push_str(w),
                Arg::Word(w) | Arg::Quoted(w) => push_quoted(&mut out, w),
            }
        }
        out
    }

    /// The words iptables-restore will see.
    pub fn tokens(&self) -> Vec<String> {
        self.args
            .iter()
            .map(|a| match a {
                Arg::Word(w) | Arg::Quoted(w) => w.clone(),
            })
            .collect()
    }
}

fn needs_quotes(word: &str) -> bool {
    word.is_empty()
        || word
            .chars()
            .any(|c| c.is_whitespace() || c == '"' || c == '\\' || c == '\'')
}

fn push_quoted(out: &mut String, word: &str) {
    out.push('"');
    for c in word.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

/// The body of one `iptables-restore --noflush` run against the nat table.
///
/// With `--noflush`, a `:CHAIN - [0:0]` line creates the chain or, if it exists,
/// flushes it. That is exactly right for a per-container chain we are about to refill,
/// and exactly wrong for a shared chain holding other containers' rules. Shared chains
/// are created with `-N`, and only when the saved ruleset shows them missing: if a
/// process outside our lock created one in the meantime, `-N` fails the whole commit
/// (which is then re-read and retried) instead of flushing its rules away.
#[derive(Clone, Debug, Default)]
pub(crate) struct Script {
    decls: Vec<String>,
    creates: Vec<String>,
    ops: Vec<String>,
}

impl Script {
    pub fn new() -> Script {
        Script::default()
    }

    /// Creates `chain`, or flushes it if it exists.
    pub fn declare(&mut self, chain: &str) {
        let line = format!(":{chain} - [0:0]");
        if !self.decls.contains(&line) {
            self.decls.push(line);
        }
    }

    /// Creates `chain`, failing the commit if it already exists.
    pub fn create(&mut self, chain: &str) {
        let line = format!("-N {chain}");
        if !self.creates.contains(&line) {
            self.creates.push(line);
        }
    }

    pub fn append(&mut self, rule: &Rule) {
        self.ops.push(format!("-A {} {}", rule.chain, rule.spec()));
    }

    pub fn insert_first(&mut self, rule: &Rule) {
        self.ops
            .push(format!("-I {} 1 {}", rule.chain, rule.spec()));
    }

    /// Deletes a rule by its saved text (not by position: the ruleset may have moved
    /// since we read it, and a stale index would delete someone else's rule).
    pub fn delete(&mut self, rule: &SavedRule) {
        self.ops.push(format!("-D {} {}", rule.chain, rule.spec));
    }

    pub fn flush_chain(&mut self, chain: &str) {
        self.ops.push(format!("-F {chain}"));
    }

    pub fn delete_chain(&mut self, chain: &str) {
        self.ops.push(format!("-X {chain}"));
    }

    pub fn is_empty(&self) -> bool {
        self.decls.is_empty() && self.creates.is_empty() && self.ops.is_empty()
    }

    pub fn render(&self) -> String {
        let mut out = String::from("*nat\n");
        for line in self.decls.iter().chain(&self.creates).chain(&self.ops) {
            out.push_str(line);
            out.push('\n');
        }
        out.push_str("COMMIT\n");
        out
    }

    /// Removes `chain` and every rule in the table that jumps to it, if it exists.
    pub fn remove_chain(&mut self, saved: &SavedTable, chain: &str) {
        if !saved.has_chain(chain) {
            return;
        }
        for rule in saved.jumps_to(chain) {
            if rule.chain != chain {
                self.delete(rule);
            }
        }
        self.flush_chain(chain);
        self.delete_chain(chain);
    }
}

#[cfg(test)]
mod tests {
    use super::super::save::tokenize;
    use super::*;

    #[test]
    fn spec_quotes_comments_like_iptables_save() {
        let r = Rule::new("POSTROUTING")
            .args(&["-s", "10.88.0.2/32"])
            .comment(r#"name: "test" id: "1234""#)
            .jump("CNI-X");
        assert_eq!(
            r.spec(),
            r#"-s 10.88.0.2/32 -m comment --comment "name: \"test\" id: \"1234\"" -j CNI-X"#
        );
        assert_eq!(tokenize(&r.spec()).unwrap(), r.tokens());
        let one_word = Rule::new("X").comment("plain");
        assert_eq!(one_word.spec(), r#"-m comment --comment "plain""#);
    }

    #[test]
    fn user_words_are_quoted_only_when_needed() {
        let r = Rule::new("X").words(&["-m", "string with space", ""]);
        assert_eq!(r.spec(), r#"-m "string with space" """#);
        assert_eq!(tokenize(&r.spec()).unwrap(), r.tokens());
    }

    #[test]
    fn remove_chain_deletes_references_first() {
        let saved = SavedTable::parse(
            "*nat\n:POSTROUTING ACCEPT [0:0]\n:C - [0:0]\n-A POSTROUTING -s 10.0.0.2/32 -j C\n-A C -j MASQUERADE\n-A C -j C\nCOMMIT\n",
            "nat",
        )
        .unwrap();
        let mut s = Script::new();
        s.remove_chain(&saved, "C");
        s.remove_chain(&saved, "ABSENT");
        assert_eq!(
            s.render(),
            "*nat\n-D POSTROUTING -s 10.0.0.2/32 -j C\n-F C\n-X C\nCOMMIT\n"
        );
    }
}
