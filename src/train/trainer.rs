//! One training stage: train with validation, keep the best epoch, sweep the noise test
//! levels, evaluate on the test split.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Map, Value as Json};
use tch::nn;
use tch::{Device, Kind, Tensor};

use super::checkpoint::{Checkpoint, ScheduleState};
use super::model::SmallCnn;
use super::optim::Optimizer;
use super::{ModelSpec, TrainerSpec, TrainingError};
use crate::data::{batch_seed, BatchStream, Dataset, StreamPlan};
use crate::noise::NoiseSpec;

/// Everything one stage trains from.
pub struct StageInput<'a> {
    pub dataset: &'a Dataset,
    pub model: &'a ModelSpec,
    pub trainer: &'a TrainerSpec,
    /// At most this many batches per pass over a split (smoke runs).
    pub max_batches: Option<usize>,
    pub seed: u64,
    /// Weights of the previous stage of the chain, if any.
    pub init_weights: Option<&'a Path>,
    /// Shown in progress bars and log lines.
    pub label: String,
    pub quiet: bool,
    /// Polled between batches; `true` stops training.
    pub interrupted: &'a (dyn Fn() -> bool + Sync),
    /// A checkpoint file to continue from.
    pub resume: Option<&'a Path>,
    /// Given each epoch's checkpoint file (except the last epoch's), to keep it.
    pub on_checkpoint: Option<&'a CheckpointSink<'a>>,
}

/// Keeps a checkpoint: called with the epoch and the file's path.
pub type CheckpointSink<'a> = dyn Fn(usize, &Path) -> Result<(), TrainingError> + Sync + 'a;

/// What a trained stage gives back.
pub struct StageResult {
    /// Test accuracy in percent.
    pub score: f64,
    /// `[train_stats, final_results]` as the original trainer returned them.
    pub output: Json,
    /// The model with the best epoch's weights.
    pub weights: nn::VarStore,
}

/// Accuracy (percent) and mean batch loss of one pass.
#[derive(Clone, Copy, Debug)]
struct Pass {
    acc: f64,
    loss: f64,
    images_per_s: f64,
}

/// Train one stage end to end.
pub fn train_stage(input: &StageInput) -> Result<StageResult, TrainingError> {
    // 1. Model, initial weights, frozen parts.
    tch::manual_seed(input.seed as i64);
    let device = if input.trainer.force_cpu {
        Device::Cpu
    } else {
        Device::cuda_if_available()
    };
    let mut vs = nn::VarStore::new(device);
    let mut model = SmallCnn::new(&vs.root(), input.model);
    if let Some(path) = input.init_weights {
        load_previous(&mut vs, path)?;
        if input.trainer.reset_linear {
            model.reset_readout();
        }
    }
    freeze(&vs, &input.trainer.freeze)?;

    // 2. Epochs: train, validate, keep the strictly best, step the schedule.
    let spec = input.trainer;
    let mut opt = Optimizer::new(&vs, spec);
    let mut schedule = Schedule::new(spec);
    let mut best: Option<(f64, usize, HashMap<String, Tensor>)> = None;
    let mut train_stats = Vec::with_capacity(spec.num_epochs);
    let mut first = 1;
    if let Some(path) = input.resume {
        let checkpoint = Checkpoint::load(path)?;
        let bad = |reason: String| TrainingError::Weights {
            path: path.display().to_string(),
            reason,
        };
        restore_all(&vs, &checkpoint.model).map_err(bad)?;
        opt.restore(checkpoint.optimizer, checkpoint.steps)
            .map_err(bad)?;
        schedule.restore(checkpoint.schedule);
        opt.set_lr(schedule.lr);
        best = checkpoint
            .best
            .map(|(acc, at, w)| (acc, at, w.into_iter().collect()));
        train_stats = checkpoint.train_stats;
        first = checkpoint.epoch + 1;
        log::info!(
            "{} resuming after epoch {}/{} from its checkpoint",
            input.label,
            checkpoint.epoch,
            spec.num_epochs
        );
    }
    for epoch in first..=spec.num_epochs {
        let train = train_epoch(input, &model, &mut opt, device, epoch)?;
        let dev = evaluate(input, &model, device, Which::Valid, spec.noise.as_ref())?;
        log::info!(
            "{} epoch {epoch}/{}: train loss {:.4} acc {:.2}% | dev loss {:.4} acc {:.2}% | \
             {:.0} img/s | lr {:.2e}",
            input.label,
            spec.num_epochs,
            train.loss,
            train.acc,
            dev.loss,
            dev.acc,
            train.images_per_s,
            schedule.lr
        );
        train_stats.push(json!({
            "train_acc": train.acc, "train_loss": train.loss, "train_module_loss": 0.0,
            "dev_acc": dev.acc, "dev_loss": dev.loss, "dev_module_loss": 0.0,
            "lr": schedule.lr, "images_per_s": train.images_per_s,
        }));
        if best.as_ref().is_none_or(|(acc, _, _)| dev.acc > *acc) {
            best = Some((dev.acc, epoch, snapshot(&vs)));
        }
        if let Some(lr) = schedule.step(epoch, dev.loss) {
            opt.set_lr(lr);
        }
        if let Some(keep) = input.on_checkpoint.filter(|_| epoch < spec.num_epochs) {
            let checkpoint = Checkpoint {
                epoch,
                model: vs.variables().into_iter().collect(),
                best: best.as_ref().map(|(acc, at, w)| {
                    let w = w.iter().map(|(n, t)| (n.clone(), t.shallow_clone()));
                    (*acc, *at, w.collect())
                }),
                optimizer: opt.state().0,
                steps: opt.state().1,
                schedule: schedule.state(),
                train_stats: train_stats.clone(),
            };
            let file = tempfile::Builder::new()
                .suffix(".safetensors")
                .tempfile()
                .map_err(|e| TrainingError::Trainer(format!("checkpoint file: {e}")))?;
            checkpoint.save(file.path())?;
            keep(epoch, file.path())?;
        }
    }

    // 3. Reload the best epoch, sweep the noise levels, test.
    let (best_acc, best_epoch) = match best {
        Some((acc, epoch, weights)) => {
            restore(&vs, &weights);
            (acc, epoch)
        }
        None => (0.0, 0),
    };
    let (noise_acc, noise_loss) = noise_sweep(input, &model, device)?;
    let test = evaluate(input, &model, device, Which::Test, None)?;
    log::info!(
        "{}: test acc {:.2}% (best epoch {best_epoch})",
        input.label,
        test.acc
    );
    let final_results = json!({
        "test_acc": test.acc, "test_loss": test.loss, "dev_acc": best_acc, "epoch": best_epoch,
        "dev_noise_acc": noise_acc, "dev_noise_loss": noise_loss,
    });
    Ok(StageResult {
        score: test.acc,
        output: json!([train_stats, final_results]),
        weights: vs,
    })
}

