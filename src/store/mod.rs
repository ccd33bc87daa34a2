//! Storage: configs, seeds and trained models in a database (sqlx), weights in the
//! artifact store.

pub mod artifacts;
pub mod backend;
mod s3;

use std::path::{Path, PathBuf};

use sqlx::Row;

pub use artifacts::{ArtifactRef, Artifacts, Listed, LocalArtifacts};
use backend::Pool;
pub use backend::{Backend, Target};

/// Errors of the database or the artifact store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database `{target}`: {source}")]
    Database { target: String, source: sqlx::Error },
    #[error(
        "schema `{0}` is not a valid name: use at most 63 letters, digits and `_`, starting \
         with a letter or `_` (`--schema` sets it)"
    )]
    BadSchema(String),
    #[error("artifact `{path}`: {source}")]
    Artifact {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "artifact `{0}` is not in the artifact store configured now ({1}); `MINIO_ENDPOINT` \
         and `BT_S3_BUCKET` choose where artifacts are"
    )]
    BadUri(String, String),
    #[error(
        "artifact `{path}`: sha256 mismatch (expected {expected}, found {actual}); the file \
         is corrupt: delete it and its trained_model row to train the stage again"
    )]
    Checksum {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("{0}")]
    Runtime(std::io::Error),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Config(String),
    #[error("cannot connect to the database `{target}`{}: {reason}", from_setting(.setting))]
    Connect {
        target: String,
        setting: &'static str,
        reason: String,
    },
}

fn from_setting(source: &str) -> String {
    match source {
        "" => String::new(),
        s => format!(" (from `{s}`)"),
    }
}

/// Who ran the experiments, from `USER`, `EMAIL`, `AFFILIATION` and `DJ_USER`.
#[derive(Clone, Debug)]
pub struct Fabrikant {
    pub name: String,
    pub email: String,
    pub affiliation: String,
    pub db_user: String,
}

impl Fabrikant {
    /// Read the fabrikant from the environment, as the original `.env` gave it.
    pub fn from_env() -> Fabrikant {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let name = var("USER")
            .or_else(|| var("LOGNAME"))
            .unwrap_or_else(|| "unknown".into());
        Fabrikant {
            email: var("EMAIL").unwrap_or_default(),
            affiliation: var("AFFILIATION").unwrap_or_default(),
            db_user: var("DJ_USER").unwrap_or_else(|| name.clone()),
            name,
        }
    }
}

/// Which config table a row goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigTable {
    Dataset,
    Model,
    Trainer,
}

impl ConfigTable {
    fn name(self) -> &'static str {
        match self {
            ConfigTable::Dataset => "dataset",
            ConfigTable::Model => "model",
            ConfigTable::Trainer => "trainer",
        }
    }
}

/// One row of a config table.
#[derive(Clone, Debug)]
pub struct ConfigRow {
    pub table: ConfigTable,
    pub fn_name: String,
    pub hash: String,
    /// nnfabrik's `make_hash` of the config.
    pub legacy_hash: String,
    pub config: String,
    pub comment: String,
}

/// One stage of a named chain, as registered.
#[derive(Clone, Debug)]
pub struct ChainStageRow {
    pub chain: String,
    pub seed: i64,
    pub stage: i64,
    pub key: String,
}

/// A trained model: one chain stage's result.
#[derive(Clone, Debug)]
pub struct TrainedRow {
    pub key: String,
    pub stage: ConfigKeys,
    pub parent_key: Option<String>,
    pub comment: String,
    pub score: f64,
    pub output: String,
    pub weights: ArtifactRef,
}

/// The config keys and seed of a stage.
#[derive(Clone, Debug)]
pub struct ConfigKeys {
    pub dataset: (String, String),
    pub model: (String, String),
    pub trainer: (String, String),
    pub seed: i64,
}

