//! The Python bindings: conversions and exceptions only.

mod data;
mod model;
mod noise;
mod pinning;

use std::path::PathBuf;

use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyKeyboardInterrupt};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};

use crate::config::Value;
use crate::recipe::{self, RecipeError as CoreRecipeError};
use crate::runner::{self, Plan, RunError, RunOptions, StageReport};

create_exception!(
    _core,
    BiasTransferError,
    PyException,
    "Base of every error the module raises."
);
create_exception!(
    _core,
    RecipeError,
    BiasTransferError,
    "A recipe, plan or `__commits.json` is invalid."
);
create_exception!(
    _core,
    PinningError,
    BiasTransferError,
    "A pinned repository cannot be found, resolved, exported or installed."
);
create_exception!(
    _core,
    ConfigError,
    BiasTransferError,
    "A config value cannot be represented."
);
create_exception!(
    _core,
    DataError,
    BiasTransferError,
    "Data is missing, corrupt or misconfigured."
);
create_exception!(
    _core,
    TrainingError,
    BiasTransferError,
    "A model or trainer config is invalid, or training failed."
);
create_exception!(
    _core,
    StoreError,
    BiasTransferError,
    "The database or artifact store failed."
);

fn run_error(err: RunError) -> PyErr {
    let message = err.to_string();
    run_error_kind(&err, message)
}

/// The exception class of an error (the innermost cause decides), with `message`.
fn run_error_kind(err: &RunError, message: String) -> PyErr {
    match err {
        RunError::Stage { source, .. } => run_error_kind(source, message),
        RunError::Many(all) => match all.first() {
            Some(first) => run_error_kind(first, message),
            None => RecipeError::new_err(message),
        },
        RunError::Plan(_) => RecipeError::new_err(message),
        RunError::Data(_) => DataError::new_err(message),
        RunError::Training(crate::train::TrainingError::Interrupted) => {
            PyKeyboardInterrupt::new_err(message)
        }
        RunError::Training(_) => TrainingError::new_err(message),
        RunError::Store(_) => StoreError::new_err(message),
    }
}

fn recipe_error(err: CoreRecipeError) -> PyErr {
    RecipeError::new_err(err.to_string())
}

/// Convert a Python object (None, bool, int, float, str, list, tuple, dict) to a value.
fn to_value(obj: &Bound<'_, PyAny>) -> PyResult<Value> {
    if obj.is_none() {
        Ok(Value::None)
    } else if let Ok(b) = obj.downcast::<PyBool>() {
        Ok(Value::Bool(b.is_true()))
    } else if obj.is_instance_of::<PyInt>() {
        obj.extract::<i64>()
            .map(Value::Int)
            .map_err(|_| ConfigError::new_err(format!("integer `{obj}` does not fit in 64 bits")))
    } else if let Ok(f) = obj.downcast::<PyFloat>() {
        Ok(Value::Float(f.value()))
    } else if let Ok(s) = obj.downcast::<PyString>() {
        Ok(Value::Str(s.to_str()?.to_string()))
    } else if let Ok(list) = obj.downcast::<PyList>() {
        list.iter()
            .map(|item| to_value(&item))
            .collect::<PyResult<_>>()
            .map(Value::List)
    } else if let Ok(tuple) = obj.downcast::<PyTuple>() {
        tuple
            .iter()
            .map(|item| to_value(&item))
            .collect::<PyResult<_>>()
            .map(Value::List)
    } else if let Ok(dict) = obj.downcast::<PyDict>() {
        dict.iter()
            .map(|(k, v)| Ok((to_value(&k)?, to_value(&v)?)))
            .collect::<PyResult<_>>()
            .map(Value::Dict)
    } else {
        let kind = obj.get_type().name()?.to_string();
        Err(ConfigError::new_err(format!(
            "cannot store a value of type `{kind}` in a config: `{obj}`; use None, bool, int, \
             float, str, list, tuple or dict"
        )))
    }
}

/// The identity hash of a config value (32 hex digits).
#[pyfunction]
fn config_hash(obj: &Bound<'_, PyAny>) -> PyResult<String> {
    Ok(to_value(obj)?.hash())
}

/// nnfabrik's `make_hash` of a config value (md5, 32 hex digits), for looking up old rows.
#[pyfunction]
fn make_hash(obj: &Bound<'_, PyAny>) -> PyResult<String> {
    Ok(crate::config::legacy::make_hash(&to_value(obj)?))
}

/// Decode a canonical encoding back into Python values (dict keys keep their types;
/// sequences come back as lists, tuple keys as tuples).
#[pyfunction]
fn decode(py: Python<'_>, text: &str) -> PyResult<PyObject> {
    let value = Value::decode(text).map_err(|e| ConfigError::new_err(e.to_string()))?;
    to_python(py, &value, false)
}

