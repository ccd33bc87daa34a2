//! A trained model loaded for inference: its stored configs, its architecture and its
//! weights, checked against each other.

use std::collections::HashMap;
use std::path::Path;

use tch::{nn, Device, Kind, Tensor};

use super::model::{self, Model};
use super::{ModelSpec, TrainingError};
use crate::config::Value;
use crate::data::{DatasetSpec, Normalization};

/// One trained model, on the CPU, ready to run.
#[derive(Debug)]
pub struct TrainedModel {
    pub key: String,
    pub model_config: Value,
    pub dataset_config: Value,
    pub spec: ModelSpec,
    /// What the data pipeline applied to pixels in [0, 1] of each channel before the model
    /// saw them.
    pub normalization: Vec<Normalization>,
    vs: nn::VarStore,
    net: Model,
}

/// One parameter: its PyTorch name, shape and values (row-major).
pub type Parameter = (String, Vec<i64>, Vec<f32>);

/// Named outputs of a forward pass, flattened row-major, with their widths.
pub struct Forward {
    pub logits: Vec<f32>,
    pub core: Vec<f32>,
    pub core_width: i64,
}

impl TrainedModel {
    /// Build the architecture of `model_config` and load `weights` (a safetensors file)
    /// into it; every parameter must be present with its shape.
    pub fn load(
        key: &str,
        model_config: Value,
        dataset_config: Value,
        weights: &Path,
    ) -> Result<TrainedModel, TrainingError> {
        let spec = ModelSpec::from_config(&model_config)?;
        let normalization =
            DatasetSpec::from_config(&dataset_config)?.normalization(spec.in_channels as usize);
        let vs = nn::VarStore::new(Device::Cpu);
        let net = model::build(&vs.root(), &spec);
        load_strict(&vs, weights)?;
        Ok(TrainedModel {
            key: key.to_string(),
            model_config,
            dataset_config,
            spec,
            normalization,
            vs,
            net,
        })
    }

    /// The shape of one input image: `[channels, height, width]`.
    pub fn input_shape(&self) -> [i64; 3] {
        [
            self.spec.in_channels,
            self.spec.input_size,
            self.spec.input_size,
        ]
    }

    /// Run the model on `batch` images laid out `[batch, channels, height, width]`.
    pub fn forward(&self, input: &[f32], batch: i64) -> Result<Forward, TrainingError> {
        let [c, h, w] = self.input_shape();
        if input.len() as i64 != batch * c * h * w {
            return Err(TrainingError::Model(format!(
                "an input of {} values is not {batch} images of [{c}, {h}, {w}]",
                input.len()
            )));
        }
        if batch == 0 {
            return Ok(Forward {
                logits: Vec::new(),
                core: Vec::new(),
                core_width: 0,
            });
        }
        let xs = Tensor::from_slice(input).view([batch, c, h, w]);
        let out = tch::no_grad(|| self.net.forward_t(&xs, false));
        let core_width = out.core.size()[1];
        Ok(Forward {
            logits: to_vec(&out.logits)?,
            core: to_vec(&out.core)?,
            core_width,
        })
    }

    /// Every parameter by its PyTorch name, in name order: shape and values.
    pub fn state_dict(&self) -> Result<Vec<Parameter>, TrainingError> {
        let mut vars = self.vs.variables().into_iter().collect::<Vec<_>>();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        vars.into_iter()
            .map(|(name, t)| Ok((name, t.size(), to_vec(&t)?)))
            .collect()
    }
}

/// Write the weights of a fresh model of `model_config`, initialised under `seed`, to
/// `path` as safetensors.
pub fn init_weights(model_config: &Value, seed: i64, path: &Path) -> Result<(), TrainingError> {
    let spec = ModelSpec::from_config(model_config)?;
    tch::manual_seed(seed);
    let vs = nn::VarStore::new(Device::Cpu);
    let _net = model::build(&vs.root(), &spec);
    vs.save(path)
        .map_err(|e| weights_error(path, &e.to_string()))
}

/// One training batch for [`train_steps`]: images `[N, C, H, W]` row-major and labels.
pub struct StepBatch<'a> {
    pub images: &'a [f32],
    pub shape: [i64; 4],
    pub labels: &'a [i64],
}

/// Load `weights` into the model of `model_config`, take `steps` steps of the optimiser of
/// `trainer_config` on `batch` (cross-entropy, training mode), and save the weights to
/// `out`: what one batch of training does, for comparison with PyTorch.
pub fn train_steps(
    model_config: &Value,
    trainer_config: &Value,
    weights: &Path,
    batch: &StepBatch,
    steps: usize,
    out: &Path,
) -> Result<(), TrainingError> {
    let spec = ModelSpec::from_config(model_config)?;
    let trainer = super::TrainerSpec::from_config(trainer_config)?;
    let [n, c, h, w] = batch.shape;
    if batch.images.len() as i64 != n * c * h * w || batch.labels.len() as i64 != n {
        return Err(TrainingError::Model(format!(
            "{} values and {} labels are not a batch of {:?}",
            batch.images.len(),
            batch.labels.len(),
            batch.shape
        )));
    }
    super::tune_allocator();
    let vs = nn::VarStore::new(Device::Cpu);
    let net = model::build(&vs.root(), &spec);
    load_strict(&vs, weights)?;
    let xs = Tensor::from_slice(batch.images).view(batch.shape);
    let ys = Tensor::from_slice(batch.labels);
    model::set_channels_last(&vs, true);
    let mut opt = super::optim::Optimizer::new(&vs, &trainer);
    for _ in 0..steps {
        let logits = net.forward_t(&xs, true).logits;
        let loss = super::trainer::cross_entropy(&logits, &ys)?;
        opt.backward_step(&loss);
    }
    model::set_channels_last(&vs, false);
    vs.save(out).map_err(|e| weights_error(out, &e.to_string()))
}

