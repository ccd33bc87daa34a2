//! Enough of Python's pickle format to read the CIFAR python batches: protocols 2 to 5,
//! containers, strings, numbers and numpy arrays (`_reconstruct` with `BUILD`, or
//! `_frombuffer`). Other globals are refused, so reading never runs or builds anything
//! else.

use std::collections::HashMap;
use std::rc::Rc;

/// A value read from a pickle.
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Rc<str>),
    /// Python 3 `bytes` and Python 2 `str`.
    Bytes(Rc<[u8]>),
    List(Vec<Object>),
    Tuple(Vec<Object>),
    Dict(Vec<(Object, Object)>),
    /// One of the allowed globals, as `module.name`.
    Global(&'static str),
    /// A numpy dtype: byte order and type code, e.g. `|u1`, `<i8`.
    Dtype(String),
    Array(Array),
}

/// A numpy array's raw contents.
#[derive(Clone, Debug, PartialEq)]
pub struct Array {
    pub dtype: String,
    pub shape: Vec<usize>,
    pub fortran_order: bool,
    pub data: Rc<[u8]>,
}

impl Object {
    /// What the value is, in a word (never its contents, which may be large).
    pub fn kind(&self) -> &'static str {
        match self {
            Object::None => "None",
            Object::Bool(_) => "a bool",
            Object::Int(_) => "an int",
            Object::Float(_) => "a float",
            Object::Str(_) => "a str",
            Object::Bytes(_) => "bytes",
            Object::List(_) => "a list",
            Object::Tuple(_) => "a tuple",
            Object::Dict(_) => "a dict",
            Object::Global(name) => name,
            Object::Dtype(_) => "a dtype",
            Object::Array(_) => "an array",
        }
    }

    /// The value under `key` of a dict, whose keys may be `str` or `bytes`.
    pub fn get(&self, key: &str) -> Option<&Object> {
        let Object::Dict(items) = self else {
            return None;
        };
        items.iter().find_map(|(k, v)| match k {
            Object::Str(s) if &**s == key => Some(v),
            Object::Bytes(b) if &**b == key.as_bytes() => Some(v),
            _ => None,
        })
    }
}

/// The globals a data pickle may name, under every module path numpy has used.
const GLOBALS: [(&str, &str, &str); 8] = [
    ("numpy.core.multiarray", "_reconstruct", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer", "_frombuffer"),
    ("numpy", "ndarray", "ndarray"),
    ("numpy", "dtype", "dtype"),
    ("_codecs", "encode", "encode"),
    ("__builtin__", "bytearray", "bytearray"),
];

fn global(module: &str, name: &str) -> Result<Object, String> {
    GLOBALS
        .iter()
        .find(|(m, n, _)| *m == module && *n == name)
        .map(|(_, _, short)| Object::Global(short))
        .ok_or_else(|| format!("refusing the global `{module}.{name}`: not a data pickle"))
}

struct Machine<'a> {
    bytes: &'a [u8],
    at: usize,
    stack: Vec<Object>,
    marks: Vec<usize>,
    memo: HashMap<u32, Object>,
}

/// Read one pickled object from `bytes`.
pub fn load(bytes: &[u8]) -> Result<Object, String> {
    let mut vm = Machine {
        bytes,
        at: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
    };
    vm.run()
}

