//! One worker: check a plan, register it, train every chain stage in order, persist.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value as Json};

use crate::config::Value;
use crate::data::{DataError, Dataset, DatasetSpec, RawData};
use crate::store::{
    Artifacts, ChainStageRow, CheckpointRef, Claim, ConfigKeys, ConfigRow, ConfigTable, Fabrikant,
    JobSpec, Store, StoreError, TrainedRow, Worker,
};
use crate::train::throughput::{self, Measure};
use crate::train::trained::TrainedModel;
use crate::train::trainer::{train_stage, CheckpointSink, StageInput};
use crate::train::{ModelSpec, TrainerSpec, TrainingError};

/// Errors of a run, by component.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("plan: {0}")]
    Plan(String),
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Many(Vec<RunError>),
    #[error("chain `{chain}`, stage {stage} (`{comment}`): {source}")]
    Stage {
        chain: String,
        stage: usize,
        comment: String,
        source: Box<RunError>,
    },
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Training(#[from] TrainingError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A config with the function it configures.
#[derive(Clone, Debug)]
pub struct FnConfig {
    pub fn_name: String,
    pub config: Value,
    pub comment: String,
}

impl FnConfig {
    /// The `(fn, hash)` key of the config.
    pub fn key(&self) -> (String, String) {
        (self.fn_name.clone(), self.config.hash())
    }
}

/// One experiment: a stage of a chain.
#[derive(Clone, Debug)]
pub struct Stage {
    pub dataset: FnConfig,
    pub model: FnConfig,
    pub trainer: FnConfig,
    pub seed: i64,
    pub comment: String,
}

/// A named chain of stages, each starting from the previous stage's weights.
#[derive(Clone, Debug)]
pub struct Chain {
    pub name: String,
    pub seed: i64,
    pub stages: Vec<Stage>,
}

/// A stage of a chain with its index, key and parent stage's key.
type Keyed<'a> = (&'a Chain, usize, &'a Stage, String, Option<String>);

/// Everything a recipe asks to run.
#[derive(Clone, Debug)]
pub struct Plan {
    pub chains: Vec<Chain>,
}

/// Where and how a run stores and reports.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub work_dir: PathBuf,
    pub schema: String,
    /// Replaces every dataset's `data_dir` (from `BT_DATA_DIR`).
    pub data_dir: Option<PathBuf>,
    pub quiet: bool,
    /// JSON stored with every trained model: pinned commits, versions.
    pub provenance: String,
    /// Polled between batches; `true` stops the run with [`TrainingError::Interrupted`].
    pub interrupted: fn() -> bool,
    /// How long a claim holds a job without a heartbeat (`BT_LEASE_SECONDS`).
    pub lease: Duration,
    /// Wait for stages running elsewhere instead of exiting when nothing is claimable.
    pub wait: bool,
    /// Queue the stages that failed before again.
    pub retry_errors: bool,
    /// Caps for trying a recipe quickly (`BT_SMOKE`); they enter every stage's key.
    pub smoke: Option<Smoke>,
}

/// A smoke run: at most `epochs` epochs per stage and `batches` batches per pass over a
/// split. Its caps enter the stage keys and the provenance, so its results never pass for
/// those of the full recipe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Smoke {
    pub epochs: usize,
    pub batches: usize,
}

impl Smoke {
    /// `BT_SMOKE`: unset, empty or `0` for a full run; `1` for one epoch of 10 batches;
    /// `E,B` for `E` epochs of `B` batches.
    pub fn from_env() -> Result<Option<Smoke>, RunError> {
        let text = std::env::var("BT_SMOKE").unwrap_or_default();
        let bad = || {
            RunError::Plan(format!(
                "`BT_SMOKE={text}` is not `1` (one epoch of 10 batches) or `EPOCHS,BATCHES` \
                 (two whole numbers from 1)"
            ))
        };
        match text.trim() {
            "" | "0" => Ok(None),
            "1" => Ok(Some(Smoke {
                epochs: 1,
                batches: 10,
            })),
            caps => {
                let (e, b) = caps.split_once(',').ok_or_else(bad)?;
                let number = |t: &str| t.trim().parse::<usize>().ok().filter(|n| *n > 0);
                Ok(Some(Smoke {
                    epochs: number(e).ok_or_else(bad)?,
                    batches: number(b).ok_or_else(bad)?,
                }))
            }
        }
    }
}

/// The lease of a claim: `BT_LEASE_SECONDS`, default 60.
pub fn lease_from_env() -> Result<Duration, RunError> {
    match std::env::var("BT_LEASE_SECONDS") {
        Ok(text) if !text.trim().is_empty() => text
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|s| *s >= 1.0 && *s <= 86_400.0)
            .map(Duration::from_secs_f64)
            .ok_or_else(|| {
                RunError::Plan(format!(
                    "`BT_LEASE_SECONDS={text}` is not a number of seconds from 1 to 86400"
                ))
            }),
        _ => Ok(Duration::from_secs(60)),
    }
}