fn load_previous(vs: &mut nn::VarStore, path: &Path) -> Result<(), TrainingError> {
    let missing = vs.load_partial(path).map_err(|e| TrainingError::Weights {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    if !missing.is_empty() {
        log::warn!(
            "weights `{}` lack {}; those stay freshly initialised",
            path.display(),
            missing.join(", ")
        );
    }
    Ok(())
}

fn freeze(vs: &nn::VarStore, parts: &[String]) -> Result<(), TrainingError> {
    let vars = vs.variables();
    for part in parts {
        let prefix = format!("{part}.");
        let mut hit = false;
        for (name, var) in &vars {
            if name.starts_with(&prefix) {
                let _ = var.set_requires_grad(false);
                hit = true;
            }
        }
        if !hit {
            return Err(TrainingError::Trainer(format!(
                "`freeze` names `{part}`, which the model lacks; valid: `core`, `readout`"
            )));
        }
    }
    Ok(())
}

/// MultiStepLR, or ReduceLROnPlateau on the dev loss when `adaptive_lr` is set.
struct Schedule {
    lr: f64,
    decay: f64,
    milestones: Vec<usize>,
    plateau: Option<Plateau>,
}

struct Plateau {
    best: f64,
    bad_epochs: usize,
    patience: usize,
    threshold: f64,
}

impl Schedule {
    fn new(spec: &TrainerSpec) -> Schedule {
        let plateau = spec.adaptive_lr.then_some(Plateau {
            best: f64::INFINITY,
            bad_epochs: 0,
            patience: spec.patience,
            threshold: spec.threshold,
        });
        Schedule {
            lr: spec.lr,
            decay: spec.lr_decay,
            milestones: spec.lr_milestones.clone(),
            plateau,
        }
    }

    fn state(&self) -> ScheduleState {
        ScheduleState {
            lr: self.lr,
            plateau: self.plateau.as_ref().map(|p| (p.best, p.bad_epochs)),
        }
    }

    fn restore(&mut self, state: ScheduleState) {
        self.lr = state.lr;
        if let (Some(p), Some((best, bad_epochs))) = (&mut self.plateau, state.plateau) {
            p.best = best;
            p.bad_epochs = bad_epochs;
        }
    }

    /// Step after `epoch`; the new learning rate when it changed.
    fn step(&mut self, epoch: usize, dev_loss: f64) -> Option<f64> {
        let decay = match &mut self.plateau {
            Some(p) if dev_loss < p.best * (1.0 - p.threshold) => {
                p.best = dev_loss;
                p.bad_epochs = 0;
                false
            }
            Some(p) => {
                p.bad_epochs += 1;
                let hit = p.bad_epochs > p.patience;
                if hit {
                    p.bad_epochs = 0;
                }
                hit
            }
            None => self.milestones.contains(&epoch),
        };
        decay.then(|| {
            self.lr *= self.decay;
            self.lr
        })
    }
}

#[derive(Clone, Copy)]
enum Which {
    Valid,
    Test,
}

fn cross_entropy(logits: &Tensor, ys: &Tensor) -> Result<Tensor, tch::TchError> {
    logits.f_cross_entropy_loss::<Tensor>(ys, None, tch::Reduction::Mean, -100, 0.0)
}

/// On CUDA, noise is added to the batch on the device (the batch threads leave it clean);
/// the same seeds give the same noise as the CPU path.
fn noise_on_device(
    input: &StageInput,
    noise: Option<&NoiseSpec>,
    xs: Tensor,
    stream_seed: u64,
    batch: usize,
) -> Result<Tensor, TrainingError> {
    match noise {
        Some(spec) if xs.device().is_cuda() => {
            let norm = input.dataset.spec.normalization();
            Ok(spec
                .apply_tensor(&xs, &[norm], true, batch_seed(stream_seed, batch))?
                .0)
        }
        _ => Ok(xs),
    }
}

fn to_tensors(batch: &crate::data::Batch, side: i64, device: Device) -> (Tensor, Tensor) {
    let n = batch.labels.len() as i64;
    let xs = Tensor::from_slice(&batch.images)
        .view([n, 1, side, side])
        .to_device(device);
    let ys = Tensor::from_slice(&batch.labels).to_device(device);
    (xs, ys)
}

fn train_epoch(
    input: &StageInput,
    model: &SmallCnn,
    opt: &mut Optimizer,
    device: Device,
    epoch: usize,
) -> Result<Pass, TrainingError> {
    let data = input.dataset;
    let epoch_seed = input
        .seed
        .wrapping_mul(1_000_003)
        .wrapping_add(epoch as u64);
    let mut order = data.train_indices.clone();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(epoch_seed));
    let cap = input.max_batches.unwrap_or(usize::MAX);
    order.truncate(cap.saturating_mul(data.spec.batch_size));
    let batches = order.len().div_ceil(data.spec.batch_size) as u64;
    // One seed for the batch threads (CPU) and the device path (CUDA): the same noise.
    let noise_seed = epoch_seed ^ 0x5eed;
    let stream = BatchStream::start(StreamPlan {
        split: (data.train.images.clone(), data.train.labels.clone()),
        order,
        batch_size: data.spec.batch_size,
        norm: data.spec.normalization(),
        noise: input.trainer.noise.clone().filter(|_| !device.is_cuda()),
        noise_seed,
    });
    let bar = progress(
        input,
        batches,
        &format!("epoch {epoch}/{}", input.trainer.num_epochs),
    );
    let side = data.train.images.rows as i64;
    let mut tally = Tally::new();
    for (i, batch) in stream.enumerate() {
        if (input.interrupted)() {
            return Err(TrainingError::Interrupted);
        }
        let (xs, ys) = to_tensors(&batch, side, device);
        let xs = noise_on_device(input, input.trainer.noise.as_ref(), xs, noise_seed, i)?;
        let logits = model.forward(&xs).logits;
        let loss = cross_entropy(&logits, &ys)?;
        opt.backward_step(&loss);
        tally.add(&logits, &ys, &loss);
        bar.inc(1);
        bar.set_message(tally.message());
    }
    bar.finish_and_clear();
    Ok(tally.pass())
}

/// Running loss and accuracy of one pass over a split.
struct Tally {
    loss_sum: f64,
    correct: i64,
    seen: usize,
    steps: usize,
    start: Instant,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            loss_sum: 0.0,
            correct: 0,
            seen: 0,
            steps: 0,
            start: Instant::now(),
        }
    }

    fn add(&mut self, logits: &Tensor, ys: &Tensor, loss: &Tensor) {
        self.loss_sum += loss.double_value(&[]);
        self.correct += logits
            .argmax(-1, false)
            .eq_tensor(ys)
            .sum(Kind::Int64)
            .int64_value(&[]);
        self.seen += ys.size()[0] as usize;
        self.steps += 1;
    }

    fn message(&self) -> String {
        let pass = self.pass();
        format!("loss {:.4} acc {:.2}%", pass.loss, pass.acc)
    }

    /// Accuracy in percent, mean batch loss, throughput.
    fn pass(&self) -> Pass {
        Pass {
            acc: 100.0 * self.correct as f64 / self.seen.max(1) as f64,
            loss: self.loss_sum / self.steps.max(1) as f64,
            images_per_s: self.seen as f64 / self.start.elapsed().as_secs_f64().max(1e-9),
        }
    }
}

