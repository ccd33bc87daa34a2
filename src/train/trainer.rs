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
use super::model::{self, Model};
use super::modules::NoiseAdv;
use super::optim::Optimizer;
use super::{ModelSpec, TrainerSpec, TrainingError};
use crate::data::corrupted::SEVERITIES;
use crate::data::{
    batch_seed, second_seed, Batch, BatchStream, Dataset, SecondView, Split, StreamPlan,
};
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
pub(super) struct Pass {
    acc: f64,
    loss: f64,
    /// Mean batch loss of the main-loop modules (weighted as in training).
    module_loss: f64,
    images_per_s: f64,
}

/// Train one stage end to end.
pub fn train_stage(input: &StageInput) -> Result<StageResult, TrainingError> {
    // 1. Model, initial weights, frozen parts.
    super::tune_allocator();
    tch::manual_seed(input.seed as i64);
    let device = device(input.trainer);
    let mut vs = nn::VarStore::new(device);
    let model = &model::build(&vs.root(), input.model);
    if let Some(path) = input.init_weights {
        load_previous(&mut vs, path)?;
        if input.trainer.reset_linear {
            model::reset_readout(&vs);
        }
    }
    freeze(&vs, &input.trainer.freeze)?;

    // 2. Epochs: train, validate, keep the strictly best, step the schedule.
    let spec = input.trainer;
    model::set_channels_last(&vs, true);
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
        let train = train_epoch(input, model, &vs, &mut opt, device, epoch)?;
        let dev = evaluate(input, model, device, Which::Valid, spec.noise.as_ref())?;
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
            "train_acc": train.acc, "train_loss": train.loss,
            "train_module_loss": train.module_loss, "dev_acc": dev.acc, "dev_loss": dev.loss,
            "dev_module_loss": dev.module_loss,
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
    let (noise_acc, noise_loss) = noise_sweep(input, model, device)?;
    let test = evaluate(input, model, device, Which::Test, None)?;
    log::info!(
        "{}: test acc {:.2}% (best epoch {best_epoch})",
        input.label,
        test.acc
    );
    let mut final_results = json!({
        "test_acc": test.acc, "test_loss": test.loss, "dev_acc": best_acc, "epoch": best_epoch,
        "dev_noise_acc": noise_acc, "dev_noise_loss": noise_loss,
    });
    if let Some((acc, loss)) = corrupted_test(input, model, device)? {
        final_results["c_test_acc"] = acc;
        final_results["c_test_loss"] = loss;
    }
    model::set_channels_last(&vs, false);
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

/// What an evaluation runs on.
#[derive(Clone)]
enum Which<'a> {
    Valid,
    Test,
    /// Rows `range` of a corrupted test set.
    Corrupted(&'a Split, std::ops::Range<usize>),
}

/// The mean cross-entropy of `logits` against the labels `ys`.
pub(super) fn cross_entropy(logits: &Tensor, ys: &Tensor) -> Result<Tensor, tch::TchError> {
    logits.f_cross_entropy_loss::<Tensor>(ys, None, tch::Reduction::Mean, -100, 0.0)
}

/// A batch on the device: the first view with each sample's applied noise std, and the
/// second view when representation matching asks for one.
struct Views {
    xs: Tensor,
    applied: Tensor,
    second: Option<Tensor>,
}

/// Move a batch to the device. On CUDA, noise is added there (the batch threads leave the
/// images clean), with the seeds the batch threads would use, so both give the same noise.
fn views(
    input: &StageInput,
    batch: &Batch,
    noise: Option<&NoiseSpec>,
    second: Option<&SecondView>,
    device: Device,
    seed: u64,
) -> Result<Views, TrainingError> {
    let n = batch.labels.len() as i64;
    let [c, h, w] = input.dataset.batch_shape().map(|d| d as i64);
    let tensor = |values: &[f32]| {
        Tensor::from_slice(values)
            .view([n, c, h, w])
            .to_device(device)
    };
    let floats = |values: &[f32]| Tensor::from_slice(values).to_device(device);
    let norms = &input.dataset.norms;
    let xs = tensor(&batch.images);
    let noised = |spec: Option<&NoiseSpec>, clean: &Tensor, seed| match spec {
        Some(spec) => {
            let (x, std) = spec.apply_tensor(clean, norms, true, seed)?;
            Ok::<_, TrainingError>((x, floats(&std)))
        }
        None => Ok((
            clean.shallow_clone(),
            Tensor::zeros([n], (Kind::Float, device)),
        )),
    };
    if !device.is_cuda() {
        return Ok(Views {
            xs,
            applied: floats(&batch.applied_std),
            second: batch.second.as_ref().map(|(x2, _)| tensor(x2)),
        });
    }
    let second = match second {
        Some(SecondView::Noise(spec)) => Some(noised(Some(spec), &xs, second_seed(seed))?.0),
        Some(SecondView::Clean) => Some(xs.shallow_clone()),
        None => None,
    };
    let (xs, applied) = noised(noise, &xs, seed)?;
    Ok(Views {
        xs,
        applied,
        second,
    })
}

/// One batch through the model: the first view's logits, its cross-entropy, and the
/// modules' weighted losses (zero without modules); training minimises their sum.
fn batch_loss(
    input: &StageInput,
    model: &Model,
    views: &Views,
    ys: &Tensor,
    train: bool,
    progress: f64,
) -> Result<(Tensor, Tensor, Tensor), TrainingError> {
    let spec = input.trainer;
    let n = views.xs.size()[0];
    let out = match &views.second {
        Some(x2) => model.forward_t(&Tensor::cat(&[&views.xs, x2], 0), train),
        None => model.forward_t(&views.xs, train),
    };
    let first = |t: &Tensor| t.narrow(0, 0, n);
    let logits = first(&out.logits);
    let ce = cross_entropy(&logits, ys)?;
    let mut modules = Tensor::zeros([], (Kind::Float, ys.device()));
    if let (Some(rep), Some(_)) = (&spec.rep_match, &views.second) {
        let reps = match rep.representation {
            super::modules::Representation::Core => &out.core,
            super::modules::Representation::Logits => &out.logits,
        };
        let distance = rep.loss(&first(reps), &reps.narrow(0, n, n), &views.applied);
        modules += distance * rep.lambda;
    }
    if let (Some(kind), Some(head)) = (input.model.noise_adv, &model.noise_readout) {
        let adv = NoiseAdv {
            kind,
            factor: spec.noise_adv_loss_factor,
            gamma: spec.noise_adv_gamma,
        };
        modules += adv.loss(head, &first(&out.core), &views.applied, progress) * adv.factor;
    }
    Ok((logits, ce, modules))
}

/// Where a stream's second view comes from: on CUDA it is made on the device.
fn second_view(input: &StageInput, device: Device) -> Option<SecondView> {
    input
        .trainer
        .rep_match
        .as_ref()
        .map(|rep| match &rep.second {
            Some(spec) if !device.is_cuda() => SecondView::Noise(spec.clone()),
            _ => SecondView::Clean,
        })
}

/// Where a stage trains: CUDA when present, unless the trainer forces the CPU.
pub(super) fn device(trainer: &TrainerSpec) -> Device {
    match trainer.force_cpu {
        true => Device::Cpu,
        false => Device::cuda_if_available(),
    }
}

pub(super) fn train_epoch(
    input: &StageInput,
    model: &Model,
    vs: &nn::VarStore,
    opt: &mut Optimizer,
    device: Device,
    epoch: usize,
) -> Result<Pass, TrainingError> {
    let data = input.dataset;
    let spec = input.trainer;
    let epoch_seed = input
        .seed
        .wrapping_mul(1_000_003)
        .wrapping_add(epoch as u64);
    // Dropout and readout resets draw from libtorch's generator: seed it per epoch, so a
    // resumed stage draws what an uninterrupted one would.
    tch::manual_seed(epoch_seed as i64);
    let reset = spec.readout_reset.as_ref();
    if reset.is_some_and(|r| r.before_epoch(epoch)) {
        model::reset_readout(vs);
    }
    let mut order = data.train_indices.clone();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(epoch_seed));
    let cap = input.max_batches.unwrap_or(usize::MAX);
    order.truncate(cap.saturating_mul(data.spec.batch_size));
    let batches = order.len().div_ceil(data.spec.batch_size);
    // One seed for the batch threads (CPU) and the device path (CUDA): the same noise.
    let noise_seed = epoch_seed ^ 0x5eed;
    let second = second_view(input, device);
    let stream = BatchStream::start(StreamPlan {
        split: data.train.clone(),
        order,
        batch_size: data.spec.batch_size,
        norms: data.norms.clone(),
        augment: data.spec.augment,
        noise: spec.noise.clone().filter(|_| !device.is_cuda()),
        noise_seed,
        second: second.clone(),
    });
    let bar = progress(
        input,
        batches as u64,
        &format!("epoch {epoch}/{}", spec.num_epochs),
    );
    let mut tally = Tally::new(device);
    for (i, batch) in stream.enumerate() {
        if (input.interrupted)() {
            return Err(TrainingError::Interrupted);
        }
        let seed = batch_seed(noise_seed, i);
        let views = views(
            input,
            &batch,
            spec.noise.as_ref(),
            second.as_ref(),
            device,
            seed,
        )?;
        let ys = Tensor::from_slice(&batch.labels).to_device(device);
        let done = (epoch - 1) * batches + i;
        let progress = done as f64 / (spec.num_epochs * batches).max(1) as f64;
        let (logits, ce, modules) = batch_loss(input, model, &views, &ys, true, progress)?;
        // Without a main-loop module the sum is the cross-entropy itself: skip the add.
        match modules.requires_grad() {
            true => opt.backward_step(&(&ce + &modules)),
            false => opt.backward_step(&ce),
        }
        if reset.is_some_and(|r| r.after_batch(i)) {
            model::reset_readout(vs);
        }
        tally.add(&logits, &ys, &ce, &modules);
        bar.inc(1);
        tally.show(&bar);
    }
    bar.finish_and_clear();
    Ok(tally.pass())
}