/// An interrupt check that never fires.
pub fn never_interrupted() -> bool {
    false
}

/// The state of one chain stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Not trained yet.
    New,
    /// Trained by an earlier run.
    Done,
    /// Trained by this run.
    Trained,
    /// Being trained by another worker.
    Running,
    /// Failed; `--retry-errors` queues it again.
    Failed,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::New => "new",
            Status::Done => "done",
            Status::Trained => "trained",
            Status::Running => "running",
            Status::Failed => "error",
        }
    }
}

/// One line of a plan or summary.
#[derive(Clone, Debug)]
pub struct StageReport {
    pub chain: String,
    pub seed: i64,
    pub stage: usize,
    pub comment: String,
    pub key: String,
    pub hashes: ConfigKeys,
    pub status: Status,
    pub score: Option<f64>,
    pub output: Option<Json>,
    /// Why this stage cannot run in this build, if it cannot.
    pub problem: Option<String>,
}

impl StageReport {
    /// The report as JSON, for the bindings.
    pub fn to_json(&self) -> Json {
        json!({
            "chain": self.chain, "seed": self.seed, "stage": self.stage,
            "comment": self.comment, "key": self.key, "status": self.status.as_str(),
            "dataset_hash": self.hashes.dataset.1, "model_hash": self.hashes.model.1,
            "trainer_hash": self.hashes.trainer.1, "score": self.score,
            "output": self.output, "problem": self.problem,
        })
    }
}

impl Plan {
    /// Read a plan from its value tree:
    /// `{"chains": [{"name", "seed", "stages": [{"dataset", "model", "trainer", "seed",
    /// "comment"}]}]}`, each config being `{"fn", "config", "comment"}`.
    pub fn from_value(value: &Value) -> Result<Plan, RunError> {
        let chains = list(value.get("chains"), "chains")?;
        let chains = chains
            .iter()
            .map(chain_from_value)
            .collect::<Result<_, _>>()?;
        Ok(Plan { chains })
    }

    /// The plan a smoke run stores: every chain's name marked ` [smoke]`, so its stages
    /// are never listed as the chain's own.
    fn for_smoke(&self, smoke: Option<Smoke>) -> std::borrow::Cow<'_, Plan> {
        match smoke {
            None => std::borrow::Cow::Borrowed(self),
            Some(_) => {
                let mut plan = self.clone();
                for chain in &mut plan.chains {
                    chain.name.push_str(" [smoke]");
                }
                std::borrow::Cow::Owned(plan)
            }
        }
    }

    /// Each stage with its key and its parent's key, in chain order.
    fn keyed(&self, smoke: Option<Smoke>) -> Vec<Keyed<'_>> {
        let mut out = Vec::new();
        for chain in &self.chains {
            let mut parent: Option<String> = None;
            for (i, stage) in chain.stages.iter().enumerate() {
                let key = stage_key(stage, parent.as_deref(), smoke);
                out.push((chain, i, stage, key.clone(), parent.replace(key)));
            }
        }
        out
    }
}

fn list<'a>(value: Option<&'a Value>, what: &str) -> Result<&'a [Value], RunError> {
    match value {
        Some(Value::List(items)) => Ok(items),
        _ => Err(RunError::Plan(format!("`{what}` must be a list"))),
    }
}

fn text(value: Option<&Value>, what: &str) -> Result<String, RunError> {
    match value {
        Some(Value::Str(s)) => Ok(s.clone()),
        Some(Value::None) | None => Ok(String::new()),
        _ => Err(RunError::Plan(format!("`{what}` must be a string"))),
    }
}

fn int(value: Option<&Value>, what: &str) -> Result<i64, RunError> {
    match value {
        Some(Value::Int(i)) => Ok(*i),
        _ => Err(RunError::Plan(format!("`{what}` must be an integer"))),
    }
}

fn fn_config(value: Option<&Value>, what: &str) -> Result<FnConfig, RunError> {
    let value = value.ok_or_else(|| RunError::Plan(format!("stage lacks `{what}`")))?;
    let config = value
        .get("config")
        .cloned()
        .unwrap_or(Value::Dict(Vec::new()));
    if !matches!(config, Value::Dict(_)) {
        return Err(RunError::Plan(format!("`{what}.config` must be a dict")));
    }
    Ok(FnConfig {
        fn_name: text(value.get("fn"), &format!("{what}.fn"))?,
        comment: text(value.get("comment"), &format!("{what}.comment"))?,
        config,
    })
}

