//! Storage: configs, seeds and trained models in a database (sqlx), weights in the
//! artifact store.

pub mod artifacts;

use std::path::{Path, PathBuf};
use std::str::FromStr;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{Row, SqlitePool};

pub use artifacts::{ArtifactRef, LocalArtifacts};

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
    #[error("artifact URI `{0}` is not a `local:` URI")]
    BadUri(String),
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
/// migration is never edited, a change is a new entry.
const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        "CREATE TABLE fabrikant (
        name TEXT PRIMARY KEY,
        email TEXT NOT NULL,
        affiliation TEXT NOT NULL,
        db_user TEXT NOT NULL,
        created_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP
    );
    CREATE TABLE seed (seed INTEGER PRIMARY KEY);
    CREATE TABLE dataset (
        fn TEXT NOT NULL, hash TEXT NOT NULL, config TEXT NOT NULL, comment TEXT NOT NULL,
        fabrikant TEXT NOT NULL REFERENCES fabrikant(name),
        created_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP, PRIMARY KEY (fn, hash)
    );
    CREATE TABLE model (
        fn TEXT NOT NULL, hash TEXT NOT NULL, config TEXT NOT NULL, comment TEXT NOT NULL,
        fabrikant TEXT NOT NULL REFERENCES fabrikant(name),
        created_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP, PRIMARY KEY (fn, hash)
    );
    CREATE TABLE trainer (
        fn TEXT NOT NULL, hash TEXT NOT NULL, config TEXT NOT NULL, comment TEXT NOT NULL,
        fabrikant TEXT NOT NULL REFERENCES fabrikant(name),
        created_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP, PRIMARY KEY (fn, hash)
    );
    CREATE TABLE trained_model (
        key TEXT PRIMARY KEY,
        dataset_fn TEXT NOT NULL, dataset_hash TEXT NOT NULL,
        model_fn TEXT NOT NULL, model_hash TEXT NOT NULL,
        trainer_fn TEXT NOT NULL, trainer_hash TEXT NOT NULL,
        seed INTEGER NOT NULL REFERENCES seed(seed),
        parent_key TEXT REFERENCES trained_model(key),
        comment TEXT NOT NULL,
        score REAL NOT NULL,
        output TEXT NOT NULL,
        fabrikant TEXT NOT NULL REFERENCES fabrikant(name),
        weights_uri TEXT NOT NULL, weights_sha256 TEXT NOT NULL, weights_size INTEGER NOT NULL,
        created_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP,
        FOREIGN KEY (dataset_fn, dataset_hash) REFERENCES dataset(fn, hash),
        FOREIGN KEY (model_fn, model_hash) REFERENCES model(fn, hash),
        FOREIGN KEY (trainer_fn, trainer_hash) REFERENCES trainer(fn, hash)
    );
    CREATE TABLE chain_stage (
        chain TEXT NOT NULL, seed INTEGER NOT NULL, stage INTEGER NOT NULL, key TEXT NOT NULL,
        PRIMARY KEY (chain, seed, stage)
    );",
    ),
    (
        2,
        "ALTER TABLE dataset ADD COLUMN legacy_hash TEXT NOT NULL DEFAULT '';
    ALTER TABLE model ADD COLUMN legacy_hash TEXT NOT NULL DEFAULT '';
    ALTER TABLE trainer ADD COLUMN legacy_hash TEXT NOT NULL DEFAULT '';
    ALTER TABLE trained_model ADD COLUMN provenance TEXT NOT NULL DEFAULT '{}';",
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

/// The SQLite file of a schema under the work directory.
pub fn sqlite_path(work_dir: &Path, schema: &str) -> PathBuf {
    work_dir.join("db").join(format!("{schema}.sqlite"))
}

/// A database connection with its own small runtime.
pub struct Store {
    rt: tokio::runtime::Runtime,
    pool: SqlitePool,
    target: String,
}

impl Store {
    /// Open (creating if needed) the SQLite file of `schema` and bring it up to date.
    pub fn open_sqlite(work_dir: &Path, schema: &str) -> Result<Store, StoreError> {
        validate_schema(schema)?;
        let path = sqlite_path(work_dir, schema);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|source| StoreError::Artifact {
                path: parent.to_path_buf(),
                source,
            })?;
        }
        let store = Self::connect(&path, true)?;
        store.migrate()?;
        Ok(store)
    }

    /// Open the SQLite file of `schema` only if it exists; never creates anything.
    pub fn open_existing(work_dir: &Path, schema: &str) -> Result<Option<Store>, StoreError> {
        validate_schema(schema)?;
        let path = sqlite_path(work_dir, schema);
        if !path.is_file() {
            return Ok(None);
        }
        Self::connect(&path, false).map(Some)
    }

    fn connect(path: &Path, create: bool) -> Result<Store, StoreError> {
        let target = path.display().to_string();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(StoreError::Runtime)?;
        let db = |source| StoreError::Database {
            target: target.clone(),
            source,
        };
        let options = SqliteConnectOptions::from_str("sqlite:")
            .map_err(db)?
            .filename(path)
            .create_if_missing(create)
            .foreign_keys(true);
        // Describing a plan only reads: open read-only, so a read-only work directory works.
        let options = if create {
            options.journal_mode(SqliteJournalMode::Wal)
        } else {
            options.read_only(true)
        };
        let pool = rt
            .block_on(
                SqlitePoolOptions::new()
                    .max_connections(1)
                    .connect_with(options),
            )
            .map_err(db)?;
        Ok(Store { rt, pool, target })
    }

    fn db_err(&self) -> impl Fn(sqlx::Error) -> StoreError + '_ {
        move |source| StoreError::Database {
            target: self.target.clone(),
            source,
        }
    }

    fn migrate(&self) -> Result<(), StoreError> {
        self.rt
            .block_on(async {
                let mut tx = self.pool.begin().await?;
                sqlx::query(
                    "CREATE TABLE IF NOT EXISTS bt_migrations (version INTEGER PRIMARY KEY, \
                 applied_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP)",
                )
                .execute(&mut *tx)
                .await?;
                let current: i64 =
                    sqlx::query("SELECT COALESCE(MAX(version), 0) FROM bt_migrations")
                        .fetch_one(&mut *tx)
                        .await?
                        .try_get(0)?;
                for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
                    sqlx::raw_sql(sql).execute(&mut *tx).await?;
                    sqlx::query("INSERT INTO bt_migrations (version) VALUES (?)")
                        .bind(version)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await
            })
            .map_err(self.db_err())
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
        self.rt.block_on(async {
            let mut tx = self.pool.begin().await?;
            sqlx::query(
                "INSERT OR IGNORE INTO fabrikant (name, email, affiliation, db_user) \
                 VALUES (?, ?, ?, ?)",
            )
            .bind(&fabrikant.name)
            .bind(&fabrikant.email)
            .bind(&fabrikant.affiliation)
            .bind(&fabrikant.db_user)
            .execute(&mut *tx)
            .await?;
            for seed in seeds {
                sqlx::query("INSERT OR IGNORE INTO seed (seed) VALUES (?)")
                    .bind(seed)
                    .execute(&mut *tx)
                    .await?;
            }
            for row in configs {
                let sql = format!(
                    "INSERT OR IGNORE INTO {} (fn, hash, legacy_hash, config, comment, \
                     fabrikant) VALUES (?, ?, ?, ?, ?, ?)",
                    row.table.name()
                );
                sqlx::query(&sql)
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
                sqlx::query(
                    "INSERT OR REPLACE INTO chain_stage (chain, seed, stage, key) VALUES (?, ?, ?, ?)",
                )
                .bind(&row.chain)
                .bind(row.seed)
                .bind(row.stage)
                .bind(&row.key)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await
        })
        .map_err(self.db_err())
    }

    /// The trained model with `key`, if it exists.
    pub fn trained(&self, key: &str) -> Result<Option<TrainedRow>, StoreError> {
        let row = self
            .rt
            .block_on(
                sqlx::query("SELECT * FROM trained_model WHERE key = ?")
                    .bind(key)
                    .fetch_optional(&self.pool),
            )
            .map_err(self.db_err())?;
        row.map(|r| trained_from_row(&r))
            .transpose()
            .map_err(self.db_err())
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
        let rows = self
            .rt
            .block_on(
                sqlx::query(
                    "SELECT t.*, d.config AS dataset_config, m.config AS model_config \
                     FROM trained_model t \
                     JOIN dataset d ON d.fn = t.dataset_fn AND d.hash = t.dataset_hash \
                     JOIN model m ON m.fn = t.model_fn AND m.hash = t.model_hash \
                     WHERE t.key LIKE ? ORDER BY t.key LIMIT 2",
                )
                .bind(format!("{}%", prefix.to_ascii_lowercase()))
                .fetch_all(&self.pool),
            )
            .map_err(self.db_err())?;
        rows.iter()
            .map(|r| {
                Ok((
                    trained_from_row(r)?,
                    r.try_get("dataset_config")?,
                    r.try_get("model_config")?,
                ))
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(self.db_err())
    }

    /// Insert a trained model row; `false` when a row with its key exists already (another
    /// run finished the same stage first), which is then kept.
    pub fn insert_trained(
        &self,
        row: &TrainedRow,
        fabrikant: &Fabrikant,
        provenance: &str,
    ) -> Result<bool, StoreError> {
        let k = &row.stage;
        self.rt
            .block_on(
                sqlx::query(
                    "INSERT INTO trained_model (key, dataset_fn, dataset_hash, model_fn, \
                     model_hash, trainer_fn, trainer_hash, seed, parent_key, comment, score, \
                     output, fabrikant, weights_uri, weights_sha256, weights_size, provenance) \
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
                     ON CONFLICT (key) DO NOTHING",
                )
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
                .bind(&fabrikant.name)
                .bind(&row.weights.uri)
                .bind(&row.weights.sha256)
                .bind(row.weights.size as i64)
                .bind(provenance)
                .execute(&self.pool),
            )
            .map(|done| done.rows_affected() == 1)
            .map_err(self.db_err())
    }

    /// Every trained model, one entry per chain stage it belongs to (ordered by chain and
    /// stage), with its provenance parsed: the rows a notebook reads.
    pub fn trained_models(&self) -> Result<Vec<serde_json::Value>, StoreError> {
        let rows = self
            .rt
            .block_on(
                sqlx::query(
                    "SELECT c.chain, c.stage, t.key, t.parent_key, t.seed, t.comment, t.score, \
                     t.output, t.fabrikant, t.weights_uri, t.weights_sha256, t.weights_size, \
                     t.provenance, t.created_at, \
                     t.dataset_fn, t.dataset_hash, d.config AS dataset_config, \
                     t.model_fn, t.model_hash, m.config AS model_config, \
                     t.trainer_fn, t.trainer_hash, r.config AS trainer_config \
                     FROM trained_model t LEFT JOIN chain_stage c ON c.key = t.key \
                     JOIN dataset d ON d.fn = t.dataset_fn AND d.hash = t.dataset_hash \
                     JOIN model m ON m.fn = t.model_fn AND m.hash = t.model_hash \
                     JOIN trainer r ON r.fn = t.trainer_fn AND r.hash = t.trainer_hash \
                     ORDER BY c.chain, c.stage, t.seed, t.key",
                )
                .fetch_all(&self.pool),
            )
            .map_err(self.db_err())?;
        rows.iter()
            .map(|r| -> Result<serde_json::Value, sqlx::Error> {
                let provenance: String = r.try_get("provenance")?;
                let output: String = r.try_get("output")?;
                let text = |column: &str| r.try_get::<String, _>(column);
                Ok(serde_json::json!({
                    "chain": r.try_get::<Option<String>, _>("chain")?,
                    "stage": r.try_get::<Option<i64>, _>("stage")?,
                    "key": r.try_get::<String, _>("key")?,
                    "parent_key": r.try_get::<Option<String>, _>("parent_key")?,
                    "seed": r.try_get::<i64, _>("seed")?,
                    "comment": r.try_get::<String, _>("comment")?,
                    "score": r.try_get::<f64, _>("score")?,
                    "weights_uri": r.try_get::<String, _>("weights_uri")?,
                    "weights_sha256": r.try_get::<String, _>("weights_sha256")?,
                    "weights_size": r.try_get::<i64, _>("weights_size")?,
                    "fabrikant": text("fabrikant")?,
                    "output": serde_json::from_str::<serde_json::Value>(&output)
                        .unwrap_or(serde_json::Value::String(output)),
                    "provenance": serde_json::from_str::<serde_json::Value>(&provenance)
                        .unwrap_or(serde_json::Value::String(provenance)),
                    "created_at": text("created_at")?,
                    "dataset": [text("dataset_fn")?, text("dataset_hash")?, text("dataset_config")?],
                    "model": [text("model_fn")?, text("model_hash")?, text("model_config")?],
                    "trainer": [text("trainer_fn")?, text("trainer_hash")?, text("trainer_config")?],
                }))
            })
            .collect::<Result<_, _>>()
            .map_err(self.db_err())
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
        self.rt
            .block_on(async {
                let mut out = Vec::new();
                for table in tables {
                    let n: i64 = sqlx::query(&format!("SELECT COUNT(*) FROM {table}"))
                        .fetch_one(&self.pool)
                        .await?
                        .try_get(0)?;
                    out.push((table.to_string(), n));
                }
                Ok(out)
            })
            .map_err(self.db_err())
    }
}

fn trained_from_row(r: &sqlx::sqlite::SqliteRow) -> Result<TrainedRow, sqlx::Error> {
    Ok(TrainedRow {
        key: r.try_get("key")?,
        stage: ConfigKeys {
            dataset: (r.try_get("dataset_fn")?, r.try_get("dataset_hash")?),
            model: (r.try_get("model_fn")?, r.try_get("model_hash")?),
            trainer: (r.try_get("trainer_fn")?, r.try_get("trainer_hash")?),
            seed: r.try_get("seed")?,
        },
        parent_key: r.try_get("parent_key")?,
        comment: r.try_get("comment")?,
        score: r.try_get("score")?,
        output: r.try_get("output")?,
        weights: ArtifactRef {
            uri: r.try_get("weights_uri")?,
            sha256: r.try_get("weights_sha256")?,
            size: r.try_get::<i64, _>("weights_size")? as u64,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_identifiers() {
        assert!(validate_schema("bias_transfer_2026_12_03_fashion_noise").is_ok());
        for bad in ["", "1abc", "a-b", "a;drop", "../x"] {
            assert!(validate_schema(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn register_is_idempotent_and_migrations_run_once() {
        let dir = tempfile::tempdir().unwrap();
        let fab = Fabrikant {
            name: "ada".into(),
            email: "a@b.c".into(),
            affiliation: "lab".into(),
            db_user: "ada".into(),
        };
        let configs = vec![ConfigRow {
            table: ConfigTable::Dataset,
            fn_name: "f".into(),
            hash: "h".into(),
            legacy_hash: "l".into(),
            config: "{}".into(),
            comment: "".into(),
        }];
        for _ in 0..2 {
            let store = Store::open_sqlite(dir.path(), "s").unwrap();
            store.register(&fab, &[42], &configs, &[]).unwrap();
            let counts: std::collections::HashMap<_, _> =
                store.counts().unwrap().into_iter().collect();
            assert_eq!(
                (counts["fabrikant"], counts["seed"], counts["dataset"]),
                (1, 1, 1)
            );
        }
        assert!(Store::open_existing(dir.path(), "other").unwrap().is_none());
        assert!(!sqlite_path(dir.path(), "other").exists());
    }

    #[test]
    fn trained_models_are_found_by_unique_key_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite(dir.path(), "s").unwrap();
        let fab = Fabrikant::from_env();
        let configs: Vec<_> = [
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
            config: "{}".into(),
            comment: "".into(),
        })
        .collect();
        store.register(&fab, &[1], &configs, &[]).unwrap();
        let keys = ConfigKeys {
            dataset: ("f".into(), "h".into()),
            model: ("f".into(), "h".into()),
            trainer: ("f".into(), "h".into()),
            seed: 1,
        };
        for key in ["ab12", "ab34"] {
            let row = TrainedRow {
                key: key.into(),
                stage: keys.clone(),
                parent_key: None,
                comment: "c".into(),
                score: 1.0,
                output: "[]".into(),
                weights: ArtifactRef {
                    uri: "local:x".into(),
                    sha256: "0".into(),
                    size: 0,
                },
            };
            assert!(store.insert_trained(&row, &fab, "{}").unwrap());
        }
        let found = |prefix: &str| -> Vec<String> {
            store
                .find_trained(prefix)
                .unwrap()
                .into_iter()
                .map(|(row, dataset, model)| {
                    assert_eq!((dataset.as_str(), model.as_str()), ("{}", "{}"));
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
    }
}
