//! Jobs: one per chain stage, claimed by workers under a lease, so several workers on
//! several machines share a recipe through the database alone.
//!
//! A job is claimable when it is `pending` (or `running` with an expired lease) and its
//! parent stage has a trained model. A claim bumps the job's fencing token; heartbeats,
//! the completing commit and error reports only take effect with the current token, so a
//! worker whose lease was taken over cannot write.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::Rng;
use sqlx::Row;

use super::{backend, Backend, Columns, Fabrikant, Pool, Store, StoreError, TrainedRow};

/// A stage to run, as the plan registers it.
#[derive(Clone, Debug)]
pub struct JobSpec {
    pub key: String,
    pub parent_key: Option<String>,
    pub chain: String,
    pub stage: i64,
    pub comment: String,
}

/// Who works: host name and process id.
#[derive(Clone, Debug)]
pub struct Worker {
    pub host: String,
    pub pid: i64,
}

impl Worker {
    /// This process on this machine.
    pub fn this_process() -> Worker {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "unknown".to_string());
        Worker {
            host,
            pid: std::process::id() as i64,
        }
    }
}

/// A job this worker holds: its key, the fencing token of the claim, and the checkpoint
/// an earlier attempt left.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    pub key: String,
    pub token: i64,
    pub attempts: i64,
    pub checkpoint: Option<CheckpointRef>,
}

/// The last checkpoint of a job: its artifact and the epoch it ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointRef {
    pub uri: String,
    pub sha256: String,
    pub epoch: i64,
}

/// One job's state, for status reports.
#[derive(Clone, Debug, serde::Serialize)]
pub struct JobRow {
    pub key: String,
    pub chain: String,
    pub stage: i64,
    pub comment: String,
    pub state: String,
    pub attempts: i64,
    pub worker_host: Option<String>,
    pub worker_pid: Option<i64>,
    pub lease_expires: Option<f64>,
    pub started_at: Option<f64>,
    pub finished_at: Option<f64>,
    pub error_message: Option<String>,
    pub error_traceback: Option<String>,
}

/// Seconds since the epoch, as leases are kept.
pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// `IN (?, ?, ...)` for `n` values.
fn in_list(n: usize) -> String {
    format!("({})", vec!["?"; n.max(1)].join(", "))
}

/// Jobs claimable now among the keys bound after the time: pending, or running with an
/// expired lease, whose parent stage is trained.
const CLAIMABLE: &str = "(j.state = 'pending' OR (j.state = 'running' AND j.lease_expires < ?)) \
     AND (j.parent_key IS NULL OR EXISTS \
     (SELECT 1 FROM trained_model t WHERE t.\"key\" = j.parent_key))";

impl Store {
    /// Register a job for every stage (keeping existing ones) and mark the jobs of stages
    /// already trained as done.
    pub fn ensure_jobs(&self, jobs: &[JobSpec]) -> Result<(), StoreError> {
        let insert = self.sql(&backend::insert_or_keep(
            self.backend,
            "job",
            &["\"key\"", "parent_key", "chain", "stage", "comment"],
            &["\"key\""],
        ));
        let done = self.sql(
            "UPDATE job SET state = 'done' WHERE state <> 'done' AND EXISTS \
             (SELECT 1 FROM trained_model t WHERE t.\"key\" = job.\"key\")",
        );
        on_pool!(self, pool => async {
            let mut tx = pool.begin().await?;
            for job in jobs {
                sqlx::query(&insert)
                    .bind(&job.key)
                    .bind(&job.parent_key)
                    .bind(&job.chain)
                    .bind(job.stage)
                    .bind(&job.comment)
                    .execute(&mut *tx)
                    .await?;
            }
            sqlx::query(&done).execute(&mut *tx).await?;
            tx.commit().await
        })
    }

