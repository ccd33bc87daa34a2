//! Noise augmentation: a spec `{level: fraction}` applied to a batch.
//!
//! One seeded permutation orders the batch; entries, in dict order, take the next
//! `floor(fraction * B)` samples; leftovers stay clean. Noise is drawn in pixel units,
//! scaled by the channel's normalisation std and clamped per channel to the normalised
//! image of `[0, 1]`. Clean samples are never touched.

use rand::seq::SliceRandom;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_xoshiro::Xoshiro256PlusPlus;
use rayon::prelude::*;
use tch::{Device, Kind, Tensor};

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
    #[error("`{option}`: range `{level}` must have 0 <= a <= b")]
    BadRange { option: &'static str, level: String },
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

    /// The level of each sample of a batch of `n` (`None`: clean), by the floor rule over
    /// one permutation seeded by `seed`; range levels are drawn per sample.
    pub fn assign(&self, n: usize, seed: u64) -> Vec<Option<f64>> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut rng);
        let mut levels = vec![None; n];
        let mut next = 0;
        for &(level, fraction) in &self.entries {
            let count = ((fraction * n as f64).floor() as usize).min(n - next);
            for &sample in &order[next..next + count] {
                levels[sample] = match level {
                    Level::Clean => None,
                    Level::Fixed(v) => Some(v),
                    Level::Range(a, b) if a == b => Some(a),
                    Level::Range(a, b) => Some(rng.gen_range(a..b)),
                };
            }
            next += count;
        }
        levels
    }

    /// The std for a sample at `level` (`None`: clean): the level itself, or for SNR the
    /// sample's mean squared pixel intensity divided by it (level 0 is clean).
    fn sample_std<T: Element>(&self, level: Option<f64>, sample: &[T], frame: &Frame) -> f64 {
        match (level, self.mode) {
            (None, _) | (Some(0.0), Mode::Snr) => 0.0,
            (Some(level), Mode::Std) => level,
            (Some(level), Mode::Snr) => mean_square_pixels(sample, frame) / level,
        }
    }

    /// Add noise to a batch in place, samples in parallel; return the std applied to each
    /// sample (0 for clean). The same `seed` gives the same output on any thread count.
    pub fn apply<T: Element>(&self, x: &mut [T], frame: &Frame, seed: u64) -> Vec<f32> {
        let levels = self.assign(x.len() / frame.sample_len.max(1), seed);
        x.par_chunks_mut(frame.sample_len.max(1))
            .zip(levels.par_iter())
            .enumerate()
            .map(|(i, (sample, level))| {
                let std = self.sample_std(*level, sample, frame);
                if std > 0.0 {
                    add_gaussian(sample, std, frame, &mut sample_rng(seed, i));
                }
                std as f32
            })
            .collect()
    }
}

