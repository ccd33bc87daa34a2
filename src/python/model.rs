//! Bindings of a trained model loaded for inference.

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

use numpy::ndarray::{Array2, ArrayD, IxDyn};
use numpy::{
    IntoPyArray, PyArray2, PyArrayDyn, PyReadonlyArray1, PyReadonlyArray4, PyUntypedArrayMethods,
};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::{python_interrupted, run_error, to_python, to_value, TrainingError};
use crate::train::throughput::Measure;
use crate::train::trained::TrainedModel as CoreModel;

/// A trained model on the CPU: `forward` runs it on float32 images.
#[pyclass(module = "bias_transfer_rs._core", name = "TrainedModel", frozen)]
pub struct TrainedModel(Mutex<CoreModel>);

impl TrainedModel {
    /// The model; libtorch tensors may move between threads but not be shared, so calls
    /// from several Python threads take turns.
    fn model(&self) -> MutexGuard<'_, CoreModel> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A batch's logits and core representation.
type Outputs<'py> = (Bound<'py, PyArray2<f32>>, Bound<'py, PyArray2<f32>>);

fn training_error(e: crate::train::TrainingError) -> PyErr {
    TrainingError::new_err(e.to_string())
}

#[pymethods]
impl TrainedModel {
    /// The trained model's key.
    #[getter]
    fn key(&self) -> String {
        self.model().key.clone()
    }

    /// The stored model config.
    #[getter]
    fn model_config(&self, py: Python<'_>) -> PyResult<PyObject> {
        to_python(py, &self.model().model_config, false)
    }

    /// The stored dataset config.
    #[getter]
    fn dataset_config(&self, py: Python<'_>) -> PyResult<PyObject> {
        to_python(py, &self.model().dataset_config, false)
    }

    /// `(means, stds)` per channel, applied to pixels in [0, 1] before the model saw them
    /// in training.
    #[getter]
    fn normalization(&self) -> (Vec<f32>, Vec<f32>) {
        let norms = &self.model().normalization;
        norms.iter().map(|n| (n.mean, n.std)).unzip()
    }

    /// The shape of one input image: `(channels, height, width)`.
    #[getter]
    fn input_shape(&self) -> (i64, i64, i64) {
        let [c, h, w] = self.model().input_shape();
        (c, h, w)
    }

    /// Run the model on a C-contiguous float32 batch `[N, C, H, W]`; returns the logits
    /// `[N, classes]` and the flattened core representation `[N, width]`.
    fn forward<'py>(
        &self,
        py: Python<'py>,
        x: PyReadonlyArray4<'py, f32>,
    ) -> PyResult<Outputs<'py>> {
        let shape = x.shape().to_vec();
        let (c, h, w) = self.input_shape();
        if shape[1..] != [c as usize, h as usize, w as usize] {
            return Err(TrainingError::new_err(format!(
                "input of shape {shape:?} does not fit: the model takes [N, {c}, {h}, {w}]"
            )));
        }
        let values = x.as_slice()?;
        let batch = shape[0];
        let out = py
            .allow_threads(|| {
                let model = self.model();
                model
                    .forward(values, batch as i64)
                    .map(|out| (out, model.spec.num_classes as usize))
            })
            .map_err(training_error)?;
        let (out, classes) = out;
        let width = if batch == 0 {
            0
        } else {
            out.core_width as usize
        };
        let as_array = |rows: usize, cols: usize, v: Vec<f32>| {
            Array2::from_shape_vec((rows, cols), v)
                .map_err(|e| TrainingError::new_err(e.to_string()))
        };
        Ok((
            as_array(batch, classes, out.logits)?.into_pyarray(py),
            as_array(batch, width, out.core)?.into_pyarray(py),
        ))
    }

    /// Every parameter by its PyTorch name, in name order, as float32 arrays.
    fn state_dict<'py>(
        &self,
        py: Python<'py>,
    ) -> PyResult<Vec<(String, Bound<'py, PyArrayDyn<f32>>)>> {
        let params = self.model().state_dict().map_err(training_error)?;
        params
            .into_iter()
            .map(|(name, shape, values)| {
                let shape: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
                let array = ArrayD::from_shape_vec(IxDyn(&shape), values)
                    .map_err(|e| TrainingError::new_err(e.to_string()))?;
                Ok((name, array.into_pyarray(py)))
            })
            .collect()
    }

    fn __repr__(&self) -> String {
        format!("TrainedModel(key={:?})", self.model().key)
    }
}