/// Running loss and accuracy of one pass over a split. The sums stay on the device, so a
/// batch does not wait for the previous one to finish there; they are read at the end of
/// the pass, and every few batches for a visible progress bar.
struct Tally {
    loss_sum: Tensor,
    module_loss_sum: Tensor,
    correct: Tensor,
    seen: usize,
    steps: usize,
    start: Instant,
}

/// Batches between updates of a visible progress bar's loss and accuracy.
const MESSAGE_EVERY: usize = 10;

impl Tally {
    fn new(device: Device) -> Tally {
        let zero = || Tensor::zeros([], (Kind::Double, device));
        Tally {
            loss_sum: zero(),
            module_loss_sum: zero(),
            correct: Tensor::zeros([], (Kind::Int64, device)),
            seen: 0,
            steps: 0,
            start: Instant::now(),
        }
    }

    fn add(&mut self, logits: &Tensor, ys: &Tensor, loss: &Tensor, module_loss: &Tensor) {
        tch::no_grad(|| {
            self.loss_sum += loss.to_kind(Kind::Double);
            self.module_loss_sum += module_loss.to_kind(Kind::Double);
            self.correct += logits.argmax(-1, false).eq_tensor(ys).sum(Kind::Int64);
        });
        self.seen += ys.size()[0] as usize;
        self.steps += 1;
    }

