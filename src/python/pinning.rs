//! Bindings of the commit pinning: resolving, exporting and preparing environments.

use std::path::{Path, PathBuf};

use pyo3::prelude::*;

use super::PinningError;
use crate::pinning::{self, env, Finder, Resolved, Settings};
use crate::recipe;

fn pinning_error(err: impl std::fmt::Display) -> PyErr {
    PinningError::new_err(err.to_string())
}

fn settings_and_finder(recipe_dir: &Path, recipes_dir: &Path) -> PyResult<(Settings, Finder)> {
    let settings = Settings::from_env(recipes_dir).map_err(pinning_error)?;
    let finder =
        Finder::for_recipe(recipe_dir, recipes_dir, &settings.src_dir).map_err(pinning_error)?;
    Ok((settings, finder))
}

fn pins_of(commits_file: &Path, experiment: &str) -> PyResult<Vec<recipe::Pin>> {
    recipe::resolve_commits(commits_file, experiment).map_err(super::recipe_error)
}

/// Resolve the pins of `experiment` to full commit ids, fetching into the mirror cache where
/// a commit is not local: a JSON list of `{repo, revision, block, commit, kind, git_dir,
/// origin}`.
#[pyfunction]
fn resolve_pins(
    py: Python<'_>,
    commits_file: PathBuf,
    experiment: &str,
    recipe_dir: PathBuf,
    recipes_dir: PathBuf,
) -> PyResult<String> {
    let pins = pins_of(&commits_file, experiment)?;
    let (settings, finder) = settings_and_finder(&recipe_dir, &recipes_dir)?;
    let resolved = py
        .allow_threads(|| {
            pinning::resolve_all(&pins, experiment, &commits_file, &finder, &settings)
        })
        .map_err(pinning_error)?;
    serde_json::to_string(&resolved).map_err(pinning_error)
}

/// The working trees of the pins of `experiment` as they are (`--dev-mode`): a JSON list of
/// `{repo, revision, block, path, head, dirty, problem}`; a repo that cannot be found or
/// read has `problem` set instead of `head`.
#[pyfunction]
fn working_trees(
    commits_file: PathBuf,
    experiment: &str,
    recipe_dir: PathBuf,
    recipes_dir: PathBuf,
) -> PyResult<String> {
    let pins = pins_of(&commits_file, experiment)?;
    let (_, finder) = settings_and_finder(&recipe_dir, &recipes_dir)?;
    let trees: Vec<serde_json::Value> = pins
        .iter()
        .map(|pin| {
            let block = match pin.source {
                recipe::PinSource::Experiment => experiment,
                recipe::PinSource::Default => "default",
            };
            let mut entry = serde_json::json!({
                "repo": pin.repo, "revision": pin.revision, "block": block,
                "path": null, "head": null, "dirty": null, "problem": null,
            });
            let state = finder.locate(&pin.repo).and_then(|source| {
                let path = source.path.ok_or_else(|| pinning::PinningError::NotFound {
                    repo: pin.repo.clone(),
                    looked: "a local working tree (the mapping gives only a URL)".into(),
                })?;
                entry["path"] = path.display().to_string().into();
                pinning::git::working_tree_state(&path, false)
            });
            match state {
                Ok((head, dirty)) => {
                    entry["head"] = head.into();
                    entry["dirty"] = dirty.into();
                }
                Err(err) => entry["problem"] = err.to_string().into(),
            }
            entry
        })
        .collect();
    Ok(serde_json::Value::Array(trees).to_string())
}

/// The key of a resolved commit set (as `resolve_pins` returns it).
#[pyfunction]
fn commit_set_key(resolved: &str) -> PyResult<String> {
    let resolved: Vec<Resolved> = serde_json::from_str(resolved).map_err(pinning_error)?;
    Ok(pinning::commit_set_key(&resolved))
}

/// Export the resolved commits and prepare their environment for the interpreter
/// `python`, which sees the package folders `base_site` (`identity` describes them, e.g.
/// versions): a JSON object `{key, path, python, cached, seconds, checkouts}`.
#[pyfunction]
#[pyo3(signature = (resolved, python, base_site, recipes_dir, identity="", quiet=false))]
fn prepare_environment(
    py: Python<'_>,
    resolved: &str,
    python: PathBuf,
    base_site: Vec<PathBuf>,
    recipes_dir: PathBuf,
    identity: &str,
    quiet: bool,
) -> PyResult<String> {
    let resolved: Vec<Resolved> = serde_json::from_str(resolved).map_err(pinning_error)?;
    let settings = Settings::from_env(&recipes_dir).map_err(pinning_error)?;
    let environment = py
        .allow_threads(|| env::prepare(&resolved, &python, &base_site, identity, &settings, quiet))
        .map_err(pinning_error)?;
    Ok(serde_json::json!({
        "key": environment.key,
        "path": environment.path,
        "python": environment.python,
        "cached": environment.cached,
        "seconds": environment.seconds,
        "checkouts": environment.checkouts.into_iter().collect::<std::collections::BTreeMap<_, _>>(),
    })
    .to_string())
}

/// Export the tree of `revision` of the repository at `repo` into the new folder `dest`, as
/// the checkout cache does (without its lock): the number of files written.
#[pyfunction]
fn export_commit(py: Python<'_>, repo: PathBuf, revision: &str, dest: PathBuf) -> PyResult<usize> {
    py.allow_threads(|| {
        let (oid, _) =
            pinning::git::resolve(&repo, revision)?.ok_or_else(|| pinning::PinningError::Git {
                repo: repo.clone(),
                message: format!("revision `{revision}` names no commit"),
            })?;
        if dest.exists() {
            return Err(pinning::PinningError::Io {
                path: dest.clone(),
                source: std::io::Error::new(std::io::ErrorKind::AlreadyExists, "exists already"),
            });
        }
        pinning::git::export_tree(&repo, oid, &dest)
    })
    .map_err(pinning_error)
}

/// HEAD and the dirty flag of the git working tree holding `path`; `None` outside git.
#[pyfunction]
fn working_tree_state(path: PathBuf) -> Option<(String, bool)> {
    pinning::git::working_tree_state(&path, true).ok()
}

/// Register the pinning functions.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(resolve_pins, m)?)?;
    m.add_function(wrap_pyfunction!(working_trees, m)?)?;
    m.add_function(wrap_pyfunction!(commit_set_key, m)?)?;
    m.add_function(wrap_pyfunction!(prepare_environment, m)?)?;
    m.add_function(wrap_pyfunction!(working_tree_state, m)?)?;
    m.add_function(wrap_pyfunction!(export_commit, m)?)?;
    Ok(())
}
