//! Recipe folders: `__commits.json` and the pins it gives each experiment.

use std::path::{Path, PathBuf};

/// Errors reading a recipe folder.
#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    #[error("`{path}`: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("`{path}`: malformed JSON at line {line}, column {column}: {message}")]
    Syntax {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("`{path}`: {message}")]
    Shape { path: PathBuf, message: String },
    #[error("`{path}`: repo `{repo}` is pinned neither in block `{experiment}` nor in `default`")]
    Unpinned {
        path: PathBuf,
        repo: String,
        experiment: String,
    },
}

/// Where a pin came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PinSource {
    Experiment,
    Default,
}

impl PinSource {
    /// The name of the `__commits.json` block.
    pub fn as_str(self) -> &'static str {
        match self {
            PinSource::Experiment => "experiment",
            PinSource::Default => "default",
        }
    }
}

/// One repository pinned to one revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pin {
    pub repo: String,
    pub revision: String,
    pub source: PinSource,
}

/// Read `__commits.json` and resolve the pins of `experiment`.
///
/// Per repo the experiment's block comes first, then `default`; a missing key or an empty
/// string falls back to `default`. Repos are listed in the order they first appear. The
/// experiment `default` reads the `default` block alone.
pub fn resolve_commits(path: &Path, experiment: &str) -> Result<Vec<Pin>, RecipeError> {
    let text = std::fs::read_to_string(path).map_err(|source| RecipeError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| RecipeError::Syntax {
        path: path.to_path_buf(),
        line: e.line(),
        column: e.column(),
        message: e
            .to_string()
            .split(" at line ")
            .next()
            .unwrap_or_default()
            .to_string(),
    })?;
    let root = json
        .as_object()
        .ok_or_else(|| shape(path, "the top level must be an object"))?;
    let default = block(path, root, "default")?;
    let own = if experiment == "default" {
        Vec::new()
    } else {
        block(path, root, experiment)?
    };

    let mut repos: Vec<&String> = own.iter().chain(default.iter()).map(|(k, _)| *k).collect();
    let mut seen = std::collections::HashSet::new();
    repos.retain(|r| seen.insert(*r));
    repos
        .into_iter()
        .map(|repo| {
            let pick = |entries: &[(&'_ String, &'_ str)]| -> Option<String> {
                entries
                    .iter()
                    .find(|(k, v)| *k == repo && !v.is_empty())
                    .map(|(_, v)| v.to_string())
            };
            let (revision, source) = match (pick(&own), pick(&default)) {
                (Some(rev), _) => (rev, PinSource::Experiment),
                (None, Some(rev)) => (rev, PinSource::Default),
                (None, None) => {
                    return Err(RecipeError::Unpinned {
                        path: path.to_path_buf(),
                        repo: repo.clone(),
                        experiment: experiment.to_string(),
                    })
                }
            };
            Ok(Pin {
                repo: repo.clone(),
                revision,
                source,
            })
        })
        .collect()
}

fn block<'a>(
    path: &Path,
    root: &'a serde_json::Map<String, serde_json::Value>,
    name: &str,
) -> Result<Vec<(&'a String, &'a str)>, RecipeError> {
    let Some(value) = root.get(name) else {
        return Ok(Vec::new());
    };
    let map = value.as_object().ok_or_else(|| {
        shape(
            path,
            &format!("block `{name}` must be an object of repo: commit"),
        )
    })?;
    map.iter()
        .map(|(repo, rev)| {
            if !is_repo_name(repo) {
                return Err(shape(
                    path,
                    &format!(
                        "`{name}.{repo}`: a repo name is a folder name (letters, digits, \
                         `.`, `_`, `-`; not `.` or `..`)"
                    ),
                ));
            }
            match rev.as_str() {
                Some(s) => Ok((repo, s.trim())),
                None => Err(shape(
                    path,
                    &format!("`{name}.{repo}` must be a string, got `{rev}`"),
                )),
            }
        })
        .collect()
}

/// Whether `name` can name a repository folder (it becomes a path under the caches).
pub fn is_repo_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn shape(path: &Path, message: &str) -> RecipeError {
    RecipeError::Shape {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("__commits.json");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn empty_string_falls_back_to_default() {
        let (_dir, path) =
            write(r#"{"default": {"a": "111", "b": "222"}, "baseline": {"a": "333", "b": ""}}"#);
        let pins = resolve_commits(&path, "baseline").unwrap();
        assert_eq!(
            pins,
            vec![
                Pin {
                    repo: "a".into(),
                    revision: "333".into(),
                    source: PinSource::Experiment
                },
                Pin {
                    repo: "b".into(),
                    revision: "222".into(),
                    source: PinSource::Default
                },
            ]
        );
    }

    #[test]
    fn unpinned_repo_names_repo_and_block() {
        let (_dir, path) = write(r#"{"default": {}, "baseline": {"a": ""}}"#);
        let err = resolve_commits(&path, "baseline").unwrap_err().to_string();
        assert!(
            err.contains("repo `a`") && err.contains("`baseline`"),
            "{err}"
        );
    }

    #[test]
    fn syntax_errors_give_line_and_column() {
        let (_dir, path) = write("{\n  \"default\": {\"a\": \"1\",}\n}");
        let err = resolve_commits(&path, "x").unwrap_err().to_string();
        assert!(err.contains("line 2, column"), "{err}");
    }

    #[test]
    fn repo_names_cannot_leave_their_folder() {
        for bad in ["../x", "a/b", "..", ""] {
            let (_dir, path) = write(&format!(r#"{{"default": {{"{bad}": "1"}}}}"#));
            let err = resolve_commits(&path, "x").unwrap_err().to_string();
            assert!(err.contains("a repo name is a folder name"), "{bad}: {err}");
        }
    }

    #[test]
    fn non_string_revision_is_rejected() {
        let (_dir, path) = write(r#"{"default": {"a": 5}}"#);
        let err = resolve_commits(&path, "x").unwrap_err().to_string();
        assert!(err.contains("`default.a` must be a string"), "{err}");
    }
}