    /// Show the running figures on `bar` every few batches, when it is visible.
    fn show(&self, bar: &ProgressBar) {
        if !bar.is_hidden() && self.steps % MESSAGE_EVERY == 1 {
            let pass = self.pass();
            bar.set_message(format!("loss {:.4} acc {:.2}%", pass.loss, pass.acc));
        }
    }

    /// Accuracy in percent, mean batch loss, throughput.
    fn pass(&self) -> Pass {
        let steps = self.steps.max(1) as f64;
        Pass {
            acc: 100.0 * self.correct.int64_value(&[]) as f64 / self.seen.max(1) as f64,
            loss: self.loss_sum.double_value(&[]) / steps,
            module_loss: self.module_loss_sum.double_value(&[]) / steps,
            images_per_s: self.seen as f64 / self.start.elapsed().as_secs_f64().max(1e-9),
        }
    }
}

/// Evaluate without gradients; evaluation noise is seeded by the experiment seed, so every
/// evaluation of the same split sees the same noise. The validation pass of each epoch
/// (`Which::Valid` with the training noise) also runs the main-loop modules.
fn evaluate(
    input: &StageInput,
    model: &Model,
    device: Device,
    which: Which,
    noise: Option<&NoiseSpec>,
) -> Result<Pass, TrainingError> {
    let data = input.dataset;
    let with_modules = matches!(which, Which::Valid) && noise == input.trainer.noise.as_ref();
    let (split, mut order): (_, Vec<usize>) = match which {
        Which::Valid => (&data.train, data.valid_indices.clone()),
        Which::Test => (&data.test, (0..data.test.images.count).collect()),
        Which::Corrupted(split, range) => (split, range.collect()),
    };
    let batch_size = data.spec.batch_size.max(256);
    order.truncate(
        input
            .max_batches
            .unwrap_or(usize::MAX)
            .saturating_mul(batch_size),
    );
    let second = second_view(input, device).filter(|_| with_modules);
    let stream = BatchStream::start(StreamPlan {
        split: split.clone(),
        order,
        batch_size,
        norms: data.norms.clone(),
        augment: false,
        noise: noise.cloned().filter(|_| !device.is_cuda()),
        noise_seed: input.seed,
        second: second.clone(),
    });
    tch::no_grad(|| {
        let mut tally = Tally::new(device);
        for (i, batch) in stream.enumerate() {
            if (input.interrupted)() {
                return Err(TrainingError::Interrupted);
            }
            let seed = batch_seed(input.seed, i);
            let views = views(input, &batch, noise, second.as_ref(), device, seed)?;
            let ys = Tensor::from_slice(&batch.labels).to_device(device);
            let (logits, ce, modules) = match with_modules {
                true => batch_loss(input, model, &views, &ys, false, 1.0)?,
                false => {
                    let logits = model.forward_t(&views.xs, false).logits;
                    let ce = cross_entropy(&logits, &ys)?;
                    (logits, ce, Tensor::zeros([], (Kind::Float, device)))
                }
            };
            tally.add(&logits, &ys, &ce, &modules);
        }
        Ok(tally.pass())
    })
}