/// Evaluate without gradients; evaluation noise is seeded by the experiment seed, so every
/// evaluation of the same split sees the same noise.
fn evaluate(
    input: &StageInput,
    model: &SmallCnn,
    device: Device,
    which: Which,
    noise: Option<&NoiseSpec>,
) -> Result<Pass, TrainingError> {
    let data = input.dataset;
    let (split, mut order): (_, Vec<usize>) = match which {
        Which::Valid => (&data.train, data.valid_indices.clone()),
        Which::Test => (&data.test, (0..data.test.images.count).collect()),
    };
    let batch_size = data.spec.batch_size.max(256);
    order.truncate(
        input
            .max_batches
            .unwrap_or(usize::MAX)
            .saturating_mul(batch_size),
    );
    let stream = BatchStream::start(StreamPlan {
        split: (split.images.clone(), split.labels.clone()),
        order,
        batch_size,
        norm: data.spec.normalization(),
        noise: noise.cloned().filter(|_| !device.is_cuda()),
        noise_seed: input.seed,
    });
    let side = split.images.rows as i64;
    tch::no_grad(|| {
        let mut tally = Tally::new();
        for (i, batch) in stream.enumerate() {
            if (input.interrupted)() {
                return Err(TrainingError::Interrupted);
            }
            let (xs, ys) = to_tensors(&batch, side, device);
            let xs = noise_on_device(input, noise, xs, input.seed, i)?;
            let logits = model.forward(&xs).logits;
            tally.add(&logits, &ys, &cross_entropy(&logits, &ys)?);
        }
        Ok(tally.pass())
    })
}

