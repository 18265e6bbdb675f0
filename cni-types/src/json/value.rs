//! Go's key matching on a parsed [`Value`]: the path for input that is a
//! `Value` already (a prevResult inside the config), for objects that give a
//! field twice (Go lets the last win and merges objects, which needs the whole
//! object at hand), and for the key-spelling checks of the tests.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};

use serde::de::value::{MapDeserializer, SeqDeserializer};
use serde::de::{self, DeserializeOwned, IntoDeserializer, Visitor};
use serde::forward_to_deserialize_any;
use serde_json::{Map, Value};

use super::{Error, field_index, same_folded};

pub(super) fn decode<T: DeserializeOwned>(value: Value) -> Result<T, Error> {
    T::deserialize(GoValue { value, probe: None })
}

/// A [`Value`] as a deserializer that matches struct keys the way Go does.
struct GoValue<'p> {
    value: Value,
    /// Only in tests of key matching ([`check_key_spellings`]).
    probe: Option<&'p Probe>,
}

impl<'de, 'p> IntoDeserializer<'de, Error> for GoValue<'p> {
    type Deserializer = GoValue<'p>;

    fn into_deserializer(self) -> GoValue<'p> {
        self
    }
}

impl<'de> de::Deserializer<'de> for GoValue<'_> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let probe = self.probe;
        let wrap = move |value| GoValue { value, probe };
        match self.value {
            Value::Array(items) => {
                let mut seq = SeqDeserializer::new(items.into_iter().map(wrap));
                let out = visitor.visit_seq(&mut seq)?;
                seq.end()?;
                Ok(out)
            }
            Value::Object(map) => visitor.visit_map(MapDeserializer::new(
                map.into_iter().map(|(k, v)| (k, wrap(v))),
            )),
            scalar => scalar.deserialize_any(visitor),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.value {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        let Value::Object(mut map) = self.value else {
            // Arrays and scalars: serde_json's own behaviour and messages.
            return self.value.deserialize_struct(name, fields, visitor);
        };
        if let Some(probe) = self.probe {
            map = probe.visit(name, fields, map);
        }
        let probe = self.probe;
        visitor.visit_map(MapDeserializer::new(
            fold_to_fields(map, fields)
                .into_iter()
                .map(|(k, v)| (k, GoValue { value: v, probe })),
        ))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        // No enum we decode carries a struct; serde_json's handling is Go's.
        self.value.deserialize_enum(name, variants, visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple tuple_struct map identifier
    }
}

/// Renames the keys of `map` to the struct fields they match under Go's rule,
/// and folds several keys matching one field into one entry (the last wins;
/// objects merge). Keys matching no field stay as they are: serde ignores them.
fn fold_to_fields(map: Map<String, Value>, fields: &'static [&'static str]) -> Map<String, Value> {
    // The common case, every key spelled as the struct spells it: no copy.
    if map
        .keys()
        .all(|k| fields.contains(&k.as_str()) || !fields.iter().any(|f| same_folded(k, f)))
    {
        return map;
    }
    let mut out = Map::with_capacity(map.len());
    for (key, value) in map {
        let key = match field_index(&key, fields) {
            Some(i) => fields[i].to_string(),
            None => key,
        };
        set_last_wins(&mut out, key, value);
    }
    out
}

/// Stores `value` under `key` as a later occurrence of the key: an object on
/// top of an earlier object merges into it (Go decodes into the existing struct
/// or map), anything else replaces it. The entry moves to the end, so that a
/// later fold inside the merged object still sees its keys in input order.
fn set_last_wins(out: &mut Map<String, Value>, key: String, value: Value) {
    match (out.shift_remove(&key), value) {
        (Some(Value::Object(mut earlier)), Value::Object(later)) => {
            for (k, v) in later {
                set_last_wins(&mut earlier, k, v);
            }
            out.insert(key, Value::Object(earlier));
        }
        (_, value) => {
            out.insert(key, value);
        }
    }
}

/// For the key-matching tests of every struct that decodes untrusted input:
/// decodes `canonical` (every key spelled as the struct spells it) into `T`,
/// then again with every struct key respelled as Go programs and people write
/// them (`HostPort`, `HOSTPORT`, `hostport`), and fails unless all decode to
/// the same value. It also fails when `canonical` leaves a field of any struct
/// it reaches unset, so a field added later cannot go untested (serde counts
/// an alias as a field, which no sample can set beside its name: wire structs
/// use two fields instead, as `NetConf`'s two GC lists do). Values are
/// compared by their `Debug` text, so `T` must print deterministically (no
/// `HashMap` inside).
pub fn check_key_spellings<T: DeserializeOwned + std::fmt::Debug>(
    canonical: &Value,
) -> Result<(), String> {
    let decode = |respell: Option<Respell>| {
        let probe = Probe {
            respell,
            seen: Default::default(),
        };
        let decoded = T::deserialize(GoValue {
            value: canonical.clone(),
            probe: Some(&probe),
        })
        .map_err(|e| format!("{e}"))?;
        Ok::<_, String>((format!("{decoded:?}"), probe))
    };
    let (want, probe) = decode(None)?;
    let unset: Vec<String> = probe
        .seen
        .into_inner()
        .into_iter()
        .flat_map(|(name, (fields, keys))| {
            fields
                .iter()
                .filter(move |f| !keys.contains(**f))
                .map(move |f| format!("{name}.{f}"))
        })
        .collect();
    if !unset.is_empty() {
        return Err(format!("the sample leaves unset: {}", unset.join(", ")));
    }
    let spellings: [(&str, Respell); 3] = [
        ("Capitalised", |k| {
            let mut c = k.chars();
            c.next()
                .map(|f| f.to_uppercase().chain(c).collect())
                .unwrap_or_default()
        }),
        ("UPPER", |k| k.to_uppercase()),
        ("lower", |k| k.to_lowercase()),
    ];
    for (label, respell) in spellings {
        let (got, _) = decode(Some(respell))?;
        if got != want {
            return Err(format!("{label} keys decode to\n{got}\ninstead of\n{want}"));
        }
    }
    Ok(())
}

/// Rewrites one key.
type Respell = fn(&str) -> String;

type Seen = BTreeMap<&'static str, (&'static [&'static str], BTreeSet<String>)>;

/// What [`check_key_spellings`] hooks into every struct decode.
struct Probe {
    /// Respell every key of every struct before matching; `None` records instead.
    respell: Option<Respell>,
    /// Per struct: its fields, and the keys the sample gave it (over all visits).
    seen: RefCell<Seen>,
}

impl Probe {
    fn visit(
        &self,
        name: &'static str,
        fields: &'static [&'static str],
        map: Map<String, Value>,
    ) -> Map<String, Value> {
        match self.respell {
            Some(respell) => map.into_iter().map(|(k, v)| (respell(&k), v)).collect(),
            None => {
                let mut seen = self.seen.borrow_mut();
                let entry = seen.entry(name).or_insert((fields, BTreeSet::new()));
                entry.1.extend(map.keys().cloned());
                map
            }
        }
    }
}
