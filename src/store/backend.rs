//! Database backends: where the schemas live (SQLite files, a PostgreSQL or a MySQL/MariaDB
//! server), how to reach them, and the few places where their SQL differs.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{Connection, Executor, MySqlPool, PgPool, Row, SqlitePool};

use super::StoreError;

/// The three SQL dialects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
    MySql,
}

impl Backend {
    /// The backend's name, as `DATABASE_URL` schemes spell it.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
            Backend::MySql => "mysql",
        }
    }
}

/// A server to connect to, with a description of it that holds no secret.
#[derive(Clone, Debug)]
pub enum Server {
    Postgres(PgConnectOptions),
    MySql(MySqlConnectOptions),
}

/// Where the schemas of a run live: SQLite files under the work directory (the default), or
/// a server named by `DATABASE_URL` or the original `.env`'s `DJ_HOST`, `DJ_USER`, `DJ_PASS`.
#[derive(Clone, Debug)]
pub struct Target {
    pub server: Option<Server>,
    /// `postgres://user@host:port/db`, the password left out; empty for SQLite.
    pub display: String,
    /// Where the setting came from: `DATABASE_URL`, `DJ_HOST` or nothing.
    pub source: &'static str,
    /// The password, to keep it out of messages.
    secret: Option<String>,
}

/// How long to wait for a server to answer, from `BT_DB_TIMEOUT` (seconds, default 10).
pub(crate) fn connect_timeout() -> Duration {
    std::env::var("BT_DB_TIMEOUT")
        .ok()
        .and_then(|t| t.trim().parse::<f64>().ok())
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        .unwrap_or(Duration::from_secs(10))
}

fn config_error(variable: &str, message: impl std::fmt::Display) -> StoreError {
    StoreError::Config(format!("`{variable}`: {message}"))
}

impl Target {
    /// Read the target from the environment.
    pub fn from_env() -> Result<Target, StoreError> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        if let Some(url) = var("DATABASE_URL") {
            return Target::from_url(url.trim());
        }
        match var("DJ_HOST") {
            Some(host) => Target::from_dj(&host, var("DJ_USER"), var("DJ_PASS")),
            None => Ok(Target::sqlite()),
        }
    }

    /// SQLite files under the work directory.
    pub fn sqlite() -> Target {
        Target {
            server: None,
            display: String::new(),
            source: "",
            secret: None,
        }
    }

    /// `message` with the password, if any, replaced by `***`.
    pub fn redact(&self, message: &str) -> String {
        match &self.secret {
            Some(secret) if !secret.is_empty() => message.replace(secret.as_str(), "***"),
            _ => message.to_string(),
        }
    }

    /// A `postgres://`, `postgresql://`, `mysql://` or `mariadb://` URL.
    pub fn from_url(url: &str) -> Result<Target, StoreError> {
        let parsed = url::Url::parse(url).map_err(|e| {
            config_error(
                "DATABASE_URL",
                format!("not a URL ({e}); use postgres://user@host/db or mysql://user@host"),
            )
        })?;
        let redact = |e: sqlx::Error| {
            let text = e.to_string();
            let text = match parsed.password() {
                Some(p) if !p.is_empty() => text.replace(p, "***"),
                _ => text,
            };
            config_error("DATABASE_URL", text)
        };
        let server = match parsed.scheme() {
            "postgres" | "postgresql" => {
                Server::Postgres(PgConnectOptions::from_str(url).map_err(redact)?)
            }
            "mysql" | "mariadb" => {
                let mut fixed = parsed.clone();
                let _ = fixed.set_scheme("mysql");
                Server::MySql(MySqlConnectOptions::from_str(fixed.as_str()).map_err(redact)?)
            }
            other => {
                return Err(config_error(
                    "DATABASE_URL",
                    format!(
                        "scheme `{other}` is not supported: use `postgres://` or `mysql://`, \
                         or unset it for the SQLite files under the work directory"
                    ),
                ))
            }
        };
        let mut shown = parsed.clone();
        let _ = shown.set_password(None);
        shown.set_query(None);
        Ok(Target {
            server: Some(server),
            display: shown.to_string(),
            source: "DATABASE_URL",
            secret: parsed.password().map(str::to_string),
        })
    }

    /// The original framework's MySQL settings: `DJ_HOST` (`host` or `host:port`),
    /// `DJ_USER` (default `root`) and `DJ_PASS`.
    pub fn from_dj(
        host: &str,
        user: Option<String>,
        pass: Option<String>,
    ) -> Result<Target, StoreError> {
        let (name, port) = match host.trim().rsplit_once(':') {
            Some((name, port)) => {
                let port = port.parse::<u16>().map_err(|_| {
                    config_error("DJ_HOST", format!("`{port}` is not a port number"))
                })?;
                (name.to_string(), port)
            }
            None => (host.trim().to_string(), 3306),
        };
        let user = user.unwrap_or_else(|| "root".to_string());
        let mut options = MySqlConnectOptions::new()
            .host(&name)
            .port(port)
            .username(&user);
        if let Some(pass) = &pass {
            options = options.password(pass);
        }
        Ok(Target {
            server: Some(Server::MySql(options)),
            display: format!("mysql://{user}@{name}:{port}"),
            source: "DJ_HOST",
            secret: pass,
        })
    }

    /// The backend the target selects.
    pub fn backend(&self) -> Backend {
        match &self.server {
            None => Backend::Sqlite,
            Some(Server::Postgres(_)) => Backend::Postgres,
            Some(Server::MySql(_)) => Backend::MySql,
        }
    }

    /// What error messages call the database of `schema`.
    pub fn describe(&self, work_dir: &Path, schema: &str) -> String {
        match &self.server {
            None => super::sqlite_path(work_dir, schema).display().to_string(),
            Some(Server::Postgres(_)) => format!("{}, schema {schema}", self.display),
            Some(Server::MySql(_)) => format!("{}, database {schema}", self.display),
        }
    }
}

