//! Bindings of the noise engine for numpy arrays.

use numpy::ndarray::{ArrayD, IxDyn};
use numpy::{
    Element as NpElement, IntoPyArray, PyArray1, PyArrayDyn, PyArrayMethods, PyUntypedArrayMethods,
};
use pyo3::prelude::*;

use super::{to_value, ConfigError};
use crate::data::Normalization;
use crate::noise::{Element, Frame, Layout, Mode, NoiseSpec};

/// What the caller asked for, checked.
struct Request {
    spec: NoiseSpec,
    seed: u64,
    clamp: bool,
    channels_last: bool,
    mean: Option<Vec<f32>>,
    std: Option<Vec<f32>>,
}

fn frame(shape: &[usize], req: &Request, bytes: bool) -> PyResult<Frame> {
    if shape.len() < 2 {
        return Err(ConfigError::new_err(format!(
            "apply_noise: a batch needs a leading sample axis, got shape {shape:?}"
        )));
    }
    let channels = match (shape.len(), req.channels_last) {
        (4, false) => shape[1],
        (4, true) => shape[3],
        _ => 1,
    };
    let norms = match (&req.mean, &req.std, bytes) {
        (None, None, true) => vec![
            Normalization {
                mean: 0.0,
                std: 1.0 / 255.0
            };
            channels
        ],
        (_, _, true) => {
            return Err(ConfigError::new_err(
                "apply_noise: uint8 batches hold raw pixels; `mean` and `norm_std` apply to \
                 normalised float batches only",
            ))
        }
        (mean, std, false) => {
            let per_channel = |v: &Option<Vec<f32>>, default: f32, name: &str| match v {
                None => Ok(vec![default; channels]),
                Some(v) if v.len() == 1 => Ok(vec![v[0]; channels]),
                Some(v) if v.len() == channels => Ok(v.clone()),
                Some(v) => Err(ConfigError::new_err(format!(
                    "apply_noise: `{name}` has {} entries for {channels} channels",
                    v.len()
                ))),
            };
            let means = per_channel(mean, 0.0, "mean")?;
            let stds = per_channel(std, 1.0, "norm_std")?;
            if let Some(bad) = stds.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
                return Err(ConfigError::new_err(format!(
                    "apply_noise: `norm_std` entries must be positive, got `{bad}`"
                )));
            }
            means
                .into_iter()
                .zip(stds)
                .map(|(mean, std)| Normalization { mean, std })
                .collect()
        }
    };
    let layout = if req.channels_last {
        Layout::Nhwc
    } else {
        Layout::Nchw
    };
    let sample_len = shape[1..].iter().product();
    Ok(Frame {
        layout,
        sample_len,
        norms,
        clamp: req.clamp,
    })
}

fn run<'py, T: Element + NpElement>(
    py: Python<'py>,
    array: &Bound<'py, PyArrayDyn<T>>,
    req: &Request,
    bytes: bool,
) -> PyResult<(PyObject, Bound<'py, PyArray1<f32>>)> {
    let shape = array.shape().to_vec();
    let frame = frame(&shape, req, bytes)?;
    let readonly = array.readonly();
    let mut values: Vec<T> = match readonly.as_slice() {
        Ok(contiguous) => contiguous.to_vec(),
        Err(_) => readonly.as_array().iter().copied().collect(),
    };
    let applied = py.allow_threads(|| req.spec.apply(&mut values, &frame, req.seed));
    let noisy = ArrayD::from_shape_vec(IxDyn(&shape), values)
        .map_err(|e| ConfigError::new_err(format!("apply_noise: {e}")))?;
    Ok((
        noisy.into_pyarray(py).into_any().unbind(),
        applied.into_pyarray(py),
    ))
}

/// Add noise to a numpy batch (float32, float64 or uint8); returns `(noisy, applied_std)`.
#[pyfunction]
#[pyo3(signature = (x, spec, mode, seed, clamp, mean=None, norm_std=None, channels_last=false))]
#[allow(clippy::too_many_arguments)]
pub fn apply_noise_array<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    spec: &Bound<'py, PyAny>,
    mode: &str,
    seed: u64,
    clamp: bool,
    mean: Option<Vec<f32>>,
    norm_std: Option<Vec<f32>>,
    channels_last: bool,
) -> PyResult<(PyObject, Bound<'py, PyArray1<f32>>)> {
    let mode = match mode {
        "std" => Mode::Std,
        "snr" => Mode::Snr,
        other => {
            return Err(ConfigError::new_err(format!(
                "apply_noise: mode `{other}` is unknown; valid: `std`, `snr`"
            )))
        }
    };
    let spec = NoiseSpec::from_value(mode, &to_value(spec)?)
        .map_err(|e| ConfigError::new_err(e.to_string()))?;
    let req = Request {
        spec,
        seed,
        clamp,
        channels_last,
        mean,
        std: norm_std,
    };
    if let Ok(a) = x.downcast::<PyArrayDyn<f32>>() {
        run(py, a, &req, false)
    } else if let Ok(a) = x.downcast::<PyArrayDyn<f64>>() {
        run(py, a, &req, false)
    } else if let Ok(a) = x.downcast::<PyArrayDyn<u8>>() {
        run(py, a, &req, true)
    } else {
        let kind = match x.getattr("dtype") {
            Ok(dtype) => dtype.to_string(),
            Err(_) => x.get_type().name()?.to_string(),
        };
        Err(ConfigError::new_err(format!(
            "apply_noise: `{kind}` is not supported; give a float32, float64 or uint8 array"
        )))
    }
}