fn chain_from_value(value: &Value) -> Result<Chain, RunError> {
    let name = text(value.get("name"), "chain name")?;
    let stages = list(value.get("stages"), "stages")?
        .iter()
        .map(|s| {
            Ok(Stage {
                dataset: fn_config(s.get("dataset"), "dataset")?,
                model: fn_config(s.get("model"), "model")?,
                trainer: fn_config(s.get("trainer"), "trainer")?,
                seed: int(s.get("seed"), "seed")?,
                comment: text(s.get("comment"), "comment")?,
            })
        })
        .collect::<Result<Vec<_>, RunError>>()?;
    if stages.is_empty() {
        return Err(RunError::Plan(format!("chain `{name}` has no stages")));
    }
    Ok(Chain {
        seed: int(value.get("seed"), "chain seed")?,
        name,
        stages,
    })
}

/// The key of a stage: its configs' keys, its seed and its parent stage's key, and the
/// caps of a smoke run.
pub fn stage_key(stage: &Stage, parent: Option<&str>, smoke: Option<Smoke>) -> String {
    let pair = |c: &FnConfig| {
        let (f, h) = c.key();
        Value::List(vec![Value::Str(f), Value::Str(h)])
    };
    let mut key = Value::dict([
        ("dataset", pair(&stage.dataset)),
        ("model", pair(&stage.model)),
        ("trainer", pair(&stage.trainer)),
        ("seed", Value::Int(stage.seed)),
        (
            "parent",
            parent.map_or(Value::None, |p| Value::Str(p.to_string())),
        ),
    ]);
    if let (Some(smoke), Value::Dict(entries)) = (smoke, &mut key) {
        let caps = [smoke.epochs, smoke.batches].map(|n| Value::Int(n as i64));
        entries.push((Value::Str("smoke".into()), Value::List(caps.to_vec())));
    }
    key.hash()
}

fn config_keys(stage: &Stage) -> ConfigKeys {
    ConfigKeys {
        dataset: stage.dataset.key(),
        model: stage.model.key(),
        trainer: stage.trainer.key(),
        seed: stage.seed,
    }
}

/// A stage's checked parts, ready to train.
struct Checked {
    dataset: DatasetSpec,
    data: RawData,
    model: ModelSpec,
    trainer: TrainerSpec,
}

/// Datasets read during checking, by the path of their training images.
type DataCache = HashMap<PathBuf, RawData>;

/// Check every part of a stage, reading its data (once per dataset); all problems found.
fn check_stage(
    stage: &Stage,
    options: &RunOptions,
    cache: &mut DataCache,
) -> Result<Checked, Vec<RunError>> {
    let dataset = DatasetSpec::from_config(&stage.dataset.config).map_err(RunError::from);
    let model = ModelSpec::from_config(&stage.model.config).map_err(RunError::from);
    let trainer = TrainerSpec::from_config(&stage.trainer.config).map_err(RunError::from);
    let data = dataset.as_ref().ok().map(|spec| {
        load_data(
            spec,
            (&options.work_dir, options.data_dir.as_deref()),
            cache,
        )
    });
    match (dataset, model, trainer, data) {
        (Ok(dataset), Ok(model), Ok(trainer), Some(Ok(data))) => {
            fits(&dataset, &model).map_err(|e| vec![e])?;
            Ok(Checked {
                dataset,
                data,
                model,
                trainer,
            })
        }
        (dataset, model, trainer, data) => Err([
            dataset.err(),
            data.and_then(Result::err),
            model.err(),
            trainer.err(),
        ]
        .into_iter()
        .flatten()
        .collect()),
    }
}

/// Check that the model fits the dataset: its classes, image size and channels.
fn fits(dataset: &DatasetSpec, model: &ModelSpec) -> Result<(), RunError> {
    let family = dataset.family;
    let side = family.shape()[1] as i64;
    let problem = if model.num_classes != family.num_classes() {
        format!(
            "`num_classes={}`, but `{}` has {} classes",
            model.num_classes,
            family.name(),
            family.num_classes()
        )
    } else if model.input_size != side {
        format!(
            "`input_size={}`, but `{}` images are {side} px",
            model.input_size,
            family.name()
        )
    } else {
        return Ok(dataset.check_channels(model.in_channels as usize)?);
    };
    Err(RunError::Training(TrainingError::Model(problem)))
}

fn load_data(
    spec: &DatasetSpec,
    (work_dir, data_dir): (&Path, Option<&Path>),
    cache: &mut DataCache,
) -> Result<RawData, RunError> {
    let files = spec.locate(work_dir, data_dir)?;
    let data = match cache.get(files.key()) {
        Some(data) => data.clone(),
        None => {
            let data = RawData::load(&files, spec.family)?;
            cache.insert(files.key().to_path_buf(), data.clone());
            data
        }
    };
    spec.check_split(data.train.images.count)?;
    let corrupted = spec.locate_corrupted(work_dir, data_dir)?;
    Ok(RawData { corrupted, ..data })
}

