//! Commit pinning: find each pinned repository, resolve its revision to a full commit id,
//! export that commit's tree into a content-addressed cache, and prepare one isolated
//! Python environment per commit set (see [`env`]).

pub mod env;
pub mod git;
pub mod lock;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::recipe::Pin;
pub use git::RevisionKind;

/// Errors finding, resolving, exporting or installing pinned repositories.
#[derive(Debug, thiserror::Error)]
pub enum PinningError {
    #[error("`{path}`: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("git repository `{repo}`: {message}")]
    Git { repo: PathBuf, message: String },
    #[error("commit {commit} of `{repo}` holds the path `{name}`, which would be written outside its checkout; refusing to export it")]
    UnsafePath {
        repo: PathBuf,
        commit: String,
        name: String,
    },
    #[error("fetching `{url}` failed: {message}")]
    Fetch { url: String, message: String },
    #[error("`{path}`: {message}")]
    Mapping { path: PathBuf, message: String },
    #[error("`{file}`, `{key}`: revision `{revision}`: {message}")]
    Pin {
        file: PathBuf,
        key: String,
        revision: String,
        message: String,
    },
    #[error("repo `{repo}` not found: looked in {looked}; put it there, set `BT_SRC_DIR`, or map the name to a path or URL in `__repos.json`")]
    NotFound { repo: String, looked: String },
    #[error("`{file}`, `{key}`: revision `{revision}` names no commit in {places}")]
    Unresolved {
        file: PathBuf,
        key: String,
        revision: String,
        places: String,
    },
    #[error("timed out after {seconds} s waiting for the lock on {what} (`{path}`, held by {holder}); raise `BT_LOCK_TIMEOUT` (seconds) if it is still working")]
    LockTimeout {
        what: String,
        path: PathBuf,
        seconds: f64,
        holder: String,
    },
    #[error("preparing the environment `{env}`: {message}")]
    Environment { env: PathBuf, message: String },
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
    Many(Vec<PinningError>),
}

/// Where pinning keeps its caches and looks for repositories.
#[derive(Clone, Debug)]
pub struct Settings {
    /// `checkouts/`, `mirrors/`, `envs/` and the shared build folder live here.
    pub cache_dir: PathBuf,
    /// Repositories are looked for as `<src_dir>/<name>`.
    pub src_dir: PathBuf,
    /// How long to wait for another process holding a lock.
    pub lock_timeout: Duration,
}

impl Settings {
    /// Settings from `BT_CACHE_DIR` (default `$XDG_CACHE_HOME/bias_transfer_rs`, else
    /// `~/.cache/bias_transfer_rs`), `BT_SRC_DIR` (default: the parent of the recipes
    /// repository) and `BT_LOCK_TIMEOUT` in seconds (default 3600).
    pub fn from_env(recipes_dir: &Path) -> Result<Settings, PinningError> {
        let var = |name| std::env::var_os(name).filter(|v| !v.is_empty());
        let cache_dir = match (var("BT_CACHE_DIR"), var("XDG_CACHE_HOME"), var("HOME")) {
            (Some(dir), _, _) => PathBuf::from(dir),
            (None, Some(xdg), _) => PathBuf::from(xdg).join("bias_transfer_rs"),
            (None, None, Some(home)) => PathBuf::from(home).join(".cache/bias_transfer_rs"),
            (None, None, None) => std::env::temp_dir().join("bias_transfer_rs"),
        };
        let src_dir = match var("BT_SRC_DIR") {
            Some(dir) => PathBuf::from(dir),
            None => recipes_dir.parent().unwrap_or(recipes_dir).to_path_buf(),
        };
        let lock_timeout = match std::env::var("BT_LOCK_TIMEOUT") {
            Ok(text) if !text.is_empty() => text
                .trim()
                .parse::<f64>()
                .ok()
                .and_then(|s| Duration::try_from_secs_f64(s).ok())
                .filter(|d| d.as_secs() <= 366 * 24 * 3600)
                .ok_or_else(|| PinningError::Mapping {
                    path: PathBuf::from("BT_LOCK_TIMEOUT"),
                    message: format!("`{text}` is not a number of seconds up to a year"),
                })?,
            _ => Duration::from_secs(3600),
        };
        Ok(Settings {
            cache_dir: absolute(&cache_dir),
            src_dir: absolute(&src_dir),
            lock_timeout,
        })
    }
}

/// `path` made absolute, and canonical when it exists.
fn absolute(path: &Path) -> PathBuf {
    path.canonicalize()
        .or_else(|_| std::path::absolute(path))
        .unwrap_or_else(|_| path.to_path_buf())
}