/// Versioned schema changes, applied in order and recorded in `bt_migrations`; a released
/// migration is never edited, a change is a new entry. The type words in braces are each
/// backend's ([`backend::dialect`]); `"key"` is quoted because MySQL reserves the word.
pub(crate) const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        "CREATE TABLE fabrikant (
        name {id} PRIMARY KEY,
        email {text} NOT NULL,
        affiliation {text} NOT NULL,
        db_user {text} NOT NULL,
        created_at {now}
    );
    CREATE TABLE seed (seed {int} PRIMARY KEY);
    CREATE TABLE dataset (
        fn {id} NOT NULL, hash {id} NOT NULL, config {text} NOT NULL, comment {text} NOT NULL,
        fabrikant {id} NOT NULL REFERENCES fabrikant(name),
        created_at {now}, PRIMARY KEY (fn, hash)
    );
    CREATE TABLE model (
        fn {id} NOT NULL, hash {id} NOT NULL, config {text} NOT NULL, comment {text} NOT NULL,
        fabrikant {id} NOT NULL REFERENCES fabrikant(name),
        created_at {now}, PRIMARY KEY (fn, hash)
    );
    CREATE TABLE trainer (
        fn {id} NOT NULL, hash {id} NOT NULL, config {text} NOT NULL, comment {text} NOT NULL,
        fabrikant {id} NOT NULL REFERENCES fabrikant(name),
        created_at {now}, PRIMARY KEY (fn, hash)
    );
    CREATE TABLE trained_model (
        \"key\" {id} PRIMARY KEY,
        dataset_fn {id} NOT NULL, dataset_hash {id} NOT NULL,
        model_fn {id} NOT NULL, model_hash {id} NOT NULL,
        trainer_fn {id} NOT NULL, trainer_hash {id} NOT NULL,
        seed {int} NOT NULL REFERENCES seed(seed),
        parent_key {id} REFERENCES trained_model(\"key\"),
        comment {text} NOT NULL,
        score {float} NOT NULL,
        output {text} NOT NULL,
        fabrikant {id} NOT NULL REFERENCES fabrikant(name),
        weights_uri {text} NOT NULL, weights_sha256 {text} NOT NULL, weights_size {int} NOT NULL,
        created_at {now},
        FOREIGN KEY (dataset_fn, dataset_hash) REFERENCES dataset(fn, hash),
        FOREIGN KEY (model_fn, model_hash) REFERENCES model(fn, hash),
        FOREIGN KEY (trainer_fn, trainer_hash) REFERENCES trainer(fn, hash)
    );
    CREATE TABLE chain_stage (
        chain {id} NOT NULL, seed {int} NOT NULL, stage {int} NOT NULL, \"key\" {id} NOT NULL,
        PRIMARY KEY (chain, seed, stage)
    );",
    ),
    (
        2,
        "ALTER TABLE dataset ADD COLUMN legacy_hash {text} NOT NULL DEFAULT '';
    ALTER TABLE model ADD COLUMN legacy_hash {text} NOT NULL DEFAULT '';
    ALTER TABLE trainer ADD COLUMN legacy_hash {text} NOT NULL DEFAULT '';
    ALTER TABLE trained_model ADD COLUMN provenance {text} NOT NULL DEFAULT '{}';",
    ),
    (
        3,
        "CREATE TABLE job (
        \"key\" {id} PRIMARY KEY,
        parent_key {id},
        chain {text} NOT NULL, stage {int} NOT NULL, comment {text} NOT NULL,
        state {id} NOT NULL DEFAULT 'pending',
        attempts {int} NOT NULL DEFAULT 0,
        token {int} NOT NULL DEFAULT 0,
        worker_host {text}, worker_pid {int},
        lease_expires {float}, started_at {float}, finished_at {float},
        error_message {text}, error_traceback {text},
        checkpoint_uri {text}, checkpoint_sha256 {text}, checkpoint_epoch {int},
        created_at {now}
    );
    CREATE INDEX job_state ON job (state);",
    ),
];

/// Check a schema name: it becomes a file name here and a schema name on servers.
pub fn validate_schema(schema: &str) -> Result<(), StoreError> {
    let mut chars = schema.chars();
    let ok = matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && schema.len() <= 63;
    if ok {
        Ok(())
    } else {
        Err(StoreError::BadSchema(schema.to_string()))
    }
}

/// The error for a schema that has no database yet, naming where it was looked for.
pub fn missing_schema(work_dir: &Path, schema: &str) -> StoreError {
    match Target::from_env() {
        Ok(target) if target.server.is_some() => StoreError::NotFound(format!(
            "schema `{schema}` does not exist on `{}`",
            target.display
        )),
        Ok(_) => StoreError::NotFound(format!(
            "schema `{schema}` has no database under `{}`",
            work_dir.display()
        )),
        Err(e) => e,
    }
}

/// Where the database of `schema` is: a SQLite file, or a server's schema (no password).
pub fn describe_database(work_dir: &Path, schema: &str) -> Result<String, StoreError> {
    validate_schema(schema)?;
    Ok(Target::from_env()?.describe(work_dir, schema))
}

/// The SQLite file of a schema under the work directory.
pub fn sqlite_path(work_dir: &Path, schema: &str) -> PathBuf {
    work_dir.join("db").join(format!("{schema}.sqlite"))
}

/// A database connection with its own small runtime.
pub struct Store {
    rt: tokio::runtime::Runtime,
    pool: Pool,
    backend: Backend,
    target: String,
}

/// Run `$body` (an async block using `$pool`, the backend's own pool type) on the store's
/// runtime, whichever backend it has; sqlx errors become [`StoreError::Database`].
///
/// A transaction the server aborted to break a deadlock (or SQLite found busy) is tried
/// again, a few times, after a short random pause: workers registering the same plan at
/// once run into each other.
macro_rules! on_pool {
    ($store:expr, $pool:ident => $body:expr) => {{
        let mut attempt = 0;
        loop {
            let result = match &$store.pool {
                Pool::Sqlite($pool) => $store.rt.block_on($body),
                Pool::Postgres($pool) => $store.rt.block_on($body),
                Pool::MySql($pool) => $store.rt.block_on($body),
            };
            match result {
                Err(e) if attempt < 8 && $crate::store::is_transient(&e) => {
                    attempt += 1;
                    let pause = rand::Rng::gen_range(&mut rand::thread_rng(), 10..100 * attempt);
                    std::thread::sleep(std::time::Duration::from_millis(pause));
                }
                other => break other.map_err($store.db_err()),
            }
        }
    }};
}

/// Whether a failed statement may succeed when tried again: a deadlock or serialization
/// failure (PostgreSQL `40P01`, `40001`; MySQL 1213, 1205) or a busy SQLite file.
fn is_transient(e: &sqlx::Error) -> bool {
    let sqlx::Error::Database(db) = e else {
        return false;
    };
    matches!(
        db.code().as_deref(),
        Some("40P01" | "40001" | "1213" | "1205" | "5" | "517" | "6")
    ) || db.message().contains("Deadlock found")
}

