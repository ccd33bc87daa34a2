//! Typed config values, their canonical encoding and the hash that identifies them.
//!
//! A config arrives from Python as a tree of none, bool, int, float, str, list and dict
//! (with keys of any of those scalar types or tuples). The canonical encoding is compact
//! JSON with sorted keys in which floats always carry a `.` or an exponent, so `1` and
//! `1.0` stay apart; dicts whose keys are not all plain strings are written as
//! `{"$dict": [[key, value], ...]}`, so float, int and tuple keys survive the round trip.

pub mod legacy;

use std::fmt::Write as _;

use sha2::{Digest, Sha256};

/// A typed config value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    /// Lists and tuples are the same value.
    List(Vec<Value>),
    /// Entries in the order the caller gave; the encoding sorts them.
    Dict(Vec<(Value, Value)>),
}

/// Errors reading a typed value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("option `{key}`: expected {expected}, got `{got}`")]
    WrongType {
        key: String,
        expected: &'static str,
        got: String,
    },
    #[error("option `{key}`: {reason}")]
    Invalid { key: String, reason: String },
    #[error("canonical encoding is malformed: {0}")]
    Decode(String),
}

impl Value {
    /// Build a string-keyed dict from `(name, value)` pairs.
    pub fn dict<I: IntoIterator<Item = (&'static str, Value)>>(items: I) -> Value {
        Value::Dict(
            items
                .into_iter()
                .map(|(k, v)| (Value::Str(k.to_string()), v))
                .collect(),
        )
    }

    /// Look up a string key in a dict; `None` for other values or a missing key.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Dict(entries) => entries
                .iter()
                .find(|(k, _)| matches!(k, Value::Str(s) if s == key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// Whether this is `None` (Python's `None`).
    pub fn is_none(&self) -> bool {
        matches!(self, Value::None)
    }

    /// The canonical encoding: equal values give equal strings.
    pub fn canonical(&self) -> String {
        let mut out = String::new();
        self.encode_into(&mut out);
        out
    }

    /// The identity hash: sha256 of the canonical encoding, as 32 hex digits.
    pub fn hash(&self) -> String {
        let digest = Sha256::digest(self.canonical().as_bytes());
        hex::encode(&digest[..16])
    }

    /// Parse a canonical encoding back into a value.
    pub fn decode(text: &str) -> Result<Value, ConfigError> {
        let json: serde_json::Value =
            serde_json::from_str(text).map_err(|e| ConfigError::Decode(e.to_string()))?;
        Self::from_json(&json)
    }

    fn from_json(json: &serde_json::Value) -> Result<Value, ConfigError> {
        use serde_json::Value as J;
        Ok(match json {
            J::Null => Value::None,
            J::Bool(b) => Value::Bool(*b),
            J::Number(n) => number_from_json(n)?,
            J::String(s) => Value::Str(s.clone()),
            J::Array(items) => Value::List(
                items
                    .iter()
                    .map(Self::from_json)
                    .collect::<Result<_, _>>()?,
            ),
            J::Object(map) => match (map.len(), map.get("$dict"), map.get("$float")) {
                (1, Some(J::Array(pairs)), _) => Value::Dict(
                    pairs
                        .iter()
                        .map(pair_from_json)
                        .collect::<Result<Vec<_>, _>>()?,
                ),
                (1, _, Some(J::String(s))) => Value::Float(
                    s.parse()
                        .map_err(|_| ConfigError::Decode(format!("bad float `{s}`")))?,
                ),
                _ => Value::Dict(
                    map.iter()
                        .map(|(k, v)| Ok((Value::Str(k.clone()), Self::from_json(v)?)))
                        .collect::<Result<_, ConfigError>>()?,
                ),
            },
        })
    }

    fn encode_into(&self, out: &mut String) {
        match self {
            Value::None => out.push_str("null"),
            Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Value::Int(i) => {
                let _ = write!(out, "{i}");
            }
            Value::Float(f) => encode_float(*f, out),
            Value::Str(s) => out.push_str(&serde_json::Value::String(s.clone()).to_string()),
            Value::List(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    item.encode_into(out);
                }
                out.push(']');
            }
            Value::Dict(entries) => encode_dict(entries, out),
        }
    }
}

fn number_from_json(n: &serde_json::Number) -> Result<Value, ConfigError> {
    let text = n.to_string();
    if text.contains(['.', 'e', 'E']) {
        text.parse()
            .map(Value::Float)
            .map_err(|_| ConfigError::Decode(text))
    } else {
        text.parse()
            .map(Value::Int)
            .map_err(|_| ConfigError::Decode(text))
    }
}

fn pair_from_json(pair: &serde_json::Value) -> Result<(Value, Value), ConfigError> {
    match pair.as_array().map(Vec::as_slice) {
        Some([k, v]) => Ok((Value::from_json(k)?, Value::from_json(v)?)),
        _ => Err(ConfigError::Decode(format!(
            "`$dict` entry is not a pair: {pair}"
        ))),
    }
}

/// Shortest round-trip digits, always recognisable as a float.
fn encode_float(f: f64, out: &mut String) {
    if !f.is_finite() {
        let name = if f.is_nan() {
            "nan"
        } else if f > 0.0 {
            "inf"
        } else {
            "-inf"
        };
        let _ = write!(out, "{{\"$float\":\"{name}\"}}");
        return;
    }
    let text = format!("{f:?}");
    out.push_str(&text);
    if !text.contains(['.', 'e', 'E']) {
        out.push_str(".0");
    }
}

fn encode_dict(entries: &[(Value, Value)], out: &mut String) {
    let plain = entries
        .iter()
        .all(|(k, _)| matches!(k, Value::Str(s) if !s.starts_with('$')));
    let mut encoded: Vec<(String, String)> = entries
        .iter()
        .map(|(k, v)| (k.canonical(), v.canonical()))
        .collect();
    encoded.sort();
    encoded.dedup_by(|a, b| a.0 == b.0);
    if plain {
        out.push('{');
        for (i, (k, v)) in encoded.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{k}:{v}");
        }
        out.push('}');
    } else {
        out.push_str("{\"$dict\":[");
        for (i, (k, v)) in encoded.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "[{k},{v}]");
        }
        out.push_str("]}");
    }
}

