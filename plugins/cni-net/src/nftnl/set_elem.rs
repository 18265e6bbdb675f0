//! Set and map elements: list a set's, look one up by key, encode one, and remove
//! some by expiry.

use std::io;

use super::rule::{NFTA_DATA_VALUE, NFTA_LIST_ELEM, udata_comment};
use super::wire::{attributes, find, push_attr, push_nested, push_str_attr};
use super::{Nftnl, Op};
use crate::Family;

pub(super) const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_GETSETELEM: u16 = 13;
pub(super) const NFT_MSG_DELSETELEM: u16 = 14;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_SET_ELEM_TIMEOUT: u16 = 4;
const NFTA_SET_ELEM_USERDATA: u16 = 6;
const NFTA_SET_ELEM_KEY_END: u16 = 10;
/// libnftnl's user-data TLV type for a set element's comment
/// (`NFTNL_UDATA_SET_ELEM_COMMENT`).
const NFTNL_UDATA_SET_ELEM_COMMENT: u8 = 0;

/// One element of a set or map, in the kernel's byte layout: each field of a
/// concatenated key or value is padded to 4 bytes, numbers are big-endian.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Element {
    pub key: Vec<u8>,
    /// The last key of a range, for sets with `flags interval` over concatenations.
    pub key_end: Option<Vec<u8>>,
    /// The mapped value, for maps.
    pub data: Option<Vec<u8>>,
    pub comment: Option<String>,
    /// Milliseconds until the element expires: sent when set, and reported for
    /// elements that have a timeout (sets with `flags timeout`).
    pub timeout_ms: Option<u64>,
}

impl Element {
    /// Just the key (and key end): what a lookup or a deletion sends.
    pub(super) fn key_only(&self) -> Element {
        Element {
            key: self.key.clone(),
            key_end: self.key_end.clone(),
            ..Element::default()
        }
    }
}

impl Nftnl {
    /// The elements of `table`/`set`; empty when the set (or table) is missing.
    pub fn elements(&mut self, family: Family, table: &str, set: &str) -> io::Result<Vec<Element>> {
        let mut attrs = Vec::new();
        push_str_attr(&mut attrs, NFTA_SET_ELEM_LIST_TABLE, table);
        push_str_attr(&mut attrs, NFTA_SET_ELEM_LIST_SET, set);
        let mut out = Vec::new();
        self.get(
            NFT_MSG_GETSETELEM,
            true,
            family.nfproto(),
            &attrs,
            |payload| {
                out.extend(parse_elements(payload));
            },
        )?;
        Ok(out)
    }

    /// The element of `table`/`set` with `probe`'s key (and key end), if any. A point
    /// lookup: its cost does not grow with the set.
    pub fn element(
        &mut self,
        family: Family,
        table: &str,
        set: &str,
        probe: &Element,
    ) -> io::Result<Option<Element>> {
        let mut attrs = Vec::new();
        push_element_list(&mut attrs, table, set, &probe.key_only());
        let mut found = None;
        self.get(
            NFT_MSG_GETSETELEM,
            false,
            family.nfproto(),
            &attrs,
            |payload| {
                found = parse_elements(payload).next();
            },
        )?;
        Ok(found)
    }
}

/// How long an expired element lingers, in milliseconds. See [`Nftnl::expire_elements`].
const EXPIRE_MS: u64 = 1;

/// Far more than the jiffy or two an expiry takes.
const EXPIRY_WAIT: std::time::Duration = std::time::Duration::from_millis(50);

/// A failure of [`Nftnl::expire_elements`]: the kernel refused a look-up (`looking_up`)
/// or the batch that changes the set.
#[derive(Debug)]
pub(crate) struct ExpireError {
    pub looking_up: bool,
    pub source: io::Error,
}

fn looking_up(source: io::Error) -> ExpireError {
    ExpireError {
        looking_up: true,
        source,
    }
}

impl Nftnl {
    /// Removes `doomed` (set, element as the kernel holds it) from `table` by giving
    /// each a timeout of [`EXPIRE_MS`] instead of deleting it. With `wait`, returns
    /// once they are gone; without, once each is seen expiring.
    ///
    /// Why: a deletion leaves memory for the kernel to free after an RCU grace period,
    /// and whoever closes a netfilter socket next (this process, at exit) waits for
    /// that with the nf_tables commit mutex held: about 10 ms on every DEL. An expired
    /// element matches no packet and is invisible to lookups and listings, and the
    /// set's own garbage collector frees it in the background. Expiry takes effect at
    /// the next jiffy (up to 4 ms at HZ=250); a caller that needs the element gone when
    /// it returns waits for that. Kernels that cannot change an element's timeout
    /// (before 6.10) leave it unchanged; sets made without `flags timeout` refuse it.
    /// Both are detected (one look-up per element), and what is left is deleted the
    /// classic way.
    pub fn expire_elements(
        &mut self,
        family: Family,
        table: &str,
        doomed: &[(&str, Element)],
        wait: bool,
    ) -> Result<(), ExpireError> {
        if doomed.is_empty() {
            return Ok(());
        }
        let ops: Vec<Op> = doomed
            .iter()
            .map(|(set, element)| Op::AddElement {
                set: set.to_string(),
                element: Element {
                    timeout_ms: Some(EXPIRE_MS),
                    ..element.clone()
                },
            })
            .collect();
        if self.commit(family, table, &ops).is_ok() && self.expired(family, table, doomed, wait)? {
            return Ok(());
        }
        let mut ops = Vec::new();
        for (set, element) in doomed {
            if self
                .element(family, table, set, element)
                .map_err(looking_up)?
                .is_some()
            {
                ops.push(Op::DeleteElement {
                    set: set.to_string(),
                    element: element.clone(),
                });
            }
        }
        self.commit(family, table, &ops)
            .map_err(|source| ExpireError {
                looking_up: false,
                source,
            })
    }