/// Where a repository is: a local clone, a remote URL, or both (the clone first).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Source {
    pub path: Option<PathBuf>,
    pub url: Option<String>,
    /// How it was found, for messages and provenance.
    pub found_by: String,
}

/// The name of the optional mapping file, in a recipe folder or the recipes repository.
pub const MAPPING_FILE: &str = "__repos.json";

/// Finds repositories by name: the mapping files first, then `<src_dir>/<name>`.
#[derive(Clone, Debug)]
pub struct Finder {
    src_dir: PathBuf,
    mapping: BTreeMap<String, Source>,
    mapping_files: Vec<PathBuf>,
}

impl Finder {
    /// A finder for a recipe folder: `<recipe>/__repos.json` wins over
    /// `<recipes_dir>/__repos.json`; both are optional.
    pub fn for_recipe(
        recipe_dir: &Path,
        recipes_dir: &Path,
        src_dir: &Path,
    ) -> Result<Finder, PinningError> {
        let mut finder = Finder {
            src_dir: src_dir.to_path_buf(),
            mapping: BTreeMap::new(),
            mapping_files: Vec::new(),
        };
        for file in [
            recipes_dir.join(MAPPING_FILE),
            recipe_dir.join(MAPPING_FILE),
        ] {
            if file.is_file() {
                finder.mapping.extend(read_mapping(&file)?);
                finder.mapping_files.push(file);
            }
        }
        Ok(finder)
    }

    /// Where the repository `name` is.
    pub fn locate(&self, name: &str) -> Result<Source, PinningError> {
        if let Some(source) = self.mapping.get(name) {
            return Ok(source.clone());
        }
        let path = self.src_dir.join(name);
        if path.is_dir() {
            return Ok(Source {
                path: Some(path),
                url: None,
                found_by: "src_dir".to_string(),
            });
        }
        let mut looked = vec![format!("`{}`", path.display())];
        looked.extend(
            self.mapping_files
                .iter()
                .map(|f| format!("the mapping `{}`", f.display())),
        );
        Err(PinningError::NotFound {
            repo: name.to_string(),
            looked: looked.join(", "),
        })
    }
}

fn is_url(text: &str) -> bool {
    text.contains("://") || (text.contains('@') && text.contains(':'))
}

/// Read a mapping file: `{"name": "path or URL"}` or `{"name": {"path": P, "url": U}}`;
/// relative paths are taken from the file's folder.
fn read_mapping(file: &Path) -> Result<BTreeMap<String, Source>, PinningError> {
    let bad = |message: String| PinningError::Mapping {
        path: file.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(file).map_err(|source| PinningError::Io {
        path: file.to_path_buf(),
        source,
    })?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        bad(format!(
            "malformed JSON at line {}, column {}",
            e.line(),
            e.column()
        ))
    })?;
    let object = json
        .as_object()
        .ok_or_else(|| bad("the top level must be an object of name: path or URL".into()))?;
    let folder = file.parent().unwrap_or(Path::new("."));
    let local = |text: &str| absolute(&folder.join(text));
    let found_by = format!("mapping `{}`", file.display());
    object
        .iter()
        .map(|(name, value)| {
            if !crate::recipe::is_repo_name(name) {
                return Err(bad(format!(
                    "`{name}`: a repo name is a folder name (letters, digits, `.`, `_`, `-`)"
                )));
            }
            let source = match value {
                serde_json::Value::String(s) if is_url(s) => Source {
                    url: Some(s.clone()),
                    ..Default::default()
                },
                serde_json::Value::String(s) => Source {
                    path: Some(local(s)),
                    ..Default::default()
                },
                serde_json::Value::Object(fields) => {
                    let field = |key: &str| match fields.get(key) {
                        None => Ok(None),
                        Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
                        Some(other) => Err(bad(format!(
                            "`{name}.{key}` must be a string, got `{other}`"
                        ))),
                    };
                    if let Some(key) = fields.keys().find(|k| *k != "path" && *k != "url") {
                        return Err(bad(format!(
                            "`{name}`: unknown key `{key}`; use `path` and `url`"
                        )));
                    }
                    Source {
                        path: field("path")?.map(|p| local(&p)),
                        url: field("url")?,
                        ..Default::default()
                    }
                }
                other => {
                    return Err(bad(format!(
                        "`{name}` must be a path, a URL or {{\"path\", \"url\"}}, got `{other}`"
                    )))
                }
            };
            if source.path.is_none() && source.url.is_none() {
                return Err(bad(format!("`{name}` gives neither a path nor a URL")));
            }
            Ok((
                name.clone(),
                Source {
                    found_by: found_by.clone(),
                    ..source
                },
            ))
        })
        .collect()
}