fn in_stage(chain: &Chain, i: usize, stage: &Stage) -> impl FnOnce(RunError) -> RunError {
    let (chain, comment) = (chain.name.clone(), stage.comment.clone());
    move |e| RunError::Stage {
        chain,
        stage: i,
        comment,
        source: Box::new(e),
    }
}

/// One error for a list of problems: the first's kind, every message.
fn all_problems(mut problems: Vec<RunError>) -> RunError {
    match problems.len() {
        1 => problems.remove(0),
        _ => RunError::Many(problems),
    }
}

/// Describe a plan against the database without writing anything.
///
/// With `check`, every stage is also checked as a run would (reading its data) and its
/// problems are reported; a run checks by itself, so it describes without.
pub fn describe(
    plan: &Plan,
    options: &RunOptions,
    check: bool,
) -> Result<Vec<StageReport>, RunError> {
    let store = Store::open_existing(&options.work_dir, &options.schema)?;
    let states = match &store {
        Some(s) => s.job_states()?,
        None => HashMap::new(),
    };
    let mut cache = DataCache::new();
    let plan = plan.for_smoke(options.smoke);
    plan.keyed(options.smoke)
        .into_iter()
        .map(|(chain, i, stage, key, _)| {
            let done = match &store {
                Some(s) => s.trained(&key)?,
                None => None,
            };
            let problem = match check {
                true => check_stage(stage, options, &mut cache).err(),
                false => None,
            };
            let problem = problem.map(|e| all_problems(e).to_string());
            let status = match (&done, states.get(&key).map(String::as_str)) {
                (Some(_), _) => Status::Done,
                (None, Some("running")) => Status::Running,
                (None, Some("error")) => Status::Failed,
                (None, _) => Status::New,
            };
            Ok(report(chain, i, stage, key, done, status, problem))
        })
        .collect()
}

fn report(
    chain: &Chain,
    i: usize,
    stage: &Stage,
    key: String,
    done: Option<TrainedRow>,
    status: Status,
    problem: Option<String>,
) -> StageReport {
    let (score, output) = match done {
        Some(row) => (Some(row.score), serde_json::from_str(&row.output).ok()),
        None => (None, None),
    };
    StageReport {
        chain: chain.name.clone(),
        seed: chain.seed,
        stage: i,
        comment: stage.comment.clone(),
        hashes: config_keys(stage),
        key,
        status,
        score,
        output,
        problem,
    }
}

/// Run a plan as one worker: check every stage, register the plan and its jobs, then claim
/// and train jobs until none is left that this worker can take.
pub fn run(plan: &Plan, options: &RunOptions) -> Result<Vec<StageReport>, RunError> {
    // 1. Check every stage before anything is written.
    let mut options = options.clone();
    if let Some(smoke) = options.smoke {
        options.provenance = with_smoke(&options.provenance, smoke)?;
        log::warn!(
            "smoke run: at most {} epochs of {} batches per stage; its results are kept \
             under their own keys",
            smoke.epochs,
            smoke.batches
        );
    }
    let options = &options;
    let plan = plan.for_smoke(options.smoke);
    let keyed = plan.keyed(options.smoke);
    let mut checked = Vec::with_capacity(keyed.len());
    let mut cache = DataCache::new();
    for (chain, i, stage, _, _) in &keyed {
        let parts = check_stage(stage, options, &mut cache).map_err(all_problems);
        checked.push(parts.map_err(in_stage(chain, *i, stage))?);
    }
    drop(cache);

    // 2. Register fabrikant, seeds, configs and chains in one transaction, and a job per
    //    stage. The artifact store is checked first: a missing bucket stops the run before
    //    the database is touched.
    let artifacts = Artifacts::open(&options.work_dir, &options.schema)?;
    let store = Store::open(&options.work_dir, &options.schema)?;
    let fabrikant = Fabrikant::from_env();
    register(&store, &fabrikant, &keyed)?;
    store.ensure_jobs(&job_specs(&keyed))?;
    let keys: Vec<String> = keyed.iter().map(|k| k.3.clone()).collect();
    if options.retry_errors {
        let n = store.retry_errors(&keys)?;
        log::info!("{n} failed stages are queued again");
    }

    // 3. Claim and train until nothing is claimable (with `wait`: until nothing is running
    //    or waiting on a running parent either).
    let worker = Worker::this_process();
    let mut trained = std::collections::HashSet::new();
    loop {
        let Some(claim) = store.claim(&keys, &worker, options.lease)? else {
            if options.wait && still_running(&store, &keyed)? {
                std::thread::sleep(options.lease.min(Duration::from_secs(1)));
                continue;
            }
            break;
        };
        let index = keys
            .iter()
            .position(|k| *k == claim.key)
            .unwrap_or_default();
        let (chain, i, stage, key, parent) = &keyed[index];
        let job = Job {
            store: &store,
            artifacts: &artifacts,
            options,
            claim: &claim,
            fabrikant: &fabrikant,
        };
        if job.run(chain, *i, stage, key, parent.clone(), &checked[index])? {
            trained.insert(claim.key.clone());
        }
    }

    // 4. Report every stage.
    let states = store.job_states()?;
    let reports: Vec<StageReport> = keyed
        .into_iter()
        .map(|(chain, i, stage, key, _)| {
            let row = store.trained(&key)?;
            let status = match (&row, states.get(&key).map(String::as_str)) {
                (Some(_), _) if trained.contains(&key) => Status::Trained,
                (Some(_), _) => Status::Done,
                (None, Some("running")) => Status::Running,
                (None, Some("error")) => Status::Failed,
                (None, _) => Status::New,
            };
            Ok(report(chain, i, stage, key, row, status, None))
        })
        .collect::<Result<_, RunError>>()?;
    if trained.is_empty() && reports.iter().all(|r| r.status == Status::Done) {
        log::info!(
            "all {} stages are already trained; nothing to do",
            reports.len()
        );
    }
    Ok(reports)
}

