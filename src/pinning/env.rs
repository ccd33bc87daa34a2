//! One Python environment per commit set: `<cache>/envs/<key>/`, a virtual environment
//! that sees the planning interpreter's packages, with every pinned checkout installed
//! (or, without packaging metadata, put on the path as it is).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{checkout, commit_set_key, lock, PinningError, Resolved, Settings};

/// A prepared environment.
#[derive(Clone, Debug)]
pub struct Environment {
    pub key: String,
    pub path: PathBuf,
    pub python: PathBuf,
    /// Whether it was ready before this call.
    pub cached: bool,
    /// Each repo's checkout folder.
    pub checkouts: Vec<(String, PathBuf)>,
    /// Seconds this call took.
    pub seconds: f64,
}

/// The file whose presence says an environment is complete; written last.
const READY: &str = ".bt-ready";

/// Prepare (or reuse) the environment of `resolved` for the interpreter `python`, whose
/// package folders `base_site` it sees. Nothing is installed into `python` itself.
///
/// The folder is `<commit set key>-<interpreter digest>`: the same commits prepared for
/// another interpreter (or another set of base packages, described by `identity`) get
/// their own environment.
pub fn prepare(
    resolved: &[Resolved],
    python: &Path,
    base_site: &[PathBuf],
    identity: &str,
    settings: &Settings,
    quiet: bool,
) -> Result<Environment, PinningError> {
    let start = Instant::now();
    let key = environment_key(resolved, python, base_site, identity);
    let path = settings.cache_dir.join("envs").join(&key);
    let mut environment = Environment {
        python: path.join("bin").join("python"),
        path: path.clone(),
        key: key.clone(),
        cached: true,
        checkouts: Vec::new(),
        seconds: 0.0,
    };

    // 1. The checkouts (cheap when cached).
    for r in resolved {
        let (folder, _) = checkout(r, settings)?;
        environment.checkouts.push((r.repo.clone(), folder));
    }

    // 2. A ready environment is reused as it is; otherwise (or when its interpreter is
    //    gone) build it under its lock.
    let ready = |env: &Environment| env.path.join(READY).is_file() && env.python.is_file();
    if !ready(&environment) {
        let what = format!("the environment `{key}`");
        let _lock = lock::lock(&path.with_extension("lock"), settings.lock_timeout, &what)?;
        if !ready(&environment) {
            build(&environment, resolved, python, base_site, settings, quiet)?;
            environment.cached = false;
        }
    }
    environment.seconds = start.elapsed().as_secs_f64();
    Ok(environment)
}

/// `<commit set key>-<8 hex digits of the interpreter, its package folders and identity>`.
pub fn environment_key(
    resolved: &[Resolved],
    python: &Path,
    base_site: &[PathBuf],
    identity: &str,
) -> String {
    let mut text = format!("{}\n{identity}\n", python.display());
    for dir in base_site {
        text.push_str(&format!("{}\n", dir.display()));
    }
    format!(
        "{}-{}",
        commit_set_key(resolved),
        super::short_digest(&text, 8)
    )
}

fn env_error(env: &Path, message: impl Into<String>) -> PinningError {
    PinningError::Environment {
        env: env.to_path_buf(),
        message: message.into(),
    }
}

fn build(
    environment: &Environment,
    resolved: &[Resolved],
    python: &Path,
    base_site: &[PathBuf],
    settings: &Settings,
    quiet: bool,
) -> Result<(), PinningError> {
    let path = &environment.path;
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| PinningError::Io { path: p, source }
    };

    // 1. A fresh virtual environment (a partial one left by a crash is replaced).
    if path.exists() {
        std::fs::remove_dir_all(path).map_err(io(path))?;
    }
    log::info!(
        "preparing the environment `{}` for the pinned commits",
        path.display()
    );
    let status = Command::new(python)
        .args(["-m", "venv", "--without-pip"])
        .arg(path)
        .stdout(Stdio::null())
        .status()
        .map_err(|e| env_error(path, format!("running `{} -m venv`: {e}", python.display())))?;
    if !status.success() {
        return Err(env_error(
            path,
            format!("`{} -m venv` failed ({status})", python.display()),
        ));
    }
    let site = site_packages(&environment.python).map_err(|m| env_error(path, m))?;

    // 2. The planning interpreter's packages, after the environment's own.
    let base: String = base_site
        .iter()
        .map(|dir| {
            format!(
                "import site; site.addsitedir({:?})\n",
                dir.display().to_string()
            )
        })
        .collect();
    let base_pth = site.join("bt_99_base.pth");
    std::fs::write(&base_pth, base).map_err(io(&base_pth))?;

    // 3. Each checkout: installed when it has packaging metadata, else put on the path.
    let logs = path.join(".bt-logs");
    std::fs::create_dir_all(&logs).map_err(io(&logs))?;
    let mut on_path = String::new();
    for (r, (_, folder)) in resolved.iter().zip(&environment.checkouts) {
        if is_installable(folder) {
            install(environment, r, folder, &logs, settings, quiet)?;
        } else {
            on_path.push_str(&format!("{}\n", folder.display()));
        }
    }
    let pinned_pth = site.join("bt_00_pinned.pth");
    std::fs::write(&pinned_pth, on_path).map_err(io(&pinned_pth))?;

    // 4. Mark it complete, with what it holds.
    let manifest = serde_json::json!({
        "key": environment.key,
        "base_python": python,
        "commits": resolved.iter().map(|r| (r.repo.clone(), r.commit.clone().into())).collect::<serde_json::Map<_, _>>(),
    });
    let ready = path.join(READY);
    std::fs::write(&ready, format!("{manifest:#}\n")).map_err(io(&ready))
}

