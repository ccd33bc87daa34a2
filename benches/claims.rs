//! Job claims per second: workers claim stages of 3-stage chains under leases and store a
//! (dummy) result for each, fenced by the claim, until every stage is done, on the local
//! PostgreSQL and MariaDB servers, with 1 and with 8 workers.
//!
//! `cargo bench --bench claims` (with libtorch on the library path, as for `cargo test`).
//! Servers: `BT_TEST_POSTGRES_URL` and `BT_TEST_MYSQL_URL`, defaulting to the local ones the
//! tests use; `BT_BENCH_CHAINS` sets the number of chains (default 200, so 600 jobs).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bias_transfer_rs::store::{
    ArtifactRef, ConfigKeys, ConfigRow, ConfigTable, Fabrikant, JobSpec, Store, TrainedRow, Worker,
};

const LEASE: Duration = Duration::from_secs(60);

fn main() {
    let chains: usize = std::env::var("BT_BENCH_CHAINS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(200);
    let servers = [
        (
            "PostgreSQL",
            std::env::var("BT_TEST_POSTGRES_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into()),
        ),
        (
            "MariaDB",
            std::env::var("BT_TEST_MYSQL_URL")
                .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into()),
        ),
    ];
    println!(
        "{chains} chains of 3 stages ({} jobs); claim + fenced store per job",
        3 * chains
    );
    println!(
        "{:<11} {:>7} {:>10} {:>12} {:>8}",
        "server", "workers", "seconds", "claims/s", "vs 1"
    );
    for (name, url) in servers {
        // Every store of this process opens the server `DATABASE_URL` names.
        std::env::set_var("DATABASE_URL", &url);
        let mut single = None;
        for workers in [1, 8] {
            let rate = match run(chains, workers) {
                Ok(rate) => rate,
                Err(e) => {
                    println!("{name:<11} {workers:>7} skipped: {e}");
                    break;
                }
            };
            let base = *single.get_or_insert(rate);
            println!(
                "{name:<11} {workers:>7} {:>10.2} {rate:>12.1} {:>7.2}x",
                (3 * chains) as f64 / rate,
                rate / base
            );
        }
    }
}

/// Register `chains` chains, let `workers` threads (each with its own connection pool)
/// claim and complete every job, and return the jobs done per second.
fn run(chains: usize, workers: usize) -> Result<f64, String> {
    let work = tempfile::tempdir().map_err(|e| e.to_string())?;
    let schema = format!("bt_bench_claims_{}_{workers}", std::process::id());
    let store = Store::open(work.path(), &schema).map_err(|e| e.to_string())?;
    let fabrikant = Fabrikant::from_env();
    let configs: Vec<ConfigRow> = [
        ConfigTable::Dataset,
        ConfigTable::Model,
        ConfigTable::Trainer,
    ]
    .into_iter()
    .map(|table| ConfigRow {
        table,
        fn_name: "bench".into(),
        hash: "0".into(),
        legacy_hash: String::new(),
        config: "{}".into(),
        comment: String::new(),
    })
    .collect();
    store
        .register(&fabrikant, &[0], &configs, &[])
        .map_err(|e| e.to_string())?;
    let mut jobs = Vec::new();
    for chain in 0..chains {
        for stage in 0..3 {
            jobs.push(JobSpec {
                key: format!("{chain:08}-{stage}"),
                parent_key: (stage > 0).then(|| format!("{chain:08}-{}", stage - 1)),
                chain: format!("chain {chain}"),
                stage,
                comment: String::new(),
            });
        }
    }
    store.ensure_jobs(&jobs).map_err(|e| e.to_string())?;
    let keys: Vec<String> = jobs.iter().map(|j| j.key.clone()).collect();
    let parents: std::collections::HashMap<&str, Option<String>> = jobs
        .iter()
        .map(|j| (j.key.as_str(), j.parent_key.clone()))
        .collect();

    let done = AtomicUsize::new(0);
    let start = Instant::now();
    let result: Result<(), String> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| -> Result<(), String> {
                    let store = Store::open(work.path(), &schema).map_err(|e| e.to_string())?;
                    let worker = Worker::this_process();
                    while done.load(Ordering::SeqCst) < keys.len() {
                        let claim = store
                            .claim(&keys, &worker, LEASE)
                            .map_err(|e| e.to_string())?;
                        let Some(claim) = claim else {
                            // Parents still running on other workers.
                            std::thread::sleep(Duration::from_millis(1));
                            continue;
                        };
                        let row = TrainedRow {
                            key: claim.key.clone(),
                            stage: ConfigKeys {
                                dataset: ("bench".into(), "0".into()),
                                model: ("bench".into(), "0".into()),
                                trainer: ("bench".into(), "0".into()),
                                seed: 0,
                            },
                            parent_key: parents[claim.key.as_str()].clone(),
                            comment: String::new(),
                            score: 0.0,
                            output: "[]".into(),
                            weights: ArtifactRef {
                                uri: format!("local:{}", claim.key),
                                sha256: String::new(),
                                size: 0,
                            },
                        };
                        if store
                            .complete(&claim, &row, &fabrikant, "{}")
                            .map_err(|e| e.to_string())?
                        {
                            done.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .try_for_each(|h| h.join().map_err(|_| "a worker panicked".to_string())?)
    });
    let seconds = start.elapsed().as_secs_f64();
    drop(store);
    drop_schema(&schema);
    result?;
    Ok(keys.len() as f64 / seconds)
}

/// Drop the benchmark's schema with the server's own client.
fn drop_schema(schema: &str) {
    let url = std::env::var("DATABASE_URL").unwrap_or_default();
    let status = match url.split(':').next() {
        Some("postgres" | "postgresql") => std::process::Command::new("psql")
            .env("PGOPTIONS", "--client-min-messages=warning")
            .args([
                url.as_str(),
                "-qc",
                &format!("DROP SCHEMA \"{schema}\" CASCADE"),
            ])
            .status(),
        _ => {
            let parsed = url::Url::parse(&url).expect("a MySQL URL");
            std::process::Command::new("mariadb")
                .args(["-h", parsed.host_str().unwrap_or("127.0.0.1")])
                .args(["-P", &parsed.port().unwrap_or(3306).to_string()])
                .args(["-u", parsed.username()])
                .args(parsed.password().map(|p| format!("--password={p}")))
                .args(["-e", &format!("DROP DATABASE `{schema}`")])
                .status()
        }
    };
    if !status.is_ok_and(|s| s.success()) {
        eprintln!("could not drop schema `{schema}`; drop it by hand");
    }
}