/// The column types read here, on the rows of every backend.
trait Columns {
    fn text(&self, column: &str) -> Result<String, sqlx::Error>;
    fn maybe_text(&self, column: &str) -> Result<Option<String>, sqlx::Error>;
    fn int(&self, column: &str) -> Result<i64, sqlx::Error>;
    fn maybe_int(&self, column: &str) -> Result<Option<i64>, sqlx::Error>;
    fn float(&self, column: &str) -> Result<f64, sqlx::Error>;
    fn maybe_float(&self, column: &str) -> Result<Option<f64>, sqlx::Error>;
}

/// `Columns` for a row type whose optional text is read by `$maybe_text(row, column)`.
macro_rules! impl_columns {
    ($row:ty, $maybe_text:expr) => {
        impl Columns for $row {
            fn text(&self, column: &str) -> Result<String, sqlx::Error> {
                self.maybe_text(column)?
                    .ok_or_else(|| decode_error(column, "unexpected NULL".into()))
            }
            fn maybe_text(&self, column: &str) -> Result<Option<String>, sqlx::Error> {
                $maybe_text(self, column)
            }
            fn int(&self, column: &str) -> Result<i64, sqlx::Error> {
                self.try_get(column)
            }
            fn maybe_int(&self, column: &str) -> Result<Option<i64>, sqlx::Error> {
                self.try_get(column)
            }
            fn float(&self, column: &str) -> Result<f64, sqlx::Error> {
                self.try_get(column)
            }
            fn maybe_float(&self, column: &str) -> Result<Option<f64>, sqlx::Error> {
                self.try_get(column)
            }
        }
    };
}

fn decode_error(column: &str, source: Box<dyn std::error::Error + Send + Sync>) -> sqlx::Error {
    sqlx::Error::ColumnDecode {
        index: column.to_string(),
        source,
    }
}

impl_columns!(
    sqlx::sqlite::SqliteRow,
    |r: &sqlx::sqlite::SqliteRow, c: &str| r.try_get(c)
);
impl_columns!(
    sqlx::postgres::PgRow,
    |r: &sqlx::postgres::PgRow, c: &str| r.try_get(c)
);
// MySQL reports text in the case-sensitive `utf8mb4_bin` collation as binary: it is read as
// bytes and checked to be UTF-8.
impl_columns!(
    sqlx::mysql::MySqlRow,
    |r: &sqlx::mysql::MySqlRow, c: &str| {
        let bytes: Option<Vec<u8>> = r.try_get(c)?;
        bytes
            .map(String::from_utf8)
            .transpose()
            .map_err(|e| decode_error(c, Box::new(e)))
    }
);

/// The insert of a trained model row; its values are bound by [`bind_trained!`].
const INSERT_TRAINED: &str = "INSERT INTO trained_model (\"key\", dataset_fn, dataset_hash, \
     model_fn, model_hash, trainer_fn, trainer_hash, seed, parent_key, comment, score, output, \
     fabrikant, weights_uri, weights_sha256, weights_size, provenance) \
     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";

/// Bind the values of [`INSERT_TRAINED`] to `$query`.
macro_rules! bind_trained {
    ($query:expr, $row:expr, $fabrikant:expr, $provenance:expr) => {{
        let (row, k) = ($row, &$row.stage);
        $query
            .bind(&row.key)
            .bind(&k.dataset.0)
            .bind(&k.dataset.1)
            .bind(&k.model.0)
            .bind(&k.model.1)
            .bind(&k.trainer.0)
            .bind(&k.trainer.1)
            .bind(k.seed)
            .bind(&row.parent_key)
            .bind(&row.comment)
            .bind(row.score)
            .bind(&row.output)
            .bind(&$fabrikant.name)
            .bind(&row.weights.uri)
            .bind(&row.weights.sha256)
            .bind(row.weights.size as i64)
            .bind($provenance)
    }};
}

mod jobs;
pub use jobs::{CheckpointRef, Claim, JobRow, JobSpec, Worker};

impl Store {
    /// Open (creating if needed) the database of `schema` on the target the environment
    /// names (SQLite under `work_dir` by default) and bring it up to date.
    pub fn open(work_dir: &Path, schema: &str) -> Result<Store, StoreError> {
        Self::open_at(&Target::from_env()?, work_dir, schema, true)?
            .ok_or_else(|| StoreError::NotFound(format!("schema `{schema}` was not created")))
    }

    /// Open the database of `schema` only if it exists; never creates anything.
    pub fn open_existing(work_dir: &Path, schema: &str) -> Result<Option<Store>, StoreError> {
        Self::open_at(&Target::from_env()?, work_dir, schema, false)
    }

    /// Open (creating if needed) the SQLite file of `schema` under `work_dir`.
    pub fn open_sqlite(work_dir: &Path, schema: &str) -> Result<Store, StoreError> {
        Self::open_at(&Target::sqlite(), work_dir, schema, true)?
            .ok_or_else(|| StoreError::NotFound(format!("schema `{schema}` was not created")))
    }

