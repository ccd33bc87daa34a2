//! Noise augmentation: a spec `{level: fraction}` applied to a batch.
//!
//! One seeded permutation orders the batch; entries, in dict order, take the next
//! `floor(fraction * B)` samples; leftovers stay clean. Noise is drawn in pixel units,
//! scaled by the channel's normalisation std and clamped per channel to the normalised
//! image of `[0, 1]`. Clean samples are never touched.

use rand::seq::SliceRandom;
use rand::Rng;
use rand_distr::StandardNormal;

use crate::config::Value;
use crate::data::Normalization;

/// Errors in a noise spec.
#[derive(Debug, thiserror::Error)]
pub enum NoiseError {
    #[error("`{option}`: the spec is empty; give at least one `level: fraction` entry")]
    Empty { option: &'static str },
    #[error("`{option}`: level `{level}` is not a number, `-1` or an `(a, b)` range")]
    BadLevel { option: &'static str, level: String },
    #[error("`{option}`: level `{level}` must be non-negative (or `-1` for the clean share)")]
    NegativeLevel { option: &'static str, level: String },
    #[error("`{option}`: fraction `{fraction}` of level `{level}` must be a finite number >= 0")]
    BadFraction {
        option: &'static str,
        level: String,
        fraction: String,
    },
    #[error("`{option}`: fractions sum to {sum}, not 1")]
    Sum { option: &'static str, sum: f64 },
    #[error("`{option}` must be a dict of `level: fraction`, got `{got}`")]
    NotADict { option: &'static str, got: String },
}

/// Whether levels are standard deviations or signal-to-noise ratios.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Std,
    Snr,
}

impl Mode {
    /// The config option this mode is read from.
    pub fn option(self) -> &'static str {
        match self {
            Mode::Std => "noise_std",
            Mode::Snr => "noise_snr",
        }
    }
}

/// One level of a spec.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Level {
    Clean,
    Fixed(f64),
    /// Drawn uniformly per sample.
    Range(f64, f64),
}

/// A checked noise spec.
#[derive(Clone, Debug, PartialEq)]
pub struct NoiseSpec {
    pub mode: Mode,
    pub entries: Vec<(Level, f64)>,
}

impl NoiseSpec {
    /// Read a spec from a config dict `{level: fraction}`.
    pub fn from_value(mode: Mode, value: &Value) -> Result<NoiseSpec, NoiseError> {
        let option = mode.option();
        let Value::Dict(items) = value else {
            return Err(NoiseError::NotADict {
                option,
                got: value.canonical(),
            });
        };
        if items.is_empty() {
            return Err(NoiseError::Empty { option });
        }
        let mut entries = Vec::with_capacity(items.len());
        for (key, fraction) in items {
            let level = parse_level(option, key)?;
            let frac = match fraction {
                Value::Int(i) => *i as f64,
                Value::Float(f) => *f,
                _ => f64::NAN,
            };
            if !frac.is_finite() || frac < 0.0 {
                return Err(NoiseError::BadFraction {
                    option,
                    level: key.canonical(),
                    fraction: fraction.canonical(),
                });
            }
            entries.push((level, frac));
        }
        let sum: f64 = entries.iter().map(|(_, f)| f).sum();
        if (sum - 1.0).abs() > 1e-5 {
            return Err(NoiseError::Sum { option, sum });
        }
        Ok(NoiseSpec { mode, entries })
    }

    /// Add noise to a batch in place; return the std applied to each sample (0 for clean).
    ///
    /// `x` holds whole samples of `sample_len` values; `norms` has one entry per channel.
    pub fn apply<R: Rng>(
        &self,
        x: &mut [f32],
        sample_len: usize,
        norms: &[Normalization],
        rng: &mut R,
    ) -> Vec<f32> {
        let n = x.len() / sample_len;
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(rng);
        let mut applied = vec![0.0f32; n];
        let mut next = 0;
        for &(level, fraction) in &self.entries {
            let count = ((fraction * n as f64).floor() as usize).min(n - next);
            for &sample in &order[next..next + count] {
                let chunk = &mut x[sample * sample_len..(sample + 1) * sample_len];
                let std = self.std_for(level, chunk, norms, rng);
                if std > 0.0 {
                    add_gaussian(chunk, std, norms, rng);
                    applied[sample] = std;
                }
            }
            next += count;
        }
        applied
    }

    fn std_for<R: Rng>(
        &self,
        level: Level,
        sample: &[f32],
        norms: &[Normalization],
        rng: &mut R,
    ) -> f32 {
        let level = match level {
            Level::Clean => return 0.0,
            Level::Fixed(v) => v,
            Level::Range(a, b) if a == b => a,
            Level::Range(a, b) => rng.gen_range(a..b),
        };
        match self.mode {
            Mode::Std => level as f32,
            Mode::Snr if level == 0.0 => 0.0,
            Mode::Snr => (mean_square_pixels(sample, norms) / level) as f32,
        }
    }
}

fn parse_level(option: &'static str, key: &Value) -> Result<Level, NoiseError> {
    let number = |v: &Value| match v {
        Value::Int(i) => Some(*i as f64),
        Value::Float(f) if f.is_finite() => Some(*f),
        _ => None,
    };
    let bad = || NoiseError::BadLevel {
        option,
        level: key.canonical(),
    };
    let negative = || NoiseError::NegativeLevel {
        option,
        level: key.canonical(),
    };
    match key {
        Value::List(pair) => match pair.as_slice() {
            [a, b] => {
                let (a, b) = (number(a).ok_or_else(bad)?, number(b).ok_or_else(bad)?);
                if a < 0.0 || b < a {
                    return Err(negative());
                }
                Ok(Level::Range(a, b))
            }
            _ => Err(bad()),
        },
        _ => match number(key).ok_or_else(bad)? {
            v if v == -1.0 || v == 0.0 => Ok(Level::Clean),
            v if v < 0.0 => Err(negative()),
            v => Ok(Level::Fixed(v)),
        },
    }
}

/// Mean of the squared pixel values (in [0, 1] units) of one sample.
fn mean_square_pixels(sample: &[f32], norms: &[Normalization]) -> f64 {
    let per_channel = sample.len() / norms.len();
    let total: f64 = sample
        .chunks(per_channel)
        .zip(norms)
        .map(|(channel, norm)| {
            channel
                .iter()
                .map(|&v| {
                    let p = f64::from(v * norm.std + norm.mean);
                    p * p
                })
                .sum::<f64>()
        })
        .sum();
    total / sample.len() as f64
}

fn add_gaussian<R: Rng>(sample: &mut [f32], std: f32, norms: &[Normalization], rng: &mut R) {
    let per_channel = sample.len() / norms.len();
    for (channel, norm) in sample.chunks_mut(per_channel).zip(norms) {
        let (lo, hi) = norm.range();
        let scale = std / norm.std;
        for v in channel {
            let z: f32 = rng.sample(StandardNormal);
            *v = (*v + z * scale).clamp(lo, hi);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    const PLAIN: [Normalization; 1] = [Normalization {
        mean: 0.0,
        std: 1.0,
    }];

    fn spec(items: Vec<(Value, f64)>) -> Result<NoiseSpec, NoiseError> {
        let dict = Value::Dict(
            items
                .into_iter()
                .map(|(k, f)| (k, Value::Float(f)))
                .collect(),
        );
        NoiseSpec::from_value(Mode::Std, &dict)
    }

    #[test]
    fn shares_follow_the_floor_rule_and_leftovers_stay_clean() {
        let s = spec(vec![
            (Value::Float(0.08), 0.1),
            (Value::Float(0.12), 0.1),
            (Value::Float(0.18), 0.1),
            (Value::Float(0.26), 0.1),
            (Value::Float(0.38), 0.1),
            (Value::Int(-1), 0.5),
        ])
        .unwrap();
        let mut x = vec![0.5f32; 128 * 4];
        let before = x.clone();
        let applied = s.apply(&mut x, 4, &PLAIN, &mut ChaCha8Rng::seed_from_u64(1));
        for level in [0.08f32, 0.12, 0.18, 0.26, 0.38] {
            assert_eq!(
                applied.iter().filter(|&&a| a == level).count(),
                12,
                "{level}"
            );
        }
        assert_eq!(applied.iter().filter(|&&a| a == 0.0).count(), 128 - 60);
        for (i, &a) in applied.iter().enumerate() {
            if a == 0.0 {
                assert_eq!(x[i * 4..i * 4 + 4], before[i * 4..i * 4 + 4]);
            }
        }
    }

    #[test]
    fn std_matches_level_and_seed_fixes_output() {
        let s = spec(vec![(Value::Float(0.1), 1.0)]).unwrap();
        let mut x = vec![0.5f32; 64 * 1000];
        let applied = s.apply(&mut x, 1000, &PLAIN, &mut ChaCha8Rng::seed_from_u64(7));
        assert!(applied.iter().all(|&a| a == 0.1));
        let n = x.len() as f64;
        let mean = x.iter().map(|&v| f64::from(v) - 0.5).sum::<f64>() / n;
        let var = x
            .iter()
            .map(|&v| (f64::from(v) - 0.5 - mean).powi(2))
            .sum::<f64>()
            / n;
        assert!((var.sqrt() - 0.1).abs() < 0.001, "std {}", var.sqrt());
        let mut y = vec![0.5f32; 64 * 1000];
        s.apply(&mut y, 1000, &PLAIN, &mut ChaCha8Rng::seed_from_u64(7));
        assert_eq!(x, y);
    }

    #[test]
    fn clamps_to_the_normalised_pixel_range() {
        let norm = [Normalization {
            mean: 0.5,
            std: 0.25,
        }];
        let s = spec(vec![(Value::Float(1.0), 1.0)]).unwrap();
        let mut x = vec![0.0f32; 10_000];
        s.apply(&mut x, 10_000, &norm, &mut ChaCha8Rng::seed_from_u64(3));
        assert!(x.iter().all(|&v| (-2.0..=2.0).contains(&v)));
        assert!(x.contains(&2.0) && x.contains(&-2.0));
    }

    #[test]
    fn snr_level_divides_the_signal_power() {
        let dict = Value::Dict(vec![(Value::Float(2.0), Value::Float(1.0))]);
        let s = NoiseSpec::from_value(Mode::Snr, &dict).unwrap();
        let mut x = vec![0.5f32; 8 * 16];
        let applied = s.apply(&mut x, 16, &PLAIN, &mut ChaCha8Rng::seed_from_u64(0));
        assert!(applied.iter().all(|&a| a == 0.125), "{applied:?}");
    }

    #[test]
    fn bad_specs_are_rejected_with_the_culprit() {
        let sum = spec(vec![(Value::Float(0.1), 0.5), (Value::Int(-1), 0.4)]).unwrap_err();
        assert_eq!(sum.to_string(), "`noise_std`: fractions sum to 0.9, not 1");
        let neg = spec(vec![(Value::Float(-0.5), 1.0)]).unwrap_err();
        assert!(
            neg.to_string().contains("`-0.5` must be non-negative"),
            "{neg}"
        );
        let nan = spec(vec![(Value::Float(0.1), f64::NAN)]).unwrap_err();
        assert!(nan.to_string().contains("finite"), "{nan}");
        assert!(matches!(spec(vec![]), Err(NoiseError::Empty { .. })));
    }
}