fn to_python(py: Python<'_>, value: &Value, as_key: bool) -> PyResult<PyObject> {
    Ok(match value {
        Value::None => py.None(),
        Value::Bool(b) => b.into_pyobject(py)?.to_owned().into_any().unbind(),
        Value::Int(i) => i.into_pyobject(py)?.into_any().unbind(),
        Value::Float(f) => f.into_pyobject(py)?.into_any().unbind(),
        Value::Str(s) => s.into_pyobject(py)?.into_any().unbind(),
        Value::List(items) => {
            let items = items
                .iter()
                .map(|v| to_python(py, v, as_key))
                .collect::<PyResult<Vec<_>>>()?;
            if as_key {
                PyTuple::new(py, items)?.into_any().unbind()
            } else {
                PyList::new(py, items)?.into_any().unbind()
            }
        }
        Value::Dict(entries) => {
            let dict = PyDict::new(py);
            for (k, v) in entries {
                dict.set_item(to_python(py, k, true)?, to_python(py, v, false)?)?;
            }
            dict.into_any().unbind()
        }
    })
}

/// The canonical encoding of a config value.
#[pyfunction]
fn canonical(obj: &Bound<'_, PyAny>) -> PyResult<String> {
    Ok(to_value(obj)?.canonical())
}

/// Resolve the pins of `experiment` in a `__commits.json`: `[(repo, revision, source)]`.
#[pyfunction]
fn resolve_commits(path: PathBuf, experiment: &str) -> PyResult<Vec<(String, String, String)>> {
    let pins = recipe::resolve_commits(&path, experiment).map_err(recipe_error)?;
    Ok(pins
        .into_iter()
        .map(|p| (p.repo, p.revision, p.source.as_str().to_string()))
        .collect())
}

fn plan_and_options(
    plan: &Bound<'_, PyAny>,
    work_dir: PathBuf,
    schema: String,
    data_dir: Option<PathBuf>,
    quiet: bool,
    provenance: String,
) -> PyResult<(Plan, RunOptions)> {
    let plan = Plan::from_value(&to_value(plan)?).map_err(run_error)?;
    Ok((
        plan,
        RunOptions {
            work_dir,
            schema,
            data_dir,
            quiet,
            provenance,
            interrupted: python_interrupted,
            lease: runner::lease_from_env().map_err(run_error)?,
            wait: false,
            retry_errors: false,
            smoke: runner::Smoke::from_env().map_err(run_error)?,
        },
    ))
}

/// Run Python's signal handlers (Ctrl-C) from inside a long Rust call.
pub(crate) fn python_interrupted() -> bool {
    Python::with_gil(|py| py.check_signals().is_err())
}

fn reports_json(reports: Vec<StageReport>) -> String {
    serde_json::Value::Array(reports.iter().map(StageReport::to_json).collect()).to_string()
}

/// Describe a plan against the database without writing: a JSON list of stage reports;
/// with `check`, each stage's problems too (its data is read for that).
#[pyfunction]
#[pyo3(signature = (plan, work_dir, schema, data_dir=None, check=true))]
fn describe_plan(
    py: Python<'_>,
    plan: &Bound<'_, PyAny>,
    work_dir: PathBuf,
    schema: String,
    data_dir: Option<PathBuf>,
    check: bool,
) -> PyResult<String> {
    let (plan, options) = plan_and_options(plan, work_dir, schema, data_dir, true, String::new())?;
    let reports = py
        .allow_threads(|| runner::describe(&plan, &options, check))
        .map_err(run_error)?;
    Ok(reports_json(reports))
}

/// Run a plan as one worker, claiming and training stages until none is left to claim: a
/// JSON list of stage reports. `provenance` (JSON) is stored with every model trained;
/// `wait` waits for stages running elsewhere; `retry_errors` queues failed stages again.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
#[pyo3(signature = (plan, work_dir, schema, data_dir=None, quiet=false, provenance=None,
                    wait=false, retry_errors=false))]
fn run_plan(
    py: Python<'_>,
    plan: &Bound<'_, PyAny>,
    work_dir: PathBuf,
    schema: String,
    data_dir: Option<PathBuf>,
    quiet: bool,
    provenance: Option<String>,
    wait: bool,
    retry_errors: bool,
) -> PyResult<String> {
    let provenance = provenance.unwrap_or_else(|| "{}".to_string());
    let (plan, mut options) =
        plan_and_options(plan, work_dir, schema, data_dir, quiet, provenance)?;
    options.wait = wait;
    options.retry_errors = retry_errors;
    let reports = py
        .allow_threads(|| runner::run(&plan, &options))
        .map_err(run_error)?;
    Ok(reports_json(reports))
}

