//! The artifact store: weights files in a local directory, addressed by `local:` URIs and
//! verified by sha256.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

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

    /// The path of a stored artifact after checking its sha256.
    pub fn fetch(&self, uri: &str, sha256: &str) -> Result<PathBuf, StoreError> {
        let name = uri
            .strip_prefix(SCHEME)
            .ok_or_else(|| StoreError::BadUri(uri.to_string()))?;
        let path = self.root.join(name);
        let actual = sha256_of(&path)?;
        if actual != sha256 {
            return Err(StoreError::Checksum {
                path,
                expected: sha256.into(),
                actual,
            });
        }
        Ok(path)
    }
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