    /// Open the database of `schema` on `target`: created and migrated when `create`, else
    /// `None` when it does not exist.
    pub fn open_at(
        target: &Target,
        work_dir: &Path,
        schema: &str,
        create: bool,
    ) -> Result<Option<Store>, StoreError> {
        validate_schema(schema)?;
        let described = target.describe(work_dir, schema);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(StoreError::Runtime)?;
        let db = |source| StoreError::Database {
            target: described.clone(),
            source,
        };
        let pool = match &target.server {
            None => {
                let path = sqlite_path(work_dir, schema);
                if !create && !path.is_file() {
                    return Ok(None);
                }
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).map_err(|source| StoreError::Artifact {
                        path: parent.to_path_buf(),
                        source,
                    })?;
                }
                rt.block_on(backend::sqlite(&path, create)).map_err(db)?
            }
            Some(server) => {
                let connect = async {
                    if !create && !backend::server_has_schema(server, schema).await? {
                        return Ok(None);
                    }
                    backend::server(server, schema, create).await.map(Some)
                };
                match rt
                    .block_on(connect)
                    .map_err(|e| connect_error(target, &described, e))?
                {
                    Some(pool) => pool,
                    None => return Ok(None),
                }
            }
        };
        let store = Store {
            rt,
            pool,
            backend: target.backend(),
            target: described,
        };
        if create && store.backend == Backend::Sqlite {
            store.migrate_sqlite()?;
        }
        Ok(Some(store))
    }

    /// The backend this store talks to.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    fn db_err(&self) -> impl Fn(sqlx::Error) -> StoreError + '_ {
        move |source| StoreError::Database {
            target: self.target.clone(),
            source,
        }
    }

    /// A query written with `?` placeholders, in this backend's spelling.
    fn sql(&self, text: &str) -> String {
        backend::placeholders(text, self.backend)
    }

    fn migrate_sqlite(&self) -> Result<(), StoreError> {
        on_pool!(self, pool => async {
            let mut tx = pool.begin().await?;
            backend::migrate!(tx, Backend::Sqlite).await?;
            tx.commit().await
        })
    }

    /// The newest migration applied to this schema.
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        on_pool!(self, pool => async {
            sqlx::query("SELECT COALESCE(MAX(version), 0) FROM bt_migrations")
                .fetch_one(pool)
                .await?
                .try_get::<i64, _>(0)
        })
    }

    /// Insert the fabrikant, seeds, configs and chain stages of a plan in one transaction;
    /// rows already present are kept as they are.
    pub fn register(
        &self,
        fabrikant: &Fabrikant,
        seeds: &[i64],
        configs: &[ConfigRow],
        chains: &[ChainStageRow],
    ) -> Result<(), StoreError> {
        let b = self.backend;
        let fabrikant_sql = self.sql(&backend::insert_or_keep(
            b,
            "fabrikant",
            &["name", "email", "affiliation", "db_user"],
            &["name"],
        ));
        let seed_sql = self.sql(&backend::insert_or_keep(b, "seed", &["seed"], &["seed"]));
        let config_sql = |table: ConfigTable| {
            self.sql(&backend::insert_or_keep(
                b,
                table.name(),
                &[
                    "fn",
                    "hash",
                    "legacy_hash",
                    "config",
                    "comment",
                    "fabrikant",
                ],
                &["fn", "hash"],
            ))
        };
        let config_sql: Vec<String> = configs.iter().map(|row| config_sql(row.table)).collect();
        let chain_sql = self.sql(&backend::insert_or_update(
            b,
            "chain_stage",
            &["chain", "seed", "stage", "\"key\""],
            &["chain", "seed", "stage"],
            &["\"key\""],
        ));
        on_pool!(self, pool => async {
            let mut tx = pool.begin().await?;
            sqlx::query(&fabrikant_sql)
                .bind(&fabrikant.name)
                .bind(&fabrikant.email)
                .bind(&fabrikant.affiliation)
                .bind(&fabrikant.db_user)
                .execute(&mut *tx)
                .await?;
            for seed in seeds {
                sqlx::query(&seed_sql).bind(seed).execute(&mut *tx).await?;
            }
            for (row, sql) in configs.iter().zip(&config_sql) {
                sqlx::query(sql)
                    .bind(&row.fn_name)
                    .bind(&row.hash)
                    .bind(&row.legacy_hash)
                    .bind(&row.config)
                    .bind(&row.comment)
                    .bind(&fabrikant.name)
                    .execute(&mut *tx)
                    .await?;
            }
            for row in chains {
                sqlx::query(&chain_sql)
                    .bind(&row.chain)
                    .bind(row.seed)
                    .bind(row.stage)
                    .bind(&row.key)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await
        })
    }

    /// The stored config of `(fn, hash)` in `table` and its legacy hash, if present.
    pub fn config(
        &self,
        table: ConfigTable,
        fn_name: &str,
        hash: &str,
    ) -> Result<Option<(String, String)>, StoreError> {
        let sql = self.sql(&format!(
            "SELECT config, legacy_hash FROM {} WHERE fn = ? AND hash = ?",
            table.name()
        ));
        on_pool!(self, pool => async {
            let row = sqlx::query(&sql).bind(fn_name).bind(hash).fetch_optional(pool).await?;
            row.map(|r| Ok((r.text("config")?, r.text("legacy_hash")?))).transpose()
        })
    }

    /// The trained model with `key`, if it exists.
    pub fn trained(&self, key: &str) -> Result<Option<TrainedRow>, StoreError> {
        let sql = self.sql("SELECT * FROM trained_model WHERE \"key\" = ?");
        on_pool!(self, pool => async {
            let row = sqlx::query(&sql).bind(key).fetch_optional(pool).await?;
            row.map(|r| trained_from_row(&r)).transpose()
        })
    }

    /// The trained models whose key starts with `prefix` (at most two, enough to tell
    /// whether it is unique), each with its dataset and model configs.
    pub fn find_trained(
        &self,
        prefix: &str,
    ) -> Result<Vec<(TrainedRow, String, String)>, StoreError> {
        if prefix.is_empty() || !prefix.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(StoreError::NotFound(format!(
                "`{prefix}` is not a trained model key: keys are hexadecimal"
            )));
        }
        let sql = self.sql(
            "SELECT t.*, d.config AS dataset_config, m.config AS model_config \
             FROM trained_model t \
             JOIN dataset d ON d.fn = t.dataset_fn AND d.hash = t.dataset_hash \
             JOIN model m ON m.fn = t.model_fn AND m.hash = t.model_hash \
             WHERE t.\"key\" LIKE ? ORDER BY t.\"key\" LIMIT 2",
        );
        let pattern = format!("{}%", prefix.to_ascii_lowercase());
        on_pool!(self, pool => async {
            let rows = sqlx::query(&sql).bind(&pattern).fetch_all(pool).await?;
            rows.iter()
                .map(|r| {
                    Ok((trained_from_row(r)?, r.text("dataset_config")?, r.text("model_config")?))
                })
                .collect::<Result<Vec<_>, sqlx::Error>>()
        })
    }

    /// Insert a trained model row; `false` when a row with its key exists already (another
    /// run finished the same stage first), which is then kept.
    pub fn insert_trained(
        &self,
        row: &TrainedRow,
        fabrikant: &Fabrikant,
        provenance: &str,
    ) -> Result<bool, StoreError> {
        let sql = self.sql(INSERT_TRAINED);
        let inserted = on_pool!(self, pool => async {
            bind_trained!(sqlx::query(&sql), row, fabrikant, provenance)
                .execute(pool)
                .await
                .map(|_| true)
                .or_else(|e| match &e {
                    sqlx::Error::Database(d) if d.is_unique_violation() => Ok(false),
                    _ => Err(e),
                })
        })?;
        Ok(inserted)
    }

    /// Every trained model, one entry per chain stage it belongs to (ordered by chain and
    /// stage), with its provenance parsed: the rows a notebook reads.
    pub fn trained_models(&self) -> Result<Vec<serde_json::Value>, StoreError> {
        let sql = "SELECT c.chain, c.stage, t.\"key\", t.parent_key, t.seed, t.comment, \
             t.score, t.output, t.fabrikant, t.weights_uri, t.weights_sha256, t.weights_size, \
             t.provenance, t.created_at, \
             t.dataset_fn, t.dataset_hash, d.config AS dataset_config, \
             t.model_fn, t.model_hash, m.config AS model_config, \
             t.trainer_fn, t.trainer_hash, r.config AS trainer_config \
             FROM trained_model t LEFT JOIN chain_stage c ON c.\"key\" = t.\"key\" \
             JOIN dataset d ON d.fn = t.dataset_fn AND d.hash = t.dataset_hash \
             JOIN model m ON m.fn = t.model_fn AND m.hash = t.model_hash \
             JOIN trainer r ON r.fn = t.trainer_fn AND r.hash = t.trainer_hash \
             ORDER BY (c.chain IS NULL), c.chain, c.stage, t.seed, t.\"key\"";
        on_pool!(self, pool => async {
            let rows = sqlx::query(sql).fetch_all(pool).await?;
            rows.iter().map(model_json).collect::<Result<Vec<_>, sqlx::Error>>()
        })
    }

    /// The URI of every artifact a row refers to: trained weights, and the checkpoints of
    /// unfinished jobs.
    pub fn referenced_artifacts(&self) -> Result<std::collections::HashSet<String>, StoreError> {
        let jobs = self.schema_version()? >= 3;
        on_pool!(self, pool => async {
            let mut uris = std::collections::HashSet::new();
            for row in sqlx::query("SELECT weights_uri FROM trained_model")
                .fetch_all(pool)
                .await?
            {
                uris.insert(row.text("weights_uri")?);
            }
            if jobs {
                let sql = "SELECT checkpoint_uri FROM job WHERE checkpoint_uri IS NOT NULL";
                for row in sqlx::query(sql).fetch_all(pool).await? {
                    uris.insert(row.text("checkpoint_uri")?);
                }
            }
            Ok(uris)
        })
    }

    /// Row counts of every table, for checks and status.
    pub fn counts(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let tables = [
            "fabrikant",
            "seed",
            "dataset",
            "model",
            "trainer",
            "trained_model",
            "chain_stage",
        ];
        on_pool!(self, pool => async {
            let mut out = Vec::new();
            for table in tables {
                let n: i64 = sqlx::query(&format!("SELECT COUNT(*) FROM {table}"))
                    .fetch_one(pool)
                    .await?
                    .try_get(0)?;
                out.push((table.to_string(), n));
            }
            Ok(out)
        })
    }
}