/// An open pool of one backend.
pub enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
    MySql(MySqlPool),
}

/// Open the SQLite file `path` (created when `create`; read-only otherwise).
pub async fn sqlite(path: &Path, create: bool) -> Result<Pool, sqlx::Error> {
    let options = SqliteConnectOptions::from_str("sqlite:")?
        .filename(path)
        .create_if_missing(create)
        .foreign_keys(true)
        .busy_timeout(Duration::from_secs(60));
    // Describing a plan only reads: open read-only, so a read-only work directory works.
    let options = if create {
        options.journal_mode(SqliteJournalMode::Wal)
    } else {
        options.read_only(true)
    };
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await?;
    Ok(Pool::Sqlite(pool))
}

/// Whether a server holds `schema` with our tables (a PostgreSQL schema or a MySQL
/// database) and at least its first migration done: MySQL makes tables one statement at a
/// time, so a schema another worker is still creating does not count yet.
pub async fn server_has_schema(server: &Server, schema: &str) -> Result<bool, sqlx::Error> {
    let exists = "SELECT COUNT(*) FROM information_schema.tables \
                  WHERE table_schema = {} AND table_name = 'bt_migrations'";
    let timeout = connect_timeout();
    let version = match server {
        Server::Postgres(options) => {
            let mut con = with_timeout(timeout, sqlx::PgConnection::connect_with(options)).await?;
            let n: i64 = sqlx::query(&exists.replace("{}", "$1"))
                .bind(schema)
                .fetch_one(&mut con)
                .await?
                .try_get(0)?;
            let version =
                format!("SELECT COALESCE(MAX(version), 0) FROM \"{schema}\".bt_migrations");
            let v: i64 = match n {
                0 => 0,
                _ => sqlx::query(&version)
                    .fetch_one(&mut con)
                    .await?
                    .try_get(0)?,
            };
            con.close().await?;
            v
        }
        Server::MySql(options) => {
            let mut con =
                with_timeout(timeout, sqlx::MySqlConnection::connect_with(options)).await?;
            let n: i64 = sqlx::query(&exists.replace("{}", "?"))
                .bind(schema)
                .fetch_one(&mut con)
                .await?
                .try_get(0)?;
            let version = format!("SELECT COALESCE(MAX(version), 0) FROM `{schema}`.bt_migrations");
            let v: i64 = match n {
                0 => 0,
                _ => sqlx::query(&version)
                    .fetch_one(&mut con)
                    .await?
                    .try_get(0)?,
            };
            con.close().await?;
            v
        }
    };
    Ok(version > 0)
}

