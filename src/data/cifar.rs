//! CIFAR-10 and CIFAR-100 as their official archives unpack: the python version
//! (`cifar-10-batches-py/`, `cifar-100-python/`: pickled dicts holding a `uint8` array
//! `data` of rows of 3072 pixels, red then green then blue planes, and a list `labels` or
//! `fine_labels`) and the binary version (`cifar-10-batches-bin/`, `cifar-100-binary/`:
//! records of one label byte, or coarse and fine label bytes, then the 3072 pixels).

use std::path::{Path, PathBuf};

use super::pickle::{self, Object};
use super::{DataError, Images};

/// Pixels per image: 3 planes of 32x32.
pub const IMAGE_LEN: usize = 3 * 32 * 32;

/// Which archive unpacked the files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Python,
    Binary,
}

/// The files of one CIFAR dataset.
#[derive(Clone, Debug)]
pub struct CifarFiles {
    pub format: Format,
    pub hundred: bool,
    pub train: Vec<PathBuf>,
    pub test: PathBuf,
}

/// The archive folders a CIFAR dataset may have been unpacked to, with their files.
fn layouts(hundred: bool) -> [(Format, &'static str, Vec<String>, &'static str); 2] {
    if hundred {
        [
            (
                Format::Python,
                "cifar-100-python",
                vec!["train".into()],
                "test",
            ),
            (
                Format::Binary,
                "cifar-100-binary",
                vec!["train.bin".into()],
                "test.bin",
            ),
        ]
    } else {
        let batches = |suffix: &str| (1..=5).map(|i| format!("data_batch_{i}{suffix}")).collect();
        [
            (
                Format::Python,
                "cifar-10-batches-py",
                batches(""),
                "test_batch",
            ),
            (
                Format::Binary,
                "cifar-10-batches-bin",
                batches(".bin"),
                "test_batch.bin",
            ),
        ]
    }
}

/// The archive folder names searched, for messages.
pub fn folder_names(hundred: bool) -> Vec<&'static str> {
    layouts(hundred).iter().map(|l| l.1).collect()
}

/// The files under `root`, python version first; `Err` lists the folders that exist but
/// lack files.
pub fn find_in(root: &Path, hundred: bool) -> Result<Option<CifarFiles>, String> {
    let mut partial = Vec::new();
    for (format, folder, train, test) in layouts(hundred) {
        let dir = root.join(folder);
        if !dir.is_dir() {
            continue;
        }
        let missing: Vec<String> = train
            .iter()
            .map(String::as_str)
            .chain([test])
            .filter(|name| !dir.join(name).is_file())
            .map(|name| format!("`{name}`"))
            .collect();
        if missing.is_empty() {
            return Ok(Some(CifarFiles {
                format,
                hundred,
                train: train.iter().map(|name| dir.join(name)).collect(),
                test: dir.join(test),
            }));
        }
        partial.push(format!("`{}` lacks {}", dir.display(), missing.join(", ")));
    }
    match partial.is_empty() {
        true => Ok(None),
        false => Err(partial.join("; ")),
    }
}

/// Read the training and test images with their labels.
pub fn read(files: &CifarFiles) -> Result<[(Images, Vec<i64>); 2], DataError> {
    let train = concat(
        files
            .train
            .iter()
            .map(|path| read_file(path, files))
            .collect::<Result<Vec<_>, _>>()?,
    );
    Ok([train, read_file(&files.test, files)?])
}

fn concat(parts: Vec<(Images, Vec<i64>)>) -> (Images, Vec<i64>) {
    let mut images = Images {
        count: 0,
        channels: 3,
        rows: 32,
        cols: 32,
        pixels: Vec::new(),
    };
    let mut labels = Vec::new();
    for (part, part_labels) in parts {
        images.count += part.count;
        images.pixels.extend(part.pixels);
        labels.extend(part_labels);
    }
    (images, labels)
}

