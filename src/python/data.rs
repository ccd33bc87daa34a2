//! Bindings of the dataset readers.

use std::path::PathBuf;

use numpy::ndarray::{Array1, Array4};
use numpy::{IntoPyArray, PyArray1, PyArray4};
use pyo3::prelude::*;

use super::{to_value, DataError};
use crate::data::Split;

/// A split's images `[N, C, H, W]` and labels `[N]`.
type Arrays<'py> = (Bound<'py, PyArray4<u8>>, Bound<'py, PyArray1<i64>>);

fn arrays<'py>(py: Python<'py>, split: &Split) -> PyResult<Arrays<'py>> {
    let i = &split.images;
    let images = Array4::from_shape_vec((i.count, i.channels, i.rows, i.cols), i.pixels.clone())
        .map_err(|e| DataError::new_err(e.to_string()))?;
    let labels = Array1::from_vec(split.labels.to_vec());
    Ok((images.into_pyarray(py), labels.into_pyarray(py)))
}

/// Read the dataset of `dataset_config` as a run would: from its `data_dir`, relative to
/// `base`, or from `data_dir_override`; the training and test splits as arrays.
#[pyfunction]
#[pyo3(signature = (dataset_config, base, data_dir_override=None))]
fn load_dataset<'py>(
    py: Python<'py>,
    dataset_config: &Bound<'py, PyAny>,
    base: PathBuf,
    data_dir_override: Option<PathBuf>,
) -> PyResult<(Arrays<'py>, Arrays<'py>)> {
    let config = to_value(dataset_config)?;
    let raw = py
        .allow_threads(|| crate::data::read(&config, &base, data_dir_override.as_deref()))
        .map_err(|e| DataError::new_err(e.to_string()))?;
    Ok((arrays(py, &raw.train)?, arrays(py, &raw.test)?))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(load_dataset, m)?)?;
    Ok(())
}