/// The provenance JSON with the smoke caps added, so a smoke result says what it is.
fn with_smoke(provenance: &str, smoke: Smoke) -> Result<String, RunError> {
    let mut value: Json = serde_json::from_str(provenance)
        .map_err(|e| RunError::Plan(format!("the provenance is not JSON: {e}")))?;
    match &mut value {
        Json::Object(map) => {
            map.insert(
                "smoke".into(),
                json!({"epochs": smoke.epochs, "batches": smoke.batches}),
            );
        }
        _ => return Err(RunError::Plan("the provenance is not a JSON object".into())),
    }
    Ok(value.to_string())
}

fn job_specs(keyed: &[Keyed<'_>]) -> Vec<JobSpec> {
    keyed
        .iter()
        .map(|(chain, i, stage, key, parent)| JobSpec {
            key: key.clone(),
            parent_key: parent.clone(),
            chain: chain.name.clone(),
            stage: *i as i64,
            comment: stage.comment.clone(),
        })
        .collect()
}

/// Whether a stage of the plan is running elsewhere, or waits for a parent that is
/// running or waiting in turn (not for one that failed).
fn still_running(store: &Store, keyed: &[Keyed<'_>]) -> Result<bool, RunError> {
    let states = store.job_states()?;
    let parents: HashMap<&str, Option<&str>> = keyed
        .iter()
        .map(|k| (k.3.as_str(), k.4.as_deref()))
        .collect();
    let live = |start: &str| {
        let mut key = start.to_string();
        loop {
            match states.get(&key).map(String::as_str) {
                Some("running") => return true,
                // A waiting stage whose parent just finished is claimable.
                Some("done") => return key != start,
                Some("pending") => match parents.get(key.as_str()).copied().flatten() {
                    Some(parent) => key = parent.to_string(),
                    None => return true,
                },
                _ => return false,
            }
        }
    };
    Ok(keyed.iter().any(|k| live(&k.3)))
}

/// A claimed job: train it under the claim's lease, then store it fenced by the claim.
struct Job<'a> {
    store: &'a Store,
    artifacts: &'a Artifacts,
    options: &'a RunOptions,
    claim: &'a Claim,
    fabrikant: &'a Fabrikant,
}

impl Job<'_> {
    /// Train and store the stage; `false` when another worker took the job over first.
    fn run(
        &self,
        chain: &Chain,
        i: usize,
        stage: &Stage,
        key: &str,
        parent: Option<String>,
        parts: &Checked,
    ) -> Result<bool, RunError> {
        // 1. An earlier attempt's checkpoint, if it left one; one that cannot be read fails
        //    the job and is forgotten, so a retry starts from the first epoch.
        let describe = in_stage(chain, i, stage);
        let resume = match &self.claim.checkpoint {
            Some(c) => match self.artifacts.fetch(&c.uri, &c.sha256) {
                Ok(path) => Some(path),
                Err(e) => {
                    let e = describe(RunError::Plan(format!(
                        "the checkpoint of an earlier attempt cannot be used ({e}); \
                         `--retry-errors` trains the stage again from its first epoch"
                    )));
                    self.store
                        .fail(self.claim, &e.to_string(), &format!("{e:?}"), true)?;
                    // Forgotten, it is an orphan: remove it if the store lets us.
                    if let Err(gone) = self.artifacts.remove(&c.uri) {
                        log::warn!("the unusable checkpoint stays: {gone}");
                    }
                    return Err(e);
                }
            },
            None => None,
        };

        // 2. Heartbeats keep the lease while training; a lost lease stops the training.
        //    Each epoch's checkpoint replaces the last one, fenced by the claim.
        let lost = AtomicBool::new(false);
        let stop = AtomicBool::new(false);
        let interrupted = || (self.options.interrupted)() || lost.load(Ordering::Relaxed);
        let current = std::sync::Mutex::new(self.claim.checkpoint.as_ref().map(|c| c.uri.clone()));
        let keep = |epoch: usize, path: &Path| -> Result<(), TrainingError> {
            self.keep_checkpoint(key, epoch, path, &current, &lost)
        };
        let result = std::thread::scope(|scope| {
            scope.spawn(|| self.heartbeats(&stop, &lost));
            let hooks = Hooks {
                interrupted: &interrupted,
                resume: resume.as_deref(),
                on_checkpoint: Some(&keep),
            };
            let result = train_one(
                self.store,
                self.artifacts,
                self.options,
                (chain, i, stage, key, parent),
                parts,
                hooks,
            );
            stop.store(true, Ordering::Relaxed);
            result
        });

        // 3. Store the result fenced by the claim, or record the failure.
        let lost = lost.load(Ordering::Relaxed);
        let checkpoint = current.into_inner().unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(row) => {
                if self.store.complete(
                    self.claim,
                    &row,
                    self.fabrikant,
                    &self.options.provenance,
                )? {
                    // The stage is stored: a checkpoint left behind is only an orphan.
                    if let Some(uri) = checkpoint {
                        if let Err(e) = self.artifacts.remove(&uri) {
                            log::warn!("the finished stage's checkpoint stays: {e}");
                        }
                    }
                    return Ok(true);
                }
                self.drop_orphan(&row)?;
                log::warn!(
                    "`{}` stage {i}: another worker took this stage over",
                    chain.name
                );
                Ok(false)
            }
            Err(RunError::Training(TrainingError::Interrupted)) if lost => {
                log::warn!(
                    "`{}` stage {i}: the lease was lost to another worker",
                    chain.name
                );
                Ok(false)
            }
            Err(e @ RunError::Training(TrainingError::Interrupted)) => {
                self.store.release(self.claim)?;
                Err(describe(e))
            }
            Err(e) => {
                let e = describe(e);
                let message = e.to_string();
                let first = message.lines().next().unwrap_or_default();
                self.store
                    .fail(self.claim, first, &format!("{e:?}"), false)?;
                Err(e)
            }
        }
    }

    /// Store the checkpoint of `epoch` and make it the job's, removing the one it replaces;
    /// when the claim was taken over, the new one is removed and training stops.
    fn keep_checkpoint(
        &self,
        key: &str,
        epoch: usize,
        path: &Path,
        current: &std::sync::Mutex<Option<String>>,
        lost: &AtomicBool,
    ) -> Result<(), TrainingError> {
        let failed = |e: StoreError| TrainingError::Trainer(format!("checkpoint: {e}"));
        let stored = self
            .artifacts
            .put(&format!("{key}-checkpoint"), "safetensors", path)
            .map_err(failed)?;
        let reference = CheckpointRef {
            uri: stored.uri.clone(),
            sha256: stored.sha256,
            epoch: epoch as i64,
        };
        match self
            .store
            .set_checkpoint(self.claim, &reference)
            .map_err(failed)?
        {
            None => {
                self.artifacts.remove(&stored.uri).map_err(failed)?;
                lost.store(true, Ordering::Relaxed);
                Err(TrainingError::Interrupted)
            }
            Some(previous) => {
                let mut current = current.lock().unwrap_or_else(|e| e.into_inner());
                *current = Some(stored.uri.clone());
                if let Some(old) = previous.filter(|old| *old != stored.uri) {
                    self.artifacts.remove(&old).map_err(failed)?;
                }
                Ok(())
            }
        }
    }

    /// Extend the lease every third of it until `stop`; set `lost` when it was taken over.
    fn heartbeats(&self, stop: &AtomicBool, lost: &AtomicBool) {
        let lease = self.options.lease;
        let store = match Store::open(&self.options.work_dir, &self.options.schema) {
            Ok(store) => store,
            Err(e) => {
                log::warn!("no heartbeats for `{}`: {e}", self.claim.key);
                return;
            }
        };
        let mut last = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50).min(lease / 10));
            if last.elapsed() < lease / 3 {
                continue;
            }
            last = Instant::now();
            match store.heartbeat(self.claim, lease) {
                Ok(true) => {}
                Ok(false) => {
                    lost.store(true, Ordering::Relaxed);
                    return;
                }
                Err(e) => log::warn!("heartbeat of `{}` failed: {e}", self.claim.key),
            }
        }
    }

    /// Remove the weights of a result that was not stored, unless a stored row uses them
    /// (the same training gives the same bytes, and so the same file).
    fn drop_orphan(&self, row: &TrainedRow) -> Result<(), RunError> {
        let stored = self.store.trained(&row.key)?;
        if stored.is_none_or(|s| s.weights.uri != row.weights.uri) {
            self.artifacts.remove(&row.weights.uri)?;
        }
        Ok(())
    }
}

