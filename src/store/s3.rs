//! Artifacts in S3-compatible object storage (MinIO in the lab, AWS S3, any server speaking
//! the protocol), addressed by `s3://<bucket>/<key>` URIs and verified by sha256.
//!
//! Configured as the original `.env` did: `MINIO_ENDPOINT` (a host, `host:port` or URL;
//! without a scheme it is HTTPS), `MINIO_ACCESS_KEY` and `MINIO_SECRET_KEY`, plus
//! `BT_S3_BUCKET` (default `bias-transfer`), `BT_S3_PREFIX` (prepended to every key) and
//! `BT_S3_REGION` (default `us-east-1`). The secret key never appears in a message.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;
use sha2::{Digest, Sha256};

use super::artifacts::{verify, ArtifactRef, Listed};
use super::StoreError;

const SCHEME: &str = "s3://";

/// A bucket (and key prefix) of an S3-compatible server.
pub struct S3Artifacts {
    client: Client,
    rt: tokio::runtime::Runtime,
    endpoint: String,
    bucket: String,
    /// Where keys of this schema start: `<BT_S3_PREFIX>/<schema>/`.
    prefix: String,
    /// Downloads, kept by key and verified before each use.
    cache: PathBuf,
}

/// What the environment says about S3: `None` when `MINIO_ENDPOINT` is unset.
fn setting(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// `MINIO_ENDPOINT` as a URL: a bare host or `host:port` is HTTPS, as the seed's
/// `s3.amazonaws.com` is.
fn endpoint_url(endpoint: &str) -> Result<String, StoreError> {
    let url = match endpoint.contains("://") {
        true => endpoint.to_string(),
        false => format!("https://{endpoint}"),
    };
    match url::Url::parse(&url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {
            Ok(url.trim_end_matches('/').to_string())
        }
        _ => Err(StoreError::Config(format!(
            "`MINIO_ENDPOINT={endpoint}` is not a host, `host:port` or http(s) URL"
        ))),
    }
}

impl S3Artifacts {
    /// The store the environment configures for `schema`, or `None` when `MINIO_ENDPOINT`
    /// is unset. Checks that the bucket exists and the keys are accepted before anything
    /// is written.
    pub fn from_env(schema: &str, cache: &Path) -> Result<Option<S3Artifacts>, StoreError> {
        let Some(endpoint) = setting("MINIO_ENDPOINT") else {
            return Ok(None);
        };
        let url = endpoint_url(&endpoint)?;
        let need = |name: &str| {
            setting(name).ok_or_else(|| {
                StoreError::Config(format!(
                    "`MINIO_ENDPOINT` is set, so artifacts go to S3, but `{name}` is not: set \
                     `MINIO_ACCESS_KEY` and `MINIO_SECRET_KEY`"
                ))
            })
        };
        let credentials = Credentials::new(
            need("MINIO_ACCESS_KEY")?,
            need("MINIO_SECRET_KEY")?,
            None,
            None,
            "MINIO_ACCESS_KEY",
        );
        let bucket = setting("BT_S3_BUCKET").unwrap_or_else(|| "bias-transfer".to_string());
        let prefix = match setting("BT_S3_PREFIX") {
            Some(p) if p.split('/').any(|part| part == "." || part == "..") => {
                return Err(StoreError::Config(format!(
                    "`BT_S3_PREFIX={p}` has a `.` or `..` segment; name plain folders"
                )))
            }
            Some(p) => format!("{}/{schema}/", p.trim_matches('/')),
            None => format!("{schema}/"),
        };
        let timeout = super::backend::connect_timeout();
        let config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .endpoint_url(&url)
            .region(Region::new(
                setting("BT_S3_REGION").unwrap_or_else(|| "us-east-1".to_string()),
            ))
            .credentials_provider(credentials)
            .force_path_style(true)
            .timeout_config(TimeoutConfig::builder().connect_timeout(timeout).build())
            .retry_config(RetryConfig::standard().with_max_attempts(3))
            .build();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(StoreError::Runtime)?;
        let store = S3Artifacts {
            client: Client::from_conf(config),
            rt,
            endpoint: url,
            bucket,
            prefix,
            cache: cache.to_path_buf(),
        };
        store.check()?;
        Ok(Some(store))
    }

    /// Where this store's objects are, for messages: `s3://bucket/prefix on endpoint`.
    pub fn describe(&self) -> String {
        format!(
            "{SCHEME}{}/{} on {}",
            self.bucket, self.prefix, self.endpoint
        )
    }

    /// An S3 failure as a message that names the endpoint, the bucket and the setting to
    /// look at, never a secret.
    fn error<E, R>(&self, doing: &str, e: SdkError<E, R>) -> StoreError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        let (endpoint, bucket) = (&self.endpoint, &self.bucket);
        let reason = match &e {
            SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => format!(
                "cannot reach `{endpoint}` (from `MINIO_ENDPOINT`): {}",
                DisplayErrorContext(&e)
            ),
            SdkError::ServiceError(s) => match s.err().code() {
                Some("NoSuchBucket") | Some("NotFound") if doing.starts_with("check") => {
                    format!(
                        "bucket `{bucket}` does not exist on `{endpoint}`: create it, or name \
                         another with `BT_S3_BUCKET`"
                    )
                }
                Some(
                    "InvalidAccessKeyId" | "SignatureDoesNotMatch" | "AccessDenied" | "Forbidden",
                ) => format!(
                    "`{endpoint}` refused the credentials for bucket `{bucket}` ({}): check \
                     `MINIO_ACCESS_KEY` and `MINIO_SECRET_KEY`",
                    s.err().code().unwrap_or_default()
                ),
                code => format!(
                    "`{endpoint}` answered {}{}",
                    code.unwrap_or("an error"),
                    s.err()
                        .message()
                        .map(|m| format!(": {m}"))
                        .unwrap_or_default()
                ),
            },
            _ => DisplayErrorContext(&e).to_string(),
        };
        StoreError::Config(format!("S3 artifact store, {doing}: {reason}"))
    }

    /// Whether the bucket exists and the credentials are accepted.
    fn check(&self) -> Result<(), StoreError> {
        let head = self.client.head_bucket().bucket(&self.bucket).send();
        match self.rt.block_on(head) {
            Ok(_) => Ok(()),
            // A HEAD answer has no body, so its error has no code: go by the status.
            Err(SdkError::ServiceError(s)) if s.raw().status().as_u16() == 404 => {
                Err(StoreError::Config(format!(
                    "S3 artifact store, checking bucket `{}`: bucket `{}` does not exist on \
                     `{}`: create it, or name another with `BT_S3_BUCKET`",
                    self.bucket, self.bucket, self.endpoint
                )))
            }
            Err(SdkError::ServiceError(s)) if s.raw().status().as_u16() == 403 => {
                Err(StoreError::Config(format!(
                    "S3 artifact store, checking bucket `{}`: `{}` refused the credentials: \
                     check `MINIO_ACCESS_KEY` and `MINIO_SECRET_KEY`",
                    self.bucket, self.endpoint
                )))
            }
            Err(e) => Err(self.error(&format!("checking bucket `{}`", self.bucket), e)),
        }
    }

    /// The bucket and key of one of this store's URIs.
    fn key_of<'u>(&self, uri: &'u str) -> Result<&'u str, StoreError> {
        uri.strip_prefix(SCHEME)
            .and_then(|rest| rest.strip_prefix(self.bucket.as_str()))
            .and_then(|rest| rest.strip_prefix('/'))
            .filter(|key| !key.is_empty() && !key.split('/').any(|p| p == ".." || p == "."))
            .ok_or_else(|| StoreError::BadUri(uri.to_string(), self.describe()))
    }

    /// Upload `src` as `<prefix><stem>-<sha256 prefix>.<extension>`. An object only
    /// appears once complete, so no reader sees half an upload.
    pub fn put(&self, stem: &str, extension: &str, src: &Path) -> Result<ArtifactRef, StoreError> {
        let bytes = std::fs::read(src).map_err(|source| StoreError::Artifact {
            path: src.to_path_buf(),
            source,
        })?;
        let sha256 = hex::encode(Sha256::digest(&bytes));
        let key = format!("{}{stem}-{}.{extension}", self.prefix, &sha256[..16]);
        let size = bytes.len() as u64;
        let upload = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(&key)
            .metadata("sha256", &sha256)
            .body(ByteStream::from(bytes))
            .send();
        self.rt
            .block_on(upload)
            .map_err(|e| self.error(&format!("uploading `{key}`"), e))?;
        Ok(ArtifactRef {
            uri: format!("{SCHEME}{}/{key}", self.bucket),
            sha256,
            size,
        })
    }

    /// A local copy of the object at `uri` after checking its sha256; downloaded once and
    /// kept under the cache folder.
    pub fn fetch(&self, uri: &str, sha256: &str) -> Result<PathBuf, StoreError> {
        let key = self.key_of(uri)?;
        let path = self.cache.join(&self.bucket).join(key);
        if path.is_file() && verify(&path, sha256).is_ok() {
            return Ok(path);
        }
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StoreError::Artifact { path, source }
        };
        let download = async {
            let object = self
                .client
                .get_object()
                .bucket(&self.bucket)
                .key(key)
                .send()
                .await
                .map_err(|e| self.error(&format!("downloading `{uri}`"), e))?;
            let bytes = object.body.collect().await.map_err(|e| {
                StoreError::Config(format!("S3 artifact store, downloading `{uri}`: {e}"))
            })?;
            Ok::<_, StoreError>(bytes.into_bytes())
        };
        let bytes = self.rt.block_on(download)?;
        let folder = path.parent().unwrap_or(&self.cache);
        std::fs::create_dir_all(folder).map_err(io(folder))?;
        let mut tmp = tempfile::NamedTempFile::new_in(folder).map_err(io(folder))?;
        std::io::Write::write_all(&mut tmp, &bytes).map_err(io(tmp.path()))?;
        tmp.persist(&path).map_err(|e| io(&path)(e.error))?;
        verify(&path, sha256).map_err(|e| match e {
            StoreError::Checksum {
                expected, actual, ..
            } => StoreError::Checksum {
                path: PathBuf::from(uri),
                expected,
                actual,
            },
            other => other,
        })?;
        Ok(path)
    }

    /// Remove the object at `uri`; one already gone is no error.
    pub fn remove(&self, uri: &str) -> Result<(), StoreError> {
        let key = self.key_of(uri)?;
        let delete = self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send();
        self.rt
            .block_on(delete)
            .map(|_| ())
            .map_err(|e| self.error(&format!("removing `{uri}`"), e))
    }

    /// Every object of this schema: URI, size and last change.
    pub fn list(&self) -> Result<Vec<Listed>, StoreError> {
        let listing = async {
            let mut pages = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(&self.prefix)
                .into_paginator()
                .send();
            let mut out = Vec::new();
            while let Some(page) = pages.next().await {
                let page = page.map_err(|e| self.error("listing objects", e))?;
                for object in page.contents() {
                    let Some(key) = object.key() else { continue };
                    let modified = object
                        .last_modified()
                        .and_then(|t| SystemTime::try_from(*t).ok())
                        .unwrap_or(SystemTime::UNIX_EPOCH);
                    out.push(Listed {
                        uri: format!("{SCHEME}{}/{key}", self.bucket),
                        size: object.size().unwrap_or(0).max(0) as u64,
                        age: modified.elapsed().unwrap_or(Duration::ZERO),
                    });
                }
            }
            Ok(out)
        };
        self.rt.block_on(listing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_without_a_scheme_are_https() {
        assert_eq!(
            endpoint_url("s3.amazonaws.com").unwrap(),
            "https://s3.amazonaws.com"
        );
        assert_eq!(
            endpoint_url("http://127.0.0.1:9000/").unwrap(),
            "http://127.0.0.1:9000"
        );
        let e = endpoint_url("ftp://x").unwrap_err().to_string();
        assert!(e.contains("`MINIO_ENDPOINT=ftp://x`"), "{e}");
    }
}