impl NoiseSpec {
    /// Add noise to a float tensor `[N, C, ...]` on its own device (CPU or CUDA); return the
    /// noisy tensor and the std applied per sample. The noise is drawn on CPU threads by
    /// the same per-sample streams as [`NoiseSpec::apply`], then added, clamped and masked
    /// on the device, so on CPU the output is bit-identical to the slice path. The input
    /// tensor is not modified.
    pub fn apply_tensor(
        &self,
        x: &Tensor,
        norms: &[Normalization],
        clamp: bool,
        seed: u64,
    ) -> Result<(Tensor, Vec<f32>), tch::TchError> {
        let size = x.size();
        if x.kind() != Kind::Float || size.len() < 2 || norms.is_empty() {
            return Err(tch::TchError::Kind(format!(
                "noise: expected a float32 tensor [N, C, ...] with one normalisation per \
                 channel, got {:?} {size:?}",
                x.kind()
            )));
        }
        let n = size[0] as usize;
        let frame = Frame {
            layout: Layout::Nchw,
            sample_len: size[1..].iter().product::<i64>() as usize,
            norms: norms.to_vec(),
            clamp,
        };

        // 1. The std of each sample; SNR levels need each sample's power, read on the CPU.
        let levels = self.assign(n, seed);
        let host: Option<Vec<f32>> = match self.mode {
            Mode::Std => None,
            Mode::Snr => Some(Vec::<f32>::try_from(
                x.to_device(Device::Cpu).flatten(0, -1),
            )?),
        };
        let host = host.as_deref().unwrap_or_default();
        let stds: Vec<f64> = levels
            .iter()
            .enumerate()
            .map(|(i, level)| {
                let sample = host.get(i * frame.sample_len..(i + 1) * frame.sample_len);
                self.sample_std(*level, sample.unwrap_or_default(), &frame)
            })
            .collect();

        // 2. Scaled noise on CPU threads, zero for clean samples.
        let per_channel = frame.sample_len / norms.len();
        let mut scaled = vec![0.0f32; n * frame.sample_len];
        scaled
            .par_chunks_mut(frame.sample_len)
            .enumerate()
            .for_each(|(i, z)| {
                if stds[i] > 0.0 {
                    fill_standard_normal(&mut sample_rng(seed, i), z);
                    for (plane, norm) in z.chunks_mut(per_channel).zip(norms) {
                        let scale = (stds[i] / f64::from(norm.std)) as f32;
                        plane.iter_mut().for_each(|v| *v *= scale);
                    }
                }
            });

        // 3. Add, clamp per channel and keep clean samples as they were, on the device.
        let device = x.device();
        let noise = Tensor::from_slice(&scaled)
            .view(size.as_slice())
            .to_device(device);
        let mut noisy = x.f_add(&noise)?;
        let mut channel_shape = vec![1i64; size.len()];
        channel_shape[1] = norms.len() as i64;
        if clamp {
            let (lo, hi): (Vec<f32>, Vec<f32>) = norms.iter().map(Normalization::range).unzip();
            let lo = Tensor::from_slice(&lo)
                .view(channel_shape.as_slice())
                .to_device(device);
            let hi = Tensor::from_slice(&hi)
                .view(channel_shape.as_slice())
                .to_device(device);
            noisy = noisy.f_maximum(&lo)?.f_minimum(&hi)?;
        }
        let mut sample_shape = vec![1i64; size.len()];
        sample_shape[0] = n as i64;
        let noised: Vec<bool> = stds.iter().map(|&s| s > 0.0).collect();
        let mask = Tensor::from_slice(&noised)
            .view(sample_shape.as_slice())
            .to_device(device);
        let out = noisy.f_where_self(&mask, x)?;
        Ok((out, stds.iter().map(|&s| s as f32).collect()))
    }
}

/// How the values of a batch lie in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Channels first: each sample is `C` planes of `H * W` values.
    Nchw,
    /// Channels last: each sample is `H * W` pixels of `C` values.
    Nhwc,
}

/// The geometry of a batch and the map from its values to pixel intensities.
#[derive(Clone, Debug)]
pub struct Frame {
    pub layout: Layout,
    /// Values per sample (`C * H * W`).
    pub sample_len: usize,
    /// One normalisation per channel: value = (pixel - mean) / std.
    pub norms: Vec<Normalization>,
    /// Clamp noisy samples per channel to the image of the pixel range `[0, 1]`.
    pub clamp: bool,
}

/// The element types a batch may hold.
pub trait Element: Copy + Send + Sync {
    /// The value as a float.
    fn to_f64(self) -> f64;
    /// The value plus `z * scale`, clamped to `[lo, hi]` (rounded and saturated for
    /// integers).
    fn noised(self, z: f32, scale: f32, lo: f32, hi: f32) -> Self;
}

impl Element for f32 {
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
    fn noised(self, z: f32, scale: f32, lo: f32, hi: f32) -> Self {
        (self + z * scale).max(lo).min(hi)
    }
}

impl Element for f64 {
    fn to_f64(self) -> f64 {
        self
    }
    fn noised(self, z: f32, scale: f32, lo: f32, hi: f32) -> Self {
        (self + f64::from(z) * f64::from(scale))
            .max(f64::from(lo))
            .min(f64::from(hi))
    }
}

impl Element for u8 {
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
    fn noised(self, z: f32, scale: f32, lo: f32, hi: f32) -> Self {
        let v = f32::from(self) + z * scale;
        v.clamp(lo.max(0.0), hi.min(255.0)).round() as u8
    }
}