fn noise_sweep(
    input: &StageInput,
    model: &SmallCnn,
    device: Device,
) -> Result<(Json, Json), TrainingError> {
    let mut acc = Map::new();
    let mut loss = Map::new();
    for (kind, key, spec) in &input.trainer.noise_test {
        let pass = evaluate(input, model, device, Which::Valid, Some(spec))?;
        acc.entry(kind.to_string()).or_insert_with(|| json!({}))[key.as_str()] = json!(pass.acc);
        loss.entry(kind.to_string()).or_insert_with(|| json!({}))[key.as_str()] = json!(pass.loss);
    }
    Ok((Json::Object(acc), Json::Object(loss)))
}

fn snapshot(vs: &nn::VarStore) -> HashMap<String, Tensor> {
    vs.variables()
        .into_iter()
        .map(|(name, t)| (name, t.detach().copy()))
        .collect()
}

/// Set every variable from `saved`, which must hold each of them with its shape.
fn restore_all(vs: &nn::VarStore, saved: &[(String, Tensor)]) -> Result<(), String> {
    let saved: HashMap<&str, &Tensor> = saved.iter().map(|(n, t)| (n.as_str(), t)).collect();
    tch::no_grad(|| {
        for (name, mut var) in vs.variables() {
            let t = saved
                .get(name.as_str())
                .ok_or_else(|| format!("the checkpoint lacks `{name}`"))?;
            if t.size() != var.size() {
                return Err(format!(
                    "`{name}` has shape {:?} in the checkpoint, {:?} in the model",
                    t.size(),
                    var.size()
                ));
            }
            var.copy_(t);
        }
        Ok(())
    })
}

fn restore(vs: &nn::VarStore, weights: &HashMap<String, Tensor>) {
    tch::no_grad(|| {
        for (name, mut var) in vs.variables() {
            if let Some(saved) = weights.get(&name) {
                var.copy_(saved);
            }
        }
    });
}

fn progress(input: &StageInput, len: u64, prefix: &str) -> ProgressBar {
    if input.quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    let style =
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ({per_sec}, {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(format!("{} {prefix}", input.label));
    bar
}
