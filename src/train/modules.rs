//! Main-loop modules: what runs around each training batch besides the classification loss.
//! Noise augmentation happens on the batch threads (`data`); here are the representation
//! matching and noise-adversarial losses, and the random readout reset.

use tch::nn::{self, Module};
use tch::{Kind, Reduction, Tensor};

use super::TrainingError;
use crate::config::{Options, Value};
use crate::noise::{Mode, NoiseSpec};

/// `reset_linear_frequency`: re-initialise the readout every `epochs` epochs and/or every
/// `batches` batches.
#[derive(Clone, Debug, PartialEq)]
pub struct ReadoutReset {
    pub epochs: Option<usize>,
    pub batches: Option<usize>,
}

/// Errors reading a nested option, prefixed with the option's name.
fn within(option: &str) -> impl Fn(TrainingError) -> TrainingError + '_ {
    move |e| match e {
        TrainingError::Config(e) => bad(format!("`{option}`: {e}")),
        TrainingError::Noise(e) => bad(format!("`{option}`: {e}")),
        other => other,
    }
}

impl ReadoutReset {
    /// Read `{"epoch": n, "batch": m}` (either or both).
    pub fn from_value(value: &Value) -> Result<Option<ReadoutReset>, TrainingError> {
        ReadoutReset::parse(value).map_err(within("reset_linear_frequency"))
    }

    fn parse(value: &Value) -> Result<Option<ReadoutReset>, TrainingError> {
        let what = "a dict like `{\"epoch\": 1}`";
        if !dict_of(value, "reset_linear_frequency", what, &["epoch", "batch"])? {
            return Ok(None);
        }
        let opts = Options::new(value);
        let every = |key: &str| match opts.raw(key) {
            Value::None => Ok(None),
            _ => match opts.usize_or(key, 0)? {
                0 => Err(bad(format!(
                    "`reset_linear_frequency.{key}` must be at least 1"
                ))),
                n => Ok(Some(n)),
            },
        };
        let reset = ReadoutReset {
            epochs: every("epoch")?,
            batches: every("batch")?,
        };
        if reset.epochs.is_none() && reset.batches.is_none() {
            return Err(bad(
                "`reset_linear_frequency` needs `epoch` or `batch`, e.g. `{\"epoch\": 1}`".into(),
            ));
        }
        Ok(Some(reset))
    }

    /// Whether to reset before `epoch` (counted from 1): after every `epochs` epochs.
    pub fn before_epoch(&self, epoch: usize) -> bool {
        self.epochs
            .is_some_and(|n| epoch > 1 && (epoch - 1).is_multiple_of(n))
    }

    /// Whether to reset after batch `i` (counted from 0) of an epoch.
    pub fn after_batch(&self, i: usize) -> bool {
        self.batches.is_some_and(|m| (i + 1).is_multiple_of(m))
    }
}

/// How the noise-adversarial head is trained.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoiseAdvKind {
    /// Predict whether a sample was noised (binary cross-entropy).
    Classification,
    /// Predict the applied noise std (mean squared error).
    Regression,
}

/// Noise-adversarial training: a head on the core, behind a gradient reversal scaled by
/// `2 / (1 + exp(-gamma * progress)) - 1`, weighted by `noise_adv_loss_factor`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NoiseAdv {
    pub kind: NoiseAdvKind,
    pub factor: f64,
    pub gamma: f64,
}

impl NoiseAdv {
    /// The reversal's scale when `progress` (in [0, 1]) of the training is done.
    pub fn scale(&self, progress: f64) -> f64 {
        2.0 / (1.0 + (-self.gamma * progress).exp()) - 1.0
    }

    /// The head's loss on the core representation, given each sample's applied std.
    pub fn loss(
        &self,
        head: &nn::Linear,
        core: &Tensor,
        applied: &Tensor,
        progress: f64,
    ) -> Tensor {
        let scale = self.scale(progress);
        // Identity forward, gradient times `-scale` backward.
        let reversed = core * -scale + (core * (1.0 + scale)).detach();
        let out = head.forward(&reversed).squeeze_dim(1);
        match self.kind {
            NoiseAdvKind::Classification => {
                let target = applied.gt(0.0).to_kind(Kind::Float);
                out.binary_cross_entropy_with_logits::<Tensor>(&target, None, None, Reduction::Mean)
            }
            NoiseAdvKind::Regression => out.mse_loss(applied, Reduction::Mean),
        }
    }
}