/// A connection failure as the user should read it: which database, from which setting,
/// and the server's own words, with any password left out.
fn connect_error(target: &Target, described: &str, e: sqlx::Error) -> StoreError {
    let reason = match &e {
        sqlx::Error::PoolTimedOut => "no answer in time (`BT_DB_TIMEOUT` seconds)".to_string(),
        sqlx::Error::Io(io) => format!("cannot reach the server: {io}"),
        other => other.to_string(),
    };
    StoreError::Connect {
        target: described.to_string(),
        setting: target.source,
        reason: target.redact(&reason),
    }
}

fn trained_from_row(r: &impl Columns) -> Result<TrainedRow, sqlx::Error> {
    Ok(TrainedRow {
        key: r.text("key")?,
        stage: ConfigKeys {
            dataset: (r.text("dataset_fn")?, r.text("dataset_hash")?),
            model: (r.text("model_fn")?, r.text("model_hash")?),
            trainer: (r.text("trainer_fn")?, r.text("trainer_hash")?),
            seed: r.int("seed")?,
        },
        parent_key: r.maybe_text("parent_key")?,
        comment: r.text("comment")?,
        score: r.float("score")?,
        output: r.text("output")?,
        weights: ArtifactRef {
            uri: r.text("weights_uri")?,
            sha256: r.text("weights_sha256")?,
            size: r.int("weights_size")? as u64,
        },
    })
}