async fn with_timeout<T>(
    timeout: Duration,
    future: impl std::future::Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, sqlx::Error> {
    tokio::time::timeout(timeout, future)
        .await
        .unwrap_or(Err(sqlx::Error::PoolTimedOut))
}

/// Create `schema` on the server if needed, bring its tables up to date (one process at a
/// time, under a server-side lock) and open a pool on it.
pub async fn server(server: &Server, schema: &str, create: bool) -> Result<Pool, sqlx::Error> {
    let timeout = connect_timeout();
    match server {
        Server::Postgres(options) => {
            if create {
                let mut con =
                    with_timeout(timeout, sqlx::PgConnection::connect_with(options)).await?;
                migrate_postgres(&mut con, schema).await?;
                con.close().await?;
            }
            // Quoted, as the schema was created: a name with capitals keeps them.
            let options = options
                .clone()
                .options([("search_path", format!("\"{schema}\""))]);
            let pool = PgPoolOptions::new()
                .max_connections(2)
                .acquire_timeout(timeout)
                .connect_with(options)
                .await?;
            Ok(Pool::Postgres(pool))
        }
        Server::MySql(options) => {
            if create {
                let mut con =
                    with_timeout(timeout, sqlx::MySqlConnection::connect_with(options)).await?;
                migrate_mysql(&mut con, schema).await?;
                con.close().await?;
            }
            let pool = MySqlPoolOptions::new()
                .max_connections(2)
                .acquire_timeout(timeout)
                .after_connect(ansi_quotes_on_connect)
                .connect_with(options.clone().database(schema))
                .await?;
            Ok(Pool::MySql(pool))
        }
    }
}

/// MySQL reads `"key"` as a column name (as the other two do) only with `ANSI_QUOTES`.
const ANSI_QUOTES: &str = "SET SESSION sql_mode = CONCAT(@@sql_mode, ',ANSI_QUOTES')";

fn ansi_quotes_on_connect(
    con: &mut sqlx::MySqlConnection,
    _: sqlx::pool::PoolConnectionMetadata,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), sqlx::Error>> + Send + '_>> {
    Box::pin(async move { con.execute(ANSI_QUOTES).await.map(|_| ()) })
}

async fn migrate_postgres(con: &mut sqlx::PgConnection, schema: &str) -> Result<(), sqlx::Error> {
    // A transaction-scoped advisory lock per schema: concurrent workers migrate in turn.
    let mut tx = con.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
        .bind(format!("bias_transfer_rs:{schema}"))
        .execute(&mut *tx)
        .await?;
    let create = format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\"");
    sqlx::raw_sql(&create).execute(&mut *tx).await?;
    let path = format!("SET LOCAL search_path TO \"{schema}\"");
    sqlx::raw_sql(&path).execute(&mut *tx).await?;
    migrate!(tx, Backend::Postgres).await?;
    tx.commit().await
}

async fn migrate_mysql(con: &mut sqlx::MySqlConnection, schema: &str) -> Result<(), sqlx::Error> {
    // MySQL commits each DDL statement by itself: a named lock keeps other workers out
    // while the tables are made, and each migration is recorded once its statements ran.
    con.execute(ANSI_QUOTES).await?;
    let lock = format!("bias_transfer_rs:{schema}");
    let got: Option<i64> = sqlx::query("SELECT GET_LOCK(?, 600)")
        .bind(&lock)
        .fetch_one(&mut *con)
        .await?
        .try_get(0)?;
    if got != Some(1) {
        return Err(sqlx::Error::Protocol(format!(
            "timed out waiting for the migration lock of `{schema}`"
        )));
    }
    let result = async {
        let create = format!(
            "CREATE DATABASE IF NOT EXISTS `{schema}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
        );
        sqlx::raw_sql(&create).execute(&mut *con).await?;
        let use_it = format!("USE `{schema}`");
        sqlx::raw_sql(&use_it).execute(&mut *con).await?;
        migrate!(con, Backend::MySql).await
    }
    .await;
    sqlx::query("SELECT RELEASE_LOCK(?)")
        .bind(&lock)
        .execute(&mut *con)
        .await?;
    result
}