fn read_file(path: &Path, files: &CifarFiles) -> Result<(Images, Vec<i64>), DataError> {
    let bytes = std::fs::read(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let corrupt = |reason: String| DataError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let (pixels, labels) = match files.format {
        Format::Python => python_batch(&bytes, files.hundred).map_err(corrupt)?,
        Format::Binary => binary_batch(&bytes, files.hundred).map_err(corrupt)?,
    };
    if let Some(reason) = super::bad_label(&labels, if files.hundred { 100 } else { 10 }) {
        return Err(corrupt(reason));
    }
    let images = Images {
        count: labels.len(),
        channels: 3,
        rows: 32,
        cols: 32,
        pixels,
    };
    Ok((images, labels))
}

fn python_batch(bytes: &[u8], hundred: bool) -> Result<(Vec<u8>, Vec<i64>), String> {
    let batch = pickle::load(bytes)?;
    let label_key = if hundred { "fine_labels" } else { "labels" };
    let Some(Object::Array(data)) = batch.get("data") else {
        return Err("no `data` array in the pickled batch".into());
    };
    if !matches!(data.dtype.as_str(), "|u1" | "=u1" | "<u1") || data.fortran_order {
        return Err(format!(
            "`data` is `{}`, expected C-ordered uint8",
            data.dtype
        ));
    }
    let rows = data.data.len() / IMAGE_LEN;
    if data.shape.iter().product::<usize>() != data.data.len()
        || data.data.len() != rows * IMAGE_LEN
    {
        return Err(format!(
            "`data` of shape {:?} is not rows of {IMAGE_LEN} pixels",
            data.shape
        ));
    }
    let labels = match batch.get(label_key) {
        Some(Object::List(items)) => items
            .iter()
            .map(|item| match item {
                Object::Int(label) => Ok(*label),
                other => Err(format!("`{label_key}` holds {}", other.kind())),
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(other) => {
            return Err(format!(
                "`{label_key}` is {}, expected a list",
                other.kind()
            ))
        }
        None => return Err(format!("no `{label_key}` in the pickled batch")),
    };
    if labels.len() != rows {
        return Err(format!("{} labels for {rows} images", labels.len()));
    }
    Ok((data.data.to_vec(), labels))
}

fn binary_batch(bytes: &[u8], hundred: bool) -> Result<(Vec<u8>, Vec<i64>), String> {
    let label_bytes = if hundred { 2 } else { 1 };
    let record = label_bytes + IMAGE_LEN;
    if bytes.is_empty() || !bytes.len().is_multiple_of(record) {
        return Err(format!(
            "{} bytes is not a whole number of {record}-byte records",
            bytes.len()
        ));
    }
    let mut pixels = Vec::with_capacity(bytes.len() / record * IMAGE_LEN);
    let mut labels = Vec::with_capacity(bytes.len() / record);
    for rec in bytes.chunks_exact(record) {
        labels.push(i64::from(rec[label_bytes - 1]));
        pixels.extend_from_slice(&rec[label_bytes..]);
    }
    Ok((pixels, labels))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_records_give_labels_and_planes() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("cifar-100-binary");
        std::fs::create_dir(&folder).unwrap();
        let record = |coarse: u8, fine: u8, fill: u8| {
            let mut r = vec![coarse, fine];
            r.extend(std::iter::repeat_n(fill, IMAGE_LEN));
            r
        };
        let train = [record(1, 42, 7), record(2, 99, 8)].concat();
        std::fs::write(folder.join("train.bin"), &train).unwrap();
        std::fs::write(folder.join("test.bin"), record(0, 3, 9)).unwrap();
        let files = find_in(dir.path(), true).unwrap().unwrap();
        assert_eq!(files.format, Format::Binary);
        let [(images, labels), (test, test_labels)] = read(&files).unwrap();
        assert_eq!((images.count, labels), (2, vec![42, 99]));
        assert_eq!(images.image(1)[IMAGE_LEN - 1], 8);
        assert_eq!((test.count, test_labels), (1, vec![3]));

        std::fs::write(folder.join("test.bin"), &train[..100]).unwrap();
        let err = read(&files).err().unwrap().to_string();
        assert!(
            err.contains("100 bytes is not a whole number of 3074-byte records"),
            "{err}"
        );
        std::fs::remove_file(folder.join("test.bin")).unwrap();
        let err = find_in(dir.path(), true).unwrap_err();
        assert!(err.contains("lacks `test.bin`"), "{err}");
    }
}