/// Typed accessors for reading options out of a config dict.
pub struct Options<'a> {
    dict: &'a Value,
}

impl<'a> Options<'a> {
    /// Wrap a config dict.
    pub fn new(dict: &'a Value) -> Self {
        Options { dict }
    }

    /// The raw value of an option; missing options read as `None`, as in the original.
    pub fn raw(&self, key: &str) -> &'a Value {
        self.dict.get(key).unwrap_or(&Value::None)
    }

    /// A string option, or `default` when unset.
    pub fn str_or(&self, key: &str, default: &str) -> Result<String, ConfigError> {
        match self.raw(key) {
            Value::None => Ok(default.to_string()),
            Value::Str(s) => Ok(s.clone()),
            other => Err(wrong(key, "a string", other)),
        }
    }

    /// A boolean option, or `default` when unset.
    pub fn bool_or(&self, key: &str, default: bool) -> Result<bool, ConfigError> {
        match self.raw(key) {
            Value::None => Ok(default),
            Value::Bool(b) => Ok(*b),
            other => Err(wrong(key, "true or false", other)),
        }
    }

    /// A number option, or `default` when unset.
    pub fn f64_or(&self, key: &str, default: f64) -> Result<f64, ConfigError> {
        match self.raw(key) {
            Value::None => Ok(default),
            Value::Int(i) => Ok(*i as f64),
            Value::Float(f) => Ok(*f),
            other => Err(wrong(key, "a number", other)),
        }
    }

    /// A non-negative integer option, or `default` when unset.
    pub fn usize_or(&self, key: &str, default: usize) -> Result<usize, ConfigError> {
        match self.raw(key) {
            Value::None => Ok(default),
            Value::Int(i) if *i >= 0 => Ok(*i as usize),
            other => Err(wrong(key, "a non-negative integer", other)),
        }
    }

    /// A list of strings (a single string counts as a one-item list); empty when unset.
    pub fn str_list(&self, key: &str) -> Result<Vec<String>, ConfigError> {
        match self.raw(key) {
            Value::None => Ok(Vec::new()),
            Value::Str(s) => Ok(vec![s.clone()]),
            Value::List(items) => items
                .iter()
                .map(|v| match v {
                    Value::Str(s) => Ok(s.clone()),
                    other => Err(wrong(key, "a list of strings", other)),
                })
                .collect(),
            other => Err(wrong(key, "a list of strings", other)),
        }
    }
}

fn wrong(key: &str, expected: &'static str, got: &Value) -> ConfigError {
    ConfigError::WrongType {
        key: key.to_string(),
        expected,
        got: got.canonical(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: &str) -> Value {
        Value::Str(x.to_string())
    }

    #[test]
    fn ints_floats_strings_and_bools_differ() {
        let values = [Value::Int(1), Value::Float(1.0), s("1"), Value::Bool(true)];
        let hashes: std::collections::HashSet<_> = values.iter().map(Value::hash).collect();
        assert_eq!(hashes.len(), 4);
        assert_eq!(Value::Float(1.0).canonical(), "1.0");
        assert_eq!(Value::Float(0.1).canonical(), "0.1");
        assert_eq!(Value::Float(1e-7).canonical(), "1e-7");
    }

    #[test]
    fn dict_order_never_matters() {
        let a = Value::Dict(vec![(s("b"), Value::Int(2)), (s("a"), Value::Int(1))]);
        let b = Value::Dict(vec![(s("a"), Value::Int(1)), (s("b"), Value::Int(2))]);
        assert_eq!(a.canonical(), r#"{"a":1,"b":2}"#);
        assert_eq!(a.hash(), b.hash());
    }

    #[test]
    fn typed_keys_round_trip() {
        let noise = Value::Dict(vec![
            (Value::Float(0.08), Value::Float(0.5)),
            (Value::Int(-1), Value::Float(0.5)),
            (
                Value::List(vec![Value::Float(0.1), Value::Float(0.2)]),
                Value::Float(0.0),
            ),
        ]);
        let text = noise.canonical();
        assert_eq!(text, r#"{"$dict":[[-1,0.5],[0.08,0.5],[[0.1,0.2],0.0]]}"#);
        let back = Value::decode(&text).unwrap();
        assert_eq!(back.canonical(), text);
        assert_eq!(Value::decode("1").unwrap(), Value::Int(1));
        assert_eq!(Value::decode("1.0").unwrap(), Value::Float(1.0));
    }

    #[test]
    fn golden_hash_is_stable() {
        let config = Value::dict([
            ("batch_size", Value::Int(128)),
            ("dataset_cls", s("FashionMNIST")),
            ("valid_size", Value::Float(0.1)),
        ]);
        assert_eq!(
            config.canonical(),
            r#"{"batch_size":128,"dataset_cls":"FashionMNIST","valid_size":0.1}"#
        );
        assert_eq!(config.hash(), "8b670613a2e7b98254908464a60e697e");
    }

    #[test]
    fn non_finite_floats_round_trip() {
        let text = Value::Float(f64::INFINITY).canonical();
        assert_eq!(text, r#"{"$float":"inf"}"#);
        assert_eq!(Value::decode(&text).unwrap(), Value::Float(f64::INFINITY));
    }
}
