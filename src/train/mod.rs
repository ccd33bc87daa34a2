//! The training core: models, the options of model and trainer configs, and the trainer.

pub mod checkpoint;
pub mod model;
pub mod modules;
pub mod optim;
pub mod throughput;
pub mod trained;
pub mod trainer;

use crate::config::{ConfigError, Options, Value};
use crate::data::DataError;
use crate::noise::{Mode, NoiseError, NoiseSpec};
use modules::{NoiseAdvKind, ReadoutReset, RepMatch};

/// Errors building or training a model.
#[derive(Debug, thiserror::Error)]
pub enum TrainingError {
    #[error("model config: {0}")]
    Model(String),
    #[error("trainer config: {0}")]
    Trainer(String),
    #[error("trainer config: {0}")]
    Config(#[from] ConfigError),
    #[error("trainer config: {0}")]
    Noise(#[from] NoiseError),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error("libtorch: {}", first_line(.0))]
    Torch(#[from] tch::TchError),
    #[error("throughput: {0}")]
    Throughput(String),
    #[error("training stopped unexpectedly: {0}")]
    Panic(String),
    #[error("interrupted")]
    Interrupted,
    #[error("weights `{path}`: {reason}")]
    Weights { path: String, reason: String },
}

/// The first line of a libtorch error, without its C++ stack.
fn first_line(err: &tch::TchError) -> String {
    let text = err.to_string();
    let line = text.lines().next().unwrap_or_default();
    line.trim_start_matches("Internal torch error: ")
        .to_string()
}

/// Tune glibc's allocator for training, once per process. Every step frees and allocates
/// the same activation and gradient buffers again. With glibc's defaults, blocks above its
/// adaptive mmap threshold come fresh from the kernel each time, and freed memory at the
/// top of the heap goes back to it, so every step pays page faults on zeroed pages. Here
/// blocks up to 32 MiB (the most glibc allows) stay in the heap, and the heap shrinks only
/// when more than 2 GiB lie free at its top; a training process keeps its peak memory.
/// Measured on 2 CPU cores: ResNet-18's steps about 18% faster, the small CNN's, with small
/// activations, about 1% (`docs/PERFORMANCE.md`).
pub fn tune_allocator() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: mallopt only sets allocator parameters; both values are in range.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        }
    });
}

/// The architecture a model config names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// The small CNN for MNIST-like data (`cnn_builder="cnn"`).
    Cnn,
    /// A multi-layer perceptron (`cnn_builder="mlp"`).
    Mlp,
    /// A CIFAR-style ResNet of the given depth (`cnn_builder="resnet"`, `type="50"`).
    ResNet(u32),
    /// A VGG (`cnn_builder="vgg"`, `type="11"` or `"11_bn"`).
    Vgg { depth: u32, batch_norm: bool },
}

/// The readout of a VGG.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Readout {
    Dense,
    Conv,
}

/// The options of a `ModelConfig`, checked.
#[derive(Clone, Debug)]
pub struct ModelSpec {
    pub arch: Arch,
    pub num_classes: i64,
    pub input_size: i64,
    /// Channels of the images the model takes: 3 for ResNets and VGGs, otherwise those of
    /// `dataset_cls`.
    pub in_channels: i64,
    pub core_stride: i64,
    pub stem_kernel: i64,
    pub readout: Readout,
    /// A noise-adversarial head (`noise_readout`) on the core.
    pub noise_adv: Option<NoiseAdvKind>,
}

impl ModelSpec {
    /// Read and check the options of a model config.
    pub fn from_config(config: &Value) -> Result<ModelSpec, TrainingError> {
        ModelSpec::parse(config).map_err(|e| match e {
            TrainingError::Config(e) => TrainingError::Model(e.to_string()),
            other => other,
        })
    }