/// The loss comparing two representations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Criterion {
    /// Cosine embedding loss with target 1: the mean of `1 - cos(a, b)`.
    Cosine,
    Mse,
}

/// The representation matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Representation {
    Core,
    Logits,
}

/// Representation matching: the model also sees a second view of each batch (a second
/// noise, or the clean images), and `lambda` times the distance of the two views'
/// representations joins the loss.
#[derive(Clone, Debug, PartialEq)]
pub struct RepMatch {
    pub representation: Representation,
    pub criterion: Criterion,
    /// The second view's noise; `None` shows the clean batch.
    pub second: Option<NoiseSpec>,
    pub lambda: f64,
    /// Match only the samples the first view left clean.
    pub only_for_clean: bool,
}

const REP_KEYS: [&str; 6] = [
    "representation",
    "criterion",
    "second_noise_std",
    "second_noise_snr",
    "lambda",
    "only_for_clean",
];

impl RepMatch {
    /// Read `representation_matching`: a dict of [`REP_KEYS`].
    pub fn from_value(value: &Value) -> Result<Option<RepMatch>, TrainingError> {
        RepMatch::parse(value).map_err(within("representation_matching"))
    }

    fn parse(value: &Value) -> Result<Option<RepMatch>, TrainingError> {
        if !dict_of(value, "representation_matching", "a dict", &REP_KEYS)? {
            return Ok(None);
        }
        let opts = Options::new(value);
        let representation = match opts.str_or("representation", "core")?.as_str() {
            "core" | "conv_rep" => Representation::Core,
            "logits" => Representation::Logits,
            other => {
                return Err(bad(format!(
                    "`representation_matching.representation` `{other}` is unknown; valid: \
                     `core` (or `conv_rep`), `logits`"
                )))
            }
        };
        let criterion = match opts.str_or("criterion", "cosine")?.as_str() {
            "cosine" => Criterion::Cosine,
            "mse" => Criterion::Mse,
            other => {
                return Err(bad(format!(
                    "`representation_matching.criterion` `{other}` is unknown; valid: \
                     `cosine`, `mse`"
                )))
            }
        };
        let second = match (opts.raw("second_noise_std"), opts.raw("second_noise_snr")) {
            (Value::None, Value::None) => None,
            (std, Value::None) => Some(NoiseSpec::from_value(Mode::Std, std)?),
            (Value::None, snr) => Some(NoiseSpec::from_value(Mode::Snr, snr)?),
            _ => {
                return Err(bad(
                    "`representation_matching`: set `second_noise_std` or `second_noise_snr`, \
                     not both"
                        .into(),
                ))
            }
        };
        let lambda = opts.f64_or("lambda", 1.0)?;
        if !(lambda.is_finite() && lambda >= 0.0) {
            return Err(bad(format!(
                "`representation_matching.lambda={lambda}` must be a finite number >= 0"
            )));
        }
        Ok(Some(RepMatch {
            representation,
            criterion,
            second,
            lambda,
            only_for_clean: opts.bool_or("only_for_clean", false)?,
        }))
    }

    /// The distance of the representations `a` and `b` of the two views; with
    /// `only_for_clean`, over the samples whose first view was clean (`applied` std 0).
    pub fn loss(&self, a: &Tensor, b: &Tensor, applied: &Tensor) -> Tensor {
        let (a, b) = match self.only_for_clean {
            true => {
                let keep = applied.eq(0.0).nonzero().squeeze_dim(1);
                (a.index_select(0, &keep), b.index_select(0, &keep))
            }
            false => (a.shallow_clone(), b.shallow_clone()),
        };
        if a.size()[0] == 0 {
            return Tensor::zeros([], (Kind::Float, a.device()));
        }
        match self.criterion {
            Criterion::Cosine => {
                let cos = Tensor::cosine_similarity(&a, &b, 1, 1e-8);
                cos.neg().g_add_scalar(1.0).mean(Kind::Float)
            }
            Criterion::Mse => a.mse_loss(&b, Reduction::Mean),
        }
    }
}

fn bad(message: String) -> TrainingError {
    TrainingError::Trainer(message)
}

