//! The idx format of MNIST and Fashion-MNIST, raw or gzip-compressed.

use std::io::Read;
use std::path::Path;

use super::{DataError, Images};

/// Read the whole file, inflating it when it starts with the gzip magic.
fn read_maybe_gzip(path: &Path) -> Result<Vec<u8>, DataError> {
    let io = |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    };
    let raw = std::fs::read(path).map_err(io)?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::with_capacity(raw.len() * 4);
        flate2::read::GzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .map_err(io)?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// Check the magic number and dimension count, return the dimensions and the payload.
fn parse_header<'a>(
    path: &Path,
    bytes: &'a [u8],
    dims: usize,
) -> Result<(Vec<usize>, &'a [u8]), DataError> {
    let corrupt = |reason: String| DataError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let header_len = 4 + 4 * dims;
    if bytes.len() < header_len {
        return Err(corrupt(format!(
            "{} bytes is shorter than the idx header",
            bytes.len()
        )));
    }
    if bytes[0] != 0 || bytes[1] != 0 || bytes[2] != 0x08 || bytes[3] as usize != dims {
        let magic = &bytes[..4];
        return Err(corrupt(format!(
            "magic {magic:02x?} is not unsigned-byte idx with {dims} dims"
        )));
    }
    let shape: Vec<usize> = (0..dims)
        .map(|i| {
            let at = 4 + 4 * i;
            u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]) as usize
        })
        .collect();
    let payload = &bytes[header_len..];
    let expected: usize = shape.iter().product();
    if payload.len() != expected {
        return Err(corrupt(format!(
            "header {shape:?} needs {expected} bytes, found {}",
            payload.len()
        )));
    }
    Ok((shape, payload))
}

/// Read an idx3 image file: one channel per image.
pub fn read_images(path: &Path) -> Result<Images, DataError> {
    let bytes = read_maybe_gzip(path)?;
    let (shape, payload) = parse_header(path, &bytes, 3)?;
    Ok(Images {
        count: shape[0],
        channels: 1,
        rows: shape[1],
        cols: shape[2],
        pixels: payload.to_vec(),
    })
}

/// Read an idx1 label file.
pub fn read_labels(path: &Path) -> Result<Vec<i64>, DataError> {
    let bytes = read_maybe_gzip(path)?;
    let (_, payload) = parse_header(path, &bytes, 1)?;
    Ok(payload.iter().map(|&b| i64::from(b)).collect())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;

    /// Write a small idx file in the real format, optionally gzip-compressed.
    pub(crate) fn write_idx(path: &Path, dims: &[u32], payload: &[u8], gzip: bool) {
        let mut bytes = vec![0, 0, 0x08, dims.len() as u8];
        for d in dims {
            bytes.extend_from_slice(&d.to_be_bytes());
        }
        bytes.extend_from_slice(payload);
        if gzip {
            let file = std::fs::File::create(path).unwrap();
            let mut enc = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
            enc.write_all(&bytes).unwrap();
            enc.finish().unwrap();
        } else {
            std::fs::write(path, bytes).unwrap();
        }
    }

    #[test]
    fn reads_raw_and_gzip_alike() {
        let dir = tempfile::tempdir().unwrap();
        let pixels: Vec<u8> = (0..2 * 3 * 4).map(|i| i as u8).collect();
        for gzip in [false, true] {
            let path = dir.path().join(format!("img-{gzip}"));
            write_idx(&path, &[2, 3, 4], &pixels, gzip);
            let images = read_images(&path).unwrap();
            assert_eq!((images.count, images.rows, images.cols), (2, 3, 4));
            assert_eq!(images.pixels, pixels);
        }
        let path = dir.path().join("labels.gz");
        write_idx(&path, &[3], &[7, 0, 9], true);
        assert_eq!(read_labels(&path).unwrap(), vec![7, 0, 9]);
    }

    #[test]
    fn truncated_file_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img");
        write_idx(&path, &[2, 3, 4], &[0; 10], false);
        let err = read_images(&path).unwrap_err().to_string();
        assert!(err.contains("needs 24 bytes, found 10"), "{err}");
        let err = read_labels(&path).unwrap_err().to_string();
        assert!(err.contains("magic"), "{err}");
    }
}