fn model_json(r: &impl Columns) -> Result<serde_json::Value, sqlx::Error> {
    let parsed = |text: String| {
        serde_json::from_str::<serde_json::Value>(&text).unwrap_or(serde_json::Value::String(text))
    };
    let part = |name: &str| -> Result<serde_json::Value, sqlx::Error> {
        Ok(serde_json::json!([
            r.text(&format!("{name}_fn"))?,
            r.text(&format!("{name}_hash"))?,
            r.text(&format!("{name}_config"))?,
        ]))
    };
    Ok(serde_json::json!({
        "chain": r.maybe_text("chain")?,
        "stage": r.maybe_int("stage")?,
        "key": r.text("key")?,
        "parent_key": r.maybe_text("parent_key")?,
        "seed": r.int("seed")?,
        "comment": r.text("comment")?,
        "score": r.float("score")?,
        "weights_uri": r.text("weights_uri")?,
        "weights_sha256": r.text("weights_sha256")?,
        "weights_size": r.int("weights_size")?,
        "fabrikant": r.text("fabrikant")?,
        "output": parsed(r.text("output")?),
        "provenance": parsed(r.text("provenance")?),
        "created_at": r.text("created_at")?,
        "dataset": part("dataset")?,
        "model": part("model")?,
        "trainer": part("trainer")?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The servers the tests use: the local PostgreSQL and MariaDB, or those named by
    /// `BT_TEST_POSTGRES_URL` and `BT_TEST_MYSQL_URL`.
    pub(crate) fn test_servers() -> Vec<Target> {
        let url = |var: &str, default: &str| std::env::var(var).unwrap_or(default.to_string());
        [
            url(
                "BT_TEST_POSTGRES_URL",
                "postgres://postgres@127.0.0.1:5432/test",
            ),
            url("BT_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306"),
        ]
        .iter()
        .map(|u| Target::from_url(u).unwrap())
        .collect()
    }

    /// Drop `schema` from the server of `target`.
    pub(crate) fn drop_schema(target: &Target, schema: &str) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            use sqlx::{Connection, Executor};
            match &target.server {
                Some(backend::Server::Postgres(o)) => {
                    let mut con = sqlx::PgConnection::connect_with(o).await.unwrap();
                    con.execute(format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE").as_str())
                        .await
                        .unwrap();
                }
                Some(backend::Server::MySql(o)) => {
                    let mut con = sqlx::MySqlConnection::connect_with(o).await.unwrap();
                    con.execute(format!("DROP DATABASE IF EXISTS `{schema}`").as_str())
                        .await
                        .unwrap();
                }
                None => {}
            }
        });
    }

    /// Run `check` on a fresh schema `name` of SQLite, PostgreSQL and MySQL in turn.
    fn on_each_backend(name: &str, check: impl Fn(&Target, &Path, &str)) {
        let dir = tempfile::tempdir().unwrap();
        let schema = format!("bt_unit_{name}_{}", std::process::id());
        check(&Target::sqlite(), dir.path(), &schema);
        for target in test_servers() {
            drop_schema(&target, &schema);
            check(&target, dir.path(), &schema);
            drop_schema(&target, &schema);
        }
    }

    fn open(target: &Target, dir: &Path, schema: &str) -> Store {
        Store::open_at(target, dir, schema, true).unwrap().unwrap()
    }

    fn fabrikant() -> Fabrikant {
        Fabrikant {
            name: "ada".into(),
            email: "a@b.c".into(),
            affiliation: "lab".into(),
            db_user: "ada".into(),
        }
    }

    fn config_rows() -> Vec<ConfigRow> {
        [
            ConfigTable::Dataset,
            ConfigTable::Model,
            ConfigTable::Trainer,
        ]
        .into_iter()
        .map(|table| ConfigRow {
            table,
            fn_name: "f".into(),
            hash: "h".into(),
            legacy_hash: "l".into(),
            config: r#"{"d":{"0.1":1.0}}"#.into(),
            comment: "".into(),
        })
        .collect()
    }

    fn trained_row(key: &str, parent: Option<&str>) -> TrainedRow {
        TrainedRow {
            key: key.into(),
            stage: ConfigKeys {
                dataset: ("f".into(), "h".into()),
                model: ("f".into(), "h".into()),
                trainer: ("f".into(), "h".into()),
                seed: 1,
            },
            parent_key: parent.map(String::from),
            comment: "c".into(),
            score: 87.25,
            output: r#"[[{"dev_acc": 80.5}], {"test_acc": 87.25}]"#.into(),
            weights: ArtifactRef {
                uri: "local:x".into(),
                sha256: "0".into(),
                size: 1 << 40,
            },
        }
    }

    #[test]
    fn schema_names_are_identifiers() {
        assert!(validate_schema("bias_transfer_2026_12_03_fashion_noise").is_ok());
        for bad in ["", "1abc", "a-b", "a;drop", "../x"] {
            assert!(validate_schema(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn register_is_idempotent_and_migrations_run_once() {
        on_each_backend("Register", |target, dir, schema| {
            assert!(Store::open_at(target, dir, schema, false)
                .unwrap()
                .is_none());
            let chains = [ChainStageRow {
                chain: "Clean -> Transfer".into(),
                seed: 42,
                stage: 0,
                key: "k0".into(),
            }];
            for _ in 0..2 {
                let store = open(target, dir, schema);
                assert_eq!(store.schema_version().unwrap(), MIGRATIONS.len() as i64);
                store
                    .register(&fabrikant(), &[42, 7], &config_rows(), &chains)
                    .unwrap();
                let counts: std::collections::HashMap<_, _> =
                    store.counts().unwrap().into_iter().collect();
                let got = (counts["fabrikant"], counts["seed"], counts["dataset"]);
                assert_eq!(got, (1, 2, 1), "{target:?}");
                assert_eq!(counts["chain_stage"], 1);
            }
            let store = Store::open_at(target, dir, schema, false).unwrap().unwrap();
            let config = store.config(ConfigTable::Trainer, "f", "h").unwrap();
            assert_eq!(config, Some((r#"{"d":{"0.1":1.0}}"#.into(), "l".into())));
            assert!(Store::open_at(target, dir, "bt_unit_absent", false)
                .unwrap()
                .is_none());
        });
        assert!(!sqlite_path(Path::new("/nonexistent"), "other").exists());
    }

    #[test]
    fn trained_rows_round_trip_and_keep_the_first_writer() {
        on_each_backend("trained", |target, dir, schema| {
            let store = open(target, dir, schema);
            let chains = [("k0", 0), ("k1", 1)].map(|(key, stage)| ChainStageRow {
                chain: "A -> B".into(),
                seed: 1,
                stage,
                key: key.into(),
            });
            store
                .register(&fabrikant(), &[1], &config_rows(), &chains)
                .unwrap();
            let fab = fabrikant();
            assert!(store
                .insert_trained(&trained_row("k0", None), &fab, "{}")
                .unwrap());
            assert!(!store
                .insert_trained(&trained_row("k0", None), &fab, "{}")
                .unwrap());
            let provenance = r#"{"mode": "dev"}"#;
            assert!(store
                .insert_trained(&trained_row("k1", Some("k0")), &fab, provenance)
                .unwrap());

            let row = store.trained("k1").unwrap().unwrap();
            assert_eq!(row.parent_key.as_deref(), Some("k0"));
            assert_eq!((row.score, row.weights.size), (87.25, 1 << 40));
            let models = store.trained_models().unwrap();
            let keys: Vec<_> = models.iter().map(|m| m["key"].as_str().unwrap()).collect();
            assert_eq!(keys, ["k0", "k1"], "{target:?}");
            assert_eq!(models[1]["stage"], 1);
            assert_eq!(models[1]["provenance"]["mode"], "dev");
            assert_eq!(models[1]["output"][1]["test_acc"], 87.25);
            assert_eq!(models[1]["trainer"][2], r#"{"d":{"0.1":1.0}}"#);
            let created = models[0]["created_at"].as_str().unwrap();
            assert_eq!(created.len(), 19, "{created}");
        });
    }

    #[test]
    fn claims_follow_parents_and_a_taken_over_claim_cannot_write() {
        use std::time::Duration;
        on_each_backend("jobs", |target, dir, schema| {
            let store = open(target, dir, schema);
            store
                .register(&fabrikant(), &[1], &config_rows(), &[])
                .unwrap();
            let job = |key: &str, parent: Option<&str>, stage| JobSpec {
                key: key.into(),
                parent_key: parent.map(Into::into),
                chain: "A -> B".into(),
                stage,
                comment: String::new(),
            };
            store
                .ensure_jobs(&[job("k0", None, 0), job("k1", Some("k0"), 1)])
                .unwrap();
            let keys = ["k0".to_string(), "k1".to_string()];
            let (ada, bob) = (
                Worker {
                    host: "a".into(),
                    pid: 1,
                },
                Worker {
                    host: "b".into(),
                    pid: 2,
                },
            );
            let short = Duration::from_millis(1000);

            // 1. Only the first stage is claimable; once claimed, nothing is.
            let first = store.claim(&keys, &ada, short).unwrap().unwrap();
            assert_eq!(
                (first.key.as_str(), first.token, first.attempts),
                ("k0", 1, 1)
            );
            assert_eq!(store.claim(&keys, &bob, short).unwrap(), None);

            // 2. A heartbeat keeps the lease past its first expiry.
            std::thread::sleep(Duration::from_millis(600));
            assert!(store.heartbeat(&first, short).unwrap());
            std::thread::sleep(Duration::from_millis(600));
            assert_eq!(store.claim(&keys, &bob, short).unwrap(), None);

            // 3. Expired, it is taken over: the first claim can no longer heartbeat,
            //    checkpoint, fail or store.
            std::thread::sleep(Duration::from_millis(1000));
            let taken = store.claim(&keys, &bob, short).unwrap().unwrap();
            assert_eq!(
                (taken.key.as_str(), taken.token, taken.attempts),
                ("k0", 2, 2)
            );
            let checkpoint = CheckpointRef {
                uri: "local:c".into(),
                sha256: "0".into(),
                epoch: 1,
            };
            assert!(!store.heartbeat(&first, short).unwrap());
            assert_eq!(store.set_checkpoint(&first, &checkpoint).unwrap(), None);
            store.fail(&first, "stale", "", false).unwrap();
            let fab = fabrikant();
            assert!(!store
                .complete(&first, &trained_row("k0", None), &fab, "{}")
                .unwrap());
            assert!(store.trained("k0").unwrap().is_none());

            // 4. The current claim checkpoints and stores; the child becomes claimable and
            //    sees no checkpoint of its own.
            assert_eq!(
                store.set_checkpoint(&taken, &checkpoint).unwrap(),
                Some(None)
            );
            assert!(store
                .complete(&taken, &trained_row("k0", None), &fab, "{}")
                .unwrap());
            let jobs = store.jobs().unwrap();
            assert_eq!(jobs[0].state, "done");
            assert_eq!(jobs[0].worker_host.as_deref(), Some("b"));
            let child = store.claim(&keys, &ada, short).unwrap().unwrap();
            assert_eq!((child.key.as_str(), child.checkpoint.clone()), ("k1", None));

            // 5. A failure is kept until it is retried.
            store.fail(&child, "boom", "trace", false).unwrap();
            assert_eq!(store.claim(&keys, &bob, short).unwrap(), None);
            let failed = &store.jobs().unwrap()[1];
            assert_eq!(
                (failed.state.as_str(), failed.error_message.as_deref()),
                ("error", Some("boom"))
            );
            assert_eq!(store.retry_errors(&keys).unwrap(), 1);
            let again = store.claim(&keys, &bob, short).unwrap().unwrap();
            assert_eq!((again.key.as_str(), again.attempts), ("k1", 2));
        });
    }

    #[test]
    fn a_schema_left_by_migration_2_is_upgraded_with_its_rows_kept() {
        on_each_backend("upgrade", |target, dir, schema| {
            let store = open(target, dir, schema);
            store
                .register(&fabrikant(), &[1], &config_rows(), &[])
                .unwrap();
            let fab = fabrikant();
            assert!(store
                .insert_trained(&trained_row("k0", None), &fab, "{}")
                .unwrap());
            // Back to what migration 2 left behind.
            on_pool!(store, pool => async {
                sqlx::query("DROP TABLE job").execute(pool).await?;
                sqlx::query("DELETE FROM bt_migrations WHERE version = 3")
                    .execute(pool)
                    .await?;
                Ok::<_, sqlx::Error>(())
            })
            .unwrap();
            assert_eq!(store.schema_version().unwrap(), 2);
            drop(store);

            let store = open(target, dir, schema);
            assert_eq!(store.schema_version().unwrap(), 3, "{target:?}");
            assert!(store.trained("k0").unwrap().is_some());
            let job = JobSpec {
                key: "k0".into(),
                parent_key: None,
                chain: "A".into(),
                stage: 0,
                comment: String::new(),
            };
            store.ensure_jobs(&[job]).unwrap();
            assert_eq!(store.jobs().unwrap()[0].state, "done");
        });
    }

    #[test]
    fn trained_models_are_found_by_unique_key_prefix() {
        on_each_backend("prefix", |target, dir, schema| {
            let store = open(target, dir, schema);
            store
                .register(&fabrikant(), &[1], &config_rows(), &[])
                .unwrap();
            for key in ["ab12", "ab34"] {
                let row = trained_row(key, None);
                assert!(store.insert_trained(&row, &fabrikant(), "{}").unwrap());
            }
            let found = |prefix: &str| -> Vec<String> {
                store
                    .find_trained(prefix)
                    .unwrap()
                    .into_iter()
                    .map(|(row, dataset, _)| {
                        assert_eq!(dataset, r#"{"d":{"0.1":1.0}}"#);
                        row.key
                    })
                    .collect()
            };
            assert_eq!(found("AB3"), ["ab34"]);
            assert_eq!(found("ab"), ["ab12", "ab34"]);
            assert!(found("abc").is_empty());
            for bad in ["", "ab%", "a_"] {
                assert!(store.find_trained(bad).is_err(), "{bad}");
            }
        });
    }

    #[test]
    fn bad_credentials_and_unreachable_servers_are_named_without_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let mysql = std::env::var("BT_TEST_MYSQL_URL")
            .unwrap_or("mysql://root@127.0.0.1:3306".into())
            .replacen("://root@", "://root:n0t-the-pass@", 1);
        let target = Target::from_url(&mysql).unwrap();
        let err = Store::open_at(&target, dir.path(), "s", true)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.starts_with("cannot connect to the database `mysql://root@"),
            "{err}"
        );
        assert!(
            err.contains("(from `DATABASE_URL`)") && err.contains("Access denied"),
            "{err}"
        );
        assert!(!err.contains("n0t-the-pass"), "{err}");

        let target = Target::from_url("postgres://ada:pw@127.0.0.1:1/db").unwrap();
        let err = Store::open_at(&target, dir.path(), "s", true)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("`postgres://ada@127.0.0.1:1/db, schema s`"),
            "{err}"
        );
        assert!(err.contains("cannot reach the server"), "{err}");
    }
}
