//! The nnfabrik-compatible `make_hash`, kept so rows of old databases can be looked up.
//!
//! md5 over: a string's UTF-8 bytes; for a mapping, `str(key)` then the hash of the value,
//! keys sorted by `str(key)`; for any other iterable, its items' hashes in order; for
//! anything else, `str(obj)`. Its flaws are kept on purpose: `1`, `"1"` and `True`/`"True"`
//! collide, and so do lists and tuples.

use md5::{Digest, Md5};

use super::Value;

/// The nnfabrik `make_hash` of a value, as 32 hex digits.
pub fn make_hash(value: &Value) -> String {
    let mut md5 = Md5::new();
    match value {
        Value::Str(s) => md5.update(s.as_bytes()),
        Value::Dict(entries) => {
            let mut keyed: Vec<(String, &Value)> = entries
                .iter()
                .map(|(k, v)| (python_str(k, true), v))
                .collect();
            keyed.sort_by(|a, b| a.0.cmp(&b.0));
            for (key, v) in keyed {
                md5.update(key.as_bytes());
                md5.update(make_hash(v).as_bytes());
            }
        }
        Value::List(items) => {
            for item in items {
                md5.update(make_hash(item).as_bytes());
            }
        }
        other => md5.update(python_str(other, false).as_bytes()),
    }
    hex::encode(md5.finalize())
}

/// Python's `str()` of a value; lists in key position were tuples.
fn python_str(value: &Value, as_key: bool) -> String {
    match value {
        Value::Str(s) => s.clone(),
        other => python_repr(other, as_key),
    }
}

/// Python's `repr()` of a value.
fn python_repr(value: &Value, tuple: bool) -> String {
    match value {
        Value::None => "None".into(),
        Value::Bool(b) => if *b { "True" } else { "False" }.into(),
        Value::Int(i) => i.to_string(),
        Value::Float(f) => python_float(*f),
        Value::Str(s) => python_quote(s),
        Value::List(items) => {
            let inner: Vec<String> = items.iter().map(|v| python_repr(v, tuple)).collect();
            match (tuple, inner.len()) {
                (true, 1) => format!("({},)", inner[0]),
                (true, _) => format!("({})", inner.join(", ")),
                (false, _) => format!("[{}]", inner.join(", ")),
            }
        }
        Value::Dict(entries) => {
            let inner: Vec<String> = entries
                .iter()
                .map(|(k, v)| format!("{}: {}", python_repr(k, true), python_repr(v, false)))
                .collect();
            format!("{{{}}}", inner.join(", "))
        }
    }
}

fn python_quote(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// Python's `repr()` of a float: shortest round-trip digits, fixed notation for decimal
/// exponents from -4 to 15, else scientific with a signed two-digit exponent.
pub fn python_float(f: f64) -> String {
    if f.is_nan() {
        return "nan".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf" } else { "-inf" }.into();
    }
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (sign, mantissa) = mantissa
        .strip_prefix('-')
        .map_or(("", mantissa), |m| ("-", m));
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    if !(-4..16).contains(&exp) {
        let exp_sign = if exp < 0 { '-' } else { '+' };
        return format!("{sign}{mantissa}e{exp_sign}{:02}", exp.abs());
    }
    if exp < 0 {
        return format!("{sign}0.{}{digits}", "0".repeat((-exp - 1) as usize));
    }
    let point = exp as usize + 1;
    if digits.len() <= point {
        format!("{sign}{digits}{}.0", "0".repeat(point - digits.len()))
    } else {
        format!("{sign}{}.{}", &digits[..point], &digits[point..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_as_python_does() {
        for (f, text) in [
            (0.1, "0.1"),
            (1.0, "1.0"),
            (-2.5, "-2.5"),
            (1e-7, "1e-07"),
            (0.0001, "0.0001"),
            (123456.0, "123456.0"),
            (1e16, "1e+16"),
            (1.5e300, "1.5e+300"),
            (3e-4, "0.0003"),
            (0.0, "0.0"),
        ] {
            assert_eq!(python_float(f), text, "{f}");
        }
    }

    #[test]
    fn golden_hashes_and_known_collisions() {
        assert_eq!(
            make_hash(&Value::Str("abc".into())),
            "900150983cd24fb0d6963f7d28e17f72"
        );
        assert_eq!(
            make_hash(&Value::Int(1)),
            make_hash(&Value::Str("1".into()))
        );
        assert_eq!(
            make_hash(&Value::Bool(true)),
            make_hash(&Value::Str("True".into()))
        );
        let noise = Value::Dict(vec![
            (Value::Float(0.08), Value::Float(0.5)),
            (Value::Int(-1), Value::Float(0.5)),
        ]);
        assert_eq!(make_hash(&noise), "dc448f9774f07ef31dbf3525a6e6c234");
    }
}
