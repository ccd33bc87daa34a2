//! Datasets: locating and reading the files, splitting, and preparing batches on a
//! background thread.

pub mod idx;

use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::config::{ConfigError, Options, Value};
use crate::noise::{Frame, Layout, NoiseSpec};

/// Errors locating, reading or configuring data.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("dataset `{dataset}`: files not found; looked in {}{partial}; {hint}", list(.looked))]
    Missing {
        dataset: String,
        looked: Vec<PathBuf>,
        partial: String,
        hint: String,
    },
    #[error("`{path}`: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("`{path}`: corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("dataset config: {0}")]
    Config(#[from] ConfigError),
    #[error("dataset config: {0}")]
    Unsupported(String),
}

fn list(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| format!("`{}`", p.display()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A dataset family this build can read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Mnist,
    FashionMnist,
}

impl Family {
    fn parse(name: &str) -> Result<Family, DataError> {
        match name {
            "MNIST" => Ok(Family::Mnist),
            "FashionMNIST" => Ok(Family::FashionMnist),
            other => Err(DataError::Unsupported(format!(
                "`dataset_cls` `{other}` is not available in this build; available: \
                 `MNIST`, `FashionMNIST`"
            ))),
        }
    }

    /// The `dataset_cls` name.
    pub fn name(self) -> &'static str {
        match self {
            Family::Mnist => "MNIST",
            Family::FashionMnist => "FashionMNIST",
        }
    }

    /// Mean and std of the training pixels, in [0, 1] units.
    fn stats(self) -> (f32, f32) {
        match self {
            Family::Mnist => (0.1307, 0.3081),
            Family::FashionMnist => (0.2860, 0.3530),
        }
    }

    /// Folders, relative to `data_dir`, where the idx files may lie.
    fn subdirs(self) -> [&'static str; 4] {
        match self {
            Family::Mnist => ["", "MNIST/raw", "MNIST", "mnist"],
            Family::FashionMnist => ["", "FashionMNIST/raw", "FashionMNIST", "fashion-mnist"],
        }
    }

    /// How many classes the labels name.
    pub fn num_classes(self) -> i64 {
        10
    }

    fn hint(self) -> &'static str {
        match self {
            Family::FashionMnist => {
                "on Debian, `apt-get install dataset-fashion-mnist` puts the files in \
                 `/usr/share/datasets/fashion-mnist`; or download the four idx `.gz` files \
                 from https://github.com/zalandoresearch/fashion-mnist; then set `data_dir` \
                 or `BT_DATA_DIR` to their folder"
            }
            Family::Mnist => {
                "download the four idx `.gz` files of MNIST (e.g. with \
                 `torchvision.datasets.MNIST(root, download=True)`), then set `data_dir` or \
                 `BT_DATA_DIR` to their folder"
            }
        }
    }
}

/// Per-channel normalisation; identity when normalisation is off.
#[derive(Clone, Copy, Debug)]
pub struct Normalization {
    pub mean: f32,
    pub std: f32,
}

impl Normalization {
    /// The normalised values of pixel 0 and pixel 1: the range noise is clamped to.
    pub fn range(&self) -> (f32, f32) {
        ((0.0 - self.mean) / self.std, (1.0 - self.mean) / self.std)
    }
}

/// The dataset options of a `DatasetConfig`, checked.
#[derive(Clone, Debug)]
pub struct DatasetSpec {
    pub family: Family,
    pub data_dir: PathBuf,
    pub batch_size: usize,
    pub valid_size: f64,
    pub shuffle: bool,
    pub normalize: bool,
}

impl DatasetSpec {
    /// Read and check the options of a dataset config.
    pub fn from_config(config: &Value) -> Result<DatasetSpec, DataError> {
        let opts = Options::new(config);
        let family = Family::parse(&opts.str_or("dataset_cls", "CIFAR100")?)?;
        if opts.bool_or("apply_data_augmentation", true)? {
            return Err(DataError::Unsupported(format!(
                "`apply_data_augmentation=True` is not available for `{}` in this build; \
                 set it to False",
                family.name()
            )));
        }
        let input_size = opts.usize_or("input_size", 32)?;
        if input_size != 28 {
            return Err(DataError::Unsupported(format!(
                "`input_size={input_size}`: `{}` images are 28 px and resizing is not \
                 available in this build; set `input_size=28`",
                family.name()
            )));
        }
        let valid_size = opts.f64_or("valid_size", 0.1)?;
        if !(0.0..1.0).contains(&valid_size) {
            return Err(DataError::Unsupported(format!(
                "`valid_size={valid_size}` must lie in [0, 1)"
            )));
        }
        let batch_size = opts.usize_or("batch_size", 128)?;
        if batch_size == 0 {
            return Err(DataError::Unsupported(
                "`batch_size` must be positive".into(),
            ));
        }
        Ok(DatasetSpec {
            family,
            data_dir: PathBuf::from(
                opts.str_or("data_dir", "./data/image_classification/torchvision/")?,
            ),
            batch_size,
            valid_size,
            shuffle: opts.bool_or("shuffle", true)?,
            normalize: opts.bool_or("apply_data_normalization", true)?,
        })
    }