/// A pin resolved to a commit.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Resolved {
    pub repo: String,
    /// The revision as `__commits.json` spells it.
    pub revision: String,
    /// The `__commits.json` block it came from (the experiment's name or `default`).
    pub block: String,
    /// The full 40-hex commit id.
    pub commit: String,
    pub kind: RevisionKind,
    /// The repository (clone or mirror) holding the commit.
    pub git_dir: PathBuf,
    /// Where the commit was found, in words: the path or URL and how it was located.
    pub origin: String,
}

/// Resolve every pin; all problems are reported together.
pub fn resolve_all(
    pins: &[Pin],
    experiment: &str,
    commits_file: &Path,
    finder: &Finder,
    settings: &Settings,
) -> Result<Vec<Resolved>, PinningError> {
    let (resolved, errors): (Vec<_>, Vec<_>) = pins
        .iter()
        .map(|pin| resolve_pin(pin, experiment, commits_file, finder, settings))
        .partition(Result::is_ok);
    let mut errors: Vec<PinningError> = errors.into_iter().filter_map(Result::err).collect();
    match errors.len() {
        0 => Ok(resolved.into_iter().filter_map(Result::ok).collect()),
        1 => Err(errors.remove(0)),
        _ => Err(PinningError::Many(errors)),
    }
}

fn resolve_pin(
    pin: &Pin,
    experiment: &str,
    commits_file: &Path,
    finder: &Finder,
    settings: &Settings,
) -> Result<Resolved, PinningError> {
    let block = match pin.source {
        crate::recipe::PinSource::Experiment => experiment.to_string(),
        crate::recipe::PinSource::Default => "default".to_string(),
    };
    let source = finder.locate(&pin.repo)?;
    let found = |git_dir: &Path, place: String, (oid, kind): (git2::Oid, RevisionKind)| Resolved {
        repo: pin.repo.clone(),
        revision: pin.revision.clone(),
        block: block.clone(),
        commit: oid.to_string(),
        kind,
        git_dir: git_dir.to_path_buf(),
        origin: format!("{place} ({})", source.found_by),
    };
    let mut places = Vec::new();

    let key = format!("{block}.{}", pin.repo);
    let in_context = |err: PinningError| PinningError::Pin {
        file: commits_file.to_path_buf(),
        key: key.clone(),
        revision: pin.revision.clone(),
        message: err.to_string(),
    };

    // 1. The local clone, if there is one.
    if let Some(path) = &source.path {
        if !path.is_dir() && source.url.is_none() {
            return Err(in_context(PinningError::NotFound {
                repo: pin.repo.clone(),
                looked: format!(
                    "`{}` ({}), which is not a folder",
                    path.display(),
                    source.found_by
                ),
            }));
        }
        if path.is_dir() {
            if let Some(hit) = git::resolve(path, &pin.revision).map_err(in_context)? {
                return Ok(found(path, format!("`{}`", path.display()), hit));
            }
        }
        places.push(format!("`{}`", path.display()));
    }

    // 2. Its remote, through the mirror cache: reused when it already holds a pinned
    //    commit id, fetched otherwise (a branch or tag may have moved).
    let url = source
        .url
        .clone()
        .or_else(|| source.path.as_deref().and_then(git::origin_url));
    if let Some(url) = url {
        let mirror = mirror_path(settings, &pin.repo, &url);
        let place = format!("`{url}` (mirror `{}`)", mirror.display());
        if mirror.is_dir() && pin.revision.len() == 40 {
            if let Some(hit @ (_, RevisionKind::Commit)) =
                git::resolve(&mirror, &pin.revision).map_err(in_context)?
            {
                return Ok(found(&mirror, place, hit));
            }
        }
        git::fetch_mirror(&mirror, &url, settings.lock_timeout).map_err(|e| {
            in_context(PinningError::Git {
                repo: mirror.clone(),
                message: if places.is_empty() {
                    e.to_string()
                } else {
                    format!("not in {}; {e}", places.join(" or "))
                },
            })
        })?;
        if let Some(hit) = git::resolve(&mirror, &pin.revision).map_err(in_context)? {
            return Ok(found(&mirror, place, hit));
        }
        places.push(format!("its remote `{url}`"));
    }
    Err(PinningError::Unresolved {
        file: commits_file.to_path_buf(),
        key,
        revision: pin.revision.clone(),
        places: if places.is_empty() {
            "any repository".to_string()
        } else {
            places.join(" or ")
        },
    })
}