/// Whether `option` is set: `false` for `None`, `true` for a dict whose keys are all
/// `known`, an error saying it must be `what` otherwise.
fn dict_of(value: &Value, option: &str, what: &str, known: &[&str]) -> Result<bool, TrainingError> {
    let items = match value {
        Value::None => return Ok(false),
        Value::Dict(items) => items,
        other => {
            return Err(bad(format!(
                "`{option}` must be {what}, got `{}`",
                other.canonical()
            )))
        }
    };
    for (key, _) in items {
        let name = match key {
            Value::Str(s) => s.clone(),
            other => other.canonical(),
        };
        if !known.contains(&name.as_str()) {
            let valid: Vec<String> = known.iter().map(|k| format!("`{k}`")).collect();
            return Err(bad(format!(
                "`{option}` key `{name}` is unknown; valid: {}",
                valid.join(", ")
            )));
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reversal_scale_ramps_from_zero_to_nearly_one() {
        let adv = NoiseAdv {
            kind: NoiseAdvKind::Regression,
            factor: 1.0,
            gamma: 10.0,
        };
        assert_eq!(adv.scale(0.0), 0.0);
        assert!((adv.scale(0.5) - 0.986_614_298_151_430_3).abs() < 1e-12);
        assert!(adv.scale(1.0) > 0.9999);
    }

    #[test]
    fn gradient_reversal_flips_the_core_gradient_only() {
        let adv = NoiseAdv {
            kind: NoiseAdvKind::Regression,
            factor: 1.0,
            gamma: 10.0,
        };
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let head = nn::linear(vs.root() / "noise_readout", 3, 1, Default::default());
        let core = Tensor::from_slice(&[0.5f32, -1.0, 2.0, 1.0, 0.0, -0.5])
            .view([2, 3])
            .set_requires_grad(true);
        let applied = Tensor::from_slice(&[0.3f32, 0.0]);
        adv.loss(&head, &core, &applied, 0.5).backward();
        let reversed = core.grad().copy();
        let _ = core.grad().zero_();
        let plain = head
            .forward(&core)
            .squeeze_dim(1)
            .mse_loss(&applied, Reduction::Mean);
        plain.backward();
        let expected = core.grad() * -adv.scale(0.5);
        assert!(reversed.allclose(&expected, 1e-6, 1e-7, false));
    }

    #[test]
    fn readout_reset_counts_epochs_and_batches() {
        let spec = Value::Dict(vec![(Value::Str("epoch".into()), Value::Int(2))]);
        let reset = ReadoutReset::from_value(&spec).unwrap().unwrap();
        let epochs: Vec<usize> = (1..=6).filter(|&e| reset.before_epoch(e)).collect();
        assert_eq!(epochs, vec![3, 5]);
        assert!(!reset.after_batch(0));
        let spec = Value::Dict(vec![(Value::Str("batch".into()), Value::Int(3))]);
        let reset = ReadoutReset::from_value(&spec).unwrap().unwrap();
        let batches: Vec<usize> = (0..7).filter(|&i| reset.after_batch(i)).collect();
        assert_eq!(batches, vec![2, 5]);
        let bad = Value::Dict(vec![(Value::Str("epochs".into()), Value::Int(3))]);
        let err = ReadoutReset::from_value(&bad).unwrap_err().to_string();
        assert!(
            err.contains("key `epochs` is unknown; valid: `epoch`, `batch`"),
            "{err}"
        );
    }

    #[test]
    fn matching_loss_is_zero_for_equal_views_and_restricted_to_clean_samples() {
        let spec = RepMatch {
            representation: Representation::Core,
            criterion: Criterion::Mse,
            second: None,
            lambda: 1.0,
            only_for_clean: true,
        };
        let a = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]).view([2, 2]);
        let b = Tensor::from_slice(&[1.0f32, 2.0, 0.0, 0.0]).view([2, 2]);
        let applied = Tensor::from_slice(&[0.0f32, 0.2]);
        assert_eq!(spec.loss(&a, &b, &applied).double_value(&[]), 0.0);
        let all = RepMatch {
            only_for_clean: false,
            ..spec.clone()
        };
        assert_eq!(all.loss(&a, &b, &applied).double_value(&[]), 6.25);
        let cosine = RepMatch {
            criterion: Criterion::Cosine,
            ..all
        };
        let loss = cosine.loss(&a, &(&a * 3.0), &applied).double_value(&[]);
        assert!(loss.abs() < 1e-6, "{loss}");
    }
}
