//! Rules: list a chain's, get one by handle, and decode what we select on (handle,
//! comment, jump targets, expression names).

use std::io;

use super::Nftnl;
use super::wire::{attributes, c_string, find, push_attr, push_str_attr};
use crate::Family;

pub(super) const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_GETRULE: u16 = 7;
pub(super) const NFTA_RULE_TABLE: u16 = 1;
pub(super) const NFTA_RULE_CHAIN: u16 = 2;
pub(super) const NFTA_RULE_HANDLE: u16 = 3;
pub(super) const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_RULE_USERDATA: u16 = 7;
pub(crate) const NFTA_LIST_ELEM: u16 = 1;
pub(crate) const NFTA_EXPR_NAME: u16 = 1;
pub(crate) const NFTA_EXPR_DATA: u16 = 2;
pub(crate) const NFTA_IMMEDIATE_DATA: u16 = 2;
pub(crate) const NFTA_DATA_VALUE: u16 = 1;
pub(crate) const NFTA_DATA_VERDICT: u16 = 2;
pub(crate) const NFTA_VERDICT_CODE: u16 = 1;
pub(crate) const NFTA_VERDICT_CHAIN: u16 = 2;
/// libnftnl's user-data TLV type for a rule comment (what `nft ... comment` and
/// iptables-nft's `-m comment` store).
const NFTNL_UDATA_RULE_COMMENT: u8 = 0;
pub(crate) const NFT_JUMP: i32 = -3;
const NFT_GOTO: i32 = -4;

/// One rule as the kernel reports it, reduced to what we select on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct KernelRule {
    pub handle: u64,
    pub comment: Option<String>,
    /// Chains this rule jumps or goes to.
    pub jumps: Vec<String>,
    /// The raw expression attributes, for coarse content checks.
    pub exprs: Vec<u8>,
}

impl Nftnl {
    /// The rules of `table`/`chain` in order; empty when the chain (or table) is
    /// missing.
    pub fn rules(
        &mut self,
        family: Family,
        table: &str,
        chain: &str,
    ) -> io::Result<Vec<KernelRule>> {
        let mut attrs = Vec::new();
        push_str_attr(&mut attrs, NFTA_RULE_TABLE, table);
        push_str_attr(&mut attrs, NFTA_RULE_CHAIN, chain);
        let mut out = Vec::new();
        self.get(NFT_MSG_GETRULE, true, family.nfproto(), &attrs, |payload| {
            // Kernels that ignore the dump filter send every rule: keep ours only.
            if let Some(rule) = parse_rule(payload, table, chain) {
                out.push(rule);
            }
        })?;
        Ok(out)
    }

    /// One rule by its handle, or `None` when no such rule is in that chain.
    pub fn rule(
        &mut self,
        family: Family,
        table: &str,
        chain: &str,
        handle: u64,
    ) -> io::Result<Option<KernelRule>> {
        let mut attrs = Vec::new();
        push_str_attr(&mut attrs, NFTA_RULE_TABLE, table);
        push_str_attr(&mut attrs, NFTA_RULE_CHAIN, chain);
        push_attr(&mut attrs, NFTA_RULE_HANDLE, &handle.to_be_bytes());
        let mut found = None;
        self.get(
            NFT_MSG_GETRULE,
            false,
            family.nfproto(),
            &attrs,
            |payload| {
                found = parse_rule(payload, table, chain).filter(|r| r.handle == handle);
            },
        )?;
        Ok(found)
    }
}

/// Decodes one NEWRULE payload, or `None` when it belongs to another table or chain.
fn parse_rule(payload: &[u8], table: &str, chain: &str) -> Option<KernelRule> {
    let (t, c, rule) = parse_any_rule(payload)?;
    (t == table && c == chain).then_some(rule)
}

/// Decodes one NEWRULE payload into its table, chain and rule.
pub(super) fn parse_any_rule(payload: &[u8]) -> Option<(String, String, KernelRule)> {
    let mut rule = KernelRule::default();
    let (mut table, mut chain) = (None, None);
    for (kind, body) in attributes(payload) {
        match kind {
            NFTA_RULE_TABLE => table = c_string(body),
            NFTA_RULE_CHAIN => chain = c_string(body),
            NFTA_RULE_HANDLE => {
                rule.handle = u64::from_be_bytes(body.try_into().ok()?);
            }
            NFTA_RULE_EXPRESSIONS => {
                rule.exprs = body.to_vec();
                rule.jumps = jump_targets(body);
            }
            NFTA_RULE_USERDATA => rule.comment = udata_comment(body),
            _ => {}
        }
    }
    Some((table?, chain?, rule))
}

/// The expression names of a rule, in order (`fib`, `cmp`, `immediate`, ...).
pub(crate) fn expr_names(exprs: &[u8]) -> Vec<String> {
    attributes(exprs)
        .filter(|(kind, _)| *kind == NFTA_LIST_ELEM)
        .filter_map(|(_, elem)| find(elem, NFTA_EXPR_NAME).and_then(c_string))
        .collect()
}