    /// Claim one claimable job among `keys` for `lease`, in random order; `None` when no
    /// job is claimable now.
    pub fn claim(
        &self,
        keys: &[String],
        worker: &Worker,
        lease: Duration,
    ) -> Result<Option<Claim>, StoreError> {
        if keys.is_empty() {
            return Ok(None);
        }
        let random = match self.backend {
            Backend::MySql => "RAND()",
            _ => "random()",
        };
        // Servers lock the row picked and skip rows other workers are claiming.
        let lock = match self.backend {
            Backend::Sqlite => "",
            _ => " FOR UPDATE SKIP LOCKED",
        };
        let pick = self.sql(&format!(
            "SELECT j.\"key\" FROM job j WHERE j.\"key\" IN {} AND {CLAIMABLE} \
             ORDER BY {random} LIMIT 1{lock}",
            in_list(keys.len())
        ));
        let count = self.sql(&format!(
            "SELECT COUNT(*) FROM job j WHERE j.\"key\" IN {} AND {CLAIMABLE}",
            in_list(keys.len())
        ));
        let take = self.sql(
            "UPDATE job SET state = 'running', token = token + 1, attempts = attempts + 1, \
             worker_host = ?, worker_pid = ?, lease_expires = ?, started_at = ?, \
             finished_at = NULL, error_message = NULL, error_traceback = NULL \
             WHERE \"key\" = ? AND (state = 'pending' OR (state = 'running' AND lease_expires < ?))",
        );
        let read = self.sql(
            "SELECT token, attempts, checkpoint_uri, checkpoint_sha256, checkpoint_epoch \
             FROM job WHERE \"key\" = ?",
        );
        for _ in 0..50 {
            let t = now();
            let claimed = on_pool!(self, pool => async {
                let mut tx = pool.begin().await?;
                let mut query = sqlx::query(&pick);
                for key in keys {
                    query = query.bind(key);
                }
                let picked = query.bind(t).fetch_optional(&mut *tx).await?;
                let Some(row) = picked else {
                    tx.rollback().await?;
                    return Ok(None);
                };
                let key = row.text("key")?;
                let done = sqlx::query(&take)
                    .bind(&worker.host)
                    .bind(worker.pid)
                    .bind(t + lease.as_secs_f64())
                    .bind(t)
                    .bind(&key)
                    .bind(t)
                    .execute(&mut *tx)
                    .await?;
                if done.rows_affected() != 1 {
                    tx.rollback().await?;
                    return Ok(Some(None));
                }
                let row = sqlx::query(&read).bind(&key).fetch_one(&mut *tx).await?;
                let checkpoint = match row.maybe_text("checkpoint_uri")? {
                    Some(uri) => Some(CheckpointRef {
                        uri,
                        sha256: row.maybe_text("checkpoint_sha256")?.unwrap_or_default(),
                        epoch: row.maybe_int("checkpoint_epoch")?.unwrap_or_default(),
                    }),
                    None => None,
                };
                let claim = Claim {
                    key,
                    token: row.int("token")?,
                    attempts: row.int("attempts")?,
                    checkpoint,
                };
                tx.commit().await?;
                Ok(Some(Some(claim)))
            })?;
            match claimed {
                Some(Some(claim)) => return Ok(Some(claim)),
                // Another worker took the job between the pick and the update.
                Some(None) => continue,
                None => {}
            }
            // Nothing picked: rows other workers hold locked are skipped, so look again
            // without locks before saying nothing is claimable.
            let t = now();
            let left: i64 = on_pool!(self, pool => async {
                let mut query = sqlx::query(&count);
                for key in keys {
                    query = query.bind(key);
                }
                query.bind(t).fetch_one(pool).await?.try_get::<i64, _>(0)
            })?;
            if left == 0 {
                return Ok(None);
            }
            let pause = rand::thread_rng().gen_range(5..40);
            std::thread::sleep(Duration::from_millis(pause));
        }
        Ok(None)
    }

    /// Extend the lease of `claim` to `lease` from now; `false` when the job is no longer
    /// this claim's (its lease expired and another worker took it).
    pub fn heartbeat(&self, claim: &Claim, lease: Duration) -> Result<bool, StoreError> {
        let sql = self.sql(
            "UPDATE job SET lease_expires = ? \
             WHERE \"key\" = ? AND token = ? AND state = 'running'",
        );
        let until = now() + lease.as_secs_f64();
        on_pool!(self, pool => async {
            let done = sqlx::query(&sql)
                .bind(until)
                .bind(&claim.key)
                .bind(claim.token)
                .execute(pool)
                .await?;
            Ok(done.rows_affected() == 1)
        })
    }

    /// Store the trained model of `claim` and mark its job done, in one transaction fenced
    /// by the claim's token: `false` (and nothing written) when the claim was taken over.
    pub fn complete(
        &self,
        claim: &Claim,
        row: &TrainedRow,
        fabrikant: &Fabrikant,
        provenance: &str,
    ) -> Result<bool, StoreError> {
        let fence = self.sql(
            "UPDATE job SET state = 'done', finished_at = ?, checkpoint_uri = NULL, \
             checkpoint_sha256 = NULL, checkpoint_epoch = NULL \
             WHERE \"key\" = ? AND token = ? AND state = 'running'",
        );
        let insert = self.sql(super::INSERT_TRAINED);
        let t = now();
        on_pool!(self, pool => async {
            let mut tx = pool.begin().await?;
            let fenced = sqlx::query(&fence)
                .bind(t)
                .bind(&claim.key)
                .bind(claim.token)
                .execute(&mut *tx)
                .await?;
            if fenced.rows_affected() != 1 {
                tx.rollback().await?;
                return Ok(false);
            }
            bind_trained!(sqlx::query(&insert), row, fabrikant, provenance)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(true)
        })
    }