impl<'a> Machine<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or_else(|| format!("truncated at byte {}", self.at))?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn uint(&mut self, n: usize) -> Result<usize, String> {
        let mut value = 0u64;
        for (i, b) in self.take(n)?.iter().enumerate() {
            value |= u64::from(*b) << (8 * i);
        }
        usize::try_from(value).map_err(|_| "length out of range".to_string())
    }

    fn line(&mut self) -> Result<&'a str, String> {
        let rest = &self.bytes[self.at..];
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or("unterminated line")?;
        self.at += end + 1;
        std::str::from_utf8(&rest[..end]).map_err(|e| e.to_string())
    }

    fn pop(&mut self) -> Result<Object, String> {
        self.stack
            .pop()
            .ok_or_else(|| "stack underflow".to_string())
    }

    fn pop_mark(&mut self) -> Result<Vec<Object>, String> {
        let mark = self.marks.pop().ok_or("no mark")?;
        if mark > self.stack.len() {
            return Err("mark beyond the stack".into());
        }
        Ok(self.stack.split_off(mark))
    }

    fn top(&mut self) -> Result<&mut Object, String> {
        self.stack
            .last_mut()
            .ok_or_else(|| "stack underflow".to_string())
    }

    fn text(&mut self, n: usize) -> Result<Object, String> {
        let raw = self.take(n)?;
        let s = std::str::from_utf8(raw).map_err(|e| e.to_string())?;
        Ok(Object::Str(s.into()))
    }

    fn bytes(&mut self, n: usize) -> Result<Object, String> {
        Ok(Object::Bytes(self.take(n)?.into()))
    }

    fn memoize(&mut self, index: u32) -> Result<(), String> {
        let top = self.top()?.clone();
        self.memo.insert(index, top);
        Ok(())
    }

    fn recall(&mut self, index: u32) -> Result<(), String> {
        let value = self.memo.get(&index).cloned();
        self.stack
            .push(value.ok_or_else(|| format!("memo {index} is unset"))?);
        Ok(())
    }

    fn run(&mut self) -> Result<Object, String> {
        loop {
            let op = self.take(1)?[0];
            match op {
                0x80 => {
                    self.take(1)?;
                }
                0x95 => {
                    self.take(8)?;
                }
                b'.' => return self.pop(),
                b'(' => self.marks.push(self.stack.len()),
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let top = self.top()?.clone();
                    self.stack.push(top);
                }
                b'N' => self.stack.push(Object::None),
                0x88 => self.stack.push(Object::Bool(true)),
                0x89 => self.stack.push(Object::Bool(false)),
                b'K' => {
                    let v = self.uint(1)?;
                    self.stack.push(Object::Int(v as i64));
                }
                b'M' => {
                    let v = self.uint(2)?;
                    self.stack.push(Object::Int(v as i64));
                }
                b'J' => {
                    let v = self.uint(4)? as u32 as i32;
                    self.stack.push(Object::Int(i64::from(v)));
                }
                0x8a => {
                    let n = self.uint(1)?;
                    let value = long(self.take(n)?)?;
                    self.stack.push(Object::Int(value));
                }
                b'G' => {
                    let raw: [u8; 8] = self.take(8)?.try_into().map_err(|_| "short float")?;
                    self.stack.push(Object::Float(f64::from_be_bytes(raw)));
                }
                b'U' => {
                    let n = self.uint(1)?;
                    let v = self.bytes(n)?;
                    self.stack.push(v);
                }
                b'T' | b'B' => {
                    let n = self.uint(4)?;
                    let v = self.bytes(n)?;
                    self.stack.push(v);
                }
                b'C' => {
                    let n = self.uint(1)?;
                    let v = self.bytes(n)?;
                    self.stack.push(v);
                }
                0x8e | 0x96 => {
                    let n = self.uint(8)?;
                    let v = self.bytes(n)?;
                    self.stack.push(v);
                }
                0x8c => {
                    let n = self.uint(1)?;
                    let v = self.text(n)?;
                    self.stack.push(v);
                }
                b'X' => {
                    let n = self.uint(4)?;
                    let v = self.text(n)?;
                    self.stack.push(v);
                }
                0x8d => {
                    let n = self.uint(8)?;
                    let v = self.text(n)?;
                    self.stack.push(v);
                }
                b'}' => self.stack.push(Object::Dict(Vec::new())),
                b']' => self.stack.push(Object::List(Vec::new())),
                b')' => self.stack.push(Object::Tuple(Vec::new())),
                b'd' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Object::Dict(pairs(items)?));
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Object::List(items));
                }
                b't' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Object::Tuple(items));
                }
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    if self.stack.len() < n {
                        return Err("stack underflow".into());
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.stack.push(Object::Tuple(items));
                }
                b'a' => {
                    let item = self.pop()?;
                    self.extend_list(vec![item])?;
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.extend_list(items)?;
                }
                b's' => {
                    let value = self.pop()?;
                    let key = self.pop()?;
                    self.extend_dict(vec![key, value])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    self.extend_dict(items)?;
                }
                b'q' => {
                    let i = self.uint(1)? as u32;
                    self.memoize(i)?;
                }
                b'r' => {
                    let i = self.uint(4)? as u32;
                    self.memoize(i)?;
                }
                0x94 => {
                    let i = self.memo.len() as u32;
                    self.memoize(i)?;
                }
                b'p' => {
                    let i = self.line()?.parse().map_err(|_| "bad PUT index")?;
                    self.memoize(i)?;
                }
                b'h' => {
                    let i = self.uint(1)? as u32;
                    self.recall(i)?;
                }
                b'j' => {
                    let i = self.uint(4)? as u32;
                    self.recall(i)?;
                }
                b'g' => {
                    let i = self.line()?.parse().map_err(|_| "bad GET index")?;
                    self.recall(i)?;
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.stack.push(global(module, name)?);
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module, name) {
                        (Object::Str(m), Object::Str(n)) => self.stack.push(global(&m, &n)?),
                        _ => return Err("STACK_GLOBAL needs two strings".into()),
                    }
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    self.stack.push(reduce(callable, args)?);
                }
                b'b' => {
                    let state = self.pop()?;
                    let target = self.pop()?;
                    self.stack.push(build(target, state)?);
                }
                other => return Err(format!("unsupported pickle opcode 0x{other:02x}")),
            }
        }
    }

    fn extend_list(&mut self, items: Vec<Object>) -> Result<(), String> {
        match self.top()? {
            Object::List(list) => {
                list.extend(items);
                Ok(())
            }
            _ => Err("APPEND to a non-list".into()),
        }
    }

    fn extend_dict(&mut self, items: Vec<Object>) -> Result<(), String> {
        let new = pairs(items)?;
        match self.top()? {
            Object::Dict(dict) => {
                dict.extend(new);
                Ok(())
            }
            _ => Err("SETITEM on a non-dict".into()),
        }
    }
}

