//! Corrupted test sets in the CIFAR-10-C layout: a folder (`CIFAR-10-C/`, `CIFAR-100-C/`)
//! with one `.npy` file per corruption, holding five severities of the same `n` test images
//! one after the other (`[5 n, 32, 32, 3]` uint8, channels last), and `labels.npy` with
//! their `5 n` labels.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::npy;
use super::{DataError, Family, Images, Split};

/// Severity levels per corruption.
pub const SEVERITIES: usize = 5;

/// The corrupted test sets of a dataset, checked; images are read one corruption at a
/// time.
#[derive(Clone, Debug)]
pub struct Corrupted {
    pub dir: PathBuf,
    /// `(name, file)` per corruption, in name order.
    pub corruptions: Vec<(String, PathBuf)>,
    pub labels: Arc<Vec<i64>>,
    /// Images per severity.
    pub per_severity: usize,
}

/// The folder name of a family's corrupted test sets.
pub fn folder(family: Family) -> Option<&'static str> {
    match family {
        Family::Cifar10 => Some("CIFAR-10-C"),
        Family::Cifar100 => Some("CIFAR-100-C"),
        _ => None,
    }
}

impl Corrupted {
    /// Find and check the sets in `dir`: every file's header, shape and row count.
    pub fn open(dir: &Path, family: Family) -> Result<Corrupted, DataError> {
        let labels_path = dir.join("labels.npy");
        if !labels_path.is_file() {
            return Err(DataError::Corrupt {
                path: dir.to_path_buf(),
                reason: "no `labels.npy`: the corrupted test sets need their labels".into(),
            });
        }
        let labels = npy::read_labels(&labels_path)?;
        if let Some(reason) = super::bad_label(&labels, family.num_classes()) {
            return Err(DataError::Corrupt {
                path: labels_path,
                reason,
            });
        }
        if labels.is_empty() || !labels.len().is_multiple_of(SEVERITIES) {
            return Err(DataError::Corrupt {
                path: labels_path,
                reason: format!(
                    "{} labels are not {SEVERITIES} equal severities",
                    labels.len()
                ),
            });
        }
        let entries = std::fs::read_dir(dir).map_err(|source| DataError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let mut corruptions: Vec<(String, PathBuf)> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "npy") && *p != labels_path)
            .filter_map(|p| Some((p.file_stem()?.to_str()?.to_string(), p)))
            .collect();
        corruptions.sort();
        if corruptions.is_empty() {
            return Err(DataError::Corrupt {
                path: dir.to_path_buf(),
                reason: "no corruption `.npy` files beside `labels.npy`".into(),
            });
        }
        let [c, h, w] = family.shape();
        for (_, path) in &corruptions {
            let header = npy::check(path, &["|u1"])?;
            let want = vec![labels.len(), h, w, c];
            if header.shape != want {
                return Err(DataError::Corrupt {
                    path: path.clone(),
                    reason: format!(
                        "shape {:?}, expected {want:?} to match `labels.npy`",
                        header.shape
                    ),
                });
            }
        }
        Ok(Corrupted {
            dir: dir.to_path_buf(),
            per_severity: labels.len() / SEVERITIES,
            labels: Arc::new(labels),
            corruptions,
        })
    }

    /// The images of one corruption, every severity, as planes (`[5 n, C, H, W]`).
    pub fn load(&self, path: &Path, shape: [usize; 3]) -> Result<Split, DataError> {
        let (header, hwc) = npy::read(path, &["|u1"])?;
        let images = Images::from_channels_last(&hwc, header.shape[0], shape);
        Ok(Split {
            images: Arc::new(images),
            labels: self.labels.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::npy::tests::write_npy;

    #[test]
    fn checks_the_sets_and_reads_channels_last_as_planes() {
        let dir = tempfile::tempdir().unwrap();
        let n = 2 * SEVERITIES;
        let labels: Vec<u8> = (0..n as u8).map(|i| i % 10).collect();
        write_npy(&dir.path().join("labels.npy"), "|u1", &[n], &labels);
        let pixels: Vec<u8> = (0..n * 32 * 32 * 3).map(|i| (i % 3) as u8).collect();
        for name in ["snow", "fog"] {
            write_npy(
                &dir.path().join(format!("{name}.npy")),
                "|u1",
                &[n, 32, 32, 3],
                &pixels,
            );
        }
        let sets = Corrupted::open(dir.path(), Family::Cifar10).unwrap();
        let names: Vec<&str> = sets.corruptions.iter().map(|c| c.0.as_str()).collect();
        assert_eq!((names, sets.per_severity), (vec!["fog", "snow"], 2));
        let split = sets.load(&sets.corruptions[0].1, [3, 32, 32]).unwrap();
        // Channel c of every pixel holds c: each plane is constant.
        let image = split.images.image(3);
        assert!(image[..1024].iter().all(|&v| v == 0));
        assert!(image[2048..].iter().all(|&v| v == 2));

        let fog = dir.path().join("fog.npy");
        write_npy(&fog, "|u1", &[n - 1, 32, 32, 3], &pixels[..(n - 1) * 3072]);
        let err = Corrupted::open(dir.path(), Family::Cifar10)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("fog.npy") && err.contains("to match `labels.npy`"),
            "{err}"
        );
        // A short file is found when the sets are opened, before anything trains.
        write_npy(&fog, "|u1", &[n, 32, 32, 3], &pixels[..100]);
        let err = Corrupted::open(dir.path(), Family::Cifar10)
            .unwrap_err()
            .to_string();
        let short = "fog.npy`: corrupt: shape [10, 32, 32, 3] needs 30720 bytes, found 100";
        assert!(err.contains(short), "{err}");
    }
}