/// Every trained model of a schema as a JSON list (one entry per chain stage, provenance
/// included); an empty list when the schema has no database yet.
#[pyfunction]
fn trained_models(py: Python<'_>, work_dir: PathBuf, schema: &str) -> PyResult<String> {
    let store_err = |e: crate::store::StoreError| StoreError::new_err(e.to_string());
    let rows = py.allow_threads(|| {
        crate::store::validate_schema(schema)?;
        match crate::store::Store::open_existing(&work_dir, schema)? {
            Some(store) => store.trained_models(),
            None => Ok(Vec::new()),
        }
    });
    Ok(serde_json::Value::Array(rows.map_err(store_err)?).to_string())
}

/// Where the database of `schema` is, as `DATABASE_URL` (or `DJ_HOST`) selects it: the
/// SQLite file under `work_dir` by default; a server's address holds no password.
#[pyfunction]
fn database(work_dir: PathBuf, schema: &str) -> PyResult<String> {
    crate::store::describe_database(&work_dir, schema)
        .map_err(|e| StoreError::new_err(e.to_string()))
}

/// Every job of a schema as a JSON list (state, attempts, worker, lease, times in seconds
/// since the epoch, error); an empty list when the schema has no jobs yet, `StoreError`
/// when it does not exist.
#[pyfunction]
fn jobs(py: Python<'_>, work_dir: PathBuf, schema: &str) -> PyResult<String> {
    let rows = py.allow_threads(
        || match crate::store::Store::open_existing(&work_dir, schema)? {
            Some(store) if store.schema_version()? >= 3 => store.jobs(),
            Some(_) => Ok(Vec::new()),
            None => Err(crate::store::missing_schema(&work_dir, schema)),
        },
    );
    let rows = rows.map_err(|e| StoreError::new_err(e.to_string()))?;
    serde_json::to_string(&rows).map_err(|e| StoreError::new_err(e.to_string()))
}

/// The artifacts of a schema that no row refers to, last written at least `min_age`
/// seconds ago, as a JSON list (`uri`, `size`, `age` in seconds); `remove=True` deletes
/// them too.
#[pyfunction]
#[pyo3(signature = (work_dir, schema, min_age=600.0, remove=false))]
fn orphans(
    py: Python<'_>,
    work_dir: PathBuf,
    schema: &str,
    min_age: f64,
    remove: bool,
) -> PyResult<String> {
    let min_age = std::time::Duration::try_from_secs_f64(min_age).map_err(|_| {
        ConfigError::new_err(format!(
            "min_age must be a number of seconds >= 0, not {min_age}"
        ))
    })?;
    let found = py
        .allow_threads(|| runner::orphans(&work_dir, schema, min_age, remove))
        .map_err(run_error)?;
    serde_json::to_string(&found).map_err(|e| StoreError::new_err(e.to_string()))
}

/// Check a schema name; raises `StoreError` when it is not a valid identifier.
#[pyfunction]
fn validate_schema(schema: &str) -> PyResult<()> {
    crate::store::validate_schema(schema).map_err(|e| StoreError::new_err(e.to_string()))
}

fn init_logging() {
    let env = env_logger::Env::default().filter_or("BT_LOG", "info");
    let _ = env_logger::Builder::from_env(env)
        .format_target(false)
        .format_timestamp_secs()
        .try_init();
}

/// The compiled core of bias_transfer_rs.
#[pymodule]
#[pyo3(name = "_core")]
fn core_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    init_logging();
    let py = m.py();
    m.add("__version__", crate::VERSION)?;
    m.add("__git_commit__", crate::GIT_COMMIT)?;
    for (name, exc) in [
        ("BiasTransferError", py.get_type::<BiasTransferError>()),
        ("RecipeError", py.get_type::<RecipeError>()),
        ("PinningError", py.get_type::<PinningError>()),
        ("ConfigError", py.get_type::<ConfigError>()),
        ("DataError", py.get_type::<DataError>()),
        ("TrainingError", py.get_type::<TrainingError>()),
        ("StoreError", py.get_type::<StoreError>()),
    ] {
        m.add(name, exc)?;
    }
    m.add_function(wrap_pyfunction!(config_hash, m)?)?;
    m.add_function(wrap_pyfunction!(canonical, m)?)?;
    m.add_function(wrap_pyfunction!(make_hash, m)?)?;
    m.add_function(wrap_pyfunction!(decode, m)?)?;
    m.add_function(wrap_pyfunction!(resolve_commits, m)?)?;
    m.add_function(wrap_pyfunction!(describe_plan, m)?)?;
    m.add_function(wrap_pyfunction!(run_plan, m)?)?;
    m.add_function(wrap_pyfunction!(validate_schema, m)?)?;
    m.add_function(wrap_pyfunction!(database, m)?)?;
    m.add_function(wrap_pyfunction!(jobs, m)?)?;
    m.add_function(wrap_pyfunction!(orphans, m)?)?;
    m.add_function(wrap_pyfunction!(trained_models, m)?)?;
    m.add_function(wrap_pyfunction!(noise::apply_noise_array, m)?)?;
    pinning::register(m)?;
    data::register(m)?;
    model::register(m)?;
    Ok(())
}
