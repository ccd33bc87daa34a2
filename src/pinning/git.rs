//! git through git2: resolving revisions, mirroring remotes, exporting commit trees.

use std::path::{Path, PathBuf};
use std::time::Duration;

use git2::{ObjectType, Oid, Repository};
use rayon::prelude::*;

use super::{lock, PinningError};

/// What a revision named: a commit id, or a reference that can move.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RevisionKind {
    Commit,
    Tag,
    Branch,
    /// Any other reference or expression (`HEAD`, `main~2`).
    Reference,
}

impl RevisionKind {
    /// Lowercase name, as recorded.
    pub fn as_str(self) -> &'static str {
        match self {
            RevisionKind::Commit => "commit",
            RevisionKind::Tag => "tag",
            RevisionKind::Branch => "branch",
            RevisionKind::Reference => "reference",
        }
    }

    /// Whether the same revision can name another commit tomorrow.
    pub fn can_move(self) -> bool {
        self != RevisionKind::Commit
    }
}

fn git_error(repo: &Path, err: git2::Error) -> PinningError {
    PinningError::Git {
        repo: repo.to_path_buf(),
        message: err.message().to_string(),
    }
}

/// Resolve `revision` in the repository at `path`: `None` when it names nothing there.
pub fn resolve(path: &Path, revision: &str) -> Result<Option<(Oid, RevisionKind)>, PinningError> {
    let repo = Repository::open(path).map_err(|e| git_error(path, e))?;
    resolve_in(&repo, revision).map_err(|e| git_error(path, e))
}

fn is_full_sha(revision: &str) -> bool {
    revision.len() == 40 && revision.bytes().all(|b| b.is_ascii_hexdigit())
}