/// Whether a checkout is a Python package pip can install: a `setup.py`, or a
/// `pyproject.toml` with a `[project]` or `[build-system]` table (not just tool settings).
pub fn is_installable(folder: &Path) -> bool {
    if folder.join("setup.py").is_file() {
        return true;
    }
    std::fs::read_to_string(folder.join("pyproject.toml")).is_ok_and(|text| {
        text.lines()
            .map(str::trim)
            .any(|l| l == "[project]" || l == "[build-system]")
    })
}

fn site_packages(python: &Path) -> Result<PathBuf, String> {
    let out = Command::new(python)
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['purelib'])",
        ])
        .output()
        .map_err(|e| format!("running `{}`: {e}", python.display()))?;
    if !out.status.success() {
        return Err(format!(
            "`{}` cannot name its site-packages: {}",
            python.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// `pip install` a copy of the checkout (the cached export stays untouched): no
/// dependencies, no index, no build isolation, so what gets installed is the pinned code
/// built with the packages already present. Rust projects share one cargo target folder,
/// so a later commit builds incrementally.
fn install(
    environment: &Environment,
    resolved: &Resolved,
    checkout: &Path,
    logs: &Path,
    settings: &Settings,
    quiet: bool,
) -> Result<(), PinningError> {
    let path = &environment.path;
    let prefix = format!("{}-{}-", resolved.repo, &resolved.commit[..12]);
    super::remove_leftovers(&settings.cache_dir.join("build"), &prefix);
    let build_dir = settings
        .cache_dir
        .join("build")
        .join(format!("{prefix}{}", std::process::id()));
    copy_tree(checkout, &build_dir).map_err(|source| PinningError::Io {
        path: build_dir.clone(),
        source,
    })?;
    let log_path = logs.join(format!("{}.log", resolved.repo));
    let log_file = std::fs::File::create(&log_path).map_err(|source| PinningError::Io {
        path: log_path.clone(),
        source,
    })?;
    let log_err = log_file.try_clone().map_err(|source| PinningError::Io {
        path: log_path.clone(),
        source,
    })?;

    let what = format!("`{}` {}", resolved.repo, &resolved.commit[..12]);
    log::info!(
        "installing {what} into the environment (log: `{}`)",
        log_path.display()
    );
    let mut command = Command::new(&environment.python);
    command
        .args([
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-index",
            "--no-build-isolation",
        ])
        .args([
            "--ignore-installed",
            "--no-warn-script-location",
            "--disable-pip-version-check",
        ])
        .arg(&build_dir)
        .env("CARGO_TARGET_DIR", cargo_target_dir(settings))
        .env("PATH", search_path(&path.join("bin")))
        .env("BT_GIT_COMMIT", &resolved.commit)
        .env("LIBTORCH_USE_PYTORCH", "1")
        .env("PIP_ROOT_USER_ACTION", "ignore")
        .stdin(Stdio::null())
        .stdout(log_file)
        .stderr(log_err);
    let mut child = command
        .spawn()
        .map_err(|e| env_error(path, format!("running pip for {what}: {e}")))?;
    let status = wait_with_progress(&mut child, &what, quiet)
        .map_err(|e| env_error(path, format!("waiting for pip on {what}: {e}")))?;
    let _ = std::fs::remove_dir_all(&build_dir);
    if !status.success() {
        return Err(env_error(
            path,
            format!(
                "installing {what} failed ({status}); the last lines of `{}`:\n{}",
                log_path.display(),
                tail(&log_path, 15)
            ),
        ));
    }
    Ok(())
}

/// Wait for a build, showing a spinner with the elapsed time (a log line a minute when
/// quiet or not on a terminal).
fn wait_with_progress(
    child: &mut std::process::Child,
    what: &str,
    quiet: bool,
) -> std::io::Result<std::process::ExitStatus> {
    let start = Instant::now();
    let bar = if quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new_spinner()
    };
    bar.set_message(format!(
        "building {what} (the first build of a Rust project takes minutes)"
    ));
    bar.enable_steady_tick(Duration::from_millis(200));
    let mut next_log = 60;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if (quiet || bar.is_hidden()) && start.elapsed().as_secs() >= next_log {
            log::info!("still building {what}: {} s", start.elapsed().as_secs());
            next_log += 60;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    bar.finish_and_clear();
    log::info!("built {what} in {:.0} s", start.elapsed().as_secs_f64());
    Ok(status)
}

/// Where Rust projects are built: `BT_CARGO_TARGET_DIR`, else `<cache>/build/cargo-target`.
fn cargo_target_dir(settings: &Settings) -> PathBuf {
    match std::env::var_os("BT_CARGO_TARGET_DIR").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => settings.cache_dir.join("build").join("cargo-target"),
    }
}

/// `PATH` with the environment's `bin/` first, so build tools that run `python3` get the
/// environment's interpreter.
fn search_path(bin: &Path) -> std::ffi::OsString {
    let mut dirs = vec![bin.to_path_buf()];
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    std::env::join_paths(dirs).unwrap_or_default()
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Copy a folder tree, keeping symlinks as symlinks.
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let target = to.join(entry.file_name());
        if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(entry.path())?, &target)?;
        } else if kind.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}
