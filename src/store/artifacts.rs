//! The artifact store: weights files in a local directory (`local:` URIs) or in
//! S3-compatible object storage (`s3://` URIs), verified by sha256 on every read.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::s3::S3Artifacts;
use super::StoreError;

/// A stored artifact: where it is, its sha256 and its size in bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArtifactRef {
    pub uri: String,
    pub sha256: String,
    pub size: u64,
}

/// A local directory of artifacts.
#[derive(Clone, Debug)]
pub struct LocalArtifacts {
    root: PathBuf,
}

const SCHEME: &str = "local:";

impl LocalArtifacts {
    /// Artifacts under `root`, created on first write.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalArtifacts { root: root.into() }
    }

    /// Copy `src` in as `<stem>-<sha256 prefix>.<extension>`: written to a temporary file,
    /// synced, then renamed, so a crash never leaves a half-written artifact under its final
    /// name and two writers of different content never overwrite each other.
    pub fn put(&self, stem: &str, extension: &str, src: &Path) -> Result<ArtifactRef, StoreError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StoreError::Artifact { path, source }
        };
        std::fs::create_dir_all(&self.root).map_err(io(&self.root))?;
        let bytes = std::fs::read(src).map_err(io(src))?;
        let sha256 = hex::encode(Sha256::digest(&bytes));
        let name = format!("{stem}-{}.{extension}", &sha256[..16]);
        let target = self.root.join(&name);
        let tmp = self
            .root
            .join(format!(".{name}.{}.tmp", std::process::id()));
        let mut file = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        file.write_all(&bytes)
            .and_then(|_| file.sync_all())
            .map_err(io(&tmp))?;
        std::fs::rename(&tmp, &target).map_err(io(&target))?;
        Ok(ArtifactRef {
            uri: format!("{SCHEME}{name}"),
            sha256,
            size: bytes.len() as u64,
        })
    }

    /// Remove a stored artifact; one already gone is no error.
    pub fn remove(&self, uri: &str) -> Result<(), StoreError> {
        let name = uri
            .strip_prefix(SCHEME)
            .ok_or_else(|| StoreError::BadUri(uri.to_string(), self.root.display().to_string()))?;
        let path = self.root.join(name);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(StoreError::Artifact { path, source: e })
            }
            _ => Ok(()),
        }
    }

    /// The path of a stored artifact after checking its sha256.
    pub fn fetch(&self, uri: &str, sha256: &str) -> Result<PathBuf, StoreError> {
        let name = uri
            .strip_prefix(SCHEME)
            .ok_or_else(|| StoreError::BadUri(uri.to_string(), self.root.display().to_string()))?;
        let path = self.root.join(name);
        verify(&path, sha256)?;
        Ok(path)
    }

    /// Every artifact in the folder, and the temporary files of writes that never
    /// finished.
    pub fn list(&self) -> Result<Vec<Listed>, StoreError> {
        let io = |source| StoreError::Artifact {
            path: self.root.clone(),
            source,
        };
        let entries = match std::fs::read_dir(&self.root) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            other => other.map_err(io)?,
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io)?;
            let meta = entry.metadata().map_err(io)?;
            if !meta.is_file() {
                continue;
            }
            out.push(Listed {
                uri: format!("{SCHEME}{}", entry.file_name().to_string_lossy()),
                size: meta.len(),
                age: meta
                    .modified()
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .unwrap_or(Duration::ZERO),
            });
        }
        out.sort_by(|a, b| a.uri.cmp(&b.uri));
        Ok(out)
    }
}

/// An artifact found by listing a store.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Listed {
    pub uri: String,
    pub size: u64,
    /// Time since it was last written.
    #[serde(serialize_with = "as_seconds")]
    pub age: Duration,
}

fn as_seconds<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// The artifact store of a schema: local unless `MINIO_ENDPOINT` names an S3 server.
pub enum Artifacts {
    Local(LocalArtifacts),
    S3(Box<S3Artifacts>),
}

impl Artifacts {
    /// The store of `schema` as the environment configures it: S3 when `MINIO_ENDPOINT` is
    /// set (checked before anything is written), else `<work_dir>/artifacts/<schema>/`.
    /// Downloads from S3 are kept under `<work_dir>/artifacts/.s3/`.
    pub fn open(work_dir: &Path, schema: &str) -> Result<Artifacts, StoreError> {
        let root = work_dir.join("artifacts");
        Ok(match S3Artifacts::from_env(schema, &root.join(".s3"))? {
            Some(s3) => Artifacts::S3(Box::new(s3)),
            None => Artifacts::Local(LocalArtifacts::new(root.join(schema))),
        })
    }

    /// Where the artifacts are, for messages.
    pub fn describe(&self) -> String {
        match self {
            Artifacts::Local(l) => l.root.display().to_string(),
            Artifacts::S3(s) => s.describe(),
        }
    }

    /// Store `src` as `<stem>-<sha256 prefix>.<extension>`.
    pub fn put(&self, stem: &str, extension: &str, src: &Path) -> Result<ArtifactRef, StoreError> {
        match self {
            Artifacts::Local(l) => l.put(stem, extension, src),
            Artifacts::S3(s) => s.put(stem, extension, src),
        }
    }

    /// A local path of the artifact at `uri`, its sha256 checked.
    pub fn fetch(&self, uri: &str, sha256: &str) -> Result<PathBuf, StoreError> {
        match self {
            Artifacts::Local(l) => l.fetch(uri, sha256),
            Artifacts::S3(s) => s.fetch(uri, sha256),
        }
    }

    /// Remove the artifact at `uri`; one already gone is no error.
    pub fn remove(&self, uri: &str) -> Result<(), StoreError> {
        match self {
            Artifacts::Local(l) => l.remove(uri),
            Artifacts::S3(s) => s.remove(uri),
        }
    }

    /// Every artifact of the schema.
    pub fn list(&self) -> Result<Vec<Listed>, StoreError> {
        match self {
            Artifacts::Local(l) => l.list(),
            Artifacts::S3(s) => s.list(),
        }
    }
}

/// Check that the file at `path` has the sha256 `expected`.
pub(crate) fn verify(path: &Path, expected: &str) -> Result<(), StoreError> {
    let actual = sha256_of(path)?;
    if actual != expected {
        return Err(StoreError::Checksum {
            path: path.to_path_buf(),
            expected: expected.into(),
            actual,
        });
    }
    Ok(())
}

fn sha256_of(path: &Path) -> Result<String, StoreError> {
    let err = |source| StoreError::Artifact {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(err)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf).map_err(err)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_then_fetch_verifies_the_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("w.bin");
        std::fs::write(&src, b"abc").unwrap();
        let store = LocalArtifacts::new(dir.path().join("artifacts"));
        let art = store.put("k", "safetensors", &src).unwrap();
        assert_eq!(art.uri, "local:k-ba7816bf8f01cfea.safetensors");
        assert_eq!(
            art.sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(art.size, 3);
        assert!(store.fetch(&art.uri, &art.sha256).is_ok());
        std::fs::write(
            dir.path().join("artifacts/k-ba7816bf8f01cfea.safetensors"),
            b"abd",
        )
        .unwrap();
        let err = store.fetch(&art.uri, &art.sha256).unwrap_err().to_string();
        assert!(err.contains("sha256 mismatch"), "{err}");
    }
}
