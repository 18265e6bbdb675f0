//! `fieldSelector` and `labelSelector`, with the API server's syntax and the field labels
//! it supports for Nodes (`metadata.name`, `spec.unschedulable`).

use crate::store::Obj;

#[derive(Debug, Clone, PartialEq)]
enum Field {
    Name,
    Unschedulable,
}

#[derive(Debug, Clone, PartialEq)]
enum Req {
    FieldEq(Field, String, bool),
    LabelEq(String, String, bool),
    LabelIn(String, Vec<String>, bool),
    LabelExists(String, bool),
}

/// Both selectors of a request; an empty one matches everything.
#[derive(Debug, Clone, Default)]
pub struct Selector {
    reqs: Vec<Req>,
}

impl Selector {
    pub fn parse(field: Option<&str>, label: Option<&str>) -> Result<Selector, String> {
        let mut reqs = Vec::new();
        if let Some(f) = field {
            for term in f.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                reqs.push(parse_field_term(term)?);
            }
        }
        if let Some(l) = label {
            for term in split_label_terms(l)? {
                reqs.push(parse_label_term(&term)?);
            }
        }
        Ok(Selector { reqs })
    }

    pub fn is_empty(&self) -> bool {
        self.reqs.is_empty()
    }

    /// The single name a `metadata.name=X` selector asks for (a cheap path for lists).
    pub fn only_name(&self) -> Option<&str> {
        self.reqs.iter().find_map(|r| match r {
            Req::FieldEq(Field::Name, v, true) => Some(v.as_str()),
            _ => None,
        })
    }

    pub fn matches(&self, obj: &Obj) -> bool {
        self.reqs.iter().all(|r| match r {
            Req::FieldEq(Field::Name, v, eq) => (obj.name == *v) == *eq,
            Req::FieldEq(Field::Unschedulable, v, eq) => {
                (obj.unschedulable().to_string() == *v) == *eq
            }
            Req::LabelEq(k, v, eq) => {
                let got = obj.labels().and_then(|l| l.get(k));
                // `k!=v` also matches objects without the label, as in the API server.
                (got == Some(v)) == *eq
            }
            Req::LabelIn(k, vs, inside) => {
                let got = obj.labels().and_then(|l| l.get(k));
                match got {
                    Some(g) => vs.contains(g) == *inside,
                    None => !*inside,
                }
            }
            Req::LabelExists(k, exists) => {
                obj.labels().is_some_and(|l| l.contains_key(k)) == *exists
            }
        })
    }
}

fn parse_field_term(term: &str) -> Result<Req, String> {
    let (key, value, eq) = if let Some((k, v)) = term.split_once("!=") {
        (k, v, false)
    } else if let Some((k, v)) = term.split_once("==") {
        (k, v, true)
    } else if let Some((k, v)) = term.split_once('=') {
        (k, v, true)
    } else {
        return Err(format!(
            "invalid selector: '{term}'; can't understand '{term}'"
        ));
    };
    let field = match key.trim() {
        "metadata.name" => Field::Name,
        "spec.unschedulable" => Field::Unschedulable,
        other => return Err(format!("field label not supported: {other}")),
    };
    Ok(Req::FieldEq(field, value.trim().to_string(), eq))
}

/// Splits on commas outside parentheses: `a in (x,y),b` → `a in (x,y)`, `b`.
fn split_label_terms(s: &str) -> Result<Vec<String>, String> {
    let mut terms = Vec::new();
    let mut depth = 0i32;
    let mut cur = String::new();
    for c in s.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                terms.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        if depth < 0 {
            return Err(format!(
                "unable to parse requirement: unbalanced ')' in {s:?}"
            ));
        }
        cur.push(c);
    }
    if depth != 0 {
        return Err(format!(
            "unable to parse requirement: unbalanced '(' in {s:?}"
        ));
    }
    terms.push(cur);
    Ok(terms
        .into_iter()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .collect())
}

fn parse_label_term(term: &str) -> Result<Req, String> {
    if let Some(k) = term.strip_prefix('!') {
        return Ok(Req::LabelExists(k.trim().to_string(), false));
    }
    for (op, inside) in [(" notin ", false), (" in ", true)] {
        if let Some((k, rest)) = term.split_once(op) {
            let rest = rest.trim();
            let list = rest
                .strip_prefix('(')
                .and_then(|r| r.strip_suffix(')'))
                .ok_or_else(|| {
                    format!("unable to parse requirement: expected (values) in {term:?}")
                })?;
            let values = list.split(',').map(|v| v.trim().to_string()).collect();
            return Ok(Req::LabelIn(k.trim().to_string(), values, inside));
        }
    }
    if let Some((k, v)) = term.split_once("!=") {
        return Ok(Req::LabelEq(k.trim().into(), v.trim().into(), false));
    }
    if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
        return Ok(Req::LabelEq(k.trim().into(), v.trim().into(), true));
    }
    if term.contains(' ') {
        return Err(format!("unable to parse requirement: {term:?}"));
    }
    Ok(Req::LabelExists(term.to_string(), true))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::NodeBuilder;
    use std::sync::Arc;

    fn obj(name: &str, zone: Option<&str>) -> Arc<Obj> {
        let mut b = NodeBuilder::new(name);
        if let Some(z) = zone {
            b = b.label("zone", z);
        }
        let node = b.build();
        Arc::new(Obj {
            name: name.into(),
            rv: 1,
            json: serde_json::to_vec(&node).unwrap(),
            node,
        })
    }

    fn sel(f: Option<&str>, l: Option<&str>) -> Selector {
        Selector::parse(f, l).unwrap()
    }

    #[test]
    fn field_selectors() {
        let a = obj("a", None);
        assert!(sel(Some("metadata.name=a"), None).matches(&a));
        assert!(sel(Some("metadata.name==a"), None).matches(&a));
        assert!(!sel(Some("metadata.name!=a"), None).matches(&a));
        assert!(sel(Some("spec.unschedulable=false"), None).matches(&a));
        assert_eq!(sel(Some("metadata.name=a"), None).only_name(), Some("a"));
        let e = Selector::parse(Some("spec.podCIDR=x"), None).unwrap_err();
        assert_eq!(e, "field label not supported: spec.podCIDR");
    }

    #[test]
    fn label_selectors() {
        let a = obj("a", Some("z1"));
        let b = obj("b", None);
        let s = sel(None, Some("zone in (z1, z2),kubernetes.io/os=linux"));
        assert!(s.matches(&a) && !s.matches(&b));
        let s = sel(None, Some("zone notin (z1)"));
        assert!(!s.matches(&a) && s.matches(&b));
        assert!(sel(None, Some("!zone")).matches(&b));
        assert!(sel(None, Some("zone")).matches(&a));
        assert!(sel(None, Some("zone!=z1")).matches(&b));
        assert!(Selector::parse(None, Some("zone in z1")).is_err());
        assert!(Selector::parse(None, Some("a in (x")).is_err());
    }
}