fn pairs(items: Vec<Object>) -> Result<Vec<(Object, Object)>, String> {
    if !items.len().is_multiple_of(2) {
        return Err("odd number of dict items".into());
    }
    let mut it = items.into_iter();
    let mut out = Vec::new();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    Ok(out)
}

/// A little-endian two's-complement integer of at most 8 bytes.
fn long(raw: &[u8]) -> Result<i64, String> {
    if raw.len() > 8 {
        return Err("integer wider than 64 bits".into());
    }
    let negative = raw.last().is_some_and(|b| b & 0x80 != 0);
    let mut buf = [if negative { 0xff } else { 0 }; 8];
    buf[..raw.len()].copy_from_slice(raw);
    Ok(i64::from_le_bytes(buf))
}

fn reduce(callable: Object, args: Object) -> Result<Object, String> {
    let Object::Tuple(args) = args else {
        return Err("REDUCE arguments are not a tuple".into());
    };
    match (callable, args.as_slice()) {
        (Object::Global("_reconstruct"), _) => Ok(Object::Array(Array {
            dtype: String::new(),
            shape: Vec::new(),
            fortran_order: false,
            data: Rc::from(Vec::new()),
        })),
        (Object::Global("dtype"), [Object::Str(code), ..]) => Ok(Object::Dtype(format!("={code}"))),
        (Object::Global("dtype"), [Object::Bytes(code), ..]) => {
            Ok(Object::Dtype(format!("={}", String::from_utf8_lossy(code))))
        }
        (Object::Global("encode"), [Object::Str(text), ..]) => {
            // Python 3 writes `bytes` for protocol 2 as `_codecs.encode(text, "latin1")`.
            let latin1: Option<Vec<u8>> = text.chars().map(|c| u8::try_from(c).ok()).collect();
            latin1
                .map(|b| Object::Bytes(b.into()))
                .ok_or_else(|| "`_codecs.encode` of a non-latin-1 string".into())
        }
        (Object::Global("bytearray"), [Object::Bytes(b), ..]) => Ok(Object::Bytes(b.clone())),
        (
            Object::Global("_frombuffer"),
            [Object::Bytes(data), Object::Dtype(dtype), shape, order],
        ) => Ok(Object::Array(Array {
            dtype: dtype.clone(),
            shape: dims(shape)?,
            fortran_order: matches!(order, Object::Str(o) if &**o == "F"),
            data: data.clone(),
        })),
        (callable, _) => Err(format!(
            "cannot call {} with these arguments",
            callable.kind()
        )),
    }
}