fn noise_sweep(
    input: &StageInput,
    model: &Model,
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

/// Accuracy and loss on every corrupted test set, by corruption and severity (`"1"` to
/// `"5"`), one corruption in memory at a time.
fn corrupted_test(
    input: &StageInput,
    model: &Model,
    device: Device,
) -> Result<Option<(Json, Json)>, TrainingError> {
    let Some(sets) = &input.dataset.corrupted else {
        return Ok(None);
    };
    let (mut acc, mut loss) = (Map::new(), Map::new());
    for (name, path) in &sets.corruptions {
        let split = sets.load(path, input.dataset.train.images.shape())?;
        let (mut by_acc, mut by_loss) = (Map::new(), Map::new());
        for severity in 1..=SEVERITIES {
            let n = sets.per_severity;
            let rows = (severity - 1) * n..severity * n;
            let pass = evaluate(input, model, device, Which::Corrupted(&split, rows), None)?;
            by_acc.insert(severity.to_string(), json!(pass.acc));
            by_loss.insert(severity.to_string(), json!(pass.loss));
        }
        log::info!(
            "{}: corrupted test `{name}`: acc {} by severity",
            input.label,
            by_acc
                .values()
                .map(|v| format!("{:.2}%", v.as_f64().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(" ")
        );
        acc.insert(name.clone(), Json::Object(by_acc));
        loss.insert(name.clone(), Json::Object(by_loss));
    }
    Ok(Some((Json::Object(acc), Json::Object(loss))))
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