    /// Whether every element of `doomed` is expiring (`wait`: has expired, polling for
    /// at most [`EXPIRY_WAIT`]): `false` when the kernel kept one without a timeout, or
    /// it outlived the wait.
    fn expired(
        &mut self,
        family: Family,
        table: &str,
        doomed: &[(&str, Element)],
        wait: bool,
    ) -> Result<bool, ExpireError> {
        let start = std::time::Instant::now();
        for (set, element) in doomed {
            loop {
                match self
                    .element(family, table, set, element)
                    .map_err(looking_up)?
                {
                    None => break,
                    Some(e) if e.timeout_ms.is_none() => return Ok(false),
                    Some(_) if !wait => break,
                    Some(_) if start.elapsed() > EXPIRY_WAIT => return Ok(false),
                    Some(_) => std::thread::sleep(std::time::Duration::from_micros(500)),
                }
            }
        }
        Ok(true)
    }
}

/// The attributes of a NEWSETELEM/DELSETELEM request carrying one element.
pub(super) fn push_element_list(out: &mut Vec<u8>, table: &str, set: &str, element: &Element) {
    push_str_attr(out, NFTA_SET_ELEM_LIST_TABLE, table);
    push_str_attr(out, NFTA_SET_ELEM_LIST_SET, set);
    push_nested(out, NFTA_SET_ELEM_LIST_ELEMENTS, |list| {
        push_nested(list, NFTA_LIST_ELEM, |e| {
            push_nested(e, NFTA_SET_ELEM_KEY, |k| {
                push_attr(k, NFTA_DATA_VALUE, &element.key)
            });
            if let Some(end) = &element.key_end {
                push_nested(e, NFTA_SET_ELEM_KEY_END, |k| {
                    push_attr(k, NFTA_DATA_VALUE, end)
                });
            }
            if let Some(data) = &element.data {
                push_nested(e, NFTA_SET_ELEM_DATA, |d| {
                    push_attr(d, NFTA_DATA_VALUE, data)
                });
            }
            if let Some(ms) = element.timeout_ms {
                push_attr(e, NFTA_SET_ELEM_TIMEOUT, &ms.to_be_bytes());
            }
            if let Some(comment) = &element.comment {
                let mut udata = vec![NFTNL_UDATA_SET_ELEM_COMMENT];
                // Callers keep comments short (see `nat::sets`); the kernel caps user
                // data at 256 bytes and the TLV length is one byte.
                let text: Vec<u8> = comment.bytes().take(250).chain([0]).collect();
                udata.push(text.len() as u8);
                udata.extend_from_slice(&text);
                push_attr(e, NFTA_SET_ELEM_USERDATA, &udata);
            }
        });
    });
}

/// The elements of one NEWSETELEM payload (a dump part or a GET answer).
fn parse_elements(payload: &[u8]) -> impl Iterator<Item = Element> + '_ {
    find(payload, NFTA_SET_ELEM_LIST_ELEMENTS)
        .into_iter()
        .flat_map(attributes)
        .filter(|(kind, _)| *kind == NFTA_LIST_ELEM)
        .filter_map(|(_, elem)| parse_element(elem))
}

/// Decodes one element of a GETSETELEM reply.
fn parse_element(elem: &[u8]) -> Option<Element> {
    let value = |kind| find(elem, kind).and_then(|v| find(v, NFTA_DATA_VALUE));
    Some(Element {
        key: value(NFTA_SET_ELEM_KEY)?.to_vec(),
        key_end: value(NFTA_SET_ELEM_KEY_END).map(<[u8]>::to_vec),
        data: value(NFTA_SET_ELEM_DATA).map(<[u8]>::to_vec),
        comment: find(elem, NFTA_SET_ELEM_USERDATA).and_then(udata_comment),
        timeout_ms: find(elem, NFTA_SET_ELEM_TIMEOUT)
            .and_then(|t| <[u8; 8]>::try_from(t).ok())
            .map(u64::from_be_bytes),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What we send is what we read back: key, range end, data, comment, timeout.
    #[test]
    fn elements_round_trip() {
        let element = Element {
            key: vec![10, 0, 0, 1],
            key_end: Some(vec![10, 0, 0, 9]),
            data: Some(vec![1, 2, 3, 4]),
            comment: Some("net c1".into()),
            timeout_ms: Some(7),
        };
        let mut attrs = Vec::new();
        push_element_list(&mut attrs, "t", "s", &element);
        let got: Vec<Element> = parse_elements(&attrs).collect();
        assert_eq!(got.as_slice(), std::slice::from_ref(&element));
        let mut attrs = Vec::new();
        push_element_list(&mut attrs, "t", "s", &element.key_only());
        let key_only = parse_elements(&attrs).next().unwrap();
        assert_eq!((key_only.data, key_only.comment), (None, None));
    }
}