/// Apply the migrations that the connection `$con` (a `&mut` connection of any backend,
/// its schema selected) lacks, recording each; the table that records them is made first.
macro_rules! migrate {
    ($con:expr, $backend:expr) => {
        async {
            let create = $crate::store::backend::dialect(
                "CREATE TABLE IF NOT EXISTS bt_migrations (version {int} PRIMARY KEY, \
                 applied_at {now})",
                $backend,
            );
            sqlx::raw_sql(&create).execute(&mut *$con).await?;
            let current: i64 = sqlx::query("SELECT COALESCE(MAX(version), 0) FROM bt_migrations")
                .fetch_one(&mut *$con)
                .await?
                .try_get(0)?;
            let record = $crate::store::backend::placeholders(
                "INSERT INTO bt_migrations (version) VALUES (?)",
                $backend,
            );
            for (version, sql) in $crate::store::MIGRATIONS
                .iter()
                .filter(|(v, _)| *v > current)
            {
                for statement in $crate::store::backend::statements(sql, $backend) {
                    sqlx::raw_sql(&statement).execute(&mut *$con).await?;
                }
                sqlx::query(&record)
                    .bind(version)
                    .execute(&mut *$con)
                    .await?;
            }
            Ok::<(), sqlx::Error>(())
        }
    };
}
pub(crate) use migrate;

