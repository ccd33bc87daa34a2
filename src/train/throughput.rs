//! Training throughput, as the benchmarks measure it: the trainer's own epoch loop over a
//! number of batches, and the compute floor under it (forward, backward and step on batches
//! already on the device, with no data pipeline).

use std::time::Instant;

use tch::{nn, Device, Tensor};

use super::model;
use super::optim::Optimizer;
use super::trainer::{cross_entropy, device, train_epoch, StageInput};
use super::{ModelSpec, TrainerSpec, TrainingError};
use crate::data::{BatchStream, Dataset, StreamPlan};

/// What to time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Measure {
    /// The trainer's epoch loop: batch threads, noise and augmentation as configured.
    Pipeline,
    /// The same model and optimiser on a few batches prepared beforehand.
    Floor,
}

/// Images per second over `steps` batches, after `warmup` batches that are not timed;
/// `interrupted` is polled between batches.
pub fn throughput(
    dataset: &Dataset,
    model_spec: &ModelSpec,
    trainer: &TrainerSpec,
    seed: u64,
    (warmup, steps): (usize, usize),
    measure: Measure,
    interrupted: &(dyn Fn() -> bool + Sync),
) -> Result<f64, TrainingError> {
    if steps == 0 {
        return Err(TrainingError::Throughput(
            "`steps` must be at least 1".into(),
        ));
    }
    let batch_size = dataset.spec.batch_size;
    let available = dataset.train_indices.len() / batch_size.max(1);
    if available < warmup.max(steps) {
        return Err(TrainingError::Throughput(format!(
            "the training split holds {available} full batches of {batch_size}, fewer than the \
             {} asked for",
            warmup.max(steps)
        )));
    }
    super::tune_allocator();
    tch::manual_seed(seed as i64);
    let device = device(trainer);
    let vs = nn::VarStore::new(device);
    let net = model::build(&vs.root(), model_spec);
    model::set_channels_last(&vs, true);
    let mut opt = Optimizer::new(&vs, trainer);
    if measure == Measure::Floor {
        return floor(
            dataset,
            &net,
            &mut opt,
            (device, interrupted),
            (warmup, steps),
        );
    }
    let mut input = StageInput {
        dataset,
        model: model_spec,
        trainer,
        max_batches: Some(warmup),
        seed,
        init_weights: None,
        label: String::new(),
        quiet: true,
        interrupted,
        resume: None,
        on_checkpoint: None,
    };
    if warmup > 0 {
        train_epoch(&input, &net, &vs, &mut opt, device, 1)?;
    }
    input.max_batches = Some(steps);
    let start = Instant::now();
    train_epoch(&input, &net, &vs, &mut opt, device, 2)?;
    Ok((steps * batch_size) as f64 / start.elapsed().as_secs_f64())
}

/// Batches made before the clock starts; the floor cycles through them.
const FLOOR_BATCHES: usize = 4;

fn floor(
    dataset: &Dataset,
    net: &model::Model,
    opt: &mut Optimizer,
    (device, interrupted): (Device, &(dyn Fn() -> bool + Sync)),
    (warmup, steps): (usize, usize),
) -> Result<f64, TrainingError> {
    let batch_size = dataset.spec.batch_size;
    let order = dataset.train_indices[..FLOOR_BATCHES.min(steps) * batch_size].to_vec();
    let [c, h, w] = dataset.batch_shape().map(|d| d as i64);
    let stream = BatchStream::start(StreamPlan {
        split: dataset.train.clone(),
        order,
        batch_size,
        norms: dataset.norms.clone(),
        augment: false,
        noise: None,
        noise_seed: 0,
        second: None,
    });
    let batches: Vec<(Tensor, Tensor)> = stream
        .map(|b| {
            let xs = Tensor::from_slice(&b.images).view([-1, c, h, w]);
            (
                xs.to_device(device),
                Tensor::from_slice(&b.labels).to_device(device),
            )
        })
        .collect();
    let mut step = |i: usize| -> Result<(), TrainingError> {
        if interrupted() {
            return Err(TrainingError::Interrupted);
        }
        let (xs, ys) = &batches[i % batches.len()];
        let loss = cross_entropy(&net.forward_t(xs, true).logits, ys)?;
        opt.backward_step(&loss);
        Ok(())
    };
    for i in 0..warmup {
        step(i)?;
    }
    let sync = || {
        if let Device::Cuda(index) = device {
            tch::Cuda::synchronize(index as i64);
        }
    };
    sync();
    let start = Instant::now();
    for i in 0..steps {
        step(i)?;
    }
    sync();
    Ok((steps * batch_size) as f64 / start.elapsed().as_secs_f64())
}