pub(crate) fn short_digest(text: &str, len: usize) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))[..len].to_string()
}

fn mirror_path(settings: &Settings, repo: &str, url: &str) -> PathBuf {
    settings
        .cache_dir
        .join("mirrors")
        .join(format!("{repo}-{}.git", short_digest(url, 12)))
}

/// The export of a resolved commit: `<cache>/checkouts/<repo>/<commit>`, and whether it was
/// there already. Written to a temporary folder and renamed, under a lock, so parallel
/// workers neither see a partial tree nor export one commit twice.
pub fn checkout(resolved: &Resolved, settings: &Settings) -> Result<(PathBuf, bool), PinningError> {
    let folder = settings.cache_dir.join("checkouts").join(&resolved.repo);
    let dest = folder.join(&resolved.commit);
    if dest.is_dir() {
        return Ok((dest, true));
    }
    let what = format!("the checkout of `{}` at {}", resolved.repo, resolved.commit);
    let _lock = lock::lock(
        &folder.join(format!("{}.lock", resolved.commit)),
        settings.lock_timeout,
        &what,
    )?;
    if dest.is_dir() {
        return Ok((dest, true));
    }
    // Holding the lock, no one else exports this commit: leftovers of killed exports go.
    remove_leftovers(&folder, &format!(".tmp-{}-", resolved.commit));
    let temporary = folder.join(format!(".tmp-{}-{}", resolved.commit, std::process::id()));
    let oid = git2::Oid::from_str(&resolved.commit).map_err(|e| PinningError::Git {
        repo: resolved.git_dir.clone(),
        message: e.message().to_string(),
    })?;
    let written = git::export_tree(&resolved.git_dir, oid, &temporary).and_then(|n| {
        std::fs::rename(&temporary, &dest).map_err(|source| PinningError::Io {
            path: dest.clone(),
            source,
        })?;
        Ok(n)
    });
    match written {
        Ok(n) => {
            log::info!(
                "exported `{}` {} ({n} files) to `{}`",
                resolved.repo,
                resolved.commit,
                dest.display()
            );
            Ok((dest, false))
        }
        Err(err) => {
            let _ = std::fs::remove_dir_all(&temporary);
            Err(err)
        }
    }
}

/// Remove the entries of `folder` whose names start with `prefix` (best effort).
pub(crate) fn remove_leftovers(folder: &Path, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(folder) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(prefix) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// The identity of a commit set: the first 16 hex digits of the sha256 of the sorted
/// `name=commit` lines.
pub fn commit_set_key(resolved: &[Resolved]) -> String {
    let mut lines: Vec<String> = resolved
        .iter()
        .map(|r| format!("{}={}\n", r.repo, r.commit))
        .collect();
    lines.sort();
    short_digest(&lines.concat(), 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_set_key_ignores_order() {
        let pin = |repo: &str, commit: &str| Resolved {
            repo: repo.into(),
            revision: commit.into(),
            block: "default".into(),
            commit: commit.into(),
            kind: RevisionKind::Commit,
            git_dir: PathBuf::new(),
            origin: String::new(),
        };
        let a = [pin("a", "1"), pin("b", "2")];
        let b = [pin("b", "2"), pin("a", "1")];
        assert_eq!(commit_set_key(&a), commit_set_key(&b));
        assert_eq!(commit_set_key(&a), short_digest("a=1\nb=2\n", 16));
        assert_ne!(commit_set_key(&a), commit_set_key(&[pin("a", "1")]));
    }

    #[test]
    fn mapping_paths_are_relative_to_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(MAPPING_FILE);
        std::fs::write(&file, r#"{"x": "..", "y": "file:///srv/y.git", "z": {"path": "z", "url": "https://h/z.git"}}"#).unwrap();
        let map = read_mapping(&file).unwrap();
        assert_eq!(map["x"].path.as_deref(), Some(dir.path().parent().unwrap()));
        assert_eq!(map["y"].url.as_deref(), Some("file:///srv/y.git"));
        assert_eq!(
            map["z"].path.as_deref(),
            Some(dir.path().join("z").as_path())
        );
        std::fs::write(&file, r#"{"x": 3}"#).unwrap();
        let err = read_mapping(&file).unwrap_err().to_string();
        assert!(err.contains("`x` must be a path, a URL"), "{err}");
    }
}