/// The DDL of a migration for `backend`: its type words replaced, split into statements.
pub fn statements(sql: &str, backend: Backend) -> Vec<String> {
    dialect(sql, backend)
        .split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

/// Replace the type words of a schema text: `{id}` (a key column), `{text}` (any length),
/// `{int}`, `{float}` and `{now}` (a text column defaulting to the UTC time).
pub fn dialect(sql: &str, backend: Backend) -> String {
    let words: [(&str, &str); 5] = match backend {
        Backend::Sqlite => [
            ("{id}", "TEXT"),
            ("{text}", "TEXT"),
            ("{int}", "INTEGER"),
            ("{float}", "REAL"),
            ("{now}", "TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP"),
        ],
        Backend::Postgres => [
            ("{id}", "TEXT"),
            ("{text}", "TEXT"),
            ("{int}", "BIGINT"),
            ("{float}", "DOUBLE PRECISION"),
            (
                "{now}",
                "TEXT NOT NULL DEFAULT to_char(now() AT TIME ZONE 'UTC', \
                 'YYYY-MM-DD HH24:MI:SS')",
            ),
        ],
        Backend::MySql => [
            ("{id}", "VARCHAR(255)"),
            ("{text}", "LONGTEXT"),
            ("{int}", "BIGINT"),
            ("{float}", "DOUBLE"),
            (
                "{now}",
                "VARCHAR(19) NOT NULL DEFAULT (DATE_FORMAT(UTC_TIMESTAMP(), \
                 '%Y-%m-%d %H:%i:%s'))",
            ),
        ],
    };
    words
        .iter()
        .fold(sql.to_string(), |text, (word, ty)| text.replace(word, ty))
}

/// A query written with `?` placeholders, as PostgreSQL wants it (`$1`, `$2`, ...).
pub fn placeholders(sql: &str, backend: Backend) -> String {
    if backend != Backend::Postgres {
        return sql.to_string();
    }
    let mut out = String::with_capacity(sql.len() + 8);
    let mut n = 0;
    for c in sql.chars() {
        if c == '?' {
            n += 1;
            out.push_str(&format!("${n}"));
        } else {
            out.push(c);
        }
    }
    out
}

/// `INSERT INTO table (columns) VALUES (?, ...)` that keeps an existing row with the same
/// key (`key` lists the key columns).
pub fn insert_or_keep(backend: Backend, table: &str, columns: &[&str], key: &[&str]) -> String {
    let insert = insert(table, columns);
    match backend {
        Backend::Sqlite | Backend::Postgres => {
            format!("{insert} ON CONFLICT ({}) DO NOTHING", key.join(", "))
        }
        Backend::MySql => format!("{insert} ON DUPLICATE KEY UPDATE {0} = {0}", key[0]),
    }
}

/// `INSERT INTO table (columns) VALUES (?, ...)` that overwrites `update` in an existing
/// row with the same key.
pub fn insert_or_update(
    backend: Backend,
    table: &str,
    columns: &[&str],
    key: &[&str],
    update: &[&str],
) -> String {
    let insert = insert(table, columns);
    match backend {
        Backend::Sqlite | Backend::Postgres => {
            let set: Vec<_> = update
                .iter()
                .map(|c| format!("{c} = excluded.{c}"))
                .collect();
            format!(
                "{insert} ON CONFLICT ({}) DO UPDATE SET {}",
                key.join(", "),
                set.join(", ")
            )
        }
        Backend::MySql => {
            let set: Vec<_> = update
                .iter()
                .map(|c| format!("{c} = VALUES({c})"))
                .collect();
            format!("{insert} ON DUPLICATE KEY UPDATE {}", set.join(", "))
        }
    }
}

fn insert(table: &str, columns: &[&str]) -> String {
    let marks = vec!["?"; columns.len()].join(", ");
    format!(
        "INSERT INTO {table} ({}) VALUES ({marks})",
        columns.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_select_the_backend_and_never_show_the_password() {
        let t = Target::from_url("postgres://ada:s3cret@db.lab:5433/results").unwrap();
        assert_eq!(t.backend(), Backend::Postgres);
        assert_eq!(t.display, "postgres://ada@db.lab:5433/results");
        let t = Target::from_url("mariadb://root:pw@127.0.0.1").unwrap();
        assert_eq!(
            (t.backend(), t.display.as_str()),
            (Backend::MySql, "mariadb://root@127.0.0.1")
        );
        let err = Target::from_url("redis://x").unwrap_err().to_string();
        assert!(err.contains("scheme `redis` is not supported"), "{err}");
        let err = Target::from_url("not a url").unwrap_err().to_string();
        assert!(err.starts_with("`DATABASE_URL`: not a URL"), "{err}");
    }

    #[test]
    fn dj_settings_give_a_mysql_target() {
        let t = Target::from_dj("db:3307", Some("ada".into()), Some("pw".into())).unwrap();
        assert_eq!(
            (t.backend(), t.display.as_str()),
            (Backend::MySql, "mysql://ada@db:3307")
        );
        let err = Target::from_dj("db:x", None, None).unwrap_err().to_string();
        assert!(err.contains("`x` is not a port number"), "{err}");
    }

    #[test]
    fn dialects_differ_only_where_they_must() {
        assert_eq!(
            placeholders("a = ? AND b = ?", Backend::Postgres),
            "a = $1 AND b = $2"
        );
        assert_eq!(placeholders("a = ?", Backend::MySql), "a = ?");
        let cols = ["chain", "seed", "key"];
        assert_eq!(
            insert_or_update(Backend::MySql, "c", &cols, &["chain", "seed"], &["key"]),
            "INSERT INTO c (chain, seed, key) VALUES (?, ?, ?) ON DUPLICATE KEY UPDATE key = VALUES(key)"
        );
        assert_eq!(
            insert_or_keep(Backend::Postgres, "seed", &["seed"], &["seed"]),
            "INSERT INTO seed (seed) VALUES (?) ON CONFLICT (seed) DO NOTHING"
        );
        let ddl = statements(
            "CREATE TABLE t (a {id} PRIMARY KEY, b {float});\n",
            Backend::MySql,
        );
        assert_eq!(
            ddl,
            ["CREATE TABLE t (a VARCHAR(255) PRIMARY KEY, b DOUBLE)"]
        );
    }
}