    /// The normalisation applied to every batch.
    pub fn normalization(&self) -> Normalization {
        if self.normalize {
            let (mean, std) = self.family.stats();
            Normalization { mean, std }
        } else {
            Normalization {
                mean: 0.0,
                std: 1.0,
            }
        }
    }

    /// Check that a training set of `n` images leaves both splits non-empty.
    pub fn check_split(&self, n: usize) -> Result<(), DataError> {
        let valid = (self.valid_size * n as f64).floor() as usize;
        if valid == 0 || valid == n {
            return Err(DataError::Unsupported(format!(
                "`valid_size={}` of {n} training images leaves an empty {} split; the \
                 validation split selects the best epoch and runs the noise test",
                self.valid_size,
                if valid == 0 { "validation" } else { "training" }
            )));
        }
        Ok(())
    }

    /// Find the folder holding the four idx files.
    ///
    /// `override_dir` (from `BT_DATA_DIR`) replaces `data_dir`; a relative `data_dir` is
    /// taken relative to `base`.
    pub fn locate(&self, base: &Path, override_dir: Option<&Path>) -> Result<DataFiles, DataError> {
        let root = match override_dir {
            Some(dir) => dir.to_path_buf(),
            None if self.data_dir.is_absolute() => self.data_dir.clone(),
            None => base.join(&self.data_dir),
        };
        let (mut looked, mut partial) = (Vec::new(), Vec::new());
        for sub in self.family.subdirs() {
            let dir = if sub.is_empty() {
                root.clone()
            } else {
                root.join(sub)
            };
            match DataFiles::find_in(&dir) {
                Ok(files) => return Ok(files),
                Err(missing) if missing.len() < 4 => {
                    let names = missing
                        .iter()
                        .map(|m| format!("`{m}[.gz]`"))
                        .collect::<Vec<_>>();
                    partial.push(format!("`{}` lacks {}", dir.display(), names.join(", ")));
                }
                Err(_) => {}
            }
            looked.push(dir);
        }
        let partial = if partial.is_empty() {
            String::new()
        } else {
            format!(" ({})", partial.join("; "))
        };
        Err(DataError::Missing {
            dataset: self.family.name().to_string(),
            looked,
            partial,
            hint: self.family.hint().to_string(),
        })
    }
}

/// The four idx files of an MNIST-format dataset.
#[derive(Clone, Debug)]
pub struct DataFiles {
    pub train_images: PathBuf,
    pub train_labels: PathBuf,
    pub test_images: PathBuf,
    pub test_labels: PathBuf,
}

impl DataFiles {
    /// The files in `dir`, or the names of those missing there.
    fn find_in(dir: &Path) -> Result<DataFiles, Vec<&'static str>> {
        const STEMS: [&str; 4] = [
            "train-images-idx3-ubyte",
            "train-labels-idx1-ubyte",
            "t10k-images-idx3-ubyte",
            "t10k-labels-idx1-ubyte",
        ];
        let found: Vec<Option<PathBuf>> = STEMS
            .iter()
            .map(|stem| {
                [format!("{stem}.gz"), stem.to_string()]
                    .into_iter()
                    .map(|name| dir.join(name))
                    .find(|p| p.is_file())
            })
            .collect();
        match found.as_slice() {
            [Some(a), Some(b), Some(c), Some(d)] => Ok(DataFiles {
                train_images: a.clone(),
                train_labels: b.clone(),
                test_images: c.clone(),
                test_labels: d.clone(),
            }),
            _ => Err(STEMS
                .iter()
                .zip(&found)
                .filter(|(_, f)| f.is_none())
                .map(|(stem, _)| *stem)
                .collect()),
        }
    }
}

/// Images and labels held in memory, shared by the batch threads.
#[derive(Clone, Debug)]
pub struct Split {
    pub images: Arc<idx::Images>,
    pub labels: Arc<Vec<i64>>,
}