fn weights_error(path: &Path, reason: &str) -> TrainingError {
    TrainingError::Weights {
        path: path.display().to_string(),
        reason: reason.lines().next().unwrap_or_default().to_string(),
    }
}

/// Load a safetensors file into `vs` as PyTorch's strict `load_state_dict` does: every
/// variable present with its shape, no tensor left over, floats for float variables (any
/// float width converts), each problem named.
pub fn load_strict(vs: &nn::VarStore, path: &Path) -> Result<(), TrainingError> {
    let bad = |reason: String| weights_error(path, &reason);
    if path.extension().is_none_or(|e| e != "safetensors") {
        return Err(bad("not a `.safetensors` file; save PyTorch weights with \
             `safetensors.torch.save_file(module.state_dict(), path)`"
            .into()));
    }
    if !path.is_file() {
        return Err(bad("no such file".into()));
    }
    let saved = Tensor::read_safetensors(path)
        .map_err(|e| bad(format!("not a readable safetensors file: {e}")))?;
    let mut saved: HashMap<String, Tensor> = saved.into_iter().collect();
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    let missing: Vec<&str> = vars
        .iter()
        .map(|(n, _)| n.as_str())
        .filter(|n| !saved.contains_key(*n))
        .collect();
    if !missing.is_empty() {
        return Err(bad(format!("lacks {}", names(&missing))));
    }
    let mut extra: Vec<&str> = saved
        .keys()
        .map(String::as_str)
        .filter(|n| vars.iter().all(|(v, _)| v != n))
        .collect();
    extra.sort();
    if !extra.is_empty() {
        return Err(bad(format!(
            "holds tensors the model lacks: {}",
            names(&extra)
        )));
    }
    for (name, var) in &vars {
        let t = &saved[name];
        if t.size() != var.size() {
            return Err(bad(format!(
                "`{name}` has shape {:?}, the model {:?}",
                t.size(),
                var.size()
            )));
        }
        if var.is_floating_point() != t.is_floating_point() {
            return Err(bad(format!(
                "`{name}` is {:?}, the model holds {:?}",
                t.kind(),
                var.kind()
            )));
        }
    }
    tch::no_grad(|| {
        for (name, mut var) in vars {
            if let Some(t) = saved.remove(&name) {
                var.copy_(&t.to_kind(var.kind()));
            }
        }
    });
    Ok(())
}

fn names(list: &[&str]) -> String {
    let shown: Vec<String> = list.iter().take(5).map(|n| format!("`{n}`")).collect();
    match list.len() {
        n if n > 5 => format!("{} and {} more", shown.join(", "), n - 5),
        _ => shown.join(", "),
    }
}

fn to_vec(t: &Tensor) -> Result<Vec<f32>, TrainingError> {
    let flat = t.detach().to_kind(Kind::Float).contiguous().view([-1]);
    Ok(Vec::<f32>::try_from(&flat)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn configs() -> (Value, Value) {
        let model = Value::dict([
            ("dataset_cls", Value::Str("FashionMNIST".into())),
            ("cnn_builder", Value::Str("cnn".into())),
            ("num_classes", Value::Int(10)),
            ("input_size", Value::Int(28)),
        ]);
        let dataset = Value::dict([
            ("dataset_cls", Value::Str("FashionMNIST".into())),
            ("input_size", Value::Int(28)),
            ("apply_data_augmentation", Value::Bool(false)),
        ]);
        (model, dataset)
    }

    #[test]
    fn saved_weights_load_and_run_with_checked_shapes() {
        let dir = tempfile::tempdir().unwrap();
        let (model, dataset) = configs();
        let spec = ModelSpec::from_config(&model).unwrap();
        let vs = nn::VarStore::new(Device::Cpu);
        let _net = model::build(&vs.root(), &spec);
        let path = dir.path().join("w.safetensors");
        vs.save(&path).unwrap();

        let trained = TrainedModel::load("k", model.clone(), dataset.clone(), &path).unwrap();
        let out = trained.forward(&vec![0.5; 2 * 28 * 28], 2).unwrap();
        assert_eq!((out.logits.len(), out.core_width), (20, 64 * 7 * 7));
        let names: Vec<_> = trained
            .state_dict()
            .unwrap()
            .into_iter()
            .map(|v| v.0)
            .collect();
        assert_eq!(
            names,
            [
                "core.conv1.bias",
                "core.conv1.weight",
                "core.conv2.bias",
                "core.conv2.weight",
                "readout.bias",
                "readout.weight"
            ]
        );
        let err = trained.forward(&[0.0; 10], 1).err().unwrap().to_string();
        assert!(err.contains("is not 1 images of [1, 28, 28]"), "{err}");

        std::fs::write(&path, b"not a checkpoint").unwrap();
        let err = TrainedModel::load("k", model, dataset, &path)
            .err()
            .unwrap()
            .to_string();
        assert!(err.starts_with("weights `"), "{err}");
    }
}