    /// Record that `claim` failed with `message` (its first line is what status shows) and
    /// the full `traceback`; ignored when the claim was taken over. With `forget_checkpoint`
    /// (it could not be read), a retry starts the stage from its first epoch.
    pub fn fail(
        &self,
        claim: &Claim,
        message: &str,
        traceback: &str,
        forget_checkpoint: bool,
    ) -> Result<(), StoreError> {
        let forget = match forget_checkpoint {
            true => ", checkpoint_uri = NULL, checkpoint_sha256 = NULL, checkpoint_epoch = NULL",
            false => "",
        };
        let sql = self.sql(&format!(
            "UPDATE job SET state = 'error', finished_at = ?, error_message = ?, \
             error_traceback = ?{forget} WHERE \"key\" = ? AND token = ? AND state = 'running'",
        ));
        on_pool!(self, pool => async {
            sqlx::query(&sql)
                .bind(now())
                .bind(message)
                .bind(traceback)
                .bind(&claim.key)
                .bind(claim.token)
                .execute(pool)
                .await
                .map(|_| ())
        })
    }

    /// Record `checkpoint` as the job's last, fenced by the claim. `None` when the claim
    /// was taken over (nothing is written); else the URI of the checkpoint it replaces, if
    /// any, for the caller to remove.
    pub fn set_checkpoint(
        &self,
        claim: &Claim,
        checkpoint: &CheckpointRef,
    ) -> Result<Option<Option<String>>, StoreError> {
        let read = self.sql(
            "SELECT checkpoint_uri FROM job WHERE \"key\" = ? AND token = ? AND state = 'running'",
        );
        let update = self.sql(
            "UPDATE job SET checkpoint_uri = ?, checkpoint_sha256 = ?, checkpoint_epoch = ? \
             WHERE \"key\" = ? AND token = ? AND state = 'running'",
        );
        on_pool!(self, pool => async {
            let mut tx = pool.begin().await?;
            let Some(row) = sqlx::query(&read)
                .bind(&claim.key)
                .bind(claim.token)
                .fetch_optional(&mut *tx)
                .await?
            else {
                tx.rollback().await?;
                return Ok(None);
            };
            let previous = row.maybe_text("checkpoint_uri")?;
            sqlx::query(&update)
                .bind(&checkpoint.uri)
                .bind(&checkpoint.sha256)
                .bind(checkpoint.epoch)
                .bind(&claim.key)
                .bind(claim.token)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(Some(previous))
        })
    }

    /// Give a claimed job back (the worker stops before finishing it): pending again.
    pub fn release(&self, claim: &Claim) -> Result<(), StoreError> {
        let sql = self.sql(
            "UPDATE job SET state = 'pending', lease_expires = NULL \
             WHERE \"key\" = ? AND token = ? AND state = 'running'",
        );
        on_pool!(self, pool => async {
            sqlx::query(&sql)
                .bind(&claim.key)
                .bind(claim.token)
                .execute(pool)
                .await
                .map(|_| ())
        })
    }

    /// Put the failed jobs among `keys` back in the queue; returns how many.
    pub fn retry_errors(&self, keys: &[String]) -> Result<u64, StoreError> {
        if keys.is_empty() {
            return Ok(0);
        }
        let sql = self.sql(&format!(
            "UPDATE job SET state = 'pending', error_message = NULL, error_traceback = NULL, \
             finished_at = NULL WHERE state = 'error' AND \"key\" IN {}",
            in_list(keys.len())
        ));
        on_pool!(self, pool => async {
            let mut query = sqlx::query(&sql);
            for key in keys {
                query = query.bind(key);
            }
            Ok(query.execute(pool).await?.rows_affected())
        })
    }

    /// The state of every job by key; empty for a schema made before jobs existed.
    pub fn job_states(&self) -> Result<std::collections::HashMap<String, String>, StoreError> {
        if self.schema_version()? < 3 {
            return Ok(Default::default());
        }
        on_pool!(self, pool => async {
            let rows = sqlx::query("SELECT \"key\", state FROM job").fetch_all(pool).await?;
            rows.iter()
                .map(|r| Ok((r.text("key")?, r.text("state")?)))
                .collect::<Result<_, sqlx::Error>>()
        })
    }

    /// Every job, in chain and stage order.
    pub fn jobs(&self) -> Result<Vec<JobRow>, StoreError> {
        let sql = "SELECT \"key\", chain, stage, comment, state, attempts, worker_host, \
                   worker_pid, lease_expires, started_at, finished_at, error_message, \
                   error_traceback FROM job ORDER BY chain, stage, \"key\"";
        on_pool!(self, pool => async {
            let rows = sqlx::query(sql).fetch_all(pool).await?;
            rows.iter()
                .map(|r| {
                    Ok(JobRow {
                        key: r.text("key")?,
                        chain: r.text("chain")?,
                        stage: r.int("stage")?,
                        comment: r.text("comment")?,
                        state: r.text("state")?,
                        attempts: r.int("attempts")?,
                        worker_host: r.maybe_text("worker_host")?,
                        worker_pid: r.maybe_int("worker_pid")?,
                        lease_expires: r.maybe_float("lease_expires")?,
                        started_at: r.maybe_float("started_at")?,
                        finished_at: r.maybe_float("finished_at")?,
                        error_message: r.maybe_text("error_message")?,
                        error_traceback: r.maybe_text("error_traceback")?,
                    })
                })
                .collect::<Result<Vec<_>, sqlx::Error>>()
        })
    }
}