fn build(target: Object, state: Object) -> Result<Object, String> {
    let Object::Tuple(state) = state else {
        return Err("BUILD state is not a tuple".into());
    };
    match (target, state.as_slice()) {
        (Object::Dtype(code), [_, Object::Str(order), ..]) => {
            let code = code.trim_start_matches('=');
            Ok(Object::Dtype(format!("{order}{code}")))
        }
        (Object::Dtype(code), [_, Object::Bytes(order), ..]) => {
            let code = code.trim_start_matches('=');
            Ok(Object::Dtype(format!(
                "{}{code}",
                String::from_utf8_lossy(order)
            )))
        }
        (Object::Array(_), [_, shape, Object::Dtype(dtype), fortran, data]) => {
            let data = match data {
                Object::Bytes(b) => b.clone(),
                Object::Str(s) => Rc::from(s.as_bytes()),
                _ => return Err("array data is not a byte string".into()),
            };
            Ok(Object::Array(Array {
                dtype: dtype.clone(),
                shape: dims(shape)?,
                fortran_order: matches!(fortran, Object::Bool(true) | Object::Int(1)),
                data,
            }))
        }
        (target, _) => Err(format!("cannot BUILD {}", target.kind())),
    }
}

fn dims(shape: &Object) -> Result<Vec<usize>, String> {
    let Object::Tuple(items) = shape else {
        return Err("array shape is not a tuple".into());
    };
    items
        .iter()
        .map(|d| match d {
            Object::Int(n) if *n >= 0 => Ok(*n as usize),
            _ => Err("array shape holds a non-size".to_string()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_containers_numbers_and_memo_references() {
        // {b"data": 5, b"labels": [1, -2, 300, 2**40], "x": (1.5, None, True, b"data")}
        let mut bytes =
            b"\x80\x02}q\x00(U\x04dataq\x01K\x05U\x06labels]q\x02(K\x01J\xfe\xff\xff\xff".to_vec();
        bytes.extend(b"M\x2c\x01\x8a\x06\x00\x00\x00\x00\x00\x01eX\x01\x00\x00\x00x");
        bytes.extend(b"(G?\xf8\x00\x00\x00\x00\x00\x00N\x88h\x01tq\x03u.");
        let value = load(&bytes).unwrap();
        assert_eq!(value.get("data"), Some(&Object::Int(5)));
        assert_eq!(
            value.get("labels"),
            Some(&Object::List(vec![
                Object::Int(1),
                Object::Int(-2),
                Object::Int(300),
                Object::Int(1 << 40)
            ]))
        );
        let Some(Object::Tuple(items)) = value.get("x") else {
            panic!("{value:?}");
        };
        assert_eq!(items[0], Object::Float(1.5));
        assert_eq!(items[3], Object::Bytes(b"data".as_slice().into()));
    }

    #[test]
    fn refuses_code_and_reports_truncation() {
        let err = load(b"\x80\x02cbuiltins\neval\n.").unwrap_err();
        assert!(err.contains("refusing the global `builtins.eval`"), "{err}");
        let err = load(b"\x80\x02U\x09abc").unwrap_err();
        assert!(err.contains("truncated"), "{err}");
        let err = load(b"\x80\x02\xff").unwrap_err();
        assert!(err.contains("opcode 0xff"), "{err}");
    }
}
