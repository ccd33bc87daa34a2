//! Datasets: locating and reading the files, splitting, and preparing batches on a
//! background thread.

pub mod augment;
pub mod cifar;
pub mod corrupted;
pub mod idx;
pub mod npy;
pub mod pickle;
pub mod tiny_imagenet;

use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

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
    Cifar10,
    Cifar100,
    TinyImageNet,
}

impl Family {
    const ALL: [Family; 5] = [
        Family::Mnist,
        Family::FashionMnist,
        Family::Cifar10,
        Family::Cifar100,
        Family::TinyImageNet,
    ];

    fn parse(name: &str) -> Result<Family, DataError> {
        Family::ALL
            .into_iter()
            .find(|f| f.name() == name)
            .ok_or_else(|| {
                let names: Vec<String> = Family::ALL
                    .iter()
                    .map(|f| format!("`{}`", f.name()))
                    .collect();
                DataError::Unsupported(format!(
                    "`dataset_cls` `{name}` is not available in this build; available: {}",
                    names.join(", ")
                ))
            })
    }

    /// The `dataset_cls` name.
    pub fn name(self) -> &'static str {
        match self {
            Family::Mnist => "MNIST",
            Family::FashionMnist => "FashionMNIST",
            Family::Cifar10 => "CIFAR10",
            Family::Cifar100 => "CIFAR100",
            Family::TinyImageNet => "TinyImageNet",
        }
    }

    /// Channels, height and width of the images.
    pub fn shape(self) -> [usize; 3] {
        match self {
            Family::Mnist | Family::FashionMnist => [1, 28, 28],
            Family::Cifar10 | Family::Cifar100 => [3, 32, 32],
            Family::TinyImageNet => [3, 64, 64],
        }
    }

    /// Mean and std per channel of the training pixels, in [0, 1] units (the published
    /// constants).
    fn stats(self) -> (&'static [f32], &'static [f32]) {
        match self {
            Family::Mnist => (&[0.1307], &[0.3081]),
            Family::FashionMnist => (&[0.2860], &[0.3530]),
            Family::Cifar10 => (
                &[0.491_399_68, 0.482_158_4, 0.446_530_9],
                &[0.247_032_23, 0.243_485_13, 0.261_587_84],
            ),
            Family::Cifar100 => (
                &[0.507_075_16, 0.486_548_87, 0.440_917_8],
                &[0.267_334_3, 0.256_438_45, 0.276_150_5],
            ),
            Family::TinyImageNet => (&[0.4802, 0.4481, 0.3975], &[0.2302, 0.2265, 0.2262]),
        }
    }

    /// Folders, relative to `data_dir`, where the files may lie.
    fn subdirs(self) -> [&'static str; 4] {
        match self {
            Family::Mnist => ["", "MNIST/raw", "MNIST", "mnist"],
            Family::FashionMnist => ["", "FashionMNIST/raw", "FashionMNIST", "fashion-mnist"],
            Family::Cifar10 => ["", "CIFAR10", "cifar10", "cifar"],
            Family::Cifar100 => ["", "CIFAR100", "cifar100", "cifar"],
            Family::TinyImageNet => ["", "TinyImageNet", "tiny-imagenet", "tiny_imagenet"],
        }
    }

    /// How many classes the labels name.
    pub fn num_classes(self) -> i64 {
        match self {
            Family::Cifar100 => 100,
            Family::TinyImageNet => 200,
            _ => 10,
        }
    }

    fn hint(self) -> &'static str {
        match self {
            Family::FashionMnist => {
                "on Debian, `apt-get install dataset-fashion-mnist` puts the files in \
                 `/usr/share/datasets/fashion-mnist`; or download the four idx `.gz` files \
                 with `python -m bias_transfer_rs.datasets FashionMNIST DIR`; then set \
                 `data_dir` or `BT_DATA_DIR` to their folder"
            }
            Family::Mnist => {
                "download the four idx `.gz` files of MNIST with `python -m \
                 bias_transfer_rs.datasets MNIST DIR`, then set `data_dir` or `BT_DATA_DIR` \
                 to that folder"
            }
            Family::Cifar10 => {
                "download and unpack the python version with `python -m \
                 bias_transfer_rs.datasets CIFAR10 DIR` (or unpack `cifar-10-python.tar.gz` \
                 or `cifar-10-binary.tar.gz` there), then set `data_dir` or `BT_DATA_DIR` to \
                 that folder"
            }
            Family::Cifar100 => {
                "download and unpack the python version with `python -m \
                 bias_transfer_rs.datasets CIFAR100 DIR` (or unpack `cifar-100-python.tar.gz` \
                 or `cifar-100-binary.tar.gz` there), then set `data_dir` or `BT_DATA_DIR` to \
                 that folder"
            }
            Family::TinyImageNet => {
                "download and unpack `tiny-imagenet-200.zip` with `python -m \
                 bias_transfer_rs.datasets TinyImageNet DIR`, then set `data_dir` or \
                 `BT_DATA_DIR` to that folder"
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
    /// Random crop, flip and rotation of training images.
    pub augment: bool,
    /// Also test on the corrupted test sets (`add_corrupted_test`).
    pub corrupted_test: bool,
}

impl DatasetSpec {
    /// Read and check the options of a dataset config.
    pub fn from_config(config: &Value) -> Result<DatasetSpec, DataError> {
        let opts = Options::new(config);
        let family = Family::parse(&opts.str_or("dataset_cls", "CIFAR100")?)?;
        let input_size = opts.usize_or("input_size", 32)?;
        let side = family.shape()[1];
        if input_size != side {
            return Err(DataError::Unsupported(format!(
                "`input_size={input_size}`: `{}` images are {side} px and resizing is not \
                 available in this build; set `input_size={side}`",
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
            augment: opts.bool_or("apply_data_augmentation", true)?,
            corrupted_test: opts.bool_or("add_corrupted_test", false)?,
        })
    }

    /// The normalisation of each of `channels` channels; a grayscale dataset shown to a
    /// 3-channel model repeats its one channel.
    pub fn normalization(&self, channels: usize) -> Vec<Normalization> {
        let (means, stds) = self.family.stats();
        (0..channels)
            .map(|c| match self.normalize {
                true => Normalization {
                    mean: means[c % means.len()],
                    std: stds[c % stds.len()],
                },
                false => Normalization {
                    mean: 0.0,
                    std: 1.0,
                },
            })
            .collect()
    }

    /// Check that a model taking `channels` channels can be fed: the dataset's own count,
    /// or 3 from grayscale.
    pub fn check_channels(&self, channels: usize) -> Result<(), DataError> {
        let own = self.family.shape()[0];
        if channels == own || (own == 1 && channels == 3) {
            return Ok(());
        }
        Err(DataError::Unsupported(format!(
            "`{}` has {own}-channel images, but the model takes {channels} channels",
            self.family.name()
        )))
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

    /// Find the dataset's files.
    ///
    /// `override_dir` (from `BT_DATA_DIR`) replaces `data_dir`; a relative `data_dir` is
    /// taken relative to `base`.
    pub fn locate(&self, base: &Path, override_dir: Option<&Path>) -> Result<DataFiles, DataError> {
        let (mut looked, mut partial) = (Vec::new(), Vec::new());
        for dir in self.roots(base, override_dir) {
            match self.find_in(&dir) {
                Ok(Some(files)) => return Ok(files),
                Ok(None) => {}
                Err(lacking) => partial.push(lacking),
            }
            looked.push(dir);
        }
        let partial = if partial.is_empty() {
            String::new()
        } else {
            format!(" ({})", partial.join("; "))
        };
        let folders = match self.family {
            Family::Cifar10 | Family::Cifar100 => {
                cifar::folder_names(self.family == Family::Cifar100)
            }
            Family::TinyImageNet => vec![tiny_imagenet::FOLDER],
            Family::Mnist | Family::FashionMnist => vec![""],
        };
        let looked = looked
            .iter()
            .flat_map(|dir| folders.iter().map(move |f| dir.join(f)))
            .map(|p| match p.to_str().and_then(|s| s.strip_suffix('/')) {
                Some(trimmed) => PathBuf::from(trimmed),
                None => p,
            })
            .collect();
        Err(DataError::Missing {
            dataset: self.family.name().to_string(),
            looked,
            partial,
            hint: self.family.hint().to_string(),
        })
    }

    /// The folders the files may be in: `data_dir` (or `override_dir`, from `BT_DATA_DIR`;
    /// relative to `base`) and the family's usual subfolders of it.
    fn roots(&self, base: &Path, override_dir: Option<&Path>) -> Vec<PathBuf> {
        let root = match override_dir {
            Some(dir) => dir.to_path_buf(),
            None if self.data_dir.is_absolute() => self.data_dir.clone(),
            None => base.join(&self.data_dir),
        };
        let subdirs = self.family.subdirs();
        subdirs
            .iter()
            .map(|sub| match sub.is_empty() {
                true => root.clone(),
                false => root.join(sub),
            })
            .collect()
    }

    /// The corrupted test sets, when `add_corrupted_test` asks for them.
    pub fn locate_corrupted(
        &self,
        base: &Path,
        override_dir: Option<&Path>,
    ) -> Result<Option<corrupted::Corrupted>, DataError> {
        if !self.corrupted_test {
            return Ok(None);
        }
        let Some(name) = corrupted::folder(self.family) else {
            return Err(DataError::Unsupported(format!(
                "`add_corrupted_test=True`: `{}` has no corrupted test sets here; they exist \
                 for `CIFAR10` and `CIFAR100`",
                self.family.name()
            )));
        };
        let candidates: Vec<PathBuf> = self
            .roots(base, override_dir)
            .iter()
            .map(|root| root.join(name))
            .collect();
        match candidates.iter().find(|dir| dir.is_dir()) {
            Some(dir) => corrupted::Corrupted::open(dir, self.family).map(Some),
            None => Err(DataError::Missing {
                dataset: name.to_string(),
                looked: candidates,
                partial: String::new(),
                hint: format!(
                    "unpack `{name}.tar` (https://zenodo.org/records/2535967 for CIFAR-10-C, \
                     https://zenodo.org/records/3555552 for CIFAR-100-C) in `data_dir`, or \
                     set `add_corrupted_test=False`"
                ),
            }),
        }
    }

    /// The files in `dir`: `Ok(None)` when there are none, `Err` saying what a partial set
    /// lacks.
    fn find_in(&self, dir: &Path) -> Result<Option<DataFiles>, String> {
        match self.family {
            Family::Mnist | Family::FashionMnist => match IdxFiles::find_in(dir) {
                Ok(files) => Ok(Some(DataFiles::Idx(files))),
                Err(missing) if missing.len() < 4 => {
                    let names: Vec<String> =
                        missing.iter().map(|m| format!("`{m}[.gz]`")).collect();
                    Err(format!("`{}` lacks {}", dir.display(), names.join(", ")))
                }
                Err(_) => Ok(None),
            },
            Family::Cifar10 | Family::Cifar100 => {
                let found = cifar::find_in(dir, self.family == Family::Cifar100)?;
                Ok(found.map(DataFiles::Cifar))
            }
            Family::TinyImageNet => Ok(tiny_imagenet::find_in(dir)?.map(DataFiles::Tiny)),
        }
    }
}

/// Where a dataset's files are.
#[derive(Clone, Debug)]
pub enum DataFiles {
    Idx(IdxFiles),
    Cifar(cifar::CifarFiles),
    /// The `tiny-imagenet-200` folder.
    Tiny(PathBuf),
}

impl DataFiles {
    /// A path that tells this dataset's files apart from any other's.
    pub fn key(&self) -> &Path {
        match self {
            DataFiles::Idx(files) => &files.train_images,
            DataFiles::Cifar(files) => &files.test,
            DataFiles::Tiny(dir) => dir,
        }
    }
}

/// The four idx files of an MNIST-format dataset.
#[derive(Clone, Debug)]
pub struct IdxFiles {
    pub train_images: PathBuf,
    pub train_labels: PathBuf,
    pub test_images: PathBuf,
    pub test_labels: PathBuf,
}

impl IdxFiles {
    /// The files in `dir`, or the names of those missing there.
    fn find_in(dir: &Path) -> Result<IdxFiles, Vec<&'static str>> {
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
            [Some(a), Some(b), Some(c), Some(d)] => Ok(IdxFiles {
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

/// A stack of `u8` images, each stored plane by plane (`[channels, rows, cols]`).
#[derive(Debug)]
pub struct Images {
    pub count: usize,
    pub channels: usize,
    pub rows: usize,
    pub cols: usize,
    pub pixels: Vec<u8>,
}

impl Images {
    /// Pixels per image.
    pub fn sample_len(&self) -> usize {
        self.channels * self.rows * self.cols
    }

    /// `[channels, rows, cols]`.
    pub fn shape(&self) -> [usize; 3] {
        [self.channels, self.rows, self.cols]
    }

    /// Images stored channels last (`[count, rows, cols, channels]`), as planes.
    pub fn from_channels_last(hwc: &[u8], count: usize, shape: [usize; 3]) -> Images {
        let [channels, rows, cols] = shape;
        let plane = rows * cols;
        let mut pixels = vec![0u8; hwc.len()];
        let len = channels * plane;
        for (image, out) in hwc.chunks_exact(len).zip(pixels.chunks_exact_mut(len)) {
            for (p, px) in image.chunks_exact(channels).enumerate() {
                for (c, &v) in px.iter().enumerate() {
                    out[c * plane + p] = v;
                }
            }
        }
        Images {
            count,
            channels,
            rows,
            cols,
            pixels,
        }
    }

    /// The pixels of image `i`.
    pub fn image(&self, i: usize) -> &[u8] {
        let len = self.sample_len();
        &self.pixels[i * len..(i + 1) * len]
    }
}

/// Images and labels held in memory, shared by the batch threads.
#[derive(Clone, Debug)]
pub struct Split {
    pub images: Arc<Images>,
    pub labels: Arc<Vec<i64>>,
}

impl Split {
    fn new(images: Images, labels: Vec<i64>) -> Split {
        Split {
            images: Arc::new(images),
            labels: Arc::new(labels),
        }
    }

    fn load_idx(images: &Path, labels: &Path) -> Result<Split, DataError> {
        let imgs = idx::read_images(images)?;
        let lbls = idx::read_labels(labels)?;
        if imgs.count != lbls.len() {
            return Err(DataError::Corrupt {
                path: labels.to_path_buf(),
                reason: format!("{} labels for {} images", lbls.len(), imgs.count),
            });
        }
        Ok(Split::new(imgs, lbls))
    }
}

/// The files of a dataset read and checked, shared by every stage that uses them.
#[derive(Clone, Debug)]
pub struct RawData {
    pub train: Split,
    pub test: Split,
    /// The corrupted test sets, when the dataset config asks for them.
    pub corrupted: Option<corrupted::Corrupted>,
}

impl RawData {
    /// Read the files; check that images have the family's shape, are present, and are
    /// labelled in range.
    pub fn load(files: &DataFiles, family: Family) -> Result<RawData, DataError> {
        let (train, test, paths) = match files {
            DataFiles::Idx(f) => (
                Split::load_idx(&f.train_images, &f.train_labels)?,
                Split::load_idx(&f.test_images, &f.test_labels)?,
                [
                    (f.train_images.clone(), f.train_labels.clone()),
                    (f.test_images.clone(), f.test_labels.clone()),
                ],
            ),
            DataFiles::Cifar(f) => {
                let [(train_x, train_y), (test_x, test_y)] = cifar::read(f)?;
                let first = f.train[0].clone();
                (
                    Split::new(train_x, train_y),
                    Split::new(test_x, test_y),
                    [(first.clone(), first), (f.test.clone(), f.test.clone())],
                )
            }
            DataFiles::Tiny(dir) => {
                let files = tiny_imagenet::list(dir)?;
                let (train_x, train_y) = tiny_imagenet::read(&files.train)?;
                let (test_x, test_y) = tiny_imagenet::read(&files.test)?;
                let (train, val) = (dir.join("train"), dir.join("val"));
                (
                    Split::new(train_x, train_y),
                    Split::new(test_x, test_y),
                    [(train.clone(), train), (val.clone(), val)],
                )
            }
        };
        for (split, (images, labels)) in [&train, &test].into_iter().zip(paths) {
            let corrupt = |path: &Path, reason: String| DataError::Corrupt {
                path: path.to_path_buf(),
                reason: format!("{reason}; {}", family.hint()),
            };
            let i = &split.images;
            let [c, h, w] = family.shape();
            if i.count == 0 || i.shape() != [c, h, w] {
                let shape = format!("{} images of {}x{}x{}", i.count, i.channels, i.rows, i.cols);
                return Err(corrupt(
                    &images,
                    format!("{shape}, expected {c}x{h}x{w} images"),
                ));
            }
            if let Some(reason) = bad_label(&split.labels, family.num_classes()) {
                return Err(corrupt(&labels, reason));
            }
        }
        Ok(RawData {
            train,
            test,
            corrupted: None,
        })
    }
}

/// Read the dataset a dataset config names, from `data_dir` (or `override_dir`) as a run
/// would.
pub fn read(
    config: &Value,
    base: &Path,
    override_dir: Option<&Path>,
) -> Result<RawData, DataError> {
    let spec = DatasetSpec::from_config(config)?;
    let files = spec.locate(base, override_dir)?;
    let mut raw = RawData::load(&files, spec.family)?;
    raw.corrupted = spec.locate_corrupted(base, override_dir)?;
    Ok(raw)
}

/// The first label that is not a class index below `classes`, described.
pub fn bad_label(labels: &[i64], classes: i64) -> Option<String> {
    let bad = labels.iter().find(|&&l| !(0..classes).contains(&l))?;
    Some(format!(
        "label {bad} is not a class: there are {classes}, labelled 0 to {}",
        classes - 1
    ))
}

/// A loaded dataset with its train/validation split, prepared for a model.
pub struct Dataset {
    pub spec: DatasetSpec,
    pub train: Split,
    pub test: Split,
    pub train_indices: Vec<usize>,
    pub valid_indices: Vec<usize>,
    /// The normalisation of each channel the model takes.
    pub norms: Vec<Normalization>,
    pub corrupted: Option<corrupted::Corrupted>,
}

impl Dataset {
    /// Split the training set of `raw` by `seed`, for a model taking `channels` channels.
    pub fn new(spec: &DatasetSpec, raw: &RawData, seed: u64, channels: usize) -> Dataset {
        let (train, test) = (raw.train.clone(), raw.test.clone());
        let (train_indices, valid_indices) =
            split_indices(train.images.count, spec.valid_size, seed, spec.shuffle);
        Dataset {
            spec: spec.clone(),
            train,
            test,
            train_indices,
            valid_indices,
            norms: spec.normalization(channels),
            corrupted: raw.corrupted.clone(),
        }
    }

    /// `[channels, rows, cols]` of the batches the model sees.
    pub fn batch_shape(&self) -> [usize; 3] {
        let [_, rows, cols] = self.train.images.shape();
        [self.norms.len(), rows, cols]
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
    /// The second view (images and applied std), when the plan asks for one.
    pub second: Option<(Vec<f32>, Vec<f32>)>,
}

/// The second view of every sample, for representation matching.
#[derive(Clone, Debug)]
pub enum SecondView {
    Clean,
    Noise(NoiseSpec),
}

/// The second view's noise seed, from the batch's seed.
pub fn second_seed(batch_seed: u64) -> u64 {
    batch_seed ^ 0x5ec0_4d00
}

/// What a batch stream draws from and how it prepares samples.
pub struct StreamPlan {
    pub split: Split,
    pub order: Vec<usize>,
    pub batch_size: usize,
    /// One normalisation per output channel; one input channel feeds all of them.
    pub norms: Vec<Normalization>,
    /// Random crop, flip and rotation per sample.
    pub augment: bool,
    pub noise: Option<NoiseSpec>,
    /// Seeds the noise and the augmentation of each batch.
    pub noise_seed: u64,
    pub second: Option<SecondView>,
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

/// Augmentation draws from its own streams, apart from the noise.
const AUGMENT_SEED: u64 = 0xa0_9e47;

fn prepare(plan: &StreamPlan, chunk: &[usize], seed: u64) -> Batch {
    let images = &plan.split.images;
    let shape = images.shape();
    let plane = shape[1] * shape[2];
    let out_len = plan.norms.len() * plane;
    // Each channel's normalised value of every pixel value, computed once per batch.
    let luts: Vec<[f32; 256]> = plan
        .norms
        .iter()
        .map(|norm| std::array::from_fn(|p| (p as f32 / 255.0 - norm.mean) / norm.std))
        .collect();
    let mut x = vec![0.0f32; chunk.len() * out_len];
    x.par_chunks_mut(out_len)
        .zip(chunk.par_iter())
        .enumerate()
        .for_each(|(i, (out, &index))| {
            let src = images.image(index);
            let mut augmented = Vec::new();
            let pixels = if plan.augment {
                augmented.resize(src.len(), 0);
                let mut rng = ChaCha8Rng::seed_from_u64(batch_seed(seed ^ AUGMENT_SEED, i));
                augment::augment(src, &mut augmented, shape, &mut rng);
                &augmented
            } else {
                src
            };
            for (c, (lut, out)) in luts.iter().zip(out.chunks_mut(plane)).enumerate() {
                let from = c % shape[0] * plane;
                for (o, &p) in out.iter_mut().zip(&pixels[from..from + plane]) {
                    *o = lut[usize::from(p)];
                }
            }
        });
    let frame = Frame {
        layout: Layout::Nchw,
        sample_len: out_len,
        norms: plan.norms.clone(),
        clamp: true,
    };
    let noised = |spec: Option<&NoiseSpec>, x: &mut Vec<f32>, seed| match spec {
        Some(spec) => spec.apply(x, &frame, seed),
        None => vec![0.0; chunk.len()],
    };
    let second = plan.second.as_ref().map(|view| {
        let mut x2 = x.clone();
        let spec = match view {
            SecondView::Clean => None,
            SecondView::Noise(spec) => Some(spec),
        };
        let std2 = noised(spec, &mut x2, second_seed(seed));
        (x2, std2)
    });
    let applied_std = noised(plan.noise.as_ref(), &mut x, seed);
    Batch {
        images: x,
        labels: chunk.iter().map(|&i| plan.split.labels[i]).collect(),
        applied_std,
        second,
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
        let images = Images {
            count: 5,
            channels: 1,
            rows: 1,
            cols: 2,
            pixels: vec![0, 255, 51, 102, 0, 0, 1, 2, 3, 4],
        };
        let plan = StreamPlan {
            split: Split::new(images, vec![0, 1, 2, 3, 4]),
            order: vec![4, 1, 3, 0, 2],
            batch_size: 2,
            norms: vec![Normalization {
                mean: 0.0,
                std: 1.0,
            }],
            augment: false,
            noise: None,
            noise_seed: 0,
            second: None,
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
        let split = Split::new(
            Images {
                count: 40,
                channels: 1,
                rows: 4,
                cols: 4,
                pixels,
            },
            vec![0; 40],
        );
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
                split: split.clone(),
                order: (0..40).collect(),
                batch_size: 16,
                norms: vec![Normalization {
                    mean: 0.0,
                    std: 1.0,
                }],
                augment: false,
                noise: Some(spec.clone()),
                noise_seed: seed,
                second: None,
            })
            .flat_map(|b| b.images.into_iter().chain(b.applied_std))
            .collect::<Vec<f32>>()
        };
        assert_eq!(epoch(42), epoch(42));
        assert_ne!(epoch(42), epoch(43));
    }
}