    fn parse(config: &Value) -> Result<ModelSpec, TrainingError> {
        let opts = Options::new(config);
        let arch = arch(&opts)?;
        if opts.bool_or("pretrained", false)? {
            return Err(TrainingError::Model(
                "`pretrained=True` is not available: no pretrained weights can be loaded here"
                    .into(),
            ));
        }
        let noise_adv = match (
            opts.bool_or("noise_adv_classification", false)?,
            opts.bool_or("noise_adv_regression", false)?,
        ) {
            (false, false) => None,
            (true, false) => Some(NoiseAdvKind::Classification),
            (false, true) => Some(NoiseAdvKind::Regression),
            (true, true) => {
                return Err(TrainingError::Model(
                    "set `noise_adv_classification` or `noise_adv_regression`, not both".into(),
                ))
            }
        };
        let dataset_cls = opts.str_or("dataset_cls", "CIFAR100")?;
        let gray = matches!(dataset_cls.as_str(), "MNIST" | "FashionMNIST");
        let in_channels = match arch {
            Arch::Cnn | Arch::Mlp if gray => 1,
            _ => 3,
        };
        let readout = match opts.str_or("readout_type", "dense")?.as_str() {
            "dense" => Readout::Dense,
            "conv" => Readout::Conv,
            other => {
                return Err(TrainingError::Model(format!(
                    "`readout_type` `{other}` is unknown; valid: `dense`, `conv`"
                )))
            }
        };
        let input_size = opts.usize_or("input_size", 32)? as i64;
        let spec = ModelSpec {
            arch,
            num_classes: opts.usize_or("num_classes", 10)? as i64,
            input_size,
            in_channels,
            core_stride: opts.usize_or("core_stride", if input_size > 32 { 2 } else { 1 })? as i64,
            stem_kernel: opts.usize_or("conv_stem_kernel_size", 3)? as i64,
            readout,
            noise_adv,
        };
        spec.check()?;
        Ok(spec)
    }

    /// Check that the sizes fit the architecture.
    fn check(&self) -> Result<(), TrainingError> {
        let bad = |reason: String| Err(TrainingError::Model(reason));
        let size = self.input_size;
        if self.num_classes < 1 {
            return bad("`num_classes` must be at least 1".into());
        }
        match self.arch {
            Arch::Cnn if size < 4 || size % 4 != 0 => bad(format!(
                "`input_size={size}`: the `cnn` model takes a multiple of 4 px"
            )),
            Arch::Vgg { .. } if size % 32 != 0 => bad(format!(
                "`input_size={size}`: a VGG pools five times and takes a multiple of 32 px"
            )),
            Arch::ResNet(_) if !(1..=2).contains(&self.core_stride) => {
                bad(format!("`core_stride={}` must be 1 or 2", self.core_stride))
            }
            Arch::ResNet(_) if self.stem_kernel % 2 == 0 || self.stem_kernel < 1 => bad(format!(
                "`conv_stem_kernel_size={}` must be an odd number",
                self.stem_kernel
            )),
            _ if size < 1 => bad("`input_size` must be positive".into()),
            _ => Ok(()),
        }
    }
}