/// How a training run is steered from outside: interrupts and checkpoints.
struct Hooks<'a> {
    interrupted: &'a (dyn Fn() -> bool + Sync),
    resume: Option<&'a Path>,
    on_checkpoint: Option<&'a CheckpointSink<'a>>,
}

fn register(store: &Store, fabrikant: &Fabrikant, keyed: &[Keyed<'_>]) -> Result<(), RunError> {
    let mut seeds = Vec::new();
    let mut configs = Vec::new();
    let mut chains = Vec::new();
    for (chain, i, stage, key, _) in keyed {
        seeds.push(stage.seed);
        for (table, c) in [
            (ConfigTable::Dataset, &stage.dataset),
            (ConfigTable::Model, &stage.model),
            (ConfigTable::Trainer, &stage.trainer),
        ] {
            configs.push(ConfigRow {
                table,
                fn_name: c.fn_name.clone(),
                hash: c.config.hash(),
                legacy_hash: crate::config::legacy::make_hash(&c.config),
                config: c.config.canonical(),
                comment: c.comment.clone(),
            });
        }
        chains.push(ChainStageRow {
            chain: chain.name.clone(),
            seed: chain.seed,
            stage: *i as i64,
            key: key.clone(),
        });
    }
    seeds.sort_unstable();
    seeds.dedup();
    store.register(fabrikant, &seeds, &configs, &chains)?;
    Ok(())
}

fn train_one(
    store: &Store,
    artifacts: &Artifacts,
    options: &RunOptions,
    (chain, i, stage, key, parent): (&Chain, usize, &Stage, &str, Option<String>),
    parts: &Checked,
    hooks: Hooks<'_>,
) -> Result<TrainedRow, RunError> {
    let init = match &parent {
        Some(p) => {
            let row = store.trained(p)?.ok_or_else(|| {
                RunError::Plan(format!("previous stage `{p}` has no trained model"))
            })?;
            Some(artifacts.fetch(&row.weights.uri, &row.weights.sha256)?)
        }
        None => None,
    };
    let channels = parts.model.in_channels as usize;
    let dataset = Dataset::new(&parts.dataset, &parts.data, stage.seed as u64, channels);
    log::info!(
        "training `{}` stage {}/{} `{}` (seed {})",
        chain.name,
        i + 1,
        chain.stages.len(),
        stage.comment,
        stage.seed
    );
    let mut trainer = parts.trainer.clone();
    if let Some(smoke) = options.smoke {
        trainer.num_epochs = trainer.num_epochs.min(smoke.epochs);
    }
    let input = StageInput {
        dataset: &dataset,
        model: &parts.model,
        trainer: &trainer,
        max_batches: options.smoke.map(|s| s.batches),
        seed: stage.seed as u64,
        init_weights: init.as_deref(),
        label: format!("[{} {}/{}]", chain.name, i + 1, chain.stages.len()),
        quiet: options.quiet,
        interrupted: hooks.interrupted,
        resume: hooks.resume,
        on_checkpoint: hooks.on_checkpoint,
    };
    // A panic in libtorch is a bug, but it must not take the worker down: report it.
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| train_stage(&input)))
        .map_err(|payload| {
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("unknown panic");
        TrainingError::Panic(message.lines().next().unwrap_or_default().to_string())
    })??;
    let weights = save_weights(artifacts, &result.weights, key)?;
    Ok(TrainedRow {
        key: key.to_string(),
        stage: config_keys(stage),
        parent_key: parent,
        comment: stage.comment.clone(),
        score: result.score,
        output: result.output.to_string(),
        weights,
    })
}