impl Split {
    fn load(images: &Path, labels: &Path) -> Result<Split, DataError> {
        let imgs = idx::read_images(images)?;
        let lbls = idx::read_labels(labels)?;
        if imgs.count != lbls.len() {
            return Err(DataError::Corrupt {
                path: labels.to_path_buf(),
                reason: format!("{} labels for {} images", lbls.len(), imgs.count),
            });
        }
        Ok(Split {
            images: Arc::new(imgs),
            labels: Arc::new(lbls),
        })
    }

    /// Pixels per image.
    pub fn sample_len(&self) -> usize {
        self.images.rows * self.images.cols
    }
}

/// The four files of a dataset read and checked, shared by every stage that uses them.
#[derive(Clone, Debug)]
pub struct RawData {
    pub train: Split,
    pub test: Split,
}

impl RawData {
    /// Read the files; check that images are 28x28, present, and labelled in range.
    pub fn load(files: &DataFiles, family: Family) -> Result<RawData, DataError> {
        let train = Split::load(&files.train_images, &files.train_labels)?;
        let test = Split::load(&files.test_images, &files.test_labels)?;
        for (split, images, labels) in [
            (&train, &files.train_images, &files.train_labels),
            (&test, &files.test_images, &files.test_labels),
        ] {
            let corrupt = |path: &Path, reason: String| DataError::Corrupt {
                path: path.to_path_buf(),
                reason: format!("{reason}; {}", family.hint()),
            };
            let i = &split.images;
            if i.count == 0 || (i.rows, i.cols) != (28, 28) {
                let shape = format!("{} images of {}x{} px", i.count, i.rows, i.cols);
                return Err(corrupt(images, format!("{shape}, expected 28x28 images")));
            }
            if let Some(bad) = split.labels.iter().find(|&&l| l >= family.num_classes()) {
                let reason = format!("label {bad} outside 0..{}", family.num_classes());
                return Err(corrupt(labels, reason));
            }
        }
        Ok(RawData { train, test })
    }
}

/// A loaded dataset with its train/validation split.
pub struct Dataset {
    pub spec: DatasetSpec,
    pub train: Split,
    pub test: Split,
    pub train_indices: Vec<usize>,
    pub valid_indices: Vec<usize>,
}

impl Dataset {
    /// Split the training set of `raw` by `seed`.
    pub fn new(spec: &DatasetSpec, raw: &RawData, seed: u64) -> Dataset {
        let (train, test) = (raw.train.clone(), raw.test.clone());
        let (train_indices, valid_indices) =
            split_indices(train.images.count, spec.valid_size, seed, spec.shuffle);
        Dataset {
            spec: spec.clone(),
            train,
            test,
            train_indices,
            valid_indices,
        }
    }
}

/// Split `0..n` into train and validation indices: the first `floor(valid_size * n)` of a
/// seeded permutation (or of `0..n` without shuffling) validate, the rest train.
pub fn split_indices(
    n: usize,
    valid_size: f64,
    seed: u64,
    shuffle: bool,
) -> (Vec<usize>, Vec<usize>) {
    let mut indices: Vec<usize> = (0..n).collect();
    if shuffle {
        indices.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    }
    let split = (valid_size * n as f64).floor() as usize;
    let train = indices.split_off(split);
    (train, indices)
}

/// One prepared batch: images as `f32` NCHW, labels, and the noise std applied per sample.
pub struct Batch {
    pub images: Vec<f32>,
    pub labels: Vec<i64>,
    pub applied_std: Vec<f32>,
}

/// What a batch stream draws from and how it prepares samples.
pub struct StreamPlan {
    pub split: (Arc<idx::Images>, Arc<Vec<i64>>),
    pub order: Vec<usize>,
    pub batch_size: usize,
    pub norm: Normalization,
    pub noise: Option<NoiseSpec>,
    pub noise_seed: u64,
}

/// Batches prepared on a background thread, a few ahead of the consumer.
pub struct BatchStream {
    rx: Receiver<Batch>,
    worker: Option<JoinHandle<()>>,
}

impl BatchStream {
    /// Start preparing the batches of `plan`.
    pub fn start(plan: StreamPlan) -> BatchStream {
        let (tx, rx) = sync_channel(4);
        let worker = std::thread::spawn(move || {
            for (i, chunk) in plan.order.chunks(plan.batch_size).enumerate() {
                let batch = prepare(&plan, chunk, batch_seed(plan.noise_seed, i));
                if tx.send(batch).is_err() {
                    break;
                }
            }
        });
        BatchStream {
            rx,
            worker: Some(worker),
        }
    }
}

impl Iterator for BatchStream {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        self.rx.recv().ok()
    }
}