fn resolve_in(
    repo: &Repository,
    revision: &str,
) -> Result<Option<(Oid, RevisionKind)>, git2::Error> {
    use git2::ErrorCode::{InvalidSpec, NotFound};

    // 1. A full commit id names itself, if the repository has it.
    if is_full_sha(revision) {
        let oid = Oid::from_str(revision)?;
        return match repo.find_commit(oid) {
            Ok(commit) => Ok(Some((commit.id(), RevisionKind::Commit))),
            Err(e) if e.code() == NotFound => Ok(None),
            Err(e) => Err(e),
        };
    }

    // 2. Tags and branches (local, or a remote's).
    match repo.resolve_reference_from_short_name(revision) {
        Ok(reference) => {
            let kind = if reference.is_tag() {
                RevisionKind::Tag
            } else if reference.is_branch() || reference.is_remote() {
                RevisionKind::Branch
            } else {
                RevisionKind::Reference
            };
            return Ok(Some((reference.peel_to_commit()?.id(), kind)));
        }
        Err(e) if matches!(e.code(), NotFound | InvalidSpec) => {}
        Err(e) => return Err(e),
    }

    // 3. Short commit ids and expressions.
    match repo.revparse_single(revision) {
        Ok(object) if !matches!(object.kind(), Some(ObjectType::Commit | ObjectType::Tag)) => {
            let kind = object.kind().map_or("object", |k| k.str());
            Err(git2::Error::from_str(&format!(
                "`{revision}` names a {kind}, not a commit"
            )))
        }
        Ok(object) => {
            let kind = if revision.bytes().all(|b| b.is_ascii_hexdigit()) {
                RevisionKind::Commit
            } else {
                RevisionKind::Reference
            };
            Ok(Some((object.peel_to_commit()?.id(), kind)))
        }
        Err(e) if matches!(e.code(), NotFound | InvalidSpec) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The commit at HEAD of the working tree at `path` (the repository holding it, when
/// `discover`; else `path` must be the repository itself), and whether the tree differs
/// from it (modified, staged or untracked files that are not ignored).
pub fn working_tree_state(path: &Path, discover: bool) -> Result<(String, bool), PinningError> {
    let repo = if discover {
        Repository::discover(path)
    } else {
        Repository::open(path)
    }
    .map_err(|e| git_error(path, e))?;
    let head = repo
        .head()
        .and_then(|h| h.peel_to_commit())
        .map_err(|e| git_error(path, e))?;
    let mut options = git2::StatusOptions::new();
    options
        .include_untracked(true)
        .include_ignored(false)
        .exclude_submodules(true);
    let dirty = !repo
        .statuses(Some(&mut options))
        .map_err(|e| git_error(path, e))?
        .is_empty();
    Ok((head.id().to_string(), dirty))
}

/// The remote URL a local repository fetches from (`origin`, else its only remote).
pub fn origin_url(path: &Path) -> Option<String> {
    let repo = Repository::open(path).ok()?;
    if let Ok(remote) = repo.find_remote("origin") {
        return remote.url().map(str::to_string);
    }
    let names = repo.remotes().ok()?;
    let only = names.iter().flatten().next()?.to_string();
    let remote = repo.find_remote(&only).ok()?;
    remote.url().map(str::to_string)
}

/// Bring the bare mirror at `mirror` up to date with `url` (every branch and tag),
/// creating it on first use; locked, so concurrent fetches of one mirror queue up.
pub fn fetch_mirror(mirror: &Path, url: &str, timeout: Duration) -> Result<(), PinningError> {
    let _lock = lock::lock(
        &mirror.with_extension("lock"),
        timeout,
        &format!("the mirror of `{url}`"),
    )?;
    let repo = match Repository::open_bare(mirror) {
        Ok(repo) => repo,
        Err(_) => Repository::init_bare(mirror).map_err(|e| git_error(mirror, e))?,
    };
    let mut remote = repo
        .remote_anonymous(url)
        .map_err(|e| git_error(mirror, e))?;
    let refspecs = ["+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"];
    remote
        .fetch(&refspecs, None, None)
        .map_err(|e| PinningError::Fetch {
            url: url.to_string(),
            message: e.message().to_string(),
        })
}

/// One file of a commit's tree.
struct Entry {
    path: PathBuf,
    oid: Oid,
    mode: i32,
}

/// Write the tree of `commit` (from the repository at `repo_path`) into `dest`, which must
/// not exist yet: file contents exactly as committed, the executable bit and symlinks kept.
/// Submodules become empty folders. Returns the number of files written.
pub fn export_tree(repo_path: &Path, commit: Oid, dest: &Path) -> Result<usize, PinningError> {
    let git = |e| git_error(repo_path, e);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PinningError::Io { path, source }
    };

    // 1. List the tree: folders and files, refusing names that would leave `dest`.
    let repo = Repository::open(repo_path).map_err(git)?;
    let tree = repo
        .find_commit(commit)
        .and_then(|c| c.tree())
        .map_err(git)?;
    let mut folders = vec![dest.to_path_buf()];
    let mut files = Vec::new();
    list_tree(&repo, &tree, dest, &mut folders, &mut files).map_err(|e| match e {
        Listing::Git(e) => git(e),
        Listing::Unsafe(name) => PinningError::UnsafePath {
            repo: repo_path.to_path_buf(),
            commit: commit.to_string(),
            name,
        },
    })?;

    // 2. Make the folders, then write the files in parallel (one repository per worker).
    for folder in &folders {
        std::fs::create_dir_all(folder).map_err(io(folder))?;
    }
    files.par_iter().try_for_each_init(
        || Repository::open(repo_path),
        |repo, entry| {
            let repo = repo.as_ref().map_err(|e| PinningError::Git {
                repo: repo_path.to_path_buf(),
                message: e.message().to_string(),
            })?;
            let blob = repo
                .find_blob(entry.oid)
                .map_err(|e| git_error(repo_path, e))?;
            write_entry(entry, blob.content()).map_err(io(&entry.path))
        },
    )?;
    Ok(files.len())
}

enum Listing {
    Git(git2::Error),
    Unsafe(String),
}

/// Whether a tree entry's name is one plain file or folder name: not empty, not `.`, `..`
/// or `.git`, without `/` or NUL.
fn is_safe_name(name: &[u8]) -> bool {
    !name.is_empty()
        && name != b"."
        && name != b".."
        && !name.eq_ignore_ascii_case(b".git")
        && !name.contains(&b'/')
        && !name.contains(&0)
}

fn list_tree(
    repo: &Repository,
    tree: &git2::Tree<'_>,
    folder: &Path,
    folders: &mut Vec<PathBuf>,
    files: &mut Vec<Entry>,
) -> Result<(), Listing> {
    use std::os::unix::ffi::OsStrExt;

    for entry in tree.iter() {
        let name = entry.name_bytes();
        let path = folder.join(std::ffi::OsStr::from_bytes(name));
        if !is_safe_name(name) {
            return Err(Listing::Unsafe(path.display().to_string()));
        }
        match entry.kind() {
            Some(ObjectType::Tree) => {
                folders.push(path.clone());
                let sub = repo.find_tree(entry.id()).map_err(Listing::Git)?;
                list_tree(repo, &sub, &path, folders, files)?;
            }
            Some(ObjectType::Blob) => files.push(Entry {
                path,
                oid: entry.id(),
                mode: entry.filemode(),
            }),
            // A submodule (a commit inside a tree): its own repository, not exported.
            _ => folders.push(path),
        }
    }
    Ok(())
}

fn write_entry(entry: &Entry, content: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;

    if entry.mode == 0o120000 {
        let target = std::str::from_utf8(content)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        return std::os::unix::fs::symlink(target, &entry.path);
    }
    std::fs::write(&entry.path, content)?;
    if entry.mode == 0o100755 {
        std::fs::set_permissions(&entry.path, std::fs::Permissions::from_mode(0o755))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::PermissionsExt;
    use std::process::Command;

    fn git(dir: &Path, args: &[&str]) -> String {
        let out = Command::new("git")
            .args([
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@example.invalid",
                "-C",
            ])
            .arg(dir)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    #[test]
    fn export_keeps_bytes_modes_symlinks_and_odd_names() {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("repo");
        std::fs::create_dir_all(repo.join("bin")).unwrap();
        git(&repo, &["init", "-q"]);
        std::fs::write(repo.join("bin/run"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(repo.join("bin/run"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        std::fs::write(repo.join("data.txt"), b"a\r\nb\0c").unwrap();
        std::os::unix::fs::symlink("data.txt", repo.join("link")).unwrap();
        let odd = std::ffi::OsStr::from_bytes(b"lat\xe9.txt");
        std::fs::write(repo.join(odd), "latin-1 name").unwrap();
        git(&repo, &["add", "-A"]);
        git(&repo, &["commit", "-q", "-m", "one"]);
        let head = Oid::from_str(&git(&repo, &["rev-parse", "HEAD"])).unwrap();

        let dest = dir.path().join("out");
        assert_eq!(export_tree(&repo, head, &dest).unwrap(), 4);
        assert_eq!(std::fs::read(dest.join("data.txt")).unwrap(), b"a\r\nb\0c");
        let mode = std::fs::metadata(dest.join("bin/run"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o111, 0o111);
        assert_eq!(
            std::fs::read_link(dest.join("link")).unwrap(),
            Path::new("data.txt")
        );
        assert_eq!(
            std::fs::read_to_string(dest.join(odd)).unwrap(),
            "latin-1 name"
        );
    }

    #[test]
    fn revisions_resolve_with_their_kind() {
        let dir = tempfile::tempdir().unwrap();
        git(dir.path(), &["init", "-q", "-b", "main"]);
        std::fs::write(dir.path().join("f"), "1").unwrap();
        git(dir.path(), &["add", "-A"]);
        git(dir.path(), &["commit", "-q", "-m", "one"]);
        git(dir.path(), &["tag", "v1"]);
        let head = git(dir.path(), &["rev-parse", "HEAD"]);
        let kind = |rev: &str| {
            resolve(dir.path(), rev)
                .unwrap()
                .map(|(o, k)| (o.to_string(), k))
        };
        assert_eq!(kind(&head), Some((head.clone(), RevisionKind::Commit)));
        assert_eq!(kind(&head[..8]), Some((head.clone(), RevisionKind::Commit)));
        assert_eq!(kind("v1"), Some((head.clone(), RevisionKind::Tag)));
        assert_eq!(kind("main"), Some((head.clone(), RevisionKind::Branch)));
        assert_eq!(kind("nope"), None);
        assert_eq!(kind(&"0".repeat(40)), None);
        let err = resolve(dir.path(), "HEAD^{tree}").unwrap_err().to_string();
        assert!(err.contains("names a tree, not a commit"), "{err}");
    }
}