/// The generator of sample `i`: independent streams, so samples can run in parallel.
fn sample_rng(seed: u64, i: usize) -> Xoshiro256PlusPlus {
    Xoshiro256PlusPlus::seed_from_u64(seed ^ (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// Index of value `p` of channel `c` within a sample.
fn index(layout: Layout, channels: usize, per_channel: usize, c: usize, p: usize) -> usize {
    match layout {
        Layout::Nchw => c * per_channel + p,
        Layout::Nhwc => p * channels + c,
    }
}

/// Mean of the squared pixel intensities of one sample.
fn mean_square_pixels<T: Element>(sample: &[T], frame: &Frame) -> f64 {
    let channels = frame.norms.len();
    let per_channel = sample.len() / channels;
    let mut total = 0.0;
    for (c, norm) in frame.norms.iter().enumerate() {
        let (mean, std) = (f64::from(norm.mean), f64::from(norm.std));
        for p in 0..per_channel {
            let pixel =
                sample[index(frame.layout, channels, per_channel, c, p)].to_f64() * std + mean;
            total += pixel * pixel;
        }
    }
    total / sample.len() as f64
}

/// Add Gaussian noise of `std` pixel units, drawn in channel-first order for every layout.
fn add_gaussian<T: Element>(
    sample: &mut [T],
    std: f64,
    frame: &Frame,
    rng: &mut Xoshiro256PlusPlus,
) {
    let channels = frame.norms.len();
    let per_channel = sample.len() / channels;
    let mut z = vec![0.0f32; sample.len()];
    fill_standard_normal(rng, &mut z);
    for (c, (norm, z)) in frame.norms.iter().zip(z.chunks(per_channel)).enumerate() {
        let (lo, hi) = if frame.clamp {
            norm.range()
        } else {
            (f32::NEG_INFINITY, f32::INFINITY)
        };
        let scale = (std / f64::from(norm.std)) as f32;
        match frame.layout {
            Layout::Nchw => {
                let plane = &mut sample[c * per_channel..(c + 1) * per_channel];
                for (v, &z) in plane.iter_mut().zip(z) {
                    *v = v.noised(z, scale, lo, hi);
                }
            }
            Layout::Nhwc => {
                for (p, &z) in z.iter().enumerate() {
                    let v = &mut sample[p * channels + c];
                    *v = v.noised(z, scale, lo, hi);
                }
            }
        }
    }
}

/// Fill `out` with standard normal samples: Box-Muller on 24-bit uniforms, in blocks the
/// compiler vectorises. The radius is bounded by `sqrt(2 * 24 * ln 2)`, about 5.8, so only
/// tails rarer than 1e-8 are cut.
pub fn fill_standard_normal(rng: &mut Xoshiro256PlusPlus, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above.
        return unsafe { fill_standard_normal_avx2(rng, out) };
    }
    fill_standard_normal_portable(rng, out);
}

/// The same code compiled for 8-wide vectors; IEEE arithmetic without contraction, so the
/// output is bit-identical to the portable path.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn fill_standard_normal_avx2(rng: &mut Xoshiro256PlusPlus, out: &mut [f32]) {
    fill_standard_normal_portable(rng, out);
}

#[inline(always)]
fn fill_standard_normal_portable(rng: &mut Xoshiro256PlusPlus, out: &mut [f32]) {
    const BLOCK: usize = 64;
    let mut bits = [0u64; BLOCK];
    let mut z = [0.0f32; 2 * BLOCK];
    for chunk in out.chunks_mut(2 * BLOCK) {
        for b in bits.iter_mut() {
            *b = rng.next_u64();
        }
        let (zc, zs) = z.split_at_mut(BLOCK);
        for i in 0..BLOCK {
            let u1 = (((bits[i] >> 40) as i32) as f32 + 1.0) * (1.0 / 16_777_216.0);
            let u2 = ((bits[i] & 0x00ff_ffff) as i32) as f32 * (1.0 / 16_777_216.0);
            let r = (-2.0 * ln_unit(u1)).sqrt();
            let (sin, cos) = sin_cos_turn(u2);
            zc[i] = r * cos;
            zs[i] = r * sin;
        }
        chunk.copy_from_slice(&z[..chunk.len()]);
    }
}

/// Natural logarithm of `x` in `(0, 1]`, to about 1e-7.
#[inline(always)]
fn ln_unit(x: f32) -> f32 {
    let bits = x.to_bits();
    let exponent = ((bits >> 23) & 0xff) as i32 - 127;
    let m = f32::from_bits((bits & 0x007f_ffff) | 0x3f80_0000);
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    let series = (2.0 / 3.0)
        + s2 * ((2.0 / 5.0) + s2 * ((2.0 / 7.0) + s2 * ((2.0 / 9.0) + s2 * (2.0 / 11.0))));
    exponent as f32 * std::f32::consts::LN_2 + s * (2.0 + s2 * series)
}

/// `(sin, cos)` of the angle `2 pi u` for `u` in `[0, 1)`, to about 1e-7.
#[inline(always)]
fn sin_cos_turn(u: f32) -> (f32, f32) {
    let t = u * 4.0;
    // SAFETY: `t` lies in [0, 4), so the conversion cannot overflow.
    let quadrant = unsafe { t.to_int_unchecked::<i32>() } & 3;
    let a = (t - quadrant as f32) * std::f32::consts::FRAC_PI_2;
    let a2 = a * a;
    let sin = a
        * (1.0
            - a2 * (1.0 / 6.0)
                * (1.0
                    - a2 * (1.0 / 20.0)
                        * (1.0
                            - a2 * (1.0 / 42.0)
                                * (1.0 - a2 * (1.0 / 72.0) * (1.0 - a2 * (1.0 / 110.0))))));
    let cos = 1.0
        - a2 * (1.0 / 2.0)
            * (1.0
                - a2 * (1.0 / 12.0)
                    * (1.0
                        - a2 * (1.0 / 30.0)
                            * (1.0
                                - a2 * (1.0 / 56.0)
                                    * (1.0 - a2 * (1.0 / 90.0) * (1.0 - a2 * (1.0 / 132.0))))));
    // Rotate by the quadrant without branches, so the loop vectorises.
    let swap = (quadrant & 1) as f32;
    let (s, c) = (sin + swap * (cos - sin), cos + swap * (sin - cos));
    let sin_sign = 1.0 - 2.0 * ((quadrant >> 1) & 1) as f32;
    let cos_sign = 1.0 - 2.0 * ((quadrant ^ (quadrant >> 1)) & 1) as f32;
    (sin_sign * s, cos_sign * c)
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
                    return Err(NoiseError::BadRange {
                        option,
                        level: key.canonical(),
                    });
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

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(sample_len: usize) -> Frame {
        let norms = vec![Normalization {
            mean: 0.0,
            std: 1.0,
        }];
        Frame {
            layout: Layout::Nchw,
            sample_len,
            norms,
            clamp: true,
        }
    }

    fn spec(items: Vec<(Value, f64)>) -> Result<NoiseSpec, NoiseError> {
        let dict = Value::Dict(
            items
                .into_iter()
                .map(|(k, f)| (k, Value::Float(f)))
                .collect(),
        );
        NoiseSpec::from_value(Mode::Std, &dict)
    }

    fn seed_dict() -> NoiseSpec {
        let levels = [0.08, 0.12, 0.18, 0.26, 0.38];
        let mut items: Vec<(Value, f64)> = levels.iter().map(|&l| (Value::Float(l), 0.1)).collect();
        items.push((Value::Int(-1), 0.5));
        spec(items).unwrap()
    }

    #[test]
    fn shares_follow_the_floor_rule_and_leftovers_stay_clean() {
        let s = seed_dict();
        let mut x = vec![0.5f32; 128 * 4];
        let before = x.clone();
        let applied = s.apply(&mut x, &plain(4), 1);
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
        let applied = s.apply(&mut x, &plain(1000), 7);
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
        s.apply(&mut y, &plain(1000), 7);
        assert_eq!(x, y);
        let mut z = vec![0.5f32; 64 * 1000];
        s.apply(&mut z, &plain(1000), 8);
        assert_ne!(x, z);
    }

    #[test]
    fn output_does_not_depend_on_the_thread_count() {
        let s = seed_dict();
        let mut many = vec![0.3f32; 256 * 784];
        s.apply(&mut many, &plain(784), 11);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let mut one = vec![0.3f32; 256 * 784];
        pool.install(|| s.apply(&mut one, &plain(784), 11));
        assert_eq!(many, one);
    }

    #[test]
    fn channels_last_is_the_transpose_of_channels_first() {
        let s = seed_dict();
        let norms: Vec<Normalization> = [(0.49, 0.247), (0.48, 0.243), (0.44, 0.261)]
            .iter()
            .map(|&(mean, std)| Normalization { mean, std })
            .collect();
        let (n, c, p) = (16, 3, 25);
        let nchw_frame = Frame {
            layout: Layout::Nchw,
            sample_len: c * p,
            norms,
            clamp: true,
        };
        let nhwc_frame = Frame {
            layout: Layout::Nhwc,
            ..nchw_frame.clone()
        };
        let nchw: Vec<f32> = (0..n * c * p)
            .map(|i| (i % 97) as f32 / 97.0 - 1.0)
            .collect();
        let mut nhwc = vec![0.0f32; nchw.len()];
        for (s_, (ci, pi)) in
            (0..n).flat_map(|s_| (0..c).flat_map(move |ci| (0..p).map(move |pi| (s_, (ci, pi)))))
        {
            nhwc[s_ * c * p + pi * c + ci] = nchw[s_ * c * p + ci * p + pi];
        }
        let mut a = nchw.clone();
        let applied_a = s.apply(&mut a, &nchw_frame, 5);
        let applied_b = s.apply(&mut nhwc, &nhwc_frame, 5);
        assert_eq!(applied_a, applied_b);
        for s_ in 0..n {
            for ci in 0..c {
                for pi in 0..p {
                    assert_eq!(a[s_ * c * p + ci * p + pi], nhwc[s_ * c * p + pi * c + ci]);
                }
            }
        }
    }

    #[test]
    fn clamps_to_the_normalised_pixel_range() {
        let norms = vec![Normalization {
            mean: 0.5,
            std: 0.25,
        }];
        let frame = Frame {
            layout: Layout::Nchw,
            sample_len: 10_000,
            norms,
            clamp: true,
        };
        let s = spec(vec![(Value::Float(1.0), 1.0)]).unwrap();
        let mut x = vec![0.0f32; 10_000];
        s.apply(&mut x, &frame, 3);
        assert!(x.iter().all(|&v| (-2.0..=2.0).contains(&v)));
        assert!(x.contains(&2.0) && x.contains(&-2.0));
    }

    #[test]
    fn bytes_are_noised_in_pixel_units_and_saturate() {
        let norms = vec![Normalization {
            mean: 0.0,
            std: 1.0 / 255.0,
        }];
        let frame = Frame {
            layout: Layout::Nchw,
            sample_len: 50_000,
            norms,
            clamp: true,
        };
        let s = spec(vec![(Value::Float(0.1), 1.0)]).unwrap();
        let mut x = vec![128u8; 50_000];
        s.apply(&mut x, &frame, 9);
        let n = x.len() as f64;
        let var = x
            .iter()
            .map(|&v| (f64::from(v) - 128.0).powi(2))
            .sum::<f64>()
            / n;
        assert!((var.sqrt() - 25.5).abs() < 0.3, "std {}", var.sqrt());
    }

    #[test]
    fn snr_level_divides_the_signal_power() {
        let dict = Value::Dict(vec![(Value::Float(2.0), Value::Float(1.0))]);
        let s = NoiseSpec::from_value(Mode::Snr, &dict).unwrap();
        let mut x = vec![0.5f32; 8 * 16];
        let applied = s.apply(&mut x, &plain(16), 0);
        assert!(applied.iter().all(|&a| a == 0.125), "{applied:?}");
    }

    #[test]
    fn range_levels_are_drawn_per_sample() {
        let key = Value::List(vec![Value::Float(0.1), Value::Float(0.3)]);
        let s = spec(vec![(key, 1.0)]).unwrap();
        let mut x = vec![0.5f32; 1000 * 4];
        let applied = s.apply(&mut x, &plain(4), 2);
        assert!(applied.iter().all(|&a| (0.1..0.3).contains(&a)));
        let distinct: std::collections::HashSet<u32> =
            applied.iter().map(|a| a.to_bits()).collect();
        assert!(distinct.len() > 900);
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

    #[test]
    fn tensor_path_is_bit_identical_to_the_slice_path_on_cpu() {
        let norms: Vec<Normalization> = [(0.49, 0.247), (0.48, 0.243), (0.44, 0.261)]
            .iter()
            .map(|&(mean, std)| Normalization { mean, std })
            .collect();
        let frame = Frame {
            layout: Layout::Nchw,
            sample_len: 3 * 36,
            norms: norms.clone(),
            clamp: true,
        };
        let values: Vec<f32> = (0..64 * 3 * 36)
            .map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0)
            .collect();
        let snr = NoiseSpec::from_value(
            Mode::Snr,
            &Value::Dict(vec![
                (Value::Float(2.0), Value::Float(0.5)),
                (Value::Int(-1), Value::Float(0.5)),
            ]),
        )
        .unwrap();
        for s in [seed_dict(), snr] {
            let mut slice = values.clone();
            let applied = s.apply(&mut slice, &frame, 21);
            let x = Tensor::from_slice(&values).view([64, 3, 6, 6]);
            let (noisy, applied_t) = s.apply_tensor(&x, &norms, true, 21).unwrap();
            assert_eq!(applied, applied_t);
            assert_eq!(Vec::<f32>::try_from(noisy.flatten(0, -1)).unwrap(), slice);
            assert_eq!(Vec::<f32>::try_from(x.flatten(0, -1)).unwrap(), values);
        }
    }
}