impl Drop for BatchStream {
    fn drop(&mut self) {
        // Unblock the worker by dropping the receiver first, then wait for it.
        let (_, dead) = sync_channel(0);
        drop(std::mem::replace(&mut self.rx, dead));
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

/// The noise seed of batch `i` of a stream.
pub fn batch_seed(stream_seed: u64, i: usize) -> u64 {
    let mut z = stream_seed.wrapping_add((i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn prepare(plan: &StreamPlan, chunk: &[usize], seed: u64) -> Batch {
    let (images, labels) = &plan.split;
    let len = images.rows * images.cols;
    let norm = plan.norm;
    let mut x = Vec::with_capacity(chunk.len() * len);
    for &i in chunk {
        let pixels = &images.pixels[i * len..(i + 1) * len];
        x.extend(
            pixels
                .iter()
                .map(|&p| (f32::from(p) / 255.0 - norm.mean) / norm.std),
        );
    }
    let applied_std = match &plan.noise {
        Some(spec) => {
            let frame = Frame {
                layout: Layout::Nchw,
                sample_len: len,
                norms: vec![norm],
                clamp: true,
            };
            spec.apply(&mut x, &frame, seed)
        }
        None => vec![0.0; chunk.len()],
    };
    Batch {
        images: x,
        labels: chunk.iter().map(|&i| labels[i]).collect(),
        applied_std,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_is_deterministic_and_disjoint() {
        let (t1, v1) = split_indices(100, 0.1, 42, true);
        let (t2, v2) = split_indices(100, 0.1, 42, true);
        assert_eq!((t1.len(), v1.len()), (90, 10));
        assert_eq!((&t1, &v1), (&t2, &v2));
        let mut all: Vec<usize> = t1.iter().chain(&v1).copied().collect();
        all.sort();
        assert_eq!(all, (0..100).collect::<Vec<_>>());
        let (_, v3) = split_indices(100, 0.1, 43, true);
        assert_ne!(v1, v3);
        let (_, v4) = split_indices(100, 0.1, 42, false);
        assert_eq!(v4, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn missing_files_name_every_folder_and_the_remedy() {
        let dir = tempfile::tempdir().unwrap();
        let config = Value::dict([
            ("dataset_cls", Value::Str("FashionMNIST".into())),
            ("apply_data_augmentation", Value::Bool(false)),
            ("input_size", Value::Int(28)),
        ]);
        let spec = DatasetSpec::from_config(&config).unwrap();
        let err = spec.locate(dir.path(), None).unwrap_err().to_string();
        assert!(err.contains("FashionMNIST/raw"), "{err}");
        assert!(err.contains("dataset-fashion-mnist"), "{err}");
    }

    #[test]
    fn batches_cover_the_order_once_with_normalised_pixels() {
        let images = idx::Images {
            count: 5,
            rows: 1,
            cols: 2,
            pixels: vec![0, 255, 51, 102, 0, 0, 1, 2, 3, 4],
        };
        let plan = StreamPlan {
            split: (Arc::new(images), Arc::new(vec![0, 1, 2, 3, 4])),
            order: vec![4, 1, 3, 0, 2],
            batch_size: 2,
            norm: Normalization {
                mean: 0.0,
                std: 1.0,
            },
            noise: None,
            noise_seed: 0,
        };
        let batches: Vec<Batch> = BatchStream::start(plan).collect();
        assert_eq!(batches.len(), 3);
        assert_eq!(batches[0].labels, vec![4, 1]);
        assert_eq!(batches[0].images[2..], [0.2, 0.4]);
        assert_eq!(batches[2].labels, vec![2]);
    }

    #[test]
    fn evaluation_noise_is_identical_across_epochs() {
        let pixels: Vec<u8> = (0..40 * 16).map(|i| (i * 7 % 256) as u8).collect();
        let images = Arc::new(idx::Images {
            count: 40,
            rows: 4,
            cols: 4,
            pixels,
        });
        let labels = Arc::new(vec![0; 40]);
        let spec = NoiseSpec::from_value(
            crate::noise::Mode::Std,
            &Value::Dict(vec![
                (Value::Float(0.2), Value::Float(0.5)),
                (Value::Int(-1), Value::Float(0.5)),
            ]),
        )
        .unwrap();
        let epoch = |seed| {
            BatchStream::start(StreamPlan {
                split: (images.clone(), labels.clone()),
                order: (0..40).collect(),
                batch_size: 16,
                norm: Normalization {
                    mean: 0.0,
                    std: 1.0,
                },
                noise: Some(spec.clone()),
                noise_seed: seed,
            })
            .flat_map(|b| b.images.into_iter().chain(b.applied_std))
            .collect::<Vec<f32>>()
        };
        assert_eq!(epoch(42), epoch(42));
        assert_ne!(epoch(42), epoch(43));
    }
}
