//! The `.npy` format of numpy (versions 1 to 3): a magic string, a Python dict literal
//! naming the dtype, the order and the shape, then the raw array.

use std::fs::File;
use std::io::{BufReader, Read, Seek};
use std::path::Path;

use super::DataError;

/// An array's header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub dtype: String,
    pub fortran_order: bool,
    pub shape: Vec<usize>,
}

impl Header {
    /// Bytes per element of the dtypes read here.
    fn item_size(&self) -> Option<usize> {
        match self.dtype.trim_start_matches(['<', '|', '=']) {
            "u1" | "i1" | "b1" => Some(1),
            "i4" | "u4" => Some(4),
            "i8" | "u8" => Some(8),
            _ => None,
        }
    }
}

const MAGIC: &[u8] = b"\x93NUMPY";

fn corrupt(path: &Path, reason: String) -> DataError {
    DataError::Corrupt {
        path: path.to_path_buf(),
        reason,
    }
}

/// Read the header, leaving `reader` at the start of the data.
fn read_header<R: Read>(path: &Path, reader: &mut R) -> Result<Header, DataError> {
    let io = |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut lead = [0u8; 8];
    if reader.read_exact(&mut lead).is_err() {
        return Err(corrupt(path, "shorter than a `.npy` header".into()));
    }
    if &lead[..6] != MAGIC {
        return Err(corrupt(
            path,
            "not a `.npy` file (no `\\x93NUMPY` magic)".into(),
        ));
    }
    let len = match lead[6] {
        1 => {
            let mut n = [0u8; 2];
            reader.read_exact(&mut n).map_err(io)?;
            usize::from(u16::from_le_bytes(n))
        }
        2 | 3 => {
            let mut n = [0u8; 4];
            reader.read_exact(&mut n).map_err(io)?;
            u32::from_le_bytes(n) as usize
        }
        v => return Err(corrupt(path, format!("`.npy` version {v} is unknown"))),
    };
    let mut text = vec![0u8; len];
    reader.read_exact(&mut text).map_err(io)?;
    let text = String::from_utf8_lossy(&text);
    parse_header(&text).map_err(|reason| corrupt(path, reason))
}

/// The value after `'key':` in a header dict literal.
fn field<'a>(text: &'a str, key: &str) -> Result<&'a str, String> {
    let at = text
        .find(&format!("'{key}'"))
        .ok_or_else(|| format!("the header lacks `{key}`"))?;
    let rest = text[at + key.len() + 2..].trim_start();
    Ok(rest.strip_prefix(':').unwrap_or(rest).trim_start())
}

fn parse_header(text: &str) -> Result<Header, String> {
    let descr = field(text, "descr")?;
    let dtype = descr
        .strip_prefix('\'')
        .and_then(|d| d.split('\'').next())
        .ok_or("`descr` is not a simple dtype")?
        .to_string();
    let fortran_order = field(text, "fortran_order")?.starts_with("True");
    let shape = field(text, "shape")?;
    let inner = shape
        .strip_prefix('(')
        .and_then(|s| s.split(')').next())
        .ok_or("`shape` is not a tuple")?;
    let shape = inner
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| d.parse().map_err(|_| format!("`shape` holds `{d}`")))
        .collect::<Result<_, _>>()?;
    Ok(Header {
        dtype,
        fortran_order,
        shape,
    })
}

/// Read a C-ordered array of `expect` dtypes (e.g. `["|u1"]`), checking its size.
pub fn read(path: &Path, expect: &[&str]) -> Result<(Header, Vec<u8>), DataError> {
    let io = |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut reader = BufReader::new(File::open(path).map_err(io)?);
    let header = read_header(path, &mut reader)?;
    check_dtype(path, &header, expect)?;
    let mut data = Vec::new();
    reader.read_to_end(&mut data).map_err(io)?;
    check_size(path, &header, data.len())?;
    Ok((header, data))
}

