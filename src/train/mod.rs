//! The training core: models, the options of model and trainer configs, and the trainer.

pub mod checkpoint;
pub mod model;
pub mod optim;
pub mod trained;
pub mod trainer;

use crate::config::{ConfigError, Options, Value};
use crate::data::DataError;
use crate::noise::{Mode, NoiseError, NoiseSpec};

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

/// The options of a `ModelConfig`, checked.
#[derive(Clone, Debug)]
pub struct ModelSpec {
    pub num_classes: i64,
    pub input_size: i64,
}

impl ModelSpec {
    /// Read and check the options of a model config.
    pub fn from_config(config: &Value) -> Result<ModelSpec, TrainingError> {
        let opts = Options::new(config);
        let builder = opts.str_or("cnn_builder", "resnet")?;
        if builder != "cnn" {
            return Err(TrainingError::Model(format!(
                "`cnn_builder` `{builder}` is not available in this build; available: `cnn`"
            )));
        }
        for flag in [
            "noise_adv_classification",
            "noise_adv_regression",
            "pretrained",
        ] {
            if opts.bool_or(flag, false)? {
                return Err(TrainingError::Model(format!(
                    "`{flag}=True` is not available in this build"
                )));
            }
        }
        let num_classes = opts.usize_or("num_classes", 10)? as i64;
        let input_size = opts.usize_or("input_size", 28)? as i64;
        if input_size != 28 {
            return Err(TrainingError::Model(format!(
                "`input_size={input_size}`: the `cnn` model takes 28 px images"
            )));
        }
        Ok(ModelSpec {
            num_classes,
            input_size,
        })
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

/// The named parts every model has.
pub const MODEL_PARTS: [&str; 2] = ["core", "readout"];

fn reject_unbuilt(opts: &Options) -> Result<(), TrainingError> {
    for option in [
        "representation_matching",
        "reset_linear_frequency",
        "transfer_from_path",
    ] {
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