/// Images per second of training the stage the three configs describe, on its data found
/// as a run finds it (relative to `work_dir`, or in `data_dir`), over `steps` batches after
/// `warmup` untimed ones: through the trainer's own loop, or at the compute floor, until
/// `interrupted` says to stop.
pub fn throughput(
    configs: [&Value; 3],
    (work_dir, data_dir): (&Path, Option<&Path>),
    seed: u64,
    (warmup, steps): (usize, usize),
    measure: Measure,
    interrupted: &(dyn Fn() -> bool + Sync),
) -> Result<f64, RunError> {
    let [dataset, model, trainer] = configs;
    let (dataset, model) = (
        DatasetSpec::from_config(dataset)?,
        ModelSpec::from_config(model)?,
    );
    let trainer = TrainerSpec::from_config(trainer)?;
    fits(&dataset, &model)?;
    let raw = load_data(&dataset, (work_dir, data_dir), &mut DataCache::new())?;
    let data = Dataset::new(&dataset, &raw, seed, model.in_channels as usize);
    Ok(throughput::throughput(
        &data,
        &model,
        &trainer,
        seed,
        (warmup, steps),
        measure,
        interrupted,
    )?)
}

/// Load the trained model whose key is `key`, or the only one whose key starts with it,
/// from `schema`: its configs from the database and its weights from the artifact store,
/// checksum verified.
pub fn load_trained(work_dir: &Path, schema: &str, key: &str) -> Result<TrainedModel, RunError> {
    let store = Store::open_existing(work_dir, schema)?
        .ok_or_else(|| crate::store::missing_schema(work_dir, schema))?;
    let mut found = store.find_trained(key)?;
    let (row, dataset, model) = match found.len() {
        1 => found.remove(0),
        0 => {
            return Err(StoreError::NotFound(format!(
                "schema `{schema}` has no trained model with key `{key}`"
            ))
            .into())
        }
        _ => {
            return Err(StoreError::NotFound(format!(
                "key `{key}` is ambiguous in schema `{schema}`: give more of it"
            ))
            .into())
        }
    };
    let artifacts = Artifacts::open(work_dir, schema)?;
    let path = artifacts.fetch(&row.weights.uri, &row.weights.sha256)?;
    let decode = |text: &str| {
        Value::decode(text).map_err(|e| {
            StoreError::NotFound(format!(
                "the stored config of `{}` is unreadable: {e}",
                row.key
            ))
        })
    };
    Ok(TrainedModel::load(
        &row.key,
        decode(&model)?,
        decode(&dataset)?,
        &path,
    )?)
}

