//! Records the git commit the crate is built from, with `-dirty` for uncommitted changes.

use std::path::Path;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    // A build from an exported tree (no `.git`) is told its commit by whoever exported it.
    println!("cargo:rerun-if-env-changed=BT_GIT_COMMIT");
    if let Ok(commit) = std::env::var("BT_GIT_COMMIT") {
        if !commit.is_empty() {
            println!("cargo:rustc-env=BT_GIT_COMMIT={commit}");
            return;
        }
    }
    let commit = git(&["rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".to_string());
    let dirty =
        git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    let suffix = if dirty { "-dirty" } else { "" };
    println!("cargo:rustc-env=BT_GIT_COMMIT={commit}{suffix}");

    // Re-run when HEAD moves (the branch ref itself changes on commit) or tracked files
    // change, so the recorded commit and dirty flag never go stale.
    if let Some(git_dir) = git(&["rev-parse", "--git-dir"]) {
        let git_dir = Path::new(&git_dir);
        for file in ["HEAD", "index", "packed-refs"] {
            println!("cargo:rerun-if-changed={}", git_dir.join(file).display());
        }
        if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
            println!("cargo:rerun-if-changed={}", git_dir.join(branch).display());
        }
    }
    for path in ["src", "python", "Cargo.toml", "pyproject.toml"] {
        println!("cargo:rerun-if-changed={path}");
    }
}