/// Load a trained model of `schema` by its key (or a unique prefix of it).
#[pyfunction]
fn load_trained(
    py: Python<'_>,
    work_dir: PathBuf,
    schema: &str,
    key: &str,
) -> PyResult<TrainedModel> {
    py.allow_threads(|| crate::runner::load_trained(&work_dir, schema, key))
        .map(|model| TrainedModel(Mutex::new(model)))
        .map_err(run_error)
}

/// Build the model of `model_config` and load `weights` (a safetensors file with every
/// parameter under its PyTorch name); `dataset_config` gives the normalisation.
#[pyfunction]
fn load_weights(
    py: Python<'_>,
    model_config: &Bound<'_, PyAny>,
    dataset_config: &Bound<'_, PyAny>,
    weights: PathBuf,
) -> PyResult<TrainedModel> {
    let (model, dataset) = (to_value(model_config)?, to_value(dataset_config)?);
    py.allow_threads(|| CoreModel::load("", model, dataset, &weights))
        .map(|model| TrainedModel(Mutex::new(model)))
        .map_err(training_error)
}

/// Write the freshly initialised weights of `model_config`'s model, seeded by `seed`, to
/// `path` (safetensors).
#[pyfunction]
fn init_weights(
    py: Python<'_>,
    model_config: &Bound<'_, PyAny>,
    seed: i64,
    path: PathBuf,
) -> PyResult<()> {
    let model = to_value(model_config)?;
    py.allow_threads(|| crate::train::trained::init_weights(&model, seed, &path))
        .map_err(training_error)
}

/// Load `weights` into the model of `model_config`, take `steps` steps of the optimiser of
/// `trainer_config` on one batch (float32 `[N, C, H, W]` images, int64 labels) and save the
/// weights to `out`.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn train_steps(
    py: Python<'_>,
    model_config: &Bound<'_, PyAny>,
    trainer_config: &Bound<'_, PyAny>,
    weights: PathBuf,
    images: PyReadonlyArray4<'_, f32>,
    labels: PyReadonlyArray1<'_, i64>,
    steps: usize,
    out: PathBuf,
) -> PyResult<()> {
    let (model, trainer) = (to_value(model_config)?, to_value(trainer_config)?);
    let shape = images.shape();
    let shape = [shape[0], shape[1], shape[2], shape[3]].map(|d| d as i64);
    let batch = crate::train::trained::StepBatch {
        images: images.as_slice()?,
        shape,
        labels: labels.as_slice()?,
    };
    py.allow_threads(|| {
        crate::train::trained::train_steps(&model, &trainer, &weights, &batch, steps, &out)
    })
    .map_err(training_error)
}

/// Images per second of training the stage of `dataset_config`, `model_config` and
/// `trainer_config` on its data (found from `work_dir` as a run finds it, or in `data_dir`):
/// `steps` timed batches after `warmup` untimed ones, through the trainer's own loop, or
/// with `floor` at the compute floor (forward, backward and step on batches prepared
/// beforehand). Ctrl-C stops it between batches.
#[pyfunction]
#[pyo3(signature = (dataset_config, model_config, trainer_config, work_dir, seed, warmup, steps, floor=false, data_dir=None))]
#[allow(clippy::too_many_arguments)]
fn train_throughput(
    py: Python<'_>,
    dataset_config: &Bound<'_, PyAny>,
    model_config: &Bound<'_, PyAny>,
    trainer_config: &Bound<'_, PyAny>,
    work_dir: PathBuf,
    seed: u64,
    warmup: usize,
    steps: usize,
    floor: bool,
    data_dir: Option<PathBuf>,
) -> PyResult<f64> {
    let dict = |name: &str, obj: &Bound<'_, PyAny>| match obj.downcast::<PyDict>() {
        Ok(_) => to_value(obj),
        Err(_) => Err(PyTypeError::new_err(format!(
            "`{name}` must be a dict, not {}",
            obj.get_type().name()?
        ))),
    };
    let configs = [
        dict("dataset_config", dataset_config)?,
        dict("model_config", model_config)?,
        dict("trainer_config", trainer_config)?,
    ];
    let measure = match floor {
        true => Measure::Floor,
        false => Measure::Pipeline,
    };
    py.allow_threads(|| {
        crate::runner::throughput(
            [&configs[0], &configs[1], &configs[2]],
            (&work_dir, data_dir.as_deref()),
            seed,
            (warmup, steps),
            measure,
            &python_interrupted,
        )
    })
    .map_err(run_error)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(train_throughput, m)?)?;
    m.add_function(wrap_pyfunction!(train_steps, m)?)?;
    m.add_class::<TrainedModel>()?;
    m.add_function(wrap_pyfunction!(load_trained, m)?)?;
    m.add_function(wrap_pyfunction!(load_weights, m)?)?;
    m.add_function(wrap_pyfunction!(init_weights, m)?)?;
    Ok(())
}