/// Read the header and check, without reading the data, that the file is a C-ordered
/// array of one of the `expect` dtypes holding as many bytes as its shape needs.
pub fn check(path: &Path, expect: &[&str]) -> Result<Header, DataError> {
    let io = |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    let total = file.metadata().map_err(io)?.len() as usize;
    let mut reader = BufReader::new(file);
    let header = read_header(path, &mut reader)?;
    check_dtype(path, &header, expect)?;
    let at = reader.stream_position().map_err(io)? as usize;
    check_size(path, &header, total.saturating_sub(at))?;
    Ok(header)
}

fn check_dtype(path: &Path, header: &Header, expect: &[&str]) -> Result<(), DataError> {
    if expect.contains(&header.dtype.as_str()) && !header.fortran_order {
        return Ok(());
    }
    let order = if header.fortran_order {
        " in Fortran order"
    } else {
        ""
    };
    let reason = format!(
        "dtype `{}`{order}, expected C-ordered {}",
        header.dtype,
        expect.join(" or ")
    );
    Err(corrupt(path, reason))
}

fn check_size(path: &Path, header: &Header, found: usize) -> Result<(), DataError> {
    let size = header.item_size().unwrap_or(1) * header.shape.iter().product::<usize>();
    if found == size {
        return Ok(());
    }
    let reason = format!("shape {:?} needs {size} bytes, found {found}", header.shape);
    Err(corrupt(path, reason))
}

/// Integer labels from a `.npy` array of `uint8`, `int32` or `int64`.
pub fn read_labels(path: &Path) -> Result<Vec<i64>, DataError> {
    let (header, data) = read(path, &["|u1", "<i4", "<i8"])?;
    Ok(match header.item_size() {
        Some(8) => data
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap_or_default()))
            .collect(),
        Some(4) => data
            .chunks_exact(4)
            .map(|b| i64::from(i32::from_le_bytes(b.try_into().unwrap_or_default())))
            .collect(),
        _ => data.iter().map(|&b| i64::from(b)).collect(),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Write a version-1 `.npy` file as numpy does.
    pub(crate) fn write_npy(path: &Path, dtype: &str, shape: &[usize], data: &[u8]) {
        let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
        let shape = match dims.len() {
            1 => format!("({},)", dims[0]),
            _ => format!("({})", dims.join(", ")),
        };
        let mut header =
            format!("{{'descr': '{dtype}', 'fortran_order': False, 'shape': {shape}, }}");
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut bytes = MAGIC.to_vec();
        bytes.extend([1, 0]);
        bytes.extend((header.len() as u16).to_le_bytes());
        bytes.extend(header.as_bytes());
        bytes.extend(data);
        std::fs::write(path, bytes).unwrap();
    }

    #[test]
    fn reads_headers_images_and_labels() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fog.npy");
        let pixels: Vec<u8> = (0..2 * 4 * 4 * 3).map(|i| i as u8).collect();
        write_npy(&path, "|u1", &[2, 4, 4, 3], &pixels);
        let (header, data) = read(&path, &["|u1"]).unwrap();
        assert_eq!(header.shape, vec![2, 4, 4, 3]);
        assert_eq!(data, pixels);

        let labels = dir.path().join("labels.npy");
        let values: Vec<u8> = [3i64, 9, 0].iter().flat_map(|v| v.to_le_bytes()).collect();
        write_npy(&labels, "<i8", &[3], &values);
        assert_eq!(read_labels(&labels).unwrap(), vec![3, 9, 0]);

        write_npy(&path, "|u1", &[2, 4, 4, 3], &pixels[..10]);
        let err = read(&path, &["|u1"]).unwrap_err().to_string();
        assert!(err.contains("needs 96 bytes, found 10"), "{err}");
        let err = read(&labels, &["|u1"]).unwrap_err().to_string();
        assert!(err.contains("dtype `<i8`, expected C-ordered |u1"), "{err}");
        std::fs::write(&path, b"PK\x03\x04 not numpy").unwrap();
        let err = check(&path, &["|u1"]).unwrap_err().to_string();
        assert!(err.contains("not a `.npy` file"), "{err}");
    }
}