/// The architecture of `cnn_builder` and `type`.
fn arch(opts: &Options) -> Result<Arch, TrainingError> {
    let builder = opts.str_or("cnn_builder", "resnet")?;
    let kind = match opts.raw("type") {
        Value::Int(i) => i.to_string(),
        Value::None => "50".to_string(),
        _ => opts.str_or("type", "50")?,
    };
    let unknown = |valid: String| {
        TrainingError::Model(format!(
            "`type` `{kind}` is not a `{builder}` model; valid: {valid}"
        ))
    };
    let depths = |list: &[u32], suffix: &str| {
        list.iter()
            .map(|d| format!("`{d}{suffix}`"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match builder.as_str() {
        "cnn" => Ok(Arch::Cnn),
        "mlp" => Ok(Arch::Mlp),
        "resnet" => kind
            .parse()
            .ok()
            .filter(|d| model::resnet::layout(*d).is_some())
            .map(Arch::ResNet)
            .ok_or_else(|| unknown(depths(&model::resnet::DEPTHS, ""))),
        "vgg" => {
            let (depth, batch_norm) = match kind.strip_suffix("_bn") {
                Some(depth) => (depth, true),
                None => (kind.as_str(), false),
            };
            depth
                .parse()
                .ok()
                .filter(|d| model::vgg::layout(*d).is_some())
                .map(|depth| Arch::Vgg { depth, batch_norm })
                .ok_or_else(|| {
                    let valid = model::vgg::DEPTHS;
                    unknown(format!("{}, {}", depths(&valid, ""), depths(&valid, "_bn")))
                })
        }
        other => Err(TrainingError::Model(format!(
            "`cnn_builder` `{other}` is unknown; valid: `resnet`, `vgg`, `cnn`, `mlp`"
        ))),
    }
}

/// Which optimiser a trainer config asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptimizerKind {
    Adam,
    Sgd,
    RmsProp,
}

/// The options of a `TrainerConfig`, checked.
#[derive(Clone, Debug)]
pub struct TrainerSpec {
    pub force_cpu: bool,
    pub optimizer: OptimizerKind,
    pub amsgrad: bool,
    pub lr: f64,
    pub weight_decay: f64,
    pub momentum: f64,
    pub num_epochs: usize,
    pub lr_milestones: Vec<usize>,
    pub lr_decay: f64,
    pub adaptive_lr: bool,
    pub patience: usize,
    pub threshold: f64,
    pub noise: Option<NoiseSpec>,
    /// `(result key, level key, spec)` per `noise_test` entry.
    pub noise_test: Vec<(&'static str, String, NoiseSpec)>,
    pub freeze: Vec<String>,
    pub reset_linear: bool,
    pub readout_reset: Option<ReadoutReset>,
    pub rep_match: Option<RepMatch>,
    pub noise_adv_loss_factor: f64,
    pub noise_adv_gamma: f64,
}

impl TrainerSpec {
    /// Read and check the options of a trainer config.
    pub fn from_config(config: &Value) -> Result<TrainerSpec, TrainingError> {
        let opts = Options::new(config);
        reject_unbuilt(&opts)?;
        let optimizer = match opts.str_or("optimizer", "Adam")?.as_str() {
            "Adam" => OptimizerKind::Adam,
            "RMSprop" => OptimizerKind::RmsProp,
            "SGD" => OptimizerKind::Sgd,
            other => {
                return Err(TrainingError::Trainer(format!(
                    "`optimizer` `{other}` is unknown; valid: `Adam`, `SGD`, `RMSprop`"
                )))
            }
        };
        let noise = match (opts.raw("noise_std"), opts.raw("noise_snr")) {
            (Value::None, Value::None) => None,
            (std, Value::None) => Some(NoiseSpec::from_value(Mode::Std, std)?),
            (Value::None, snr) => Some(NoiseSpec::from_value(Mode::Snr, snr)?),
            _ => {
                return Err(TrainingError::Trainer(
                    "set either `noise_std` or `noise_snr`, not both".into(),
                ))
            }
        };
        let spec = TrainerSpec {
            force_cpu: opts.bool_or("force_cpu", false)?,
            optimizer,
            amsgrad: opts.bool_or("amsgrad", false)?,
            lr: opts.f64_or("lr", 3e-4)?,
            weight_decay: opts.f64_or("weight_decay", 5e-4)?,
            momentum: opts.f64_or("momentum", 0.9)?,
            num_epochs: opts.usize_or("num_epochs", 200)?,
            lr_milestones: milestones(&opts)?,
            lr_decay: opts.f64_or("lr_decay", 0.8)?,
            adaptive_lr: opts.bool_or("adaptive_lr", false)?,
            patience: opts.usize_or("patience", 10)?,
            threshold: opts.f64_or("threshold", 1e-4)?,
            noise,
            noise_test: noise_test(opts.raw("noise_test"))?,
            freeze: opts.str_list("freeze")?,
            reset_linear: opts.bool_or("reset_linear", false)?,
            readout_reset: ReadoutReset::from_value(opts.raw("reset_linear_frequency"))?,
            rep_match: RepMatch::from_value(opts.raw("representation_matching"))?,
            noise_adv_loss_factor: opts.f64_or("noise_adv_loss_factor", 1.0)?,
            noise_adv_gamma: opts.f64_or("noise_adv_gamma", 10.0)?,
        };
        spec.check()?;
        Ok(spec)
    }

    /// Check the ranges of the numeric options and the parts named by `freeze`.
    fn check(&self) -> Result<(), TrainingError> {
        let ranges = [
            ("lr", self.lr, self.lr > 0.0, "a positive number"),
            (
                "weight_decay",
                self.weight_decay,
                self.weight_decay >= 0.0,
                ">= 0",
            ),
            (
                "momentum",
                self.momentum,
                (0.0..=1.0).contains(&self.momentum),
                "in [0, 1]",
            ),
            (
                "lr_decay",
                self.lr_decay,
                self.lr_decay > 0.0,
                "a positive number",
            ),
            (
                "noise_adv_loss_factor",
                self.noise_adv_loss_factor,
                self.noise_adv_loss_factor >= 0.0,
                "a finite number >= 0",
            ),
            (
                "noise_adv_gamma",
                self.noise_adv_gamma,
                self.noise_adv_gamma >= 0.0,
                "a finite number >= 0",
            ),
        ];
        for (option, value, ok, valid) in ranges {
            if !(value.is_finite() && ok) {
                return Err(TrainingError::Trainer(format!(
                    "`{option}={value}` is invalid; it must be {valid}"
                )));
            }
        }
        if self.num_epochs == 0 {
            return Err(TrainingError::Trainer(
                "`num_epochs=0` trains nothing; give at least 1".into(),
            ));
        }
        if let Some(part) = self
            .freeze
            .iter()
            .find(|p| !MODEL_PARTS.contains(&p.as_str()))
        {
            return Err(TrainingError::Trainer(format!(
                "`freeze` names `{part}`, which the model lacks; valid: `core`, `readout`"
            )));
        }
        Ok(())
    }
}

/// The named parts of a model: every model has `core` and `readout`, noise-adversarial
/// ones also `noise_readout`.
pub const MODEL_PARTS: [&str; 3] = ["core", "readout", "noise_readout"];

fn reject_unbuilt(opts: &Options) -> Result<(), TrainingError> {
    for option in ["transfer_from_path"] {
        if !opts.raw(option).is_none() {
            return Err(TrainingError::Trainer(format!(
                "`{option}` is not available in this build; leave it unset"
            )));
        }
    }
    Ok(())
}

fn milestones(opts: &Options) -> Result<Vec<usize>, TrainingError> {
    match opts.raw("lr_milestones") {
        Value::None => Ok(vec![60, 120, 160]),
        Value::List(items) => items
            .iter()
            .map(|v| match v {
                Value::Int(i) if *i >= 0 => Ok(*i as usize),
                other => Err(TrainingError::Trainer(format!(
                    "`lr_milestones` must hold epoch numbers, got `{}`",
                    other.canonical()
                ))),
            })
            .collect(),
        other => Err(TrainingError::Trainer(format!(
            "`lr_milestones` must be a list of epochs, got `{}`",
            other.canonical()
        ))),
    }
}

/// Key of a level dict in the results: entries `k_v` joined by `.`, as the original.
pub fn level_key(levels: &Value) -> String {
    match levels {
        Value::Dict(items) => items
            .iter()
            .map(|(k, v)| format!("{}_{}", k.canonical(), v.canonical()))
            .collect::<Vec<_>>()
            .join("."),
        other => other.canonical(),
    }
}

fn noise_test(value: &Value) -> Result<Vec<(&'static str, String, NoiseSpec)>, TrainingError> {
    let Value::Dict(types) = value else {
        return match value {
            Value::None => Ok(Vec::new()),
            other => Err(TrainingError::Trainer(format!(
                "`noise_test` must be a dict of `noise_std`/`noise_snr` to level dicts, got `{}`",
                other.canonical()
            ))),
        };
    };
    let mut sweep = Vec::new();
    for (kind, levels) in types {
        let mode = match kind {
            Value::Str(s) if s == "noise_std" => Mode::Std,
            Value::Str(s) if s == "noise_snr" => Mode::Snr,
            other => {
                return Err(TrainingError::Trainer(format!(
                    "`noise_test` key `{}` is unknown; valid: `noise_std`, `noise_snr`",
                    other.canonical()
                )))
            }
        };
        let Value::List(levels) = levels else {
            return Err(TrainingError::Trainer(format!(
                "`noise_test.{}` must be a list of level dicts",
                mode.option()
            )));
        };
        for level in levels {
            sweep.push((
                mode.option(),
                level_key(level),
                NoiseSpec::from_value(mode, level)?,
            ));
        }
    }
    Ok(sweep)
}