/// The artifacts of `schema` no row refers to and last written at least `min_age` ago
/// (younger ones may belong to a worker about to store its row); with `remove`, they are
/// deleted as well.
pub fn orphans(
    work_dir: &Path,
    schema: &str,
    min_age: std::time::Duration,
    remove: bool,
) -> Result<Vec<crate::store::Listed>, RunError> {
    let store = Store::open_existing(work_dir, schema)?
        .ok_or_else(|| crate::store::missing_schema(work_dir, schema))?;
    let artifacts = Artifacts::open(work_dir, schema)?;
    // List first: an artifact stored after the rows are read is younger than `min_age`.
    let listed = artifacts.list()?;
    let referenced = store.referenced_artifacts()?;
    let orphans: Vec<_> = listed
        .into_iter()
        .filter(|a| a.age >= min_age && !referenced.contains(&a.uri))
        .collect();
    if remove {
        for orphan in &orphans {
            artifacts.remove(&orphan.uri)?;
        }
    }
    Ok(orphans)
}

fn save_weights(
    artifacts: &Artifacts,
    vs: &tch::nn::VarStore,
    key: &str,
) -> Result<crate::store::ArtifactRef, RunError> {
    let io = |source| StoreError::Artifact {
        path: std::env::temp_dir(),
        source,
    };
    let tmp = tempfile::Builder::new()
        .suffix(".safetensors")
        .tempfile()
        .map_err(io)?;
    vs.save(tmp.path()).map_err(TrainingError::from)?;
    Ok(artifacts.put(key, "safetensors", tmp.path())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(seed: i64) -> Stage {
        let c = |name: &str| FnConfig {
            fn_name: name.into(),
            config: Value::dict([("x", Value::Int(1))]),
            comment: String::new(),
        };
        Stage {
            dataset: c("d"),
            model: c("m"),
            trainer: c("t"),
            seed,
            comment: "A".into(),
        }
    }

    #[test]
    fn stage_keys_depend_on_seed_and_parent() {
        let a = stage_key(&stage(1), None, None);
        assert_eq!(a, stage_key(&stage(1), None, None));
        assert_ne!(a, stage_key(&stage(2), None, None));
        assert_ne!(a, stage_key(&stage(1), Some("p"), None));
        assert_eq!(a.len(), 32);
        let smoke = |epochs, batches| Some(Smoke { epochs, batches });
        let b = stage_key(&stage(1), None, smoke(1, 10));
        assert_ne!(a, b);
        assert_ne!(b, stage_key(&stage(1), None, smoke(1, 11)));
    }
}