/// Chains named by `jump`/`goto` verdicts of `immediate` expressions.
fn jump_targets(exprs: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    for (kind, elem) in attributes(exprs) {
        if kind != NFTA_LIST_ELEM {
            continue;
        }
        if find(elem, NFTA_EXPR_NAME).and_then(c_string).as_deref() != Some("immediate") {
            continue;
        }
        let verdict = find(elem, NFTA_EXPR_DATA)
            .and_then(|d| find(d, NFTA_IMMEDIATE_DATA))
            .and_then(|d| find(d, NFTA_DATA_VERDICT));
        let Some(verdict) = verdict else { continue };
        let code = find(verdict, NFTA_VERDICT_CODE)
            .and_then(|c| <[u8; 4]>::try_from(c).ok())
            .map(i32::from_be_bytes);
        if matches!(code, Some(NFT_JUMP | NFT_GOTO))
            && let Some(target) = find(verdict, NFTA_VERDICT_CHAIN).and_then(c_string)
        {
            out.push(target);
        }
    }
    out
}

/// The comment in libnftnl's user-data TLVs (`type u8, len u8, value`).
pub(super) fn udata_comment(mut buf: &[u8]) -> Option<String> {
    while buf.len() >= 2 {
        let (kind, len) = (buf[0], buf[1] as usize);
        let value = buf.get(2..2 + len)?;
        // Set element comments use the same TLV type (NFTNL_UDATA_SET_ELEM_COMMENT).
        if kind == NFTNL_UDATA_RULE_COMMENT {
            return c_string(value);
        }
        buf = &buf[2 + len..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::super::wire::testing::{attr, cstr, nested};
    use super::*;

    fn jump_expr(code: i32, chain: &str) -> Vec<u8> {
        nested(
            NFTA_LIST_ELEM,
            &[
                attr(NFTA_EXPR_NAME, &cstr("immediate")),
                nested(
                    NFTA_EXPR_DATA,
                    &[
                        attr(1, &0u32.to_be_bytes()),
                        nested(
                            NFTA_IMMEDIATE_DATA,
                            &[nested(
                                NFTA_DATA_VERDICT,
                                &[
                                    attr(NFTA_VERDICT_CODE, &code.to_be_bytes()),
                                    attr(NFTA_VERDICT_CHAIN, &cstr(chain)),
                                ],
                            )],
                        ),
                    ],
                ),
            ],
        )
    }

    fn rule_payload(
        table: &str,
        chain: &str,
        handle: u64,
        exprs: &[Vec<u8>],
        udata: &[u8],
    ) -> Vec<u8> {
        [
            attr(NFTA_RULE_TABLE, &cstr(table)),
            attr(NFTA_RULE_CHAIN, &cstr(chain)),
            attr(NFTA_RULE_HANDLE, &handle.to_be_bytes()),
            nested(NFTA_RULE_EXPRESSIONS, exprs),
            attr(NFTA_RULE_USERDATA, udata),
        ]
        .concat()
    }

    #[test]
    fn decodes_handle_comment_and_jumps() {
        let counter = nested(NFTA_LIST_ELEM, &[attr(NFTA_EXPR_NAME, &cstr("counter"))]);
        let mut udata = vec![NFTNL_UDATA_RULE_COMMENT, 5];
        udata.extend_from_slice(b"c-12\0");
        let p = rule_payload(
            "nat",
            "CNI-HOSTPORT-DNAT",
            42,
            &[counter, jump_expr(NFT_JUMP, "CNI-DN-abc")],
            &udata,
        );
        let rule = parse_rule(&p, "nat", "CNI-HOSTPORT-DNAT").unwrap();
        assert_eq!(expr_names(&rule.exprs), ["counter", "immediate"]);
        assert_eq!(rule.handle, 42);
        assert_eq!(rule.comment.as_deref(), Some("c-12"));
        assert_eq!(rule.jumps, ["CNI-DN-abc"]);
        assert!(parse_rule(&p, "nat", "OUTPUT").is_none());
        assert!(parse_rule(&p, "filter", "CNI-HOSTPORT-DNAT").is_none());

        // An accept verdict names no chain; a goto does.
        let p = rule_payload(
            "t",
            "c",
            1,
            &[jump_expr(1, ""), jump_expr(NFT_GOTO, "X")],
            &[],
        );
        let rule = parse_rule(&p, "t", "c").unwrap();
        assert_eq!(rule.jumps, ["X"]);
        assert_eq!(rule.comment, None);
    }

    #[test]
    fn user_data_skips_other_tlvs() {
        let mut udata = vec![7, 2, 0xaa, 0xbb, NFTNL_UDATA_RULE_COMMENT, 3];
        udata.extend_from_slice(b"hi\0");
        assert_eq!(udata_comment(&udata).as_deref(), Some("hi"));
        assert_eq!(udata_comment(&[NFTNL_UDATA_RULE_COMMENT, 9, b'x']), None);
    }
}
